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
from app.stream.site_stats import SiteStatistics

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


class ModelsReplica:
    """Every site's bandits as committed, newer versions replacing older ones. Caught up on
    each assignment, so that no site learns from an older model than the one committed."""

    caught_up_on_assign = True

    def __init__(self, topic: str, models: BanditModels, undecodable: Undecodable) -> None:
        self.topic = topic
        self.models = models
        self.undecodable = undecodable

    def apply(self, record: Record) -> None:
        if record.value is None:
            return  # a tombstone: nothing to learn from
        site_id = _text_key(record)
        if site_id is None:
            log.warning("models topic: skipped a record without a UTF-8 site key")
            self.undecodable("models")
            return
        self.models.offer(site_id, record.value)


class SiteStatsReplica:
    """Every site's shared item statistics as committed; caught up on each assignment."""

    caught_up_on_assign = True

    def __init__(self, topic: str, site_stats: SiteStatistics,
                 undecodable: Undecodable) -> None:
        self.topic = topic
        self.site_stats = site_stats
        self.undecodable = undecodable

    def apply(self, record: Record) -> None:
        if record.value is None:
            return  # a tombstone: nothing to learn from
        name = _text_key(record)
        if name is None:
            log.warning("site statistics topic: skipped a record without a UTF-8 key")
            self.undecodable("site_stats")
            return
        self.site_stats.offer(name, record.value)
