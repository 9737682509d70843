"""A site's business rules on every arm's items: exclusions are filled by the fallbacks,
promotions come first within their cap, and the arm's choice is untouched."""

from __future__ import annotations

from app.core.candidates import arm_items
from app.core.catalog import StoreCatalog, apply_record
from app.core.events import Reaction
from app.core.rules import Rules
from app.core.session import Session
from app.core.stats import Engagement, SiteStats, learn_engagement
from app.core.store import MemoryStore

T = 1_700_000_000_000
ITEMS = {"a": ("shoes", 10.0), "b": ("shoes", 20.0), "c": ("shoes", 900.0),
         "g": ("gifts", 5.0), "p": ("shoes", 30.0), "q": ("shoes", 40.0), "n": ("shoes", None)}


def world() -> tuple[Session, SiteStats, StoreCatalog]:
    catalog_store, store = MemoryStore(), MemoryStore()
    for item, (category, price) in ITEMS.items():
        apply_record(catalog_store, "shop", item, {"category": category, "available": True,
                                                   "price": price, "ts": T})
    stats = SiteStats("shop", store.get, store.set)
    session = Session("shop", "s")
    for n, item in enumerate("abcgnab"):  # a and b most engaged, then c, g, n
        reaction = Reaction(f"e{n}", "click", "shop", f"other{n}", T + n, item,
                            category=ITEMS[item][0])
        learn_engagement(stats, Engagement.of(Session("shop", f"other{n}"), reaction, False))
    return session, stats, StoreCatalog(catalog_store)


def items(rules: Rules, arm: str = "category1", size: int = 4) -> list[str]:
    session, stats, catalog = world()
    session.engage(Reaction("mine", "click", "shop", "s", T + 10, "q", category="shoes"))
    return [item for item, _ in arm_items(arm, session, stats, catalog, T + 20, size,
                                          rules=rules)]


def test_excluded_items_categories_and_prices_are_never_shown_and_the_list_stays_full():
    shown = items(Rules(exclude_items=frozenset({"a"}), exclude_categories=frozenset({"gifts"}),
                        price_min=15, price_max=100), size=4)
    assert len(shown) == 4
    assert not {"a", "g", "c"} & set(shown)  # a excluded, g a gift, c too dear
    assert "n" in shown  # no price known: it passes
    for arm in ("similar", "learned", "trending", "bestsellers"):
        assert not {"a", "g", "c"} & set(items(Rules(
            exclude_items=frozenset({"a"}), exclude_categories=frozenset({"gifts"}),
            price_min=15, price_max=100), arm)), arm


def test_pinned_items_come_first_and_boosted_ones_next_within_the_cap():
    plain = items(Rules())
    assert "p" not in plain[:1]
    promoted = items(Rules(pinned=("p",), boosted=(plain[-1],), promoted_places_max=2))
    assert promoted[:2] == ["p", plain[-1]] and len(promoted) == 4
    capped = items(Rules(pinned=("p", "q"), boosted=(plain[-1],), promoted_places_max=1))
    assert capped[0] == "p" and capped.count("p") == 1
    # a pinned item the rules exclude, or the catalog does not know, is not shown
    assert "p" not in items(Rules(pinned=("p",), exclude_items=frozenset({"p"})))
    assert items(Rules(pinned=("typo-sku", "p")))[:2] == ["p", plain[0]]
