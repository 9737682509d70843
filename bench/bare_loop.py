"""The ceiling for one Python process here: a bare confluent-kafka consume-and-produce loop.

    RECOLOOP_TOPIC_PREFIX=... .venv/bin/python -m bench.bare_loop --group G --output TOPIC

Reads the four join input topics (``RECOLOOP_BOOTSTRAP_SERVERS``, ``RECOLOOP_TOPIC_PREFIX``)
in consumer group ``--group`` from the earliest offset, produces one small record (its input
offset) per input record to ``--output``, keyed like the input, and commits the consumed
offsets after every batch, until SIGTERM. No parsing, no state, no join.

- default: offsets committed asynchronously after each batch, without waiting for the
  batch's deliveries (the loosest loop, a true ceiling);
- ``--transactional``: each batch is one transaction (produce, ``send_offsets_to_transaction``,
  commit), batched and tuned exactly as the worker's loop is (``app.stream.runtime.kafka``:
  :func:`next_batch`, up to ``MAX_BATCH`` records; ``app.kafka.clients``: the transactional
  producer): the ceiling the worker is measured against, the same loop without the worker's
  own work.

``bench.suite`` runs it as a subprocess and measures it from outside, by the group's
committed offsets, like the worker.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from confluent_kafka import Consumer, Message, Producer

from app.contract.topics import JOIN_INPUT_TOPICS
from app.kafka import clients
from app.settings import Settings
from app.stream.runtime.kafka import next_batch


def produce(producer: Producer, topic: str, message: Message) -> None:
    while True:
        try:
            producer.produce(topic, key=message.key(), value=b'{"offset":%d}' % message.offset())
            return
        except BufferError:  # the local queue is full: let it drain
            producer.poll(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", required=True)
    parser.add_argument("--output", required=True, help="output topic (full name)")
    parser.add_argument("--batch", type=int, default=500,
                        help="records per consume call (the plain loop)")
    parser.add_argument("--transactional", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()

    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    consumer = Consumer({**clients.committed_consumer(settings, args.group),
                         "auto.offset.reset": "earliest"})
    producer = Producer(clients.transactional_producer(settings, f"{args.group}-tx")
                        if args.transactional else {**settings.kafka_config(), "linger.ms": 5})
    if args.transactional:
        producer.init_transactions(30)
    consumer.subscribe([settings.topic(t) for t in JOIN_INPUT_TOPICS])
    try:
        while not stopping:
            batch = (next_batch(consumer) if args.transactional
                     else consumer.consume(args.batch, timeout=0.1))
            messages = [m for m in batch if not m.error()]
            if not messages:
                continue
            if args.transactional:
                producer.begin_transaction()
            for message in messages:
                produce(producer, args.output, message)
            producer.poll(0)
            if args.transactional:
                positions = [tp for tp in consumer.position(consumer.assignment())
                             if tp.offset >= 0]
                producer.send_offsets_to_transaction(
                    positions, consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
            else:
                consumer.commit(asynchronous=True)
    finally:
        producer.flush(10)
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
