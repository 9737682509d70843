"""The rank service's HTTP API (FastAPI: typed routes, request validation and the OpenAPI
schema from one declaration; served by uvicorn).

Every ``/v1`` call carries a site's API key (``Authorization: Bearer <key>``): no key or an
unknown one is 401, another site's path or events 403, a key past its rate 429; all of it
before a body is read (:class:`app.serve.edge.Guard`). Bodies are parsed here, not by
FastAPI, by :func:`app.contract.decode.loads_checked`: what the encoder cannot write back
exactly is refused 422 naming its field, before anything is produced. Ids in paths are
percent-encoded path segments, decoded once (:func:`path_id`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp

from app import __version__
from app.contract.decode import InvalidInput, loads_checked
from app.contract.site_config import checked_site_config
from app.contract.topics import SITE_CONFIG
from app.core.sites import SiteSettings
from app.observability.metrics import ServeMetrics
from app.observability.tracing import Tracing
from app.serve.book import CatalogItems, RankingBook
from app.serve.edge import CALLER, NEED_KEY, Guard, Measured, RawPath, Shielded
from app.serve.ingest import (
    MAX_EVENTS_PER_REQUEST,
    EventIngest,
    Rejected,
    checked,
)
from app.serve.keys import KeyBook, KeyRecord
from app.serve.ranking import (
    MAX_EVENT_ID_CHARS,
    MAX_PATH_ID_CHARS,
    MAX_SEGMENT_CHARS,
    MAX_WAIT_MS,
    ROUTE,
    RankingFastPath,
    path_id,
    ranking_body,
)
from app.settings import Settings

# An error answer lists at most this many refused events (rejected_count says how many).
MAX_REJECTED_LISTED = 32
MAX_REASON_CHARS = 300
# Events checked between two turns of the event loop, so reads wait for no large batch.
CHECK_CHUNK = 50


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
        "topic's fields (app/contract/topic_specs/*.json).")


class Accepted(BaseModel):
    accepted: list[str]


class Invalid(BaseModel):
    rejected: list[dict[str, Any]] = Field(description=f"The first {MAX_REJECTED_LISTED} "
                                           "refused events: index, event_id, reason.")
    rejected_count: int = Field(description="How many events were refused in all.")


async def identify(request: Request) -> KeyRecord:
    """The caller's key, as :class:`app.serve.edge.Guard` found it before the body. Async:
    FastAPI runs a plain function dependency on a thread pool, a thread handoff per request
    that waits for the scheduler on busy cores."""
    record: KeyRecord | None = request.scope.get(CALLER)
    if record is None:
        raise HTTPException(401, NEED_KEY)
    return record


Caller = Annotated[KeyRecord, Depends(identify)]


def own(caller: KeyRecord, site_id: str) -> None:
    if not caller.opens(site_id):
        raise HTTPException(403, "this key does not open this site")


async def json_body(request: Request) -> Any:
    """The request's body as JSON that re-encodes exactly; 422 naming the field if not.
    Guard has already checked the key, the content type and the length."""
    try:
        raw = await request.body()
    except ClientDisconnect:  # gone, or too slow (the 408 is sent): nothing to answer
        raise HTTPException(408, "the body did not arrive") from None
    try:
        return loads_checked(raw)
    except InvalidInput as exc:
        raise HTTPException(422, f"{exc.reason}: {exc.detail}"[:MAX_REASON_CHARS]) from None


def _refused(rejected: list[Rejected]) -> JSONResponse:
    """The 422 of a batch with refused events: the first few, bounded, never an input."""
    return JSONResponse(status_code=422, content={
        "rejected": [{"index": r.index, "event_id": r.event_id,
                      "reason": r.reason[:MAX_REASON_CHARS]}
                     for r in rejected[:MAX_REJECTED_LISTED]],
        "rejected_count": len(rejected)})


def _bounded_errors(app: FastAPI) -> None:
    """Error answers name what is wrong, never echo the input, and stay short."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": [str(part)[:64] for part in error.get("loc", ())][:8],
             "msg": str(error.get("msg", ""))[:MAX_REASON_CHARS], "type": error.get("type")}
            for error in list(exc.errors())[:8]]})

    @app.exception_handler(Exception)
    async def failed(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": "internal error"})


def create_app(service: Service, docs: bool = False) -> FastAPI:
    """The routes (``docs``: also serve /docs and /redoc, pages that load their scripts from
    a CDN; /openapi.json is always served, as docs/openapi.json holds it)."""
    app = FastAPI(title="recoloop rank service", version=__version__,
                  description="Rankings per session, read-your-writes; events in. "
                  "Ids in paths are percent-encoded path segments (%2F for /).",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  # Traces are app.observability.tracing's (OTEL_* asks for them); FastAPI's
                  # own telemetry would look up the global providers on every request.
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.service = service
    _bounded_errors(app)
    if service.tracing.enabled:
        # A span per request, continuing the caller's traceparent; posted events carry it on.
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        FastAPIInstrumentor.instrument_app(app, tracer_provider=service.tracing.provider,
                                           excluded_urls="health,ready,metrics")
    _ranking_route(app, service)
    _events_route(app, service)
    _config_route(app, service)
    _plain_routes(app, service)
    # The first added is the innermost: the fast path sees the key Guard found.
    route = next(r for r in app.routes if getattr(r, "path", None) == ROUTE)
    app.add_middleware(RankingFastPath, service=service, route=route)
    app.add_middleware(Guard, keys=service.keys)
    app.add_middleware(RawPath)  # outside Guard: a key opens what the raw path names
    app.add_middleware(Measured, metrics=service.metrics)  # counts what Guard refuses too
    return app


def asgi_app(service: Service, docs: bool = False) -> ASGIApp:
    """What uvicorn serves: the routes inside :class:`app.serve.edge.Shielded`."""
    return Shielded(create_app(service, docs))


ENCODED = "percent-encoded (RFC 3986): %2F for /, %25 for %, %3F for ?, %23 for #"


def _ranking_route(app: FastAPI, service: Service) -> None:
    @app.get(ROUTE, response_model=RankingAnswer, response_class=JSONResponse)
    async def ranking(
            caller: Caller,
            site_id: Annotated[str, Path(max_length=MAX_PATH_ID_CHARS, description=ENCODED)],
            session_id: Annotated[str, Path(max_length=MAX_PATH_ID_CHARS,
                                            description=ENCODED)],
            segment: Annotated[str, Query(
                max_length=MAX_SEGMENT_CHARS, description="The session's context segment for a "
                "default ranking: sorted key=value pairs joined by '|', e.g. "
                "device=mobile|region=eu"
            )] = "",
            after_event_id: Annotated[str | None, Query(
                max_length=MAX_EVENT_ID_CHARS,
                description="Wait for the ranking this event triggered.")]
            = None,
            wait_ms: Annotated[int, Query(ge=0, le=MAX_WAIT_MS)] = 0,
            explain: Annotated[bool, Query(
                description="Add why: each arm's estimate and probability in this context, "
                "and what placed each item (the arm, a fallback or a promotion).")] = False
            ) -> Response:
        site_id, session_id = path_id(site_id, "site_id"), path_id(session_id, "session_id")
        own(caller, site_id)
        body = await ranking_body(service, site_id, session_id, segment, after_event_id,
                                  wait_ms, explain)
        return Response(body, media_type="application/json")


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def _events_route(app: FastAPI, service: Service) -> None:
    metrics = service.metrics

    @app.post("/v1/events", status_code=202, response_model=Accepted,
              responses={422: {"model": Invalid}, 403: {}, 415: {}, 503: {}},
              openapi_extra=_body(EventBatch.model_json_schema()))
    async def events(caller: Caller, request: Request) -> Any:
        site = caller.site_id
        if service.ingest is None:
            raise HTTPException(503, "this replica takes no events")
        if caller.admin:
            raise HTTPException(403, "events of another site")
        batch = _events(await json_body(request))
        if any(isinstance(e, dict) and isinstance(e.get("site_id"), str) and e["site_id"] != site
               for e in batch):
            raise HTTPException(403, "events of another site")
        latest = service.ingest.latest_ts()
        results: list[tuple[str, bytes, bytes] | Rejected] = []
        for n, event in enumerate(batch):
            if n and n % CHECK_CHUNK == 0:
                await asyncio.sleep(0)  # let waiting reads in
            results.append(checked(event, n, site, latest))
        rejected = [r for r in results if isinstance(r, Rejected)]
        if rejected:
            metrics.events_ingested.labels("rejected").inc(len(rejected))
            return _refused(rejected)
        records = [r for r in results if not isinstance(r, Rejected)]
        errors = await service.ingest.send(records, service.tracing.current_headers())
        failed = [n for n, error in enumerate(errors) if error is not None]
        metrics.events_ingested.labels("accepted").inc(len(records) - len(failed))
        if failed:
            metrics.events_ingested.labels("failed").inc(len(failed))
            raise HTTPException(503, {"failed": [
                {"index": n, "reason": str(errors[n])[:MAX_REASON_CHARS]}
                for n in failed[:MAX_REJECTED_LISTED]], "failed_count": len(failed)})
        return Accepted(accepted=[str(e["event_id"]) for e in batch])


def _config_route(app: FastAPI, service: Service) -> None:
    @app.put("/v1/sites/{site_id}/config", status_code=202,
             responses={422: {}, 403: {}, 415: {}, 503: {}},
             openapi_extra=_body({"type": "object", "description": "The site's config: "
                                  "app/contract/topic_specs/reco.site-config.json (site_id "
                                  "may be left out)."}))
    async def site_config(caller: Caller, request: Request, site_id: Annotated[
            str, Path(max_length=MAX_PATH_ID_CHARS, description=ENCODED)]) -> dict[str, str]:
        """Set the site's settings and rules (``app/contract/topic_specs/reco.site-config.json``);
        admin keys only. 202 once the broker has the record: every worker applies it within
        seconds."""
        site_id = path_id(site_id, "site_id")
        if not caller.admin:
            raise HTTPException(403, "site configs are set with an admin key")
        if service.ingest is None:
            raise HTTPException(503, "this replica writes nothing")
        config = await json_body(request)
        try:
            raw = checked_site_config(site_id, config, service.sites)
        except ValueError as exc:
            raise HTTPException(422, str(exc)[:MAX_REASON_CHARS]) from None
        [error] = await service.ingest.send([(SITE_CONFIG, site_id.encode(), raw)])
        if error is not None:
            raise HTTPException(503, f"not written: {error}"[:MAX_REASON_CHARS])
        return {"site_id": site_id, "status": "written"}


def _events(body: Any) -> list[Any]:
    """The events of a POST /v1/events body; 422 unless it holds a list of at most
    MAX_EVENTS_PER_REQUEST."""
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list):
        raise HTTPException(422, 'events: required, a list ({"events": [...]})')
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise HTTPException(422, f"events: at most {MAX_EVENTS_PER_REQUEST} per request, "
                            f"not {len(events)}")
    return events


def _plain_routes(app: FastAPI, service: Service) -> None:
    metrics = service.metrics

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


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI schema, as ``/openapi.json`` serves it (and docs/openapi.json
    holds it: ``python -m app.serve.api > docs/openapi.json``)."""
    idle = Service(RankingBook(1), KeyBook(1.0), None, ServeMetrics(), Readiness(),
                   SiteSettings(Settings()))
    return create_app(idle).openapi()


if __name__ == "__main__":
    import json

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
