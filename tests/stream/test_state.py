"""A partition's state: RocksDB written only after commit, with the changelog offset."""

from __future__ import annotations

import pickle

from app.stream.state import PartitionState, RestorePlan, restore_plan


def test_reads_see_the_open_transaction_and_rocksdb_only_what_committed(tmp_path):
    state = PartitionState(tmp_path / "0")
    state.set("a", {"n": 1})
    state.committed(state.changes(), changelog_offset=0)
    state.set("a", {"n": 2})
    state.set("b", [1])
    state.delete("b")
    assert state.get("a") == {"n": 2} and state.get("b") is None
    records = dict(state.changes())
    assert records == {b"a": pickle.dumps({"n": 2}, protocol=pickle.HIGHEST_PROTOCOL),
                       b"b": None}
    state.close()  # a crash before the commit: RocksDB still has the committed value only
    reopened = PartitionState(tmp_path / "0")
    assert reopened.get("a") == {"n": 1} and reopened.changelog_offset == 0
    reopened.close()


def test_discard_forgets_changes_and_objects_changed_in_place(tmp_path):
    state = PartitionState(tmp_path / "0")
    state.set("session", {"clicks": 1})
    state.committed(state.changes(), changelog_offset=4)
    session = state.get("session")
    session["clicks"] += 1  # an aborted batch changed the cached object
    state.discard()
    assert state.get("session") == {"clicks": 1}
    assert state.changes() == []
    state.close()


def test_changelog_records_rebuild_the_same_state_elsewhere(tmp_path):
    state = PartitionState(tmp_path / "a")
    state.set("x", 1)
    state.set("y", 2)
    first = state.changes()
    state.committed(first, changelog_offset=1)
    state.delete("x")
    second = state.changes()
    state.committed(second, changelog_offset=2)

    rebuilt = PartitionState(tmp_path / "b")
    rebuilt.apply(first, 1)
    rebuilt.apply(second, 2)
    assert (rebuilt.get("x"), rebuilt.get("y"), rebuilt.changelog_offset) == (None, 2, 2)
    rebuilt.wipe()
    assert rebuilt.get("y") is None and rebuilt.changelog_offset is None
    state.close()
    rebuilt.close()


def test_forgetting_decoded_objects_past_the_limit_loses_nothing(tmp_path):
    state = PartitionState(tmp_path / "0", max_objects=4)
    for n in range(10):
        state.set(f"k{n}", n)
    assert all(state.get(f"k{n}") == n for n in range(10))  # still in the open transaction
    state.committed(state.changes(), changelog_offset=9)
    for n in range(10):
        assert state.get(f"k{n}") == n
    assert len(state._objects) <= 4
    state.close()


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
