"""Every site's bandit as one worker knows it, and the learning in its open transaction.

Each site's bandit is learned by one worker (the owner of the site's partition of the
decisions topic) and published, pickled, on the compacted models topic that every worker
reads. A model's version is its update count (``model_version`` in rankings); the newest
version always wins. The learner updates a model in place inside a Kafka transaction, so the
update must vanish if the transaction aborts: :meth:`BanditModels.aborted` forgets it and the
next read decodes the last committed bytes again.

No Kafka here: :mod:`app.stream.loop` feeds :meth:`offer` from the topic and sends
:meth:`changes`.
"""

from __future__ import annotations

import pickle

from app.core.policy import ContextualEpsilonGreedy
from app.settings import Settings


def encode(policy: ContextualEpsilonGreedy) -> bytes:
    """``b"<version>\\n" + pickle``: readers learn the version without unpickling."""
    return b"%d\n" % policy.n_updates + pickle.dumps(policy, protocol=pickle.HIGHEST_PROTOCOL)


def version_of(raw: bytes) -> int:
    return int(raw.partition(b"\n")[0])


class BanditModels:
    """The :class:`app.core.engine.Policies` of a worker.

    >>> from app.settings import Settings
    >>> models = BanditModels(Settings(arms=("category1", "trending")))
    >>> models.current("shop")[1]  # never learned: a fresh bandit, version 0
    0
    >>> models.learning("shop").update("trending", {}, 1.0)
    >>> [(site, version_of(raw)) for site, raw in models.changes()]
    [('shop', 1)]
    >>> models.aborted()  # the transaction did not commit: the update never happened
    >>> models.current("shop")[1]
    0
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._committed: dict[str, bytes] = {}  # newest committed encoding per site
        self._decoded: dict[str, ContextualEpsilonGreedy] = {}
        self._learning: set[str] = set()  # sites updated in the open transaction

    def current(self, site_id: str) -> tuple[ContextualEpsilonGreedy, int]:
        raw = self._committed.get(site_id)
        policy = self._decoded.get(site_id)
        if policy is None or (raw is not None and policy.n_updates < version_of(raw)
                              and site_id not in self._learning):
            policy = self._decoded[site_id] = self._decode(site_id, raw)
        return policy, policy.n_updates

    def learning(self, site_id: str) -> ContextualEpsilonGreedy:
        """The site's bandit, to update in the open transaction."""
        policy = self.current(site_id)[0]  # the newest committed model, before marking it
        self._learning.add(site_id)
        return policy

    def offer(self, site_id: str, raw: bytes) -> None:
        """A committed model read from the models topic (maybe one this worker wrote)."""
        known = self._committed.get(site_id)
        if known is None or version_of(known) < version_of(raw):
            self._committed[site_id] = raw

    def changes(self) -> list[tuple[str, bytes]]:
        """The models updated in the open transaction, encoded for the models topic."""
        return [(site_id, encode(self.current(site_id)[0])) for site_id in self._learning]

    def committed(self, changes: list[tuple[str, bytes]]) -> None:
        self._learning.clear()
        for site_id, raw in changes:
            self.offer(site_id, raw)

    def aborted(self) -> None:
        for site_id in self._learning:
            self._decoded.pop(site_id, None)
        self._learning.clear()

    def _decode(self, site_id: str, raw: bytes | None) -> ContextualEpsilonGreedy:
        arms = self.settings.arms_for(site_id)
        if raw is None:
            return ContextualEpsilonGreedy(arms, self.settings.exploration,
                                           seed=self.settings.seed)
        policy: ContextualEpsilonGreedy = pickle.loads(raw.partition(b"\n")[2])
        if policy.arms != arms:  # the site's arms were reconfigured
            policy = policy.with_arms(arms)
        return policy
