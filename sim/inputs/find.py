"""Finding an input file by name: a path as given, or a bare name looked up in a folder of the
current directory, of each of its parents, then of the repository (next to the ``sim``
package). So ``moe-switch-h100`` finds ``scenarios/moe-switch-h100.yaml`` from the repository
root and from ``notebooks/`` alike, and a local ``topologies/`` shadows the shipped one.
"""

from __future__ import annotations

from pathlib import Path

import sim
from sim.errors import UserError

SUFFIXES = (".yaml", ".yml")


def repo_dir(folder: str) -> Path:
    """``folder`` of the repository (next to the ``sim`` package): the shipped files."""
    return Path(sim.__file__).resolve().parents[1] / folder


def search_dirs(folder: str) -> list[Path]:
    """Where a bare name is looked for, in order, without repeats."""
    cwd = Path.cwd().resolve()
    return list(dict.fromkeys([*(d / folder for d in (cwd, *cwd.parents)), repo_dir(folder)]))


def available(folder: str, suffix: str = ".yaml") -> dict[str, Path]:
    """name -> file of every ``*<suffix>`` file that a bare name would find (nearest first)."""
    out: dict[str, Path] = {}
    for d in search_dirs(folder):
        for f in sorted(d.glob(f"*{suffix}")) if d.is_dir() else ():
            out.setdefault(f.stem, f)
    return out


def find_file(ref: str | Path, folder: str, what: str) -> Path:
    """The file ``ref`` names: a path (it has a YAML suffix or a directory part, or is a
    ``Path``) that must exist, or a bare name found as ``<folder>/<name>.yaml`` (see the module
    docstring). ``what`` (``scenario``, ``topology``) names the field in messages."""
    text = str(ref)
    path = Path(text)
    if isinstance(ref, Path) or path.suffix in SUFFIXES or len(path.parts) > 1:
        if path.is_file():
            return path
        raise UserError(f"{text}: {what}: file not found (got {text!r})")
    found = available(folder)
    if text in found:
        return found[text]
    names = ", ".join(sorted(found)) or "none"
    where = Path.cwd().resolve()
    raise UserError(f"{folder}/{text}.yaml: {what}: unknown {what} name; available: {names} "
                    f"(searched {folder}/ of {where}, its parents and the repository) "
                    f"(got {text!r})")
