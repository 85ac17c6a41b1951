"""Expert cache: hand-worked traces per policy, Belady optimality, pinning, errors, replay."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import UserError
from sim.serving.cache import POLICIES, CacheStats, ExpertCache, replay

# The classic page-reference string (Belady 1966; Silberschatz et al., "Operating System Concepts").
CLASSIC = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]


def trace(policy: str, capacity: int, steps, rng=None, warm=()):
    """Resident set after each step, and the final cache."""
    cache = ExpertCache(capacity, policy, rng=rng, future=steps, warm=warm)
    resident = []
    for s in steps:
        cache.step(s)
        resident.append(set(cache.resident))
    return resident, cache


def brute_force_misses(steps, capacity: int) -> int:
    """Fewest misses over every choice of victims (demand paging: evict only when needed)."""
    steps = [frozenset(s) for s in steps]

    @cache
    def best(t: int, resident: frozenset) -> int:
        if t == len(steps):
            return 0
        want = steps[t]
        missing = want - resident
        need = max(0, len(resident) + len(missing) - capacity)
        free = sorted(resident - want)
        return len(missing) + min(
            best(t + 1, (resident - frozenset(out)) | want)
            for out in itertools.combinations(free, need)
        )

    return best(0, frozenset())


# ---------------------------------------------------------------------------- hand-worked traces

# One key per step. Textbook miss counts: LRU 10 (capacity 3) and 8 (capacity 4); OPT 7 and 6.
HAND = {
    ("lru", 3): (10, [{1}, {1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 1}, {4, 1, 2}, {1, 2, 5},
                      {1, 2, 5}, {1, 2, 5}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}]),
    ("lru", 4): (8, [{1}, {1, 2}, {1, 2, 3}, {1, 2, 3, 4}, {1, 2, 3, 4}, {1, 2, 3, 4},
                     {1, 2, 4, 5}, {1, 2, 4, 5}, {1, 2, 4, 5}, {1, 2, 3, 5}, {1, 2, 3, 4},
                     {2, 3, 4, 5}]),
    ("belady", 3): (7, [{1}, {1, 2}, {1, 2, 3}, {1, 2, 4}, {1, 2, 4}, {1, 2, 4}, {1, 2, 5},
                        {1, 2, 5}, {1, 2, 5}, {2, 3, 5}, {3, 4, 5}, {3, 4, 5}]),
    ("belady", 4): (6, [{1}, {1, 2}, {1, 2, 3}, {1, 2, 3, 4}, {1, 2, 3, 4}, {1, 2, 3, 4},
                        {1, 2, 3, 5}, {1, 2, 3, 5}, {1, 2, 3, 5}, {1, 2, 3, 5}, {2, 3, 4, 5},
                        {2, 3, 4, 5}]),
    # LFU: every key has 1 use until 1 and 2 are hit at steps 7-8, so 1 and 2 then stay.
    ("lfu", 3): (10, [{1}, {1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 1}, {4, 1, 2}, {1, 2, 5},
                      {1, 2, 5}, {1, 2, 5}, {1, 2, 3}, {1, 2, 4}, {1, 2, 5}]),
    ("lfu", 4): (8, [{1}, {1, 2}, {1, 2, 3}, {1, 2, 3, 4}, {1, 2, 3, 4}, {1, 2, 3, 4},
                     {1, 2, 4, 5}, {1, 2, 4, 5}, {1, 2, 4, 5}, {1, 2, 3, 5}, {1, 2, 3, 4},
                     {1, 2, 4, 5}]),
}


@pytest.mark.parametrize(("policy", "capacity"), sorted(HAND))
def test_classic_reference_string(policy, capacity):
    misses, expected = HAND[(policy, capacity)]
    steps = [[k] for k in CLASSIC]
    resident, cache = trace(policy, capacity, steps)
    assert resident == expected
    assert (cache.misses, cache.hits) == (misses, len(CLASSIC) - misses)
    assert cache.steps == len(CLASSIC)


def test_classic_textbook_values_via_replay():
    steps = [[k] for k in CLASSIC]
    assert replay(steps, 3, "lru").misses == 10
    assert replay(steps, 4, "lru").misses == 8
    assert replay(steps, 3, "belady").misses == 7
    assert replay(steps, 4, "belady").misses == 6
    # and OPT is optimal there
    assert brute_force_misses(steps, 3) == 7
    assert brute_force_misses(steps, 4) == 6


def test_lfu_keeps_the_frequent_key_where_lru_drops_it():
    steps = [[1], [1], [1], [2], [3], [1]]
    lfu, c_lfu = trace("lfu", 2, steps)
    lru, c_lru = trace("lru", 2, steps)
    assert lfu[-2:] == [{1, 3}, {1, 3}]  # 2 (1 use) evicted, not 1 (3 uses)
    assert (c_lfu.hits, c_lfu.misses) == (3, 3)
    assert lru[-2:] == [{2, 3}, {1, 3}]  # 1 is least recently used at step 4
    assert (c_lru.hits, c_lru.misses) == (2, 4)


def test_lfu_counts_uses_since_insertion_only():
    # 1 gets 3 uses, is evicted, comes back with 1 use: it is then the victim, not 2 (4 uses).
    steps = [[1], [1], [1], [2], [2], [2], [2], [3], [1], [3]]
    resident, _ = trace("lfu", 2, steps)
    assert resident[7] == {2, 3}
    assert resident[8] == {1, 2}
    assert resident[9] == {2, 3}


def test_lfu_ties_break_by_least_recent_use():
    # 1 and 2 both have 2 uses; 1 was inserted first but used last, so 2 goes
    resident, _ = trace("lfu", 2, [[1], [2], [2], [1], [3]])
    assert resident[-1] == {1, 3}


def test_lru_ties_break_by_insertion_order():
    # 1 and 2 are both last used at step 0; 1 was inserted first, so it goes.
    resident, _ = trace("lru", 2, [[1, 2], [3]])
    assert resident[-1] == {2, 3}
    resident, _ = trace("lru", 2, [[2, 1], [3]])
    assert resident[-1] == {1, 3}


def test_multi_key_steps_pin_their_keys():
    steps = [[1, 2], [3], [4, 1], [2], [3]]
    cache = ExpertCache(3, "lru")
    out = [cache.step(s) for s in steps[:3]]
    # At step 2, 4 is loaded before 1 is looked at; 1 (oldest last use) is pinned, 2 goes.
    assert out[2] == ([1], [4])
    assert cache.evicted == (2,)
    assert cache.resident == {1, 3, 4}
    assert cache.step([2]) == ([], [2]) and cache.evicted == (3,)
    # 1 and 4 were both last used at step 2; 1 was inserted first
    assert cache.step([3]) == ([], [3]) and cache.evicted == (1,)
    assert (cache.hits, cache.misses) == (1, 6)


def test_belady_multi_key_steps_by_hand():
    steps = [[1, 2], [3], [1, 4], [2], [3]]
    resident, cache = trace("belady", 3, steps)
    # step 2: 2 is needed at step 3, 3 at step 4 -> evict 3; step 4: 1, 2 and 4 are never
    # needed again -> the earliest inserted (1) goes
    assert resident == [{1, 2}, {1, 2, 3}, {1, 2, 4}, {1, 2, 4}, {2, 3, 4}]
    assert (cache.hits, cache.misses) == (2, 5)
    assert replay(steps, 3, "belady").per_step_misses.tolist() == [2, 1, 1, 0, 1]


def test_belady_ties_break_by_insertion_order():
    # after step 2 neither 1 nor 2 is requested again
    resident, _ = trace("belady", 2, [[1], [2], [3]])
    assert resident[-1] == {2, 3}
    resident, _ = trace("belady", 2, [[2], [1], [3]])
    assert resident[-1] == {1, 3}


def test_hits_and_misses_in_given_order_with_repeats_counted_once():
    cache = ExpertCache(4, "lru", warm=[5, 7])
    assert cache.step([9, 7, 5, 8, 7]) == ([7, 5], [9, 8])
    assert (cache.hits, cache.misses) == (2, 2)


def test_tuple_keys():
    steps = [[(0, 1), (0, 2)], [(1, 1), (1, 2)], [(0, 1), (0, 2)]]
    stats = replay(steps, 3, "lru")
    assert (stats.hits, stats.misses) == (1, 5)  # (0, 2) survives, (0, 1) was evicted


# ---------------------------------------------------------------------------- warm start

def test_warm_keys_count_only_when_requested():
    cache = ExpertCache(2, "lru", warm=[7, 8])
    assert cache.resident == {7, 8} and (cache.hits, cache.misses) == (0, 0)
    assert cache.step([9]) == ([], [9])
    assert cache.evicted == (7,)  # both unused: first inserted goes
    assert cache.step([8]) == ([8], [])
    assert (cache.hits, cache.misses) == (1, 1)


def test_belady_warm_keys_know_their_first_request():
    # warm 2 (first needed at step 1) and 1 (step 2): 1 is farther, so it goes, not 2
    steps = [[3], [2], [1]]
    cache = ExpertCache(2, "belady", future=steps, warm=[2, 1])
    assert cache.step([3]) == ([], [3]) and cache.evicted == (1,)
    assert cache.step([2]) == ([2], [])


def test_warm_beyond_capacity_is_an_error():
    with pytest.raises(UserError, match="3 warm keys exceed the capacity of 2"):
        ExpertCache(2, "lru", warm=[1, 2, 3])


# ---------------------------------------------------------------------------- random

def test_random_is_deterministic_per_seed_and_differs_across_seeds():
    keys = np.random.default_rng(123).integers(0, 12, size=(2000, 2))
    steps = [list(r) for r in keys]
    a = replay(steps, 4, "random", np.random.default_rng(0))
    b = replay(steps, 4, "random", np.random.default_rng(0))
    c = replay(steps, 4, "random", np.random.default_rng(1))
    assert np.array_equal(a.per_step_misses, b.per_step_misses)
    assert not np.array_equal(a.per_step_misses, c.per_step_misses)


def test_random_victim_is_uniform_over_unpinned_keys():
    rng = np.random.default_rng(7)
    counts = {k: 0 for k in range(4)}
    n = 4000
    for _ in range(n):
        cache = ExpertCache(5, "random", rng=rng, warm=range(5))
        cache.step([4, 9])  # 4 is pinned: the victim is one of 0..3
        (victim,) = cache.evicted
        counts[victim] += 1
    assert sum(counts.values()) == n
    for c in counts.values():
        assert abs(c - n / 4) < 150  # sd ~27


# ---------------------------------------------------------------------------- errors

def test_step_beyond_capacity_names_both_numbers():
    cache = ExpertCache(2, "lru", warm=[1])
    with pytest.raises(UserError, match="requests 3 distinct keys, more than the capacity of 2"):
        cache.step([1, 2, 3])
    assert cache.resident == {1} and cache.steps == 0  # unchanged
    cache.step([1, 2, 1, 2])  # repeats count once: 2 distinct keys fit


def test_belady_future_must_match():
    steps = [[1], [2, 3], [1]]
    cache = ExpertCache(2, "belady", future=steps)
    cache.step([1])
    with pytest.raises(UserError, match="step 1 requests"):
        cache.step([2])
    assert cache.resident == {1} and cache.steps == 1  # unchanged
    cache.step([3, 2])  # order within a step does not matter
    cache.step([1])
    with pytest.raises(UserError, match="beyond the given future of 3 steps"):
        cache.step([1])


def test_belady_future_beyond_capacity_is_caught_at_construction():
    with pytest.raises(UserError, match="future step 1 requests 3 distinct keys"):
        ExpertCache(2, "belady", future=[[1], [1, 2, 3]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity must be an integer >= 1"),
        ({"capacity": 2.0}, "capacity must be an integer >= 1"),
        ({"capacity": True}, "capacity must be an integer >= 1"),
        ({"capacity": 2, "policy": "fifo"}, "policy 'fifo' is unknown; allowed: lru, lfu"),
        ({"capacity": 2, "policy": "random"}, "random needs rng"),
        ({"capacity": 2, "policy": "random", "rng": 3}, "random needs rng"),
        ({"capacity": 2, "policy": "belady"}, "belady needs future"),
        ({"capacity": 2, "warm": [[1]]}, "warm: keys must be an iterable of hashables"),
    ],
)
def test_construction_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        ExpertCache(**kwargs)


def test_unhashable_step_key_is_a_user_error():
    with pytest.raises(UserError, match="step 0: keys must be an iterable of hashables"):
        ExpertCache(2).step([[1]])


# ---------------------------------------------------------------------------- properties

@st.composite
def instances(draw, max_set: int = 3, max_steps: int = 30):
    """(steps, capacity, seed): sets over a small alphabet, capacity from max set size up."""
    alphabet = draw(st.integers(2, 6))
    size = st.integers(0, min(max_set, alphabet))
    steps = draw(st.lists(
        size.flatmap(lambda n: st.lists(st.integers(0, alphabet - 1), min_size=n, max_size=n,
                                        unique=True)),
        max_size=max_steps,
    ))
    largest = max((len(s) for s in steps), default=1)
    capacity = draw(st.integers(max(1, largest), alphabet))
    return steps, capacity, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=300, deadline=None)
@given(instances())
def test_belady_never_loses_to_other_policies(inst):
    steps, capacity, seed = inst
    opt = replay(steps, capacity, "belady")
    for policy in ("lru", "lfu", "random"):
        other = replay(steps, capacity, policy, np.random.default_rng(seed))
        assert opt.hits >= other.hits, policy
        assert opt.hits + opt.misses == other.hits + other.misses


@settings(max_examples=300, deadline=None)
@given(instances(max_set=2, max_steps=10))
def test_belady_matches_brute_force_with_sets(inst):
    steps, capacity, _ = inst
    assert replay(steps, capacity, "belady").misses == brute_force_misses(steps, capacity)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=8), st.integers(1, 3))
def test_belady_matches_brute_force_single_keys(keys, capacity):
    steps = [[k] for k in keys]
    assert replay(steps, capacity, "belady").misses == brute_force_misses(steps, capacity)


def test_belady_optimal_on_every_short_sequence():
    # all 4**6 sequences of single keys from 4, capacity 2
    for keys in itertools.product(range(4), repeat=6):
        steps = [[k] for k in keys]
        assert replay(steps, 2, "belady").misses == brute_force_misses(steps, 2), keys


@settings(max_examples=200, deadline=None)
@given(instances(), st.sampled_from(POLICIES))
def test_step_invariants(inst, policy):
    steps, capacity, seed = inst
    cache = ExpertCache(capacity, policy, rng=np.random.default_rng(seed), future=steps)
    for s in steps:
        before = cache.resident
        hits, misses = cache.step(s)
        assert hits == [k for k in s if k in before]
        assert misses == [k for k in s if k not in before]
        assert not set(cache.evicted) & set(s)  # pinned keys are never evicted
        assert set(cache.evicted) <= before
        assert set(s) <= cache.resident
        assert len(cache.resident) <= capacity
        assert cache.resident == (before - set(cache.evicted)) | set(s)
        # demand paging: evict only as much as needed
        assert len(cache.evicted) == max(0, len(before) + len(misses) - capacity)


@settings(max_examples=100, deadline=None)
@given(instances(), st.sampled_from(POLICIES))
def test_big_enough_cache_misses_once_per_distinct_key(inst, policy):
    steps, _, seed = inst
    distinct = {k for s in steps for k in s}
    capacity = max(len(distinct), 1)
    stats = replay(steps, capacity, policy, np.random.default_rng(seed))
    assert stats.misses == len(distinct)
    seen: set = set()
    for i, s in enumerate(steps):
        assert stats.per_step_misses[i] == len(set(s) - seen)
        seen |= set(s)


# ---------------------------------------------------------------------------- replay

@settings(max_examples=100, deadline=None)
@given(instances(), st.sampled_from(POLICIES))
def test_replay_hit_rate(inst, policy):
    steps, capacity, seed = inst
    stats = replay(steps, capacity, policy, np.random.default_rng(seed))
    assert isinstance(stats, CacheStats)
    total = stats.hits + stats.misses
    assert total == sum(len(s) for s in steps)
    assert stats.per_step_misses.dtype == np.int64
    assert stats.per_step_misses.sum() == stats.misses
    if total:
        assert stats.hit_rate == stats.hits / total
    else:
        assert np.isnan(stats.hit_rate)


def test_replay_hit_rate_classic():
    stats = replay([[k] for k in CLASSIC], 3, "belady")
    assert (stats.hits, stats.misses) == (5, 7)
    assert stats.hit_rate == pytest.approx(5 / 12)
    assert stats.per_step_misses.tolist() == [1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0]


def test_replay_accepts_generators():
    stats = replay(({k} for k in CLASSIC), 4, "belady")
    assert stats.misses == 6


def test_an_overflowing_step_serves_every_key_then_keeps_the_capacity():
    cache = ExpertCache(2, "lru", overflow=True)
    assert cache.step([1, 2, 3]) == ([], [1, 2, 3])
    assert cache.resident == {2, 3} and cache.evicted == (1,)  # oldest inserted goes first
    assert cache.step([3, 4]) == ([3], [4])
    assert cache.resident == {3, 4}
    nothing = ExpertCache(0, "lru", overflow=True)  # working buffers only
    assert nothing.step([5, 6]) == ([], [5, 6]) and len(nothing) == 0
    assert nothing.step([5]) == ([], [5]) and (nothing.hits, nothing.misses) == (0, 3)
    with pytest.raises(UserError, match="capacity must be an integer >= 1"):
        ExpertCache(0, "lru")


def test_online_belady_asks_the_oracle_only_when_it_evicts():
    asked = []

    def far(key):
        asked.append(key)
        return {1: 5.0, 2: float("inf"), 3: 1.0}.get(key, 0.0)

    cache = ExpertCache(2, "belady", online=True)
    cache.step([1, 2], next_use=far)
    assert asked == []  # room left: nothing to evict, no question
    cache.step([3], next_use=far)
    assert cache.resident == {1, 3} and sorted(asked) == [1, 2]  # 2 is never needed again
    with pytest.raises(UserError, match="online belady needs next_use"):
        cache.step([1])
    assert 1 in cache and 2 not in cache and len(cache) == 2
