"""The copies every worker keeps, each a :class:`app.stream.runtime.protocol.Replica` of a
topic it reads in full: the catalog, the sites' settings, the bandit models and the sites'
shared statistics. What does not decode is skipped, logged and counted."""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.contract.decode import InvalidInput, decode_catalog
from app.contract.site_config import apply_site_config
from app.core.catalog import apply_record
from app.core.sites import SiteSettings
from app.core.store import Store
from app.stream.bandits import BanditModels
from app.stream.runtime.protocol import Record

log = logging.getLogger(__name__)

Undecodable = Callable[[str], None]  # counts a record skipped, by its source


def _text_key(record: Record) -> str | None:
    try:
        return None if record.key is None else record.key.decode("utf-8")
    except UnicodeDecodeError:
        return None


class CatalogReplica:
    """Each item's category and availability, in a store the engine reads."""

    caught_up_on_assign = False

    def __init__(self, topic: str, catalog: Store) -> None:
        self.topic = topic
        self.catalog = catalog

    def apply(self, record: Record) -> None:
        try:
            site_id, item_id, value = decode_catalog(record.key, record.value)
        except InvalidInput:
            return  # the partition's owner dead-letters it (RecoProcessor.catalog_record)
        apply_record(self.catalog, site_id, item_id, value)


class SiteConfigReplica:
    """A site's settings and rules: applied at once, or refused (the site keeps its own)."""

    caught_up_on_assign = False

    def __init__(self, topic: str, sites: SiteSettings, models: BanditModels,
                 undecodable: Undecodable) -> None:
        self.topic = topic
        self.sites = sites
        self.models = models
        self.undecodable = undecodable

    def apply(self, record: Record) -> None:
        site_id = (record.key or b"").decode("utf-8", "replace")
        problem = apply_site_config(self.sites, record.key, record.value)
        if problem is not None:
            log.error("site config of %r at offset %d refused, the previous one stays: %s",
                      site_id, record.offset, problem)
            self.undecodable("site_config")
            return
        self.models.reconfigured(site_id)


class SharedReplica:
    """A compacted topic of state every worker shares, as committed: each record's value
    offered under its UTF-8 key (``offer``); tombstones teach nothing. Caught up on each
    assignment, so that no site learns from older state than the one committed. The bandit
    models (source ``models``) and the site statistics (``site_stats``) are read so."""

    caught_up_on_assign = True

    def __init__(self, topic: str, offer: Callable[[str, bytes], None], source: str,
                 undecodable: Undecodable) -> None:
        self.topic, self.offer, self.source = topic, offer, source
        self.undecodable = undecodable

    def apply(self, record: Record) -> None:
        if record.value is None:
            return  # a tombstone: nothing to learn from
        key = _text_key(record)
        if key is None:
            log.warning("%s: skipped a record without a UTF-8 key", self.topic)
            self.undecodable(self.source)
            return
        self.offer(key, record.value)
