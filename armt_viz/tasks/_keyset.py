"""A set of small int keys with O(1) insert/remove and uniform choice (helper of the stream task, DESIGN.md §5)."""

from __future__ import annotations

from collections.abc import Iterable


class KeySet:
    """A set of keys with O(1) insert/remove and uniform choice excluding a few keys (swap-remove list)."""

    def __init__(self, n_keys: int, members: Iterable[int]) -> None:
        self.items = list(members)
        self.pos = [-1] * n_keys
        for i, key in enumerate(self.items):
            self.pos[key] = i

    def add(self, key: int) -> None:
        if self.pos[key] < 0:
            self.pos[key] = len(self.items)
            self.items.append(key)

    def remove(self, key: int) -> None:
        i = self.pos[key]
        if i >= 0:
            last = self.items.pop()
            if last != key:
                self.items[i] = last
                self.pos[last] = i
            self.pos[key] = -1

    def pick(self, u: float, excluded: Iterable[int]) -> int:
        """Uniform member not in ``excluded`` from the uniform ``u``; -1 if there is none."""
        bad = sorted(self.pos[k] for k in excluded if self.pos[k] >= 0)
        n = len(self.items) - len(bad)
        if n <= 0:
            return -1
        j = min(int(u * n), n - 1)
        for p in bad:  # map the j-th eligible slot to its list index
            if p <= j:
                j += 1
            else:
                break
        return self.items[j]
