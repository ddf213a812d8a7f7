"""A small least-recently-used cache of loaded models, so each model loads once and only when first used."""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ModelCache:
    """Maps a key such as (path, kind) to a loaded object; the oldest entry goes once `capacity` is passed.

    Loading holds a lock: two requests for the same model (e.g. two chat panels) load it once, and two
    large models never load at the same time.
    """

    def __init__(self, capacity: int = 6) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            settle()
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return value

    def find(self, match: Callable[[Any], bool]) -> Any | None:
        """The most recently used value whose key satisfies `match` (tuple keys), or None; loads nothing."""
        with self._lock:
            for key in reversed(self._items):
                if isinstance(key, tuple) and match(key):
                    self._items.move_to_end(key)
                    return self._items[key]
            return None

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def settle() -> None:
    """Moves every object alive now (the loaded libraries and models: ~0.5 M objects) out of the garbage
    collector's full passes. Each full pass walked them all (~0.3 s here) and fell on whichever request
    happened to allocate many objects, e.g. the alternatives of a long reply (0.8 s of a 1 s request)."""
    gc.collect()
    gc.freeze()
