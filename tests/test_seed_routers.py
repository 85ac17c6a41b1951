"""LocMoE (papers.md §1) and SMILE (§2) routers: locality, GrAP, critical capacity, bi-level."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from sim.errors import UserError
from sim.moe.capacity import critical_capacity_tokens, critical_capacity_tokens_large_d
from sim.routing import Assignment, RouterContext, route
from sim.routing.common import assemble
from sim.routing.locmoe import local_fraction
from sim.routing.smile import balance_terms

T, E = 4096, 16
EXPERT_GPU = np.arange(E) // 2  # 2 experts per GPU, 8 GPUs
GPU_NODE = np.arange(8) // 4  # 4 GPUs per node, 2 nodes
TOKEN_GPU = np.arange(T) % 8  # tokens start on every GPU
EXPERT_NODE = GPU_NODE[EXPERT_GPU]
TOKEN_NODE = GPU_NODE[TOKEN_GPU]


def logits(seed: int = 0, t: int = T, e: int = E) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(t, e))


def ctx(k: int = 1, **params) -> RouterContext:
    return RouterContext(topk=k, rng=np.random.default_rng(1), expert_gpu=EXPERT_GPU,
                         gpu_node=GPU_NODE, token_gpu=TOKEN_GPU, params=params)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def load_ratio(a: Assignment) -> float:
    load = a.expert_load()
    return float(load.max() / load.mean())


# ----------------------------------------------------------------------------- LocMoE
def test_locmoe_local_fraction_rises_with_bias() -> None:
    z = logits()
    fractions = []
    for bias in (0.0, 0.5, 1.0, 2.0, 4.0):
        a = route("locmoe", z, ctx(locality_bias=bias))
        np.testing.assert_array_equal(a.token, np.arange(T))  # top-1: one row per token
        fractions.append(local_fraction(a, ctx()))
    assert abs(fractions[0] - 0.5) < 0.03  # 2 nodes, no bias: about half stays local
    assert all(x < y for x, y in zip(fractions, fractions[1:], strict=False))
    assert fractions[-1] > 0.99
    assert local_fraction(route("locmoe", z, ctx(locality_bias=20.0)), ctx()) == 1.0


def test_locmoe_weight_is_biased_softmax_of_chosen_expert() -> None:
    z = logits()
    a = route("locmoe", z, ctx(locality_bias=1.5))
    s = z + 1.5 * (TOKEN_NODE[:, None] == EXPERT_NODE[None, :])
    np.testing.assert_array_equal(a.expert, s.argmax(axis=1))
    np.testing.assert_allclose(a.weight, softmax(s).max(axis=1))
    np.testing.assert_allclose(a.score, a.weight)


def test_locmoe_zero_bias_is_plain_top1() -> None:
    z = logits()
    a = route("locmoe", z, ctx(locality_bias=0.0))
    sw = route("switch", z, ctx())
    np.testing.assert_array_equal(a.expert, z.argmax(axis=1))
    np.testing.assert_array_equal(a.expert, sw.expert)
    np.testing.assert_allclose(a.weight, sw.weight)
    # without a bias the placement is not needed
    bare = RouterContext(topk=1, rng=np.random.default_rng(0), params={"locality_bias": 0})
    np.testing.assert_array_equal(route("locmoe", z, bare).expert, sw.expert)


def test_locmoe_grap_removes_popularity_skew() -> None:
    z = logits()
    offset = np.zeros(E)
    offset[5] = 3.0  # expert 5 is popular for every token
    skewed = z + offset
    linear = route("locmoe", skewed, ctx(locality_bias=0.0))
    grap = route("locmoe", skewed, ctx(locality_bias=0.0, gate="grap"))
    assert np.argmax(linear.expert_load()) == 5 and load_ratio(linear) > 5
    assert load_ratio(grap) < 1.3
    # GrAP ignores any per-expert offset: the skewed and the plain logits route identically
    plain = route("locmoe", z, ctx(locality_bias=0.0, gate="grap"))
    np.testing.assert_array_equal(grap.expert, plain.expert)
    np.testing.assert_allclose(grap.weight, plain.weight)
    # the locality bias still works on top of GrAP
    biased = route("locmoe", skewed, ctx(locality_bias=4.0, gate="grap"))
    assert local_fraction(biased, ctx()) > local_fraction(grap, ctx()) + 0.3


def test_locmoe_grap_is_relu_of_centred_logits() -> None:
    z = logits(t=256)
    a = route("locmoe", z, ctx(locality_bias=0.0, gate="grap"))
    g = np.maximum(z - z.mean(axis=0), 0.0)
    np.testing.assert_allclose(a.weight, softmax(g).max(axis=1))
    np.testing.assert_allclose(g[np.arange(256), a.expert], g.max(axis=1))


@pytest.mark.parametrize("params, match", [
    ({"locality_bias": -0.5}, "locality_bias"),
    ({"locality_bias": "high"}, "locality_bias"),
    ({"gate": "dense"}, "gate"),
    ({"bias": 1.0}, "allowed: gate, locality_bias"),
])
def test_locmoe_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        route("locmoe", logits(t=8), ctx(**params))


def test_locmoe_needs_placement_for_a_bias() -> None:
    c = RouterContext(topk=1, rng=np.random.default_rng(0), expert_gpu=EXPERT_GPU,
                      gpu_node=GPU_NODE)
    with pytest.raises(UserError, match="token_gpu"):
        route("locmoe", logits(t=8), c)


def test_local_fraction_counts_rows() -> None:
    # token 0 on node 0, token 4 on node 1 (TOKEN_GPU = t % 8); experts 0..7 on node 0
    a = assemble([0, 0, 4, 4], [0, 8, 1, 9], np.ones(4), np.full(4, 0.5), T, E)
    assert local_fraction(a, ctx()) == 0.5
    b = assemble([0, 4], [3, 12], np.ones(2), np.full(2, 0.5), T, E)
    assert local_fraction(b, ctx()) == 1.0


def test_critical_capacity_worked_values() -> None:
    # papers.md §1.4: d=5120, n=16, delta=0.03 -> about 1.97 tokens; d=2048 -> about 0.36
    exact, large = critical_capacity_tokens(5120, 16), critical_capacity_tokens_large_d(5120, 16)
    assert exact == pytest.approx(1.96481, rel=1e-4)
    assert large == pytest.approx(1.96636, rel=1e-4)
    assert round(large, 2) == 1.97 and abs(exact - large) / large < 2e-3
    exact, large = critical_capacity_tokens(2048, 16), critical_capacity_tokens_large_d(2048, 16)
    assert exact == pytest.approx(0.357885, rel=1e-4)
    assert large == pytest.approx(0.358209, rel=1e-4)
    assert round(exact, 2) == round(large, 2) == 0.36
    # more experts or a wider model lower / raise the bound as 1/n and exp(delta^2 d / 2)
    assert critical_capacity_tokens(5120, 32) == pytest.approx(1.96481 / 2, rel=1e-4)
    assert critical_capacity_tokens(8192, 16) > critical_capacity_tokens(5120, 16)


def test_critical_capacity_matches_monte_carlo_on_the_sphere() -> None:
    # Lemma 3: p_delta = P(|cos(x, w)| >= delta) for x uniform on the unit sphere in R^d
    d, n, delta = 40, 8, 0.2
    x = np.random.default_rng(7).normal(size=(200_000, d))
    cos = x[:, 0] / np.linalg.norm(x, axis=1)
    p_mc = np.mean(np.abs(cos) >= delta)
    assert critical_capacity_tokens(d, n, delta) == pytest.approx(1 / (n * p_mc), rel=0.01)


@pytest.mark.parametrize("args", [(1, 16, 0.03), (5120, 0, 0.03), (5120, 16, 0.0),
                                  (5120, 16, 1.0), (5120.5, 16, 0.03)])
def test_critical_capacity_bad_arguments(args: tuple) -> None:
    with pytest.raises(UserError):
        critical_capacity_tokens(*args)
    with pytest.raises(UserError):
        critical_capacity_tokens_large_d(*args)


# ----------------------------------------------------------------------------- SMILE
def node_lse(z: np.ndarray) -> np.ndarray:
    return np.stack([logsumexp(z[:, EXPERT_NODE == n], axis=1) for n in (0, 1)], axis=1)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_smile_stays_on_the_argmax_node(k: int) -> None:
    z = logits()
    a = route("smile", z, ctx(k))
    assert np.all(np.bincount(a.token, minlength=T) == k)
    nodes = EXPERT_NODE[a.expert].reshape(T, k)
    assert np.all(nodes == nodes[:, :1]), "a token's experts span two nodes"
    lse = node_lse(z)
    np.testing.assert_array_equal(nodes[:, 0], lse.argmax(axis=1))
    # inside the node: the k largest logits of that node, best first
    inside = np.where(EXPERT_NODE[None, :] == lse.argmax(axis=1)[:, None], z, -np.inf)
    np.testing.assert_array_equal(a.expert.reshape(T, k), np.argsort(-inside, axis=1)[:, :k])
    # the node choice differs from plain top-1 somewhere (mass vs best single expert)
    if k == 1:
        assert np.any(a.expert != z.argmax(axis=1))


def test_smile_weight_is_node_times_local_probability() -> None:
    z = logits()
    a = route("smile", z, ctx(2))
    q = softmax(node_lse(z))
    nstar = q.argmax(axis=1)
    on = EXPERT_NODE[None, :] == nstar[:, None]
    r = np.where(on, np.exp(z), 0.0)
    r /= r.sum(axis=1, keepdims=True)
    expect = q[a.token, nstar[a.token]] * r[a.token, a.expert]
    np.testing.assert_allclose(a.weight, expect)
    np.testing.assert_allclose(a.score, expect)
    # with log-sum-exp node scores the product is the flat softmax probability
    np.testing.assert_allclose(a.weight, softmax(z)[a.token, a.expert])


def test_smile_balance_terms() -> None:
    z = logits()
    node_term, gpu_term = balance_terms(route("smile", z, ctx()), z, ctx())
    assert node_term == pytest.approx(1.0, abs=0.01)
    assert gpu_term == pytest.approx(1.0, abs=0.01)
    node_skew = z + np.where(EXPERT_NODE == 0, 1.0, 0.0)  # node 0 favoured
    n_t, g_t = balance_terms(route("smile", node_skew, ctx()), node_skew, ctx())
    assert n_t > 1.2 and g_t == pytest.approx(1.0, abs=0.01)
    slot_skew = z + np.where(EXPERT_GPU % 4 == 0, 1.0, 0.0)  # first GPU of each node favoured
    n_t, g_t = balance_terms(route("smile", slot_skew, ctx()), slot_skew, ctx())
    assert g_t > 1.2 and n_t == pytest.approx(1.0, abs=0.01)


def test_smile_balance_terms_exactly_one_when_perfectly_balanced() -> None:
    # uniform gates and one row per expert: f and Q / R are all uniform
    z = np.zeros((E, E))
    a = assemble(np.arange(E), np.arange(E), np.ones(E), np.full(E, 1 / E), E, E)
    c = RouterContext(topk=1, rng=np.random.default_rng(0), expert_gpu=EXPERT_GPU,
                      gpu_node=GPU_NODE)
    assert balance_terms(a, z, c) == pytest.approx((1.0, 1.0))
    # everything on expert 0 (node 0, slot 0): f = (1, 0), Q = (1/2, 1/2) -> N * 1/2 = 1;
    # R over the chosen node 0 = 1/4 per slot -> G * 1/4 = 1; skew only shows with the gate
    one = assemble(np.arange(E), np.zeros(E), np.ones(E), np.full(E, 1 / E), E, E)
    assert balance_terms(one, z, c) == pytest.approx((1.0, 1.0))


def test_smile_errors() -> None:
    with pytest.raises(UserError, match="experts per node"):
        route("smile", logits(t=8), ctx(9))  # 8 experts per node
    route("smile", logits(t=8), ctx(8))
    with pytest.raises(UserError, match="gpu_node"):
        route("smile", logits(t=8),
              RouterContext(topk=1, rng=np.random.default_rng(0), expert_gpu=EXPERT_GPU))
    with pytest.raises(UserError, match="allowed: none"):
        route("smile", logits(t=8), ctx(1, group_topk=2))
    with pytest.raises(UserError, match="tokens"):
        balance_terms(route("smile", logits(t=8), ctx()), logits(t=9), ctx())
