"""Serving requests (Poisson arrivals, request files) and the three batchers (Read-ME Alg. 1)."""

import json
import re

import numpy as np
import pytest

from sim.errors import UserError
from sim.serving.batching import BATCHERS, Batch, WorkItem, form_batch
from sim.serving.requests import Request, load_requests, poisson_requests

# ---------------------------------------------------------------------------------- requests


def test_poisson_same_seed_same_requests_and_seeds_differ():
    a = poisson_requests(200, 5.0, (1, 64), 8, np.random.default_rng(3))
    b = poisson_requests(200, 5.0, (1, 64), 8, np.random.default_rng(3))
    c = poisson_requests(200, 5.0, (1, 64), 8, np.random.default_rng(4))
    assert a == b
    assert a != c
    assert [r.rid for r in a] == list(range(200))


def test_poisson_mean_interarrival_and_token_ranges():
    n, rate = 20_000, 8.0
    reqs = poisson_requests(n, rate, (16, 512), (1, 4), np.random.default_rng(0))
    arrivals = np.array([r.arrival_s for r in reqs])
    gaps = np.diff(arrivals, prepend=0.0)
    assert (gaps >= 0).all() and arrivals[0] > 0
    assert abs(gaps.mean() - 1 / rate) <= 0.05 / rate
    # exponential: the standard deviation equals the mean (a uniform gap would fail this)
    assert abs(gaps.std() - 1 / rate) <= 0.05 / rate
    prompts = np.array([r.prompt_tokens for r in reqs])
    outputs = np.array([r.output_tokens for r in reqs])
    assert prompts.min() == 16 and prompts.max() == 512  # inclusive at both ends
    assert set(outputs.tolist()) == {1, 2, 3, 4}
    fixed = poisson_requests(50, rate, 7, 3, np.random.default_rng(0))
    assert {(r.prompt_tokens, r.output_tokens) for r in fixed} == {(7, 3)}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n": -1}, "n"),
        ({"rate_per_s": 0.0}, "rate_per_s"),
        ({"rate_per_s": float("inf")}, "rate_per_s"),
        ({"prompt_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": (5, 2)}, "prompt_tokens"),
        ({"output_tokens": (0, 4)}, "output_tokens"),
        ({"output_tokens": 2.5}, "output_tokens"),
    ],
)
def test_poisson_bad_values_are_user_errors(kwargs, field):
    args = {"n": 10, "rate_per_s": 1.0, "prompt_tokens": 8, "output_tokens": 8} | kwargs
    with pytest.raises(UserError, match=rf"^{field}: "):
        poisson_requests(**args, rng=np.random.default_rng(0))


def _shuffled_workload() -> list[Request]:
    reqs = poisson_requests(30, 2.0, (1, 100), (1, 20), np.random.default_rng(1))
    order = np.random.default_rng(2).permutation(len(reqs))
    return [reqs[i] for i in order]


def test_load_requests_csv_round_trip_sorts_by_arrival(tmp_path):
    reqs = _shuffled_workload()
    path = tmp_path / "reqs.csv"
    lines = ["prompt_tokens,arrival_s,output_tokens"]  # any column order
    lines += [f"{r.prompt_tokens},{r.arrival_s!r},{r.output_tokens}" for r in reqs]
    path.write_text("\n".join(lines) + "\n\n")
    loaded = load_requests(path)
    assert loaded == sorted(reqs, key=lambda r: r.arrival_s)
    assert [r.rid for r in loaded] == list(range(len(reqs)))


def test_load_requests_jsonl_round_trip_sorts_by_arrival(tmp_path):
    reqs = _shuffled_workload()
    path = tmp_path / "reqs.jsonl"
    fields = ("arrival_s", "prompt_tokens", "output_tokens")
    rows = [{name: getattr(r, name) for name in fields} for r in reqs]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    loaded = load_requests(path)
    assert loaded == sorted(reqs, key=lambda r: r.arrival_s)
    assert [r.rid for r in loaded] == list(range(len(reqs)))


def test_load_requests_ties_keep_file_order(tmp_path):
    path = tmp_path / "ties.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n2,5,1\n1,3,1\n1,4,1\n")
    assert [(r.rid, r.prompt_tokens) for r in load_requests(path)] == [(0, 3), (1, 4), (2, 5)]


HEADER = "arrival_s,prompt_tokens,output_tokens\n"
GOOD = {"arrival_s": 0.5, "prompt_tokens": 4, "output_tokens": 2}


def _jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.mark.parametrize(
    "name, text, field, line",
    [
        ("absent.csv", None, "file", None),
        ("reqs.txt", HEADER + "0,1,1\n", "extension", None),
        ("empty.csv", "", "header", None),
        ("header_only.csv", HEADER, "requests", None),
        ("no_output.csv", "arrival_s,prompt_tokens\n0,4\n", "output_tokens", 1),
        ("unknown.csv", HEADER.strip() + ",priority\n0,4,2,1\n", "priority", 1),
        ("short.csv", HEADER + "0.5,4,2\n1.0,4\n", "output_tokens", 3),
        ("word.csv", HEADER + "soon,4,2\n", "arrival_s", 2),
        ("negative.csv", HEADER + "0,4,2\n-1,4,2\n", "arrival_s", 3),
        ("nan.csv", HEADER + "nan,4,2\n", "arrival_s", 2),
        ("zero_prompt.csv", HEADER + "0,0,2\n", "prompt_tokens", 2),
        ("frac_output.csv", HEADER + "0,4,2.5\n", "output_tokens", 2),
        ("bad.jsonl", _jsonl(GOOD) + "{not json\n", "line 2", 2),
        ("list.jsonl", "[1, 2, 3]\n", "line 1", 1),
        ("missing_key.jsonl", _jsonl({"arrival_s": 0, "prompt_tokens": 4}), "output_tokens", 1),
        ("extra_key.jsonl", _jsonl(GOOD | {"rid": 3}), "rid", 1),
        ("text_arrival.jsonl", _jsonl(GOOD | {"arrival_s": "0.5"}), "arrival_s", 1),
        ("neg.jsonl", _jsonl(GOOD, GOOD | {"arrival_s": -0.1}), "arrival_s", 2),
        ("bool.jsonl", _jsonl(GOOD | {"prompt_tokens": True}), "prompt_tokens", 1),
        ("float_tok.jsonl", _jsonl(GOOD | {"output_tokens": 2.0}), "output_tokens", 1),
        ("zero_out.jsonl", _jsonl(GOOD | {"output_tokens": 0}), "output_tokens", 1),
    ],
)
def test_load_requests_bad_input_names_file_line_and_field(tmp_path, name, text, field, line):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as err:
        load_requests(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    assert field in msg
    if line is not None:  # the line, then the column where a JSON parser stopped
        assert re.search(rf"line {line}(, column \d+)?:", msg)


# ---------------------------------------------------------------------------------- batchers


def req(rid: int, arrival_s: float, prompt: int = 4) -> Request:
    return Request(rid, arrival_s, prompt, 8)


def batch_of(policy, waiting, running, budget, experts, keys=None) -> Batch:
    """``experts``: rid -> expert set; ``keys``: rid -> key expert (default: min of the set)."""
    keys = keys or {rid: min(es) for rid, es in experts.items()}
    return form_batch(
        policy,
        waiting,
        running,
        budget,
        experts_of=lambda item: frozenset(experts[item.rid]),
        key_of=lambda item: keys[item.rid],
    )


def contents(b: Batch) -> tuple[set[int], set[int], int]:
    return set(b.decode), set(b.prefill), b.tokens


@pytest.mark.parametrize("policy", BATCHERS)
def test_empty_candidates_give_an_empty_batch(policy):
    b = batch_of(policy, [], [], 16, {})
    assert (b.decode, b.prefill, b.tokens, b.experts, b.unique_experts) == ([], [], 0, set(), 0)


def test_decode_first_worked_example():
    # decodes listed out of arrival order: by arrival they are 0, 6, 1, 2, 3, 7
    running = [req(3, 3.0), req(0, 0.0), req(7, 7.0), req(2, 2.0), req(6, 0.5), req(1, 1.0)]
    waiting = [req(10, 10.0, prompt=2), req(11, 11.0, prompt=5), req(12, 12.0, prompt=1)]
    experts = {r.rid: {r.rid % 4} for r in running} | {10: {0, 5}, 11: {6}, 12: {7}}
    # 6 decodes (6 tokens) + prefill 10 (2) = 8; prefill 11 does not fit, so 12 is not reached
    b = batch_of("decode_first", waiting, running, 8, experts)
    assert contents(b) == ({0, 1, 2, 3, 6, 7}, {10}, 8)
    assert b.experts == {0, 1, 2, 3, 5} and b.unique_experts == 5
    # more decodes than budget: only the oldest, and no prefill
    b = batch_of("decode_first", waiting, running, 4, experts)
    assert contents(b) == ({0, 1, 2, 6}, set(), 4)


def test_prefill_first_worked_example():
    running = [req(i, float(i)) for i in range(7)]
    waiting = [req(12, 12.0, prompt=1), req(10, 10.0, prompt=3), req(11, 11.0, prompt=6)]
    experts = {i: {i} for i in range(7)} | {10: {1}, 11: {2}, 12: {3}}
    # prefill 10 (3); prefill 11 (6) does not fit, so 12 is not reached; then decodes 0..4
    b = batch_of("prefill_first", waiting, running, 8, experts)
    assert contents(b) == ({0, 1, 2, 3, 4}, {10}, 8)
    assert b.experts == {0, 1, 2, 3, 4}


def test_decode_first_and_prefill_first_differ_when_both_wait():
    running = [req(0, 0.0), req(1, 1.0), req(2, 2.0)]
    waiting = [req(3, 3.0, prompt=3), req(4, 4.0, prompt=4), req(5, 5.0, prompt=1)]
    experts = {i: {i} for i in range(6)}
    assert contents(batch_of("decode_first", waiting, running, 8, experts)) == (
        {0, 1, 2}, {3}, 6,
    )
    assert contents(batch_of("prefill_first", waiting, running, 8, experts)) == (
        set(), {3, 4, 5}, 8,
    )


def test_expert_aware_worked_example():
    # key experts: decodes 0 -> e1, 1..3 -> e2, 4 -> e0; prefill 5 (3 tokens) -> e0, 6 (4) -> e3
    running = [req(i, float(i)) for i in range(5)]
    waiting = [req(5, 5.0, prompt=3), req(6, 6.0, prompt=4)]
    keys = {0: 1, 1: 2, 2: 2, 3: 2, 4: 0, 5: 0, 6: 3}
    experts = {rid: {k} for rid, k in keys.items()} | {5: {0, 4}}
    # queue tokens: e0 4, e1 1, e2 3, e3 4. e0 (tie with e3, lower id) fits: 4 left; e3 fits:
    # 0 left; e2 does not fit and its first item does not fit: stop.
    b = batch_of("expert_aware", waiting, running, 8, experts, keys)
    assert contents(b) == ({4}, {5, 6}, 8)
    assert b.experts == {0, 3, 4}
    # budget 6: e0 fits (2 left); e3's only item (4 tokens) does not: stop, although e1 and e2
    # items would fit (Algorithm 1 stops after the first queue that does not fit whole)
    b = batch_of("expert_aware", waiting, running, 6, experts, keys)
    assert contents(b) == ({4}, {5}, 4)


def test_expert_aware_breaks_ties_by_lowest_expert_id():
    # e0 and e3 both hold 2 tokens; e3's decodes are older, yet e0 goes first, and then e3's
    # queue does not fit (nor does its first item) in the 1 token left
    running = [req(0, 5.0), req(1, 6.0), req(2, 0.0), req(3, 1.0)]
    keys = {0: 0, 1: 0, 2: 3, 3: 3}
    experts = {rid: {k} for rid, k in keys.items()}
    assert contents(batch_of("expert_aware", [], running, 2, experts, keys)) == ({0, 1}, set(), 2)
    b = batch_of("expert_aware", [], running, 3, experts, keys)
    assert contents(b) == ({0, 1, 2}, set(), 3) and b.experts == {0, 3}


def test_expert_aware_takes_longest_queue_first_where_fifo_would_not():
    # the oldest decode wants e1; e2's queue is longer (4 tokens) but does not fit in 3:
    # take its first three items FIFO and stop
    running = [req(i, float(i)) for i in range(5)]
    keys = {0: 1, 1: 2, 2: 2, 3: 2, 4: 2}
    experts = {rid: {k} for rid, k in keys.items()}
    fifo = batch_of("decode_first", [], running, 3, experts, keys)
    aware = batch_of("expert_aware", [], running, 3, experts, keys)
    assert contents(fifo) == ({0, 1, 2}, set(), 3) and fifo.experts == {1, 2}
    assert contents(aware) == ({1, 2, 3}, set(), 3) and aware.experts == {2}


def test_expert_aware_measures_queues_in_tokens_not_items():
    # e0 holds three decodes (3 tokens), e1 one 5-token prefill: e1 is the longer queue
    running = [req(i, float(i)) for i in range(3)]
    waiting = [req(9, 9.0, prompt=5)]
    keys = {0: 0, 1: 0, 2: 0, 9: 1}
    experts = {rid: {k} for rid, k in keys.items()}
    b = batch_of("expert_aware", waiting, running, 6, experts, keys)
    assert contents(b) == ({0}, {9}, 6)


def test_single_oversized_prefill_is_admitted_alone():
    big = req(9, 0.0, prompt=50)
    experts = {9: {3}, 1: {1}, 2: {2}}
    for policy in ("decode_first", "prefill_first", "expert_aware"):
        b = batch_of(policy, [big], [], 16, experts)
        assert contents(b) == (set(), {9}, 50)
    # prefill_first admits it alone, ahead of waiting decodes
    decodes = [req(1, 1.0), req(2, 2.0)]
    assert contents(batch_of("prefill_first", [big], decodes, 16, experts)) == (set(), {9}, 50)
    # decode_first does not let it in beside decodes
    assert contents(batch_of("decode_first", [big], decodes, 16, experts)) == ({1, 2}, set(), 2)
    # expert_aware: its queue (50 tokens) is the longest and the batch is empty: alone
    assert contents(batch_of("expert_aware", [big], decodes, 16, experts)) == (set(), {9}, 50)
    # ... but not once a whole queue has been admitted
    small_first = {9: 0, 1: 1, 2: 1}
    waiting = [big, req(5, 5.0, prompt=60)]
    b = batch_of("expert_aware", waiting, decodes, 16, experts | {5: {5}}, small_first | {5: 1})
    # e1 holds decodes 1, 2 and prefill 5 (62 tokens), e0 the 50-token prefill: e1 first,
    # its decodes fit, prefill 5 does not: stop with the two decodes
    assert contents(b) == ({1, 2}, set(), 2)


def random_state(rng: np.random.Generator, num_experts: int = 8):
    n_run, n_wait = int(rng.integers(0, 30)), int(rng.integers(0, 8))
    reqs = [
        Request(i, float(rng.uniform(0, 10)), int(rng.integers(1, 40)), 8)
        for i in range(n_run + n_wait)
    ]
    experts = {
        r.rid: set(rng.choice(num_experts, size=int(rng.integers(1, 4)), replace=False).tolist())
        for r in reqs
    }
    keys = {rid: int(rng.choice(sorted(es))) for rid, es in experts.items()}
    return reqs[n_run:], reqs[:n_run], experts, keys


@pytest.mark.parametrize("policy", BATCHERS)
def test_budget_never_exceeded_except_a_lone_oversized_prefill(policy):
    rng = np.random.default_rng(11)
    oversized = 0
    for _ in range(400):
        waiting, running, experts, keys = random_state(rng)
        budget = int(rng.integers(1, 48))
        b = batch_of(policy, waiting, running, budget, experts, keys)
        by_rid = {r.rid: r for r in waiting + running}
        assert set(b.prefill) <= {r.rid for r in waiting}
        assert set(b.decode) <= {r.rid for r in running}
        admitted = b.decode + b.prefill
        assert len(set(admitted)) == len(admitted)
        assert b.tokens == len(b.decode) + sum(by_rid[rid].prompt_tokens for rid in b.prefill)
        assert b.experts == frozenset().union(*(experts[rid] for rid in admitted))
        assert b.unique_experts == len(b.experts)
        if b.tokens > budget:
            oversized += 1
            assert b.decode == [] and len(b.prefill) == 1
        if waiting + running:
            assert admitted, "nothing starves: a non-empty state gives a non-empty batch"
    assert oversized > 0  # the exception was exercised


def test_work_item_costs_and_bad_arguments():
    r = req(0, 0.0, prompt=12)
    assert WorkItem(r, "prefill").tokens == 12 and WorkItem(r, "decode").tokens == 1
    with pytest.raises(UserError, match=r"^batcher: .*decode_first, prefill_first, expert_aware"):
        batch_of("fifo", [], [r], 8, {0: {0}})
    for budget in (0, -3, 2.5, True):
        with pytest.raises(UserError, match=r"^max_batch_tokens: "):
            batch_of("decode_first", [], [r], budget, {0: {0}})
    with pytest.raises(ValueError, match="rid"):
        batch_of("decode_first", [r], [r], 8, {0: {0}})


def skewed_unique_experts(num_states: int = 500, num_experts: int = 8, budget: int = 16):
    """Mean unique experts per batch of (decode_first, expert_aware) over random decode queues."""
    rng = np.random.default_rng(2024)
    p = 1.0 / np.arange(1, num_experts + 1)  # Zipf(1) popularity of the next token's expert
    p /= p.sum()
    out = {"decode_first": [], "expert_aware": []}
    for _ in range(num_states):
        n = int(rng.integers(20, 61))
        arrivals = rng.uniform(0, 60, size=n)
        running = [Request(i, float(arrivals[i]), 16, 64) for i in range(n)]
        keys = {i: int(e) for i, e in enumerate(rng.choice(num_experts, size=n, p=p))}
        experts = {i: {k} for i, k in keys.items()}
        for policy in out:
            b = batch_of(policy, [], running, budget, experts, keys)
            assert b.tokens == budget
            out[policy].append(b.unique_experts)
    return {policy: float(np.mean(v)) for policy, v in out.items()}


def test_expert_aware_batches_use_fewer_unique_experts():
    means = skewed_unique_experts()
    print(f"unique experts per batch: {means}")
    assert means["expert_aware"] <= 0.8 * means["decode_first"]
