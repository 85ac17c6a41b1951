"""The serving loop: requests -> batches -> model steps, layer by layer, with expert offload.

One GPU serves (the first of the topology; the rest of the cluster is not used). A SimPy process
forms a batch (``sim.serving.batching``), runs one model step over every layer and repeats while
requests remain. Per layer: attention (+ router, or the dense FFN) from the roofline for the
batch's prefill tokens and decode rows; per MoE layer: the experts the batch's tokens chose
(precomputed per request from the seeded gate generator) and their FFNs. Expert weights that are
not resident come from host memory over the GPU's PCIe link, which is a link of a small fabric
(host endpoint <-> GPU) so concurrent copies share it max-min fairly.

When copies happen (``Offload.mode``):

* ``gpu_only``: never; every expert is resident (the run is refused when that exceeds HBM).
* ``on_demand``: after the block's gate, copy the selected experts that are missing, wait, compute.
* ``prefetch_all``: while block N computes its experts, copy every expert of block N+1.
* ``pregated``: while block N computes, copy the experts block N+1 will use (known one block
  ahead: Pre-gated MoE's pre-gate, Read-ME's lookahead). In both prefetching modes the first MoE
  block of a step copies its own experts on the critical path, as in the Pre-gated artifact.

Memory: the non-expert weights (attention, routers, dense FFNs, a tied embedding of
``gating.vocab_size`` x hidden) stay on the GPU; each MoE layer keeps at most
``cache_experts_per_layer`` experts after use, in an overflowing :class:`ExpertCache`
(``sim.serving.cache``: policy LRU, LFU, random, or Belady with the future known from the queued
requests' routing, an oracle built only for that policy); the experts a layer is using or
prefetching sit in working buffers on top. Peak GPU memory = non-expert weights + KV cache of
the running requests + every resident and in-flight expert, sampled at each copy and each step;
a mode whose peak exceeds HBM is a UserError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import simpy

from sim.compute import dense_layer_time_s, expert_ffn_time_s
from sim.errors import UserError
from sim.model import Shape
from sim.network import Fabric, FabricOptions
from sim.rng import stream
from sim.serving.batching import WorkItem, form_batch
from sim.serving.cache import ExpertCache
from sim.serving.requests import Request
from sim.topology.cluster import Cluster

GIB = 2**30


@dataclass
class ServingResult:
    """Summary (SI units), one row per request, one row per model step."""

    summary: dict
    requests: list[dict]
    steps: list[dict]
    expert_steps: list[list[frozenset]] = field(default_factory=list)
    """Per model step, per MoE layer: the experts used (for offline cache studies)."""
    loads: list[dict] = field(default_factory=list)
    """Every expert copy batch: layer, issued_s, known_s (when its experts were chosen)."""


def offload_fabric(env: simpy.Environment, cluster: Cluster, efficiency: float,
                   latency_s: float) -> Fabric:
    """A fabric of the serving GPU and its host memory: rank 0 = the GPU, rank 1 = host DRAM,
    one full-duplex PCIe link at ``efficiency`` x the catalog bandwidth."""
    g = nx.DiGraph()
    g.add_node("gpu", kind="gpu", rank=0, node=0, local_rank=0)
    g.add_node("host", kind="gpu", rank=1, node=0, local_rank=1)
    bw = cluster.gpu.pcie_bandwidth_Bps * efficiency
    for u, v in (("gpu", "host"), ("host", "gpu")):
        g.add_edge(u, v, bandwidth_Bps=bw, latency_s=latency_s, tier="pcie")
    return Fabric(env, Cluster.from_graph("host-device", g, cluster.gpu),
                  FabricOptions(rate_tolerance=0.0))


def route_requests(scenario, requests: list[Request]) -> dict[int, np.ndarray]:
    """rid -> (moe_layers, tokens * k) int16: the experts of each token of the request at each
    MoE layer (top-k flattened into the last axis). Beam hypotheses share a prefix and mostly
    the same next token, so every beam row is routed like the request's token stream."""
    from sim.workload import GateConfig, GateGenerator

    model, moe, gating, srv = scenario.model, scenario.moe, scenario.gating, scenario.serving
    n_moe = sum(model.moe_layers())
    layers = 1 if srv.router == "layer_aligned" else n_moe
    gen = GateGenerator(layers, moe.num_experts, GateConfig.from_settings(gating), scenario.seed)
    k = moe.moe_router_topk
    out = {}
    for r in requests:
        n = r.prompt_tokens + r.output_tokens
        ids = gen.tokens(0, n, group=r.rid)
        logits = gen.logits(0, ids, group=r.rid)  # (layers, n, E)
        top = np.argsort(-logits, axis=2, kind="stable")[:, :, :k].astype(np.int16)
        if layers == 1:
            top = np.repeat(top, n_moe, axis=0)
        out[r.rid] = top.reshape(n_moe, n * k)
    return out


def run_serving(scenario, cluster: Cluster, source: str = "") -> ServingResult:
    """Simulate serving ``scenario.serving`` on the first GPU of ``cluster``."""
    from sim.serving.requests import load_requests, poisson_requests

    srv = scenario.serving
    rng = stream(scenario.seed, "arrivals")
    if srv.requests.file is not None:
        requests = load_requests(srv.requests.file)
    else:
        p = srv.requests.poisson
        requests = poisson_requests(p.n, p.rate_per_s, p.prompt_tokens, p.output_tokens, rng)
    env = simpy.Environment()
    off = srv.offload
    h2d = offload_fabric(env, cluster, off.h2d_efficiency, off.h2d_latency_us * 1e-6)
    state = _Server(scenario, cluster, requests, route_requests(scenario, requests), h2d,
                    stream(scenario.seed, "cache"), source)
    env.process(state.run(env))
    env.run()
    return state.result()


class _Server:
    """State of one serving run (see the module doc)."""

    def __init__(self, scenario, cluster, requests, experts, h2d, rng, source):
        self.sc, self.spec, self.h2d, self.source = scenario, cluster.gpu, h2d, source
        self.srv, self.model, self.moe = scenario.serving, scenario.model, scenario.moe
        self.requests = {r.rid: r for r in requests}
        self.experts = experts
        self.moe_layers = self.model.moe_layers()
        self.n_moe = sum(self.moe_layers)
        m = self.model
        self.dtype = scenario.training.dtype_bytes
        # a tied input embedding / output head of gating.vocab_size rows
        shape = Shape.of(m, self.moe, vocab=scenario.gating.vocab_size)
        self.ffn = shape.moe_ffn_hidden
        self.expert_bytes = shape.expert_params * self.dtype
        self.dense_bytes = shape.non_expert_params * self.dtype
        self.kv_bytes_per_token = 2 * shape.kv_hidden * m.num_layers * self.dtype
        off, experts = self.srv.offload, self.moe.num_experts
        # a cache for every expert holds all of them from the start
        resident_all = off.mode == "gpu_only" or off.cache_experts_per_layer >= experts
        cap = experts if resident_all else off.cache_experts_per_layer
        self.belady = off.cache_policy == "belady"
        self.caches = [ExpertCache(cap, off.cache_policy, rng=rng, overflow=True,
                                   online=self.belady,
                                   warm=range(experts) if resident_all else ())
                       for _ in range(self.n_moe)]
        self.inflight: dict[tuple[int, int], simpy.Event] = {}
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.generated: dict[int, int] = {}
        self.done: dict[int, dict] = {}
        self.steps: list[dict] = []
        self.expert_steps: list[list[frozenset]] = []
        self.peak_bytes = 0.0
        self.decode_peak_bytes = 0.0
        self._prefilling = False
        self.copies = 0
        self.loads: list[dict] = []  # every copy batch: when issued, when its experts were known
        self.known_at: dict[int, float] = {}
        self.h2d_busy_bytes = 0.0
        self.moe_block_s: list[float] = []

    # ------------------------------------------------------------------ requests
    def _position(self, r: Request) -> int:
        """Index of the token a decode of ``r`` processes next."""
        return r.prompt_tokens + self.generated.get(r.rid, 0)

    def _used(self, rid: int, kind: str, layer: int, ahead: int = 0) -> np.ndarray:
        """Experts (flat, with repeats = tokens) of request ``rid``'s next work at ``layer``
        (``ahead`` tokens later for a decode)."""
        k = self.moe.moe_router_topk
        e = self.experts[rid][layer]
        r = self.requests[rid]
        if kind == "prefill":
            return e[: r.prompt_tokens * k]
        pos = self._position(r) - 1 + ahead  # the token generated last is the one fed back in
        pos = min(pos, r.prompt_tokens + r.output_tokens - 1)
        return np.tile(e[pos * k:(pos + 1) * k], self.srv.beam_width)

    def _experts_of(self, item: WorkItem) -> frozenset:
        return frozenset(self._used(item.rid, item.kind, 0).tolist())

    def _key_of(self, item: WorkItem) -> int:
        return int(np.bincount(self._used(item.rid, item.kind, 0)).argmax())

    def _next_use(self, layer: int, batch):
        """Belady's oracle for ``layer`` while ``batch`` runs: 1 for an expert that the next
        work of a request uses (known ahead thanks to pre-gating: the token each decoding
        request feeds back next, a waiting prefill's whole prompt), infinity otherwise; ties
        fall back to least recently used."""
        soon: set[int] = set()
        in_batch = set(batch.decode) | set(batch.prefill)
        for r in self.running:
            soon.update(self._used(r.rid, "decode", layer, int(r.rid in in_batch)).tolist())
        for r in self.waiting:
            if r.rid in in_batch:  # prefilling now: its first decode feeds the prompt's next
                soon.update(self.experts[r.rid][layer][r.prompt_tokens * self.moe.moe_router_topk:
                            (r.prompt_tokens + 1) * self.moe.moe_router_topk].tolist())
            else:
                soon.update(self._used(r.rid, "prefill", layer).tolist())
        return lambda e: 1.0 if e in soon else np.inf

    # ------------------------------------------------------------------ loop
    def run(self, env: simpy.Environment):
        arrivals = sorted(self.requests.values(), key=lambda r: (r.arrival_s, r.rid))
        nxt = 0
        while nxt < len(arrivals) or self.waiting or self.running:
            while nxt < len(arrivals) and arrivals[nxt].arrival_s <= env.now + 1e-15:
                self.waiting.append(arrivals[nxt])
                nxt += 1
            room = self.srv.max_running - len(self.running)
            batch = form_batch(self.srv.batcher, self.waiting[:max(room, 0)], self.running,
                               self.srv.max_batch_tokens, self._experts_of,
                               self._key_of if self.srv.batcher == "expert_aware" else None)
            if not batch.decode and not batch.prefill:
                yield env.timeout(max(arrivals[nxt].arrival_s - env.now, 0.0))
                continue
            t0 = env.now
            used = yield from self._step(env, batch)
            self._finish_step(env, batch, t0, used)

    def _step(self, env, batch):
        """One model step over every layer; returns the experts used per MoE layer."""
        m, srv = self.model, self.srv
        prefill = [self.requests[r] for r in batch.prefill]
        decode = [self.requests[r] for r in batch.decode]
        self._prefilling = bool(prefill)
        rows = len(decode) * srv.beam_width
        context = int(np.mean([self._position(r) for r in decode])) if decode else 1
        used_per_layer = [self._layer_use(batch, li) for li in range(self.n_moe)]
        mode = srv.offload.mode
        blocks: list[float] = []
        li = -1
        # every dense (or every MoE) layer of the step costs the same outside its experts
        dense_of = {is_moe: self._dense_s(prefill, rows, context, is_moe)
                    for is_moe in set(self.moe_layers)}
        for is_moe in self.moe_layers:
            dense = dense_of[is_moe]
            if not is_moe:
                yield env.timeout(dense + srv.expert_overhead_us * 1e-6)
                continue
            li += 1
            block_start = env.now
            counts = used_per_layer[li]
            need = frozenset(np.flatnonzero(counts).tolist())
            first = li == 0
            yield env.timeout(dense)  # attention + gate (the pre-gate for block li + 1)
            self.known_at[li] = env.now  # this block's (and, pre-gated, the next one's) choice
            if mode == "on_demand" or (mode in ("prefetch_all", "pregated") and first):
                self._fetch(li, need, need)
            if mode != "gpu_only":
                wait = [self.inflight[(li, e)] for e in need if (li, e) in self.inflight]
                if wait:
                    yield env.all_of(wait)
            if mode in ("prefetch_all", "pregated") and li + 1 < self.n_moe:
                needed = frozenset(np.flatnonzero(used_per_layer[li + 1]).tolist())
                every = frozenset(range(self.moe.num_experts))
                self._fetch(li + 1, every if mode == "prefetch_all" else needed, needed)
            expert = float(expert_ffn_time_s(counts[counts > 0], m.hidden_size, self.ffn,
                                             self.spec, m.gated_linear_unit, self.dtype).sum())
            yield env.timeout(expert + srv.expert_overhead_us * 1e-6)
            # the next block's copies land in the working buffer swapped in at this sync
            ahead = [ev for (layer, _), ev in self.inflight.items() if layer == li + 1]
            if ahead:
                yield env.all_of(ahead)
            self._sample_memory(decode, li)
            # Belady's oracle (the queued work's next experts) only when it is the policy
            oracle = self._next_use(li, batch) if self.belady else None
            self.caches[li].step(sorted(need), next_use=oracle)
            self._drop_unused_prefetch(li)
            blocks.append(env.now - block_start)
        if decode and not prefill:
            self.moe_block_s.extend(blocks)
        return [frozenset(np.flatnonzero(c).tolist()) for c in used_per_layer]

    def _dense_s(self, prefill, rows: int, context: int, is_moe: bool) -> float:
        """Seconds of one layer outside its experts: the prefills' and the decode rows'
        attention (+ router, or the dense FFN), plus the fixed attention overhead."""
        m = self.model
        dense = sum(float(dense_layer_time_s(
            r.prompt_tokens, r.prompt_tokens, m.hidden_size, m.num_attention_heads,
            self.spec, ffn_hidden=None if is_moe else m.ffn_hidden_size,
            gated=m.gated_linear_unit, num_experts=self.moe.num_experts if is_moe else None,
            kv_heads=m.num_query_groups, dtype_bytes=self.dtype)) for r in prefill)
        if rows:
            dense += float(dense_layer_time_s(
                rows, context, m.hidden_size, m.num_attention_heads, self.spec,
                ffn_hidden=None if is_moe else m.ffn_hidden_size, gated=m.gated_linear_unit,
                num_experts=self.moe.num_experts if is_moe else None,
                kv_heads=m.num_query_groups, query_len=1, dtype_bytes=self.dtype))
        return dense + self.srv.attention_overhead_us * 1e-6

    def _layer_use(self, batch, layer: int) -> np.ndarray:
        """(E,) tokens (decode rows and prompt tokens) the batch sends to each expert."""
        parts = [self._used(r, "prefill", layer) for r in batch.prefill]
        parts += [self._used(r, "decode", layer) for r in batch.decode]
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        return np.bincount(flat.astype(np.int64), minlength=self.moe.num_experts)

    def _fetch(self, layer: int, experts: frozenset, needed: frozenset) -> None:
        """Start copying the experts of ``layer`` that are neither resident nor on their way
        (the cache counts the ``needed`` ones as hits or misses when the layer has run)."""
        cache = self.caches[layer]
        missing = sorted(e for e in experts if e not in cache and (layer, e) not in self.inflight)
        if not missing:
            return
        self.copies += len(missing)
        n = len(missing)
        # the choice of ``layer`` is known once its own gate ran, or the previous block's pre-gate
        chooser = layer if self.srv.offload.mode == "on_demand" or layer == 0 else layer - 1
        self.loads.append({"layer": layer, "issued_s": self.h2d.env.now,
                           "known_s": self.known_at.get(chooser, np.inf), "experts": n})
        ev = self.h2d.transfer(np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                               np.full(n, float(self.expert_bytes)))
        for e in missing:
            self.inflight[(layer, e)] = ev
        self._sample_memory(self.running, layer)
        self.h2d_busy_bytes += n * self.expert_bytes

    def _drop_unused_prefetch(self, layer: int) -> None:
        for key in [k for k in self.inflight if k[0] == layer]:
            del self.inflight[key]

    def _sample_memory(self, decode, layer: int) -> None:
        resident = sum(len(c) for c in self.caches)
        working = len({k for k in self.inflight if k[1] not in self.caches[k[0]]})
        kv = sum(self._position(r) for r in self.running) * self.kv_bytes_per_token
        total = self.dense_bytes + kv + (resident + working) * self.expert_bytes
        self.peak_bytes = max(self.peak_bytes, total)
        if decode and not self._prefilling:
            self.decode_peak_bytes = max(self.decode_peak_bytes, total)
        if total > self.spec.hbm_gib * GIB:
            where = f"{self.source}: " if self.source else ""
            raise UserError(f"{where}serving.offload: {total / GIB:.1f} GiB needed on the GPU "
                            f"(mode {self.srv.offload.mode}) but it has "
                            f"{self.spec.hbm_gib:g} GiB; offload experts or cache fewer")

    def _finish_step(self, env, batch, t0, used) -> None:
        now = env.now
        for rid in batch.prefill:
            r = self.requests[rid]
            self.waiting.remove(r)
            self.running.append(r)
            self.generated[rid] = 1  # prefill produces the first token
            self.done.setdefault(rid, {"rid": rid, "arrival_s": r.arrival_s,
                                       "prompt_tokens": r.prompt_tokens,
                                       "output_tokens": r.output_tokens})["first_token_s"] = now
        for rid in batch.decode:
            self.generated[rid] += 1
        for r in list(self.running):
            if self.generated[r.rid] >= r.output_tokens:
                self.running.remove(r)
                self.done[r.rid]["finish_s"] = now
        self.steps.append({"start_s": t0, "end_s": now, "prefill": len(batch.prefill),
                           "decode": len(batch.decode), "tokens": batch.tokens,
                           "unique_experts": float(np.mean([len(u) for u in used]))
                           if used else 0.0})
        self.expert_steps.append(used)

    # ------------------------------------------------------------------ results
    def result(self) -> ServingResult:
        rows = []
        for rid in sorted(self.done):
            d = dict(self.done[rid])
            d["latency_s"] = d["finish_s"] - d["arrival_s"]
            d["ttft_s"] = d["first_token_s"] - d["arrival_s"]
            d["normalized_latency_s"] = d["latency_s"] / d["output_tokens"]
            rows.append(d)
        lat = np.array([r["latency_s"] for r in rows])
        end = max((s["end_s"] for s in self.steps), default=0.0)
        tokens = sum(r["output_tokens"] for r in rows)
        moe_steps = [s for s in self.steps if s["decode"] and not s["prefill"]]
        hits = sum(c.hits for c in self.caches)
        misses = sum(c.misses for c in self.caches)
        summary = {
            "requests": len(rows),
            "makespan_s": end,
            "tokens_per_s": tokens / end if end else 0.0,
            "latency_mean_s": float(lat.mean()) if len(lat) else 0.0,
            "latency_p50_s": float(np.percentile(lat, 50)) if len(lat) else 0.0,
            "latency_p95_s": float(np.percentile(lat, 95)) if len(lat) else 0.0,
            "latency_p99_s": float(np.percentile(lat, 99)) if len(lat) else 0.0,
            "ttft_mean_s": float(np.mean([r["ttft_s"] for r in rows])) if rows else 0.0,
            "normalized_latency_mean_s": float(np.mean([r["normalized_latency_s"]
                                                        for r in rows])) if rows else 0.0,
            "steps": len(self.steps),
            "unique_experts_per_batch": float(np.mean([s["unique_experts"]
                                                       for s in self.steps])),
            "decode_unique_experts_per_batch": float(np.mean(
                [s["unique_experts"] for s in moe_steps])) if moe_steps else 0.0,
            "moe_block_mean_s": float(np.mean(self.moe_block_s)) if self.moe_block_s else 0.0,
            # ^ decode-only steps: attention + gate + exposed copies + expert FFNs of one block
            "expert_copies": self.copies,
            "cache_hit_rate": hits / (hits + misses) if hits + misses else 1.0,
            "peak_memory_bytes": self.peak_bytes,
            "decode_peak_memory_bytes": self.decode_peak_bytes,
            "h2d_bytes": self.h2d_busy_bytes,
            "expert_bytes": float(self.expert_bytes),
            "mode": self.srv.offload.mode,
        }
        return ServingResult(summary, rows, self.steps, self.expert_steps, self.loads)
