"""A scenario's training iteration laid out as Megatron-Core lays it out: the parallel sizes,
the layers of every model chunk, the micro-batches and the schedule, checked against each other.

Ranks are ordered as Megatron-Core orders them (``RankGenerator``, order ``tp-cp-ep-dp-pp``):
tensor parallel fastest, pipeline slowest, so pipeline stage s is the s-th block of
gpus / pp consecutive ranks, and every tensor-, expert- and data-parallel group lies inside one
stage's block. Layers are split over pp x vpp model chunks in order; model chunk k runs on stage
k mod pp as its local chunk k // pp (the interleaved schedule's assignment; vpp = 1: chunk k on
stage k). With ``decoder_first_pipeline_num_layers`` / ``decoder_last_...`` the first / last
stage takes that many layers and the others share the rest evenly. DualPipe splits the layers
over pp chunks; rank r runs chunk r for the micro-batches entering at rank 0 and chunk pp-1-r for
those entering at rank pp-1 (two copies of the parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import UserError
from sim.moe.layout import Layout
from sim.training.dims import ParallelDims


@dataclass(frozen=True)
class Pipeline:
    """``par``: the parallel sizes; ``chunk_layers[k]``: the layer indices of model chunk k (in
    the order a micro-batch meets them); ``microbatches``: per pipeline and iteration;
    ``schedule``: the registered schedule's name."""

    par: ParallelDims
    chunk_layers: tuple[tuple[int, ...], ...]
    microbatches: int
    schedule: str
    global_batch_size: int
    micro_batch_size: int

    @property
    def stage_gpus(self) -> int:
        """GPUs of one pipeline stage (its tensor, expert and data parallel ranks)."""
        return self.par.gpus // self.par.pp

    def stage_of_chunk(self, k: int) -> int:
        """The stage running model chunk ``k`` (for DualPipe: in the forward direction)."""
        return k % self.par.pp

    def ends(self, s: int) -> tuple[bool, bool]:
        """(holds the embedding, holds the output layer) of stage ``s``: stage 0 and the last;
        under DualPipe both ends each hold the first and the last chunk."""
        if self.schedule == "dualpipe":
            return (s in (0, self.par.pp - 1),) * 2
        return s == 0, s == self.par.pp - 1

    def stage_layers(self, s: int) -> list[int]:
        """Every layer stage ``s`` holds (DualPipe: both of its chunks)."""
        if self.schedule == "dualpipe":
            chunks = {s, self.par.pp - 1 - s}
        else:
            chunks = {k for k in range(len(self.chunk_layers)) if self.stage_of_chunk(k) == s}
        return sorted(layer for k in chunks for layer in self.chunk_layers[k])


def build_pipeline(scenario, gpus: int, where: str = "",
                   gpus_per_node: int | None = None) -> Pipeline:
    """The iteration's layout of ``scenario`` over ``gpus`` GPUs; a size that does not divide is
    a UserError naming the fields (``where``: ``"file: "`` prefix)."""
    from sim.training.schedules import SCHEDULES

    model, par, tr = scenario.model, scenario.parallel, scenario.training
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    ep = par.expert_model_parallel_size
    etp = tp if par.expert_tensor_parallel_size is None else par.expert_tensor_parallel_size
    vpp = par.virtual_pipeline_model_parallel_size or 1
    if gpus % pp:
        raise UserError(f"{where}parallel.pipeline_model_parallel_size: must divide the {gpus} "
                        f"GPUs of the topology (got {pp})")
    stage = gpus // pp
    # tensor, expert and expert tensor parallel sizes inside a stage (Layout's messages)
    Layout.build(stage, ep, scenario.moe.num_experts, tp, where[:-2] if where else "",
                 par.expert_tensor_parallel_size, gpus_per_node,
                 "the topology" if pp == 1 else "a pipeline stage")
    if stage % tp:
        raise UserError(f"{where}parallel.tensor_model_parallel_size: must divide the {stage} "
                        f"GPUs of a pipeline stage (got {tp})")
    schedule = tr.pipeline_schedule or ("interleaved" if vpp > 1 else "1f1b")
    if schedule not in SCHEDULES:
        raise UserError(f"{where}training.pipeline_schedule: unknown schedule {schedule!r}; "
                        f"available: {', '.join(SCHEDULES.names())}")
    if schedule == "interleaved" and vpp < 2:
        raise UserError(f"{where}training.pipeline_schedule: interleaved needs "
                        "parallel.virtual_pipeline_model_parallel_size >= 2 (got "
                        f"{par.virtual_pipeline_model_parallel_size})")
    if schedule != "interleaved" and vpp > 1:
        raise UserError(f"{where}parallel.virtual_pipeline_model_parallel_size: {vpp} virtual "
                        f"stages need training.pipeline_schedule interleaved (got {schedule})")
    par_dims = ParallelDims(gpus, tp, pp, vpp, ep, etp)
    mbs = model.micro_batch_size
    gbs = tr.global_batch_size or mbs * par_dims.dp
    if gbs % (mbs * par_dims.dp):
        raise UserError(f"{where}training.global_batch_size: must be a multiple of "
                        f"model.micro_batch_size x data-parallel size = {mbs} x {par_dims.dp} "
                        f"(got {gbs})")
    chunks = _chunk_layers(model.num_layers, pp, 1 if schedule == "dualpipe" else vpp,
                           par.decoder_first_pipeline_num_layers,
                           par.decoder_last_pipeline_num_layers, where)
    m = gbs // (mbs * par_dims.dp)
    try:  # the schedule's own rules (DualPipe: even stages, at least 2 pp micro-batches, ...)
        SCHEDULES.get(schedule)(pp, vpp, m)
    except UserError as e:
        raise UserError(f"{where}training.pipeline_schedule: {schedule} cannot run "
                        f"pipeline_model_parallel_size {pp} with {m} micro-batches "
                        "(training.global_batch_size / (micro_batch_size x data-parallel "
                        f"size)): {e}") from None
    return Pipeline(par_dims, chunks, m, schedule, gbs, mbs)


def _chunk_layers(layers: int, pp: int, vpp: int, first: int | None, last: int | None,
                  where: str) -> tuple[tuple[int, ...], ...]:
    """Layer indices of the pp x vpp model chunks (model chunk k on stage k mod pp)."""
    counts = [None] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        if pp == 1 and first is not None and first != last:
            raise UserError(f"{where}parallel: decoder_first_pipeline_num_layers and "
                            "decoder_last_pipeline_num_layers differ on one stage")
        counts[-1] = last
    fixed = sum(c for c in counts if c is not None)
    free = [s for s in range(pp) if counts[s] is None]
    rest = layers - fixed
    if rest < 0 or (free and rest % len(free)) or (not free and rest):
        fields = ("model.num_layers over parallel.pipeline_model_parallel_size"
                  + (" (after decoder_first/last_pipeline_num_layers)" if fixed else ""))
        raise UserError(f"{where}{fields}: {layers} layers do not split evenly over {pp} "
                        f"stages{f' ({rest} left for {len(free)})' if fixed else ''}")
    for s in free:
        counts[s] = rest // len(free)
    if any(c % vpp for c in counts):
        raise UserError(f"{where}parallel.virtual_pipeline_model_parallel_size: the stages' "
                        f"layers {counts} do not split into {vpp} model chunks each")
    sizes = [counts[k % pp] // vpp for k in range(pp * vpp)]
    if any(n == 0 for n in sizes):
        raise UserError(f"{where}parallel: a pipeline stage would hold no layer ({counts} over "
                        f"{vpp} chunks)")
    out, start = [], 0
    for n in sizes:
        out.append(tuple(range(start, start + n)))
        start += n
    return tuple(out)
