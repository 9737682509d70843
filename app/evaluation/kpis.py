"""KPIs per experiment variant from the joined log (``reco.rewards`` values), with 95 %
intervals, uplift against a control, its p-value, and the uplift the sample can detect.

Sessions, not displays, are what an experiment randomises, and a session's displays are
not independent: every per-display KPI is a ratio of per-session sums (``sum y / sum n``),
and its variance is the delta method's over sessions (Deng, Knoblich and Lu, 2018, "Applying
the Delta Method in Metric Analytics"), so a few very active sessions cannot make an interval
look narrower than the data allows. Pure: the standard library only.

>>> log = [{"session_id": f"s{n}", "variant": v, "reward": float(n % k == 0),
...         "outcomes": [{"type": "click", "delay_ms": 900}] if n % k == 0 else []}
...        for n in range(4000) for v, k in (("engine", 4), ("control", 5))]
>>> report = variant_kpis(log)
>>> round(report["engine"]["ctr"].value, 3), round(report["control"]["ctr"].value, 3)
(0.25, 0.2)
>>> up = uplift(report["engine"]["ctr"], report["control"]["ctr"])
>>> round(up.relative, 2), up.p_value < 0.001
(0.25, True)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

Z95 = NormalDist().inv_cdf(0.975)
NO_VARIANT = "none"  # decisions of a site without an experiment

Decision = Mapping[str, Any]


def _reacted(kind: str) -> Callable[[Decision], float]:
    return lambda d: float(any(o.get("type") == kind for o in d.get("outcomes") or ()))


def _revenue(d: Decision) -> float:
    return float(sum(o.get("price") or 0.0 for o in d.get("outcomes") or ()
                     if o.get("type") == "basket_add"))


def _first_action_s(d: Decision) -> float | None:
    delays = [o["delay_ms"] for o in d.get("outcomes") or () if "delay_ms" in o]
    return min(delays) / 1000 if delays else None


# name -> (label, the per-display value; None: the display does not count for it)
DISPLAY_KPIS: dict[str, tuple[str, Callable[[Decision], float | None]]] = {
    "ctr": ("click-through rate", _reacted("click")),
    "detail_view_rate": ("detail-view rate", _reacted("detail_view")),
    "conversion": ("basket-add rate (conversion)", _reacted("basket_add")),
    "reward_per_display": ("reward per display", lambda d: float(d.get("reward") or 0.0)),
    "revenue_per_display": ("revenue per display", _revenue),
    "first_action_s": ("time to first action (s, displays acted on)", _first_action_s),
}
SESSION_KPIS = {"bounce": "bounce (share of sessions with a single display)"}


@dataclass(frozen=True)
class Kpi:
    """A ratio of per-session sums and its delta-method variance."""

    value: float
    variance: float
    units: int  # displays (or sessions) it is measured on
    sessions: int

    @property
    def low(self) -> float:
        return self.value - Z95 * math.sqrt(self.variance)

    @property
    def high(self) -> float:
        return self.value + Z95 * math.sqrt(self.variance)


def ratio(per_session: Iterable[tuple[float, float]]) -> Kpi | None:
    """``sum y / sum n`` over sessions' ``(y, n)``, with its delta-method variance; None
    without a unit."""
    pairs = [(y, n) for y, n in per_session if n > 0]
    k = len(pairs)
    total_n = sum(n for _, n in pairs)
    if not k or not total_n:
        return None
    value = sum(y for y, _ in pairs) / total_n
    mean_n = total_n / k
    spread = sum((y - value * n) ** 2 for y, n in pairs) / (k - 1) if k > 1 else math.inf
    return Kpi(value, spread / (k * mean_n ** 2), int(total_n), k)


def variant_kpis(decisions: Iterable[Decision]) -> dict[str, dict[str, Kpi]]:
    """Each variant's KPIs (variant ``none``: decisions outside experiments). Revenue only
    where some basket add was sent with a price; time to first action over the displays
    that had one."""
    # variant -> session -> kpi -> [sum y, units]
    sums: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: [0.0, 0.0])))
    priced: set[str] = set()
    for d in decisions:
        variant = str(d.get("variant") or NO_VARIANT)
        session = sums[variant][str(d.get("session_id"))]
        for name, (_, value_of) in DISPLAY_KPIS.items():
            value = value_of(d)
            if value is not None:
                session[name][0] += value
                session[name][1] += 1
        if any(o.get("price") is not None for o in d.get("outcomes") or ()):
            priced.add(variant)
    report: dict[str, dict[str, Kpi]] = {}
    for variant, sessions in sums.items():
        kpis = {}
        for name in DISPLAY_KPIS:
            if name == "revenue_per_display" and variant not in priced:
                continue
            kpi = ratio((s[name][0], s[name][1]) for s in sessions.values() if name in s)
            if kpi is not None:
                kpis[name] = kpi
        bounced = ((float(s["ctr"][1] == 1), 1.0) for s in sessions.values())
        bounce = ratio(bounced)
        if bounce is not None:
            kpis["bounce"] = bounce
        report[variant] = kpis
    return report


@dataclass(frozen=True)
class Uplift:
    difference: float
    difference_low: float
    difference_high: float
    relative: float  # difference over the control's value
    relative_low: float
    relative_high: float
    p_value: float  # two-sided, of no difference
    # The smallest relative uplift this sample detects with 80 % power at the 5 % level.
    detectable_relative: float


def uplift(variant: Kpi, control: Kpi, power: float = 0.8) -> Uplift:
    """The variant's uplift over the control (independent groups of sessions)."""
    difference = variant.value - control.value
    se = math.sqrt(variant.variance + control.variance)
    z = difference / se if se > 0 else math.inf if difference else 0.0
    p_value = 2 * (1 - NormalDist().cdf(abs(z))) if math.isfinite(z) else 0.0
    base = control.value
    if base:
        relative = difference / base
        rel_se = math.sqrt(variant.variance / base ** 2
                           + variant.value ** 2 * control.variance / base ** 4)
        detectable = (Z95 + NormalDist().inv_cdf(power)) * se / abs(base)
    else:
        relative, rel_se, detectable = math.nan, math.nan, math.nan
    return Uplift(difference, difference - Z95 * se, difference + Z95 * se, relative,
                  relative - Z95 * rel_se, relative + Z95 * rel_se, p_value, detectable)


def by_period(decisions: Iterable[Decision], periods: int,
              kpi: str = "reward_per_display") -> dict[str, list[tuple[int, Kpi | None]]]:
    """A KPI per variant over ``periods`` equal spans of served time: (span start ms, KPI)."""
    rows = list(decisions)
    if not rows:
        return {}
    first = min(int(d["served_ts"]) for d in rows)
    last = max(int(d["served_ts"]) for d in rows)
    width = max(1, (last - first) // periods + 1)
    spans: dict[int, list[Decision]] = defaultdict(list)
    for d in rows:
        spans[(int(d["served_ts"]) - first) // width].append(d)
    variants = sorted({str(d.get("variant") or NO_VARIANT) for d in rows})
    out: dict[str, list[tuple[int, Kpi | None]]] = {v: [] for v in variants}
    for span in range(periods):
        kpis = variant_kpis(spans.get(span, []))
        for variant in variants:
            out[variant].append((first + span * width, kpis.get(variant, {}).get(kpi)))
    return out
