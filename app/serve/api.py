"""The rank service's HTTP API (FastAPI: typed routes, request validation and the OpenAPI
schema from one declaration; served by uvicorn).

Every ``/v1`` call carries a site's API key (``Authorization: Bearer <key>``): no key or an
unknown one is 401, another site's path or events 403, a key past its rate 429.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.contract.site_config import checked_site_config
from app.contract.topics import SITE_CONFIG
from app.core.experiment import MAIN_VARIANT, NOTHING
from app.core.sites import SiteSettings
from app.observability.metrics import ServeMetrics
from app.observability.tracing import Tracing
from app.serve.book import Answer, CatalogItems, RankingBook
from app.serve.ingest import MAX_EVENTS_PER_REQUEST, EventIngest, Rejected, checked
from app.serve.keys import KeyBook, KeyRecord
from app.settings import Settings

MAX_WAIT_MS = 10_000
# A request body's limit: 1,000 events of a few hundred bytes each fit many times over.
MAX_BODY_BYTES = 4 * 1024 * 1024


class Readiness:
    """What ``/ready`` and the ``stale`` flag ask of the feeds."""

    def caught_up(self) -> bool:
        return True

    def broker_away(self) -> bool:
        return False


@dataclass
class Service:
    book: RankingBook
    keys: KeyBook
    ingest: EventIngest | None
    metrics: ServeMetrics
    readiness: Readiness
    sites: SiteSettings  # the defaults a site config is checked against
    catalog: CatalogItems | None = None  # the last fallback: a few available items per site
    tracing: Tracing = field(default_factory=Tracing)  # off unless OTEL_* ask


class RankedItem(BaseModel):
    item_id: str
    score: float


class Ranking(BaseModel):
    ranking_id: str
    site_id: str
    session_id: str
    ts: int = Field(description="Event time (ms) of the input that triggered the ranking.")
    arm: str
    propensity: float
    items: list[RankedItem]
    model_version: int | str
    context: dict[str, Any] = {}
    segment: str | None = None
    trigger_event_id: str | None = None


class ArmInContext(BaseModel):
    estimate: float = Field(description="The bandit's expected reward of the arm here.")
    probability: float = Field(description="The exact probability it had of being chosen.")


class Explanation(BaseModel):
    arms: dict[str, ArmInContext]
    placed_by: list[str] = Field(description="Per item, in order: the arm, a fallback "
                                 "(sales, popular, catalog) or a promotion (pinned, boosted).")


class RankingAnswer(BaseModel):
    source: str = Field(description="session: the session's latest ranking; segment: its "
                        "context segment's default; site: the site's default; catalog: no "
                        "ranking yet, available items of the site's catalog; none.")
    ranking: Ranking | None
    age_ms: int | None = Field(description="Now minus the ranking's ts.")
    after_event_reached: bool | None = Field(
        description="With after_event_id: whether this ranking answers that event (or a "
        "later one); false when wait_ms ran out first.")
    stale: bool = Field(description="True while this replica cannot reach the broker.")
    catalog_items: list[str] | None = Field(
        None, description="With source catalog: available items, to show as the site's own "
        "list (send the display without ranking_id).")
    experiment: str | None = Field(
        None, description="The site's experiment, when it runs one (site settings).")
    variant: str | None = Field(
        None, description="The session's variant in it. Under a control with the baseline "
        "'nothing' the source is none: show the site's own list and send the display "
        "without ranking_id.")
    explain: Explanation | None = Field(
        None, description="With explain=true: why the ranking is what it is.")


class EventBatch(BaseModel):
    events: list[dict[str, Any]] = Field(
        max_length=MAX_EVENTS_PER_REQUEST,
        description="Each event: its type (served, click, detail_view, basket_add) and its "
        "topic's fields (topics/*.json).")


class Accepted(BaseModel):
    accepted: list[str]


class Invalid(BaseModel):
    rejected: list[dict[str, Any]]


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
    """What is refused before a ``/v1`` request's body is read: no bearer key (401), a body
    of unstated length (411) or above :data:`MAX_BODY_BYTES` (413). FastAPI reads and parses
    a body before a route's dependencies check the key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope["headers"])
            problem: tuple[int, str] | None = None
            if not headers.get(b"authorization", b"")[:7].lower() == b"bearer ":
                problem = 401, "an API key of the site is needed (Authorization: Bearer <key>)"
            elif scope["method"] in ("POST", "PUT"):
                length = headers.get(b"content-length", b"")
                if not length.isdigit():
                    problem = 411, "a body needs its Content-Length"
                elif int(length) > MAX_BODY_BYTES:
                    problem = 413, f"a body is at most {MAX_BODY_BYTES} bytes"
            if problem is not None:
                body = orjson.dumps({"detail": problem[1]})
                await send({"type": "http.response.start", "status": problem[0],
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def identify(request: Request) -> KeyRecord:
    """The caller's key: 401 without a valid key, 429 past its rate."""
    keys: KeyBook = request.app.state.service.keys
    header = request.headers.get("authorization", "")
    key = header[7:] if header[:7].lower() == "bearer " else None
    record = keys.identify(key)
    if record is None or key is None:
        raise HTTPException(401, "an API key of the site is needed "
                            "(Authorization: Bearer <key>)")
    if not keys.allow(key):
        raise HTTPException(429, "this key's request rate is spent; retry shortly",
                            headers={"Retry-After": "1"})
    return record


Caller = Annotated[KeyRecord, Depends(identify)]


def own(caller: KeyRecord, site_id: str) -> None:
    if not caller.opens(site_id):
        raise HTTPException(403, "this key does not open this site")


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="recoloop rank service", version=__version__,
                  description="Rankings per session, read-your-writes; events in.")
    app.state.service = service
    metrics = service.metrics

    app.add_middleware(Guard)
    app.add_middleware(Measured, metrics=metrics)  # the outer one: it counts what Guard refuses
    if service.tracing.enabled:
        # A span per request, continuing the caller's traceparent; posted events carry it on.
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        FastAPIInstrumentor.instrument_app(app, tracer_provider=service.tracing.provider,
                                           excluded_urls="health,ready,metrics")

    @app.get("/v1/sites/{site_id}/sessions/{session_id}/ranking",
             response_model=RankingAnswer, response_class=JSONResponse)
    async def ranking(
            caller: Caller,
            site_id: Annotated[str, Path(max_length=256)],
            session_id: Annotated[str, Path(max_length=256)],
            segment: Annotated[str, Query(
                max_length=1024, description="The session's context segment for a default "
                "ranking: sorted key=value pairs joined by '|', e.g. device=mobile|region=eu"
            )] = "",
            after_event_id: Annotated[str | None, Query(
                max_length=512, description="Wait for the ranking this event triggered.")]
            = None,
            wait_ms: Annotated[int, Query(ge=0, le=MAX_WAIT_MS)] = 0,
            explain: Annotated[bool, Query(
                description="Add why: each arm's estimate and probability in this context, "
                "and what placed each item (the arm, a fallback or a promotion).")] = False
            ) -> Response:
        own(caller, site_id)
        book = service.book
        reached: bool | None = None
        if after_event_id is not None:
            reached = await _wait_for(book, site_id, session_id, after_event_id, wait_ms)
        placement = service.sites.variant_for(site_id, session_id)
        variant = "" if placement is None or placement[1].name == MAIN_VARIANT \
            else placement[1].name
        if placement is not None and placement[1].baseline == NOTHING:
            answer = Answer("none", None)  # the site shows its own list to this variant
        else:
            answer = book.answer(site_id, session_id, segment, service.catalog, variant)
        metrics.answers.labels(answer.source).inc()
        # The ranking's JSON as the worker published it, spliced in: the hot path neither
        # parses nor re-validates it (RankingAnswer documents the shape).
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
        return Response(body + b"}", media_type="application/json")

    @app.post("/v1/events", status_code=202, response_model=Accepted,
              responses={422: {"model": Invalid}, 403: {}, 503: {}})
    async def events(caller: Caller, batch: EventBatch) -> Any:
        site = caller.site_id
        if service.ingest is None:
            raise HTTPException(503, "this replica takes no events")
        if caller.admin or any(isinstance(e.get("site_id"), str) and e["site_id"] != site
                               for e in batch.events):
            raise HTTPException(403, "events of another site")
        latest = service.ingest.latest_ts()
        results = [checked(e, n, site, latest) for n, e in enumerate(batch.events)]
        rejected = [r for r in results if isinstance(r, Rejected)]
        if rejected:
            metrics.events_ingested.labels("rejected").inc(len(rejected))
            return JSONResponse(status_code=422, content={"rejected": [
                {"index": r.index, "event_id": r.event_id, "reason": r.reason}
                for r in rejected]})
        records = [r for r in results if not isinstance(r, Rejected)]
        errors = await service.ingest.send(records, service.tracing.current_headers())
        failed = [n for n, error in enumerate(errors) if error is not None]
        metrics.events_ingested.labels("accepted").inc(len(records) - len(failed))
        if failed:
            metrics.events_ingested.labels("failed").inc(len(failed))
            raise HTTPException(503, {"failed": [
                {"index": n, "reason": errors[n]} for n in failed]})
        return Accepted(accepted=[str(e["event_id"]) for e in batch.events])

    @app.put("/v1/sites/{site_id}/config", status_code=202,
             responses={422: {}, 403: {}, 503: {}})
    async def site_config(caller: Caller, site_id: Annotated[str, Path(max_length=256)],
                          config: dict[str, Any]) -> dict[str, str]:
        """Set the site's settings and rules (``topics/reco.site-config.json``); admin keys
        only. 202 once the broker has the record: every worker applies it within seconds."""
        if not caller.admin:
            raise HTTPException(403, "site configs are set with an admin key")
        if service.ingest is None:
            raise HTTPException(503, "this replica writes nothing")
        try:
            raw = checked_site_config(site_id, config, service.sites)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        [error] = await service.ingest.send([(SITE_CONFIG, site_id.encode(), raw)])
        if error is not None:
            raise HTTPException(503, f"not written: {error}")
        return {"site_id": site_id, "status": "written"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = service.readiness.caught_up()
        return JSONResponse(status_code=200 if ok else 503,
                            content={"status": "ready" if ok else "catching_up"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        metrics.sessions_in_memory.set(len(service.book))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _wait_for(book: RankingBook, site: str, session: str, event_id: str,
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


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI schema, as ``/openapi.json`` serves it (and docs/openapi.json
    holds it: ``python -m app.serve.api > docs/openapi.json``)."""
    idle = Service(RankingBook(1), KeyBook(1.0), None, ServeMetrics(), Readiness(),
                   SiteSettings(Settings()))
    return create_app(idle).openapi()


if __name__ == "__main__":
    import json

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
