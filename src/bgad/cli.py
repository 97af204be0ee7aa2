"""The ``bgad`` command line: fit, test and demo. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import PRESETS, BGADConfig, load_config
from .data import Category, evaluation_samples, load_mvtec_category, select_known_anomalies
from .demo_data import make_demo_dataset
from .detector import BGAD
from .errors import BGADError
from .evaluation import evaluate

RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
KNOWN_ANOMALIES = "known_anomalies.txt"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"bgad: error: {message}\n")


def _config_for(args: argparse.Namespace) -> BGADConfig:
    config = load_config(args.preset, args.config)
    overrides = {"num_anomalies": args.num_anomalies, "seed": args.seed}
    train = {k: v for k, v in overrides.items() if v is not None}
    return BGADConfig.from_dict({"train": train}, base=config)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _relative(sample_path: Path, category: Category) -> str:
    return sample_path.relative_to(category.root).as_posix()


def fit_run(
    data_root: Path, category_name: str, output: Path, config: BGADConfig, *, overwrite: bool, progress: bool
) -> dict[str, Any]:
    """Train, save and evaluate one category into ``output``; return the metrics.

    Everything is written into a temporary folder beside ``output`` that replaces it only at the end, so an
    error or Ctrl-C leaves nothing half-written.
    """
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise BGADError(f"output {output} already exists and is not empty (use --overwrite to replace it)")
    category = load_mvtec_category(data_root, category_name)
    known = select_known_anomalies(category, config.train.num_anomalies, seed=config.train.seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        (staging / KNOWN_ANOMALIES).write_text("".join(f"{_relative(s.path, category)}\n" for s in known))
        detector = BGAD(config).fit(
            [s.path for s in category.train],
            [s.path for s in known],
            [s.mask_path for s in known],
            log_path=staging / TRAIN_LOG,
            progress=progress,
        )
        detector.save(staging)
        run = {
            "bgad_version": __version__,
            "data_root": str(data_root.resolve()),
            "category": category.name,
            "known_anomalies": [_relative(s.path, category) for s in known],
        }
        _write_json(staging / RUN_JSON, run)
        results = evaluate(detector, evaluation_samples(category, known), progress=progress).metrics()
        results.update(n_known_anomalies=len(known), train_seconds=round(detector.train_seconds_, 1))
        _write_json(staging / METRICS_JSON, results)
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results


def test_run(run: Path, data_root: Path | None, category_name: str | None, *, progress: bool) -> dict[str, Any]:
    """Re-evaluate a saved run on its category (or another), leaving out the known anomalies it trained on."""
    run_json = run / RUN_JSON
    if not run_json.is_file():
        raise BGADError(f"not a bgad run: {run_json} is missing")
    info = json.loads(run_json.read_text())
    detector = BGAD.load(run)
    category = load_mvtec_category(data_root or Path(info["data_root"]), category_name or info["category"])
    used = set(info["known_anomalies"]) if category.name == info["category"] else set()
    samples = [s for s in category.test if _relative(s.path, category) not in used]
    results = evaluate(detector, samples, progress=progress).metrics()
    results["n_known_anomalies"] = len(info["known_anomalies"])
    return results


def _cmd_fit(args: argparse.Namespace) -> int:
    results = fit_run(
        args.data_root, args.category, args.output, _config_for(args), overwrite=args.overwrite, progress=not args.quiet
    )
    print(json.dumps(results, indent=2))
    print(f"model, metrics and logs written to {args.output}", file=sys.stderr)
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    print(json.dumps(test_run(args.run, args.data_root, args.category, progress=not args.quiet), indent=2))
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
    fit.add_argument("--num-anomalies", type=int, help="known anomalies taken from the test set (default 10)")
    fit.add_argument("--seed", type=int, help="seed for the anomaly choice and training (default 0)")
    fit.add_argument("--preset", default="default", choices=sorted(PRESETS))
    fit.add_argument("--config", type=Path, help="YAML file with model/loss/train options over the preset")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing run folder")

    test = command("test", _cmd_test, "re-evaluate a saved run and print its metrics as JSON")
    test.add_argument("--run", type=Path, required=True)
    test.add_argument("--data-root", type=Path, help="default: the data root the run was trained on")
    test.add_argument("--category", help="default: the category the run was trained on")

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
