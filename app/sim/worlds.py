"""The simulator's worlds by name, built the same way for ``recoloop simulate``, the demo and
the benchmarks, so that one seed brings the same shoppers to each of them."""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Mapping
from typing import TypedDict

from app.sim.arm_table import SimConfig, Simulator
from app.sim.common import World
from app.sim.items import ItemConfig, ItemWorld
from app.sim.longtail import LongTailConfig, LongTailWorld
from app.sim.returns import ReturnsConfig, ReturnsWorld
from app.sim.shifting import ShiftingConfig, ShiftingWorld
from app.sim.slots import SlotsConfig, SlotsWorld

# The worlds of items and shoppers, each with its config; "arms" (a reward table per arm)
# is built apart.
ITEM_WORLDS: dict[str, tuple[type[ItemConfig], type[ItemWorld]]] = {
    "items": (ItemConfig, ItemWorld),
    "returns": (ReturnsConfig, ReturnsWorld),
    "longtail": (LongTailConfig, LongTailWorld),
    "slots": (SlotsConfig, SlotsWorld),
    "shifting": (ShiftingConfig, ShiftingWorld),
}
WORLDS = ("items", "arms", "returns", "longtail", "slots", "shifting")  # the first: default


class _Shared(TypedDict):
    sites: tuple[str, ...]
    rate: float
    control_share: float
    window_ms: int
    rewards: dict[str, float]
    arms: dict[str, tuple[str, ...]]
    run_tag: str


def best_baseline(world: str) -> str:
    """The baseline a world's docstring names its best simple strategy (``bench.baselines``)."""
    if world not in ITEM_WORLDS:
        raise ValueError(f"the {world} world has no item baseline")
    return str(importlib.import_module(ITEM_WORLDS[world][1].__module__).BEST_BASELINE)


def site_ids(count: int) -> tuple[str, ...]:
    return tuple(f"shop-{n}" for n in range(1, count + 1))


def build_world(world: str, seed: int, clock: Callable[[], int], *, sites: tuple[str, ...],
                rate: float, control_share: float, window_ms: int,
                rewards: Mapping[str, float], arms: Mapping[str, tuple[str, ...]],
                run_tag: str) -> World:
    """A fresh world: ``arms`` (:mod:`app.sim.arm_table`) or one of :data:`ITEM_WORLDS`
    (``items``, :mod:`app.sim.items`; ``returns``, ``longtail``, ``slots`` and ``shifting``,
    the modules of those names).

    >>> build_world("items", 1, lambda: 0, sites=("shop-1",), rate=10, control_share=0.2,
    ...             window_ms=20_000, rewards={"click": 1}, arms={}, run_tag="t").config.rate
    10
    """
    shared: _Shared = {"sites": sites, "rate": rate, "control_share": control_share,
                       "window_ms": window_ms, "rewards": dict(rewards), "arms": dict(arms),
                       "run_tag": run_tag}
    if world in ITEM_WORLDS:
        config, world_class = ITEM_WORLDS[world]
        return world_class(config(**shared), seed, clock)
    if world == "arms":
        return Simulator(SimConfig(**shared), random.Random(seed), clock)
    raise ValueError(f"unknown world {world!r}; known: {', '.join(WORLDS)}")
