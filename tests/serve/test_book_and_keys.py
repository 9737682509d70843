"""The rank service's pure parts: its bounded memory of rankings, its API keys and their
rates, and the OpenAPI schema checked into the repository."""

from __future__ import annotations

import json
from pathlib import Path

from app.serve.api import openapi_document
from app.serve.book import TRIGGERS_KEPT, RankingBook
from app.serve.keys import KeyBook, KeyRecord, new_key

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def ranking(site: str, session: str, trigger: str | None, ts: int = 1, **extra) -> dict:
    return {"site_id": site, "session_id": session, "ts": ts, "trigger_event_id": trigger,
            "ranking_id": f"rk-{trigger}", "items": [], **extra}


def test_sessions_past_the_bound_are_forgotten_least_recently_updated_first():
    book = RankingBook(max_sessions=2)
    for n, session in enumerate(["a", "b", "a", "c"]):
        book.offer(ranking("shop", session, f"e{n}"))
    assert len(book) == 2
    assert [book.answer("shop", s, "").source for s in "abc"] == ["session", "none", "session"]


def test_a_session_without_its_own_ranking_gets_its_segment_default_then_the_site_default():
    book = RankingBook()
    book.offer(ranking("shop", "*", None, segment="device=mobile"))
    book.offer(ranking("shop", "*", None, segment=""))
    book.offer(ranking("other", "s1", "e1"))
    assert book.answer("shop", "s1", "device=mobile").source == "segment"
    assert book.answer("shop", "s1", "device=tv").source == "site"
    assert book.answer("shop", "s1", "").source == "site"
    assert book.answer("nobody", "s1", "").source == "none"
    # another site's session of the same id is not this site's
    assert book.answer("shop", "s1", "").ranking["session_id"] == "*"


def test_the_ranking_an_event_triggered_is_found_after_newer_ones_until_many_came():
    book = RankingBook()
    woken = []
    book.on_next("shop", "s", lambda: woken.append(1))
    for n in range(TRIGGERS_KEPT):
        book.offer(ranking("shop", "s", f"e{n}", ts=n))
    assert woken == [1]  # once, at the first
    assert book.has_answered("shop", "s", "e0") and not book.has_answered("shop", "s", "x")
    # the last ranking read wins, whatever its event's clock said (a site's clocks differ)
    book.offer(ranking("shop", "s", "behind", ts=0))
    assert book.answer("shop", "s", "").ranking["trigger_event_id"] == "behind"
    assert not book.has_answered("shop", "s", "e0")  # further back than TRIGGERS_KEPT


def test_a_session_named_like_the_default_is_a_session():
    book = RankingBook()
    book.offer(ranking("shop", "*", None, segment=""))
    book.offer(ranking("shop", "*", "mine"))  # a real session whose id is "*"
    assert book.answer("shop", "new", "").ranking["trigger_event_id"] is None
    assert book.answer("shop", "*", "").ranking["trigger_event_id"] == "mine"


def test_a_key_opens_its_own_site_only_and_only_its_digest_is_stored():
    keys = KeyBook(rate_per_s=10)
    key, record = new_key("shop:a")
    keys.offer(record.key_id, KeyRecord.from_value(record.to_value()))
    assert key.split("_")[-1] not in record.to_value().decode()
    found = keys.identify(key)
    assert found is not None and found.opens("shop:a") and not found.opens("shop")
    assert keys.identify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # wrong secret
    assert keys.identify(None) is None and keys.identify("garbage") is None
    keys.offer(record.key_id, None)  # revoked
    assert keys.identify(key) is None
    admin, record = new_key(None)
    keys.offer(record.key_id, KeyRecord.from_value(record.to_value()))
    found = keys.identify(admin)
    assert found is not None and found.admin and not found.opens("")  # opens no site


def test_each_key_has_its_own_rate_refilled_by_the_clock():
    now = [0.0]
    keys = KeyBook(rate_per_s=3, clock=lambda: now[0])
    a, b = new_key("a")[0], new_key("b")[0]
    assert [keys.allow(a) for _ in range(4)] == [True, True, True, False]
    assert keys.allow(b)  # another key's budget is its own
    now[0] += 1 / 3
    assert keys.allow(a) and not keys.allow(a)


def test_key_records_read_back_from_the_topic_are_checked():
    for raw in (b"[]", b'{"key_id": "x", "site_id": "s", "sha256": "' + b"0" * 64 + b'"}',
                b'{"key_id": "0123456789ab", "site_id": "", "sha256": "00"}'):
        try:
            KeyRecord.from_value(raw)
        except ValueError:
            continue
        raise AssertionError(f"{raw!r} was taken as a key record")


def test_the_checked_in_openapi_schema_is_the_services():
    """``python -m app.serve.api > docs/openapi.json`` after changing the API."""
    assert json.loads(OPENAPI.read_text()) == openapi_document()
