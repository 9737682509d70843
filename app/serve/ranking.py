"""``GET /v1/sites/{site_id}/sessions/{session_id}/ranking``: a session's ranking, the
service's hot path.

:func:`ranking_body` builds the answer. The FastAPI route (:mod:`app.serve.api`) declares
it, with its parameters and the OpenAPI schema; :class:`RankingFastPath` answers the usual
requests without FastAPI's per-request parameter solving and routing, which cost more CPU
than the answer itself and, on a busy replica, queue every other request behind them. A
request the fast path is not sure of (an unknown or repeated parameter, a value to refuse,
an id that does not decode, another site's key) goes on to the route, so every refusal is
the route's.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.experiment import MAIN_VARIANT, NOTHING
from app.serve.book import Answer, RankingBook
from app.serve.edge import CALLER
from app.serve.ingest import MAX_ID_CHARS

if TYPE_CHECKING:
    from app.serve.api import Service

ROUTE = "/v1/sites/{site_id}/sessions/{session_id}/ranking"
MAX_WAIT_MS = 10_000
# The route's limits on its parameters (as sent, before decoding).
MAX_PATH_ID_CHARS = 3 * MAX_ID_CHARS
MAX_SEGMENT_CHARS = 1024
MAX_EVENT_ID_CHARS = 512
# What pydantic reads as a bool, in lower case.
BOOLS = {"true": True, "1": True, "on": True, "yes": True, "t": True, "y": True,
         "false": False, "0": False, "off": False, "no": False, "f": False, "n": False}
_PATH = re.compile(r"/v1/sites/([^/]+)/sessions/([^/]+)/ranking")
_HEADERS = [(b"content-type", b"application/json")]


def path_id(segment: str, name: str) -> str:
    """An id from its path segment, percent-decoded once as UTF-8: ``a%2Fb`` is ``a/b``
    (every id the contract allows is addressable: ``/``, ``%``, ``?``, ``#`` and spaces
    escaped as ``%2F``, ``%25``, ``%3F``, ``%23`` and ``%20``).

    >>> path_id("shop%2Feu", "site_id")
    'shop/eu'
    """
    try:
        value = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise HTTPException(422, f"{name}: percent-escapes that are not UTF-8") from None
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise HTTPException(422, f"{name}: 1 to {MAX_ID_CHARS} characters once decoded")
    return value


async def ranking_body(service: Service, site_id: str, session_id: str, segment: str,
                       after_event_id: str | None, wait_ms: int, explain: bool) -> bytes:
    """The answer's JSON: the session's ranking as the worker published it, spliced in
    unparsed (the route's ``RankingAnswer`` documents the shape). The ids are decoded and
    the caller may read the site."""
    book = service.book
    reached: bool | None = None
    if after_event_id is not None:
        reached = await wait_for(book, site_id, session_id, after_event_id, wait_ms)
    placement = service.sites.variant_for(site_id, session_id)
    variant = "" if placement is None or placement[1].name == MAIN_VARIANT \
        else placement[1].name
    if placement is not None and placement[1].baseline == NOTHING:
        answer = Answer("none", None)  # the site shows its own list to this variant
    else:
        answer = book.answer(site_id, session_id, segment, service.catalog, variant)
    service.metrics.answers.labels(answer.source).inc()
    head = orjson.dumps({
        "source": answer.source,
        "age_ms": None if answer.ts is None else int(time.time() * 1000) - answer.ts,
        "after_event_reached": reached, "stale": service.readiness.broker_away(),
        **({"experiment": placement[0], "variant": placement[1].name}
           if placement is not None else {}),
        **({"catalog_items": answer.items} if answer.items else {})})
    body = head[:-1] + b',"ranking":' + (answer.raw or b"null")
    if explain:
        body += b',"explain":' + (answer.explain or b"null")
    return body + b"}"


async def wait_for(book: RankingBook, site: str, session: str, event_id: str,
                   wait_ms: int) -> bool:
    """Until the ranking ``event_id`` triggered (or a later one) is in ``book``, at most
    ``wait_ms``; whether it came."""
    deadline = time.monotonic() + wait_ms / 1000
    loop = asyncio.get_running_loop()
    while not book.has_answered(site, session, event_id):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        arrived = asyncio.Event()

        def wake(arrived: asyncio.Event = arrived) -> None:
            loop.call_soon_threadsafe(arrived.set)

        book.on_next(site, session, wake)
        try:
            if book.has_answered(site, session, event_id):  # came while registering
                return True
            await asyncio.wait_for(arrived.wait(), left)
        except TimeoutError:
            return book.has_answered(site, session, event_id)
        finally:  # also when the client went away (a cancellation)
            book.forget_waiter(site, session, wake)
    return True


Query = tuple[str, str | None, int, bool]


def plain_query(query_string: bytes) -> Query | None:
    """``(segment, after_event_id, wait_ms, explain)`` when each parameter is known, given
    at most once and within the route's limits; None when the route should decide.

    >>> plain_query(b"segment=device%3Dmobile&wait_ms=50")
    ('device=mobile', None, 50, False)
    >>> plain_query(b"wait_ms=10001") is None, plain_query(b"explain=maybe") is None
    (True, True)
    """
    if not query_string:
        return "", None, 0, False
    # As Starlette reads a query: latin-1 text, each value percent-decoded as UTF-8.
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        return None
    segment = params.pop("segment", "")
    after = params.pop("after_event_id", None)
    wait, explain = params.pop("wait_ms", "0"), params.pop("explain", "false")
    flag = BOOLS.get(explain.lower())
    if params or flag is None or len(segment) > MAX_SEGMENT_CHARS \
            or (after is not None and len(after) > MAX_EVENT_ID_CHARS) \
            or not (wait.isascii() and wait.isdigit() and len(wait) <= 5) \
            or int(wait) > MAX_WAIT_MS:
        return None
    return segment, after, int(wait), flag


class RankingFastPath:
    """Answers a ranking request whose parameters need no refusal, inside Guard (the key is
    checked and in the scope) and before the router; anything else goes on to ``app``.
    ``route`` is the route's object, left in the scope as the router would (Measured labels
    requests by it)."""

    def __init__(self, app: ASGIApp, service: Service, route: object) -> None:
        self.app, self.service, self.route = app, service, route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            body = await self._answer(scope)
            if body is not None:
                scope["route"] = self.route
                await send({"type": "http.response.start", "status": 200, "headers": [
                    *_HEADERS, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope) -> bytes | None:
        match = _PATH.fullmatch(scope["path"])  # as sent: RawPath, outside, put it there
        caller = scope.get(CALLER)
        if match is None or caller is None:
            return None
        site, session = match.groups()
        query = plain_query(scope["query_string"])
        if query is None or len(site) > MAX_PATH_ID_CHARS or len(session) > MAX_PATH_ID_CHARS:
            return None
        try:
            site_id, session_id = path_id(site, "site_id"), path_id(session, "session_id")
        except HTTPException:
            return None
        if not caller.opens(site_id):
            return None
        return await ranking_body(self.service, site_id, session_id, *query)
