"""Fixtures shared by the test files: the ``moesim`` command, small training and serving
scenarios, and one transfer on a fabric."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import simpy
import yaml

REPO = Path(__file__).resolve().parents[1]

#: A small training scenario: 8 GPUs of one DGX H100, 16 experts top-2 over EP 8, two layers.
TRAINING = {
    "name": "t", "seed": 0, "topology": "dgx-h100", "comm_profile": "ideal",
    "model": {"hidden_size": 512, "ffn_hidden_size": 1024, "num_layers": 2,
              "num_attention_heads": 8, "seq_length": 512},
    "moe": {"num_experts": 16, "moe_router_topk": 2},
    "parallel": {"expert_model_parallel_size": 8},
}

#: A small serving scenario: one A100, 8 experts top-1 in every other of 4 layers, 2 requests.
SERVING = {
    "name": "s", "seed": 0, "topology": {"name": "dgx-h100", "gpu": "a100_sxm"},
    "model": {"hidden_size": 256, "ffn_hidden_size": 1024, "num_layers": 4,
              "num_attention_heads": 4, "moe_layer_freq": 2},
    "moe": {"num_experts": 8, "moe_router_topk": 1},
    "gating": {"vocab_size": 1000, "sigma_ctx": 2.0},
    "serving": {"requests": {"poisson": {"n": 2, "rate_per_s": 1000.0, "prompt_tokens": 16,
                                         "output_tokens": 8}},
                "max_running": 1, "attention_overhead_us": 100, "expert_overhead_us": 200,
                "offload": {"h2d_latency_us": 3.0}},
}


#: Sections that put :data:`TRAINING` on two servers of the H100 leaf-spine: 16 experts top-1
#: over EP 16, a skewed gate with inter-layer affinity.
TWO_SERVERS = {"topology": {"name": "h100-leaf-spine", "nodes": 2},
               "moe": {"moe_router_topk": 1}, "parallel": {"expert_model_parallel_size": 16},
               "gating": {"popularity_skew": 1.0, "affinity": 2.0}}


def merged(base: dict, **sections) -> dict:
    """``base`` with ``sections`` merged in one level deep: a mapping updates the base's
    mapping of that name, anything else replaces it."""
    out = copy.deepcopy(base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_moesim(*args: str | Path, cwd: Path = REPO, timeout: float = 300,
               **kw) -> subprocess.CompletedProcess:
    """``moesim ARGS`` in a fresh interpreter (stdout, stderr and the exit status)."""
    return subprocess.run([sys.executable, "-m", "sim.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def moesim() -> Callable[..., subprocess.CompletedProcess]:
    """Runs the ``moesim`` command: ``moesim("run", path, "--out", out)``."""
    return run_moesim


def _writer(tmp_path: Path, base: dict) -> Callable[..., Path]:
    def write(name: str = "s.yaml", **sections) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(merged(base, **sections)))
        return path
    return write


@pytest.fixture
def training_file(tmp_path) -> Callable[..., Path]:
    """Writes :data:`TRAINING` with sections merged in (:func:`merged`); returns the path."""
    return _writer(tmp_path, TRAINING)


@pytest.fixture
def serving_file(tmp_path) -> Callable[..., Path]:
    """Writes :data:`SERVING` with sections merged in (:func:`merged`); returns the path."""
    return _writer(tmp_path, SERVING)


@pytest.fixture
def training_scenario(training_file) -> Callable:
    """``training_scenario(sets=(), **sections)``: the validated :data:`TRAINING` scenario with
    ``sections`` merged in and ``--set`` overrides applied."""
    from sim.scenario import load_scenario

    def load(sets=(), **sections):
        return load_scenario(training_file(**sections), list(sets))
    return load


@pytest.fixture
def routing_plan() -> Callable:
    """``routing_plan(scenario)``: the routing plan of a training scenario's step on its own
    topology (one ``LayerRouting`` per MoE layer, default block placement)."""
    from sim.moe.layout import Layout
    from sim.moe.plan import plan_step
    from sim.topology import load_topology

    def plan(sc):
        cl = load_topology(sc.topology.name, sc.topology.overrides)
        lay = Layout.build(cl.num_gpus, sc.parallel.expert_model_parallel_size,
                           sc.moe.num_experts)
        return plan_step(sc, lay, cl.node_of)
    return plan


@pytest.fixture
def transfer() -> Callable:
    """``transfer(cluster, src, dst, nbytes, rate_cap=None, delay_s=0, **fabric_options)`` ->
    (arrival times, fabric): one batch of flows on a fresh fabric, from time 0 until the last
    arrives."""
    from sim.network import Fabric, FabricOptions

    def run(cluster, src, dst, nbytes, rate_cap=None, delay_s=0.0, **opts):
        env = simpy.Environment()
        fab = Fabric(env, cluster, FabricOptions(**opts))
        ev = fab.transfer(src, dst, nbytes, rate_cap, delay_s)
        env.run(ev)
        return ev.value, fab
    return run
