"""Routing of one training step, GPU by GPU and layer by layer, before anything is timed.

For each MoE layer and each GPU (one routing group = the GPU's micro-batch): gate logits ->
router -> capacity and dropping -> token slots sent to each expert. The result is plain arrays
the step process times on the fabric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.moe.capacity import apply_capacity, dispatch_slots, expert_capacity
from sim.moe.layout import Layout
from sim.rng import stream
from sim.routing import RouterContext, route


@dataclass(frozen=True)
class LayerRouting:
    """One MoE layer. Shapes: P = GPUs, E = experts.

    * ``routed`` (P, E): (token, expert) pairs each GPU's router chose
    * ``kept`` (P, E): pairs that survived capacity (the rest pass through the residual)
    * ``slots`` (P, E): token slots actually sent (``kept``, or the capacity when padded)
    * ``capacity``: slots per expert per routing group, None when dropless
    """

    routed: np.ndarray
    kept: np.ndarray
    slots: np.ndarray
    capacity: int | None

    @property
    def drop_fraction(self) -> float:
        total = self.routed.sum()
        return float((total - self.kept.sum()) / total) if total else 0.0

    @property
    def padding_fraction(self) -> float:
        sent = self.slots.sum()
        return float((sent - self.kept.sum()) / sent) if sent else 0.0

    @property
    def expert_load(self) -> np.ndarray:
        """(E,) pairs routed to each expert, summed over all GPUs."""
        return self.routed.sum(axis=0)

    @property
    def imbalance(self) -> float:
        """max / mean of the routed load per expert."""
        load = self.expert_load
        return float(load.max() / load.mean()) if load.sum() else 1.0


def plan_step(scenario, layout: Layout, gpu_node: np.ndarray,
              progress=None) -> list[LayerRouting]:
    """Route every MoE layer of ``scenario`` on every GPU; one LayerRouting per MoE layer.

    ``progress(stage, done, total)`` is called after each routing group when given."""
    from sim.workload import GateConfig, GateGenerator

    model, moe, gating = scenario.model, scenario.moe, scenario.gating
    n_moe = sum(model.moe_layers())
    tokens = model.micro_batch_size * model.seq_length
    e, k = moe.num_experts, moe.moe_router_topk
    cfg = GateConfig(**{f: getattr(gating, f) for f in (
        "vocab_size", "zipf_exponent", "alpha_id", "sigma_ctx", "popularity_skew",
        "collapse_fraction", "affinity", "temporal_locality", "drift", "domain_shift")})
    gen = GateGenerator(n_moe, e, cfg, scenario.seed)
    cap = expert_capacity(moe.capacity_convention, tokens, e, k, moe.moe_expert_capacity_factor)
    rng = stream(scenario.seed, "routing")
    p = layout.gpus
    routed = np.zeros((n_moe, p, e), dtype=np.int64)
    kept = np.zeros((n_moe, p, e), dtype=np.int64)
    step = scenario.training.step
    expert_gpu = layout.expert_gpu(np.arange(p))
    groups = min(p, gating.routing_groups or p)
    for g in range(groups):
        ids = gen.tokens(step, tokens, group=g)
        logits = gen.logits(step, ids, group=g)
        ctx = RouterContext(
            topk=k, rng=rng, token_ids=ids, expert_gpu=expert_gpu[g], gpu_node=gpu_node,
            token_gpu=np.full(tokens, g), capacity=cap, params=dict(moe.router.params))
        for li in range(n_moe):
            a = route(moe.router.name, logits[li], ctx)
            routed[li, g] = a.expert_load()
            kept[li, g] = apply_capacity(a, cap, moe.moe_token_drop_policy,
                                         moe.capacity_convention).load
        if progress is not None:
            progress("routing", g + 1, groups)
    if groups < p:  # GPU g reuses the routing of group g mod groups
        reuse = np.arange(p) % groups
        routed, kept = routed[:, reuse], kept[:, reuse]
    layers = []
    for li in range(n_moe):
        if moe.moe_pad_expert_input_to_capacity:
            if cap is None:  # dropless but padded: everyone pads to the largest load
                slots = np.full((p, e), kept[li].max())
            else:
                slots = np.stack([dispatch_slots(kept[li, g], cap, True) for g in range(p)])
        else:
            slots = kept[li].copy()
        layers.append(LayerRouting(routed[li], kept[li], slots, cap))
    return layers
