"""The catalog: each item's category and availability, and a few available items per site.

The catalog topic is compacted and keyed ``site_id:item_id``, not by session, so every worker
keeps all of it (a global table); :class:`CatalogView` is the engine's read-only view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from app.core.keys import state_key
from app.core.store import Store

# Available items remembered per site: the last fallback of every arm for a brand-new site.
SITE_ITEMS_KEPT = 200


@dataclass(frozen=True)
class CatalogItem:
    category: str
    available: bool
    price: float | None = None
    ts: int = 0


class CatalogView(Protocol):
    def item(self, site_id: str, item_id: str) -> CatalogItem | None: ...
    def site_items(self, site_id: str) -> list[str]: ...


def item_key(site_id: str, item_id: str) -> str:
    return state_key("item", site_id, item_id)


def site_items_key(site_id: str) -> str:
    return state_key("site-items", site_id)


def apply_record(store: Store, site_id: str, item_id: str,
                 value: dict[str, Any] | None) -> bool:
    """Apply one catalog record (``None``: a tombstone, the item is gone).

    Returns False when the record is older than what is stored (compaction and replays can
    deliver an item's records out of order across partitions; the newest ``ts`` wins).
    """
    current: CatalogItem | None = store.get(item_key(site_id, item_id))
    if value is None:
        store.delete(item_key(site_id, item_id))
        _site_items(store, site_id, item_id, available=False)
        return True
    item = CatalogItem(value["category"], value["available"], value.get("price"), value["ts"])
    if current is not None and current.ts > item.ts:
        return False
    store.set(item_key(site_id, item_id), item)
    _site_items(store, site_id, item_id, item.available)
    return True


def _site_items(store: Store, site_id: str, item_id: str, available: bool) -> None:
    items: list[str] = store.get(site_items_key(site_id)) or []
    if available == (item_id in items):
        return
    if available:
        if len(items) >= SITE_ITEMS_KEPT:
            return
        items.append(item_id)
    else:
        items.remove(item_id)
    store.set(site_items_key(site_id), items)


class StoreCatalog:
    """A :class:`CatalogView` over a store written by :func:`apply_record`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def item(self, site_id: str, item_id: str) -> CatalogItem | None:
        result: CatalogItem | None = self.store.get(item_key(site_id, item_id))
        return result

    def site_items(self, site_id: str) -> list[str]:
        return list(self.store.get(site_items_key(site_id)) or [])
