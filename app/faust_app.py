"""The Faust application, configured from :class:`~app.settings.Settings`."""

from __future__ import annotations

import faust

from app.settings import Settings


def create_app(settings: Settings, partitions: int) -> faust.App:
    """A Faust app on the aiokafka transport with RocksDB tables (via rocksdict).

    ``partitions`` is the partition count of the join's input topics: the tables and the
    internal topics must match it so a partition's state lives beside its input.
    """
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="rocksdb://",
        datadir=str(settings.data_dir / "worker"),
        topic_partitions=partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.bind_host,
        web_host=settings.bind_host,
        broker_commit_interval=1.0,
        producer_linger_ms=1,
        table_cleanup_interval=60.0,
    )
