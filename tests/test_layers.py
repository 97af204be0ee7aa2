"""The package reads as the method, bottom to top: no module imports from a layer above its own.

``bgad/data`` (datasets, images, checks, synthesis) sits under the method; ``bgad/method`` holds the method itself,
checked module by module, as are ``bgad/runtime`` (devices, torchrun, progress), ``bgad/storage`` (files on disk)
and ``bgad/deploy`` (ONNX and its engines), whose modules sit at the layers they serve; ``bgad/app`` (command line,
run folders, reports, benchmark) sits on top of it all and nothing else imports it. The package root holds only the
public face (the estimator, its configuration, prediction, evaluation, selection) and its foundations.
"""

import ast
from pathlib import Path

import bgad

PACKAGE = Path(bgad.__file__).parent

# Lowest first. A module may import from its own layer and the layers below it. A subpackage is listed whole
# (its modules share its layer) or module by module.
SPLIT = ("method", "runtime", "storage", "deploy")  # the subpackages whose modules have layers of their own
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": (
        "_version",
        "errors",
        "config",
        "storage.serialization",
        "runtime.progress",
        "runtime.devices",
        "runtime.distributed",
        *SPLIT,  # their __init__ files: docstrings only
    ),
    "data": ("data",),
    "features": ("method.backbones", "method.features", "method.whitening"),
    "flow": ("method.encoding", "method.flow", "method.level"),
    "losses": ("method.losses",),
    "training": ("method.crossfit", "method.training", "storage.checkpoint"),
    "scoring": ("metrics", "method.scoring", "method.tiling", "method.model", "method.thresholds"),
    "fitting": ("method.fitting",),
    "estimator": (
        "storage.model_checks",
        "storage.model_files",
        "inference",
        "detector",
        "deploy.export",
        "deploy.engines",
    ),
    "evaluation": ("evaluation", "selection"),
    "application": ("app", "__main__"),
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def _module_of(path: Path) -> str:
    """The top-level module or subpackage a file belongs to (``data/layouts/mvtec.py`` belongs to ``data``), or
    ``method.<module>`` for a module of a split subpackage such as the method (its ``__init__`` is ``method``)."""
    parts = [part.removesuffix(".py") for part in path.relative_to(PACKAGE).parts]
    return _named(parts)


def _named(parts: list[str]) -> str:
    """The layer name of the module at ``parts`` below the package."""
    if parts[0] in SPLIT and len(parts) > 1 and parts[1] != "__init__":
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def _imported(path: Path, source: str | None = None) -> set[str]:
    """Top-level bgad modules and subpackages the file at ``path`` imports (relative imports and ``bgad.x`` alike);
    ``source`` stands for the file's text if given."""
    tree = ast.parse(path.read_text() if source is None else source)
    package = path.relative_to(PACKAGE).parts[:-1]  # () for bgad/x.py, ("data", "layouts") for its loaders
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "bgad":
                    continue
                target = parts[1:]
            else:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            if len(target) == 1 and target[0] in SPLIT:  # from .method import x: x is a module of the method
                found.update(_named([target[0], alias.name]) for alias in node.names)
            elif target:
                found.add(_named(target))
            else:  # from . import x at the top: a module, or a name of the package itself (above every layer)
                found.update(alias.name if alias.name in RANK else "__init__" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(_named(a.name.split(".")[1:]) for a in node.names if a.name.startswith("bgad."))
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


def test_the_check_sees_an_upward_import() -> None:
    """The checker itself: a loader importing the application or the flow is seen, relative or absolute."""
    loader = PACKAGE / "data" / "layouts" / "mvtec.py"
    source = (
        "from ...app.runs import fit_run\nfrom bgad.method.flow import ConditionalFlow\nfrom ..samples import GOOD\n"
    )
    assert _imported(loader, source) == {"app", "method.flow", "data"}


def test_the_package_root_holds_only_the_public_face_and_its_foundations() -> None:
    """Plumbing lives in a subpackage that names its job (runtime, storage, deploy), not beside the estimator."""
    root = {path.stem for path in PACKAGE.glob("*.py")}
    public = {"__init__", "__main__", "detector", "inference", "evaluation", "metrics", "selection"}
    foundations = {"_version", "errors", "config"}
    assert root == public | foundations
