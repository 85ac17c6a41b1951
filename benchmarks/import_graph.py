"""Size of moe-sim's import graph: files, imports between its modules, imports that point up a
layer. The layers, lowest first, are listed in LAYERS; an import from a module to one in a higher
layer "points up". Lazy imports inside functions count like the others.

    python benchmarks/import_graph.py [--list]    # --list prints every import that points up
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Package or module prefix -> layer (lowest first). The longest matching prefix wins.
LAYERS: dict[str, int] = {
    "sim": 0, "sim.errors": 0, "sim.units": 0, "sim.rng": 0, "sim.registry": 0,
    "sim.inputs": 0,
    "sim.scenario": 1, "sim.topology": 1,
    "sim.network": 2, "sim.collectives": 2, "sim.compute": 2, "sim.workload": 2,
    "sim.routing": 2, "sim.metrics": 2, "sim.moe": 2, "sim.serving": 2, "sim.model": 2,
    "sim.comm": 2,
    "sim.solve": 3, "sim.report": 3,
    "sim.calibrate": 4,
    "sim.runs": 4, "sim.simulate": 4, "sim.compare": 4, "sim.output": 4, "sim.results": 4,
    "sim.sweep": 4,
    "sim.cli": 5,
}


def layer(module: str) -> int:
    """The layer of ``module`` (longest prefix of LAYERS)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise KeyError(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The sim.* modules ``path`` imports (``from a import b`` counts a.b when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "sim")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "sim":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                as_file = ROOT / Path(*sub.split("."))
                out.add(sub if as_file.with_suffix(".py").is_file() or as_file.is_dir() else base)
    out.discard(me)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every import that points up")
    args = ap.parse_args(argv)
    files = sorted((ROOT / "sim").rglob("*.py"))
    edges = up = 0
    for f in files:
        me = module_name(f)
        for target in sorted(imports(f)):
            edges += 1
            if layer(target) > layer(me):
                up += 1
                if args.list:
                    print(f"  {me} ({layer(me)}) -> {target} ({layer(target)})")
    print(f"files {len(files)}, imports {edges}, imports that point up a layer {up}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
