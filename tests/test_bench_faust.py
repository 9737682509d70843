"""bench.faust_compare's verdict on an output topic (no broker, no Faust needed)."""

from bench.faust_compare import KEYS, check


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
