"""Pipeline schedules (sim.training.schedules) and the executor that times them
(sim.training.timeline). Op times are small dyadic numbers so the closed forms hold exactly."""

import time
from collections import Counter

import pytest

from sim.errors import UserError
from sim.training.schedules import SCHEDULES, Op, Plan, build
from sim.training.timeline import run


def times(tf, tb, tw=0.0, tfb=None):
    """duration(stage, op): F tf, full B tb, split backward I = tb - tw then W = tw, and an
    FB pair tfb (default tf + tb: no overlap gain)."""
    table = {"F": tf, "B": tb, "I": tb - tw, "W": tw, "FB": tf + tb if tfb is None else tfb}
    return lambda stage, op: table[op.kind]


def hop(d):
    return lambda src, dst, mb, chunk, kind: d


def executed(tl):
    """Every forward and input-gradient backward the timeline ran, as
    (kind, mb, chunk) -> [(stage, start, end), ...]; FB pairs counted as their two halves."""
    out = {}
    for stage, op, start, end in tl.ops:
        if op.kind == "FB":
            parts = [("F", op.mb, op.chunk), ("B", op.mb_b, op.chunk_b)]
        else:
            parts = [(op.kind, op.mb, op.chunk)]
        for key in parts:
            out.setdefault(key, []).append((stage, start, end))
    return out


LAYOUTS = [("1f1b", 4, 1, 8), ("1f1b", 1, 1, 3), ("1f1b", 5, 1, 3), ("interleaved", 4, 2, 8),
           ("interleaved", 3, 3, 6), ("interleaved", 8, 7, 32), ("dualpipe", 4, 1, 8),
           ("dualpipe", 8, 1, 20), ("dualpipe", 16, 1, 120)]


# --- every schedule -------------------------------------------------------------------------

@pytest.mark.parametrize("name,pp,vpp,m", LAYOUTS)
def test_every_chunk_runs_forward_and_backward_once_on_its_stage_backward_after_forward(
        name, pp, vpp, m):
    plan = build(name, pp, vpp, m)
    tl = run(plan, times(1.0, 2.0, 0.5), hop(0.125))
    ran = executed(tl)
    for mb in range(m):
        assert len(plan.paths[mb]) == plan.num_chunks
        for k, (stage, _) in enumerate(plan.paths[mb]):
            (fs, _, f_end), = ran.pop(("F", mb, k))
            backs = ran.pop(("B", mb, k), []) + ran.pop(("I", mb, k), [])
            (bs, b_start, b_end), = backs
            assert fs == bs == stage
            assert b_start >= f_end
            for ws, w_start, _ in ran.pop(("W", mb, k), []):  # split backward: W after its I
                assert ws == stage and w_start >= b_end
    assert ran == {}  # nothing else ran


@pytest.mark.parametrize("name,pp,vpp,m", LAYOUTS)
def test_stages_run_their_ops_in_order_one_at_a_time(name, pp, vpp, m):
    plan = build(name, pp, vpp, m)
    tl = run(plan, times(1.0, 2.0), hop(0.25))
    for s in range(pp):
        mine = tl.stage_ops(s)
        assert [t.op for t in mine] == list(plan.ops[s])
        assert all(a.end_s <= b.start_s for a, b in zip(mine, mine[1:], strict=False))
    assert tl.makespan_s == max(t.end_s for t in tl.ops)


def test_unknown_schedule_lists_the_available_ones():
    with pytest.raises(UserError, match="unknown schedule 'gpipe'; available: "
                                        "1f1b, dualpipe, interleaved"):
        build("gpipe", 4, 1, 8)
    assert SCHEDULES.names() == ["1f1b", "dualpipe", "interleaved"]


def test_a_deadlocked_plan_names_the_stuck_stage_and_op():
    # stage 0 waits for the backward of chunk 1 before running the forward it needs
    plan = Plan("broken", 2, 1,
                ops=((Op("B", 0, 0), Op("F", 0, 0)), (Op("F", 0, 1), Op("B", 0, 1))),
                paths=(((0, 0), (1, 0)),))
    with pytest.raises(RuntimeError, match=r"deadlocks: stage 0 at op 0 B\(mb=0, chunk=0\); "
                                           r"stage 1 at op 0 F\(mb=0, chunk=1\)"):
        run(plan, times(1.0, 2.0), hop(0.0))


def test_a_plan_missing_a_backward_is_rejected():
    plan = Plan("broken", 1, 1, ops=((Op("F", 0, 0),),), paths=(((0, 0),),))
    with pytest.raises(ValueError, match="exactly one backward"):
        run(plan, times(1.0, 2.0), hop(0.0))


# --- 1F1B -----------------------------------------------------------------------------------

@pytest.mark.parametrize("pp,m", [(1, 4), (2, 2), (4, 4), (4, 8), (8, 32), (5, 3)])
def test_1f1b_makespan_and_bubble_with_identical_stages(pp, m):
    tf, tb = 1.0, 2.0
    tl = run(build("1f1b", pp, 1, m), times(tf, tb), hop(0.0))
    assert tl.makespan_s == (m + pp - 1) * (tf + tb)
    assert tl.busy_s == (m * (tf + tb),) * pp
    assert tl.bubble_fraction == pytest.approx((pp - 1) / (m + pp - 1), abs=1e-12)


@pytest.mark.parametrize("pp", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 8, 16, 33])
def test_1f1b_makespan_with_a_constant_p2p_time_per_hop(pp, m):
    """With d seconds per hop the fill (first forward down) and drain (last backward up) add
    2 (pp - 1) d. That is all for m <= 2, but not beyond: in steady state stage 0 holds at most
    pp micro-batches (1F1B's warm-up), and the round trip of micro-batch j (its forward on every
    stage, back through every backward: pp (tf + tb) + 2 (pp - 1) d, no slack) must fit between
    stage 0's F(j) and its B(j), which pp (F, B) slots of stage 0 separate; so every micro-batch
    after the first adds 2 d (pp - 1) / pp, in whole hops: floor((pp - 1)(m - 1) / pp) round
    trips of 2 d. makespan = (m + pp - 1)(tf + tb) + 2 d [(pp - 1) + floor((pp-1)(m-1)/pp)]."""
    tf, tb, d = 1.0, 2.0, 0.25
    tl = run(build("1f1b", pp, 1, m), times(tf, tb), hop(d))
    extra_round_trips = (pp - 1) * (m - 1) // pp
    assert tl.makespan_s == (m + pp - 1) * (tf + tb) + 2 * d * ((pp - 1) + extra_round_trips)
    if m <= 2:
        assert tl.makespan_s == (m + pp - 1) * (tf + tb) + 2 * (pp - 1) * d


@pytest.mark.parametrize("pp,m", [(4, 2), (4, 8), (8, 8), (3, 16), (1, 5)])
def test_1f1b_peak_activations_in_flight(pp, m):
    tl = run(build("1f1b", pp, 1, m), times(1.0, 2.0), hop(0.125))
    assert tl.peak_in_flight == tuple(min(pp - s, m) for s in range(pp))
    # weighted by layers per local chunk (one chunk per stage here)
    assert tl.in_flight_peak(weights=[3.0]) == tuple(3.0 * min(pp - s, m) for s in range(pp))


def test_1f1b_order_is_megatrons_warmup_steady_cooldown():
    plan = build("1f1b", 4, 1, 6)
    assert [(o.kind, o.mb) for o in plan.ops[1]] == [
        ("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1), ("F", 4), ("B", 2),
        ("F", 5), ("B", 3), ("B", 4), ("B", 5)]
    assert [(o.kind, o.mb) for o in plan.ops[3]][:4] == [("F", 0), ("B", 0), ("F", 1), ("B", 1)]


def test_1f1b_rejects_vpp():
    with pytest.raises(UserError, match="vpp: must be 1"):
        build("1f1b", 4, 2, 8)


# --- interleaved ----------------------------------------------------------------------------

@pytest.mark.parametrize("pp,vpp,m", [(2, 2, 2), (4, 2, 8), (4, 3, 4), (4, 4, 16), (8, 7, 32),
                                      (3, 5, 9)])
def test_interleaved_bubble_shrinks_by_vpp(pp, vpp, m):
    """A stage's F and B take tf and tb; each of its vpp chunks tf / vpp and tb / vpp."""
    tf, tb = 1.0 * vpp, 2.0 * vpp  # chunks of 1 and 2: exact arithmetic
    tl = run(build("interleaved", pp, vpp, m), times(tf / vpp, tb / vpp), hop(0.0))
    assert tl.makespan_s == m * (tf + tb) + (pp - 1) * (tf + tb) / vpp
    one = run(build("1f1b", pp, 1, m), times(tf, tb), hop(0.0))
    assert one.makespan_s - m * (tf + tb) == vpp * (tl.makespan_s - m * (tf + tb))


def test_interleaved_places_chunk_k_on_stage_k_mod_pp_and_follows_megatrons_table():
    pp, vpp, m = 2, 2, 4
    plan = build("interleaved", pp, vpp, m)
    assert plan.paths[0] == ((0, 0), (1, 0), (0, 1), (1, 1))
    # Megatron's table for groups of pp micro-batches: (mb, local chunk) 0,0 1,0 0,1 1,1 2,0 ...
    # stage 0 warm-up: 2 (pp - 1) + (vpp - 1) pp = 4 forwards, then 1F1B, backwards from the
    # last local chunk
    assert [(o.kind, o.mb, o.chunk) for o in plan.ops[0]] == [
        ("F", 0, 0), ("F", 1, 0), ("F", 0, 2), ("F", 1, 2),
        ("F", 2, 0), ("B", 0, 2), ("F", 3, 0), ("B", 1, 2), ("F", 2, 2), ("B", 0, 0),
        ("F", 3, 2), ("B", 1, 0),
        ("B", 2, 2), ("B", 3, 2), ("B", 2, 0), ("B", 3, 0)]


@pytest.mark.parametrize("pp,vpp,m", [(4, 2, 8), (8, 7, 32), (4, 3, 4)])
def test_interleaved_peak_activations_are_warmup_plus_one_chunks(pp, vpp, m):
    tl = run(build("interleaved", pp, vpp, m), times(1.0, 2.0), hop(0.0))
    assert tl.peak_in_flight == tuple(min(2 * (pp - s - 1) + (vpp - 1) * pp + 1, m * vpp)
                                      for s in range(pp))


def test_interleaved_rejects_vpp_1_and_m_not_a_multiple_of_pp():
    with pytest.raises(UserError, match="vpp: must be >= 2"):
        build("interleaved", 4, 1, 8)
    with pytest.raises(UserError, match="micro-batches: must be a multiple of pp=4"):
        build("interleaved", 4, 2, 6)
    with pytest.raises(UserError, match="pp: must be >= 2"):
        build("interleaved", 1, 2, 4)


# --- DualPipe -------------------------------------------------------------------------------

@pytest.mark.parametrize("pp,m", [(2, 4), (4, 8), (8, 20), (16, 120)])
def test_dualpipe_runs_both_directions_on_the_right_ranks(pp, m):
    plan = build("dualpipe", pp, 1, m)
    tl = run(plan, times(1.0, 2.0, 1.0), hop(0.0))
    where = {key: runs[0][0] for key, runs in executed(tl).items()}
    for mb in range(m):
        for k in range(pp):
            rank = k if mb < m // 2 else pp - 1 - k
            assert where[("F", mb, k)] == rank
            assert where.get(("B", mb, k), where.get(("I", mb, k))) == rank
    assert Counter(op.kind for ops in plan.ops for op in ops)["FB"] > 0


def test_dualpipe_rank_order_follows_the_reference_steps():
    # pp 8, 20 micro-batches: the README figure. Rank 0: 6 F0 (step 1), F0 F1 (step 2),
    # 3 x (B1 zero-bubble, W, F1) (step 3), then overlapped pairs (step 4).
    ops = build("dualpipe", 8, 1, 20).ops
    r0 = [(o.kind, o.mb) for o in ops[0]]
    assert r0[:17] == ([("F", i) for i in range(7)] + [("F", 10)]
                       + [("I", 10), ("W", 10), ("F", 11), ("I", 11), ("W", 11), ("F", 12),
                          ("I", 12), ("W", 12), ("F", 13)])
    assert ops[0][17] == Op("FB", 7, 0, 13, 7)
    # middle rank 3: step 2 only (4 x F0 F1), then its first pair is not overlapped
    r3 = [(o.kind, o.mb) for o in ops[3]]
    assert r3[:10] == [("F", 0), ("F", 10), ("F", 1), ("F", 11), ("F", 2), ("F", 12),
                       ("F", 3), ("F", 13), ("F", 4), ("B", 10)]
    # the end of rank 1 (figure): B6 then the weight gradients, FIFO
    assert [(o.kind, o.mb) for o in ops[1]][-9:] == [
        ("B", 6), ("I", 19), ("I", 7), ("W", 19), ("I", 8), ("W", 7), ("I", 9), ("W", 8),
        ("W", 9)]


@pytest.mark.parametrize("pp", [4, 8, 16])
def test_dualpipe_bubble_against_the_published_formula(pp):
    """DeepSeek-V3 Table 2: DualPipe bubble (PP/2 - 1)(F&B + B - 3W), B the full backward.
    Every rank is busy m (F + B); bubble = makespan - that (zero p2p, F&B = F + B)."""
    m, n1 = 2 * pp + 4, pp // 2 - 1

    def bubble(tf, tb, tw=0.0):
        tl = run(build("dualpipe", pp, 1, m), times(tf, tb, tw), hop(0.0))
        assert tl.busy_s == (m * (tf + tb),) * pp
        return tl.makespan_s - m * (tf + tb)

    # the README figure's cells: F 1, B 2 (input 1 + weight 1): matches exactly
    assert bubble(1.0, 2.0, 1.0) == n1 * (3.0 + 2.0 - 3 * 1.0)
    # W = 0 (B+W as one op), F = B: matches (PP/2 - 1)(F&B + B)
    assert bubble(1.0, 1.0) == n1 * (2.0 + 1.0)
    # W = 0, B = 2F: this executor finds one F less than the formula
    assert bubble(1.0, 2.0) == n1 * (3.0 + 2.0) - 1.0
    # W = 0, F = 2B: (PP/2 - 1)(F&B + F), more than the formula's (PP/2 - 1)(F&B + B)
    assert bubble(2.0, 1.0) == n1 * (3.0 + 2.0)


@pytest.mark.parametrize("pp,m", [(4, 8), (8, 20), (16, 120)])
def test_dualpipe_peak_activations_are_pp_plus_one_on_the_middle_ranks(pp, m):
    tl = run(build("dualpipe", pp, 1, m), times(1.0, 2.0, 1.0), hop(0.0625))
    expect = tuple(pp + 1 if s in (pp // 2 - 1, pp // 2) else pp for s in range(pp))
    assert tl.peak_in_flight == expect
    assert tl.in_flight_peak(until="W") == tuple(float(e) for e in expect)


def test_dualpipe_layout_checks():
    with pytest.raises(UserError, match="pp: must be even"):
        build("dualpipe", 3, 1, 12)
    with pytest.raises(UserError, match=r"micro-batches: must be even and >= 2 pp = 8 \(got 6\)"):
        build("dualpipe", 4, 1, 6)
    with pytest.raises(UserError, match="micro-batches: must be even"):
        build("dualpipe", 4, 1, 9)
    with pytest.raises(UserError, match="vpp: must be 1"):
        build("dualpipe", 4, 2, 8)


# --- speed ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,pp,vpp,m", [("dualpipe", 16, 1, 120), ("interleaved", 8, 7, 32)])
def test_large_layouts_run_well_under_a_second(name, pp, vpp, m):
    t0 = time.perf_counter()
    tl = run(build(name, pp, vpp, m), times(1.0, 2.0, 0.5), hop(0.1))
    assert max(tl.peak_in_flight) > 0
    assert time.perf_counter() - t0 < 0.5
