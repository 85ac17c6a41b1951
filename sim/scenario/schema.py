"""Scenario models: what a scenario file may say, validated once and frozen.

A scenario names a topology (plus overrides of that topology file's fields), the fabric model
settings and what to run. Today "what to run" is a collective ``benchmark``; later sections
(``model``, ``parallel``, ``routing``) sit beside it as further optional fields of
:class:`Scenario`.

Units are in field names (``message_overhead_us``); sizes are bytes, given as integers or
strings such as ``"16MiB"`` (see :func:`sim.units.parse_bytes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sim.inputs.messages import NAME_PATTERN, FieldProblem, submodel
from sim.scenario.dispatch import Dispatch
from sim.scenario.schema_base import StrictModel
from sim.scenario.serving import SERVING_ROUTERS, TRAINING_ONLY, Serving
from sim.scenario.training import Gating, Model, Moe, Parallel, Placement, Training
from sim.units import parse_bytes

__all__ = ["COLLECTIVES", "NAME_PATTERN", "Scenario", "StrictModel", "field_at"]

#: Collective name -> the algorithms implemented for it; the first is the fluid model's choice
#: (under a communication profile the library chooses by size unless one is given).
COLLECTIVES: dict[str, tuple[str, ...]] = {
    "all_to_all": ("direct", "pairwise", "hierarchical"),
    "all_reduce": ("ring", "nvls", "tree"),
    "all_gather": ("ring",),
    "reduce_scatter": ("ring",),
    "sendrecv": ("direct",),
}
PROTOCOLS = ("LL", "LL128", "Simple")

#: Collectives whose traffic may be skewed (per-destination sizes differ).
SKEWABLE = ("all_to_all",)

def _byte_count(value: Any) -> int:
    try:
        n = parse_bytes(value)
    except (ValueError, TypeError):
        raise ValueError(
            "must be a byte count such as 4096, '64KiB', '16MiB' or '1GB'"
        ) from None
    if n <= 0:
        raise ValueError("must be a positive byte count")
    return n


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


ByteCount = Annotated[int, BeforeValidator(_byte_count)]


class TopologyRef(BaseModel):
    """A topology file by ``name``; every other key overrides a field of that file.

    The overrides are checked by the topology schema when the topology is loaded, not here.
    A bare string ``topology: dgx-h100`` means ``{name: dgx-h100}``.
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    SHORTHAND_KEY: ClassVar[str] = "name"  # a bare string means {SHORTHAND_KEY: string}

    name: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {cls.SHORTHAND_KEY: data} if isinstance(data, str) else data

    @property
    def overrides(self) -> dict[str, Any]:
        """The keys other than ``name``, as given."""
        return dict(self.model_extra or {})


class Fabric(StrictModel):
    """Settings of the flow-level network model."""

    message_overhead_us: float = Field(0.0, ge=0)
    """Start-up cost added to every flow, microseconds."""
    ecmp: Literal["balanced", "hash"] = "balanced"
    """How flows pick among equal-cost shortest paths."""
    rate_tolerance: float = Field(0.003, ge=0, le=0.5)
    """Relative rate change below which max-min rates are not re-solved (0 = always re-solve)."""
    message_gap_us: float = Field(0.0, ge=0)
    """Issue gap between successive messages of one sender in a batch, microseconds (0 = off)."""
    incast_threshold_flows: int = Field(8, ge=1)
    """Flows a host's last NIC hop carries before incast lowers its usable capacity."""
    incast_penalty: float = Field(0.0, ge=0)
    """Incast goodput loss per flow above the threshold: capacity / (1 + p x excess) (0 = off)."""


class Benchmark(StrictModel):
    """An nccl-tests style sweep of one collective over message sizes."""

    collective: Literal["all_to_all", "all_reduce", "all_gather", "reduce_scatter", "sendrecv"]
    algorithm: str | None = Field(None, validate_default=True)
    """One of ``COLLECTIVES[collective]``; None: the library's choice by size under the
    communication profile (the first under ``ideal``), as NCCL_ALGO unset."""
    protocol: Literal["LL", "LL128", "Simple"] | None = None
    """Pin the protocol (NCCL_PROTO); None: the library's choice by size."""
    sizes: Annotated[tuple[ByteCount, ...], BeforeValidator(_as_tuple), Field(min_length=1)]
    """Bytes per rank, one benchmark row each."""
    traffic: Literal["uniform", "zipf"] = "uniform"
    """``zipf``: per-destination sizes follow a Zipf law (all_to_all only)."""
    zipf_exponent: float = Field(1.1, gt=0)

    @field_validator("algorithm")
    @classmethod
    def _algorithm_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        allowed = COLLECTIVES.get(info.data.get("collective", ""))
        if allowed is None or value is None:  # collective invalid (reported on its own) or auto
            return value
        if value not in allowed:
            raise ValueError(
                f"must be one of {', '.join(allowed)} for {info.data['collective']}"
            )
        return value

    @field_validator("traffic")
    @classmethod
    def _traffic_fits(cls, value: str, info: ValidationInfo) -> str:
        collective = info.data.get("collective")
        if value != "uniform" and collective is not None and collective not in SKEWABLE:
            raise ValueError(
                f"{value} traffic is only for {', '.join(SKEWABLE)}; {collective} needs uniform"
            )
        return value


class Scenario(StrictModel):
    """A whole scenario file. Sections are added here as the simulator grows."""

    name: str = Field("scenario", pattern=NAME_PATTERN)
    """Defaults to the file's stem; used in output directory names."""
    description: str = ""
    seed: int = Field(0, ge=0)
    topology: TopologyRef
    fabric: Fabric = Fabric()
    benchmark: Benchmark | None = None
    """A collective benchmark; or, instead, an MoE training step (model + moe)."""
    dispatch: Dispatch | None = None
    """An MoE dispatch/combine benchmark (DeepEP's test) instead of the above."""
    model: Model | None = None
    moe: Moe | None = None
    parallel: Parallel = Parallel()
    training: Training = Training()
    gating: Gating = Gating()
    serving: Serving | None = None
    """With model and moe: an inference run instead of a training step."""
    comm_profile: str | None = Field(None, min_length=1)
    """The communication profile (``profiles/<name>.yaml``, ``ideal``, or a path); None: the one
    the topology names."""
    placement: Placement | None = None
    """Training only: run the step with a solver's expert placement (and without, to compare)."""

    @model_validator(mode="after")
    def _one_kind(self) -> Scenario:
        if self.dispatch is not None:
            other = next((k for k in ("benchmark", "model", "moe", "serving", "placement")
                          if getattr(self, k) is not None), None)
            if other is not None:
                raise ValueError(f"{other}: a dispatch benchmark (dispatch:) stands alone; "
                                 "remove benchmark, model, moe, serving and placement")
            unused = next((k for k in ("parallel", "training", "gating")
                           if getattr(self, k) != type(self).model_fields[k].default), None)
            if unused is not None:
                raise ValueError(f"{unused}: not used by a dispatch benchmark (its dispatch: "
                                 "section says everything it runs); remove it")
            return self
        if self.benchmark is not None and self.serving is not None:
            raise ValueError("serving: a scenario is either a benchmark or a serving run, not both")
        if self.benchmark is not None and (self.model is not None or self.moe is not None):
            raise ValueError("benchmark: a scenario is either a benchmark or a training run "
                             "(model + moe), not both")
        if self.benchmark is None and (self.model is None or self.moe is None):
            missing = "model" if self.model is None else "moe"
            raise ValueError(f"{missing}: required (a scenario needs benchmark:, or model: and "
                             "moe:)")
        return self

    @model_validator(mode="after")
    def _serving_uses_its_inputs(self) -> Scenario:
        if self.dispatch is not None:
            return self
        if self.serving is None:
            if self.benchmark is None and self.model.seq_length is None:
                raise FieldProblem(("model", "seq_length"), "required for a training step", None)
            return self
        for path, reason in TRAINING_ONLY.items():
            keys = path.split(".")
            holder = self
            for key in keys[:-1]:
                holder = getattr(holder, key)
            value = getattr(holder, keys[-1])
            if value != type(holder).model_fields[keys[-1]].default:
                raise FieldProblem(tuple(keys), f"not used by a serving run ({reason}); remove "
                                   "it", _shown(value))
        router, k = self.moe.router, self.moe.moe_router_topk
        if router.name not in SERVING_ROUTERS or router.params or (router.name == "switch"
                                                                   and k != 1):
            raise FieldProblem(("moe", "router"), "a serving run routes each token to its "
                               f"moe_router_topk best experts by the gate: router "
                               f"{' or '.join(SERVING_ROUTERS)} (switch with top-1), no params",
                               _shown(router))
        return self

    @property
    def kind(self) -> str:
        """``benchmark``, ``dispatch``, ``training`` or ``serving``."""
        if self.benchmark is not None:
            return "benchmark"
        if self.dispatch is not None:
            return "dispatch"
        return "serving" if self.serving is not None else "training"


def _shown(value: Any) -> Any:
    """A section as the mapping a user wrote, for ``(got ...)``."""
    return value.model_dump(exclude_defaults=True) if isinstance(value, BaseModel) else value


def field_at(model: type[BaseModel], path: Sequence[str | int]) -> tuple[type[BaseModel], Any]:
    """Walk ``path`` (list indices skipped) from ``model``: the model holding the last key, and
    that key's ``FieldInfo`` (None when the key is not a field there).

    Below a free-form key of a model that allows extra keys (``topology.<override>``) the walk
    stops there and returns that model with None. Raises ``KeyError`` naming the offending
    prefix when the walk leaves the schema before the last key (an unknown section, or a plain
    value used as a section).
    """
    keys = [k for k in path if isinstance(k, str)]
    for i, key in enumerate(keys):
        info = model.model_fields.get(key)
        if i == len(keys) - 1 or (info is None and model.model_config.get("extra") == "allow"):
            return model, info
        sub = submodel(info.annotation) if info is not None else None
        if sub is None:
            raise KeyError(".".join(keys[: i + 1]))
        model = sub
    raise KeyError("")
