"""``recoloop serve``, ``recoloop keys`` and ``recoloop sites``: the rank service, its API keys
and the sites' configs, on Kafka."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import uvicorn
from confluent_kafka import KafkaError, Message, Producer

from app.contract.decode import InvalidInput, decode_catalog
from app.contract.site_config import apply_site_config, checked_site_config
from app.contract.topics import SITE_CONFIG, Topics
from app.core.sites import SiteSettings
from app.kafka import clients
from app.kafka.reader import TopicReader
from app.kafka.topic_admin import InternalTopic, ensure_internal_topics
from app.observability.metrics import ServeMetrics
from app.observability.tracing import Tracing, TracingError
from app.serve.api import Readiness, Service, asgi_app
from app.serve.book import CatalogItems, RankingBook
from app.serve.edge import server_options
from app.serve.feeds import TopicFeed
from app.serve.ingest import EventIngest
from app.serve.keys import KeyBook, KeyRecord, is_key_id, new_key, site_id_problem
from app.settings import Settings

log = logging.getLogger(__name__)


class FeedReadiness(Readiness):
    def __init__(self, *feeds: TopicFeed) -> None:
        self.feeds = feeds

    def caught_up(self) -> bool:
        return all(feed.caught_up for feed in self.feeds)

    def broker_away(self) -> bool:
        return any(feed.broker_away for feed in self.feeds)


def _ensure_keys_topic(settings: Settings) -> str:
    topic = Topics.of(settings).api_keys
    ensure_internal_topics(settings, {topic: InternalTopic(1, {"cleanup.policy": "compact"})})
    return topic


def offer_key(keys: KeyBook, message: Message) -> None:
    key_id = (message.key() or b"").decode("utf-8", "replace")
    raw = message.value()
    try:
        record = None if raw is None else KeyRecord.from_value(raw)
        if record is not None and record.key_id != key_id:
            raise ValueError("its key id is not its record key")
        keys.offer(key_id, record)
    except ValueError as exc:
        log.error("api-keys: the record of %r is not a key record (%s): skipped", key_id, exc)


def offer_catalog(catalog: CatalogItems, message: Message) -> None:
    try:
        site_id, item_id, value = decode_catalog(message.key(), message.value())
    except InvalidInput:
        return  # the workers dead-letter it
    catalog.offer(site_id, item_id, value is not None and bool(value["available"]))


def offer_site_config(sites: SiteSettings, message: Message) -> None:
    """Follow the sites' experiments (a session's variant picks its default ranking)."""
    problem = apply_site_config(sites, message.key(), message.value())
    if problem is not None:
        log.warning("site config at offset %d refused, the previous one stays: %s",
                    message.offset(), problem)


def offer_ranking(book: RankingBook, message: Message) -> None:
    raw = message.value()
    if raw is not None:
        book.offer(orjson.loads(raw), raw)


def run(settings: Settings) -> int:
    logging.basicConfig(level=settings.worker.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tracing = Tracing.from_env("recoloop-serve")
    except TracingError as exc:
        print(f"recoloop serve: {exc}", file=sys.stderr)
        return 2
    keys_topic = _ensure_keys_topic(settings)
    book = RankingBook(settings.serve.max_sessions)
    keys = KeyBook(settings.serve.key_rate_per_s)
    # A session's ranking matters while the session may come back.
    lookback_ms = int(settings.join.session_timeout_s * 1000)
    rankings = TopicFeed(settings, Topics.of(settings).rankings,
                         lambda m: offer_ranking(book, m), lookback_ms).start()
    key_feed = TopicFeed(settings, keys_topic, lambda m: offer_key(keys, m)).start()
    catalog = CatalogItems()
    catalog_feed = TopicFeed(settings, Topics.of(settings).catalog,
                             lambda m: offer_catalog(catalog, m)).start()
    sites = SiteSettings(settings)
    config_feed = TopicFeed(settings, Topics.of(settings).site_config,
                            lambda m: offer_site_config(sites, m)).start()
    ingest = EventIngest(settings)
    service = Service(book, keys, ingest, ServeMetrics(),
                      FeedReadiness(rankings, key_feed, catalog_feed, config_feed), sites,
                      catalog, tracing)
    app = asgi_app(service, settings.serve.docs)
    # What is imported and built by now lives as long as the process: kept out of the
    # collector's full passes, each of which stops the event loop while it walks the heap.
    gc.freeze()
    try:
        uvicorn.run(app, **server_options(settings))
    finally:
        for feed in (rankings, key_feed, catalog_feed, config_feed):
            feed.stop()
        ingest.close()
        tracing.shutdown()
    return 0


def _produce(settings: Settings, topic: str, key: str, value: bytes | None) -> None:
    producer = Producer(clients.idempotent_producer(settings))
    errors: list[KafkaError] = []
    producer.produce(topic, value, key.encode(),
                     on_delivery=lambda error, _m: errors.append(error) if error else None)
    if producer.flush(30) or errors:
        raise RuntimeError(f"the key record was not written: {errors or 'timed out'}")


def create_key(settings: Settings, site_id: str | None) -> str:
    """A new key for ``site_id`` (None: an admin key), on the keys topic; the key itself is
    returned once."""
    key, record = new_key(site_id)
    _produce(settings, _ensure_keys_topic(settings), record.key_id, record.to_value())
    return key


def revoke_key(settings: Settings, key_id: str) -> None:
    _produce(settings, _ensure_keys_topic(settings), key_id, None)


def read_to_end(settings: Settings, topic: str, apply: Callable[[Message], None]) -> None:
    """Every record of ``topic``, from its start to its end (or until the broker has not
    answered for 10 s)."""
    reader = TopicReader(clients.committed_consumer(settings, f"{settings.app_id}-cli"),
                         topic, apply)
    try:
        if reader.assign(timeout_s=10):
            while not reader.caught_up and reader.poll(10):
                pass
    finally:
        reader.close()


def key_records(settings: Settings) -> Iterator[KeyRecord]:
    """Every live key record, read from the keys topic to its end."""
    keys = KeyBook(1.0)
    read_to_end(settings, _ensure_keys_topic(settings), lambda m: offer_key(keys, m))
    yield from keys.records()


def keys_command(settings: Settings, action: str, site: str | None, key_id: str | None) -> int:
    if action == "create":
        problem = None if site is None else site_id_problem(site)
        if problem is not None:
            print(f"recoloop keys create: refused: {problem}", file=sys.stderr)
            return 2
        print(create_key(settings, site))
        print("(shown once: store it now; only its SHA-256 is kept)", file=sys.stderr)
    elif action == "revoke":
        assert key_id is not None
        if not is_key_id(key_id):
            print("recoloop keys revoke: give the key id (the 12 hex digits after rk_, as "
                  "keys list shows them), not the key", file=sys.stderr)
            return 2
        revoke_key(settings, key_id)
        print(f"revoked {key_id}")
    else:
        for record in key_records(settings):
            if site is None or record.site_id == site:
                print(f"{record.key_id}\t{'(admin)' if record.admin else record.site_id}"
                      f"\tcreated_ms={record.created_ms}")
    return 0


def set_site_config(settings: Settings, site_id: str, value: object) -> None:
    """Write ``site_id``'s config; ValueError with the reason when it is refused."""
    raw = checked_site_config(site_id, value, SiteSettings(settings))
    _produce(settings, settings.topic(SITE_CONFIG), site_id, raw)


def sites_command(settings: Settings, action: str, site_id: str, path: Path | None) -> int:
    if action == "set":
        assert path is not None
        try:
            set_site_config(settings, site_id, orjson.loads(path.read_bytes()))
        except (ValueError, OSError) as exc:  # orjson's decode error is a ValueError
            print(f"recoloop sites set: refused: {exc}", file=sys.stderr)
            return 2
        print(f"{site_id}: written; every worker applies it within seconds")
    elif action == "reset":
        _produce(settings, settings.topic(SITE_CONFIG), site_id, None)
        print(f"{site_id}: back to the defaults")
    else:
        latest: dict[str, bytes | None] = {}
        read_to_end(settings, settings.topic(SITE_CONFIG),
                    lambda m: latest.__setitem__((m.key() or b"").decode(), m.value()))
        raw = latest.get(site_id)
        print("(no config: the RECOLOOP_* defaults)" if raw is None else
              orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode())
    return 0
