"""A partition's state: RocksDB written only after commit, with the changelog offset, and
nothing but the plain encoding ever read back (a pickle is skipped, never run)."""

from __future__ import annotations

import os
import pickle

from app.contract.codec import encode_state
from app.core.keys import state_key
from app.stream.runtime.store import RestorePlan, restore_plan
from app.stream.state import PartitionState


def wake(n: int) -> str:
    """A state key of a real kind (the engine's wake-up shards hold ``dict[str, None]``)."""
    return state_key("wake", n, 0)


def test_reads_see_the_open_transaction_and_rocksdb_only_what_committed(tmp_path):
    state = PartitionState(tmp_path / "0")
    state.set(wake(1), {"one": None})
    state.committed(state.changes(), changelog_offset=0)
    state.set(wake(1), {"two": None})
    state.set(wake(2), {"x": None})
    state.delete(wake(2))
    assert state.get(wake(1)) == {"two": None} and state.get(wake(2)) is None
    records = dict(state.changes())
    assert records == {wake(1).encode(): encode_state({"two": None}), wake(2).encode(): None}
    state.close()  # a crash before the commit: RocksDB still has the committed value only
    reopened = PartitionState(tmp_path / "0")
    assert reopened.get(wake(1)) == {"one": None} and reopened.changelog_offset == 0
    reopened.close()


def test_discard_forgets_changes_and_objects_changed_in_place(tmp_path):
    state = PartitionState(tmp_path / "0")
    state.set(wake(1), {"a": None})
    state.committed(state.changes(), changelog_offset=4)
    state.get(wake(1))["b"] = None  # an aborted batch changed the cached object
    state.discard()
    assert state.get(wake(1)) == {"a": None}
    assert state.changes() == []
    state.close()


def test_changelog_records_rebuild_the_same_state_elsewhere(tmp_path):
    state = PartitionState(tmp_path / "a")
    state.set(wake(1), {"x": None})
    state.set(wake(2), {"y": None})
    first = state.changes()
    state.committed(first, changelog_offset=1)
    state.delete(wake(1))
    second = state.changes()
    state.committed(second, changelog_offset=2)

    rebuilt = PartitionState(tmp_path / "b")
    assert rebuilt.restore(first, 1) == 2 and rebuilt.restore(second, 2) == 1
    assert (rebuilt.get(wake(1)), rebuilt.get(wake(2)), rebuilt.changelog_offset) == \
        (None, {"y": None}, 2)
    rebuilt.wipe()
    assert rebuilt.get(wake(2)) is None and rebuilt.changelog_offset is None
    state.close()
    rebuilt.close()


class Exploit:
    """Unpickling this would create a file: the proof that a pickle ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_the_changelog_is_skipped_counted_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    skipped: list[str] = []
    state = PartitionState(tmp_path / "0", on_undecodable=skipped.append)
    records = [(wake(1).encode(), pickle.dumps(Exploit(str(marker)))),
               (b"session:shop:s1", pickle.dumps(Exploit(str(marker)))),
               (wake(2).encode(), encode_state({"ok": None}))]
    assert state.restore(records, changelog_offset=3) == 1
    assert state.get(wake(1)) is None and state.get(wake(2)) == {"ok": None}
    assert skipped == ["changelog", "changelog"] and not marker.exists()
    state.close()


def test_local_state_of_the_pickle_era_is_rebuilt_not_read(tmp_path):
    from rocksdict import Options, Rdict

    db = Rdict(str(tmp_path / "0"), options=Options(raw_mode=True))
    db[wake(1).encode()] = pickle.dumps({"old": None})
    db[b"\x00changelog-offset"] = b"41"
    db.close()
    state = PartitionState(tmp_path / "0")
    assert state.changelog_offset is None and state.get(wake(1)) is None
    state.close()


def test_forgetting_decoded_objects_past_the_limit_loses_nothing(tmp_path):
    state = PartitionState(tmp_path / "0", max_objects=4)
    for n in range(10):
        state.set(wake(n), {str(n): None})
    assert all(state.get(wake(n)) == {str(n): None} for n in range(10))  # still open
    state.committed(state.changes(), changelog_offset=9)
    for n in range(10):
        assert state.get(wake(n)) == {str(n): None}
    assert len(state._objects) <= 4
    state.close()


def test_a_key_read_as_absent_is_found_once_the_changelog_restores_it(tmp_path):
    """Absent keys are remembered (the catalog is asked for items it lacks on every event);
    a restore that writes one must not leave it read as absent."""
    elsewhere = PartitionState(tmp_path / "elsewhere")
    elsewhere.set(wake(3), {"s": None})
    records = elsewhere.changes()
    state = PartitionState(tmp_path / "0")
    assert state.get(wake(3)) is None
    state.restore(records, changelog_offset=0)
    assert state.get(wake(3)) == {"s": None}
    state.set(wake(4), {"t": None})  # a write after an absent read is read back too
    assert state.get(wake(4)) == {"t": None}


def test_restore_plans_rebuild_what_cannot_be_caught_up():
    day = 86_400_000
    # A crash after the last local write: read on from the next offset.
    assert restore_plan(99, 0, 0, 180, now_ms=day, max_age_ms=6 * day) == RestorePlan(False, 100)
    # A new data directory: everything.
    assert restore_plan(None, None, 5, 180, now_ms=0, max_age_ms=day) == RestorePlan(False, 5)
    # Too old to trust (tombstones may be compacted away), or past a recreated changelog's end.
    assert restore_plan(99, 0, 0, 180, now_ms=7 * day, max_age_ms=6 * day) == \
        RestorePlan(True, 0)
    assert restore_plan(99, 0, 0, 40, now_ms=0, max_age_ms=day) == RestorePlan(True, 0)
    assert restore_plan(99, 0, 0, 0, now_ms=0, max_age_ms=day) == RestorePlan(True, None)
