"""Which inference engine scores a saved model: torch, or its exported ONNX file on onnxruntime or OpenVINO.

``engine="auto"`` (the default of ``bgad predict`` and ``bgad serve``) takes the fastest engine whose maps match
torch's (docs/performance.md measures them) among those that can run here without surprises: the run's exported
``model.onnx`` (written by ``bgad export``, never on the fly: nothing is written into a run folder unasked), exported
from the model files the run holds now (a digest of their content, stored in the export, not timestamps), and the
runtime's package installed. Anything else is torch, the reference engine, which needs neither an export nor an
extra package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..detector import BGAD
from ..errors import BGADError
from ..inference import Detector
from ..storage.model_files import MODEL_WEIGHTS, model_digest
from .export import ONNX_FILE, RUNTIMES, SOURCE_DIGEST, OnnxDetector, read_metadata

ENGINES = ("auto", "torch", *RUNTIMES)
# Fastest first (benchmarks/engines.py on the trained bottle model, 2 cores: OpenVINO FP32 10.6 / 8.6 ms per image
# at batch 1 / 8, onnxruntime 11.7 / 9.8, torch 34.2 / 32.7). Both give torch's maps within 1e-3 (measured 2.5e-5).
# Not engines: OpenVINO in bf16 (maps off by up to 0.42) and NNCF INT8 (AUPRO 0.968 -> 0.22), docs/performance.md.
FASTEST_FIRST = ("openvino", "onnx")
_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}


def installed(engine: str) -> bool:
    """Whether the package ``engine`` (``"onnx"`` or ``"openvino"``) needs is importable, without importing it."""
    return importlib.util.find_spec(_PACKAGES[engine]) is not None


def is_stale_export(run: Path) -> bool:
    """Whether ``RUN/model.onnx`` was exported from other model files than those ``run`` holds now (weights or
    ``model.json`` changed since, whatever their timestamps say): its stored digest is compared with theirs."""
    if not (run / MODEL_WEIGHTS).is_file():
        return False  # a folder holding only the export: there is nothing else to be current with
    try:
        return read_metadata(run / ONNX_FILE).get(SOURCE_DIGEST) != model_digest(run)
    except OSError:
        return True


def _check_model_path(path: Path) -> None:
    """A file given as the model must be an export: any other (``RUN/model.json``) would reach OpenVINO's readers of
    foreign formats, which print their own noise before failing."""
    if path.is_file() and path.suffix.lower() != ".onnx":
        raise BGADError(f"{path} is not a model: give a run or model folder ({path.parent}?) or an exported .onnx file")


def choose_engine(path: Path, *, device: str = "cpu") -> tuple[str, str]:
    """The engine ``auto`` runs ``path`` (a run folder or an ``.onnx`` file) with, and why, in a few words."""
    _check_model_path(path)
    runtimes = [engine for engine in FASTEST_FIRST if installed(engine)]
    if path.is_file():  # an exported file has no torch model: the fastest runtime installed, or onnx's install hint
        return (runtimes or ["onnx"])[0], "an exported file"
    if device != "cpu":
        return "torch", f"device {device}"
    exported = path / ONNX_FILE
    if not exported.is_file():
        return "torch", f"no {ONNX_FILE} in the run; `bgad export --run {path}` enables the faster engines"
    if is_stale_export(path):
        return "torch", f"{exported} is not an export of the model now in {path}; export again to use it"
    if not runtimes:
        return "torch", f"{ONNX_FILE} found but neither openvino nor onnxruntime is installed"
    return runtimes[0], f"{exported}"


def load_detector(path: str | Path, engine: str = "auto", *, device: str = "cpu") -> Detector:
    """A fitted detector for a run folder or an exported ``.onnx`` file, on ``engine`` (one of :data:`ENGINES`).

    ``"torch"`` loads the run's model onto ``device``; ``"onnx"`` and ``"openvino"`` run ``RUN/model.onnx`` (or
    the file given) on the CPU; ``"auto"``: :func:`choose_engine`. Both kinds predict alike
    (``predict``/``predict_batch``/``anomaly_maps``).
    """
    path = Path(path)
    if engine not in ENGINES:
        raise BGADError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    _check_model_path(path)
    if engine == "auto":
        engine = choose_engine(path, device=device)[0]
    if engine == "torch":
        return BGAD.load(path).to(device)
    if device != "cpu":
        raise BGADError(f"the {engine} engine runs on the CPU here; use --engine torch for --device {device}")
    if path.is_dir() and (path / ONNX_FILE).is_file() and is_stale_export(path):
        raise BGADError(
            f"{path / ONNX_FILE} is not an export of the model now in {path} (its weights or model.json changed): "
            f"run `bgad export --run {path}` again, or use --engine torch"
        )
    return OnnxDetector.load(path / ONNX_FILE if path.is_dir() else path, engine=engine)
