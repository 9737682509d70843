"""Traces across the loop (OpenTelemetry), off unless the standard ``OTEL_*`` variables ask.

Trace context travels as W3C ``traceparent`` headers on Kafka records (and HTTP requests to
the rank service). A site that puts one on a display (or posts it with the display) can follow
in that one trace the worker's handling of the display, each reaction attributed to it (a
span linked to the reaction's own trace), the reward when it closes and the model update it
teaches, across batches, partitions and workers:

- ``recoloop.batch``: one per transaction, a root linked to the traced inputs it holds, with
  children ``recoloop.join`` (decoding, joining and ranking its records) and
  ``recoloop.produce`` (sending the outputs, the offsets and the commit);
- ``recoloop.<topic>``: the handling of one input record that carried a ``traceparent``, a
  child of it (linked to its batch); ``recoloop.ranking`` under it for each ranking it
  caused, whose ``traceparent`` the ``reco.rankings`` record carries;
- ``recoloop.attribute``: a reaction attributed to a traced display, in the display's trace;
- ``recoloop.reward``: the display's decision closing, in the display's trace; its
  ``traceparent`` is on the ``reco.rewards`` record and the learner's decision record;
- ``recoloop.learn``: the learner's update of the site's model from that decision.

Records without a ``traceparent`` get no span of their own (their batch still has one): sites
choose what to trace, and sampling follows the parent's ``sampled`` flag.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names ``otlp`` or ``console``, or, with it unset,
when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set;
``OTEL_SDK_DISABLED=true`` turns it off. The OTLP exporter (HTTP/protobuf) reads the other
``OTEL_EXPORTER_OTLP_*`` variables itself, the resource ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``. Off, every call here is a cheap no-op: nothing is extracted,
started or put on records.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
EXPORTERS = ("otlp", "console", "none")
_propagator = TraceContextTextMapPropagator()
Headers = list[tuple[str, str | bytes | None]]  # confluent-kafka's record headers


class TracingError(ValueError):
    """An ``OTEL_*`` variable this service cannot follow (the message names it)."""


def exporter_from_env(env: Mapping[str, str]) -> str | None:
    """Which exporter the ``OTEL_*`` variables ask for; None when tracing is off.

    >>> exporter_from_env({}), exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    (None, 'otlp')
    >>> exporter_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        if named not in EXPORTERS:
            raise TracingError(f"OTEL_TRACES_EXPORTER: {named!r} is none of {EXPORTERS} "
                               "(recoloop exports OTLP over HTTP/protobuf)")
        return None if named == "none" else named
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return "otlp" if any(env.get(name) for name in endpoints) else None


class Tracing:
    """The spans of one service. ``Tracing()`` is off; :meth:`from_env` follows ``OTEL_*``,
    and a test passes a provider of its own (the SDK's in-memory exporter)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = None if provider is None else provider.get_tracer("recoloop")

    @classmethod
    def from_env(cls, service_name: str) -> Tracing:
        """Tracing as the ``OTEL_*`` variables ask; ``service_name`` unless
        ``OTEL_SERVICE_NAME`` names the service."""
        exporter = exporter_from_env(os.environ)
        if exporter is None:
            return cls()
        processor: SpanProcessor
        if exporter == "console":
            processor = BatchSpanProcessor(ConsoleSpanExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            processor = BatchSpanProcessor(OTLPSpanExporter())
        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; the name given here would win over them.
        name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is still queued (at exit)."""
        if self.provider is not None:
            self.provider.shutdown()

    # -- spans --------------------------------------------------------------------------

    def start(self, name: str, parent: str | Span | None = None,
              links: Sequence[str | Span | None] = (),
              attributes: Mapping[str, Any] | None = None) -> Span | None:
        """A span, a child of ``parent`` (a span or a ``traceparent``; a root without one),
        linked to ``links``; None when tracing is off. End it with :meth:`end`."""
        if self._tracer is None:
            return None
        if parent is None:
            context = None
        elif isinstance(parent, str):
            context = _context_of(parent)
        else:
            context = trace.set_span_in_context(parent)
        return self._tracer.start_span(name, context=context, attributes=attributes,
                                       links=[link for link in map(_link, links) if link])

    @staticmethod
    def end(span: Span | None, error: str | None = None) -> None:
        if span is not None:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()

    def child(self, name: str, parent: Span | None) -> Any:
        """A context manager around a child of ``parent`` (nothing when off or no parent)."""
        if self._tracer is None or parent is None:
            return nullcontext(None)
        return self._tracer.start_as_current_span(name, context=trace.set_span_in_context(parent))

    def current_headers(self) -> Headers | None:
        """Kafka headers carrying the current span's context (an HTTP request's), or None."""
        if self._tracer is None:
            return None
        return self.headers(trace.get_current_span())

    # -- trace context on records -------------------------------------------------------

    def traceparent(self, span: Span | None) -> str | None:
        """The W3C ``traceparent`` of ``span`` (None when off, or for no span)."""
        if span is None:
            return None
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get(TRACEPARENT)

    def headers(self, span: Span | None) -> Headers | None:
        """Kafka headers carrying ``span``'s context (a bounded 55 bytes), or None."""
        value = self.traceparent(span)
        return None if value is None else [(TRACEPARENT, value.encode())]

    def incoming(self, headers: Sequence[tuple[str, str | bytes | None]] | Any) -> str | None:
        """The valid ``traceparent`` among a record's headers (confluent-kafka's list of
        pairs); None when off, absent or malformed (then the record is simply not traced)."""
        if self._tracer is None or not headers:
            return None
        for name, value in headers:
            if name == TRACEPARENT and value:
                text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
                return text if len(text) <= 128 and _valid(text) else None
        return None


def _context_of(traceparent: str) -> Any:
    return _propagator.extract({TRACEPARENT: traceparent})


def _valid(traceparent: str) -> bool:
    return trace.get_current_span(_context_of(traceparent)).get_span_context().is_valid


def _link(target: str | Span | None) -> Link | None:
    if target is None:
        return None
    if isinstance(target, str):
        context = trace.get_current_span(_context_of(target)).get_span_context()
    else:
        context = target.get_span_context()
    return Link(context) if context.is_valid else None
