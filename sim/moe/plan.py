"""Routing of one training step, GPU by GPU and layer by layer, before anything is timed.

For each MoE layer and each GPU (one routing group = the GPU's micro-batch): gate logits ->
router -> capacity and dropping -> token slots sent to each expert. The result is plain arrays
the step process times on the fabric.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sim.moe import rectify
from sim.moe.capacity import apply_capacity, dispatch_slots, routing_group_capacity
from sim.moe.layout import Layout
from sim.rng import stream
from sim.routing import RouterContext, route
from sim.routing.common import softmax

#: Bins of a token's position in its sequence for the drop-by-position counts (deciles).
POSITION_BINS = 10


@dataclass(frozen=True)
class LayerRouting:
    """One MoE layer. Shapes: P = GPUs, E = experts.

    * ``routed`` (P, E): (token, expert) pairs each GPU's router chose
    * ``kept`` (P, E): pairs that survived capacity (the rest pass through the residual)
    * ``slots`` (P, E): token slots actually sent (``kept`` + ``filled``, or the capacity when
      padded)
    * ``capacity``: slots per expert per routing group, None when dropless
    * ``filled`` (P, E): fill-in tokens in slots the top-k left empty (Rectify FR), else zeros
    * ``local`` (P, E): tokens GPU p processes itself on its expert e after losing their slots
      (Rectify IR; e is on p), else zeros
    * ``no_expert`` (P,): tokens of GPU p's routing group left with no expert after capacity
      (every choice dropped, or, with expert choice, picked by none); they pass through the
      residual. Counted before Rectify's corrections.
    * ``unit_tokens`` (P, ep) and ``node_tokens`` (P, nodes of an EP group): distinct tokens of
      GPU p with a kept expert on unit j of its EP group / on the group's n-th server (the
      ``deepep`` dispatcher's counts; None for the others)
    * ``position_routed``, ``position_kept`` (P, POSITION_BINS): GPU p's routed and kept pairs
      by where their token stands in its sequence (bin b: positions b/B to (b+1)/B of the
      GPU's sequence shard, B = POSITION_BINS), else zeros
    """

    routed: np.ndarray
    kept: np.ndarray
    slots: np.ndarray
    capacity: int | None
    filled: np.ndarray | None = None
    local: np.ndarray | None = None
    stats: dict = field(default_factory=dict)
    """Router-specific statistics, mean over routing groups (e.g. SMILE's balance terms)."""
    no_expert: np.ndarray | None = None
    unit_tokens: np.ndarray | None = None
    node_tokens: np.ndarray | None = None
    position_routed: np.ndarray | None = None
    position_kept: np.ndarray | None = None

    def __post_init__(self):
        for name in ("filled", "local"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros_like(self.routed))
        for name in ("position_routed", "position_kept"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros((self.routed.shape[0], POSITION_BINS),
                                                        np.int64))
        if self.no_expert is None:
            object.__setattr__(self, "no_expert", np.zeros(self.routed.shape[0], np.int64))

    @property
    def drop_fraction(self) -> float:
        total = self.routed.sum()
        return float((total - self.kept.sum()) / total) if total else 0.0

    @property
    def padding_fraction(self) -> float:
        sent = self.slots.sum()
        return float((sent - self.kept.sum() - self.filled.sum()) / sent) if sent else 0.0

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
              progress=None, microbatch: int = 0,
              only: set[int] | None = None) -> list[LayerRouting]:
    """Route every MoE layer of ``scenario`` on every GPU; one LayerRouting per MoE layer.

    ``progress(stage, done, total)`` is called after each routing group when given.
    ``microbatch``: which micro-batch of the step (0 = the step's first; each has its own
    tokens and gate noise); ``only``: the MoE layer indices to route (the others come back
    with no tokens routed), None = all."""
    from sim.workload import GateConfig, GateGenerator

    model, moe, gating = scenario.model, scenario.moe, scenario.gating
    if gating.trace is not None:
        return _plan_from_trace(scenario, layout, gpu_node, microbatch)
    n_moe = sum(model.moe_layers())
    if n_moe == 0:  # a dense model: nothing to route
        return []
    tokens = model.micro_batch_size * model.seq_length // layout.tp  # sequence-parallel shard
    e, k = moe.num_experts, moe.moe_router_topk
    gen = GateGenerator(n_moe, e, GateConfig.from_settings(gating), scenario.seed)
    cap = routing_group_capacity(moe, model.hidden_size, tokens, k)
    rng = stream(scenario.seed, "routing")
    p = layout.gpus
    groups = min(p, gating.routing_groups or p)
    counts = _Counts(n_moe, groups, e, _unit_nodes(scenario, layout, gpu_node),
                     model.seq_length // layout.tp)
    step = scenario.training.step
    expert_gpu = [layout.expert_gpu(np.arange(p), li) for li in range(n_moe)]
    logits = None  # one buffer for every group's logits: fresh memory costs more than filling
    for g in range(groups):
        ids = gen.tokens(step, tokens, group=g + microbatch * groups)
        logits = gen.logits(step, ids, out=logits, group=g + microbatch * groups)
        ctx = RouterContext(
            topk=k, rng=rng, token_ids=ids, expert_gpu=expert_gpu[0][g], gpu_node=gpu_node,
            token_gpu=np.full(tokens, g), capacity=cap, params=dict(moe.router.params))
        for li in range(n_moe):
            if only is not None and li not in only:
                continue
            if layout.placement is not None:
                ctx = replace(ctx, expert_gpu=expert_gpu[li][g])
            a = route(moe.router.name, logits[li], ctx)
            counts.add(li, g, a, logits[li], cap, moe, expert_gpu[li][g] == g,
                       layout.expert_unit(li))
            if moe.router.name in ROUTER_STATS:
                counts.stat(li, ROUTER_STATS[moe.router.name](a, logits[li], ctx))
        if progress is not None:
            progress("routing", g + 1, groups)
    return counts.layers(cap, moe.moe_pad_expert_input_to_capacity, p)


def _smile_stats(a, logits, ctx) -> dict:
    from sim.routing.smile import balance_terms

    node, gpu = balance_terms(a, logits, ctx)
    return {"smile_node_balance": node, "smile_gpu_balance": gpu}


#: Statistics some routers report per routing group: name -> f(assignment, logits, ctx) -> dict.
ROUTER_STATS = {"smile": _smile_stats}


def _unit_nodes(scenario, layout: Layout, gpu_node: np.ndarray) -> np.ndarray | None:
    """(ep,): the server of each unit of an EP group, counted from the group's first server,
    when the dispatcher needs distinct tokens per server (deepep); the same for every group."""
    if scenario.training.dispatcher != "deepep":
        return None
    from sim.errors import UserError

    nodes = gpu_node[layout.unit_gpu(np.arange(layout.gpus))]
    rel = nodes - nodes.min(axis=1, keepdims=True)
    if (rel != rel[0]).any():
        raise UserError("training.dispatcher: deepep needs expert-parallel groups that lie "
                        "on whole servers alike (every group's units on its servers in the "
                        "same pattern)")
    return rel[0]


class _Counts:
    """Per (layer, routing group, expert) counts of routed, kept, filled-in and local tokens;
    with ``unit_node`` (the deepep dispatcher) distinct tokens per unit and per server too;
    routed and kept pairs by position bin (a group's token t stands at t mod ``shard`` of its
    sequence shard of ``shard`` tokens)."""

    def __init__(self, n_moe: int, groups: int, e: int, unit_node: np.ndarray | None = None,
                 shard: int = 1):
        self.routed, self.kept, self.filled, self.local = (
            np.zeros((n_moe, groups, e), dtype=np.int64) for _ in range(4))
        self.shard = max(int(shard), 1)
        self.pos_routed, self.pos_kept = (
            np.zeros((n_moe, groups, POSITION_BINS), dtype=np.int64) for _ in range(2))
        self.no_expert = np.zeros((n_moe, groups), dtype=np.int64)
        self.stats: list[dict[str, list[float]]] = [{} for _ in range(n_moe)]
        self.unit_node = unit_node
        if unit_node is not None:
            self.unit_tokens = np.zeros((n_moe, groups, unit_node.size), dtype=np.int64)
            self.node_tokens = np.zeros((n_moe, groups, int(unit_node.max()) + 1),
                                        dtype=np.int64)

    def stat(self, li: int, values: dict) -> None:
        for key, value in values.items():
            self.stats[li].setdefault(key, []).append(float(value))

    def add(self, li: int, g: int, a, logits, cap, moe, local_experts: np.ndarray,
            expert_unit: np.ndarray | None = None) -> None:
        """Capacity and (optional) rectification of one group's assignment ``a``;
        ``expert_unit`` (E,): the unit of each expert (for the distinct counts)."""
        kept = apply_capacity(a, cap, moe.moe_token_drop_policy, moe.capacity_convention)
        self.routed[li, g] = a.expert_load()
        self.kept[li, g] = kept.load
        kept_tokens = np.asarray(a.token)[kept.kept]
        self.no_expert[li, g] = a.num_tokens - np.count_nonzero(
            np.bincount(kept_tokens, minlength=a.num_tokens))
        where = np.asarray(a.token) % self.shard * POSITION_BINS // self.shard
        self.pos_routed[li, g] = np.bincount(where, minlength=POSITION_BINS)
        self.pos_kept[li, g] = np.bincount(where[kept.kept], minlength=POSITION_BINS)
        if self.unit_node is not None:
            from sim.moe.dispatchers import distinct_tokens

            units = expert_unit[np.asarray(a.expert)[kept.kept]]
            self.unit_tokens[li, g], self.node_tokens[li, g] = distinct_tokens(
                kept_tokens, units, self.unit_node.size, self.unit_node)
        rect = moe.rectify
        if rect.fill_in or rect.intra_gpu:
            probs = softmax(np.asarray(logits, dtype=float))
            if rect.fill_in:
                self.filled[li, g] = rectify.fill_in(a, kept, probs, cap)
            if rect.intra_gpu:
                self.local[li, g] = rectify.intra_gpu(a, kept, probs, local_experts,
                                                      rect.unrouted)

    def layers(self, cap, pad, p: int) -> list[LayerRouting]:
        """LayerRoutings for ``p`` GPUs; GPU g takes routing group g mod (groups counted)."""
        routed, kept, filled, local = self.routed, self.kept, self.filled, self.local
        no_expert, pos_routed, pos_kept = self.no_expert, self.pos_routed, self.pos_kept
        distinct = self.unit_node is not None
        unit_tokens = self.unit_tokens if distinct else None
        node_tokens = self.node_tokens if distinct else None
        groups = routed.shape[1]
        if groups < p:
            reuse = np.arange(p) % groups
            routed, kept, filled, local = (x[:, reuse] for x in (routed, kept, filled, local))
            no_expert = no_expert[:, reuse]
            pos_routed, pos_kept = pos_routed[:, reuse], pos_kept[:, reuse]
            if distinct:
                unit_tokens, node_tokens = unit_tokens[:, reuse], node_tokens[:, reuse]
        layers = []
        for li in range(routed.shape[0]):
            sent = kept[li] + filled[li]
            if pad:
                if cap is None:  # dropless but padded: everyone pads to the largest load
                    slots = np.full(sent.shape, sent.max())
                else:
                    slots = np.stack([dispatch_slots(sent[g], cap, True) for g in range(p)])
            else:
                slots = sent.copy()
            stats = {k: float(np.mean(v)) for k, v in self.stats[li].items()}
            layers.append(LayerRouting(
                routed[li], kept[li], slots, cap, filled[li], local[li], stats, no_expert[li],
                unit_tokens[li] if distinct else None, node_tokens[li] if distinct else None,
                pos_routed[li], pos_kept[li]))
        return layers


def _plan_from_trace(scenario, layout: Layout, gpu_node,
                     microbatch: int = 0) -> list[LayerRouting]:
    """Replay a recorded routing trace: GPU g takes the trace's tokens g*S .. (g+1)*S - 1
    (micro-batch i: shifted by i x groups x S), wrapping around when the trace is shorter; no
    generator, no router, same capacity rules."""
    from sim.errors import UserError
    from sim.routing import Assignment
    from sim.workload import load_trace

    model, moe = scenario.model, scenario.moe
    trace = load_trace(scenario.gating.trace)
    n_moe = sum(model.moe_layers())
    where = f"{scenario.gating.trace}"
    if trace.num_layers != n_moe:
        raise UserError(f"{where}: experts: the trace has {trace.num_layers} layers, the model "
                        f"has {n_moe} MoE layers")
    if trace.num_experts != moe.num_experts:
        raise UserError(f"{where}: num_experts: the trace has {trace.num_experts}, the scenario "
                        f"says moe.num_experts = {moe.num_experts}")
    tokens = model.micro_batch_size * model.seq_length // layout.tp
    e, k = moe.num_experts, trace.top_k
    cap = routing_group_capacity(moe, model.hidden_size, tokens, k)
    if moe.rectify.fill_in or moe.rectify.intra_gpu:
        raise UserError(f"{where}: moe.rectify needs every expert's routing probability, which "
                        "a trace does not record; use the gate generator")
    p = layout.gpus
    groups = min(p, scenario.gating.routing_groups or p)
    counts = _Counts(n_moe, groups, e, _unit_nodes(scenario, layout, np.asarray(gpu_node)),
                     model.seq_length // layout.tp)
    rows = np.repeat(np.arange(tokens), k)
    choice = np.tile(np.arange(k), tokens)
    for g in range(groups):
        idx = (np.arange(tokens) + (g + microbatch * groups) * tokens) % trace.num_tokens
        for li in range(n_moe):
            score = trace.scores[li, idx].ravel().astype(float)
            a = Assignment(rows, trace.experts[li, idx].ravel(), score, choice, score, tokens, e)
            counts.add(li, g, a, None, cap, moe, np.zeros(e, dtype=bool),
                       layout.expert_unit(li))
    return counts.layers(cap, moe.moe_pad_expert_input_to_capacity, p)


def drop_by_position(layers: list[LayerRouting]) -> list[float]:
    """Dropped share of the routed pairs in each position bin of the sequence (first bin first),
    over ``layers`` and all GPUs; 0 for a bin with no pair."""
    routed = sum((r.position_routed.sum(axis=0) for r in layers), np.zeros(POSITION_BINS))
    kept = sum((r.position_kept.sum(axis=0) for r in layers), np.zeros(POSITION_BINS))
    return [float((n - k) / n) if n else 0.0 for n, k in zip(routed, kept, strict=True)]
