"""Site settings as data, through the broker: a config set over HTTP with an admin key is
applied by the running worker within seconds (arms, business rules), another site keeps the
defaults, and an invalid config is refused with its reason while the previous one stays."""

from __future__ import annotations

import time

import orjson
import pytest

from app.contract.decode import catalog_key
from app.contract.topics import CATALOG, SITE_CONFIG
from app.settings import DEFAULT_ARMS, Settings
from tests.kafka_io import now_ms, produce
from tests.serve.test_service import call, click, key_for

pytestmark = pytest.mark.integration

CATALOG_ITEMS = {"a1": ("shoes", 10), "a2": ("shoes", 12), "pricey": ("shoes", 900),
                 "gift": ("gift-cards", 5), "promo": ("shoes", 20)}
CONFIG = {"arms": ["category1"],
          "rules": {"exclude_categories": ["gift-cards"], "price_max": 100,
                    "pinned": ["promo"], "promoted_places_max": 1}}


def ranking_after_click(port: int, key: str, site: str, n: int, item: str) -> dict:
    event_id = f"{site}-c{n}"
    assert call(port, "POST", "/v1/events", key,
                {"events": [click(site, f"s{n % 3}", event_id, item_id=item)]})[0] == 202
    status, body, _ = call(port, "GET", f"/v1/sites/{site}/sessions/s{n % 3}/ranking"
                           f"?after_event_id={event_id}&wait_ms=10000", key)
    assert status == 200 and body["after_event_reached"], body
    return body["ranking"]


def test_a_site_config_set_over_http_is_applied_by_the_running_worker(
        worker_settings: Settings, start_worker, start_service):
    s = worker_settings
    produce(s.kafka.bootstrap_servers, [
        (s.topic(CATALOG), catalog_key("shop", item).encode(), orjson.dumps({
            "site_id": "shop", "item_id": item, "category": category, "available": True,
            "price": price, "ts": now_ms()})) for item, (category, price)
        in CATALOG_ITEMS.items()])
    worker = start_worker()
    service = start_service()
    port = service.serve_port
    shop, other = key_for(s, port, "shop"), key_for(s, port, "other")
    admin = key_for(s, port, None)
    # No event of the site yet: available items of its catalog, flagged as such.
    status, body, _ = call(port, "GET", "/v1/sites/shop/sessions/new/ranking", shop)
    assert (status, body["source"], body["ranking"]) == (200, "catalog", None), body
    assert set(body["catalog_items"]) == set(CATALOG_ITEMS)

    assert call(port, "PUT", "/v1/sites/shop/config", shop, CONFIG)[0] == 403  # a site key
    status, body, _ = call(port, "PUT", "/v1/sites/shop/config", admin,
                           {**CONFIG, "reward_window_s": 1799})
    assert status == 422 and "RECOLOOP_SESSION_TIMEOUT_S" in body["detail"], body
    status, body, _ = call(port, "PUT", "/v1/sites/shop/config", admin,
                           {**CONFIG, "rules": {"exclude_item": ["a1"]}})
    assert status == 422 and "exclude_item" in body["detail"], body
    assert call(port, "PUT", "/v1/sites/shop/config", admin, CONFIG)[0] == 202

    # The worker applies it within seconds, without a restart.
    deadline = time.monotonic() + 30
    n = 0
    while (ranking := ranking_after_click(port, shop, "shop", n, "a1"))["arm"] != "category1":
        assert time.monotonic() < deadline, (ranking, worker.log_tail())
        n += 1
    for item in ("pricey", "gift", "a2", "a1", "pricey", "gift"):
        n += 1
        ranking = ranking_after_click(port, shop, "shop", n, item)
        shown = [entry["item_id"] for entry in ranking["items"]]
        assert (ranking["arm"], ranking["propensity"]) == ("category1", 1.0)
        assert shown[0] == "promo" and shown.count("promo") == 1, shown
        status, why, _ = call(port, "GET", f"/v1/sites/shop/sessions/s{n % 3}/ranking"
                              "?explain=true", shop)
        assert why["explain"]["placed_by"][0] == "pinned", why
        assert not {"pricey", "gift"} & set(shown), shown
    # Another site keeps the defaults.
    for m in range(3):
        ranking = ranking_after_click(port, other, "other", m, "a1")
        assert ranking["arm"] in DEFAULT_ARMS
        assert "promo" not in [entry["item_id"] for entry in ranking["items"]]

    # A record written past the checks is refused by the worker; the previous config stays.
    produce(s.kafka.bootstrap_servers, [(s.topic(SITE_CONFIG), b"shop", orjson.dumps(
        {"site_id": "shop", "arms": ["nonsense"]}))])
    deadline = time.monotonic() + 30
    while worker.metric("recoloop_records_undecodable_total", source="site_config") < 1:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    ranking = ranking_after_click(port, shop, "shop", n + 1, "a2")
    assert ranking["arm"] == "category1" and ranking["items"][0]["item_id"] == "promo"
