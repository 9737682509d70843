"""Per-site settings as data: the process-wide defaults, overlaid by each site's record of the
``reco.site-config`` topic (arms, exploration, the join's window, grace and rewards, and the
business rules of :mod:`app.core.rules`).

A record replaces the site's previous one as a whole; a field it leaves out keeps the
default. A record that could not work (see :meth:`SiteSettings.problem`) is refused and the
site keeps what it had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from app.core.arms import ARMS, ITEM_MODEL_ARMS, KNOWN_ARMS
from app.core.experiment import FIXED_ITEMS, MAIN_VARIANT, NOTHING, Experiment, Variant
from app.core.rules import NO_RULES, Rules

# The policies a site may have scored in the shadow of its live one (app.evaluation).
SHADOW_POLICIES_MAX = 8
JOINS_CACHED = 10_000  # sites whose join settings are kept worked out


class Defaults(Protocol):
    """What :class:`app.settings.Settings` gives every site without a record."""

    @property
    def session_timeout_s(self) -> float: ...
    def arms_for(self, site_id: str) -> tuple[str, ...]: ...
    def exploration_for(self, site_id: str) -> tuple[str, float, float]: ...
    def join_for(self, site_id: str) -> tuple[float, float, dict[str, float]]: ...


@dataclass(frozen=True)
class SiteConfig:
    site_id: str
    arms: tuple[str, ...] | None = None
    exploration: tuple[str, float] | None = None  # (rule, parameter)
    reward_window_s: float | None = None
    grace_s: float | None = None
    rewards: Mapping[str, float] = field(default_factory=dict)
    rules: Rules = NO_RULES
    experiment: Experiment | None = None
    # Candidate policies scored live on every closed decision ("arm:X", "uniform", ...).
    shadow: tuple[str, ...] = ()


class SiteSettings:
    """Each site's settings: its record's where it has one, the defaults elsewhere.

    >>> class Env:  # what app.settings.Settings gives every site
    ...     session_timeout_s = 1800.0
    ...     def arms_for(self, site_id): return ("similar", "learned")
    ...     def exploration_for(self, site_id): return ("squarecb", 0.1, 1.0)
    ...     def join_for(self, site_id): return (20.0, 5.0, {"click": 1.0})
    >>> sites = SiteSettings(Env())
    >>> sites.offer(SiteConfig("shop", arms=("trending",), reward_window_s=60))
    >>> sites.arms_for("shop"), sites.join_for("shop")[0], sites.arms_for("other")[0]
    (('trending',), 60, 'similar')
    >>> sites.problem(SiteConfig("shop", reward_window_s=7200))
    'reward_window_s + grace_s must be shorter than RECOLOOP_SESSION_TIMEOUT_S (1800.0 s)'
    """

    def __init__(self, defaults: Defaults) -> None:
        self.defaults = defaults
        self._configs: dict[str, SiteConfig] = {}
        # Each site's join settings, worked out once per config (every event asks).
        self._joins: dict[str, tuple[float, float, dict[str, float]]] = {}

    def __len__(self) -> int:
        return len(self._configs)

    def config(self, site_id: str) -> SiteConfig | None:
        return self._configs.get(site_id)

    def problem(self, config: SiteConfig) -> str | None:
        """Why ``config`` cannot be applied (the schema has checked each field), or None."""
        window_s, grace_s, rewards = self._join(config)
        if window_s + grace_s >= self.defaults.session_timeout_s:
            return ("reward_window_s + grace_s must be shorter than RECOLOOP_SESSION_TIMEOUT_S "
                    f"({self.defaults.session_timeout_s} s)")
        if max(rewards.values(), default=0.0) <= 0:
            return "some reaction type must have a reward above 0"
        if config.exploration is not None and config.exploration[0] == "epsilon" \
                and not 0 < config.exploration[1] <= 1:
            return "an epsilon must be within (0, 1]"
        problem = _arms_problem(config.arms, "arms")
        if problem is not None:
            return problem
        rules = config.rules
        if rules.price_min is not None and rules.price_max is not None \
                and rules.price_min > rules.price_max:
            return "price_min must not be above price_max"
        if config.experiment is not None:
            return _experiment_problem(config.experiment)
        return None

    def offer(self, config: SiteConfig) -> str | None:
        """Apply ``config``; the reason instead when it is refused (the site keeps its own)."""
        problem = self.problem(config)
        if problem is None:
            self._configs[config.site_id] = config
            self._joins.pop(config.site_id, None)
        return problem

    def forget(self, site_id: str) -> None:
        """The site's record was deleted (a tombstone): back to the defaults."""
        self._configs.pop(site_id, None)
        self._joins.pop(site_id, None)

    def experiment_for(self, site_id: str) -> Experiment | None:
        config = self._configs.get(site_id)
        return None if config is None else config.experiment

    def variant_for(self, site_id: str, session_id: str) -> tuple[str, Variant] | None:
        """The site's experiment and the session's variant in it; None without one."""
        experiment = self.experiment_for(site_id)
        return None if experiment is None else (experiment.name,
                                                experiment.assign(session_id))

    def shadow_for(self, site_id: str) -> tuple[str, ...]:
        config = self._configs.get(site_id)
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
        config = self._configs.get(site_id)
        if config is None or config.arms is None:
            return self.defaults.arms_for(site_id)
        return config.arms

    def exploration_for(self, site_id: str,
                        variant: str | None = None) -> tuple[str, float, float]:
        rule, epsilon, gamma = self.defaults.exploration_for(site_id)
        config = self._configs.get(site_id)
        own = self.variant_named(site_id, variant)
        chosen = own.exploration if own is not None and own.exploration is not None else (
            None if config is None else config.exploration)
        if chosen is None:
            return rule, epsilon, gamma
        rule, value = chosen
        return (rule, value, gamma) if rule == "epsilon" else (rule, epsilon, value)

    def join_for(self, site_id: str) -> tuple[float, float, dict[str, float]]:
        """``(reward_window_s, grace_s, rewards)`` of the site: the same object until its
        config changes (callers must not change it)."""
        join = self._joins.get(site_id)
        if join is None:
            if len(self._joins) >= JOINS_CACHED:
                self._joins.clear()
            config = self._configs.get(site_id)
            join = self._joins[site_id] = self.defaults.join_for(site_id) if config is None \
                else self._join(config)
        return join

    def _join(self, config: SiteConfig) -> tuple[float, float, dict[str, float]]:
        window_s, grace_s, rewards = self.defaults.join_for(config.site_id)
        return (window_s if config.reward_window_s is None else config.reward_window_s,
                grace_s if config.grace_s is None else config.grace_s,
                {**rewards, **config.rewards})

    def rules_for(self, site_id: str) -> Rules:
        config = self._configs.get(site_id)
        return NO_RULES if config is None else config.rules


def _arms_problem(arms: tuple[str, ...] | None, where: str) -> str | None:
    unknown = sorted(set(arms or ()) - set(KNOWN_ARMS))
    if unknown:
        return f"{where}: unknown arms {unknown}; known: {', '.join(KNOWN_ARMS)}"
    return None


def _experiment_problem(experiment: Experiment) -> str | None:
    names = [variant.name for variant in experiment.variants]
    if len(set(names)) != len(names):
        return "an experiment's variants must have distinct names"
    for variant in experiment.variants:
        problem = _arms_problem(variant.arms, f"variant {variant.name!r}")
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
        if variant.exploration is not None and variant.exploration[0] == "epsilon" \
                and not 0 < variant.exploration[1] <= 1:
            return f"variant {variant.name!r}: an epsilon must be within (0, 1]"
    return None
