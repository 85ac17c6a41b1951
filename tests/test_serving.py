"""The serving loop: offload modes, copies on the PCIe link, caches, memory, latency metrics."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sim.errors import UserError
from sim.scenario.load import load_scenario
from sim.serving.engine import run_serving
from sim.topology import load_topology
from tests.conftest import SERVING


def run(tmp_path, mode="gpu_only", sets=(), **serving):
    data = yaml.safe_load(yaml.safe_dump(SERVING))
    data["serving"].update(serving)
    data["serving"]["offload"]["mode"] = mode
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    sc = load_scenario(path, list(sets))
    return sc, run_serving(sc, load_topology(sc.topology.name, sc.topology.overrides), str(path))


def _expert_bytes(sc):
    return 2 * sc.model.hidden_size * sc.model.ffn_hidden_size * sc.training.dtype_bytes


def test_on_demand_step_is_gpu_only_plus_the_copies(tmp_path):
    _, gpu = run(tmp_path, "gpu_only")
    sc, dem = run(tmp_path, "on_demand")
    bw = load_topology("dgx-h100", {"gpu": "a100_sxm"}).gpu.pcie_bandwidth_Bps
    copy = 3e-6 + _expert_bytes(sc) / bw  # one expert per MoE layer (top-1, one request)
    n_moe = 2
    for a, b in zip(gpu.steps, dem.steps, strict=True):
        if a["decode"] and not a["prefill"]:  # a decode step copies one expert per layer
            assert (b["end_s"] - b["start_s"]) - (a["end_s"] - a["start_s"]) == pytest.approx(
                n_moe * copy, rel=1e-9)
    assert dem.summary["expert_copies"] > 0 and gpu.summary["expert_copies"] == 0


def test_pregated_hides_copies_behind_expert_compute(tmp_path):
    _, gpu = run(tmp_path, "gpu_only")
    _, dem = run(tmp_path, "on_demand")
    _, pre = run(tmp_path, "pregated")
    g, d, p = (r.summary["moe_block_mean_s"] for r in (gpu, dem, pre))
    assert g < p < d
    # every copy of a later block is overlapped with the previous block's experts (200 us)
    sc = load_scenario_from(tmp_path)
    bw = load_topology("dgx-h100", {"gpu": "a100_sxm"}).gpu.pcie_bandwidth_Bps
    copy = 3e-6 + _expert_bytes(sc) / bw
    assert d - p == pytest.approx(0.5 * min(copy, 200e-6), rel=0.05)  # 1 of 2 blocks hidden


def load_scenario_from(tmp_path):
    return load_scenario(tmp_path / "s.yaml")


def test_a_copy_never_starts_before_its_experts_are_known(tmp_path):
    for mode in ("on_demand", "pregated", "prefetch_all"):
        _, res = run(tmp_path, mode)
        assert res.loads
        for load in res.loads:
            assert load["issued_s"] >= load["known_s"] - 1e-15


def test_with_everything_resident_every_mode_gives_the_same_latency(tmp_path):
    lat = {}
    for mode in ("gpu_only", "on_demand", "prefetch_all", "pregated"):
        _, res = run(tmp_path, mode, offload={"mode": mode, "cache_experts_per_layer": 8,
                                              "h2d_latency_us": 3.0})
        lat[mode] = [r["latency_s"] for r in res.requests]
        assert res.summary["expert_copies"] == 0
    for mode in lat:
        assert lat[mode] == pytest.approx(lat["gpu_only"], rel=1e-12)


def test_memory_never_exceeds_hbm(tmp_path):
    # 48 layers of 64 experts of 2 x 4096 x 16384 x 2 B = 268 MB each: 412 GB, far above 80 GiB
    big = ["model.hidden_size=4096", "model.ffn_hidden_size=16384", "model.num_layers=48",
           "model.num_attention_heads=32", "moe.num_experts=64"]
    with pytest.raises(UserError, match=r"serving.offload: .* GiB needed on the GPU .* 80 GiB"):
        run(tmp_path, "gpu_only", big)
    _, res = run(tmp_path, "pregated", big)
    hbm = 80 * 2**30
    assert 0 < res.summary["peak_memory_bytes"] <= hbm
    assert res.summary["decode_peak_memory_bytes"] <= res.summary["peak_memory_bytes"]


def test_decode_memory_follows_the_buffers_of_each_mode(tmp_path):
    mem = {m: run(tmp_path, m)[1].summary["decode_peak_memory_bytes"]
           for m in ("gpu_only", "on_demand", "pregated", "prefetch_all")}
    sc = load_scenario_from(tmp_path)
    e = _expert_bytes(sc)
    # gpu_only holds all 2 x 8 experts; on_demand one block's; pregated two; prefetch_all 1 + 8
    assert mem["gpu_only"] - mem["on_demand"] == pytest.approx(15 * e, rel=0.01)
    assert mem["pregated"] - mem["on_demand"] == pytest.approx(e, rel=0.01)
    assert mem["prefetch_all"] - mem["on_demand"] == pytest.approx(8 * e, rel=0.01)


def test_cache_keeps_experts_and_saves_copies(tmp_path):
    copies, hits = [], []
    for c in (0, 2, 4):
        _, res = run(tmp_path, "on_demand", offload={"mode": "on_demand",
                                                     "cache_experts_per_layer": c})
        copies.append(res.summary["expert_copies"])
        hits.append(res.summary["cache_hit_rate"])
    assert copies[0] > copies[1] > copies[2]
    assert hits[0] == 0.0 and hits[0] < hits[1] < hits[2]


def test_latency_metrics_are_consistent(tmp_path):
    _, res = run(tmp_path, "gpu_only", requests={"poisson": {
        "n": 12, "rate_per_s": 50.0, "prompt_tokens": [8, 32], "output_tokens": [4, 16]}},
        max_running=4)
    s = res.summary
    lat = np.array([r["latency_s"] for r in res.requests])
    assert s["requests"] == 12 and len(res.requests) == 12
    assert s["latency_mean_s"] == pytest.approx(lat.mean())
    assert s["latency_p50_s"] <= s["latency_p95_s"] <= s["latency_p99_s"] <= lat.max()
    for r in res.requests:
        assert r["arrival_s"] < r["first_token_s"] <= r["finish_s"]
        assert r["normalized_latency_s"] == pytest.approx(r["latency_s"] / r["output_tokens"])
    steps = res.steps
    assert all(a["end_s"] <= b["start_s"] + 1e-15 for a, b in zip(steps, steps[1:], strict=False))
    # every output token is produced by exactly one step (prefill makes the first)
    assert sum(st["prefill"] + st["decode"] for st in steps) == sum(
        r["output_tokens"] for r in res.requests)


def test_same_seed_same_run(tmp_path):
    a = run(tmp_path, "pregated")[1].summary
    b = run(tmp_path, "pregated")[1].summary
    assert a == b


def test_serving_cli_writes_files(moesim, tmp_path):
    data = yaml.safe_load(yaml.safe_dump(SERVING))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    proc = moesim("run", path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "mean latency" in proc.stdout and "cache hit rate" in proc.stdout
    assert (out / "requests.csv").read_text().startswith("rid,arrival_s")
    assert (out / "steps.csv").exists() and (out / "summary.json").exists()


def test_on_demand_decode_step_by_hand(tmp_path):
    # one request, no prefill in the step: every layer is roofline + fixed costs, and each MoE
    # layer adds the copy of its one expert (start-up + bytes / PCIe) on the critical path
    from sim.compute import dense_layer_time_s, expert_ffn_time_s

    sc, res = run(tmp_path, "on_demand", requests={"poisson": {
        "n": 1, "rate_per_s": 1000.0, "prompt_tokens": 16, "output_tokens": 4}})
    m, spec = sc.model, load_topology("dgx-h100", {"gpu": "a100_sxm"}).gpu
    step = res.steps[1]  # the first decode step: context = 16 prompt + 1 generated token
    assert (step["prefill"], step["decode"]) == (0, 1)
    copy = 3e-6 + _expert_bytes(sc) / spec.pcie_bandwidth_Bps
    expect = 0.0
    for is_moe in m.moe_layers():
        expect += float(dense_layer_time_s(
            1, 17, m.hidden_size, m.num_attention_heads, spec,
            ffn_hidden=None if is_moe else m.ffn_hidden_size,
            num_experts=8 if is_moe else None, query_len=1, dtype_bytes=2)) + 100e-6 + 200e-6
        if is_moe:
            expect += copy + float(expert_ffn_time_s(1, m.hidden_size, m.ffn_hidden_size, spec,
                                                     False, 2))
    assert step["end_s"] - step["start_s"] == pytest.approx(expect, rel=1e-9)


def test_engine_belady_keeps_what_the_queue_needs(tmp_path):
    rates = {}
    for policy in ("lru", "belady"):
        _, res = run(tmp_path, "on_demand", offload={"mode": "on_demand",
                                                     "cache_experts_per_layer": 2,
                                                     "cache_policy": policy},
                     requests={"poisson": {"n": 8, "rate_per_s": 200.0, "prompt_tokens": 8,
                                           "output_tokens": 24}}, max_running=4)
        rates[policy] = res.summary["cache_hit_rate"]
    assert rates["belady"] > rates["lru"]  # the queue's next tokens are known: kept


TRAINING_ONLY_VALUES = {
    "model.seq_length": 128, "model.micro_batch_size": 2,
    "moe.moe_expert_capacity_factor": 1.0, "moe.critical_capacity_delta": 0.05,
    "moe.moe_token_drop_policy": "position", "moe.moe_pad_expert_input_to_capacity": True,
    "moe.capacity_convention": "gshard", "moe.rectify.intra_gpu": True,
    "parallel.expert_model_parallel_size": 8, "training.grad_dtype_bytes": 2,
    "training.overlap_grad_reduce": False, "training.a2a_algorithm": "bilevel",
    "training.step": 3, "training.dispatcher": "deepep", "training.gemm_dtype": "fp8",
    "gating.trace": "t.npz", "gating.routing_groups": 4,
    "placement.solver": "greedy", "fabric.rate_tolerance": 0.01, "comm_profile": "ideal",
}


def test_every_field_serving_ignores_is_listed_with_a_value_here():
    from sim.scenario.serving import TRAINING_ONLY

    assert {next(p for p in TRAINING_ONLY if k == p or k.startswith(p + "."))
            for k in TRAINING_ONLY_VALUES} == set(TRAINING_ONLY)


@pytest.mark.parametrize("key", sorted(TRAINING_ONLY_VALUES))
def test_a_training_only_field_in_a_serving_scenario_is_refused(tmp_path, key):
    from sim.scenario.serving import TRAINING_ONLY

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SERVING))
    value = TRAINING_ONLY_VALUES[key]
    field = next(p for p in TRAINING_ONLY if key == p or key.startswith(p + "."))
    with pytest.raises(UserError) as e:
        load_scenario(path, [f"{key}={yaml.safe_dump(value).splitlines()[0]}"])
    msg = str(e.value)
    assert msg.startswith(f"{path}: {field}: not used by a serving run (")
    assert TRAINING_ONLY[field] in msg and "\n" not in msg


@pytest.mark.parametrize(("sets", "ok"), [
    (["moe.router.name=switch"], True), (["moe.router.name=topk"], True),
    (["moe.router.name=hash"], False), (["moe.router.name=expert_choice"], False),
    (["moe.router.params={normalize: false}"], False),
    (["moe.router.name=switch", "moe.moe_router_topk=2"], False),
])
def test_serving_honours_the_top_k_routers_and_refuses_the_others(tmp_path, sets, ok):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SERVING))
    if ok:
        assert load_scenario(path, sets).moe.router.name in ("switch", "topk")
        return
    with pytest.raises(UserError, match=rf"^{path}: moe\.router: a serving run routes each "
                                        "token to its moe_router_topk best experts"):
        load_scenario(path, sets)


def test_switch_and_topk_serve_alike_at_top_1(tmp_path):
    _, a = run(tmp_path, "on_demand", sets=["moe.router.name=switch"])
    _, b = run(tmp_path, "on_demand", sets=["moe.router.name=topk"])
    assert a.summary == b.summary


def test_a_serving_cli_mistake_is_one_line_and_writes_nothing(moesim, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SERVING))
    proc = moesim("run", path, "--set", "gating.trace=t.npz", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "gating.trace: not used by a serving run" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_serving_loop_caches_like_the_offline_cache(tmp_path):
    """One cache: a serving run's hits equal a replay of its own expert sets through
    sim.serving.cache, layer by layer (LRU, 2 experts kept, on demand)."""
    import sim.serving.engine as engine
    from sim.serving.cache import ExpertCache, replay

    own = [k for k, v in vars(engine).items() if isinstance(v, type) and "Cache" in k]
    assert own == ["ExpertCache"] and engine.ExpertCache is ExpertCache  # no cache of its own
    sc, res = run(tmp_path, "on_demand", ["serving.offload.cache_experts_per_layer=2"])
    assert res.summary["expert_copies"] > 0
    layers = len(res.expert_steps[0])
    hits = misses = 0
    for li in range(layers):
        stats = replay([sorted(step[li]) for step in res.expert_steps], 2, "lru", overflow=True)
        hits, misses = hits + stats.hits, misses + stats.misses
    assert res.summary["cache_hit_rate"] == pytest.approx(hits / (hits + misses))
    assert 0 < hits < hits + misses


def test_belady_oracle_is_built_only_for_belady(tmp_path, monkeypatch):
    from sim.serving.engine import _Server

    calls = []
    original = _Server._next_use
    monkeypatch.setattr(_Server, "_next_use",
                        lambda self, *a: calls.append(a) or original(self, *a))
    lru = run(tmp_path, "on_demand", ["serving.offload.cache_experts_per_layer=1"])[1]
    assert calls == []
    belady = run(tmp_path, "on_demand", ["serving.offload.cache_experts_per_layer=1",
                                         "serving.offload.cache_policy=belady"])[1]
    assert calls and belady.summary["cache_hit_rate"] >= lru.summary["cache_hit_rate"]
