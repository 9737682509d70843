"""What a simulated world is made of: its configuration, the items it sells, its shoppers and
their visible context, the reaction chain and its delays, and the records and displays it
emits. Pure: no Kafka, no I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, NamedTuple

from app.core.events import Reaction, Served
from app.settings import DEFAULT_ARMS, DEFAULT_REWARDS

# The visible context besides the page category, with how often each value occurs.
CONTEXT_WEIGHTS: dict[str, dict[str, float]] = {
    "season": {"regular": 0.7, "sale": 0.3},
    "region": {"eu": 0.45, "us": 0.35, "apac": 0.2},
    "device": {"mobile": 0.55, "desktop": 0.35, "tablet": 0.1},
}
# Sales convert better on a big screen; the bandit sees the device, so this stays learnable.
BUY_BY_DEVICE = {"mobile": 0.8, "desktop": 1.25, "tablet": 1.0}
# A reaction to a display is a chain: click, then (usually) a detail view, then (sometimes)
# a basket add. The reward of a display is the best reaction inside the window.
CHAIN = ("click", "detail_view", "basket_add")
ORGANIC = "organic"  # the value of a reaction's "source" when it answers no display


@dataclass(frozen=True)
class Delays:
    """Reaction delays after a display, in ms: log-normal click and basket-add delays.

    With the defaults about 3 % of clicks and a fifth of basket adds fall beyond 20 s.
    """

    click_median_ms: float = 3_000.0
    click_sigma: float = 1.0
    view_after_click_ms: tuple[float, float] = (300.0, 1_500.0)
    basket_median_ms: float = 9_000.0  # after the detail view
    basket_sigma: float = 0.7

    def click(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.click_median_ms), self.click_sigma)

    def view(self, rng: random.Random) -> float:
        return rng.uniform(*self.view_after_click_ms)

    def basket(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.basket_median_ms), self.basket_sigma)


def window_shares(delays: Delays, window_ms: float, steps: int = 200) -> tuple[float, ...]:
    """The probability that each reaction of :data:`CHAIN`, once it happens, falls inside
    the window: exact for the click, by quadrature over the later delays for the others."""
    click = NormalDist(math.log(delays.click_median_ms), delays.click_sigma)

    def click_cdf(ms: float) -> float:
        return click.cdf(math.log(ms)) if ms > 0 else 0.0

    low, high = delays.view_after_click_ms
    views = [low + (high - low) * (i + 0.5) / 20 for i in range(20)]
    basket = NormalDist(math.log(delays.basket_median_ms), delays.basket_sigma)
    baskets = [math.exp(basket.inv_cdf((i + 0.5) / steps)) for i in range(steps)]
    view_share = sum(click_cdf(window_ms - v) for v in views) / len(views)
    basket_share = sum(click_cdf(window_ms - v - b) for v in views for b in baskets) / (
        len(views) * len(baskets))
    return click_cdf(window_ms), view_share, basket_share


def chain_value(probabilities: Sequence[float], shares: Sequence[float],
                rewards: Mapping[str, float]) -> float:
    """E[reward] of a reaction chain: each reaction of :data:`CHAIN` adds what it raises the
    best reward so far by, times the probability that it happens (``probabilities``) and
    falls inside the window (``shares``, see :func:`window_shares`).

    >>> chain_value((0.5, 0.25, 0.1), (1.0, 1.0, 0.5), {"click": 1, "detail_view": 1,
    ...                                                  "basket_add": 3})
    0.6
    """
    expected, best = 0.0, 0.0
    for kind, p, share in zip(CHAIN, probabilities, shares, strict=True):
        gain = max(0.0, rewards.get(kind, 0.0) - best)
        expected += p * share * gain
        best += gain
    return expected


def draw_context(rng: random.Random, category: str) -> dict[str, str]:
    """A visible context: the page ``category`` and a season, region and device drawn with
    :data:`CONTEXT_WEIGHTS`."""
    context = {"category": category}
    for dim, weights in CONTEXT_WEIGHTS.items():
        context[dim] = rng.choices(list(weights), list(weights.values()))[0]
    return context


@dataclass(frozen=True)
class Item:
    item_id: str
    category: str
    price: float
    available: bool


@dataclass
class WorldConfig:
    """What every world simulates. ``arms`` maps a site to its arms (all five when missing):
    what the engine chooses from, and what a display the simulator fills itself divides its
    propensity by."""

    sites: tuple[str, ...] = ("shop-1",)
    rate: float = 50.0  # target events per second over all sites (approximate)
    control_share: float = 0.2
    window_ms: int = 20_000
    rewards: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARDS))
    arms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    run_tag: str = "sim"  # prefix of session and event ids, unique per run
    display_size: int = 6
    mean_pages: float = 6.0  # about; see expected_pages
    page_gap_median_ms: float = 12_000.0
    page_gap_sigma: float = 0.6
    bucket_ms: int = 10_000
    delays: Delays = field(default_factory=Delays)

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("simulate at least one site")
        if not 0.0 <= self.control_share <= 1.0:
            raise ValueError("control_share must be within 0..1")
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.mean_pages <= 1:
            raise ValueError("mean_pages must be above 1")
        if self.display_size < 1:
            raise ValueError("display_size must be at least 1")

    def arms_for(self, site_id: str) -> tuple[str, ...]:
        return tuple(self.arms.get(site_id, DEFAULT_ARMS))

    def draw_pages(self, rng: random.Random) -> int:
        """Pages of a new session: one, plus the floor of an exponential."""
        return 1 + int(rng.expovariate(1.0 / (self.mean_pages - 1)))

    def expected_pages(self) -> float:
        """E[:meth:`draw_pages`]."""
        return 1.0 + 1.0 / math.expm1(1.0 / (self.mean_pages - 1))

    def page_gap(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.page_gap_median_ms), self.page_gap_sigma)

    def mean_page_gap_ms(self) -> float:
        return self.page_gap_median_ms * math.exp(self.page_gap_sigma ** 2 / 2)


class Outgoing(NamedTuple):
    """One record to produce: the logical topic (no prefix), its key and its value."""

    topic: str
    key: str
    value: dict[str, Any]


@dataclass
class Shopper:
    """One live session, as the simulator knows it."""

    site_id: str
    session_id: str
    context: dict[str, str]
    group: str  # "engine" or "control"
    pages_left: int
    basket: set[str] = field(default_factory=set)
    displays: list[Served] = field(default_factory=list)  # recent, for attribution
    reactions: list[Reaction] = field(default_factory=list)  # recent, for attribution
    organic: set[str] = field(default_factory=set)  # event ids of reactions to no display
    scheduled: int = 0  # pending timeline entries; the session has ended at 0 and no pages


@dataclass
class Display:
    """A served display waiting for its window to pass."""

    served: Served
    shopper: Shopper
    group: str  # "engine", "control" or "fallback"
    arm: str
    source: str  # "session" or "default" ranking, "control" or "fallback"
    expected: float  # E[reward] of what was shown
    oracle: float  # E[reward] of the best the world allows
    best_arm: str | None = None  # the oracle's arm, in a world of arms
    clicked: bool = False  # the shopper clicked one of its items (whether in time or not)
