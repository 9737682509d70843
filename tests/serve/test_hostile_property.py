"""Generated hostile JSON through the real rank service (Hypothesis): huge integers, lone
surrogates, NaN and Infinity, deep nesting and odd types, in events beside a valid one, in
whole bodies and in site configs. Never a 5xx, never part of a batch produced, never a
dropped connection, never a long answer.

``make test`` runs RECOLOOP_HOSTILE_EXAMPLES examples (default 100, a few seconds);
``python -m bench.serve --hostile 5000`` runs more.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.conftest import Client, EdgeService, event_ids, read_to_end
from tests.serve.test_hostile_http import DEEP, click

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("RECOLOOP_HOSTILE_EXAMPLES", "100"))
MAX_ANSWER_BYTES = 20_000

EDGE_INTEGERS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 2**70, 10**400]
SURROGATES = ["\ud800", "\udfff", "a\udc00b", "\ud83d"]
FIELDS = ["type", "event_id", "session_id", "site_id", "ts", "item_id", "served_id", "price",
          "category", "context", "items", "ranking_id", "extra"]
CONFIG_FIELDS = ["arms", "exploration", "reward_window_s", "grace_s", "rewards", "rules",
                 "experiment", "shadow", "site_id", "unknown"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(EDGE_INTEGERS),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SURROGATES),
    st.text(st.characters(codec=None, categories=None), max_size=20),
    st.just(DEEP))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(SURROGATES)), inner,
                    max_size=4)), max_leaves=12)


def hostile(value: Any, depth: int) -> bytes:
    """JSON as a hostile client writes it (stdlib json: exact big integers, NaN literals,
    surrogates as \\u escapes), every DEEP string nested ``depth`` deep."""
    text = json.dumps(value, allow_nan=True)
    return text.replace(json.dumps(DEEP), "[" * depth + "0" + "]" * depth).encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any] | Any, int]:
    """``(kind, value, depth)``: kind "batch" (a valid event, then one with hostile
    fields), "body" (any value as the whole body) or "config"."""
    kind = draw(st.sampled_from(["batch", "batch", "body", "config"]))
    depth = draw(st.one_of(st.integers(0, 40), st.sampled_from([250, 254, 1000, 30_000])))
    if kind == "body":
        return kind, draw(values), depth
    names = st.one_of(st.sampled_from(CONFIG_FIELDS if kind == "config" else FIELDS),
                      st.text(max_size=6), st.sampled_from(SURROGATES))
    return kind, draw(st.dictionaries(names, values, min_size=1, max_size=3)), depth


def test_hostile_json_never_gets_a_5xx_a_partial_produce_or_a_dropped_connection(
        edge: EdgeService):
    client = edge.connection()
    counter = itertools.count()
    taken: set[str] = set()
    refused: set[str] = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests())
    def one(request: tuple[str, Any, int]) -> None:
        kind, value, depth = request
        if kind == "config":
            status, answer = send(client, "PUT", "/v1/sites/prop/config", edge.admin,
                                  hostile(value, depth))
            assert status in (202, 422), (status, answer)
            return
        companion = f"p{next(counter)}"
        body = value if kind == "body" else {
            "events": [click(companion), {**click(f"{companion}-h"), **value}]}
        status, answer = send(client, "POST", "/v1/events", edge.key, hostile(body, depth))
        assert status in (202, 403, 422), (status, answer)
        if kind == "batch":
            (taken if status == 202 else refused).add(companion)

    one()
    produced = event_ids(read_to_end(edge.settings))
    assert taken <= produced, "an accepted batch is not on its topic"
    assert not refused & produced, "part of a refused batch was produced"


def send(client: Client, method: str, path: str, key: str, body: bytes) -> tuple[int, Any]:
    """One request on the shared connection; it must come back whole, short, and leave
    the connection open."""
    status, answer, headers = client.request(method, path, key, raw=body)
    assert status < 500, answer[:500]
    assert len(answer) <= MAX_ANSWER_BYTES, len(answer)
    assert client.open and headers.getheader("connection") != "close"
    return status, orjson.loads(answer)
