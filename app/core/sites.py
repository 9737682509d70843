"""Per-site settings as data, in one type: :class:`SiteConfig`. The environment's per-site
defaults (``RECOLOOP_SITE_ARMS``, ``RECOLOOP_SITE_EXPLORATION``, ``RECOLOOP_SITE_JOIN``) and
each site's record of the ``reco.site-config`` topic both parse into it, and
:func:`site_problem` checks both.

A site's settings are layered: the process-wide values (:class:`SiteBase`), its environment
config, then its record; a field a layer leaves out keeps the one below. A record replaces
the site's previous one as a whole; a record that could not work is refused and the site
keeps what it had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from app.core.arms import ARMS, ITEM_MODEL_ARMS, KNOWN_ARMS
from app.core.experiment import FIXED_ITEMS, MAIN_VARIANT, NOTHING, Experiment, Variant
from app.core.rules import NO_RULES, Rules

# The bandit's exploration rules (app.core.policy implements them; not imported here, as it
# would load River into every command; tests/test_settings.py checks they agree).
EXPLORATION_RULES = ("epsilon", "squarecb")
GAMMA_MAX = 1e6
FINITE = 1e9  # windows, graces and timeouts stay below it
# The policies a site may have scored in the shadow of its live one (app.evaluation).
SHADOW_POLICIES_MAX = 8
JOINS_CACHED = 10_000  # sites whose join settings are kept worked out

# (reward_window_s, grace_s, reward per reaction type)
Join = tuple[float, float, Mapping[str, float]]
NO_REWARDS: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True)
class SiteConfig:
    """One site's settings; None (or empty) fields keep the layer below's."""

    site_id: str
    arms: tuple[str, ...] | None = None
    exploration: tuple[str, float] | None = None  # (rule, parameter)
    reward_window_s: float | None = None
    grace_s: float | None = None
    rewards: Mapping[str, float] = field(default_factory=lambda: NO_REWARDS)
    rules: Rules = NO_RULES
    experiment: Experiment | None = None
    # Candidate policies scored live on every closed decision ("arm:X", "uniform", ...).
    shadow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewards", MappingProxyType(dict(self.rewards)))

    def over(self, below: SiteConfig | None) -> SiteConfig:
        """This config laid over ``below`` (the site's environment config)."""
        if below is None:
            return self
        return SiteConfig(
            self.site_id, below.arms if self.arms is None else self.arms,
            below.exploration if self.exploration is None else self.exploration,
            below.reward_window_s if self.reward_window_s is None else self.reward_window_s,
            below.grace_s if self.grace_s is None else self.grace_s,
            {**below.rewards, **self.rewards}, self.rules, self.experiment, self.shadow)


@dataclass(frozen=True)
class SiteBase:
    """What every site has before its own config: the process-wide ``RECOLOOP_*`` values,
    and the environment's per-site configs (``sites``)."""

    arms: tuple[str, ...]
    exploration: tuple[str, float, float]  # (rule, epsilon, squarecb gamma)
    join: Join
    session_timeout_s: float
    sites: Mapping[str, SiteConfig] = field(default_factory=lambda: MappingProxyType({}))

    def join_of(self, config: SiteConfig | None) -> Join:
        """``(reward_window_s, grace_s, rewards)`` of a site with ``config`` laid over these."""
        window_s, grace_s, rewards = self.join
        if config is None:
            return self.join
        return (window_s if config.reward_window_s is None else config.reward_window_s,
                grace_s if config.grace_s is None else config.grace_s,
                MappingProxyType({**rewards, **config.rewards}))

    def exploration_of(self, chosen: tuple[str, float] | None) -> tuple[str, float, float]:
        """``(rule, epsilon, gamma)`` with a config's ``(rule, parameter)`` applied."""
        rule, epsilon, gamma = self.exploration
        if chosen is None:
            return rule, epsilon, gamma
        rule, value = chosen
        return (rule, value, gamma) if rule == "epsilon" else (rule, epsilon, value)


class Defaults(Protocol):
    """What :class:`app.settings.Settings` gives every site."""

    @property
    def site_base(self) -> SiteBase: ...


def site_problem(config: SiteConfig, base: SiteBase) -> str | None:
    """Why ``config`` (laid over ``base``) could not work, or None: the one check of a
    site's settings, from the environment or from the topic (whose schema checks forms)."""
    window_s, grace_s, rewards = base.join_of(config)
    if not (0 < window_s < FINITE and 0 < grace_s < FINITE):
        return "reward_window_s and grace_s must be positive and finite"
    if window_s + grace_s >= base.session_timeout_s:
        return ("reward_window_s + grace_s must be shorter than RECOLOOP_SESSION_TIMEOUT_S "
                f"({base.session_timeout_s} s)")
    unknown = sorted(set(config.rewards) - set(base.join[2]))
    if unknown:
        return f"unknown reaction types {unknown}; known: {', '.join(base.join[2])}"
    if not all(0 <= r < FINITE for r in rewards.values()):
        return "rewards must be finite and not negative"
    if max(rewards.values(), default=0.0) <= 0:
        return "some reaction type must have a reward above 0"
    problem = _exploration_problem(config.exploration, "") or arms_problem(config.arms, "arms: ")
    if problem is not None:
        return problem
    rules = config.rules
    if rules.price_min is not None and rules.price_max is not None \
            and rules.price_min > rules.price_max:
        return "price_min must not be above price_max"
    if config.experiment is not None:
        return _experiment_problem(config.experiment)
    return None


class SiteSettings:
    """Each site's settings: its record's where it has one, the defaults elsewhere.

    >>> base = SiteBase(("similar", "learned"), ("squarecb", 0.1, 1.0),
    ...                 (20.0, 5.0, {"click": 1.0}), 1800.0)
    >>> class Env:  # what app.settings.Settings gives every site
    ...     site_base = base
    >>> sites = SiteSettings(Env())
    >>> sites.offer(SiteConfig("shop", arms=("trending",), reward_window_s=60))
    >>> sites.arms_for("shop"), sites.join_for("shop")[0], sites.arms_for("other")[0]
    (('trending',), 60, 'similar')
    >>> sites.problem(SiteConfig("shop", reward_window_s=7200))
    'reward_window_s + grace_s must be shorter than RECOLOOP_SESSION_TIMEOUT_S (1800.0 s)'
    """

    def __init__(self, defaults: Defaults) -> None:
        self.base = defaults.site_base
        self._records: dict[str, SiteConfig] = {}  # each site's record, as given
        self._configs: dict[str, SiteConfig] = {}  # each record laid over the environment's
        # Each site's join settings, worked out once per config (every event asks).
        self._joins: dict[str, Join] = {}

    def __len__(self) -> int:
        return len(self._records)

    def config(self, site_id: str) -> SiteConfig | None:
        """The site's record (None without one)."""
        return self._records.get(site_id)

    def problem(self, config: SiteConfig) -> str | None:
        """Why the record ``config`` cannot be applied, or None."""
        return site_problem(config.over(self.base.sites.get(config.site_id)), self.base)

    def offer(self, config: SiteConfig) -> str | None:
        """Apply ``config``; the reason instead when it is refused (the site keeps its own)."""
        problem = self.problem(config)
        if problem is None:
            self._records[config.site_id] = config
            self._configs[config.site_id] = config.over(self.base.sites.get(config.site_id))
            self._joins.pop(config.site_id, None)
        return problem

    def forget(self, site_id: str) -> None:
        """The site's record was deleted (a tombstone): back to the defaults."""
        self._records.pop(site_id, None)
        self._configs.pop(site_id, None)
        self._joins.pop(site_id, None)

    def _config(self, site_id: str) -> SiteConfig | None:
        config = self._configs.get(site_id)
        return self.base.sites.get(site_id) if config is None else config

    def experiment_for(self, site_id: str) -> Experiment | None:
        config = self._records.get(site_id)
        return None if config is None else config.experiment

    def variant_for(self, site_id: str, session_id: str) -> tuple[str, Variant] | None:
        """The site's experiment and the session's variant in it; None without one."""
        experiment = self.experiment_for(site_id)
        return None if experiment is None else (experiment.name,
                                                experiment.assign(session_id))

    def shadow_for(self, site_id: str) -> tuple[str, ...]:
        config = self._records.get(site_id)
        return () if config is None else config.shadow

    def variant_named(self, site_id: str, variant: str | None) -> Variant | None:
        experiment = self.experiment_for(site_id)
        return None if experiment is None else experiment.variant(variant)

    def indexes_sessions(self, site_id: str) -> bool:
        """Whether the site's arms (or an experiment variant's) use its session index."""
        return any(self.uses_arm(site_id, arm.name) for arm in ARMS.values()
                   if arm.session_index)

    def uses_arm(self, site_id: str, arm: str) -> bool:
        """Whether the site's engine, or a variant of its experiment, may show ``arm``."""
        experiment = self.experiment_for(site_id)
        variants = () if experiment is None else experiment.variants
        return arm in self.arms_for(site_id) or any(
            arm in self.arms_for(site_id, v.name) or v.baseline == arm for v in variants)

    def arms_for(self, site_id: str, variant: str | None = None) -> tuple[str, ...]:
        """The arms of the site's bandit, or of its experiment's ``variant``'s."""
        own = self.variant_named(site_id, variant)
        if own is not None and own.arms is not None:
            return own.arms
        config = self._config(site_id)
        return self.base.arms if config is None or config.arms is None else config.arms

    def exploration_for(self, site_id: str,
                        variant: str | None = None) -> tuple[str, float, float]:
        """``(rule, epsilon, gamma)`` of the site's bandit, or of its ``variant``'s."""
        own = self.variant_named(site_id, variant)
        if own is not None and own.exploration is not None:
            return self.base.exploration_of(own.exploration)
        config = self._config(site_id)
        return self.base.exploration_of(None if config is None else config.exploration)

    def join_for(self, site_id: str) -> Join:
        """``(reward_window_s, grace_s, rewards)`` of the site: the same object until its
        config changes."""
        join = self._joins.get(site_id)
        if join is None:
            if len(self._joins) >= JOINS_CACHED:
                self._joins.clear()
            join = self._joins[site_id] = self.base.join_of(self._config(site_id))
        return join

    def rules_for(self, site_id: str) -> Rules:
        config = self._records.get(site_id)
        return NO_RULES if config is None else config.rules


def arms_problem(arms: tuple[str, ...] | None, where: str = "") -> str | None:
    """Why an arm set (``where``: the message's prefix) could not work, or None."""
    if arms is None:
        return None
    unknown = sorted(set(arms) - set(KNOWN_ARMS))
    if unknown:
        return f"{where}unknown arms {unknown}; known: {', '.join(KNOWN_ARMS)}"
    if not arms:
        return f"{where}must name at least one arm"
    if len(set(arms)) != len(arms):
        return f"{where}must not name an arm twice (propensities count each arm once)"
    return None


def _exploration_problem(exploration: tuple[str, float] | None, where: str) -> str | None:
    if exploration is None:
        return None
    rule, value = exploration
    if rule == "epsilon" and 0 <= value <= 1 or rule == "squarecb" and 0 < value < GAMMA_MAX:
        return None
    return (f"{where}expected exploration epsilon:<0..1> or squarecb:<gamma above 0>, "
            f"got {rule}:{value}")


def _experiment_problem(experiment: Experiment) -> str | None:
    names = [variant.name for variant in experiment.variants]
    if len(set(names)) != len(names):
        return "an experiment's variants must have distinct names"
    for variant in experiment.variants:
        problem = arms_problem(variant.arms, f"variant {variant.name!r}: ")
        if problem is not None:
            return problem
        if variant.baseline is not None and variant.baseline not in (FIXED_ITEMS, NOTHING) \
                and (variant.baseline not in KNOWN_ARMS or ARMS[variant.baseline].item_model):
            listing = sorted(ITEM_MODEL_ARMS)
            return (f"variant {variant.name!r}: the baseline must be an arm other than "
                    f"{', '.join(map(repr, listing))}, {FIXED_ITEMS!r} or {NOTHING!r}")
        if variant.name == MAIN_VARIANT and (variant.control or variant.arms is not None
                                             or variant.exploration is not None):
            return (f"the variant {MAIN_VARIANT!r} is the site's own engine: it takes no "
                    "baseline, arms or exploration of its own (name another variant)")
        if variant.control and (variant.arms is not None or variant.exploration is not None):
            return f"variant {variant.name!r}: a control takes no arms or exploration"
        if variant.apprentice and not variant.control:
            return f"variant {variant.name!r}: only a control (with a baseline) is an apprentice"
        if (variant.baseline == FIXED_ITEMS) != bool(variant.items):
            return f"variant {variant.name!r}: items go with the baseline {FIXED_ITEMS!r}, only"
        problem = _exploration_problem(variant.exploration, f"variant {variant.name!r}: ")
        if problem is not None:
            return problem
    return None
