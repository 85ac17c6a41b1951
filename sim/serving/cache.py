"""The expert cache of one GPU: at most ``capacity`` experts resident, four eviction policies.
The serving loop (one cache per MoE layer) and the offline study both use it.

Definitions. Time advances in *steps* (t = 0, 1, ...). At each step a *set* of keys (hashable
expert ids, e.g. ``e`` or ``(layer, e)``) is requested together: the experts one batch needs at
one layer. Duplicates within a step count once. All keys of a step are *pinned* during it: they
must all be resident afterwards, so a step never evicts a key it requests, and a step asking for
more distinct keys than ``capacity`` is a :class:`~sim.errors.UserError`. A requested key that is
resident at the start of the step is a *hit*, otherwise a *miss*: it is loaded, evicting one
unpinned resident key first if the cache is full (demand paging: nothing is evicted early and
nothing is prefetched). ``hits`` and ``misses`` count key requests, so ``hits + misses`` is the
total number of distinct keys over all steps. ``warm`` keys are resident before step 0 and count
as neither hits nor misses until requested.

Bookkeeping per resident key: its *insertion order* (a counter that grows with every load, warm
keys first in the order given; a key evicted and loaded again gets a new one), its *last use*
(the step of its latest request; warm keys: before step 0) and its *uses* (requests since it was
inserted, the loading request included; warm keys start at 0). Misses of one step are loaded in
the order the keys are given (a ``set`` of ints iterates in a fixed order; pass a list to fix it).

Policies (:data:`POLICIES`), each choosing the victim among the unpinned resident keys:

* ``lru``: oldest last use; ties (keys last used in the same step) by smallest insertion order.
* ``lfu``: fewest uses since insertion; ties as ``lru``.
* ``random``: uniform over the unpinned resident keys listed in insertion order, one
  ``rng.integers`` draw per eviction from the ``numpy.random.Generator`` passed in (required).
* ``belady``: the key whose next request is farthest in the future (never again = infinitely
  far); ties (several never requested again, or requested next in the same step) by smallest
  insertion order. This is the offline optimum (fewest misses) and Read-ME's policy
  (Read-ME, Yu et al. 2024, Section 4), which knows the future from pre-gating. Offline, the
  whole step sequence is given as ``future`` at construction and :meth:`ExpertCache.step` must
  be called with exactly those steps, in order. Online (a serving loop, whose future depends on
  batching), each step passes ``next_use(key) -> distance`` instead, an oracle of how far ahead
  each resident key is needed next (``inf`` = not known to be needed); it is only called when
  an eviction happens.

Overflow (``overflow=True``, the serving loop): a step may request more distinct keys than the
capacity. All of them are served (the extra ones from working buffers: a layer computes with
every expert it uses); misses evict unpinned keys while there are any, and after the step the
policy evicts among all resident keys (pins lifted) until at most ``capacity`` remain. A
capacity of 0 then keeps nothing between steps. Without overflow such a step is an error.

Complexity: a step costs O(keys in it) plus O(resident) per eviction for every policy (a linear
scan; caches hold a handful of experts). ``belady`` precomputes, in one backward pass over
``future`` with a dict, the index of each (step, key)'s next request: O(total keys) time and
memory, so an eviction never looks at the future itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sim.errors import UserError

POLICIES = ("lru", "lfu", "random", "belady")


@dataclass(slots=True)
class _Entry:
    """Bookkeeping of one resident key (steps are step indices)."""

    order: int  # insertion order
    last: int  # step of the last request; -1 for an unrequested warm key
    uses: int  # requests since insertion
    next: int  # belady: step of the next request, ``never`` if none; unused otherwise


@dataclass(frozen=True)
class CacheStats:
    """Totals of one :func:`replay`: key-request ``hits`` and ``misses``, ``hit_rate`` =
    hits / (hits + misses) (nan when nothing was requested) and ``per_step_misses`` (int64,
    one entry per step: experts loaded at that step)."""

    hits: int
    misses: int
    hit_rate: float
    per_step_misses: np.ndarray


def _distinct(keys: Iterable[Hashable], what: str) -> list:
    """``keys`` without repeats, first occurrences in the given order."""
    try:
        return list(dict.fromkeys(keys))
    except TypeError as e:
        raise UserError(f"expert cache: {what}: keys must be an iterable of hashables "
                        f"({e})") from None


class ExpertCache:
    """An expert cache holding at most ``capacity`` keys, evicting by ``policy``.

    ``rng`` is required by ``random``; ``belady`` needs ``future`` (the whole sequence of
    steps, each an iterable of keys) or, online, ``next_use`` at each step. Each is ignored by
    the other policies. ``warm`` keys are resident at the start; ``overflow`` lets a step
    request more keys than the capacity. See the module docstring for definitions and
    tie-breaking.
    """

    def __init__(
        self,
        capacity: int,
        policy: str = "lru",
        rng: np.random.Generator | None = None,
        future: Sequence[Iterable[Hashable]] | None = None,
        warm: Iterable[Hashable] = (),
        overflow: bool = False,
        online: bool = False,
    ) -> None:
        least = 0 if overflow else 1
        if (isinstance(capacity, bool) or not isinstance(capacity, int | np.integer)
                or capacity < least):
            raise UserError(f"expert cache: capacity must be an integer >= {least} (experts), "
                            f"got {capacity!r}")
        if policy not in POLICIES:
            raise UserError(f"expert cache: policy {policy!r} is unknown; allowed: "
                            f"{', '.join(POLICIES)}")
        if policy == "random" and not isinstance(rng, np.random.Generator):
            raise UserError("expert cache: policy random needs rng, a numpy.random.Generator")
        self.capacity = int(capacity)
        self.policy = policy
        self.overflow = bool(overflow)
        self.online = bool(online)
        self._rng = rng
        self._t = 0
        self._order = 0
        self._hits = 0
        self._misses = 0
        self._evicted: tuple = ()
        self._oracle = None
        self._slots: dict[Hashable, _Entry] = {}  # iteration order = insertion order
        self._future: list[frozenset] = []
        self._next_after: list[dict[Hashable, int]] = []
        first: dict[Hashable, int] = {}
        if policy == "belady" and not online:
            if future is None:
                raise UserError("expert cache: policy belady needs future, the whole sequence "
                                "of steps (or online=True and next_use at each step)")
            self._future = [frozenset(_distinct(s, f"future step {i}"))
                            for i, s in enumerate(future)]
            for i, s in enumerate(self._future):
                if len(s) > self.capacity and not self.overflow:
                    raise UserError(f"expert cache: future step {i} requests {len(s)} distinct "
                                    f"keys, more than the capacity of {self.capacity}")
            never = len(self._future)
            self._next_after = [{} for _ in self._future]
            for i in range(never - 1, -1, -1):  # `first` = next request after step i - 1
                nxt = self._next_after[i]
                for k in self._future[i]:
                    nxt[k] = first.get(k, never)
                for k in self._future[i]:
                    first[k] = i
        warm_keys = _distinct(warm, "warm")
        if len(warm_keys) > self.capacity:
            raise UserError(f"expert cache: {len(warm_keys)} warm keys exceed the capacity of "
                            f"{self.capacity}")
        for k in warm_keys:
            self._slots[k] = _Entry(self._order, -1, 0, first.get(k, len(self._future)))
            self._order += 1

    def __len__(self) -> int:
        """Keys resident now."""
        return len(self._slots)

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is resident now."""
        return key in self._slots

    @property
    def resident(self) -> frozenset:
        """The keys resident now."""
        return frozenset(self._slots)

    @property
    def hits(self) -> int:
        """Key requests that found the key resident, over all steps so far."""
        return self._hits

    @property
    def misses(self) -> int:
        """Key requests that had to load the key, over all steps so far."""
        return self._misses

    @property
    def steps(self) -> int:
        """Steps taken so far (the index of the next step)."""
        return self._t

    @property
    def evicted(self) -> tuple:
        """Keys evicted by the last step, in eviction order."""
        return self._evicted

    def step(self, keys: Iterable[Hashable], next_use=None) -> tuple[list, list]:
        """Request ``keys`` at the next step; returns (hits, misses) in the given order; loads
        the misses, evicting as the policy says. ``next_use`` is the online Belady oracle (see
        the module docstring). The cache is unchanged if this raises."""
        want = _distinct(keys, f"step {self._t}")
        if len(want) > self.capacity and not self.overflow:
            raise UserError(f"expert cache: step {self._t} requests {len(want)} distinct keys, "
                            f"more than the capacity of {self.capacity}")
        t = self._t
        belady = self.policy == "belady" and not self.online
        if self.policy == "belady" and self.online and next_use is None:
            raise UserError("expert cache: online belady needs next_use at every step")
        self._oracle = next_use
        if belady:
            if t >= len(self._future):
                raise UserError(f"expert cache: belady: step {t} is beyond the given future of "
                                f"{len(self._future)} steps")
            if frozenset(want) != self._future[t]:
                raise UserError(f"expert cache: belady: step {t} requests {set(want)!r} but the "
                                f"given future has {set(self._future[t])!r}")
        pinned = set(want)
        hits: list = []
        misses: list = []
        evicted: list = []
        for k in want:
            entry = self._slots.get(k)
            if entry is None:
                if len(self._slots) >= self.capacity and any(
                        key not in pinned for key in self._slots):  # else: overflow
                    victim = self._victim(pinned)
                    del self._slots[victim]
                    evicted.append(victim)
                entry = self._slots[k] = _Entry(self._order, t, 0, 0)
                self._order += 1
                misses.append(k)
            else:
                hits.append(k)
            entry.last = t
            entry.uses += 1
            if belady:
                entry.next = self._next_after[t][k]
        while len(self._slots) > self.capacity:  # an overflowing step: back to the capacity
            victim = self._victim(set())
            del self._slots[victim]
            evicted.append(victim)
        self._hits += len(hits)
        self._misses += len(misses)
        self._evicted = tuple(evicted)
        self._t += 1
        return hits, misses

    def _victim(self, pinned: set) -> Hashable:
        """The resident key to evict (one exists: a step asks at most ``capacity`` keys)."""
        free = [(k, e) for k, e in self._slots.items() if k not in pinned]
        if self.policy == "lru":
            return min(free, key=lambda ke: (ke[1].last, ke[1].order))[0]
        if self.policy == "lfu":
            return min(free, key=lambda ke: (ke[1].uses, ke[1].last, ke[1].order))[0]
        if self.policy == "belady" and self.online:
            return min(free, key=lambda ke: (-self._oracle(ke[0]), ke[1].order))[0]
        if self.policy == "belady":
            return min(free, key=lambda ke: (-ke[1].next, ke[1].order))[0]
        return free[int(self._rng.integers(len(free)))][0]


def replay(
    steps: Sequence[Iterable[Hashable]],
    capacity: int,
    policy: str,
    rng: np.random.Generator | None = None,
    overflow: bool = False,
) -> CacheStats:
    """Run a whole sequence of steps through a fresh (empty) cache; ``belady`` sees ``steps``
    as its future. Returns the hit and miss totals and the misses of each step."""
    steps = [_distinct(s, f"step {i}") for i, s in enumerate(steps)]
    cache = ExpertCache(capacity, policy, rng=rng, overflow=overflow,
                        future=steps if policy == "belady" else None)
    per_step = np.zeros(len(steps), dtype=np.int64)
    for i, s in enumerate(steps):
        per_step[i] = len(cache.step(s)[1])
    total = cache.hits + cache.misses
    rate = cache.hits / total if total else float("nan")
    return CacheStats(cache.hits, cache.misses, rate, per_step)
