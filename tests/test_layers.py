"""The package reads as the method, bottom to top: no module imports from a layer above its own."""

import ast
from pathlib import Path

import bgad

PACKAGE = Path(bgad.__file__).parent

# Lowest first. A module may import from its own layer and the layers below it.
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("_version", "errors", "config", "serialization"),
    "data": (
        "data",
        "datasets",
        "images",
        "demo_data",
        "foreground",
        "synthesis",
        "synthetic_pool",
        "validation",
    ),
    "features": ("backbones", "features", "whitening"),
    "flow": ("encoding", "flow", "level"),
    "losses": ("losses",),
    "training": ("training", "checkpoint"),
    "scoring": ("scoring", "model", "thresholds"),
    "estimator": ("detector", "runs", "export"),
    "metrics": ("metrics", "evaluation"),
    "application": (
        "report",
        "visualize",
        "locking",
        "experiment",
        "ablation",
        "baselines",
        "benchmark",
        "speed",
        "cli",
    ),
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def _module_of(path: Path) -> str:
    """The top-level module a file belongs to (``datasets/mvtec.py`` belongs to ``datasets``)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported(path: Path) -> set[str]:
    """Top-level bgad modules imported by a file (relative imports and ``bgad.x`` alike)."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts)  # 1 for bgad/x.py, 2 for bgad/datasets/x.py
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] == "bgad":
                parts = node.module.split(".")[1:]
            elif node.level >= depth:  # reaches the package root
                parts = (node.module or "").split(".") if node.module else []
            else:
                continue  # inside the same subpackage
            if parts:
                found.add(parts[0])
            else:  # from . import x: a module, or a name of the package itself (``__init__``, above every layer)
                found.update(alias.name if alias.name in RANK else "__init__" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("bgad."))
    return found


def test_every_module_has_a_layer() -> None:
    modules = {_module_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert modules == set(RANK), f"place {sorted(modules - set(RANK))} in LAYERS; remove {sorted(set(RANK) - modules)}"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_of(path)
        if module == "__init__":
            continue  # the package's public API re-exports from every layer
        for imported in _imported(path) - {module}:
            if RANK.get(imported, len(LAYERS)) > RANK[module]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not upward, "imports that run back up the layers:\n" + "\n".join(upward)
