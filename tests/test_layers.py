"""The package's shape: data flows one way (foundations → data → models → htl → train → tune →
protocol → command line), and no module imports a module of a layer above it, at import
time or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "htl_ray"

# the lowest layer first; a module's layer is that of its longest matching prefix
LAYERS: list[tuple[str, ...]] = [
    ("errors", "redact", "paths", "console", "interrupts", "collectives", "config", "run_dir",
     "tracking", "tables", "metrics", "losses", "device", "analysis"),
    ("data",),
    ("models", "pruning", "checkpoints", "inference", "quality", "mlflow_model", "supervision"),
    ("htl",),
    ("cluster", "train", "report", "predict"),
    ("tune", "archive", "compare"),
    ("protocol",),
    ("cli", "demo", "reference", "__main__"),
]


def layer_of(module: str) -> int:
    name = module.removeprefix("htl_ray").lstrip(".")
    if not name:
        return 0                                  # the package front: lazy re-exports only
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module}: in no layer; add it to LAYERS"
    return best[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every htl_ray module `path` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "htl_ray":
            if node.module == "htl_ray":           # from htl_ray import tracking
                found.update(f"htl_ray.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "htl_ray")
    return found


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in imports(path):
            if layer_of(imported) > layer_of(importer):
                upward.append(f"{importer} (layer {layer_of(importer)}) imports {imported} "
                              f"(layer {layer_of(imported)})")
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check above cannot pass by not looking."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from htl_ray.train.trainer import run_training\n")
    assert "htl_ray.train.trainer" in imports(probe)
    assert layer_of("htl_ray.train.trainer") > layer_of("htl_ray.models")
    assert layer_of("htl_ray.tracking.schema") == 0 and layer_of("htl_ray.protocol.page") == 6


def test_no_import_circle_between_modules():
    """Modules import each other in one direction only (a package's front re-exporting its own
    modules is not a circle)."""
    graph = {module_name(p): {m for m in imports(p) if m != module_name(p)}
             for p in PACKAGE.rglob("*.py")}
    fronts = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").is_file()}

    def edges(m: str) -> set[str]:
        return {t for t in graph.get(m, set()) if t in graph and t not in fronts
                and not (m in fronts and t.startswith(m + "."))}

    circles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(edges(m)):
            if state.get(t) == "open":
                circles.append(" → ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)
