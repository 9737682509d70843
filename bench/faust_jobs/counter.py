"""The minimal job as a Faust app: count per key in a RocksDB table, one output per input.

    FC_BROKER=127.0.0.1:29092 FC_APP_ID=... FC_INPUT=... FC_OUTPUT=... FC_DATA_DIR=... \\
    FC_GUARANTEE=exactly_once [FC_PATCH=1] python -m bench.faust_jobs.counter

``bench.faust_compare`` runs it as a subprocess (and SIGKILLs it). ``FC_PATCH=1`` applies
:func:`bench.faust_jobs.patch.route_by_source_partition` first (see there why).
"""

from __future__ import annotations

import os
import sys

import faust
import orjson

from bench.faust_jobs import patch

env = os.environ
if env.get("FC_PATCH") == "1":
    patch.route_by_source_partition()

app = faust.App(
    env["FC_APP_ID"],
    broker=f"kafka://{env['FC_BROKER']}",
    # rocksdb:// is RocksDB through rocksdict when python-rocksdb is absent (0.15.3 has no
    # rocksdict:// store: by_url imports the module rocksdict and calls it, a TypeError).
    store="rocksdb://",
    datadir=env["FC_DATA_DIR"],
    processing_guarantee=env.get("FC_GUARANTEE", "at_least_once"),
    topic_partitions=8,
    topic_replication_factor=1,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    # As every contender's (bench.faust_compare.SESSION_TIMEOUT_MS): a killed worker's
    # member leaves the group within 10 s, not Faust's default 60 s.
    broker_session_timeout=10.0,
    broker_heartbeat_interval=3.0,
)
source = app.topic(env["FC_INPUT"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw", partitions=8)
sink = app.topic(env["FC_OUTPUT"], key_type=bytes, value_type=bytes,
                 key_serializer="raw", value_serializer="raw", partitions=8)
counts = app.Table("counts", default=int, partitions=8)


@app.agent(source)
async def count(stream: faust.StreamT) -> None:
    async for key, value in stream.items():
        name = key.decode()
        new = counts[name] + 1
        counts[name] = new
        await sink.send(key=key, value=orjson.dumps(
            {"key": name, "n": orjson.loads(value)["n"], "count": new}))


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", env.get("FC_LOG_LEVEL", "warn"),
                "--without-web"]
    app.main()
