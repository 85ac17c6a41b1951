"""Routers: gate logits (T, E) -> :class:`Assignment` of (token, expert) rows.

Every router is a function ``(logits, ctx) -> Assignment`` registered by the name users write
in a scenario (``switch``, ``gshard``, ``topk``, ``expert_choice``, ``hash``, ``base``,
``node_limited``, ``locmoe``, ``smile``, ``top_p``). ``route(name, logits, ctx)`` looks one up
and calls it; an unknown name is a :class:`sim.errors.UserError` listing the valid ones.
Capacity and dropping are not the routers' job (see ``sim/moe``), except for routers that fill
fixed buckets themselves (expert choice, BASE).
"""

from __future__ import annotations

import numpy as np

from sim.routing import (  # noqa: F401  (imported so that each router registers)
    base_layers,
    expert_choice,
    gshard,
    hash_layers,
    locmoe,
    node_limited,
    smile,
    switch,
    top_p,
    topk,
)
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.registry import ROUTERS, Router

__all__ = ["ROUTERS", "Assignment", "Router", "RouterContext", "route"]


def route(name: str, logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Route one group of tokens with the router registered as ``name``."""
    return ROUTERS.get(name)(logits, ctx)
