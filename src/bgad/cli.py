"""The ``bgad`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .ablation import run_ablation
from .benchmark import run_benchmark
from .config import PRESETS, BGADConfig, load_config
from .demo_data import make_demo_dataset
from .detector import BGAD
from .errors import BGADError
from .experiment import fit_run, test_run
from .export import OnnxDetector, export_onnx
from .images import IMAGE_SUFFIXES, read_image
from .model import BGADModel
from .speed import inference_speed, training_speed
from .visualize import heatmap_overlay

# The coarsest feature level has stride 16: a smaller image has no cell of its own there.
MIN_IMAGE_SIDE = 16
ONNX_FILE = "model.onnx"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"bgad: error: {message}\n")


def _config_for(args: argparse.Namespace) -> BGADConfig:
    config = load_config(args.preset, args.config)
    overrides = {
        "num_anomalies": args.num_anomalies,
        "seed": args.seed,
        "anomaly_sampling": args.anomaly_sampling,
        "synthesis": getattr(args, "synthesis", None),
    }
    train = {k: v for k, v in overrides.items() if v is not None}
    return BGADConfig.from_dict({"train": train}, base=config)


def _cmd_fit(args: argparse.Namespace) -> int:
    results = fit_run(
        args.data_root, args.category, args.output, _config_for(args), overwrite=args.overwrite, progress=not args.quiet
    )
    print(json.dumps(results, indent=2))
    print(f"model, metrics and logs written to {args.output}", file=sys.stderr)
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    path = run_ablation(args.data_root, args.category, args.output, _config_for(args), progress=not args.quiet)
    print(path.read_text())
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    print(json.dumps(test_run(args.run, args.data_root, args.category, progress=not args.quiet), indent=2))
    return 0


def _collect_images(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Image files named directly or found (recursively) in folders, plus one problem line per bad path."""
    images, problems = [], []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            images += found
            if not found:
                problems.append(f"no images in folder {path}")
        elif path.is_file():
            images.append(path)
        else:
            problems.append(f"not found: {path}")
    return images, problems


def _output_names(images: Sequence[Path]) -> list[str]:
    """File stems made unique (``name``, ``name_2``, ...) so that outputs from different folders never collide."""
    seen: dict[str, int] = {}
    names = []
    for image in images:
        seen[image.stem] = seen.get(image.stem, 0) + 1
        names.append(image.stem if seen[image.stem] == 1 else f"{image.stem}_{seen[image.stem]}")
    return names


def _read_for_prediction(path: Path) -> Image.Image:
    picture = read_image(path)
    if min(picture.size) < MIN_IMAGE_SIDE:
        raise BGADError(f"image {path} is {picture.width}x{picture.height}, smaller than the network's stride")
    return picture


def _load_for_prediction(args: argparse.Namespace) -> BGAD | OnnxDetector:
    if args.engine == "torch":
        detector = BGAD.load(args.run).to(args.device)
        if args.compile:
            detector.model_.compile_flows()
        return detector
    if args.device != "cpu":
        raise BGADError("the onnx engine runs on the CPU here; use --engine torch for --device cuda")
    return OnnxDetector.load(args.run / ONNX_FILE if args.run.is_dir() else args.run)


def _cmd_predict(args: argparse.Namespace) -> int:
    detector = _load_for_prediction(args)
    images, problems = _collect_images(args.paths)
    for problem in problems:
        print(f"bgad: error: {problem}", file=sys.stderr)
    if not images:
        print("bgad: error: no images to predict on", file=sys.stderr)
        return 2
    heatmaps, masks = args.output / "heatmaps", args.output / "masks"
    heatmaps.mkdir(parents=True, exist_ok=True)
    masks.mkdir(exist_ok=True)
    rows = []
    names = dict(zip(images, _output_names(images), strict=True))
    with tqdm(total=len(images), desc="predicting", unit="img", disable=args.quiet) as bar:
        for start in range(0, len(images), args.batch_size):
            readable = {}
            for image in images[start : start + args.batch_size]:
                try:
                    readable[image] = _read_for_prediction(image)
                except BGADError as err:
                    problems.append(str(err))
                    print(f"bgad: error: {err}", file=sys.stderr)
            predictions = detector.predict_batch(list(readable.values()), batch_size=args.batch_size)
            for (image, picture), prediction in zip(readable.items(), predictions, strict=True):
                overlay = heatmap_overlay(
                    np.asarray(picture), prediction.anomaly_map, threshold=detector.thresholds_.pixel
                )
                Image.fromarray(overlay).save(heatmaps / f"{names[image]}.png")
                Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(masks / f"{names[image]}_mask.png")
                rows.append((str(image), f"{prediction.score:.6g}", int(prediction.is_anomalous)))
            bar.update(min(args.batch_size, len(images) - start))
    with open(args.output / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "is_anomalous"])
        writer.writerows(rows)
    flagged = sum(row[2] for row in rows)
    print(f"{len(rows)} images scored, {flagged} flagged anomalous; results in {args.output}", file=sys.stderr)
    if problems:
        print(f"bgad: {len(problems)} input(s) could not be processed (listed above)", file=sys.stderr)
        return 1
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    output = args.output or args.run / ONNX_FILE
    export_onnx(BGAD.load(args.run), output)
    print(f"exported {args.run} to {output}", file=sys.stderr)
    return 0


def _cmd_speed(args: argparse.Namespace) -> int:
    if args.run is not None:
        detector = BGAD.load(args.run)
        model, config = detector.model_, detector.config
    else:
        config = load_config(args.preset)
        model = BGADModel(config.model)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BGADError("device cuda was requested but no CUDA GPU is available to torch")
    model.to(args.device).eval()
    if args.compile:
        model.compile_flows()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "backbone": config.model.backbone,
        "image_size": config.model.image_size,
        "compiled_flows": args.compile,
    }
    report["batch_1"] = inference_speed(model, batch_size=1, repeats=args.repeats)
    report[f"batch_{args.batch_size}"] = inference_speed(model, batch_size=args.batch_size, repeats=args.repeats)
    report.update(report["batch_1"])
    report.update(training_speed(model, config.train, config.loss, steps=args.repeats))
    print(json.dumps(report, indent=2))
    return 0


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty items, got {text!r}")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"an item is repeated in {text!r}")
    return items


def _seed_list(text: str) -> list[int]:
    items = _comma_list(text)
    if not all(item.isdigit() for item in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return [int(item) for item in items]


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    md = run_benchmark(
        args.data_root,
        args.output,
        categories=args.categories,
        preset=args.preset,
        seeds=args.seeds,
        jobs=args.jobs,
        baseline=not args.no_baseline,
        config_file=args.config,
        progress=not args.quiet,
    )
    print(f"benchmark results: {md} and {md.with_name('results.csv')} (runs in {md.parent / 'runs'})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    data_root = args.output / "data"
    print(f"writing a synthetic dataset to {data_root}", file=sys.stderr)
    make_demo_dataset(data_root, category="demo_part", seed=args.seed)
    config = BGADConfig.from_dict({"train": {"seed": args.seed}}, base=load_config("fast"))
    run = args.output / "run"
    results = fit_run(data_root, "demo_part", run, config, overwrite=True, progress=not args.quiet)
    print(json.dumps(results, indent=2))
    print(
        f"demo done: data in {data_root}, model and metrics in {run} (re-test: bgad test --run {run})", file=sys.stderr
    )
    return 0


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-anomalies", type=int, help="known anomalies taken from the test set (default 10)")
    parser.add_argument("--seed", type=int, help="seed for the anomaly choice and training (default 0)")
    parser.add_argument(
        "--anomaly-sampling", help="stratified (default), random, or type:NAME (all known anomalies of one type)"
    )
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--config", type=Path, help="YAML file with model/loss/train options over the preset")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bgad", description="Supervised anomaly detection with BGAD.")
    parser.add_argument("--version", action="version", version=f"bgad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        return sub

    fit = command("fit", _cmd_fit, "train on an MVTec-layout category, save the model and evaluate it")
    fit.add_argument("--data-root", type=Path, required=True, help="folder holding the category folders")
    fit.add_argument("--category", required=True)
    fit.add_argument("--output", type=Path, required=True, help="run folder to create")
    _add_training_options(fit)
    fit.add_argument("--synthesis", choices=["cutpaste", "nsa", "none"], help="synthetic anomalies (default cutpaste)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing run folder")

    ablate = command("ablate", _cmd_ablate, "train the method's variants on one category and print the table")
    ablate.add_argument("--data-root", type=Path, required=True)
    ablate.add_argument("--category", required=True)
    ablate.add_argument("--output", type=Path, required=True, help="folder for the variants' runs and ablation.md")
    _add_training_options(ablate)

    test = command("test", _cmd_test, "re-evaluate a saved run and print its metrics as JSON")
    test.add_argument("--run", type=Path, required=True)
    test.add_argument("--data-root", type=Path, help="default: the data root the run was trained on")
    test.add_argument("--category", help="default: the category the run was trained on")

    predict = command("predict", _cmd_predict, "score new images: scores.csv, heatmaps and masks at original size")
    predict.add_argument("--run", type=Path, required=True, help="run folder (or, with --engine onnx, an .onnx file)")
    predict.add_argument("--engine", default="torch", choices=["torch", "onnx"], help="onnx: run RUN/model.onnx")
    predict.add_argument("--output", type=Path, required=True, help="folder for scores.csv, heatmaps/ and masks/")
    predict.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    predict.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    predict.add_argument("--compile", action="store_true", help="torch.compile the flows (worth it for many images)")
    predict.add_argument("paths", type=Path, nargs="+", help="image files or folders (searched recursively)")

    export = command("export", _cmd_export, "export a trained run for deployment (ONNX, with its thresholds)")
    export.add_argument("--run", type=Path, required=True)
    export.add_argument("--format", default="onnx", choices=["onnx"])
    export.add_argument("--output", type=Path, help=f"default: RUN/{ONNX_FILE}")

    speed = command("speed", _cmd_speed, "measure backbone, end-to-end inference and training speed (JSON)")
    speed.add_argument("--run", type=Path, help="a trained run (default: an untrained model of --preset)")
    speed.add_argument("--preset", default="default", choices=sorted(PRESETS))
    speed.add_argument("--batch-size", type=int, default=8, help="the larger batch size measured besides 1")
    speed.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    speed.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement (median reported)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the flows before measuring")

    bench = command("benchmark", _cmd_benchmark, "BGAD and a Gaussian baseline over categories x seeds: results.md/csv")
    bench.add_argument("--data-root", type=Path, required=True, help="folder holding the category folders")
    bench.add_argument("--output", type=Path, required=True, help="results folder (resumes the tasks done there)")
    bench.add_argument("--categories", type=_comma_list, help="comma list (default: every folder with train/good)")
    bench.add_argument("--preset", default="default", choices=sorted(PRESETS))
    bench.add_argument("--seeds", type=_seed_list, default=[0], help="comma list of seeds (default 0)")
    bench.add_argument("--jobs", type=_positive_int, default=1, help="tasks run at once, each in its own process")
    bench.add_argument("--no-baseline", action="store_true", help="skip the Gaussian baseline")
    bench.add_argument("--config", type=Path, help="YAML file with model/loss/train options over the preset")

    demo = command("demo", _cmd_demo, "generate a small synthetic dataset, then fit and test on it")
    demo.add_argument("--output", type=Path, required=True)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its one-line error (or --help)
        return int(exit_.code or 0)
    try:
        return args.handler(args)
    except BGADError as err:
        print(f"bgad: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bgad: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
