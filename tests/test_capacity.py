"""Capacity formulas per framework, drop order, and dispatch accounting."""

from __future__ import annotations

import numpy as np
import pytest

from sim.errors import UserError
from sim.moe import (
    CONVENTIONS,
    apply_capacity,
    dispatch_slots,
    drop_fraction,
    expert_capacity,
    load_imbalance,
    padding_fraction,
)
from sim.routing.assignment import Assignment


def make_assignment(seed: int, tokens: int, experts: int, topk: int, skew: float = 0.0,
                    priority: bool = False) -> Assignment:
    """Softmax top-k routing; ``skew`` adds a Zipf-like bias making low expert ids popular."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(tokens, experts)) - skew * np.log1p(np.arange(experts))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
    score = np.take_along_axis(probs, top, axis=1)
    # top-1 keeps the raw gate p[e*] (Switch); top-k normalises over the k choices
    weight = score if topk == 1 else score / score.sum(axis=1, keepdims=True)
    return Assignment(
        token=np.repeat(np.arange(tokens), topk),
        expert=top.ravel(),
        weight=weight.ravel(),
        choice=np.tile(np.arange(topk), tokens),
        score=score.ravel(),
        num_tokens=tokens,
        num_experts=experts,
        priority=rng.random(tokens * topk) if priority else None,
    )


# ---------------------------------------------------------------------------- formulas

@pytest.mark.parametrize(
    ("convention", "expected"),
    [("megatron", 160), ("deepspeed", 160), ("tutel", 160), ("gshard", 80)],
)
def test_capacity_s4096_e64_k2_cf125(convention, expected):
    # megatron ceil(4096*2/64*1.25) = 160; deepspeed ceil(64*2.5) = 160;
    # tutel 2*int(1.25*64) = 160; gshard int(4096*1.25/64) = 80 (no k factor)
    assert expert_capacity(convention, 4096, 64, 2, 1.25) == expected


def test_capacity_rounding_differs_between_conventions():
    # S=1000, E=64, k=2, cf=1.1: S*k/E*cf = 34.375
    assert expert_capacity("megatron", 1000, 64, 2, 1.1) == 35
    assert expert_capacity("deepspeed", 1000, 64, 2, 1.1) == 35
    assert expert_capacity("tutel", 1000, 64, 2, 1.1) == 34  # 2*int(1.1*ceil(15.625)=17.6)
    assert expert_capacity("tutel", 1000, 64, 2, 1.1, alignment=8) == 40
    assert expert_capacity("gshard", 1000, 64, 2, 1.1) == 17  # int(17.1875)
    assert expert_capacity("megatron", 4096, 256, 8, 1.0) == 128


def test_min_capacities():
    # S=16, E=64, k=1, cf=1: the raw value is 0.25 tokens per expert
    assert expert_capacity("megatron", 16, 64, 1, 1.0) == 1
    assert expert_capacity("megatron", 16, 64, 1, 1.0, min_capacity=2) == 2
    assert expert_capacity("deepspeed", 16, 64, 1, 1.0) == 4
    assert expert_capacity("deepspeed", 16, 64, 1, 1.0, min_capacity=8) == 8
    assert expert_capacity("gshard", 16, 64, 1, 1.0) == 4  # int(0.25) = 0, floored at 4
    assert expert_capacity("tutel", 16, 64, 1, 1.0) == 1
    assert expert_capacity("gshard", 2, 2, 2, 2.0) == 4  # the floor wins over min(S, ...)


def test_dropless_is_none():
    for convention in CONVENTIONS:
        assert expert_capacity(convention, 4096, 64, 2, None) is None
    assert expert_capacity("megatron", 4096, 64, 2, None, min_capacity=4) is None
    assert expert_capacity("tutel", 4096, 64, 2, 0.0) is None
    assert expert_capacity("tutel", 1000, 64, 2, -1.5) == 48  # cap 2*int(1.5*16)


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError, match="megatron, deepspeed, tutel, gshard"):
        expert_capacity("switchy", 4096, 64, 2, 1.0)
    with pytest.raises(UserError):
        expert_capacity("megatron", 4096, 64, 2, 0.0)
    with pytest.raises(UserError, match="probs, position"):
        apply_capacity(make_assignment(0, 8, 4, 1), 2, policy="random")


# ---------------------------------------------------------------------------- invariants

CASES = [(seed, conv, policy) for seed in range(4) for conv in CONVENTIONS
         for policy in ("probs", "position")]


@pytest.mark.parametrize(("seed", "convention", "policy"), CASES)
def test_keep_invariants(seed, convention, policy):
    a = make_assignment(seed, tokens=512, experts=16, topk=2, skew=1.0)
    cap = expert_capacity(convention, 512, 16, 2, 1.0)
    out = apply_capacity(a, cap, policy, convention)
    assert out.kept.shape == (len(a),) and out.kept.dtype == bool
    assert out.dropped + out.kept.sum() == len(a)
    assert out.load.sum() == out.kept.sum()
    np.testing.assert_array_equal(out.load, np.bincount(a.expert[out.kept], minlength=16))
    assert out.load.max() <= cap
    # an overflowing expert fills its buffer exactly
    full = a.expert_load() >= cap
    np.testing.assert_array_equal(out.load[full], cap)
    assert np.all(out.weight[~out.kept] == 0)


def test_probs_keeps_the_highest_scores():
    a = make_assignment(1, tokens=1024, experts=8, topk=2, skew=1.5)
    out = apply_capacity(a, 100, "probs", "megatron")
    assert out.dropped > 0
    for e in range(8):
        rows = a.expert == e
        kept, dropped = a.score[rows & out.kept], a.score[rows & ~out.kept]
        if len(dropped):
            assert dropped.max() <= kept.min()


def test_position_keeps_earliest_and_prefers_first_choices():
    a = make_assignment(2, tokens=1024, experts=8, topk=2, skew=1.5)
    out = apply_capacity(a, 150, "position", "gshard")
    assert out.dropped > 0
    for e in range(8):
        rows = a.expert == e
        key = a.choice * a.num_tokens + a.token  # all first choices, then second choices
        kept, dropped = key[rows & out.kept], key[rows & ~out.kept]
        if len(dropped):
            assert dropped.min() > kept.max()
        # a second choice is kept only if every first choice of this expert is
        if np.any(rows & out.kept & (a.choice == 1)):
            assert np.all(out.kept[rows & (a.choice == 0)])


def test_megatron_position_is_token_order_only():
    a = make_assignment(3, tokens=1024, experts=8, topk=2, skew=1.5)
    out = apply_capacity(a, 150, "position", "megatron")
    for e in range(8):
        rows = a.expert == e
        kept, dropped = a.token[rows & out.kept], a.token[rows & ~out.kept]
        if len(dropped):
            assert dropped.min() >= kept.max()


def test_priority_overrides_policy():
    a = make_assignment(4, tokens=512, experts=8, topk=1, skew=1.0, priority=True)
    for policy in ("probs", "position"):
        out = apply_capacity(a, 40, policy, "deepspeed")
        for e in range(8):
            rows = a.expert == e
            dropped = a.priority[rows & ~out.kept]
            if len(dropped):
                assert dropped.max() <= a.priority[rows & out.kept].min()


def test_dropless_keeps_everything():
    a = make_assignment(5, tokens=512, experts=16, topk=2, skew=2.0)
    out = apply_capacity(a, None, "probs", "megatron")
    assert out.dropped == 0 and drop_fraction(out) == 0.0 and out.kept.all()
    np.testing.assert_array_equal(out.load, a.expert_load())
    np.testing.assert_allclose(out.weight, a.weight)


def test_drop_fraction_falls_with_cf_and_rises_with_skew():
    def frac(cf, skew):
        a = make_assignment(6, tokens=2048, experts=32, topk=2, skew=skew)
        cap = expert_capacity("megatron", 2048, 32, 2, cf)
        return apply_capacity(a, cap, "probs", "megatron").drop_fraction

    by_cf = [frac(cf, 0.5) for cf in (0.5, 1.0, 1.25, 2.0, 4.0)]
    assert all(x >= y for x, y in zip(by_cf, by_cf[1:], strict=False))
    assert by_cf[0] > by_cf[-1]
    by_skew = [frac(1.25, s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(x <= y for x, y in zip(by_skew, by_skew[1:], strict=False))
    assert by_skew[-1] > by_skew[0]


def test_deepspeed_renormalises_surviving_weights():
    a = make_assignment(7, tokens=512, experts=8, topk=2, skew=1.5)
    out = apply_capacity(a, 70, "position", "deepspeed")
    assert out.dropped > 0
    per_token = np.bincount(a.token, weights=out.weight, minlength=a.num_tokens)
    any_kept = np.bincount(a.token, weights=out.kept, minlength=a.num_tokens) > 0
    np.testing.assert_allclose(per_token[any_kept], 1.0)
    np.testing.assert_array_equal(per_token[~any_kept], 0.0)
    # megatron leaves surviving weights as routed: some tokens now sum below 1
    meg = apply_capacity(a, 70, "position", "megatron")
    np.testing.assert_allclose(meg.weight[meg.kept], a.weight[meg.kept])
    # top-1 in deepspeed is not renormalised (the gate value stays p[e*])
    a1 = make_assignment(7, tokens=64, experts=8, topk=1)
    one = apply_capacity(a1, 4, "probs", "deepspeed")
    np.testing.assert_allclose(one.weight[one.kept], a1.weight[one.kept])
    assert np.all(one.weight[one.kept] < 1.0)


def test_empty_assignment():
    a = Assignment(token=np.zeros(0, int), expert=np.zeros(0, int), weight=np.zeros(0),
                   choice=np.zeros(0, int), score=np.zeros(0), num_tokens=0, num_experts=4)
    out = apply_capacity(a, 4, "probs", "deepspeed")
    assert out.dropped == 0 and out.load.tolist() == [0, 0, 0, 0] and drop_fraction(out) == 0


# ---------------------------------------------------------------------------- dispatch

def test_padded_dispatch_sends_e_times_c_whatever_the_skew():
    cap = expert_capacity("gshard", 1024, 16, 2, 1.25)
    for skew in (0.0, 1.0, 3.0):
        a = make_assignment(8, tokens=1024, experts=16, topk=2, skew=skew)
        out = apply_capacity(a, cap, "position", "gshard")
        slots = dispatch_slots(out.load, cap, pad_to_capacity=True)
        assert slots.sum() == 16 * cap
        assert padding_fraction(out.load, slots) == pytest.approx(1 - out.load.sum() / (16 * cap))


def test_variable_size_dispatch_has_no_padding():
    a = make_assignment(9, tokens=1024, experts=16, topk=2, skew=1.0)
    out = apply_capacity(a, 150, "probs", "megatron")
    slots = dispatch_slots(out.load, 150, pad_to_capacity=False)
    np.testing.assert_array_equal(slots, out.load)
    assert padding_fraction(out.load, slots) == 0.0


def test_dropless_padded_dispatch_pads_to_the_max_load():
    load = np.array([10, 3, 0, 7])
    slots = dispatch_slots(load, None, pad_to_capacity=True)
    np.testing.assert_array_equal(slots, [10, 10, 10, 10])
    assert padding_fraction(load, slots) == pytest.approx(20 / 40)
    np.testing.assert_array_equal(dispatch_slots(load, None, pad_to_capacity=False), load)


def test_load_imbalance():
    assert load_imbalance(np.array([5, 5, 5, 5])) == 1.0
    assert load_imbalance(np.array([8, 0, 0, 0])) == 4.0  # mean over all experts, idle included
    assert load_imbalance(np.array([10, 3, 0, 7])) == pytest.approx(2.0)
    assert load_imbalance(np.zeros(4)) == 1.0
