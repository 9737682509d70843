"""A partition's stream time: its watermark, the wall-clock fallback, and the wake-up buckets.

Stream time is a per-partition *watermark*: the largest event time read on each input topic
of the partition (displays, clicks, detail views, basket adds), and the smallest of those.
Before the watermark every topic has been read (a record at the watermark's own millisecond
may still be unread on a slower topic), so a join decided behind it does not depend
on how fast each topic happened to be read (a worker catching up on a backlog reads them at
different paces). A topic that has not moved for ``idle_close_s`` worth of ticks while others
did is left out (a site may send no basket adds at all), unless the worker says it still has
records to read (:meth:`StreamTime.note_unread`: a backlog comes one topic's fetch after
another's); when none moves, stream time follows the wall clock carried in by the worker's
tick events (closes labelled ``idle``).

Sessions with something due register in one-second *wake-up buckets*, so advancing stream
time visits only the sessions that are due, never the whole partition.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from app.core import join
from app.core.events import Tick
from app.core.join import JoinResult, JoinRules
from app.core.keys import state_key
from app.core.session import Session
from app.core.store import Store

BUCKET_MS = 1_000
# Session expiry is not urgent: coarser buckets keep the bucket index small.
EXPIRY_BUCKET_MS = 60_000
# Each bucket's sessions are spread over this many keys, so registering one session
# rewrites a small record, not the list of every session due in the same minute.
WAKE_SHARDS = 32
CLOCK_KEY = "clock"
# The watermark's inputs: one per join input topic.
INPUT_KINDS = ("served", "click", "detail_view", "basket_add")


@dataclass
class PartitionClock:
    stream_time: int | None = None
    swept_bucket: int = 0  # wake-up buckets below this one have been visited
    buckets: set[int] = field(default_factory=set)  # buckets with sessions registered
    pending_displays: int = 0  # open displays on this partition
    # The sites seen on this partition and their latest event time; a site leaves after
    # ``site_idle_s`` without traffic (its defaults are under defaults_key(site)).
    sites: dict[str, int] = field(default_factory=dict)
    partition: int = 0
    partitions: int = 0  # 0 until the first tick says how many there are
    wall_ms: int = 0  # the last tick's wall clock
    # The watermark's inputs: per input kind, its largest event time, that time at the last
    # tick, and for how many ticks it has not moved (see StreamTime.on_tick).
    kind_times: dict[str, int] = field(default_factory=dict)
    kind_times_at_tick: dict[str, int] = field(default_factory=dict)
    kind_quiet_ticks: dict[str, int] = field(default_factory=dict)
    # Wall-clock fallback once every kind is quiet.
    idle_base_time: int | None = None
    idle_since_wall_ms: int | None = None


@functools.lru_cache(maxsize=4_096)
def wake_keys(bucket: int) -> tuple[str, ...]:
    """The keys of a wake-up bucket's shards (every sweep reads them all)."""
    return tuple(state_key("wake", bucket, shard) for shard in range(WAKE_SHARDS))


# Where a session's join results go (Effects.absorb).
Absorb = Callable[[JoinResult], None]


class StreamTime:
    """Moves a partition's stream time and settles the sessions due behind it.

    ``quiet_ticks``: ticks without a move after which an input kind leaves the watermark;
    ``idle_ms``: how far stream time runs ahead of the last event once every kind is quiet;
    ``session_timeout_ms``: idle time after which a settled session is deleted;
    ``rules_for``: a site's join rules.
    """

    def __init__(self, quiet_ticks: int, idle_ms: int, session_timeout_ms: int,
                 rules_for: Callable[[str], JoinRules]) -> None:
        self._quiet_ticks = quiet_ticks
        self._idle_ms = idle_ms
        self._session_timeout_ms = session_timeout_ms
        self.rules_for = rules_for

    def on_event(self, store: Store, clock: PartitionClock, kind: str, ts: int,
                 absorb: Absorb) -> None:
        """An input event of ``kind`` at ``ts`` was read: the watermark may move."""
        if ts > clock.kind_times.get(kind, -1):
            clock.kind_times[kind] = ts
            clock.kind_quiet_ticks[kind] = 0
        self.advance(store, clock, self.watermark(clock), "window", absorb)

    def watermark(self, clock: PartitionClock) -> int | None:
        """The smallest latest-event-time over the input kinds still moving; None while a
        moving kind has not been read at all yet (it may hold anything)."""
        moving = [kind for kind in INPUT_KINDS
                  if clock.kind_quiet_ticks.get(kind, 0) < self._quiet_ticks]
        if not moving or any(kind not in clock.kind_times for kind in moving):
            return None
        return min(clock.kind_times[kind] for kind in moving)

    def note_unread(self, store: Store, kinds: frozenset[str]) -> None:
        """Input kinds with records on the broker not read yet, said before each batch: their
        event times stand still while a backlog is read, but they are not quiet (also not
        when the partition's previous owner had counted them so)."""
        clock: PartitionClock | None = store.get(CLOCK_KEY)
        if clock is None or not any(clock.kind_quiet_ticks.get(kind) for kind in kinds):
            return
        for kind in kinds:
            clock.kind_quiet_ticks[kind] = 0
        store.set(CLOCK_KEY, clock)

    def on_tick(self, store: Store, clock: PartitionClock, tick: Tick, absorb: Absorb) -> None:
        """Count how long each input kind has been quiet, and fall back on the wall clock.

        A kind that has not moved for ``idle_close_s`` worth of ticks leaves the watermark.
        When every kind is quiet, stream time becomes the time it had when the partition
        went quiet plus the wall time elapsed since.
        """
        for kind in INPUT_KINDS:
            moved = clock.kind_times.get(kind) != clock.kind_times_at_tick.get(kind)
            clock.kind_quiet_ticks[kind] = 0 if moved else clock.kind_quiet_ticks.get(kind, 0) + 1
        clock.kind_times_at_tick = dict(clock.kind_times)
        if any(quiet < self._quiet_ticks for quiet in clock.kind_quiet_ticks.values()):
            clock.idle_since_wall_ms = None
            self.advance(store, clock, self.watermark(clock), "window", absorb)
            return
        if clock.idle_since_wall_ms is None:
            clock.idle_base_time = (clock.stream_time if clock.stream_time is not None
                                    else max(clock.kind_times.values()))
            clock.idle_since_wall_ms = tick.wall_ms
            return
        assert clock.idle_base_time is not None
        idle_for = tick.wall_ms - clock.idle_since_wall_ms
        # Never past the wall clock: event times a little ahead of it (within the skew
        # allowed) would otherwise carry stream time ahead of every event that follows.
        self.advance(store, clock, min(clock.idle_base_time + self._idle_ms + idle_for,
                                       tick.wall_ms), "idle", absorb)

    def advance(self, store: Store, clock: PartitionClock, ts: int | None, closed_by: str,
                absorb: Absorb) -> None:
        """Move stream time forward to ``ts`` and settle the sessions due before it."""
        if ts is None or (clock.stream_time is not None and ts <= clock.stream_time):
            return
        clock.stream_time = ts
        due = sorted(b for b in clock.buckets if b < ts // BUCKET_MS)
        for bucket in due:
            self._sweep(store, clock, bucket, closed_by, absorb)
        clock.swept_bucket = ts // BUCKET_MS

    def _sweep(self, store: Store, clock: PartitionClock, bucket: int, closed_by: str,
               absorb: Absorb) -> None:
        assert clock.stream_time is not None
        shards = {key: store.get(key) for key in wake_keys(bucket)}
        keys = {key: None for registered in shards.values() if registered for key in registered}
        for key in keys:
            session: Session | None = store.get(key)
            if session is None or session.wake_bucket != bucket:
                continue  # deleted, or registered for an earlier wake-up since
            session.wake_bucket = None
            absorb(join.advance(session.join, clock.stream_time,
                                self.rules_for(session.site_id), closed_by))
            if self._expired(session, clock.stream_time):
                store.delete(key)
            else:
                self.register(store, clock, key, session)
                store.set(key, session)
        # Only now: had a session above failed, the bucket would still hold them all.
        for shard_key, registered in shards.items():
            if registered:  # deleting absent keys would still write changelog tombstones
                store.delete(shard_key)
        clock.buckets.discard(bucket)

    def _expired(self, session: Session, stream_time: int) -> bool:
        idle_for = stream_time - session.last_ts
        return idle_for > self._session_timeout_ms and not session.join.pending \
            and not session.join.waiting

    def register(self, store: Store, clock: PartitionClock, key: str,
                 session: Session) -> None:
        """Make sure the session is visited when its next deadline passes."""
        expiry = session.last_ts + self._session_timeout_ms
        bucket = (expiry // EXPIRY_BUCKET_MS + 1) * EXPIRY_BUCKET_MS // BUCKET_MS
        stream_time = -1 if clock.stream_time is None else clock.stream_time
        due = session.join.next_due(self.rules_for(session.site_id), stream_time)
        if due is not None:
            bucket = min(bucket, due // BUCKET_MS)
        bucket = max(bucket, clock.swept_bucket)
        if session.wake_bucket is not None and clock.swept_bucket <= session.wake_bucket <= bucket:
            return  # registered in a bucket still to come that is early enough
        wake_key = wake_keys(bucket)[zlib.crc32(key.encode()) % WAKE_SHARDS]
        keys = store.get(wake_key) or {}
        keys[key] = None
        store.set(wake_key, keys)
        clock.buckets.add(bucket)
        session.wake_bucket = bucket
