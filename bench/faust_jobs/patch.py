"""The one monkeypatch ``faust_eos_patched`` applies to faust-streaming 0.15.3 (bench only).

With ``processing_guarantee="exactly_once"`` Faust keeps one transactional producer per
assigned source partition (transactional id ``{app id}-{topic group}-{partition}``, see
``faust.transport.consumer.TransactionManager``) and commits each one's offsets in its own
transaction. But ``TransactionManager.send`` picks the transaction from the *destination*:
``consumer.key_partition(topic, key)`` of the topic being written. For a topic the worker
does not consume (our output topic) the consumer's metadata does not know it, so that
returns ``None``, ``transactional_id`` stays ``None`` and the record goes out through the
plain, non-transactional producer (faust-streaming issue #177): read_committed readers see
it at once and a crash duplicates it. (Were the topic known, the record would join the
transaction of the destination's partition number, not of the input that caused it.)

The patch: while an agent processes an event (``faust.current_event()``), route what it
sends to the transaction of that event's source partition; elsewhere (the table's
changelog, sent from the producer buffer with the source partition as its partition) keep
Faust's routing. Nothing else changes: in particular Faust still writes table changes to
RocksDB as they happen, before the transaction commits.
"""

from __future__ import annotations

from typing import Any


def route_by_source_partition() -> None:
    import faust
    from faust.transport.consumer import TransactionManager

    shipped = TransactionManager.send

    async def send(self: TransactionManager, topic: str, key: Any, value: Any,
                   partition: Any, timestamp: Any, headers: Any, *,
                   transactional_id: str | None = None) -> Any:
        event = faust.current_event()
        if event is None:
            return await shipped(self, topic, key, value, partition, timestamp, headers)
        source = event.message.tp
        group = self.app.assignor.group_for_topic(source.topic)
        return await self.producer.send(
            topic, key, value, partition, timestamp, headers,
            transactional_id=f"{self.app.conf.id}-{group}-{source.partition}")

    TransactionManager.send = send  # type: ignore[method-assign]
