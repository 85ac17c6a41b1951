"""Unit conversions at the boundary between files (readable units) and the engine (SI).

Engine units: seconds, bytes, bytes/s. File units are named in the field: ``*_gbps`` gigabits
per second (10^9 bit/s, per direction), ``*_us`` microseconds, ``*_gib`` gibibytes (2^30 bytes),
``*_tflops`` 10^12 FLOP/s.
"""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024**2
GIB = 1024**3


def gbps_to_bytes_per_s(gbps: float) -> float:
    """Gigabits per second -> bytes per second."""
    return gbps * 1e9 / 8.0


def bytes_per_s_to_gbps(bytes_per_s: float) -> float:
    """Bytes per second -> gigabits per second."""
    return bytes_per_s * 8.0 / 1e9


def us_to_s(us: float) -> float:
    """Microseconds -> seconds."""
    return us * 1e-6


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B|B)?\s*$")
_FACTOR = {
    None: 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": 1024**4,
}


def parse_bytes(value: int | float | str) -> int:
    """Parse a byte count: an integer or a string such as ``"64MiB"``, ``"1GB"``, ``"4096"``."""
    if isinstance(value, bool):
        raise ValueError("expected a byte count, got a boolean")
    if isinstance(value, (int, float)):
        if value < 0 or value != int(value):
            raise ValueError(f"expected a non-negative whole number of bytes, got {value!r}")
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(
            f"expected a byte count such as 4096, '64KiB', '1MiB' or '2GB', got {value!r}"
        )
    n = float(m.group(1)) * _FACTOR[m.group(2)]
    if n != int(n):
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(n)


def format_bytes(n: float) -> str:
    """Short human form of a byte count (binary prefixes)."""
    for unit, f in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= f:
            v = n / f
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.2f}{unit}"
    return f"{int(n)}B"
