"""bench.faust_compare's verdict on an output topic and its recovery times (no broker, no
Faust or Quix needed)."""

from bench.faust_compare import (
    CONTENDERS,
    KEYS,
    check,
    default_contenders,
    recovery,
    recovery_column,
)


def outputs(events: int) -> list[dict]:
    counts: dict[str, int] = {}
    records = []
    for i in range(events):
        key = f"k{i % KEYS}"
        counts[key] = counts.get(key, 0) + 1
        records.append({"key": key, "n": i, "count": counts[key]})
    return records


def test_exactly_once_output_is_clean() -> None:
    result = check(outputs(3_000), 3_000)
    assert result["duplicates"] == result["missing"] == 0
    assert result["repeated_counts"] == result["counts_past_true"] == result["count_gaps"] == 0
    assert result["keys_with_wrong_final_count"] == 0


def test_replayed_input_and_lost_output_are_found() -> None:
    records = outputs(3_000)
    replay = {**records[5], "count": records[5]["count"] + 3}  # reprocessed, counted again
    lost = records.pop(2_500)
    result = check([*records, replay], 3_000)
    assert result["duplicates"] == 1 and result["missing"] == 1
    assert result["counts_past_true"] == 1
    assert result["count_gaps"] == 1 and lost["n"] == 2_500


def test_recovery_counts_only_outputs_written_after_the_kill() -> None:
    # At the kill partition 0 ended at offset 5, partition 1 at 3. Offset 4 on partition 0 is
    # the killed worker's (read late, after the kill): it does not end the stall.
    arrivals = [(0, 4, 100.2), (1, 3, 103.0), (0, 5, 104.5), (0, 6, 105.0), (1, 9, 140.0)]
    assert recovery(100.0, {0: 5, 1: 3}, arrivals) == {"first_output_s": 3.0,
                                                      "all_partitions_s": 4.5}


def test_recovery_stops_at_the_next_kill() -> None:
    arrivals = [(0, 5, 130.0), (1, 3, 150.0)]  # partition 1 resumed only after the next kill
    assert recovery(100.0, {0: 5, 1: 3}, arrivals, next_kill=140.0) == {
        "first_output_s": 30.0, "all_partitions_s": 30.0}
    assert recovery(100.0, {0: 5, 1: 3}, arrivals, next_kill=120.0) == {
        "first_output_s": None, "all_partitions_s": None}


def test_a_partition_empty_at_the_kill_counts_from_offset_zero() -> None:
    assert recovery(0.0, {}, [(2, 0, 0.25)])["first_output_s"] == 0.25


def test_the_recovery_column_lists_each_kill() -> None:
    assert recovery_column([]) == ""
    assert recovery_column([{"first_output_s": 0.14}, {"first_output_s": 61.25},
                            {"first_output_s": None}]) == "0.1 / 61.2 / -"


def test_the_default_contenders_take_quix_only_with_its_venv() -> None:
    without = default_contenders(None)
    assert "ours" in without and "faust_eos" in without
    assert not any(c.startswith("quix") for c in without)
    assert set(default_contenders("/tmp/quixvenv/bin/python")) == set(CONTENDERS)
