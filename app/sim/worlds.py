"""The simulator's worlds by name, built the same way for ``recoloop simulate``, the demo and
the benchmarks, so that one seed brings the same shoppers to each of them."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import TypedDict

from app.sim.common import World
from app.sim.items import ItemConfig, ItemWorld
from app.sim.world import SimConfig, Simulator

WORLDS = ("items", "arms")  # the first is the default


class _Shared(TypedDict):
    sites: tuple[str, ...]
    rate: float
    control_share: float
    window_ms: int
    rewards: dict[str, float]
    arms: dict[str, tuple[str, ...]]
    run_tag: str


def site_ids(count: int) -> tuple[str, ...]:
    return tuple(f"shop-{n}" for n in range(1, count + 1))


def build_world(world: str, seed: int, clock: Callable[[], int], *, sites: tuple[str, ...],
                rate: float, control_share: float, window_ms: int,
                rewards: Mapping[str, float], arms: Mapping[str, tuple[str, ...]],
                run_tag: str) -> World:
    """A fresh world: ``items`` (:mod:`app.sim.items`) or ``arms`` (:mod:`app.sim.world`).

    >>> build_world("items", 1, lambda: 0, sites=("shop-1",), rate=10, control_share=0.2,
    ...             window_ms=20_000, rewards={"click": 1}, arms={}, run_tag="t").config.rate
    10
    """
    shared: _Shared = {"sites": sites, "rate": rate, "control_share": control_share,
                       "window_ms": window_ms, "rewards": dict(rewards), "arms": dict(arms),
                       "run_tag": run_tag}
    if world == "items":
        return ItemWorld(ItemConfig(**shared), seed, clock)
    if world == "arms":
        return Simulator(SimConfig(**shared), random.Random(seed), clock)
    raise ValueError(f"unknown world {world!r}; known: {', '.join(WORLDS)}")
