"""``recoloop serve`` through a real broker and a real worker: events posted over HTTP reach
the engine, the ranking they trigger is served read-your-writes, and a key opens its own
site only, on every route."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.contract.topics import CLICKS
from app.serve.main import create_key, revoke_key
from app.settings import Settings
from tests.kafka_io import collect, now_ms
from tests.serve.test_book_and_keys import OPENAPI

pytestmark = pytest.mark.integration


def call(port: int, method: str, path: str, key: str | None = None,
         body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null"), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), dict(error.headers)


def status_before_body(port: int, key: str | None, length: int | None) -> int:
    """The status a POST /v1/events gets for its head alone, claiming a ``length``-byte
    body (None: no Content-Length)."""
    head = "POST /v1/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {key}\r\n" if key else ""
    head += f"Content-Length: {length}\r\n" if length is not None else ""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall((head + "\r\n").encode())
        return int(connection.recv(1024).split(b" ", 2)[1])


def click(site: str, session: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "click", "event_id": event_id, "site_id": site, "session_id": session,
            "ts": now_ms(), "item_id": "sku-1", **extra}


def key_for(s: Settings, port: int, site: str | None) -> str:
    """A new key of ``site`` (None: an admin key), once the service has read it from the
    keys topic."""
    key = create_key(s, site)
    deadline = time.monotonic() + 30
    while call(port, "GET", f"/v1/sites/{site}/sessions/x/ranking", key)[0] == 401:
        assert time.monotonic() < deadline, "the service did not read the new key"
        time.sleep(0.1)
    return key


def routes(site: str) -> list[tuple[str, str, Any]]:
    """Every /v1 route, as ``site``'s caller would call it."""
    return [("GET", f"/v1/sites/{site}/sessions/s1/ranking", None),
            ("POST", "/v1/events", {"events": [click(site, "s1", "probe")]})]


def test_a_posted_event_is_ranked_and_served_read_your_writes(worker_settings: Settings,
                                                              start_worker, start_service):
    s = worker_settings
    start_worker()
    service = start_service()
    port = service.serve_port
    key = key_for(s, port, "shop")
    status, body, _ = call(port, "POST", "/v1/events", key,
                           {"events": [click("shop", "s1", "c1"), click("shop", "s2", "c2")]})
    assert (status, body) == (202, {"accepted": ["c1", "c2"]})
    # the broker has them, on the clicks topic, keyed by session
    clicks = collect(s, [s.topic(CLICKS)], lambda ms: len(ms) >= 2, 30)
    assert sorted(m.key() for m in clicks) == [b"s1", b"s2"]

    status, body, _ = call(port, "GET", "/v1/sites/shop/sessions/s1/ranking"
                           "?after_event_id=c1&wait_ms=10000", key)
    assert status == 200, (body, service.log_tail())
    assert body["source"] == "session" and body["after_event_reached"] is True
    assert body["ranking"]["trigger_event_id"] == "c1" and not body["stale"]
    assert "explain" not in body and "explain" not in body["ranking"]
    # why: every arm's estimate and exact probability here, and what placed each item
    status, why, _ = call(port, "GET", "/v1/sites/shop/sessions/s1/ranking?explain=true", key)
    arms, ranking = why["explain"]["arms"], why["ranking"]
    assert sum(arm["probability"] for arm in arms.values()) == pytest.approx(1.0)
    assert arms[ranking["arm"]]["probability"] == pytest.approx(ranking["propensity"])
    assert len(why["explain"]["placed_by"]) == len(ranking["items"])
    # a session the engine has not seen: the site's default (its first event made one)
    status, body, _ = call(port, "GET", "/v1/sites/shop/sessions/new/ranking", key)
    assert (status, body["source"]) == (200, "site"), body
    # an event that never comes: the wait ends at wait_ms, and says so
    started = time.monotonic()
    status, body, _ = call(port, "GET", "/v1/sites/shop/sessions/s1/ranking"
                           "?after_event_id=never&wait_ms=300", key)
    assert (status, body["after_event_reached"]) == (200, False)
    assert 0.3 <= time.monotonic() - started < 5

    status, body, _ = call(port, "POST", "/v1/events", key, {"events": [
        click("shop", "s1", "ok"), click("shop", "s1", "bad-ts", ts="soon"),
        {**click("shop", "s1", "no-item"), "item_id": None}, {"type": "purchase"}]})
    assert status == 422
    assert [(r["index"], r["event_id"]) for r in body["rejected"]] == [
        (1, "bad-ts"), (2, "no-item"), (3, None)]
    assert all(r["reason"] for r in body["rejected"])
    time.sleep(1)  # nothing of a refused batch is produced, not even its valid event
    assert [m.value() for m in collect(s, [s.topic(CLICKS)], lambda ms: False, 3)
            if b'"ok"' in m.value()] == []

    assert call(port, "GET", "/openapi.json")[1] == json.loads(Path(OPENAPI).read_text())
    assert service.metric("recoloop_serve_answers_total", source="session") >= 1
    assert service.metric("recoloop_serve_requests_total", status="422",
                          route="/v1/events") == 1


def test_a_key_reads_and_writes_its_own_site_only_on_every_route(worker_settings: Settings,
                                                                  start_service):
    s = worker_settings
    service = start_service(serve_key_rate_per_s="20")
    port = service.serve_port
    mine, theirs = key_for(s, port, "shop:a"), key_for(s, port, "shop")
    for method, path, body in routes("shop"):
        assert call(port, method, path, None, body)[0] == 401, path  # no key
        assert call(port, method, path, "rk_0123456789ab_" + "x" * 43, body)[0] == 401
        assert call(port, method, path, mine, body)[0] == 403, path  # another site's key
    assert call(port, "POST", "/v1/events", theirs,
                {"events": [click("shop", "s", "e1"), click("shop:a", "s", "e2")]})[0] == 403

    # refused before the body is read (none is sent): no key, or a body past the limit
    assert status_before_body(port, None, 5 * 2**20) == 401
    assert status_before_body(port, theirs, 5 * 2**20) == 413
    assert status_before_body(port, theirs, None) == 411

    revoke_key(s, mine[3:15])
    deadline = time.monotonic() + 30
    while call(port, "GET", "/v1/sites/shop:a/sessions/x/ranking", mine)[0] != 401 \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert call(port, "GET", "/v1/sites/shop:a/sessions/x/ranking", mine)[0] == 401

    answers = [call(port, "GET", "/v1/sites/shop/sessions/x/ranking", theirs)
               for _ in range(40)]
    limited = [headers for status, _, headers in answers if status == 429]
    assert limited and all(h.get("retry-after") == "1" for h in limited)
    assert len(limited) < 40  # the first second's worth went through
