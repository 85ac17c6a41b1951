"""Max-min fair sharing: closed forms and properties (feasible, every flow bottlenecked)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.network.maxmin import max_min_rates


def _instance(caps, flows):
    h = max(len(f) for f in flows)
    dummy = len(caps)
    paths = np.full((len(flows), h), dummy, dtype=np.int32)
    for i, f in enumerate(flows):
        paths[i, : len(f)] = f
    return paths, np.append(np.asarray(caps, float), np.inf)


def _reference(caps, flows):
    """Textbook sequential progressive filling, one bottleneck level at a time."""
    rate = [None] * len(flows)
    resid = list(map(float, caps))
    while any(r is None for r in rate):
        shares = {}
        for link, c in enumerate(resid):
            n = sum(1 for i, f in enumerate(flows) if rate[i] is None and link in f)
            if n:
                shares[link] = c / n
        level = min(shares.values())
        bott = [lk for lk, s in shares.items() if s <= level * (1 + 1e-12)]
        for i, f in enumerate(flows):
            if rate[i] is None and any(lk in f for lk in bott):
                rate[i] = level
                for lk in f:
                    resid[lk] -= level
    return np.array(rate)


def test_two_flows_on_one_link_get_half_each():
    paths, cap = _instance([10.0], [[0], [0]])
    rates, _ = max_min_rates(paths, cap)
    assert np.allclose(rates, [5.0, 5.0])


def test_classic_parking_lot():
    # long flow over links 0,1; one short flow on each: everyone gets half
    paths, cap = _instance([1.0, 1.0], [[0, 1], [0], [1]])
    rates, _ = max_min_rates(paths, cap)
    assert np.allclose(rates, [0.5, 0.5, 0.5])


def test_unequal_bottlenecks_release_capacity():
    # link 0 (cap 1) shared by A and B; B also on link 1 (cap 10) with C: A=B=0.5, C=9.5
    paths, cap = _instance([1.0, 10.0], [[0], [0, 1], [1]])
    rates, _ = max_min_rates(paths, cap)
    assert np.allclose(rates, [0.5, 0.5, 9.5])


@st.composite
def instances(draw):
    n_links = draw(st.integers(1, 8))
    caps = draw(st.lists(st.floats(0.5, 100.0), min_size=n_links, max_size=n_links))
    flows = draw(st.lists(
        st.lists(st.integers(0, n_links - 1), min_size=1, max_size=4, unique=True),
        min_size=1, max_size=25))
    return caps, flows


@settings(max_examples=200, deadline=None)
@given(instances())
def test_fair_share_properties(inst):
    caps, flows = inst
    paths, cap = _instance(caps, flows)
    rates, _ = max_min_rates(paths, cap)
    load = np.zeros(len(caps))
    for f, r in zip(flows, rates, strict=True):
        load[f] += r
    # feasible: no link above capacity
    assert np.all(load <= np.asarray(caps) * (1 + 1e-9))
    # every flow has a saturated link on which its rate is the largest
    for f, r in zip(flows, rates, strict=True):
        ok = False
        for lk in f:
            on = [rates[j] for j, g in enumerate(flows) if lk in g]
            if load[lk] >= caps[lk] * (1 - 1e-9) and r >= max(on) * (1 - 1e-9):
                ok = True
        assert ok, (f, r)
    # and it is the unique max-min allocation
    assert np.allclose(rates, _reference(caps, flows), rtol=1e-9)
