"""The shared site statistics: learned once per committed transaction, read by every worker."""

from __future__ import annotations

from app.core.stats import Engagement, stat_key
from app.stream.site_stats import SiteStatistics

POPULAR = stat_key("shop", "popular")


def click(n: int, item: str = "shoe") -> Engagement:
    return Engagement("shop", f"s{n}", item, "click", ts=1_000 + n)


def test_what_commits_is_read_and_what_aborts_never_was():
    stats = SiteStatistics()
    stats.learn(click(1))
    stats.committed(stats.changes())
    assert stats.get(POPULAR).value("shoe", 1_001) == 1.0
    stats.learn(click(2))
    stats.learn(click(3))
    assert stats.get(POPULAR).value("shoe", 1_001) == 1.0  # readers see committed only
    stats.aborted()
    stats.learn(click(2))
    changes = stats.changes()
    stats.committed(changes)
    assert round(stats.get(POPULAR).value("shoe", 1_002), 6) == round(1 + 2 ** (-1 / 86_400_000), 6)
    assert dict(changes)[POPULAR].startswith(b"2\n")  # the key's second committed version


def test_every_worker_converges_on_the_newest_version_whatever_order_it_reads():
    learner = SiteStatistics()
    published = []
    for n in range(3):
        learner.learn(click(n))
        changes = learner.changes()
        learner.committed(changes)
        published.append(dict(changes)[POPULAR])
    reader = SiteStatistics()
    for raw in (published[2], published[0], published[1]):  # an old copy arrives late
        reader.offer(POPULAR, raw)
    assert reader.get(POPULAR) == learner.get(POPULAR)
    learner.offer(POPULAR, published[0])  # the learner's own old record read back
    learner.learn(click(9))
    assert dict(learner.changes())[POPULAR].startswith(b"4\n")


def test_records_that_are_not_statistics_are_skipped_and_counted():
    skipped = []
    stats = SiteStatistics(lambda: skipped.append(1))
    learner = SiteStatistics()
    learner.learn(click(1))
    [(key, raw)] = [kv for kv in learner.changes() if kv[0] == POPULAR]
    stats.offer("session:shop:s1", raw)  # a valid encoding under a key that is no statistic
    stats.offer(POPULAR, b"1\n" + b"\x80\x04crafted")
    stats.offer(POPULAR, b"no version")
    assert len(skipped) == 3 and stats.get(POPULAR) is None
