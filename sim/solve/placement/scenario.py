"""Building the placement problem of a moe-sim training scenario (loads, co-activation, costs)."""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.model import Shape
from sim.solve.placement.problem import PlacementProblem


def from_scenario(scenario, cluster, *, balance_weight: float | None = None,
                  max_experts_per_gpu: int | None = None,
                  gpu_memory_bytes: float | None = None) -> PlacementProblem:
    """The placement problem of a training scenario's first expert-parallel group (GPUs
    0..ep-1, E experts per MoE layer) on ``cluster``.

    * ``source_load`` from ``sim.moe.plan.plan_step``: the token slots each GPU sends to each
      expert (``slots``: after capacity and dropping, with padding and fill-in, i.e. what the
      step moves and computes; capacity is per expert and routing group, so it does not depend
      on the placement), under the default block layout (only locality-aware routers would
      route differently under another placement); ``load`` is its sum over sources.
    * ``coactivation``: the same tokens' top-1 gate choice (argmax logit of
      ``GateGenerator.logits``, or the trace's first expert) at layer l and l+1, counted over
      the routing groups of GPUs 0..ep-1.
    * ``expert_bytes`` = one expert's weights (``sim.model.Shape.expert_params``) x dtype_bytes;
      ``gpu_memory_bytes`` = the GPU's HBM; ``max_experts_per_gpu`` = E / ep (the simulator's
      layout); ``bytes_per_token`` = hidden x dtype_bytes.
    * ``intra_node_cost`` = 1 / the slowest "nvlink" or "hccs" link, ``inter_node_cost`` = 1 /
      the slowest "nic" link (s/byte; = intra on a single server).
    * ``balance_weight`` = ep x forward expert-FFN seconds per token at the roofline's compute
      efficiency: the straggler's time counted for every GPU of the group (GPU-seconds, like
      the link-seconds of the traffic terms).
    """
    from sim.compute.roofline import DEFAULT_EFFICIENCY
    from sim.moe.layout import Layout
    from sim.moe.plan import plan_step

    where = scenario.name
    if scenario.kind != "training":
        raise UserError(f"{where}: model: a placement needs a training scenario (model + moe)")
    model, moe, par, tr = scenario.model, scenario.moe, scenario.parallel, scenario.training
    ep, E = par.expert_model_parallel_size, moe.num_experts
    layout = Layout.build(cluster.num_gpus, ep, E, par.tensor_model_parallel_size, where,
                          par.expert_tensor_parallel_size, cluster.gpus_per_node)
    if layout.etp != 1:
        raise UserError(f"{where}: parallel.expert_tensor_parallel_size: a placement needs "
                        f"whole experts on a GPU (1), got {layout.etp}")
    routing = plan_step(scenario, layout, cluster.node_of)
    source = np.stack([r.slots[:ep] for r in routing]).astype(float)
    tokens = model.micro_batch_size * model.seq_length // layout.tp
    co = _coactivation(scenario, len(routing), tokens, ep, cluster.num_gpus)
    expert_params = Shape.of(model, moe).expert_params
    intra, inter = _link_costs(cluster)
    if balance_weight is None:  # 2 FLOP per weight and token
        per_token_s = 2.0 * expert_params / (
            cluster.gpu.peak_bf16_flops * DEFAULT_EFFICIENCY.flops)
        balance_weight = ep * per_token_s
    return PlacementProblem(
        layers=len(routing), experts=E, gpus=ep, gpu_node=cluster.node_of[:ep].tolist(),
        load=source.sum(axis=1), coactivation=co, source_load=source,
        expert_bytes=float(expert_params * tr.dtype_bytes),
        gpu_memory_bytes=float(gpu_memory_bytes or cluster.gpu.hbm_gib * 2**30),
        max_experts_per_gpu=max_experts_per_gpu or E // ep,
        bytes_per_token=float(model.hidden_size * tr.dtype_bytes),
        inter_node_cost=inter, intra_node_cost=intra, balance_weight=float(balance_weight))


def _coactivation(scenario, n_moe: int, tokens: int, ep: int, gpus: int) -> np.ndarray:
    """(L-1, E, E) top-1 transitions of the tokens of GPUs 0..ep-1 (their routing groups)."""
    E, gating, step = scenario.moe.num_experts, scenario.gating, scenario.training.step
    groups = min(gpus, gating.routing_groups or gpus)
    uses = np.bincount(np.arange(ep) % groups, minlength=groups)
    co = np.zeros((max(n_moe - 1, 0), E, E))
    if gating.trace is not None:
        from sim.workload import load_trace

        trace = load_trace(gating.trace)

        def top1_of(g: int) -> np.ndarray:  # GPU g's trace tokens, as in plan_step
            return trace.experts[:, (np.arange(tokens) + g * tokens) % trace.num_tokens, 0]
    else:
        from sim.workload import GateConfig, GateGenerator

        gen = GateGenerator(n_moe, E, GateConfig.from_settings(gating), scenario.seed)

        def top1_of(g: int) -> np.ndarray:  # routing group g's tokens, as in plan_step
            return gen.logits(step, gen.tokens(step, tokens, group=g), group=g).argmax(axis=2)

    for g in np.flatnonzero(uses):
        top1 = np.asarray(top1_of(int(g)), dtype=np.int64)
        for li in range(n_moe - 1):
            pairs = np.bincount(top1[li] * E + top1[li + 1], minlength=E * E)
            co[li] += uses[g] * pairs.reshape(E, E)
    return co


def _link_costs(cluster) -> tuple[float, float]:
    """(intra, inter) s/byte: 1 / the slowest scale-up ("nvlink"/"hccs") and "nic" link."""
    tier, cap = cluster.links.tier, cluster.links.capacity_Bps
    up, nic = cap[np.isin(tier, ("nvlink", "hccs"))], cap[tier == "nic"]
    if up.size == 0:
        raise UserError(f"{cluster.source or cluster.name}: intra_node: no 'nvlink' or 'hccs' "
                        "links to price GPU-to-GPU traffic inside a server")
    intra = 1.0 / float(up.min())
    return intra, max(intra, 1.0 / float(nic.min())) if nic.size else intra
