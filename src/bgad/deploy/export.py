"""ONNX export of a fitted detector, and inference with the exported file through onnxruntime or OpenVINO.

The exported graph takes ``images`` float32 (B, 3, S, S) RGB in [0, 1] and returns ``anomaly_maps`` (B, S, S)
and ``scores`` (B,), the maximum of each map; the batch dimension is dynamic. Everything after the resize is
inside the graph: ImageNet normalization, backbone, feature standardization, flows and the calibrated scoring
(``level_max``, ``normal_max``). Resizing stays on the host (PIL Lanczos, :func:`bgad.method.features.image_batches`),
because no ONNX resize reproduces PIL's Lanczos filter: both runtimes then see exactly the same pixels. With
``resize="pad"`` (stored in the metadata) the graph sees the letterboxed canvas and its ``scores`` are maxima over
the whole canvas; :meth:`OnnxDetector.predict` crops each map to the image's content box first, as BGAD does.

Two runtimes execute the file (:data:`RUNTIMES`): onnxruntime (``engine="onnx"``) and OpenVINO (``"openvino"``,
which converts the ONNX graph when the file is loaded, in float32). Both use as many threads as torch does
(``torch.get_num_threads()``, so ``OMP_NUM_THREADS`` bounds all three engines alike).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from .._version import __version__
from ..config import BGADConfig, ModelConfig
from ..data.images import Color
from ..detector import BGAD
from ..errors import BGADError
from ..inference import MapEngine, Predictor
from ..method.model import BGADModel
from ..method.scoring import image_scores
from ..method.thresholds import Thresholds
from ..storage.model_checks import checked_scores, checked_thresholds, finite_maps
from ..storage.serialization import write_atomic

ONNX_FILE = "model.onnx"  # the export's name inside a run folder
INPUT_NAME = "images"
SOURCE_DIGEST = "model_sha1"  # the metadata key of the exported model folder's bgad.storage.model_files.model_digest
OUTPUT_NAMES = ("anomaly_maps", "scores")
_INSTALL_HINT = "ONNX export and inference need onnx, onnxscript and onnxruntime: pip install 'bgad[onnx]'"
_OPENVINO_HINT = "the openvino engine needs OpenVINO: pip install 'bgad[openvino]'"


class _MapsAndScores(nn.Module):
    """Wrap a :class:`BGADModel` so that the graph returns (anomaly maps, image scores)."""

    def __init__(self, model: BGADModel):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.model(images)
        return maps, image_scores(maps)


def export_onnx(
    detector: BGAD, path: str | Path, *, opset: int | None = None, source_digest: str | None = None
) -> Path:
    """Write the fitted ``detector`` to ``path`` as one self-contained ONNX file; return the path.

    Inputs must be resized on the host as :func:`bgad.method.features.image_batches` does (``OnnxDetector`` does it).
    ``opset`` is the ONNX opset version (None: the exporter's default). The file's metadata holds the bgad
    version, the image size, the configuration and the decision thresholds (JSON), and ``source_digest``, the
    :func:`bgad.storage.model_files.model_digest` of the model folder the detector was loaded from: ``--engine auto``
    uses the export only while that folder's files still have it.
    """
    model = detector.fitted_model()
    try:
        import onnx  # noqa: F401  (the exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise BGADError(f"{_INSTALL_HINT} ({err})") from None
    config = detector.configuration
    size = config.model.image_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    try:  # eval mode changes nothing here (no dropout or batch norm in the flows) but is what export expects
        program = torch.onnx.export(
            _MapsAndScores(model).eval(),
            (torch.full((2, 3, size, size), 0.5, device=model.normal_max.device),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            verbose=False,
        )
    finally:
        model.train(was_training)
    produced = program.model.opset_imports.get("")
    if opset is not None and produced != opset:  # the exporter falls back to its lowest opset with a warning
        raise BGADError(f"torch's ONNX exporter cannot write opset {opset} (it wrote {produced}); ask for a newer one")
    metadata = {
        "bgad_version": __version__,
        "image_size": str(size),
        "resize": config.model.resize,
        "pad_color": json.dumps(model.extractor.pad_color),
        "config": json.dumps(config.to_dict()),
        "input": f"RGB float32 (B, 3, {size}, {size}) in [0, 1], resized on the host with PIL Lanczos "
        f"(resize={config.model.resize}, see bgad.data.images.to_canvas)",
    }
    metadata["thresholds"] = json.dumps(detector.thresholds_._asdict())
    if source_digest is not None:
        metadata[SOURCE_DIGEST] = source_digest
    if detector.normal_scores_ is not None:
        metadata["normal_image_scores"] = json.dumps([float(s) for s in detector.normal_scores_])
    program.model.metadata_props.update(metadata)
    # A failed or interrupted export leaves no partial file and an earlier export intact. Weights inline (external
    # data only beyond ONNX's 2 GB limit).
    write_atomic(path, program.save, temporary=path.with_name(f".{path.name}.partial"))
    return path


_METADATA_FIELD = 14  # ModelProto.metadata_props in onnx.proto: repeated StringStringEntryProto {1: key, 2: value}
_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5  # protobuf wire types


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of an ONNX file, read from its protobuf fields without loading the graph or any runtime (the
    weights are skipped, not read): what ``--engine auto`` checks before choosing an engine."""
    try:
        with open(path, "rb") as handle:
            return dict(_metadata_entries(handle))
    except (ValueError, UnicodeDecodeError, EOFError):
        raise BGADError(f"{path} is not an ONNX file (its metadata cannot be read)") from None


def _metadata_entries(handle: BinaryIO) -> Iterator[tuple[str, str]]:
    while (tag := _varint(handle, at_end=True)) is not None:
        field, wire = tag >> 3, tag & 7
        if wire == _LENGTH_DELIMITED:
            length = _varint(handle)
            if field == _METADATA_FIELD:
                entry = dict(_string_fields(handle.read(length)))
                yield entry.get(1, ""), entry.get(2, "")
            else:
                handle.seek(length, os.SEEK_CUR)
        elif wire == _VARINT:
            _varint(handle)
        elif wire in (_FIXED64, _FIXED32):
            handle.seek(8 if wire == _FIXED64 else 4, os.SEEK_CUR)
        else:
            raise ValueError(f"protobuf wire type {wire}")


def _string_fields(message: bytes) -> Iterator[tuple[int, str]]:
    """The length-delimited fields of a small message (a metadata entry) as text."""
    stream = io.BytesIO(message)
    while (tag := _varint(stream, at_end=True)) is not None:
        if tag & 7 != _LENGTH_DELIMITED:
            raise ValueError("a metadata entry holds strings only")
        length = _varint(stream)
        text = stream.read(length)
        if len(text) != length:
            raise EOFError
        yield tag >> 3, text.decode("utf-8")


def _varint(stream: BinaryIO, *, at_end: bool = False) -> int | None:
    """A protobuf varint; None at the end of the stream if ``at_end`` allows it there."""
    value = 0
    for shift in range(0, 64, 7):
        byte = stream.read(1)
        if not byte:
            if shift == 0 and at_end:
                return None
            raise EOFError
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError("varint longer than 64 bits")


@dataclass(frozen=True)
class Runtime:
    """An exported file opened by one runtime: its graph's input and output names, its metadata, and ``run``,
    which maps an input batch (B, 3, S, S) float32 to the anomaly maps (B, S, S)."""

    engine: str
    inputs: list[str]
    outputs: list[str]
    metadata: dict[str, str]
    run: Callable[[np.ndarray], np.ndarray]


def _check_file(path: Path) -> None:
    """After the package check, so that a missing package is reported first."""
    if not path.is_file():
        raise BGADError(f"ONNX model not found: {path}")


def open_onnxruntime(path: Path) -> Runtime:
    """``path`` on onnxruntime's CPU provider, all graph optimizations on."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BGADError(f"{_INSTALL_HINT} ({err})") from None
    _check_file(path)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        raise BGADError(f"cannot load ONNX model {path}: {err}") from None

    def run(images: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAMES[0]], {INPUT_NAME: images})[0]

    return Runtime(
        "onnx",
        [i.name for i in session.get_inputs()],
        [o.name for o in session.get_outputs()],
        dict(session.get_modelmeta().custom_metadata_map),
        run,
    )


def open_openvino(path: Path, *, precision: str | None = "f32") -> Runtime:
    """``path`` (ONNX, or OpenVINO IR) compiled by OpenVINO for the CPU at ``precision`` (None: the CPU's default,
    bf16 where it has AMX)."""
    try:
        import openvino
    except ImportError as err:
        raise BGADError(f"{_OPENVINO_HINT} ({err})") from None
    _check_file(path)
    core = openvino.Core()
    # f32 for the engine: on CPUs with bfloat16 units (AMX) OpenVINO would otherwise compute in bf16, whose maps
    # differ from torch's by up to 0.4 (docs/performance.md).
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    requests = {}  # batch size -> an inference request of the model compiled for that static shape

    def request(batch: int) -> Any:
        # A static batch size runs 10-30 % faster than the dynamic one on CPU; each new size compiles once.
        if batch not in requests:
            shaped, port = model.clone(), model.input(0)  # a foreign graph's inputs are reported by load()
            shaped.reshape({port.get_any_name(): [batch, *port.get_partial_shape()[1:]]})
            requests[batch] = core.compile_model(shaped, "CPU", config).create_infer_request()
        return requests[batch]

    try:
        model = core.read_model(str(path))
        first = request(1)  # compiled now: a file OpenVINO cannot run fails here, and single images need no wait
    except Exception as err:  # OpenVINO raises RuntimeError subclasses for unreadable or foreign files
        raise BGADError(f"cannot load ONNX model {path}: {str(err).splitlines()[0]}") from None
    framework = model.get_rt_info(["framework"]).astype(dict) if model.has_rt_info(["framework"]) else {}

    def run(images: np.ndarray) -> np.ndarray:
        return request(len(images)).infer({INPUT_NAME: images})[OUTPUT_NAMES[0]]

    return Runtime(
        "openvino",
        [i.get_any_name() for i in first.model_inputs],
        [o.get_any_name() for o in first.model_outputs],
        {key: value.astype(str) for key, value in framework.items()},
        run,
    )


RUNTIMES: dict[str, Callable[[Path], Runtime]] = {"onnx": open_onnxruntime, "openvino": open_openvino}


@dataclass(frozen=True)
class _Exported:
    """What :func:`export_onnx` stored in a file's metadata, checked."""

    image_size: int
    config: BGADConfig
    thresholds: Thresholds
    pad_color: Color
    normal_scores: np.ndarray | None


def _metadata_json(path: Path, metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise BGADError(f"{path} is damaged: its metadata {key} is not valid JSON ({metadata[key][:60]!r})") from None


def _checked_metadata(path: Path, metadata: dict[str, str]) -> _Exported:
    """The metadata of a file exported by bgad, every value checked: an edited or truncated one is a one-line
    :class:`BGADError`, never a traceback, and thresholds must be finite."""
    if "pad_color" not in metadata or "config" not in metadata:
        raise BGADError(f"{path} was exported by an older bgad: export the model again")
    if "thresholds" not in metadata:
        raise BGADError(f"{path} carries no decision thresholds (exported from an unfitted detector?)")
    thresholds = checked_thresholds(_metadata_json(path, metadata, "thresholds"), path)
    pad = _metadata_json(path, metadata, "pad_color")
    if not (isinstance(pad, list) and len(pad) == 3 and all(type(c) is int and 0 <= c <= 255 for c in pad)):
        raise BGADError(f"{path} is damaged: its pad_color must be 3 integers in 0..255, got {metadata['pad_color']!r}")
    try:
        config = BGADConfig.from_dict(_metadata_json(path, metadata, "config"))
    except BGADError as err:
        raise BGADError(f"{path} is damaged: {err}") from None
    if int(metadata["image_size"]) != config.model.image_size:
        raise BGADError(f"{path} is damaged: image_size {metadata['image_size']} but its config says otherwise")
    scores = _metadata_json(path, metadata, "normal_image_scores") if "normal_image_scores" in metadata else None
    pad_color = (pad[0], pad[1], pad[2])
    return _Exported(config.model.image_size, config, thresholds, pad_color, checked_scores(scores, path))


class OnnxDetector(Predictor):
    """Inference with a file written by :func:`export_onnx` on the CPU (no torch model), through one of the
    :data:`RUNTIMES`."""

    def __init__(self, runtime: Runtime, exported: _Exported):
        self._runtime = runtime
        self._exported = exported
        self.metadata = runtime.metadata
        self.thresholds_ = exported.thresholds
        self.normal_scores_ = exported.normal_scores

    @classmethod
    def load(cls, path: str | Path, *, engine: str = "onnx") -> OnnxDetector:
        """Open an exported model with ``engine`` (``"onnx"``: onnxruntime, ``"openvino"``); a missing package or
        a missing, unreadable, damaged or foreign file is a :class:`BGADError`."""
        if engine not in RUNTIMES:
            raise BGADError(f"unknown ONNX engine {engine!r}; use one of {', '.join(RUNTIMES)}")
        path = Path(path)
        runtime = RUNTIMES[engine](path)
        metadata, inputs, outputs = runtime.metadata, runtime.inputs, runtime.outputs
        if inputs != [INPUT_NAME] or outputs[:1] != [OUTPUT_NAMES[0]] or not metadata.get("image_size", "").isdigit():
            raise BGADError(f"{path} is not an ONNX model exported by bgad (inputs {inputs}, outputs {outputs})")
        return cls(runtime, _checked_metadata(path, metadata))

    @property
    def engine(self) -> str:
        """The runtime that executes the file: ``"onnx"`` (onnxruntime) or ``"openvino"``."""
        return self._runtime.engine

    @property
    def configuration(self) -> BGADConfig:
        """The exported model's configuration."""
        return self._exported.config

    @property
    def image_size(self) -> int:
        """The side S of the square model input (and of the anomaly maps)."""
        return self._exported.image_size

    @property
    def resize(self) -> str:
        """How images are fitted to the square input (the exported configuration's ``model.resize``)."""
        return self._exported.config.model.resize

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """The letterbox colour of the exported backbone (its normalization's zero)."""
        return self._exported.pad_color

    def _run(self, batch: Tensor) -> Tensor:
        return finite_maps(torch.from_numpy(self._runtime.run(batch.numpy())))

    @property
    def model_config(self) -> ModelConfig:
        """The exported model's :class:`~bgad.config.ModelConfig` (image size, resize mode, tiling)."""
        return self._exported.config.model

    def map_engine(self) -> MapEngine:
        """The exported graph on its runtime, with the exported configuration and pad colour."""
        return MapEngine(self._run, self.model_config, self.pad_color)
