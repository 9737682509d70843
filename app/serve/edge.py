"""The rank service's HTTP edge, below its routes: what is refused before a body is read,
how ids travel in paths, time limits on reading a request, and 500s that leave the
connection usable. ``docs/serve.md`` describes these limits for the service's users.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.observability.metrics import ServeMetrics
from app.serve.keys import KeyBook
from app.settings import Settings

log = logging.getLogger(__name__)

# A request body's limit: 1,000 events of a few hundred bytes each fit many times over.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Where Guard leaves the caller's key record for the routes.
CALLER = "recoloop.caller"
NEED_KEY = "an API key of the site is needed (Authorization: Bearer <key>)"


def json_answer(status: int, content: Any, headers: list[tuple[bytes, bytes]] | None = None
                ) -> tuple[Message, Message]:
    """The two ASGI messages of a complete JSON answer."""
    body = orjson.dumps(content)
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), *(headers or [])]},
            {"type": "http.response.body", "body": body})


def is_json(content_type: bytes) -> bool:
    """``application/json``, with no charset or UTF-8's.

    >>> is_json(b"application/json; charset=UTF-8"), is_json(b"text/plain"), is_json(b"")
    (True, False, False)
    """
    media, *params = content_type.split(b";")
    if media.strip().lower() != b"application/json":
        return False
    for param in params:
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"charset" \
                and value.strip().strip(b'"').lower() not in (b"utf-8", b"utf8"):
            return False
    return True


class Measured:
    """Requests by route template and status, and their durations (a plain ASGI
    middleware: Starlette's BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - started)


class Guard:
    """What every ``/v1`` request is refused before its body is read, in this order: no key
    or an unknown one (401), a key past its rate (429), and for a body: not JSON (415), of
    unstated length (411) or above :data:`MAX_BODY_BYTES` (413). The routes find the key's
    record in the scope under :data:`CALLER`."""

    def __init__(self, app: ASGIApp, keys: KeyBook) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            problem = self._problem(scope)
            if problem is not None:
                status, detail, headers = problem
                for message in json_answer(status, {"detail": detail}, headers):
                    await send(message)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        headers = dict(scope["headers"])
        header = headers.get(b"authorization", b"")
        key = header[7:].decode("latin-1") if header[:7].lower() == b"bearer " else None
        record = self.keys.identify(key)
        if record is None or key is None:
            return 401, NEED_KEY, []
        if not self.keys.allow(key):
            return 429, "this key's request rate is spent; retry shortly", [
                (b"retry-after", b"1")]
        scope[CALLER] = record
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length", b"")
            if not is_json(headers.get(b"content-type", b"")):
                return 415, "bodies are JSON: Content-Type: application/json", []
            if not length.isdigit():
                return 411, "a body needs its Content-Length", []
            if int(length) > MAX_BODY_BYTES:
                return 413, f"a body is at most {MAX_BODY_BYTES} bytes", []
        return None


class RawPath:
    """Routes ``/v1`` requests by their path as sent, still percent-encoded, so an id
    holding ``/`` (sent as ``%2F``) stays one path segment; the routes decode each id once
    (:func:`app.serve.ranking.path_id`). Other paths route as decoded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw is not None and scope["path"].startswith("/v1/"):
            # uvicorn took raw_path as ASCII already (it decodes it so to make path). In
            # place: Measured, outside, reads the route the router leaves in the scope.
            scope["path"] = raw.decode("ascii", "replace")
        await self.app(scope, receive, send)


class Shielded:
    """The outermost layer: an exception no route handled is logged, and once a whole
    answer (a 500) is out the connection stays usable. uvicorn closes the connection after
    any exception once an answer started, without ``Connection: close``, so the client's
    next request on it fails."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = False

        async def sending(message: Message) -> None:
            nonlocal started, finished
            started = started or message["type"] == "http.response.start"
            finished = message["type"] == "http.response.body" and not message.get("more_body")
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if finished:
                return
            if started:
                raise  # half an answer: only closing the connection ends it
            for message in json_answer(500, {"detail": "internal error"}):
                await send(message)


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with time limits on reading a request: its head within
    ``head_timeout_s`` of its first byte (or of the connection), its body within
    ``body_timeout_s`` of its head. Past either, a request not yet answered gets 408 with
    ``Connection: close``, and the connection is closed. (uvicorn itself limits only the
    idle time between requests, ``timeout_keep_alive``.)"""

    head_timeout_s = 10.0
    body_timeout_s = 30.0
    _timer: asyncio.TimerHandle | None = None
    _reading: str | None = None  # "head" or "body" while a timer runs

    def _arm(self, reading: str | None, seconds: float = 0.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._reading = reading
        self._timer = None if reading is None else self.loop.call_later(seconds, self._late)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head", self.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm("head", self.head_timeout_s)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body", self.body_timeout_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._arm(None)

    def _late(self) -> None:
        reading, self._timer, self._reading = self._reading, None, None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered = reading == "body" and cycle is not None and cycle.response_started
        if not answered:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; "
                                 b"charset=utf-8\r\ncontent-length: 23\r\nconnection: close"
                                 b"\r\n\r\nrequest read too slowly")
        if reading == "body" and cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the route waiting for the body gets a disconnect
            cycle.message_event.set()
        self.transport.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the rank service: its address, the timed protocol, no access
    log (requests are counted in /metrics)."""
    return {"host": settings.worker.bind_host, "port": settings.serve.port,
            "http": timed_protocol(settings.serve.head_timeout_s, settings.serve.body_timeout_s),
            "log_level": logging.getLevelName(logging.getLogger().level).lower(),
            "access_log": False}


def timed_protocol(head_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    return type("TimedHttpToolsProtocol", (TimedHttpToolsProtocol,),
                {"head_timeout_s": head_timeout_s, "body_timeout_s": body_timeout_s})
