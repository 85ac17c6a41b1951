"""Routers: one contract over every registered router, then each router's defining behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from sim.errors import UserError
from sim.routing import ROUTERS, Assignment, RouterContext, route

T, E, K = 512, 16, 2
EXPERT_GPU = np.arange(E) // 2  # 2 experts per GPU, 8 GPUs
GPU_NODE = np.arange(8) // 4  # 4 GPUs per node, 2 nodes


def logits(seed: int = 0, t: int = T, e: int = E) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(t, e))


def ctx(seed: int = 1, k: int = K, **kw) -> RouterContext:
    kw.setdefault("token_ids", np.random.default_rng(99).integers(0, 50_000, T))
    kw.setdefault("token_gpu", np.arange(T) % 8)  # tokens spread over the 8 GPUs (locmoe)
    return RouterContext(topk=k, rng=np.random.default_rng(seed), expert_gpu=EXPERT_GPU,
                         gpu_node=GPU_NODE, **kw)


def per_token(a: Assignment) -> np.ndarray:
    return np.bincount(a.token, minlength=a.num_tokens)


def total_logit(z: np.ndarray, a: Assignment) -> float:
    return float(z[a.token, a.expert].sum())


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", ROUTERS.names())
def test_router_contract(name: str) -> None:
    z = logits()
    a = route(name, z, ctx())
    assert isinstance(a, Assignment)
    assert (a.num_tokens, a.num_experts) == (T, E)
    n = len(a)
    assert n > 0
    for col in (a.token, a.expert, a.weight, a.choice, a.score):
        assert col.shape == (n,)
    assert a.priority is None or a.priority.shape == (n,)
    assert a.token.min() >= 0 and a.token.max() < T
    assert a.expert.min() >= 0 and a.expert.max() < E
    assert len(np.unique(a.token * E + a.expert)) == n, "duplicate (token, expert) pair"
    assert np.all(np.isfinite(a.weight)) and np.all(a.weight >= 0)
    assert np.all(np.isfinite(a.score)) and np.all((a.score >= 0) & (a.score <= 1))
    # choice ranks: each token's rows carry 0..k'-1 exactly once
    order = np.lexsort((a.choice, a.token))
    tok, ch = a.token[order], a.choice[order]
    start = np.searchsorted(tok, tok, side="left")
    np.testing.assert_array_equal(ch, np.arange(n) - start)
    assert a.expert_load().sum() == n
    # same seed, same output
    b = route(name, z, ctx())
    for f in ("token", "expert", "weight", "choice", "score"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_unknown_router_lists_names() -> None:
    with pytest.raises(UserError) as err:
        route("nope", logits(), ctx())
    for name in ROUTERS.names():
        assert name in str(err.value)


def test_unknown_parameter_is_user_error() -> None:
    with pytest.raises(UserError, match="second_threshold"):
        route("gshard", logits(), ctx(params={"threshold": 0.1}))


def test_bad_logits_and_topk() -> None:
    with pytest.raises(UserError):
        route("topk", np.zeros(E), ctx())
    with pytest.raises(UserError):
        route("topk", logits(), ctx(k=E + 1))


# ----------------------------------------------------------------------------- per router
def test_switch_picks_argmax_with_raw_probability() -> None:
    z = logits()
    a = route("switch", z, ctx())
    np.testing.assert_array_equal(a.token, np.arange(T))
    np.testing.assert_array_equal(a.expert, z.argmax(axis=1))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(a.weight, p.max(axis=1))


def test_topk_weights_sum_to_one_and_pick_the_k_largest() -> None:
    z = logits()
    a = route("topk", z, ctx(k=4))
    assert np.all(per_token(a) == 4)
    np.testing.assert_allclose(np.bincount(a.token, weights=a.weight), 1.0)
    top4 = np.sort(np.argsort(-z, axis=1)[:, :4], axis=1)
    np.testing.assert_array_equal(np.sort(a.expert.reshape(T, 4), axis=1), top4)
    first = a.choice == 0
    np.testing.assert_array_equal(a.expert[first], z.argmax(axis=1))
    raw = route("topk", z, ctx(k=4, params={"normalize": False}))
    np.testing.assert_allclose(raw.weight, raw.score)


def test_gshard_second_expert_rate_falls_with_threshold() -> None:
    z = logits() * 3  # sharper gates, so g2 spreads over (0, 0.5]
    rates = []
    for th in (0.0, 0.1, 0.2, 0.4, 1.0):
        a = route("gshard", z, ctx(params={"second_threshold": th}))
        first = a.choice == 0
        np.testing.assert_array_equal(a.token[first], np.arange(T))
        np.testing.assert_array_equal(a.expert[first], z.argmax(axis=1))
        rates.append(np.mean(a.choice == 1) * len(a) / T)
        assert per_token(a).max() <= 2
    assert rates[0] == 1.0
    assert all(x > y for x, y in zip(rates, rates[1:], strict=False))
    # weights are renormalised over the top-2 before the random drop (Mesh-TF legacy)
    full = route("gshard", z, ctx(params={"second_threshold": 0.0}))
    np.testing.assert_allclose(np.bincount(full.token, weights=full.weight), 1.0)


def test_expert_choice_fills_exactly_c_per_expert() -> None:
    z = logits()
    a = route("expert_choice", z, ctx())
    assert np.all(a.expert_load() == round(2.0 * T / E))
    b = route("expert_choice", z, ctx(capacity=10))
    assert np.all(b.expert_load() == 10)
    # each expert's tokens are the top-C of its softmax column
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    for e in (0, E - 1):
        np.testing.assert_array_equal(np.sort(b.token[b.expert == e]),
                                      np.sort(np.argsort(-p[:, e])[:10]))
    assert per_token(b).min() == 0  # coverage gap: some tokens get no expert


def test_hash_depends_only_on_token_id() -> None:
    ids = np.random.default_rng(5).integers(0, 40, T)  # many repeated ids
    a = route("hash", logits(0), ctx(token_ids=ids))
    b = route("hash", logits(7), ctx(token_ids=ids))
    np.testing.assert_array_equal(a.expert, b.expert)
    np.testing.assert_array_equal(a.weight, 1.0)
    for tid in np.unique(ids):
        assert len(np.unique(a.expert[ids[a.token] == tid])) == 1
    salted = route("hash", logits(0), ctx(token_ids=ids, params={"salt": 1}))
    assert not np.array_equal(salted.expert, a.expert)
    with pytest.raises(UserError, match="token"):
        route("hash", logits(), ctx(token_ids=None))


@pytest.mark.parametrize("t", [T, 500])
@pytest.mark.parametrize("solver", ["exact", "greedy"])
def test_base_is_balanced_and_beats_random_balanced(t: int, solver: str) -> None:
    z = logits(t=t)
    c = ctx(params={"exact_max_cells": 0} if solver == "greedy" else {})
    a = route("base", z, c)
    load = a.expert_load()
    assert load.max() - load.min() <= 1 and load.sum() == t
    assert np.all(per_token(a) == 1)
    np.testing.assert_allclose(a.weight, 1 / (1 + np.exp(-z[a.token, a.expert])))
    rng = np.random.default_rng(3)
    balanced = np.arange(t) % E
    for _ in range(5):
        rand = rng.permutation(balanced)
        assert total_logit(z, a) > z[np.arange(t), rand].sum()
    if solver == "greedy":
        exact = route("base", z, ctx())
        assert total_logit(z, exact) >= total_logit(z, a) >= 0.95 * total_logit(z, exact)


def test_base_small_group_fewer_tokens_than_experts() -> None:
    z = logits(t=5)
    a = route("base", z, ctx(token_ids=np.arange(5)))
    assert sorted(a.expert_load()) == [0] * (E - 5) + [1] * 5


def nodes_per_token(a: Assignment) -> np.ndarray:
    node = GPU_NODE[EXPERT_GPU[a.expert]]
    pairs = np.unique(a.token * 100 + node)
    return np.bincount(pairs // 100, minlength=a.num_tokens)


def test_node_limited_bounds_nodes_and_reduces_to_topk() -> None:
    z = logits()
    for k in (2, 4):
        a = route("node_limited", z, ctx(k=k, params={"group_topk": 1}))
        assert np.all(per_token(a) == k)
        assert nodes_per_token(a).max() == 1
        np.testing.assert_allclose(np.bincount(a.token, weights=a.weight), 1.0)
        plain = route("topk", z, ctx(k=k))
        assert nodes_per_token(plain).max() == 2  # the limit actually binds
        full = route("node_limited", z, ctx(k=k, params={"group_topk": 2}))
        for f in ("token", "expert", "weight", "choice", "score"):
            np.testing.assert_array_equal(getattr(full, f), getattr(plain, f))


def test_node_limited_by_device() -> None:
    a = route("node_limited", logits(), ctx(k=4, params={"group_by": "device", "group_topk": 2}))
    gpus = np.unique(a.token * 100 + EXPERT_GPU[a.expert]) // 100
    assert np.bincount(gpus, minlength=T).max() == 2
    with pytest.raises(UserError, match="group_topk"):
        route("node_limited", logits(), ctx(k=4, params={"group_by": "device", "group_topk": 1}))
    with pytest.raises(UserError, match="gpu_node"):
        route("node_limited", logits(),
              RouterContext(topk=2, rng=np.random.default_rng(0), expert_gpu=EXPERT_GPU))


def test_balanced_hash_gives_every_expert_equal_tokens() -> None:
    ids = np.random.default_rng(6).zipf(1.3, T) % 50  # a skewed token stream
    plain = route("hash", logits(0), ctx(token_ids=ids))
    even = route("hash", logits(0), ctx(token_ids=ids, params={"balanced": True}))
    load = even.expert_load()
    assert load.max() - load.min() <= 1 and load.sum() == T
    assert plain.expert_load().max() > load.max()  # the token-id hash follows the skew
    np.testing.assert_array_equal(np.sort(even.token), np.arange(T))  # one expert per token
    np.testing.assert_array_equal(even.expert, route("hash", logits(3), ctx(
        token_ids=ids, params={"balanced": True})).expert)  # still blind to the logits


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_top_p_takes_the_fewest_best_experts_that_reach_the_threshold(threshold: float) -> None:
    z = logits(2) * 2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    a = route("top_p", z, ctx(k=2, params={"threshold": threshold, "max_k": E}))
    for t in range(T):
        rows = a.token == t
        mine = a.expert[rows][np.argsort(a.choice[rows])]
        best = np.argsort(-p[t], kind="stable")
        k = len(mine)
        np.testing.assert_array_equal(mine, best[:k])  # a prefix of the best, best first
        assert p[t, best[:k]].sum() >= threshold - 1e-12  # reaches the threshold
        assert k == 1 or p[t, best[:k - 1]].sum() < threshold  # and no expert more
        assert a.weight[rows].sum() == pytest.approx(1.0)


def test_top_p_k_grows_with_the_threshold_and_stops_at_max_k() -> None:
    z = logits(3)
    mean_k = [len(route("top_p", z, ctx(k=2, params={"threshold": q}))) / T
              for q in (0.2, 0.5, 0.8, 1.0)]
    assert mean_k == sorted(mean_k) and mean_k[0] < mean_k[-1]
    capped = route("top_p", z, ctx(k=2, params={"threshold": 1.0, "max_k": 3}))
    assert np.bincount(capped.token).max() == 3
    with pytest.raises(UserError, match="threshold"):
        route("top_p", z, ctx(k=2, params={"threshold": 0.0}))
    with pytest.raises(UserError, match="max_k"):
        route("top_p", z, ctx(k=2, params={"max_k": E + 1}))


# -- the compiled selections against brute force (ties included) ---------------------------


def _ranked(values: np.ndarray, cols) -> list[int]:
    """``cols`` best first: larger value first, equal values by lower column."""
    return sorted(cols, key=lambda c: (-values[c], c))


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_top_k_is_the_sorted_best_with_lower_column_first_on_ties(k: int) -> None:
    from sim.routing.common import top_k

    rng = np.random.default_rng(3)
    v = rng.integers(0, 6, size=(200, 24)).astype(float)  # many exact ties
    got = top_k(v, k)
    want = [_ranked(row, range(24))[:k] for row in v]
    assert got.tolist() == want


def test_node_limited_equals_brute_force_with_ties() -> None:
    from sim.routing.node_limited import node_limited

    rng = np.random.default_rng(4)
    t, e, k, keep = 300, 24, 4, 2
    z = rng.integers(-3, 3, size=(t, e)).astype(float)  # ties between experts and groups
    gpu = rng.permutation(np.arange(e) % 6)  # experts scattered over 6 GPUs, 3 nodes
    ctx = RouterContext(topk=k, rng=rng, expert_gpu=gpu, gpu_node=np.arange(6) // 2,
                        params={"group_topk": keep})
    a = node_limited(z, ctx)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    node = (np.arange(6) // 2)[gpu]
    per = max(1, k // keep)
    for r in range(t):
        score = [sum(sorted(p[r, node == g], reverse=True)[:per]) for g in range(3)]
        best = sorted(range(3), key=lambda g: (-score[g], g))[:keep]
        want = _ranked(p[r], [c for c in range(e) if node[c] in best])[:k]
        assert a.expert[a.token == r].tolist() == want


def test_gate_probs_is_softmax_of_the_checked_logits() -> None:
    from sim.routing.common import check_logits, gate_probs, softmax

    z = np.random.default_rng(5).normal(size=(50, 16)).astype(np.float32) * 4
    assert np.array_equal(gate_probs(z), softmax(check_logits(z)))
    assert np.array_equal(gate_probs(z.astype(np.float64)), softmax(check_logits(z)))
    z[7, 3] = np.inf
    with pytest.raises(UserError, match="finite"):
        gate_probs(z)
    with pytest.raises(UserError, match="shape"):
        gate_probs(np.zeros(5))
