"""MoE layer semantics: capacity formulas, drop order and dispatch accounting per framework."""

from sim.moe.capacity import (
    CONVENTIONS,
    DROP_POLICIES,
    Kept,
    apply_capacity,
    dispatch_slots,
    drop_fraction,
    expert_capacity,
    load_imbalance,
    padding_fraction,
)

__all__ = [
    "CONVENTIONS",
    "DROP_POLICIES",
    "Kept",
    "apply_capacity",
    "dispatch_slots",
    "drop_fraction",
    "expert_capacity",
    "load_imbalance",
    "padding_fraction",
]
