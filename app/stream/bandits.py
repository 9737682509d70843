"""Every site's bandit as one worker knows it, and the learning in its open transaction.

A bandit is named by its :func:`app.core.experiment.model_key`: the site's own, or one of
its experiment's variants' (``site|variant``); "site" below is either.

Each site's bandit is learned by one worker (the owner of the site's partition of the
decisions topic) and published on the compacted models topic that every worker reads, in
the plain encoding of :mod:`app.contract.codec` (never a pickle). A model's version is its
update count (``model_version`` in rankings); the newest version always wins. The learner
updates a model in place inside a Kafka transaction, so the update must vanish if the
transaction aborts: :meth:`BanditModels.aborted` forgets it and the next read decodes the
last committed bytes again. After a commit the learner, too, decodes what it published, so
every worker, before and after a crash, works from the same numbers.

Memory does not grow with the number of sites: a site unused for ``site_idle_s`` leaves
memory for a local RocksDB copy (:class:`SpilledModels`, rebuilt from the models topic at
every start) and comes back from it when the site returns.

No Kafka here: the models replica (:mod:`app.stream.replicas`) feeds :meth:`offer` from the
topic, and the runtime sends :meth:`changes` (:mod:`app.stream.processor`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rocksdict import Rdict

from app.contract.codec import UndecodableRecord, decode_model, encode_model, model_version
from app.core.experiment import site_of_model_key
from app.core.policy import ContextualBandit
from app.core.sites import SiteSettings
from app.settings import Settings
from app.stream.runtime.store import rocksdb_options

log = logging.getLogger(__name__)


class SpilledModels:
    """Models of idle sites on local disk: bytes only (RocksDB's raw mode never pickles),
    written by this worker alone and emptied when it starts."""

    def __init__(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=rocksdb_options())

    def get(self, site_id: str) -> bytes | None:
        raw: bytes | None = self._db.get(site_id.encode())
        return raw

    def put(self, site_id: str, raw: bytes) -> None:
        self._db[site_id.encode()] = raw

    def delete(self, site_id: str) -> None:
        self._db.delete(site_id.encode())

    def close(self) -> None:
        self._db.close()


class MemorySpill(dict[str, bytes]):
    """A :class:`SpilledModels` in memory, for tools and tests."""

    def put(self, site_id: str, raw: bytes) -> None:
        self[site_id] = raw

    def delete(self, site_id: str) -> None:
        self.pop(site_id, None)

    def close(self) -> None:
        pass


class BanditModels:
    """The :class:`app.core.issuing.Policies` of a worker.

    >>> from app.settings import Settings
    >>> models = BanditModels(Settings.of(arms=("category1", "trending")))
    >>> models.current("shop")[1]  # never learned: a fresh bandit, version 0
    0
    >>> models.learning("shop").update("trending", {}, 1.0)
    >>> [(site, model_version(raw)) for site, raw in models.changes()]
    [('shop', 1)]
    >>> models.aborted()  # the transaction did not commit: the update never happened
    >>> models.current("shop")[1]
    0
    >>> models.offer("shop", b"1\\n\\x80\\x04crafted pickle")  # skipped, never unpickled
    >>> models.current("shop")[1]
    0
    """

    def __init__(self, settings: Settings,
                 on_undecodable: Callable[[], None] = lambda: None,
                 spill: SpilledModels | MemorySpill | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sites: SiteSettings | None = None) -> None:
        self.settings = settings
        self.sites = SiteSettings(settings) if sites is None else sites  # arms, exploration
        self.on_undecodable = on_undecodable
        self.spill = MemorySpill() if spill is None else spill
        self.clock = clock
        self._committed: dict[str, bytes] = {}  # newest committed encoding per site
        self._decoded: dict[str, ContextualBandit] = {}
        self._learning: set[str] = set()  # sites updated in the open transaction
        self._used_at: dict[str, float] = {}  # the sites in memory, and when last used

    def in_memory(self) -> int:
        return len(self._used_at)

    def current(self, site_id: str) -> tuple[ContextualBandit, int]:
        self._recall(site_id)
        policy = self._decoded.get(site_id)
        if policy is None:
            raw = self._committed.get(site_id)
            # Committed bytes were decoded once already (offer, or our own encoding).
            policy = self._fresh(site_id) if raw is None else self._fit(site_id,
                                                                         decode_model(raw))
            self._decoded[site_id] = policy
        return policy, policy.n_updates

    def learning(self, site_id: str) -> ContextualBandit:
        """The site's bandit, to update in the open transaction."""
        policy = self.current(site_id)[0]  # the newest committed model, before marking it
        self._learning.add(site_id)
        return policy

    def offer(self, site_id: str, raw: bytes) -> None:
        """A committed model read from the models topic (maybe one this worker wrote)."""
        try:
            policy = decode_model(raw)
        except UndecodableRecord as exc:
            log.warning("models topic: skipped a record for site %r: %s", site_id, exc)
            self.on_undecodable()
            return
        self._recall(site_id)
        if self._newer(site_id, raw):
            self._committed[site_id] = raw
            if site_id not in self._learning:
                self._decoded[site_id] = self._fit(site_id, policy)

    def changes(self) -> list[tuple[str, bytes]]:
        """The models updated in the open transaction, encoded for the models topic."""
        return [(site_id, encode_model(self.current(site_id)[0])) for site_id in self._learning]

    def committed(self, changes: list[tuple[str, bytes]]) -> None:
        self._learning.clear()
        for site_id, raw in changes:
            if self._newer(site_id, raw):
                self._committed[site_id] = raw
            self._decoded.pop(site_id, None)  # read back from the bytes, as others do

    def aborted(self) -> None:
        for site_id in self._learning:
            self._decoded.pop(site_id, None)
        self._learning.clear()

    def retire_idle(self) -> int:
        """Move the sites unused for ``site_idle_s`` to the spill; how many moved."""
        idle_before = self.clock() - self.settings.ranking.site_idle_s
        idle = [site for site, used in self._used_at.items()
                if used < idle_before and site not in self._learning]
        for site_id in idle:
            raw = self._committed.pop(site_id, None)
            if raw is not None:
                self.spill.put(site_id, raw)
            self._decoded.pop(site_id, None)
            del self._used_at[site_id]
        return len(idle)

    def _recall(self, site_id: str) -> None:
        """Mark the site used, bringing its model back from the spill if it was retired."""
        if site_id not in self._used_at:
            raw = self.spill.get(site_id)
            if raw is not None:
                self._committed[site_id] = raw
                self.spill.delete(site_id)
        self._used_at[site_id] = self.clock()

    def _newer(self, site_id: str, raw: bytes) -> bool:
        known = self._committed.get(site_id)
        return known is None or model_version(known) < model_version(raw)

    def _fresh(self, key: str) -> ContextualBandit:
        site_id, variant = site_of_model_key(key)
        return self._fit(key, ContextualBandit(self.sites.arms_for(site_id, variant),
                                               seed=self.settings.bandit.seed))

    def _fit(self, key: str, policy: ContextualBandit) -> ContextualBandit:
        """The policy under its site's (or experiment variant's) current settings: its arms
        (what it learned of the arms it keeps stays) and its exploration."""
        site_id, variant = site_of_model_key(key)
        arms = self.sites.arms_for(site_id, variant)
        if policy.arms != arms:
            policy = policy.with_arms(arms)
        policy.rule, policy.epsilon, policy.squarecb_gamma = self.sites.exploration_for(
            site_id, variant)
        return policy

    def reconfigured(self, site_id: str) -> None:
        """The site's settings changed: its bandits follow them from their next decision
        (read back from their committed bytes, fitted to the new arms; called between
        transactions)."""
        for key in [k for k in self._decoded
                    if k not in self._learning and site_of_model_key(k)[0] == site_id]:
            del self._decoded[key]
