"""Named random streams: one scenario seed drives everything, each consumer gets its own stream.

``stream(seed, "traffic")`` always yields the same generator for the same seed and name, and
streams with different names are statistically independent (numpy ``SeedSequence`` spawn keys).
Nothing in moe-sim reads numpy's or Python's global random state.
"""

from __future__ import annotations

import hashlib

import numpy as np

STREAMS = ("traffic", "gating", "arrivals", "ga")


def stream(seed: int, name: str) -> np.random.Generator:
    """The generator of stream ``name`` under scenario ``seed``."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))
