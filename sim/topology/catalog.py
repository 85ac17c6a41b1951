"""GPU (and NPU) catalog: peak compute, HBM, and link bandwidths from published figures.

All values in SI units: FLOP/s, bytes/s, GiB for capacity. Bandwidths are **per direction**
(vendors usually quote NVLink as bidirectional totals; we halve them). Sources are cited next to
each entry; values we could not confirm against a primary source are marked ``[uncertain]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import UserError


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator model.

    ``peak_bf16_flops``: dense (no sparsity) half-precision tensor peak, FLOP/s (BF16 where the
    chip has it, otherwise FP16, see ``notes``). ``hbm_gib``: HBM capacity, GiB.
    ``hbm_bandwidth_Bps``: HBM bandwidth, bytes/s. ``nvlink_bandwidth_Bps``: scale-up bandwidth
    per GPU per direction, bytes/s (NVLink, or the sum of HCCS ports on Ascend).
    ``pcie_bandwidth_Bps``: host link per direction, bytes/s. ``scale_up_links``: number of
    point-to-point scale-up links per GPU (NVLink links or HCCS ports). ``peak_fp8_flops``:
    dense FP8 tensor peak, FLOP/s (0 for chips without FP8 tensor cores). ``num_sms``: streaming
    multiprocessors (0 = unknown: the kernel model ``sim.compute.kernels`` then does no wave
    quantisation).
    """

    name: str
    peak_bf16_flops: float
    hbm_gib: float
    hbm_bandwidth_Bps: float
    nvlink_bandwidth_Bps: float
    pcie_bandwidth_Bps: float
    scale_up: str = "nvlink"
    scale_up_links: int = 0
    notes: str = ""
    peak_fp8_flops: float = 0.0
    num_sms: int = 0

    @property
    def scale_up_link_bandwidth_Bps(self) -> float:
        """Bandwidth of one scale-up link (one NVLink or one HCCS port), bytes/s per direction."""
        return self.nvlink_bandwidth_Bps / self.scale_up_links if self.scale_up_links else 0.0

    @property
    def hccs_bandwidth_Bps(self) -> float:
        """Per-port HCCS bandwidth per direction (0 for GPUs without HCCS), bytes/s."""
        return self.scale_up_link_bandwidth_Bps if self.scale_up == "hccs" else 0.0


_CATALOG: dict[str, GpuSpec] = {
    spec.name: spec
    for spec in (
        # NVIDIA H100 Tensor Core GPU datasheet (SXM5 column): BF16 1,979 TFLOPS *with sparsity*,
        # so 989.4 TFLOPS dense; 80 GB HBM3 at 3.35 TB/s; NVLink 4 900 GB/s (18 links x 50 GB/s
        # bidirectional); PCIe Gen5 128 GB/s (bidirectional). The board carries 80 GiB of HBM3
        # (nvidia-smi reports ~79.6 GiB usable); we store 80.
        GpuSpec(
            name="h100_sxm",
            peak_bf16_flops=989.4e12,
            hbm_gib=80.0,
            hbm_bandwidth_Bps=3.35e12,
            nvlink_bandwidth_Bps=450e9,
            pcie_bandwidth_Bps=64e9,
            scale_up="nvlink",
            scale_up_links=18,
            notes="NVIDIA H100 SXM5 datasheet; BF16 dense = half the sparse figure",
            peak_fp8_flops=1978.9e12,  # FP8 3,958 TFLOPS with sparsity
            # NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022): the H100 SXM5 part
            # enables 132 of the GH100 die's 144 SMs
            num_sms=132,
        ),
        # NVIDIA H800 SXM5: the H100 SXM5 compute die and 80 GB HBM3 at 3.35 TB/s, with NVLink cut
        # to 400 GB/s bidirectional (8 links) for export; DeepGEMM's README quotes its FP8 peak
        # as H100's (1979 TFLOPS dense) and DeepEP's README observes ~160 GB/s per GPU over
        # NVLink. PCIe Gen5 as H100.
        GpuSpec(
            name="h800_sxm",
            peak_bf16_flops=989.4e12,
            hbm_gib=80.0,
            hbm_bandwidth_Bps=3.35e12,
            nvlink_bandwidth_Bps=200e9,
            pcie_bandwidth_Bps=64e9,
            scale_up="nvlink",
            scale_up_links=8,
            notes="H100 SXM5 compute and HBM, NVLink 400 GB/s bidirectional (export variant)",
            peak_fp8_flops=1978.9e12,
            num_sms=132,  # H100 SXM5's die (whitepaper above); DeepGEMM's H800 runs use 132
        ),
        # NVIDIA H200 datasheet (SXM column): same compute as H100 SXM (BF16 1,979 TFLOPS sparse),
        # 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s, PCIe Gen5 128 GB/s. "141 GB" is the
        # datasheet's decimal-looking figure; treated as GiB here [uncertain: GB vs GiB].
        GpuSpec(
            name="h200",
            peak_bf16_flops=989.4e12,
            hbm_gib=141.0,
            hbm_bandwidth_Bps=4.8e12,
            nvlink_bandwidth_Bps=450e9,
            pcie_bandwidth_Bps=64e9,
            scale_up="nvlink",
            scale_up_links=18,
            notes="NVIDIA H200 SXM datasheet",
            peak_fp8_flops=1978.9e12,
            num_sms=132,  # the H100 SXM5 GH100 configuration (H100 whitepaper), HBM3e aside
        ),
        # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM column): BF16 312 TFLOPS dense
        # (624 sparse), 80 GB HBM2e at 2,039 GB/s, NVLink 3 600 GB/s (12 links x 50 GB/s bidir.),
        # PCIe Gen4 64 GB/s (bidirectional).
        GpuSpec(
            name="a100_sxm",
            peak_bf16_flops=312e12,
            hbm_gib=80.0,
            hbm_bandwidth_Bps=2.039e12,
            nvlink_bandwidth_Bps=300e9,
            pcie_bandwidth_Bps=32e9,
            scale_up="nvlink",
            scale_up_links=12,
            notes="NVIDIA A100 80GB SXM datasheet",
            # NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020): 108 of GA100's 128 SMs
            num_sms=108,
        ),
        # Same datasheet, 40GB SXM column (the part in AWS p4d.24xlarge): 40 GB HBM2 at
        # 1,555 GB/s; compute and links as the 80 GB part.
        GpuSpec(
            name="a100_sxm_40gb",
            peak_bf16_flops=312e12,
            hbm_gib=40.0,
            hbm_bandwidth_Bps=1.555e12,
            nvlink_bandwidth_Bps=300e9,
            pcie_bandwidth_Bps=32e9,
            scale_up="nvlink",
            scale_up_links=12,
            notes="NVIDIA A100 40GB SXM datasheet",
            num_sms=108,  # A100 whitepaper, as the 80 GB part
        ),
        # NVIDIA Tesla V100 datasheet (SXM2): 125 TFLOPS FP16 tensor (V100 has no BF16),
        # 32 GB HBM2 at 900 GB/s, NVLink 2 300 GB/s (6 links x 50 GB/s bidir.), PCIe Gen3 32 GB/s
        # (bidirectional). DGX-1 shipped with 16 GB or 32 GB parts; we list the 32 GB one.
        GpuSpec(
            name="v100_sxm",
            peak_bf16_flops=125e12,
            hbm_gib=32.0,
            hbm_bandwidth_Bps=900e9,
            nvlink_bandwidth_Bps=150e9,
            pcie_bandwidth_Bps=16e9,
            scale_up="nvlink",
            scale_up_links=6,
            notes="NVIDIA V100 SXM2 32GB datasheet; FP16 tensor peak (no BF16 on V100)",
        ),
        # Huawei Ascend 910 (910A). Compute and HBM bandwidth as stated by the LocMoE paper:
        # 320 TFLOPS FP16, max memory bandwidth 1.07 TB/s (Huawei's Hot Chips 31 talk quoted
        # 256 TFLOPS FP16 instead [uncertain which clock/bin]). HBM capacity 32 GiB (4 x HBM2
        # stacks) [uncertain: from public product pages, not the paper, which says "max memory
        # capacity 2TB", presumably host memory]. Interconnect per the Hot Chips 31 slides:
        # 3 HCCS ports of 240 Gb/s (= 30 GB/s) each, PCIe 4.0 x16, 2 x 100G RoCE on the chip
        # [uncertain: whether 240 Gb/s is per direction; we assume it is]. PCIe 4.0 x16 is
        # ~32 GB/s per direction. FP16 stored in the BF16 field (910A has no BF16).
        GpuSpec(
            name="ascend_910a",
            peak_bf16_flops=320e12,
            hbm_gib=32.0,
            hbm_bandwidth_Bps=1.07e12,
            nvlink_bandwidth_Bps=3 * 30e9,
            pcie_bandwidth_Bps=32e9,
            scale_up="hccs",
            scale_up_links=3,
            notes="LocMoE paper (320 TFLOPS FP16, 1.07 TB/s); HCCS 3 x 30 GB/s per Hot Chips 31",
        ),
    )
}


def get_gpu(name: str) -> GpuSpec:
    """The catalog entry called ``name``; raises ``UserError`` listing valid names otherwise."""
    try:
        return _CATALOG[name]
    except KeyError:
        raise UserError(
            f"gpu: unknown GPU; valid names: {', '.join(list_gpus())} (got {name!r})"
        ) from None


def list_gpus() -> list[str]:
    """Names of every catalog entry, sorted."""
    return sorted(_CATALOG)
