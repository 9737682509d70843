"""The rank service under hostile HTTP, through a real uvicorn and the real broker (one
service for the module, see conftest.py): whatever it cannot write back exactly is refused
422 naming the field, before anything is produced, on a connection that stays usable; every
id the contract allows is addressable; slow clients are cut off; keys are checked before
bodies; error answers are short."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from app.cli import main as cli_main
from app.contract.topics import CLICKS, RANKINGS
from app.core.sites import SiteSettings
from app.observability.metrics import ServeMetrics
from app.serve.api import Readiness, Service, asgi_app, create_app
from app.serve.book import RankingBook
from app.serve.edge import Shielded
from app.serve.keys import KeyBook
from app.serve.main import key_records
from app.settings import Settings
from tests.kafka_io import now_ms, produce
from tests.serve.conftest import (
    BODY_TIMEOUT_S,
    HEAD_TIMEOUT_S,
    ODD_SITE,
    Client,
    EdgeService,
    event_ids,
    log_of,
    read_to_end,
    served,
)

pytestmark = pytest.mark.integration

DEEP = "__deep__"


def click(event_id: str, site: str = "shop", session: str = "s1", **extra: Any
          ) -> dict[str, Any]:
    return {"type": "click", "event_id": event_id, "site_id": site, "session_id": session,
            "ts": now_ms(), "item_id": "sku-1", **extra}


def hostile(value: Any, depth: int = 0) -> bytes:
    """``value`` as JSON the way a careless or hostile client writes it: exact big
    integers, NaN and Infinity literals, lone surrogates as \\u escapes, and the string
    DEEP replaced by arrays nested ``depth`` deep."""
    text = json.dumps(value, allow_nan=True)
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth).encode()


# (what, the hostile event's extra fields, nesting of DEEP, reason, the field named)
EVENT_CASES = [
    ("ts 2**64", {"ts": 2**64}, 0, "integer_range", "events[1].ts"),
    ("price 2**70", {"price": 2**70}, 0, "integer_range", "events[1].price"),
    ("an extra field 2**70", {"n": 2**70}, 0, "integer_range", "events[1].n"),
    ("an extra field -2**63-1", {"n": -(2**63) - 1}, 0, "integer_range", "events[1].n"),
    ("a surrogate in item_id", {"item_id": "\ud800"}, 0, "invalid_text", "events[1].item_id"),
    ("... in event_id", {"event_id": "e\udfff"}, 0, "invalid_text", "events[1].event_id"),
    ("... in session_id", {"session_id": "\ud800s"}, 0, "invalid_text",
     "events[1].session_id"),
    ("... in an extra key", {"\ud800": 1}, 0, "invalid_text", "events[1]."),
    ("... in an extra value", {"x": ["\udc00"]}, 0, "invalid_text", "events[1].x[0]"),
    ("an extra field 254 deep", {"x": DEEP}, 254, "too_deep", "events[1].x"),
    ("an extra field 100,000 deep", {"x": DEEP}, 100_000, "too_deep", "value"),
    ("context 254 deep", {"context": {"a": DEEP}}, 254, "too_deep", "events[1].context.a"),
    ("a NaN price", {"price": float("nan")}, 0, "not_finite", "events[1].price"),
    ("an Infinity field", {"x": float("inf")}, 0, "not_finite", "events[1].x"),
    ("a -Infinity field", {"x": {"y": float("-inf")}}, 0, "not_finite", "events[1].x.y"),
]
CONFIG_CASES = [
    ("reward_window_s 2**70", {"reward_window_s": 2**70}, 0, "integer_range",
     "reward_window_s"),
    ("a surrogate in a rule", {"rules": {"exclude_items": ["\ud800"]}}, 0, "invalid_text",
     "rules.exclude_items[0]"),
    ("rules 300 deep", {"rules": {"x": DEEP}}, 300, "too_deep", "rules.x"),
    ("a NaN grace", {"grace_s": float("nan")}, 0, "not_finite", "grace_s"),
]


def test_what_does_not_re_encode_is_refused_naming_it_and_nothing_is_produced(
        edge: EdgeService):
    client = edge.connection()
    valid = 0
    for n, (what, fields, depth, reason, field) in enumerate(EVENT_CASES):
        body = hostile({"events": [click(f"ok-{n}"), {**click(f"bad-{n}"), **fields}]}, depth)
        status, answer, _ = client.request("POST", "/v1/events", edge.key, raw=body)
        assert status == 422, (what, status, answer[:300], log_of(edge)[-2000:])
        assert f"{reason}: {field}".encode() in answer and len(answer) < 600, (what, answer)
        # the same connection goes on: a valid request is taken
        status, _, headers = client.request("POST", "/v1/events", edge.key,
                                            {"events": [click(f"valid-{n}")]})
        assert status == 202 and headers.getheader("connection") != "close", what
        valid += 1
    for what, fields, depth, reason, field in CONFIG_CASES:
        status, answer, _ = client.request("PUT", "/v1/sites/shop/config", edge.admin,
                                           raw=hostile(fields, depth))
        assert status == 422 and f"{reason}: {field}".encode() in answer, (what, answer)
    assert client.request("PUT", "/v1/sites/shop/config", edge.admin,
                          {"grace_s": 2})[0] == 202
    assert client.open
    produced = event_ids(read_to_end(edge.settings))
    assert {f"valid-{n}" for n in range(valid)} <= produced
    assert not {i for i in produced if i.startswith(("ok-", "bad-"))}  # no partial batch
    assert "Traceback" not in log_of(edge)


def test_nesting_within_the_limit_is_taken(edge: EdgeService):
    status, answer, _ = edge.connection().request(
        "POST", "/v1/events", edge.key, raw=hostile({"events": [click("nested", x=DEEP)]}, 29))
    assert status == 202, answer


def idle_service() -> Service:
    return Service(RankingBook(1), KeyBook(1.0), None, ServeMetrics(), Readiness(),
                   SiteSettings(Settings()))


def test_a_500_is_whole_and_the_connection_serves_the_next_request():
    app = create_app(idle_service())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with served(Shielded(app)) as port:
        client = Client(port)
        status, body, _ = client.request("GET", "/boom")
        assert status == 500
        assert client.request("GET", "/health")[0] == 200  # same connection: it raises if not
        assert orjson.loads(body) == {"detail": "internal error"}
        client.close()


def test_every_id_the_contract_allows_is_read_back(edge: EdgeService):
    session = "a/b 50%?#&+=;x%2F"
    client = edge.connection()
    path = f"/v1/sites/{quote(ODD_SITE, safe='')}/sessions/{quote(session, safe='')}/ranking"
    status, _, _ = client.request("POST", "/v1/events", edge.odd_key,
                                  {"events": [click("odd-1", ODD_SITE, session)]})
    assert status == 202
    [record] = [m for m in read_to_end(edge.settings, (CLICKS,)) if b'"odd-1"' in m.value()]
    assert record.key() == session.encode()
    # the ranking a worker publishes for it
    produce(edge.settings, [(edge.settings.topic(RANKINGS), session.encode(), orjson.dumps({
        "ranking_id": "r-odd", "site_id": ODD_SITE, "session_id": session, "ts": now_ms(),
        "arm": "similar", "propensity": 1.0, "items": [], "model_version": 1,
        "trigger_event_id": "odd-1"}))])
    status, body, _ = client.request("GET", f"{path}?after_event_id=odd-1&wait_ms=10000",
                                     edge.odd_key)
    answer = orjson.loads(body)
    assert status == 200 and answer["after_event_reached"] is True, body
    assert (answer["source"], answer["ranking"]["session_id"]) == ("session", session)
    assert client.request("GET", path, edge.key)[0] == 403  # another site's key
    status, body, _ = client.request(
        "PUT", f"/v1/sites/{quote(ODD_SITE, safe='')}/config", edge.admin, {"grace_s": 3})
    assert (status, orjson.loads(body)["site_id"]) == (202, ODD_SITE)
    status, body, _ = client.request("GET", "/v1/sites/shop/sessions/%FF/ranking", edge.key)
    assert status == 422 and b"session_id" in body  # escapes that are not UTF-8
    assert client.request("GET", f"/v1/sites/shop/sessions/{'x' * 257}/ranking",
                          edge.key)[0] == 422


def answer_of_silence(port: int, sent: bytes) -> tuple[bytes, float]:
    """What the server says to a client that sends ``sent`` and then nothing, until it
    closes the connection, and how long that took."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        started = time.monotonic()
        connection.sendall(sent)
        received = b""
        while chunk := connection.recv(4096):
            received += chunk
        return received, time.monotonic() - started


def test_a_slow_client_gets_408_and_its_connection_is_closed(edge: EdgeService):
    head = (f"POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {edge.key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    cases = [(b"", HEAD_TIMEOUT_S), (head[:40].encode(), HEAD_TIMEOUT_S),
             (head.encode() + b'{"events": ', BODY_TIMEOUT_S)]
    with ThreadPoolExecutor(len(cases)) as pool:  # three silent clients at once
        answers = list(pool.map(lambda case: answer_of_silence(edge.port, case[0]), cases))
    for (sent, limit), (received, took) in zip(cases, answers, strict=True):
        assert received.startswith(b"HTTP/1.1 408 "), (sent, received)
        # uvloop's timers count whole milliseconds: one may end a little before the limit
        assert limit - 0.05 <= took < limit + 3, (sent, took)
    assert "Traceback" not in log_of(edge)


def test_the_key_is_checked_before_the_body_on_every_route(edge: EdgeService):
    client = edge.connection()
    unknown = "rk_0123456789ab_" + "x" * 43
    for method, path in (("POST", "/v1/events"), ("PUT", "/v1/sites/shop/config")):
        for key in (None, unknown):
            assert client.request(method, path, key, raw=b"{not json")[0] == 401, (path, key)
    assert client.request("POST", "/v1/events", edge.key, raw=b"{not json")[0] == 422
    # an admin key on events, a site key on configs: 403, before the body too
    assert client.request("POST", "/v1/events", edge.admin, raw=b"{not json")[0] == 403
    assert client.request("PUT", "/v1/sites/shop/config", edge.key, raw=b"{")[0] == 403


def test_a_body_that_is_not_json_is_refused_415_and_never_echoed(edge: EdgeService):
    client = edge.connection()
    marker = b"echo-me-" * 20
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None,
                         "application/json; charset=latin-1"):
        for method, path, key in (("POST", "/v1/events", edge.key),
                                  ("PUT", "/v1/sites/shop/config", edge.admin)):
            status, body, _ = client.request(method, path, key, raw=b"events=" + marker,
                                             content_type=content_type)
            assert status == 415 and marker not in body, (content_type, path, body)
    status, _, _ = client.request("POST", "/v1/events", edge.key,
                                  raw=orjson.dumps({"events": [click("utf8")]}),
                                  content_type="application/json; charset=UTF-8")
    assert status == 202


def test_error_answers_are_short_and_never_echo_the_input(edge: EdgeService):
    client = edge.connection()
    marker = "echo-me-" * 30
    status, body, _ = client.request("POST", "/v1/events", edge.key,
                                     {"events": [click(f"m{n}", item_id=marker)
                                                 for n in range(1001)]})
    assert status == 422 and len(body) < 300 and b"1000" in body, body
    status, body, _ = client.request("POST", "/v1/events", edge.key,
                                     {"events": [click(f"m{n}", ts=marker, item_id=marker)
                                                 for n in range(1000)]})
    answer = orjson.loads(body)
    assert status == 422 and answer["rejected_count"] == 1000 and len(body) < 16_000
    assert marker.encode() not in body
    status, body, _ = client.request("GET", f"/v1/sites/shop/sessions/s/ranking?wait_ms="
                                     f"{marker}&segment={'s' * 5000}", edge.key)
    assert status == 422 and marker.encode() not in body and len(body) < 2_000, body


def test_keys_create_refuses_an_empty_or_malformed_site(edge: EdgeService, monkeypatch,
                                                          capsys):
    monkeypatch.setenv("RECOLOOP_BOOTSTRAP_SERVERS", edge.settings.kafka.bootstrap_servers)
    monkeypatch.setenv("RECOLOOP_TOPIC_PREFIX", edge.settings.kafka.topic_prefix)
    refused = ["", " shop", "shop\n", "a\tb", "x" * 257, "bad\udcff"]
    for site in refused:
        assert cli_main(["keys", "create", "--site", site]) == 2, site
        out, err = capsys.readouterr()
        assert out == "" and "refused" in err, (site, err)
    sites = {record.site_id for record in key_records(edge.settings) if not record.admin}
    assert sites == {"shop", ODD_SITE}


def test_docs_pages_are_off_unless_the_setting_serves_them(edge: EdgeService):
    client = edge.connection()
    for path in ("/docs", "/redoc"):
        assert client.request("GET", path)[0] == 404
    assert client.request("GET", "/openapi.json")[0] == 200
    with served(asgi_app(idle_service(), docs=True)) as port:
        client = Client(port)
        for path in ("/docs", "/redoc"):
            status, body, _ = client.request("GET", path)
            assert status == 200 and b"<html" in body.lower()
