"""Pydantic models of ``topologies/*.yaml``: strict (unknown keys rejected), frozen, one model
per ``kind``. File units are in field names: ``bandwidth_gbps`` is gigabits/s per direction,
``latency_us`` microseconds. Cross-field problems raise :class:`FieldProblem`, which carries the
path of the field to blame so the loader can name it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from sim.inputs.messages import FieldProblem
from sim.topology.catalog import list_gpus

Bandwidth = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""Gigabits per second per direction, > 0."""
Latency = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""Microseconds, >= 0."""


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true/false")
    return value


Count = Annotated[int, BeforeValidator(_not_bool), Field(ge=1)]
Ratio = Annotated[float, Field(gt=0, allow_inf_nan=False)]

DEFAULT_LATENCY_US = 0.5


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinkSpec(Strict):
    """A link class: bandwidth (Gb/s per direction) and latency (us)."""

    bandwidth_gbps: Bandwidth
    latency_us: Latency = DEFAULT_LATENCY_US


class UplinkSpec(Strict):
    """A switch-to-switch tier. Without ``bandwidth_gbps`` the bandwidth follows from the
    oversubscription ratio."""

    bandwidth_gbps: Bandwidth | None = None
    latency_us: Latency = DEFAULT_LATENCY_US


class IntraNode(Strict):
    """The fabric inside one server.

    ``bandwidth_gbps``: nvswitch = per-GPU NVLink, pcie = per-GPU PCIe link, hccs_groups = each
    NPU-NPU link; default from the GPU catalog.
    """

    fabric: Literal["nvswitch", "hccs_groups", "pcie"] = "nvswitch"
    bandwidth_gbps: Bandwidth | None = None
    latency_us: Latency = DEFAULT_LATENCY_US
    group_size: Count | None = None  # hccs_groups only; default 4


class _Topology(Strict):
    description: str = ""
    name: str | None = None
    gpu: str
    comm_profile: str = Field("ideal", min_length=1)
    """The communication profile runs on this cluster use unless their scenario names one: a
    name (``profiles/<name>.yaml``; ``ideal`` is built in) or a path."""

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        if value not in list_gpus():
            raise ValueError(f"unknown GPU; valid names: {', '.join(list_gpus())}")
        return value


def _check_intra(intra: IntraNode, gpus_per_node: int) -> None:
    if intra.group_size is not None and intra.fabric != "hccs_groups":
        raise FieldProblem(
            ("intra_node", "group_size"), "only allowed with fabric: hccs_groups", intra.group_size
        )
    size = intra.group_size or 4
    if intra.fabric == "hccs_groups" and gpus_per_node % size:
        raise FieldProblem(
            ("intra_node", "group_size"),
            f"must divide gpus_per_node ({gpus_per_node})",
            size,
        )


class SingleNodeTopology(_Topology):
    """One server: ``gpus_per_node`` GPUs on an intra-node fabric."""

    kind: Literal["single_node"]
    gpus_per_node: Count = 8
    intra_node: IntraNode = IntraNode()

    @model_validator(mode="after")
    def _consistent(self) -> SingleNodeTopology:
        _check_intra(self.intra_node, self.gpus_per_node)
        return self


class FatTreeTopology(_Topology):
    """``nodes`` servers on a 2-tier (leaf-spine) or 3-tier (pods + cores) fat tree."""

    kind: Literal["fat_tree", "leaf_spine"]
    nodes: Count
    gpus_per_node: Count = 8
    intra_node: IntraNode = IntraNode()
    nics_per_node: Count | None = None  # default: one per GPU
    nic: LinkSpec
    pcie: LinkSpec | None = None  # GPU<->NIC when nics_per_node < gpus_per_node
    tiers: Literal[2, 3] = 2
    rail_optimized: bool = True
    hosts_per_leaf: Count
    uplinks_per_leaf: Count | None = None
    oversubscription: Ratio | None = None
    leaf_spine: UplinkSpec = UplinkSpec()
    leaves_per_pod: Count | None = None
    cores: Count | None = None
    core_oversubscription: Ratio | None = None
    spine_core: UplinkSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FatTreeTopology:
        _check_intra(self.intra_node, self.gpus_per_node)
        if self.kind == "leaf_spine" and self.tiers != 2:
            raise FieldProblem(
                ("tiers",), "leaf_spine is 2-tier; use 2 or kind fat_tree", self.tiers
            )
        if self.nics_per_node is not None and self.nics_per_node > self.gpus_per_node:
            raise FieldProblem(
                ("nics_per_node",),
                f"must be <= gpus_per_node ({self.gpus_per_node})",
                self.nics_per_node,
            )
        if self.oversubscription is not None and self.leaf_spine.bandwidth_gbps is not None:
            raise FieldProblem(
                ("oversubscription",),
                "give either oversubscription or leaf_spine.bandwidth_gbps, not both",
                self.oversubscription,
            )
        if self.tiers == 2:
            for key in ("leaves_per_pod", "cores", "core_oversubscription", "spine_core"):
                if getattr(self, key) is not None:
                    raise FieldProblem((key,), "only allowed with tiers: 3", getattr(self, key))
        elif (
            self.core_oversubscription is not None
            and self.spine_core is not None
            and self.spine_core.bandwidth_gbps is not None
        ):
            raise FieldProblem(
                ("core_oversubscription",),
                "give either core_oversubscription or spine_core.bandwidth_gbps, not both",
                self.core_oversubscription,
            )
        return self


class GpuEntry(Strict):
    """One GPU of an explicit topology; rank = position in the list."""

    name: str = Field(min_length=1)
    node: int = Field(ge=0)
    local_rank: int = Field(ge=0)


class LinkEntry(Strict):
    """A link between two declared names; ``count`` parallel links add their bandwidth."""

    a: str
    b: str
    bandwidth_gbps: Bandwidth
    latency_us: Latency = DEFAULT_LATENCY_US
    tier: str = "link"
    duplex: bool = True
    count: Count = 1


class ExplicitTopology(_Topology):
    """GPUs, switches, NICs and links listed by hand."""

    kind: Literal["explicit"]
    gpus: list[GpuEntry] = Field(min_length=1)
    switches: list[str] = []
    nics: list[str] = []
    links: list[LinkEntry] = []

    @model_validator(mode="after")
    def _consistent(self) -> ExplicitTopology:
        seen: set[str] = set()
        named = [(("gpus", i, "name"), e.name) for i, e in enumerate(self.gpus)]
        named += [(("switches", i), n) for i, n in enumerate(self.switches)]
        named += [(("nics", i), n) for i, n in enumerate(self.nics)]
        for path, name in named:
            if name in seen:
                raise FieldProblem(path, "name already used; node names must be unique", name)
            seen.add(name)
        slots: set[tuple[int, int]] = set()
        for i, e in enumerate(self.gpus):
            if (e.node, e.local_rank) in slots:
                raise FieldProblem(
                    ("gpus", i, "local_rank"), f"repeated on node {e.node}", e.local_rank
                )
            slots.add((e.node, e.local_rank))
        servers = sorted({e.node for e in self.gpus})
        if servers != list(range(len(servers))):
            raise FieldProblem(("gpus",), "server indices must be 0..N-1 without gaps", servers)
        for n in servers:
            local = sorted(e.local_rank for e in self.gpus if e.node == n)
            if local != list(range(len(local))):
                raise FieldProblem(
                    ("gpus",), f"local_rank on node {n} must be 0..G-1 without gaps", local
                )
        pairs: set[tuple[str, str]] = set()
        for i, link in enumerate(self.links):
            for end in ("a", "b"):
                value = getattr(link, end)
                if value not in seen:
                    raise FieldProblem(
                        ("links", i, end),
                        "unknown node; declare it under gpus, switches or nics",
                        value,
                    )
            if link.a == link.b:
                raise FieldProblem(("links", i, "b"), "a link needs two different ends", link.b)
            for pair in [(link.a, link.b)] + ([(link.b, link.a)] if link.duplex else []):
                if pair in pairs:
                    raise FieldProblem(
                        ("links", i),
                        "this pair is already linked; use count: N for parallel links",
                        f"{pair[0]}-{pair[1]}",
                    )
                pairs.add(pair)
        return self


TopologyFile = Annotated[
    SingleNodeTopology | FatTreeTopology | ExplicitTopology, Field(discriminator="kind")
]
TOPOLOGY_ADAPTER: TypeAdapter[Any] = TypeAdapter(TopologyFile)
KINDS = ("single_node", "fat_tree", "leaf_spine", "explicit")
MODEL_OF_KIND: dict[str, type[_Topology]] = {
    "single_node": SingleNodeTopology,
    "fat_tree": FatTreeTopology,
    "leaf_spine": FatTreeTopology,
    "explicit": ExplicitTopology,
}
