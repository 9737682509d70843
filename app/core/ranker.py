"""The ``learned`` arm's item model: which shown item a session clicks, learned online.

Every other arm ranks by one statistic. The item model weighs them, per site, from what
shoppers actually clicked: each closed display teaches it once per shown position (the
reacted items positive, the ignored ones negative), with the signals each item had *when it
was shown* (:class:`app.core.candidates.ItemSignals`: the session's interest in the item's
category, co-view votes of its recent items, the item's popularity and trend, whether it
shares the page's category) and its position, so the position's own pull on clicks is
learned apart and does not credit the items placed first. An item's own id is a feature
too, for the first ``max_items`` items of the site: what it earns beyond its signals.

River's online logistic regression is the learner: a ranking scores some 30 candidates, and
the logistic model scores and learns in microseconds (docs/learning.md, "Choices measured").
Its state round-trips through plain numbers (:class:`RankerState`), for the models topic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from river import linear_model, optim

SIGNALS = ("category", "similar", "popular", "trending", "same_category", "viewed", "page_item",
           "coview", "knn")
# Positions of a display the model learns from (further down, clicks are rare and few shops
# show more); the learned arm scores every candidate as if shown first.
POSITIONS_LEARNED = 10
# Items with a weight of their own, at most, and the longest id that gets one: the model
# travels with the site's bandit on the models topic, whose records are bounded (codec).
MAX_ITEMS = 300
MAX_ITEM_CHARS = 64
LEARNING_RATE = 0.5
L2 = 1e-4
# Before any click is learned, the counters' signals count alike: the arm starts as an even
# blend of the simple arms (co-view, session kNN, similar, viewed, popular, category), not
# as the order its pool happens to be in.
PRIOR = {"category": 1.0, "similar": 1.0, "popular": 1.0, "viewed": 1.0, "coview": 1.0,
         "knn": 1.0}


@dataclass(frozen=True)
class RankerState:
    """An :class:`ItemRanker` as plain values: the logistic model's intercept and weights."""

    intercept: float
    weights: dict[str, float]
    n_updates: int
    max_items: int = MAX_ITEMS


class ItemRanker:
    """Online click model over item signals, position and item id.

    Examples
    --------
    >>> ranker = ItemRanker()
    >>> good, poor = (1.0, 0.5, 0.5, 0.0, 1.0, 0, 0, 1, 0), (0.0, 0.5, 0.5, 0.0, 0.0, 0, 1, 0, 0)
    >>> for _ in range(300):
    ...     ranker.learn("a", good, position=1, clicked=True)
    ...     ranker.learn("b", poor, position=0, clicked=False)
    >>> ranker.score("c", good) > ranker.score("c", poor)
    True
    >>> restored = ItemRanker.from_state(ranker.to_state())
    >>> restored.score("a", good) == ranker.score("a", good)
    True
    >>> [item for item, _ in ranker.rank([("c", poor), ("c2", good)])]
    ['c2', 'c']
    >>> round(ranker.rank([("a", good)])[0][1], 9) == round(ranker.score("a", good), 9)
    True
    """

    def __init__(self, max_items: int = MAX_ITEMS) -> None:
        self.max_items = max_items
        self.n_updates = 0
        self._model = linear_model.LogisticRegression(
            optimizer=optim.SGD(LEARNING_RATE), l2=L2, intercept_lr=LEARNING_RATE)
        self._items: set[str] = set()
        for name, weight in PRIOR.items():
            self._model._weights[name] = weight

    def features(self, item_id: str, signals: Sequence[float], position: int = 0
                 ) -> dict[str, float]:
        x = dict(zip(SIGNALS, signals, strict=True))
        x["position"] = math.log1p(position)
        if item_id in self._items:
            x[f"item={item_id}"] = 1.0
        return x

    def score(self, item_id: str, signals: Sequence[float]) -> float:
        """The chance of a click on ``item_id`` shown first, with these signals."""
        return float(self._model.predict_proba_one(self.features(item_id, signals))[True])

    def rank(self, candidates: Iterable[tuple[str, Sequence[float]]]) -> list[tuple[str, float]]:
        """``(item, chance of a click shown first)``, best first: :meth:`score` of each, the
        model's weights read once for them all (a ranking scores dozens of candidates)."""
        weights = self._model._weights.to_dict()
        intercept = float(self._model.intercept)
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = (weights.get(name, 0.0) for name in SIGNALS)
        item_weight = weights.get
        scored = []
        for item_id, (s0, s1, s2, s3, s4, s5, s6, s7, s8) in candidates:
            z = intercept + item_weight("item=" + item_id, 0.0) + w0 * s0 + w1 * s1 \
                + w2 * s2 + w3 * s3 + w4 * s4 + w5 * s5 + w6 * s6 + w7 * s7 + w8 * s8
            scored.append((item_id, 1.0 / (1.0 + math.exp(-max(-500.0, min(500.0, z))))))
        scored.sort(key=lambda kv: kv[1], reverse=True)
        return scored

    def learn(self, item_id: str, signals: Sequence[float], position: int,
              clicked: bool) -> None:
        if item_id not in self._items and len(self._items) < self.max_items \
                and len(item_id) <= MAX_ITEM_CHARS:
            self._items.add(item_id)
        self._model.learn_one(self.features(item_id, signals, position), clicked)
        self.n_updates += 1

    def learn_display(self, items: Sequence[str], signals: Sequence[Sequence[float]],
                      reacted: set[str]) -> None:
        """One closed display: each of its first positions, with the signals it was shown
        with (``signals[i]`` for ``items[i]``; positions without signals are skipped)."""
        for position, (item_id, row) in enumerate(zip(items, signals, strict=False)):
            if position >= POSITIONS_LEARNED:
                break
            values = _signals(row)
            if values is not None and isinstance(item_id, str):
                self.learn(item_id, values, position, item_id in reacted)

    # -- state as plain values ------------------------------------------------------------

    def to_state(self) -> RankerState:
        return RankerState(float(self._model.intercept),
                           {str(k): float(v) for k, v in self._model.weights.items()},
                           self.n_updates, self.max_items)

    @classmethod
    def from_state(cls, state: RankerState) -> ItemRanker:
        """The model ``state`` describes; ValueError when it is not self-consistent."""
        items = {name[len("item="):] for name in state.weights if name.startswith("item=")}
        unknown = set(state.weights) - {*SIGNALS, "position"} - {f"item={i}" for i in items}
        values = [state.intercept, *state.weights.values()]
        if unknown or len(items) > min(state.max_items, MAX_ITEMS) \
                or any(len(item) > MAX_ITEM_CHARS for item in items) \
                or not all(map(math.isfinite, values)):
            raise ValueError("a ranker's weights must be finite, of known features")
        ranker = cls(state.max_items)
        ranker.n_updates = state.n_updates
        ranker._items = items
        ranker._model.intercept = state.intercept
        for name, weight in state.weights.items():  # River's weights (a VectorDict) in place
            ranker._model._weights[name] = weight
        return ranker


def _signals(row: object) -> tuple[float, ...] | None:
    """``row`` as signals, or None unless it is ``len(SIGNALS)`` finite numbers (a decisions
    record is read back from Kafka: anything may be in it)."""
    if not isinstance(row, list | tuple) or len(row) != len(SIGNALS):
        return None
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in row):
        return None
    return tuple(float(v) for v in row)


def reacted_items(outcomes: Sequence[Mapping[str, object]]) -> set[str]:
    """The items a closed display's outcomes reacted to (any reaction type)."""
    return {str(outcome["item_id"]) for outcome in outcomes}
