"""Traces across the loop: a display, its reactions, its reward and the model update in the
display's trace, through a real broker and a worker run in this process with the SDK's
in-memory exporter (app.observability.tracing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Message, Producer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.contract.topics import BASKET_ADDS, CLICKS, RANKINGS, REWARDS, SERVED
from app.kafka import clients
from app.observability.metrics import Metrics
from app.observability.tracing import TRACEPARENT, Tracing, TracingError, exporter_from_env
from app.settings import Settings
from app.stream.worker import prepare, supervisor
from tests.kafka_io import TopicReader, collect, event, now_ms
from tests.serve.test_service import call, key_for
from tests.worker_process import free_port

SITE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"  # the site's trace of the page view
SITE_SPAN = "00f067aa0ba902b7"
CLICK_TRACE = "5bf92f3577b34da6a3ce929d0e0e4737"  # the click's request, a trace of its own


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


# -- configuration and headers (no broker) --------------------------------------------


def test_tracing_is_off_unless_the_otel_variables_ask_for_an_exporter():
    assert exporter_from_env({}) is None
    assert exporter_from_env({"OTEL_SERVICE_NAME": "x"}) is None
    assert exporter_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"}) == "otlp"
    assert exporter_from_env({"OTEL_TRACES_EXPORTER": "otlp"}) == "otlp"
    assert exporter_from_env({"OTEL_TRACES_EXPORTER": "none",
                              "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) is None
    assert exporter_from_env({"OTEL_SDK_DISABLED": "true",
                              "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) is None
    with pytest.raises(TracingError, match="OTEL_TRACES_EXPORTER"):
        exporter_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_from_env_builds_an_otlp_exporter_named_after_the_service(monkeypatch):
    for name in ("OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    off = Tracing.from_env("recoloop-worker")
    assert not off.enabled and off.start("x") is None and off.headers(None) is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop-worker")
    on = Tracing.from_env("recoloop-worker")
    assert on.enabled
    assert on.provider is not None
    assert on.provider.resource.attributes["service.name"] == "shop-worker"
    on.shutdown()


def in_memory() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def test_a_record_s_traceparent_is_continued_and_a_malformed_one_ignored():
    tracing, exporter = in_memory()
    parent = traceparent(SITE_TRACE, SITE_SPAN)
    assert tracing.incoming([("other", b"x"), (TRACEPARENT, parent.encode())]) == parent
    for bad in (b"", b"00-zz-yy-01", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",
                b"x" * 10_000):
        assert tracing.incoming([(TRACEPARENT, bad)]) is None
    assert tracing.incoming(None) is None
    span = tracing.start("recoloop.reco.served", parent)
    [(name, value)] = tracing.headers(span) or []
    tracing.end(span)
    assert name == TRACEPARENT and isinstance(value, bytes)
    assert value.decode().split("-")[1] == SITE_TRACE and len(value) == 55
    [finished] = exporter.get_finished_spans()
    assert finished.parent is not None and f"{finished.parent.span_id:016x}" == SITE_SPAN
    assert Tracing().incoming([(TRACEPARENT, parent.encode())]) is None  # off: not even read


# -- through the broker ----------------------------------------------------------------


@pytest.fixture
def traced_worker(worker_settings: Settings, tmp_path: Path
                  ) -> Iterator[tuple[Settings, InMemorySpanExporter]]:
    """The worker's loop in a thread of this process, its spans in memory."""
    settings = worker_settings.replace(data_dir=tmp_path / "traced",
                                   worker_id="traced")
    tracing, exporter = in_memory()
    loop = supervisor(settings, prepare(settings), Metrics(), tracing)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    yield settings, exporter
    stop.set()
    thread.join(60)
    assert not thread.is_alive(), "the worker did not stop"


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def wait_for_span(exporter: InMemorySpanExporter, name: str, timeout_s: float = 60
                  ) -> ReadableSpan:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = spans_named(exporter, name)
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {name} span; spans: "
                         f"{sorted({s.name for s in exporter.get_finished_spans()})}")


def wait_for_batch_around(exporter: InMemorySpanExporter, span: ReadableSpan,
                          timeout_s: float = 60) -> tuple[tuple[ReadableSpan, ...], ReadableSpan]:
    """The finished spans once the batch ``span`` was recorded in has ended, and that batch.

    Batches run one after another on the loop's thread, so it is the one whose time holds
    ``span``'s."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = exporter.get_finished_spans()
        for batch in spans:
            if (batch.name == "recoloop.batch" and batch.start_time <= span.start_time
                    and span.end_time <= batch.end_time):
                return spans, batch
        assert time.monotonic() < deadline, f"the batch of {span.name} never ended"
        time.sleep(0.05)


def header_trace(message: Message) -> str | None:
    for name, value in message.headers() or []:
        if name == TRACEPARENT:
            return value.decode().split("-")[1]
    return None


def trace_id(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


def render(spans: list[ReadableSpan], trace: str) -> str:
    """One trace as an indented tree (docs/operations.md, Traces, shows one from this test)."""
    ours = [s for s in spans if trace_id(s) == trace]
    children: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in ours}
    for span in ours:
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []
    start = min((sp.start_time or 0) for sp in ours)

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time or 0):
            keep = ("recoloop.reaction", "recoloop.reward", "recoloop.closed_by",
                    "recoloop.model_updates", "recoloop.ranking_id", "recoloop.delay_ms",
                    "recoloop.arm")
            shown = {k: v for k, v in (span.attributes or {}).items() if k in keep}
            links = f" links={len(span.links)}" if span.links else ""
            at_ms = ((span.start_time or 0) - start) / 1e6
            lines.append(f"{at_ms:+8.1f} ms {'  ' * depth}{span.name} {shown or ''}{links}"
                         .rstrip())
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def post_traced_visit(s: Settings, serve_port: int) -> dict[str, list[Message]]:
    """POST a display and a basket add in the site's trace; the records of reco.served,
    reco.rankings and reco.rewards once the reward is out, by topic."""
    key = key_for(s, serve_port, "shop")
    t = now_ms()
    common = {"site_id": "shop", "session_id": "s-posted"}
    posted = traceparent(SITE_TRACE, SITE_SPAN)
    status, _, _ = call(serve_port, "POST", "/v1/events", key, {"events": [
        {"type": "served", **common, "event_id": "d-posted", "ts": t, "items": ["a"],
         "arm": s.bandit.arms[0], "propensity": 0.5},
        {"type": "basket_add", **common, "event_id": "b-posted", "ts": t + 500,
         "item_id": "a"}]}, headers={TRACEPARENT: posted})
    assert status == 202
    messages = collect(s.kafka.bootstrap_servers, [s.topic(SERVED), s.topic(RANKINGS),
                                             s.topic(REWARDS)],
                       lambda ms: any(m.topic() == s.topic(REWARDS) for m in ms))
    by_topic: dict[str, list[Message]] = {}
    for m in messages:
        by_topic.setdefault(m.topic(), []).append(m)
    return by_topic


@pytest.mark.integration
def test_the_rank_service_and_the_worker_carry_a_request_s_trace_onto_their_records(
        worker_settings: Settings, start_worker, start_service, monkeypatch):
    """Real processes, tracing turned on by the standard variables (spans to their logs)."""
    s = worker_settings
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    worker = start_worker()
    service = start_service()
    by_topic = post_traced_visit(s, service.serve_port)
    posted = traceparent(SITE_TRACE, SITE_SPAN)
    # The service's records continue the request (a span of its own, in the same trace) ...
    assert [header_trace(m) for m in by_topic[s.topic(SERVED)]] == [SITE_TRACE]
    served_parent = dict(by_topic[s.topic(SERVED)][0].headers())[TRACEPARENT].decode()
    assert served_parent != posted
    # ... and so do the worker's: the rankings the events caused, and the reward.
    assert {header_trace(m) for m in by_topic[s.topic(RANKINGS)]
            if m.key() == b"s-posted"} == {SITE_TRACE}
    assert [header_trace(m) for m in by_topic[s.topic(REWARDS)]] == [SITE_TRACE]
    deadline = time.monotonic() + 30  # the exporter sends every 5 s
    while '"name": "recoloop.reward"' not in worker.log_path.read_text():
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)
    assert '"service.name": "recoloop-worker"' in worker.log_path.read_text()


JAEGER_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}}
extensions:
  jaeger_storage: {backends: {memstore: {memory: {max_traces: 10000}}}}
  jaeger_query:
    storage: {traces: memstore}
    http: {endpoint: "127.0.0.1:%(query)d"}
    grpc: {endpoint: "127.0.0.1:%(grpc)d"}
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:%(otlp)d"}}}
processors:
  batch: {}
exporters:
  jaeger_storage_exporter: {trace_storage: memstore}
"""


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Jaeger v2 (an OpenTelemetry Collector build) on loopback, traces in memory: its OTLP
    HTTP port and its query API's port. Built from the Go module registry, which takes
    minutes, so not in the default run: ``RECOLOOP_TEST_JAEGER`` names the binary
    (docs/operations.md, Traces)."""
    binary = os.environ.get("RECOLOOP_TEST_JAEGER") or shutil.which("jaeger")
    if not binary:
        pytest.skip("no Jaeger binary: set RECOLOOP_TEST_JAEGER (docs/operations.md, Traces)")
    ports = {"otlp": free_port(), "query": free_port(), "grpc": free_port()}
    config = tmp_path / "jaeger.yaml"
    config.write_text(JAEGER_CONFIG % ports)
    with open(tmp_path / "jaeger.log", "wb") as log:
        process = subprocess.Popen([binary, f"--config=file:{config}"], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not jaeger_json(ports["query"], "/api/services"):
            assert process.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "jaeger.log").read_text()[-2000:]
            time.sleep(0.3)
        yield ports["otlp"], ports["query"]
    finally:
        process.terminate()
        process.wait(30)


def jaeger_json(port: int, path: str) -> dict | None:
    """An answer of Jaeger's query API; None while it has none (not up, or 404)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return dict(json.loads(answer.read()))
    except OSError:  # refused, or an HTTPError (404: no such trace yet)
        return None


@pytest.mark.integration
def test_a_real_collector_receives_the_visit_s_trace_from_both_services(
        jaeger, worker_settings: Settings, start_worker, start_service, monkeypatch):
    """OTLP over HTTP to Jaeger, configured by the standard variables only; Jaeger's API then
    shows the site's trace with the rank service's and the worker's spans in it."""
    otlp, query = jaeger
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp}")
    start_worker()
    service = start_service()
    post_traced_visit(worker_settings, service.serve_port)
    wanted = {("recoloop-serve", "POST /v1/events"), ("recoloop-worker", "recoloop.reco.served"),
              ("recoloop-worker", "recoloop.reward"), ("recoloop-worker", "recoloop.learn")}
    deadline = time.monotonic() + 60  # the SDK exports every 5 s, Jaeger batches too
    seen: set[tuple[str, str]] = set()
    while not wanted <= seen:
        assert time.monotonic() < deadline, f"spans in Jaeger's trace: {sorted(seen)}"
        time.sleep(1)
        answer = jaeger_json(query, f"/api/traces/{SITE_TRACE}") or {"data": []}
        for trace in answer["data"]:
            services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
            seen |= {(services[span["processID"]], span["operationName"])
                     for span in trace["spans"]}
    print("\nJaeger's trace " + SITE_TRACE + ": " + ", ".join(
        f"{service}/{name}" for service, name in sorted(seen)))


@pytest.mark.integration
@pytest.mark.slow
def test_a_display_its_reactions_its_reward_and_the_model_update_share_one_trace(
        traced_worker):
    s, exporter = traced_worker
    t = now_ms()
    common = {"site_id": "shop", "session_id": "s-traced"}
    producer = Producer(clients.idempotent_producer(s))
    for (topic, key, value), parent in (
            (event(s.topic(SERVED), {**common, "event_id": "d1", "ts": t, "items": ["a", "b"],
                                     "arm": s.bandit.arms[0], "propensity": 0.5}),
             (SITE_TRACE, SITE_SPAN)),
            (event(s.topic(CLICKS), {**common, "event_id": "c1", "ts": t + 1_000,
                                     "item_id": "a"}), (CLICK_TRACE, "00f067aa0ba902b8")),
            # The maximum reward: the decision closes at once.
            (event(s.topic(BASKET_ADDS), {**common, "event_id": "b1", "ts": t + 2_000,
                                          "item_id": "a"}), None)):
        headers = None if parent is None else [(TRACEPARENT, traceparent(*parent).encode())]
        producer.produce(topic, value, key, headers=headers)
    assert producer.flush(30) == 0

    learn = wait_for_span(exporter, "recoloop.learn")
    # The batch that learned ends after the learn span: wait for it.
    spans, learn_batch = wait_for_batch_around(exporter, learn)
    by_name = {name: [sp for sp in spans if sp.name == name] for name in {
        sp.name for sp in spans}}
    [display] = by_name["recoloop.reco.served"]
    assert trace_id(display) == SITE_TRACE and display.parent is not None
    assert f"{display.parent.span_id:016x}" == SITE_SPAN  # continues the site's span
    [click] = by_name["recoloop.reco.clicks"]
    assert trace_id(click) == CLICK_TRACE
    assert "recoloop.reco.basket_adds" not in by_name  # no traceparent: no span of its own
    # Both reactions are attributed in the display's trace, the click linked to its own.
    attributed = {sp.attributes["recoloop.reaction"]: sp for sp in by_name["recoloop.attribute"]}
    assert set(attributed) == {"click", "basket_add"}
    assert all(trace_id(sp) == SITE_TRACE for sp in attributed.values())
    assert CLICK_TRACE in {f"{link.context.trace_id:032x}"
                           for link in attributed["click"].links}
    [reward] = by_name["recoloop.reward"]
    assert trace_id(reward) == SITE_TRACE and reward.parent.span_id == display.context.span_id
    assert reward.attributes["recoloop.reward"] == 3.0
    assert trace_id(learn) == SITE_TRACE and learn.parent.span_id == reward.context.span_id
    assert learn.attributes["recoloop.learned"] is True
    assert learn.attributes["recoloop.model_updates"] >= 1
    # Every batch has a span with links to its traced inputs, and join and produce under it.
    batches = by_name["recoloop.batch"]
    linked = {f"{link.context.trace_id:032x}" for b in batches for link in b.links}
    assert {SITE_TRACE, CLICK_TRACE} <= linked
    batch_ids = {b.context.span_id for b in batches}
    for name in ("recoloop.join", "recoloop.produce"):  # those of batches until learn's
        ended = [sp for sp in by_name[name] if sp.start_time <= learn_batch.end_time]
        assert ended and all(sp.parent.span_id in batch_ids for sp in ended)

    # The records the worker wrote carry the trace on: the ranking each traced event caused,
    # and the reward.
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(RANKINGS), s.topic(REWARDS)])
    messages = reader.read_until(lambda ms: any(m.topic() == s.topic(REWARDS) for m in ms))
    reader.close()
    [reward_record] = [m for m in messages if m.topic() == s.topic(REWARDS)]
    assert header_trace(reward_record) == SITE_TRACE
    ranking_traces = {m.key().decode() and header_trace(m) for m in messages
                      if m.topic() == s.topic(RANKINGS) and m.key() == b"s-traced"}
    assert {SITE_TRACE, CLICK_TRACE, None} == ranking_traces  # the basket add's: untraced
    print("\n" + render(list(exporter.get_finished_spans()), SITE_TRACE))


def test_a_traced_display_and_reaction_keep_their_trace_through_the_state_encoding():
    """The changelog and RocksDB hold a display's and a waiting reaction's traceparent, so a
    reward closed after a restart (or on another worker) still joins the display's trace;
    an untraced attribution costs no trace bookkeeping."""
    from app.contract.codec import decode_state, encode_state
    from app.core.engine import session_key
    from app.core.events import Reaction, Served
    from app.core.join import JoinRules, PendingDisplay, add_display, add_reaction, advance
    from app.core.session import Session

    shown, clicked = traceparent(SITE_TRACE, SITE_SPAN), traceparent(CLICK_TRACE, SITE_SPAN)
    session = Session("shop", "s1")
    add_display(session.join, PendingDisplay(
        Served("d1", "shop", "s1", 1_000, ("a",), trace=shown), "similar", 0.5, {}))
    add_reaction(session.join, Reaction("c1", "click", "shop", "s1", 2_000, "a", trace=clicked))
    key = session_key("shop", "s1")
    restored = decode_state(key, encode_state(session))
    assert restored.join.pending["d1"].served.trace == shown
    assert restored.join.waiting[0].trace == clicked
    rules = JoinRules(window_ms=20_000, grace_ms=5_000, rewards={"click": 1.0, "basket_add": 3.0})
    result = advance(restored.join, 2_001, rules)
    assert [(served.trace, reaction.trace) for served, reaction in result.traced] == [
        (shown, clicked)]
    untraced = Session("shop", "s2")
    add_display(untraced.join, PendingDisplay(Served("d2", "shop", "s2", 1_000, ("a",)),
                                              "similar", 0.5, {}))
    add_reaction(untraced.join, Reaction("c2", "click", "shop", "s2", 2_000, "a",
                                         trace=clicked))
    assert advance(untraced.join, 2_001, rules).traced == []
    closed = advance(restored.join, 30_000, rules).closed
    assert [decision.trace for decision in closed] == [shown]
