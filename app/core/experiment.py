"""A site's experiment: its sessions split into variants by a stable hash of their id.

A variant is either an engine configuration (the site's own, or another arm set or
exploration) or a *control* that shows a fixed ``baseline``: an arm's list (``bestsellers``,
``trending``, ...), the site's own fixed list of ``items``, or ``nothing`` (the engine
publishes no ranking; the site shows its own list and only reports what was displayed and
what visitors did). A session's variant depends only on the experiment's name and the
session's id, so every worker, the rank service and a re-run agree on it without storing it.

Each engine variant learns its own model (:func:`model_key`); the variant named
:data:`MAIN_VARIANT` is the site's own engine and learns the site's model. A control teaches
nothing, unless it is an *apprentice*: the engine then decides beside the site's choice,
records what it would have shown, and learns the site's model from what the site's choice
earned (the shown arm when the model has it, and the item model from every display).

>>> experiment = Experiment("home-2026", (Variant("engine", 80), Variant("control", 20,
...                                       baseline="bestsellers")))
>>> [experiment.assign(f"s-{n}").name for n in range(8)]
['engine', 'engine', 'engine', 'engine', 'engine', 'control', 'engine', 'engine']
>>> model_key("shop", None), model_key("shop", "engine"), model_key("a|b", "candidate")
('shop', 'shop', 'a%7Cb|candidate')
>>> site_of_model_key("a%7Cb|candidate")
('a|b', 'candidate')
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.core.keys import escape, unescape

MAIN_VARIANT = "engine"
NOTHING = "nothing"  # a control under which the site shows its own list
FIXED_ITEMS = "items"  # a control showing the site's fixed list of items


@dataclass(frozen=True)
class Variant:
    name: str
    share: float
    arms: tuple[str, ...] | None = None  # an engine variant's own arm set (None: the site's)
    exploration: tuple[str, float] | None = None  # (rule, parameter); None: the site's
    baseline: str | None = None  # a control: an arm name, FIXED_ITEMS or NOTHING
    items: tuple[str, ...] = ()  # the FIXED_ITEMS list
    apprentice: bool = False  # a control the engine decides beside and learns from

    @property
    def control(self) -> bool:
        return self.baseline is not None

    @property
    def model(self) -> str | None:
        """The variant whose model this one learns and ranks with; None for a plain control."""
        if self.control:
            return MAIN_VARIANT if self.apprentice else None
        return self.name


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]

    def assign(self, session_id: str) -> Variant:
        """The session's variant: where a uniform hash of (experiment, session) falls among
        the variants' shares (shares are relative: 80/10/10 and 0.8/0.1/0.1 split alike)."""
        point = session_point(self.name, session_id) * sum(v.share for v in self.variants)
        cumulative = 0.0
        for variant in self.variants:
            cumulative += variant.share
            if point < cumulative:
                return variant
        return self.variants[-1]  # float rounding just above the total

    def variant(self, name: str | None) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


def session_point(experiment: str, session_id: str) -> float:
    """A uniform number in [0, 1) fixed by the experiment's name and the session id."""
    digest = hashlib.blake2b(f"{experiment}\x00{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def model_key(site_id: str, variant: str | None) -> str:
    """Where a site variant's model lives (its key on the models topic): the site for the
    site's own engine, ``site|variant`` for another. The site id is escaped
    (:mod:`app.core.keys`), so it never holds a ``|`` and no two (site, variant) pairs meet."""
    site = escape(site_id)
    return site if variant is None or variant == MAIN_VARIANT else f"{site}|{variant}"


def site_of_model_key(key: str) -> tuple[str, str | None]:
    """The (site, variant) a :func:`model_key` names (variant None: the site's own)."""
    site, _, variant = key.partition("|")
    return unescape(site), variant or None
