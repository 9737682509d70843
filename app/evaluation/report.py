"""``recoloop report``: a site's KPIs per experiment variant from ``reco.rewards`` (read
committed), as Markdown and a PNG: each KPI with its 95 % interval, the uplift of every
variant over the control with its interval and p-value, whether the sample can detect the
uplift asked for (``--mde``), the KPIs over time, and for apprentice controls how often the
engine agreed with the site and what it would have earned (:mod:`app.evaluation.kpis`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from app.contract.topics import REWARDS
from app.evaluation.kpis import (
    DISPLAY_KPIS,
    SESSION_KPIS,
    Kpi,
    by_period,
    uplift,
    variant_kpis,
)
from app.evaluation.offline import read_site
from app.settings import Settings

LABELS = {**{name: label for name, (label, _) in DISPLAY_KPIS.items()}, **SESSION_KPIS}
PLOTTED = ("ctr", "conversion", "reward_per_display", "bounce")


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:+.1f} %"


def apprentice_summary(decisions: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """How often the engine's arm was the arm shown, how many of its items were shown, and
    its value estimated on the site's choices (IPS with the site's list shown for sure:
    ``mean(r * p_engine(shown arm))``; it sees only where the two agree)."""
    rows = [d for d in decisions if isinstance(d.get("apprentice"), dict)]
    if not rows:
        return None
    agree = sum(d["apprentice"].get("arm") == d.get("arm") for d in rows) / len(rows)
    overlap = sum(len(set(d["apprentice"].get("items") or ()) & set(d.get("items") or ()))
                  / max(1, len(d["apprentice"].get("items") or ())) for d in rows) / len(rows)
    value = sum(float(d["reward"]) * float(d["apprentice"].get("shown_arm_probability") or 0)
                for d in rows) / len(rows)
    logged = sum(float(d["reward"]) for d in rows) / len(rows)
    return {"decisions": len(rows), "arm_agreement": agree, "item_overlap": overlap,
            "engine_value_ips": value, "site_value": logged}


def markdown(site_id: str, decisions: Sequence[Mapping[str, Any]], control: str,
             mde: float, periods: int) -> str:
    kpis = variant_kpis(decisions)
    variants = sorted(kpis, key=lambda v: (v != control, v))
    experiments = sorted({str(d["experiment"]) for d in decisions if d.get("experiment")})
    lines = [f"# recoloop report: site {site_id}", "",
             f"{len(decisions):,} closed decisions; experiment(s): "
             f"{', '.join(experiments) or 'none'}; control: {control}", "",
             "Intervals are 95 %, over sessions (the unit the experiment randomises): the "
             "delta method for ratios of per-session sums.", ""]
    lines += _kpi_section(kpis, variants)
    lines += _uplift_section(kpis, variants, control, mde)
    lines += _apprentice_section(decisions)
    lines += _over_time_section(decisions, variants, periods)
    return "\n".join(lines) + "\n"


def _kpi_section(kpis: Mapping[str, Mapping[str, Kpi]], variants: Sequence[str]) -> list[str]:
    lines = ["## KPIs per variant", "",
             "| KPI | " + " | ".join(f"{v} ({_sessions(kpis[v])} sessions)" for v in variants)
             + " |", "|---|" + "---|" * len(variants)]
    for name, label in LABELS.items():
        cells = []
        for v in variants:
            kpi = kpis[v].get(name)
            cells.append("n/a" if kpi is None else
                         f"{_fmt(kpi.value)} [{_fmt(kpi.low)}, {_fmt(kpi.high)}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _uplift_section(kpis: Mapping[str, Mapping[str, Kpi]], variants: Sequence[str],
                    control: str, mde: float) -> list[str]:
    lines = ["", f"## Uplift against {control}", ""]
    if control not in kpis:
        lines.append(f"No decisions of a variant named {control!r}: no uplift to report "
                     "(--control names it).")
        return lines
    lines += [f"Detectable: the smallest relative uplift this sample detects with 80 % "
              f"power at the 5 % level; asked for: {mde:.0%} (--mde).", "",
              "| variant | KPI | difference [95 %] | relative [95 %] | p-value | "
              "detectable | enough for the asked uplift |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        if v == control:
            continue
        for name, label in LABELS.items():
            a, b = kpis[v].get(name), kpis[control].get(name)
            if a is None or b is None:
                continue
            u = uplift(a, b)
            enough = "yes" if u.detectable_relative <= mde else (
                f"no: about {_more_needed(u.detectable_relative, mde)}x the sessions")
            lines.append(
                f"| {v} | {label} | {_fmt(u.difference)} [{_fmt(u.difference_low)}, "
                f"{_fmt(u.difference_high)}] | {_pct(u.relative)} [{_pct(u.relative_low)}, "
                f"{_pct(u.relative_high)}] | {u.p_value:.3g} | "
                f"{_pct(u.detectable_relative)} | {enough} |")
    return lines


def _apprentice_section(decisions: Sequence[Mapping[str, Any]]) -> list[str]:
    apprentice = apprentice_summary(decisions)
    if apprentice is None:
        return []
    return ["", "## Apprentice", "",
            f"{apprentice['decisions']:,} displays of the site's own choice with the "
            "engine deciding beside it:", "",
            f"- the engine chose the arm shown: {apprentice['arm_agreement']:.1%}",
            f"- its items among those shown: {apprentice['item_overlap']:.1%}",
            f"- reward per display of the site's choice: {apprentice['site_value']:.4g}",
            f"- the engine's, estimated where it agrees (IPS): "
            f"{apprentice['engine_value_ips']:.4g} (a lower bound when the site's "
            "choice is no arm of the engine's: unseen choices count 0)"]


def _over_time_section(decisions: Sequence[Mapping[str, Any]], variants: Sequence[str],
                       periods: int) -> list[str]:
    lines = ["", "## Over time: reward per display", "",
             "| from (UTC) | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    series = by_period(decisions, periods)
    for index in range(periods):
        start = next(iter(series.values()))[index][0] if series else 0
        cells = []
        for v in variants:
            kpi = series.get(v, [(0, None)] * periods)[index][1]
            cells.append("" if kpi is None else _fmt(kpi.value))
        stamp = datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"| {stamp} | " + " | ".join(cells) + " |")
    return lines


def _sessions(kpis: Mapping[str, Kpi]) -> str:
    kpi = kpis.get("ctr")
    return "0" if kpi is None else f"{kpi.sessions:,}"


def _more_needed(detectable: float, wanted: float) -> str:
    return f"{(detectable / wanted) ** 2:.1f}" if math.isfinite(detectable) else "n/a"


def write_plot(site_id: str, decisions: Sequence[Mapping[str, Any]], path: Path,
               periods: int) -> None:
    """A bar per variant and KPI with its interval, and reward per display over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kpis = variant_kpis(decisions)
    variants = sorted(kpis)
    figure, axes = plt.subplots(1, len(PLOTTED) + 1, figsize=(4 * (len(PLOTTED) + 1), 4))
    for ax, name in zip(axes, PLOTTED, strict=False):
        shown = [(v, kpis[v][name]) for v in variants if name in kpis[v]]
        ax.bar([v for v, _ in shown], [k.value for _, k in shown],
               yerr=[[k.value - k.low for _, k in shown], [k.high - k.value for _, k in shown]],
               capsize=4, color="tab:blue")
        ax.set_title(LABELS[name], fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    over_time = axes[-1]
    for v, rows in by_period(decisions, periods).items():
        over_time.plot([(t - rows[0][0]) / 60_000 for t, _ in rows],
                       [math.nan if k is None else k.value for _, k in rows], label=v,
                       marker="o")
    over_time.set_title("reward per display over time", fontsize=9)
    over_time.set_xlabel("minutes since the first display")
    over_time.legend(fontsize=8)
    over_time.grid(alpha=0.3)
    figure.suptitle(f"recoloop report: site {site_id} (95 % intervals)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_since(text: str | None, now_ms: int) -> int:
    """``--since``: an ISO time, or a duration back from now (``90m``, ``2h``, ``7d``)."""
    if not text:
        return 0
    units = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now_ms - int(float(text[:-1]) * units[text[-1]])
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True)
    parser.add_argument("--since", help="an ISO time, or a duration back from now (2h, 7d)")
    parser.add_argument("--control", default="control",
                        help="the variant uplifts are measured against (default: control)")
    parser.add_argument("--mde", type=float, default=0.05,
                        help="the relative uplift the sample should detect (default 0.05)")
    parser.add_argument("--experiment", help="the experiment to report (default: the newest "
                        "the site's decisions name; its sessions were split together)")
    parser.add_argument("--periods", type=_positive, default=12, help="spans of the time table")
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="directory for report-<site>.md and .png (default: here)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def one_experiment(decisions: list[dict[str, Any]], name: str | None) -> list[dict[str, Any]]:
    """The decisions of experiment ``name`` (default: the one of the newest decision that
    names one); all of them when none does. Another experiment split the sessions anew."""
    named = [d for d in decisions if d.get("experiment")]
    if name is None and named:
        name = max(named, key=lambda d: d["served_ts"])["experiment"]
    return decisions if name is None else [d for d in decisions if d.get("experiment") == name]


def main(args: argparse.Namespace, settings: Settings) -> int:
    since_ms = parse_since(args.since, int(time.time() * 1000))
    decisions = [value for value in (orjson.loads(raw) for raw in read_site(
        settings, settings.topic(REWARDS), lambda key, value: True))
        if isinstance(value, dict) and value.get("site_id") == args.site
        and isinstance(value.get("served_ts"), int) and value["served_ts"] >= since_ms
        and isinstance(value.get("reward"), int | float)
        and isinstance(value.get("outcomes", []), list)]
    decisions = one_experiment(decisions, getattr(args, "experiment", None))
    if not decisions:
        print(f"recoloop report: no decisions of site {args.site!r} on {REWARDS}",
              file=sys.stderr)
        return 1
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.site)
    text = markdown(args.site, decisions, args.control, args.mde, args.periods)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"report-{name}.md").write_text(text)
    write_plot(args.site, decisions, args.out / f"report-{name}.png", args.periods)
    print(text)
    print(f"written: {args.out / f'report-{name}.md'}, {args.out / f'report-{name}.png'}",
          file=sys.stderr)
    return 0
