"""Inference engines on one trained model and the same images: speed, start-up and what each changes in the maps.

Engines: torch eager, torch with ``BGADModel.compile_flows``, torch with the flows under bfloat16 autocast
(reduced precision of the flows only), onnxruntime and OpenVINO FP32 (the code of
``bgad predict --engine onnx|openvino``, on the exported ``model.onnx``; OpenVINO also compiled once for a dynamic
batch, as the engine does not), OpenVINO at its default precision (bfloat16 on CPUs with AMX), and OpenVINO INT8
from NNCF post-training quantization calibrated on the run's training normals: the whole graph, and the
backbone's convolutions only (everything else in float32).

Per engine: milliseconds per image at batch 1 and 8 (model only: the preprocessed (B, 3, S, S) tensor in, the maps
out; median of ``--repeats`` after 3 warm-up calls); the ratio at batch 1 to the torch backbone alone at batch 1
(``bgad speed``'s ratio) and to the same runtime's backbone (what the flows cost in it); start-up (load, convert,
compile and the first batch-1 call, Python imports excluded; the first batch-8 call after it is reported apart, as
compile recompiles for it); and on the run's evaluation set (its test images minus the anomalies it trained on, as
``bgad test``) image AUROC, pixel AUROC and AUPRO and the largest absolute map difference against eager torch.
OpenVINO INT8 needs NNCF (``pip install nncf``, for this benchmark only); its quantization time is reported too.
Without NNCF the INT8 rows are skipped with a note (results.json: ``notes``); every other row is measured.

    python benchmarks/engines.py --run RUN --output OUT [--data-root ROOT]

``OUT`` receives model.onnx and backbone.onnx (exported if absent), the INT8 models and results.json; the tables
are printed. The timings mean something only when nothing else runs on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime
import openvino
import torch

from bgad import BGAD
from bgad.app.record import read_run
from bgad.app.speed import median_seconds
from bgad.data.layouts import DatasetSpec
from bgad.deploy.export import export_onnx, open_onnxruntime, open_openvino
from bgad.evaluation import evaluate
from bgad.method.features import image_batches

Run = Callable[[np.ndarray], np.ndarray]  # input batch -> anomaly maps
BATCHES = (1, 8)
WARMUP = 3
BACKBONE_OPS = ("Convolution", "GroupConvolution")  # the backbone's; the flows have none (MatMul, Einsum, ...)
NO_NNCF = "nncf is not installed (pip install nncf): the OpenVINO INT8 rows are skipped"


class _Precomputed:
    """An ``AnomalyMapper`` for :func:`bgad.evaluation.evaluate` that runs an engine on preprocessed inputs."""

    def __init__(self, run: Run, paths: Sequence[Path], inputs: np.ndarray, resize: str):
        self._run, self._index, self._inputs, self.resize = run, {p: i for i, p in enumerate(paths)}, inputs, resize

    def anomaly_maps(self, images: Sequence[Path], *, batch_size: int = 8) -> torch.Tensor:
        rows = [self._index[p] for p in images]
        return torch.from_numpy(np.asarray(self._run(self._inputs[rows])))


def _torch_engine(run_dir: Path, *, compiled: bool = False, flows_bf16: bool = False) -> Run:
    """Eager torch, with the flows ``torch.compile``-d or run under ``torch.autocast`` in bfloat16 (their matrix
    products in bf16, the rest in the inputs' dtype; the backbone and the map's assembly in float32)."""
    model = BGAD.load(run_dir).model_.eval()
    if compiled:
        model.compile_flows()
    if flows_bf16:
        float32_flows = model.level_log_probs

        def bf16_flows(features: list[torch.Tensor]) -> list[torch.Tensor]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return [log_prob.float() for log_prob in float32_flows(features)]

        model.level_log_probs = bf16_flows  # what model(images) scores the backbone's features with

    @torch.inference_mode()
    def run(images: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(images)).numpy()

    return run


def _dynamic_batch(path: Path) -> Run:
    """OpenVINO FP32 compiled once for any batch size (the engine compiles each batch size it meets instead)."""
    core = openvino.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()
    return lambda images: request.infer({"images": images})["anomaly_maps"]


def quantize_int8(onnx_path: Path, calibration: np.ndarray, output: Path, *, only: Sequence[str] = ()) -> float:
    """NNCF post-training INT8 quantization calibrated on ``calibration`` images (one per sample), of the inputs of
    the OpenVINO operation types ``only`` (empty: NNCF's choice over the whole graph); seconds."""
    import nncf

    start = time.perf_counter()
    model = openvino.Core().read_model(str(onnx_path))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    others = {op.get_type_name() for op in model.get_ops()} - {*only, "Parameter", "Constant", "Result"}
    ignored = nncf.IgnoredScope(types=sorted(others), validate=False) if only else None
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration), ignored_scope=ignored)
    openvino.save_model(quantized, str(output))
    return time.perf_counter() - start


def int8_engines(
    onnx_path: Path, calibration: np.ndarray, output: Path
) -> tuple[list[tuple[str, Callable[[], Run]]], dict[str, object]]:
    """The two INT8 engines and the results' INT8 fields (quantization seconds, notes). Without NNCF: no engine and
    a note, so that every other row is still measured."""
    if importlib.util.find_spec("nncf") is None:
        print(f"note: {NO_NNCF}", file=sys.stderr, flush=True)
        return [], {"int8_quantize_s": None, "int8_backbone_quantize_s": None, "notes": [NO_NNCF]}
    whole, convolutions = output / "model_int8.xml", output / "model_int8_backbone.xml"
    results = {
        "int8_quantize_s": round(quantize_int8(onnx_path, calibration, whole), 1),
        "int8_backbone_quantize_s": round(quantize_int8(onnx_path, calibration, convolutions, only=BACKBONE_OPS), 1),
        "notes": [],
    }
    engines = [
        ("openvino int8 (nncf)", lambda: open_openvino(whole).run),
        ("openvino int8 convolutions, fp32 rest", lambda: open_openvino(convolutions).run),
    ]
    return engines, results


def backbone_rows(run_dir: Path, images: np.ndarray, output: Path, repeats: int) -> list[dict[str, object]]:
    """The backbone alone (image batch in, its feature maps out) in torch eager, onnxruntime and OpenVINO FP32."""
    extractor = BGAD.load(run_dir).model_.extractor.eval()
    path = output / "backbone.onnx"
    if not path.is_file():
        size = images.shape[-1]
        program = torch.onnx.export(
            extractor,
            (torch.rand(2, 3, size, size),),
            dynamo=True,
            input_names=["images"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        program.save(path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    core = openvino.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    runs: dict[str, Callable[[int], Callable[[np.ndarray], object]]] = {
        "torch eager": lambda batch: lambda x: extractor(torch.from_numpy(x)),
        "onnxruntime": lambda batch: lambda x: session.run(None, {"images": x}),
        "openvino fp32": lambda batch: _static_openvino(core, path, batch, config),
    }
    rows = []
    with torch.inference_mode():
        for name, make in runs.items():
            row: dict[str, object] = {"backbone": name}
            for batch in BATCHES:
                x, run = np.ascontiguousarray(images[:batch]), make(batch)
                seconds = median_seconds(lambda x=x, run=run: run(x), repeats=repeats, warmup=WARMUP)
                row[f"ms_batch_{batch}"] = round(1000 * seconds / batch, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _static_openvino(core: openvino.Core, path: Path, batch: int, config: dict) -> Callable[[np.ndarray], object]:
    model = core.read_model(str(path))
    model.reshape({"images": [batch, *model.input(0).get_partial_shape()[1:]]})
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda x: request.infer({"images": x})


def measure(
    name: str,
    open_engine: Callable[[], Run],
    samples: Sequence,
    inputs: np.ndarray,
    resize: str,
    reference: np.ndarray | None,
    repeats: int,
) -> tuple[dict[str, object], np.ndarray]:
    """Start-up, speed and metrics of one engine; returns its row and its evaluation maps."""
    start = time.perf_counter()
    run = open_engine()
    run(inputs[:1])
    row: dict[str, object] = {"engine": name, "startup_s": round(time.perf_counter() - start, 2)}
    start = time.perf_counter()
    run(inputs[: BATCHES[-1]])
    row[f"first_batch_{BATCHES[-1]}_s"] = round(time.perf_counter() - start, 2)
    for batch in BATCHES:
        x = np.ascontiguousarray(inputs[:batch])
        seconds = median_seconds(lambda x=x: run(x), repeats=repeats, warmup=WARMUP)
        row[f"ms_batch_{batch}"] = round(1000 * seconds / batch, 2)
    paths = [s.path for s in samples]
    evaluation = evaluate(_Precomputed(run, paths, inputs, resize), samples, batch_size=BATCHES[-1], progress=False)
    metrics = evaluation.metrics()
    row.update(
        image_auroc=round(metrics.image_auroc, 5),
        pixel_auroc=round(metrics.pixel_auroc, 5),
        pixel_aupro=round(metrics.pixel_aupro, 5),
    )
    maps = evaluation.anomaly_maps
    if reference is not None:
        row["max_abs_map_diff"] = float(np.abs(maps - reference).max())
    print(json.dumps(row), flush=True)
    return row, maps


def evaluation_samples(run_dir: Path, data_root: Path | None) -> tuple[list, list]:
    """The run's evaluation samples (test minus its known anomalies) and its training normals."""
    record = read_run(run_dir / "run.json")
    dataset = record.dataset.to_dict()
    if data_root is not None:
        dataset["data_root"] = str(data_root.absolute())
    category = DatasetSpec.from_dict(dataset).load()
    known = set(record.known_anomalies)
    return [s for s in category.test if category.relative(s.path) not in known], list(category.train)


def _tensors(paths: Sequence[Path], detector: BGAD) -> np.ndarray:
    model = detector.model_
    batches = image_batches(
        paths, image_size=model.config.image_size, batch_size=8, resize=detector.resize, fill=model.extractor.pad_color
    )
    return torch.cat(list(batches)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder (only read)")
    parser.add_argument("--output", type=Path, required=True, help="folder for model.onnx, the INT8 model, results")
    parser.add_argument("--data-root", type=Path, help="the dataset's root if it moved since the fit")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=150,
        help="training normals for INT8 calibration (every k-th, k = all // N)",
    )
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    detector = BGAD.load(args.run)
    samples, normals = evaluation_samples(args.run, args.data_root)
    inputs = _tensors([s.path for s in samples], detector)
    step = max(1, len(normals) // args.calibration_images)
    calibration = _tensors([s.path for s in normals[::step][: args.calibration_images]], detector)
    onnx_path = args.output / "model.onnx"
    export_s = None
    if not onnx_path.is_file():
        start = time.perf_counter()
        export_onnx(detector, onnx_path)
        export_s = round(time.perf_counter() - start, 1)
    int8_rows, int8_results = int8_engines(onnx_path, calibration, args.output)
    resize = detector.resize
    del detector

    engines: list[tuple[str, Callable[[], Run]]] = [
        ("torch eager", lambda: _torch_engine(args.run)),
        ("torch compile_flows", lambda: _torch_engine(args.run, compiled=True)),
        ("torch eager, flows under bf16 autocast", lambda: _torch_engine(args.run, flows_bf16=True)),
        ("onnxruntime", lambda: open_onnxruntime(onnx_path).run),
        ("openvino fp32", lambda: open_openvino(onnx_path).run),
        ("openvino fp32, one dynamic-batch compile", lambda: _dynamic_batch(onnx_path)),
        ("openvino default precision (bf16 here)", lambda: open_openvino(onnx_path, precision=None).run),
        *int8_rows,
    ]
    rows, reference = [], None
    for name, open_engine in engines:
        row, maps = measure(name, open_engine, samples, inputs, resize, reference, args.repeats)
        reference = maps if reference is None else reference
        rows.append(row)
    backbones = backbone_rows(args.run, inputs, args.output, args.repeats)
    own = {r["backbone"].split()[0]: r["ms_batch_1"] for r in backbones}  # torch, onnxruntime, openvino
    for row in rows:
        row["ratio_batch_1"] = round(row["ms_batch_1"] / own["torch"], 2)
        row["ratio_own_backbone_batch_1"] = round(row["ms_batch_1"] / own[row["engine"].split()[0]], 2)
    eager = rows[0]
    for row in rows:
        for metric in ("image_auroc", "pixel_auroc", "pixel_aupro"):
            row[f"delta_{metric}"] = round(row[metric] - eager[metric], 5)
    cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    results = {
        "run": str(args.run),
        "cpu": cpu.split(":", 1)[1].strip(),
        "versions": {package.__name__: package.__version__ for package in (torch, onnxruntime, openvino)},
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "n_eval_images": len(samples),
        "n_calibration_images": len(calibration),
        "export_s": export_s,
        **int8_results,
        "backbone": backbones,
        "load_average_after": os.getloadavg(),
        "wall_s": round(time.time() - started, 1),
        "engines": rows,
    }
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "engines"}, indent=2))
    print("| backbone only | ms/image batch 1 | ms/image batch 8 |\n|---|---:|---:|")
    for r in backbones:
        print(f"| {r['backbone']} | {r['ms_batch_1']} | {r['ms_batch_8']} |")
    print(
        "| engine | ms/image batch 1 | ms/image batch 8 | ratio to torch backbone (batch 1) "
        "| ratio to own backbone | start-up s | first batch 8 s "
        "| Δ image AUROC | Δ pixel AUROC | Δ AUPRO | max abs map diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['ms_batch_1']} | {r['ms_batch_8']} | {r['ratio_batch_1']} "
            f"| {r['ratio_own_backbone_batch_1']} | {r['startup_s']} "
            f"| {r['first_batch_8_s']} | {r['delta_image_auroc']:+.4f} | {r['delta_pixel_auroc']:+.4f} "
            f"| {r['delta_pixel_aupro']:+.4f} | {r.get('max_abs_map_diff', 0):.1e} |"
        )


if __name__ == "__main__":
    main()
