"""Communication profiles: what the collective library adds to the network, as parameters.

A profile (``profiles/<name>.yaml``, or any YAML file; validated like every input) holds the
costs a collective library such as NCCL adds around the flows the fabric shares:

* ``launch_us``: a fixed cost per collective operation (kernel launch, synchronisation).
* ``link_efficiency``: the share of each link tier's rate that traffic achieves (protocol
  headers, flow control): H100 NVLink moves about 370 of its 450 GB/s for ring traffic.
* ``protocols`` (``LL``, ``LL128``, ``Simple``): each with its payload ``efficiency`` (LL sends
  a 4-byte flag with every 4 bytes of data: 0.5; LL128 120 of every 128 bytes: 0.9375), its
  latency per pipeline step over NVLink/PCIe (``step_us``) and across the network
  (``net_step_us``), the least a step of a ring across servers takes (``net_overhead_us``),
  and the most one channel moves (``channel_gbps``).
* ``channels``: the channels a collective runs on at most inside one server, and
  ``channel_bytes``: the bytes per channel before another channel joins (small messages run on
  fewer channels); ``net_channels``: the channels of a collective across servers, shared by its
  rings (one per rail, each on its own NIC): NCCL runs 16 on H100 servers with 8 NICs, two per
  NIC, and (this model assumes) as many with fewer NICs, so each of fewer rails carries more.
* ``tree``: all_reduce across servers as a (double binary) tree: per step latencies for a
  chain inside each server and log2(N) levels across, at ``efficiency`` x the ring's bandwidth
  (its flows are the ring's: a simplification, the tree's own link loads are not modelled).
* ``nvls``: NVLink SHARP all_reduce on NVSwitch servers (the switch reduces): its share of the
  NVLink rate and its fixed latency.
* ``protocol_max_bytes``: the library's protocol by size (LL up to a size, then LL128, then
  Simple), which is what NCCL's own tuning does; without it the protocol of least predicted time.
* ``deepep``: DeepEP's normal kernels (``training.dispatcher: deepep``): a fixed cost and the
  rates its SM-bound network and NVLink stages reach.
* ``compute``: not communication but the GPU's kernels: the parameters of the kernel-shaped
  GEMM and attention model (``sim.compute.profile.ComputeProfile``) the training step times its
  compute with; without it, the roofline.
* ``p2p``: point-to-point (sendrecv, and the per-peer transfers of an alltoall): a peer's
  transfer is split over channels as NCCL splits it (more ranks, fewer channels per transfer
  to begin with; larger transfers, more), ``channel_gbps`` each inside a server and
  ``net_channel_gbps`` across the network, at most ``net_channels`` per peer when the
  communicator spans servers, halved as NCCL halves them when it has many peers; an alltoall
  serves its peers 8 at a time, ``round_us`` per round across servers.

Rates are ``*_gbps`` (gigabits per second), times ``*_us`` (microseconds), as in every moe-sim
file. The ``ideal`` profile (built in) adds nothing: moe-sim's fluid model as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError

from sim.compute.profile import ComputeProfile
from sim.errors import UserError
from sim.inputs import find_file, read_yaml, validation_message
from sim.scenario.schema_base import StrictModel
from sim.units import parse_bytes

PROTOCOLS = ("LL", "LL128", "Simple")
Protocol = Literal["LL", "LL128", "Simple"]
Share = Annotated[float, Field(gt=0, le=1)]
Rate = Annotated[float, Field(gt=0)]
Micros = Annotated[float, Field(ge=0)]


def _bytes(value) -> int:
    try:
        n = parse_bytes(value)
    except (ValueError, TypeError):
        raise ValueError("must be a byte count such as 4096, '64KiB' or '16MiB'") from None
    if n <= 0:
        raise ValueError("must be a positive byte count")
    return n


ByteCount = Annotated[int, BeforeValidator(_bytes)]


class ProtocolCost(StrictModel):
    """One protocol's costs."""

    efficiency: Share = 1.0
    """Payload share of the bytes on the wire."""
    step_us: Micros = 0.0
    """Latency of one pipeline step between GPUs of one server, microseconds."""
    net_step_us: Micros = 0.0
    """Latency of one pipeline step that crosses the network, microseconds."""
    net_overhead_us: Micros = 0.0
    """On a ring that spans servers, the least any step takes, the steps inside a server
    included (the proxy's per-step network overhead; NCCL's tuner: 1-2 us, x3 for Simple)."""
    channel_gbps: Rate | None = None
    """The most one channel moves, Gbit/s (None: no limit but the links)."""


class NvlsCost(StrictModel):
    """NVLink SHARP all_reduce (one NVSwitch server): each GPU sends its buffer to the switch
    once and receives the reduced result once."""

    efficiency: Share
    """Share of the NVLink rate each direction reaches."""
    latency_us: Micros = 0.0
    """Fixed cost on top of the launch, microseconds."""


class TreeCost(StrictModel):
    """All_reduce across servers as a double binary tree (module docstring)."""

    efficiency: Annotated[float, Field(gt=0, le=2)]
    """The tree's bus bandwidth over the ring's (a tree uses both directions of every NIC, so
    it may exceed 1)."""


class P2PCost(StrictModel):
    """Point-to-point transfers (sendrecv; the per-peer transfers of an alltoall), split over
    channels as NCCL splits them (:meth:`sim.comm.model.Model.p2p_channels`)."""

    channel_gbps: Rate
    """One channel between GPUs of one server, Gbit/s."""
    chunk_bytes: ByteCount = 512 * 1024
    """The chunk of a transfer inside a server (NCCL_P2P_NVL_CHUNKSIZE): a channel carries
    parts of 1/8 to 32 chunks."""
    net_chunk_bytes: ByteCount = 128 * 1024
    """The chunk of a transfer on a communicator that spans servers (NCCL_P2P_NET_CHUNKSIZE): a
    channel carries parts of 1/2 to 1 chunk."""
    peer_channels: int = Field(32, ge=1)
    """The most channels one peer's transfer uses on one server (NCCL: two per NVLink's worth
    of bandwidth to the peer, at most ``channels``)."""
    net_channels: int = Field(ge=1)
    """Channels per peer on a communicator that spans servers, before the library halves them
    to serve every peer in one round (NCCL: one per NIC, or the NIC's rate over 14 GB/s: 4 for
    400 Gb/s); they hold for the peers inside a server too."""
    channels: int = Field(32, ge=1)
    """The library's point-to-point channels in all (NCCL's p2pnChannels)."""
    net_channel_gbps: Rate
    """One channel across the network, Gbit/s."""
    round_us: Micros | None = None
    """Latency of one round of up to 8 peers across servers (an alltoall on P ranks takes
    ceil((P-1)/8) rounds), microseconds (None: the Simple protocol's network step)."""


class DeepEPCost(StrictModel):
    """DeepEP's normal dispatch/combine kernels (``training.dispatcher: deepep``). They run on a
    fixed budget of SMs (24 in DeepEP's test), so besides the links, each GPU's kernel moves at
    most so many bytes per second through each of its two stages."""

    launch_us: Micros = 0.0
    """Fixed cost of one dispatch or combine (launch, the notify step, the final barrier)."""
    forward_gbps: Rate
    """Bytes of (token, node) pairs one GPU's network stage moves per second, its own node
    included (DeepEP's kernel passes those through the same buffers), Gbit/s."""
    nvlink_gbps: Rate
    """Bytes of tokens one GPU's NVLink stage delivers to it per second, its own tokens
    included, Gbit/s."""


class CommProfile(StrictModel):
    """A communication profile (see the module docstring)."""

    name: str = Field("profile", min_length=1)
    description: str = ""
    source: str = ""
    """Where the numbers come from (the fitted logs, or why they are what they are)."""
    launch_us: Micros = 0.0
    link_efficiency: dict[str, Share] = {}
    """Link tier -> achieved share of its rate (tiers not listed: 1)."""
    channels: int = Field(1, ge=1)
    channel_bytes: ByteCount | None = None
    """Bytes per channel before another channel joins (None: always every channel)."""
    net_channels: int | None = Field(None, ge=1)
    """Channels of a collective across servers, shared by its rings (None: the server's
    channels over its rings)."""
    tree: TreeCost | None = None
    protocols: Annotated[dict[Protocol, ProtocolCost], Field(min_length=1)] = {
        "Simple": ProtocolCost()}
    nvls: NvlsCost | None = None
    p2p: P2PCost | None = None
    protocol_max_bytes: dict[Literal["LL", "LL128"], ByteCount] | None = None
    """The library's protocol choice by size, as NCCL's tuning tables make it: LL up to its
    size, then LL128 up to its, then Simple (None: the protocol of least predicted time)."""
    deepep: DeepEPCost | None = None
    """DeepEP's kernels (None: the links alone decide, no fixed cost)."""
    compute: ComputeProfile | None = None
    """The GPU's GEMM and attention kernels (``sim.compute.kernels``; None: the roofline)."""

    @property
    def is_ideal(self) -> bool:
        """Whether the profile adds nothing to the fluid model."""
        return self == IDEAL.model_copy(update={"name": self.name, "description":
                                                 self.description, "source": self.source})


IDEAL = CommProfile(name="ideal", description="the fluid model alone: no launch or step costs, "
                    "every link at its full rate, no channel or protocol limits",
                    source="built in")


def load_profile(ref: str | Path) -> CommProfile:
    """A profile by name (``profiles/<name>.yaml`` in the working directory, its parents or the
    repository; ``ideal`` is built in) or by path. Mistakes are one-line UserErrors."""
    if str(ref) == "ideal":
        return IDEAL
    path = find_file(ref, "profiles", "communication profile")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: (top level): a communication profile is a mapping of fields "
                        f"such as launch_us, link_efficiency, protocols")
    data.setdefault("name", path.stem)
    try:
        return CommProfile.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, str(path), CommProfile)) from None
