"""The minimal job as a Quix Streams 3.x app: count per key in its RocksDB state, one output
per input, ``processing_guarantee="exactly-once"``.

    QX_BROKER=127.0.0.1:19092 QX_APP_ID=... QX_INPUT=... QX_OUTPUT=... QX_DATA_DIR=... \\
    [QX_PRODUCER_CONFIG='{...}'] [QX_CONSUMER_CONFIG='{...}'] [QX_COMMIT_EVERY=500] \\
    /tmp/quixvenv/bin/python -m bench.quix_jobs.counter

``bench.faust_compare`` runs it as a subprocess with the interpreter of a venv that has
bench/quix_jobs/requirements.txt (and SIGKILLs it); it imports nothing of recoloop's.

- ``QX_PRODUCER_CONFIG``: librdkafka producer properties (JSON) on top of Quix's. The
  ``*_fixed_id`` contenders set the transactional id there (``{app id}-tx``), so a restarted
  worker's ``init_transactions`` fences and aborts the killed one's open transaction. Without
  it Quix makes a random one per start (``resolve_transactional_id``: a uuid4), and the killed
  worker's transaction stays open, holding back what read_committed readers see on every
  partition it wrote to, until the broker aborts it at ``transaction.timeout.ms`` (60 s,
  librdkafka's default, which Quix keeps).
- ``QX_CONSUMER_CONFIG``: librdkafka consumer properties (JSON) on top of Quix's and the
  session timeout; ``quix_eos_fixed_id_static`` sets ``group.instance.id`` there (static
  membership: a restarted worker gets its partitions back without waiting for the killed
  one's session to time out).
- ``QX_COMMIT_EVERY=N``: also commit (end the transaction) every N messages, besides Quix's
  default 5 s ``commit_interval``.

Everything else is Quix's default but the session timeout (10 s, as every contender's).
"""

from __future__ import annotations

import os

import orjson
from quixstreams import Application, State

env = os.environ


def count(value: dict, key: bytes, _timestamp: int, _headers: object, state: State) -> bytes:
    new = state.get("count", 0) + 1
    state.set("count", new)
    return b'{"key":"%s","n":%d,"count":%d}' % (key, value["n"], new)


def main() -> None:
    producer_config = orjson.loads(env.get("QX_PRODUCER_CONFIG", "{}"))
    app = Application(
        broker_address=env["QX_BROKER"],
        consumer_group=env["QX_APP_ID"],
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_every=int(env.get("QX_COMMIT_EVERY", "0")),
        state_dir=env["QX_DATA_DIR"],
        # As every contender's (bench.faust_compare.SESSION_TIMEOUT_MS): a killed worker's
        # member leaves the group within 10 s, not librdkafka's default 45 s.
        consumer_extra_config={"session.timeout.ms": 10_000, "heartbeat.interval.ms": 3_000,
                               **orjson.loads(env.get("QX_CONSUMER_CONFIG", "{}"))},
        producer_extra_config=producer_config,
        loglevel=env.get("QX_LOG_LEVEL", "WARNING"),
    )
    source = app.topic(env["QX_INPUT"], key_deserializer="bytes", value_deserializer="json")
    sink = app.topic(env["QX_OUTPUT"], key_serializer="bytes", value_serializer="bytes")
    app.dataframe(source).apply(count, stateful=True, metadata=True).to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
