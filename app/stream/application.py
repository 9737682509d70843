"""The recoloop application the runtime runs: the engine, the learner and the copies every
worker keeps, wired together afresh for each runtime a worker builds."""

from __future__ import annotations

from pathlib import Path

from app.contract.codec import MAX_RECORD_BYTES
from app.contract.topics import Topics
from app.core.catalog import StoreCatalog
from app.core.engine import Engine
from app.core.sites import SiteSettings
from app.core.store import MemoryStore
from app.observability.metrics import Metrics
from app.observability.tracing import Tracing
from app.settings import Settings
from app.stream.bandits import BanditModels, SpilledModels
from app.stream.processor import RecoProcessor
from app.stream.replicas import CatalogReplica, SharedReplica, SiteConfigReplica
from app.stream.runtime.protocol import Application
from app.stream.site_stats import SiteStatistics
from app.stream.state import ENGINE_CODEC


def recoloop(settings: Settings, partitions: int, metrics: Metrics,
             tracing: Tracing | None = None) -> Application:
    """One worker's application over ``partitions`` partitions per input topic."""
    topics = Topics.of(settings)

    def undecodable(source: str) -> None:
        metrics.records_undecodable.labels(source).inc()

    sites = SiteSettings(settings)  # follows the site-config topic
    models = BanditModels(settings, lambda: undecodable("models"),
                          SpilledModels(Path(settings.worker.data_dir) / "worker" / "models"),
                          sites=sites)
    catalog = MemoryStore()
    site_stats = SiteStatistics(lambda: undecodable("site_stats"))
    engine = Engine(settings, models, StoreCatalog(catalog), site_stats, sites)
    processor = RecoProcessor(settings, topics, engine, models, site_stats, metrics,
                              partitions, tracing)
    # The sites' configs first: a model read back is fitted to its site's arms at once.
    replicas = (SiteConfigReplica(topics.site_config, sites, models, undecodable),
                CatalogReplica(topics.catalog, catalog),
                SharedReplica(topics.models, models.offer, "models", undecodable),
                SharedReplica(topics.site_stats, site_stats.offer, "site_stats", undecodable))
    return Application(
        sources=(*topics.join_inputs, topics.decisions, topics.catalog),
        stateful=topics.join_inputs, changelog=topics.changelog, processor=processor,
        replicas=replicas, codec=ENGINE_CODEC, max_record_bytes=MAX_RECORD_BYTES)
