"""The ``bgad`` command line: the parser and :func:`main`. Every user error is one line on stderr and exit code 2;
the handlers are in :mod:`bgad.app.commands`, the option types in :mod:`bgad.app.options`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from .._version import __version__
from ..config import PRESETS, SYNTHESES
from ..deploy.export import ONNX_FILE
from ..errors import BGADError, DatasetError, TrainingInterrupted
from ..runtime.devices import resolve_device
from ..runtime.distributed import launched
from .commands import (
    cmd_ablate,
    cmd_benchmark,
    cmd_calibrate,
    cmd_check,
    cmd_demo,
    cmd_export,
    cmd_fit,
    cmd_predict,
    cmd_serve,
    cmd_speed,
    cmd_test,
)
from .options import (
    add_data_options,
    add_device_option,
    add_engine_option,
    add_eval_size_option,
    add_threshold_options,
    add_training_options,
    comma_list,
    port,
    positive_int,
    rate,
    seed_list,
    shard,
    share,
)
from .prediction import MAPS
from .serve import MAX_PIXELS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"bgad: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bgad", description="Supervised anomaly detection with BGAD.")
    parser.add_argument("--version", action="version", version=f"bgad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        if name not in ("check", "export"):  # the two commands that compute nothing on a model's device
            add_device_option(sub)
        return sub

    fit = command("fit", cmd_fit, "check a dataset, train on it, save the model and evaluate it")
    add_data_options(fit)
    fit.add_argument("--output", type=Path, help="run folder to create")
    update = fit.add_argument_group(
        "train on from a run",
        "--from RUN --defect-dir NEW [--mask-dir M] [--normal-dir NEW_GOOD] --output RUN2: RUN's model trained on "
        "with its own training images and the new ones, into a new run (RUN is never changed)",
    )
    update.add_argument("--from", dest="parent", type=Path, metavar="RUN", help="the run to start from")
    update.add_argument(
        "--meta-epochs", type=positive_int, help="with --from: BG-SPP meta-epochs (default train.update_meta_epochs)"
    )
    update.add_argument(
        "--normal-fraction",
        type=share,
        help="with --from: share of RUN's good images trained on, a seeded sample; the new ones always are "
        "(default train.update_normal_fraction)",
    )
    fit.add_argument("--resume", type=Path, metavar="RUN", help="continue the interrupted fit of RUN (alone)")
    add_training_options(fit)
    fit.add_argument("--synthesis", choices=SYNTHESES, help="synthetic anomalies (default cutpaste)")
    fit.add_argument(
        "--target-fpr",
        type=rate,
        help="the share of good parts the image threshold may flag, estimated out of sample (default "
        "threshold.target_fpr, 0.01)",
    )
    fit.add_argument("--overwrite", action="store_true", help="replace an existing bgad run folder (never another)")
    fit.add_argument(
        "--cv",
        type=positive_int,
        metavar="N",
        help="N-fold cross-validation over the labelled defects: one run per fold in OUTPUT/fold<k>, cv.md",
    )
    fit.add_argument(
        "--select",
        type=positive_int,
        nargs="?",
        const=3,
        metavar="K",
        help="before the fit, choose the levels and the score temperature by K-fold cross-validation over the "
        "known anomalies (default 3 folds; K more fits; never uses evaluation images); recorded in run.json",
    )
    add_eval_size_option(fit)

    check = command("check", cmd_check, "check a dataset before training: list every problem found")
    add_data_options(check)
    add_training_options(check)
    for data_command in (fit, check):
        data_command.add_argument(
            "--drop-duplicates",
            action="store_true",
            help="an evaluation image identical to a training image is dropped from the evaluation (default: error)",
        )

    ablate = command("ablate", cmd_ablate, "train the method's variants on one dataset and print the table")
    add_data_options(ablate)
    ablate.add_argument("--output", type=Path, required=True, help="folder for the variants' runs and ablation.md")
    add_training_options(ablate)

    test = command("test", cmd_test, "re-evaluate a saved run and print its metrics as JSON")
    test.add_argument("--run", type=Path, required=True)
    test.add_argument("--output", type=Path, help="also write metrics.json and report.html here (never into RUN)")
    add_eval_size_option(test)
    add_data_options(test, default_help="default: the data the run was trained on")

    predict = command("predict", cmd_predict, "score new images: scores.csv, heatmaps and masks at original size")
    predict.add_argument("--run", type=Path, required=True, help="run folder or an exported .onnx file")
    add_engine_option(predict)
    predict.add_argument("--output", type=Path, required=True, help="folder for scores.csv, heatmaps/ and masks/")
    predict.add_argument("--batch-size", type=positive_int, default=4, help="images per forward pass (default 4)")
    predict.add_argument("--compile", action="store_true", help="torch.compile the flows (worth it for many images)")
    add_threshold_options(predict)
    predict.add_argument(
        "--review",
        type=positive_int,
        metavar="N",
        help="also list the N images nearest the image threshold and the good ones with a region above the pixel "
        "threshold (review.csv, review.png): what to label next",
    )
    predict.add_argument(
        "--mask-every-image",
        action="store_true",
        help="write above-threshold pixels for images judged good too (default: their mask is empty)",
    )
    predict.add_argument(
        "--maps",
        choices=MAPS,
        default="all",
        help="images written beside scores.csv: heatmaps and masks (all, the default), masks only, or none",
    )
    predict.add_argument("paths", type=Path, nargs="+", help="image files or folders (searched recursively)")

    serve = command("serve", cmd_serve, "serve a model: a web page and a JSON API for scoring images")
    serve.add_argument("--run", type=Path, required=True, help="run or model folder, or an exported .onnx file")
    add_engine_option(serve)
    serve.add_argument("--compile", action="store_true", help="torch.compile the flows (slower start, faster answers)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=port, default=8000)
    serve.add_argument(
        "--max-pixels", type=positive_int, default=MAX_PIXELS, help="larger uploads are refused (default 50 MP)"
    )
    add_threshold_options(serve)

    calibrate = command(
        "calibrate", cmd_calibrate, "set thresholds and score calibration again from new good images (no retraining)"
    )
    calibrate.add_argument("--run", type=Path, required=True, help="a run or model folder (left unchanged)")
    calibrate.add_argument("--normal-dir", type=Path, required=True, help="good images the model has not trained on")
    calibrate.add_argument("--defect-dir", type=Path, action="append", default=[], help="defect images (repeatable)")
    calibrate.add_argument("--mask-dir", type=Path, action="append", default=[], help="their masks (repeatable)")
    calibrate.add_argument(
        "--target-fpr", type=rate, help="image threshold expected to flag this share of good parts (default: config)"
    )
    calibrate.add_argument("--output", type=Path, required=True, help="the new model folder to create")

    export = command("export", cmd_export, "export a trained run for deployment (ONNX, with its thresholds)")
    export.add_argument("--run", type=Path, required=True)
    export.add_argument("--output", type=Path, help=f"default: RUN/{ONNX_FILE}")

    speed = command("speed", cmd_speed, "measure backbone, end-to-end inference and training speed (JSON)")
    speed.add_argument("--run", type=Path, help="a trained run (default: an untrained model of --preset)")
    speed.add_argument("--preset", default="default", choices=sorted(PRESETS))
    speed.add_argument("--batch-size", type=positive_int, default=8, help="the larger batch size measured besides 1")
    speed.add_argument(
        "--repeats", type=positive_int, default=10, help="timed repeats per measurement (median reported)"
    )
    speed.add_argument("--compile", action="store_true", help="torch.compile the flows before measuring")

    bench = command("benchmark", cmd_benchmark, "BGAD and two one-class floors, categories x seeds: results.md/csv")
    bench.add_argument(
        "--data-root", type=Path, help="folder holding the category folders (required but for --collect)"
    )
    bench.add_argument("--output", type=Path, required=True, help="results folder (resumes the tasks done there)")
    bench.add_argument("--categories", type=comma_list, help="comma list (default: every folder with train/good)")
    bench.add_argument("--preset", choices=sorted(PRESETS), help="default: default")
    bench.add_argument("--seeds", type=seed_list, help="comma list of seeds (default 0)")
    bench.add_argument("--jobs", type=positive_int, help="tasks run at once, each in its own process (default 1)")
    bench.add_argument(
        "--no-baseline", action="store_true", help="skip the one-class floors (gaussian and the padim variants)"
    )
    bench.add_argument("--config", type=Path, help="YAML file with model/loss/train options over the preset")
    bench.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="run only shard I of N (0-based; tasks sorted by category, seed, dealt round-robin) into a shared "
        "--output, writing no table; e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
    )
    bench.add_argument(
        "--collect", action="store_true", help="write results.md/csv of OUTPUT from its shards' stored results"
    )

    demo = command("demo", cmd_demo, "generate a small synthetic dataset, then fit and test on it")
    demo.add_argument("--output", type=Path, required=True)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its one-line error (or --help)
        return int(exit_.code or 0)
    try:
        if launched() and args.command != "fit":
            raise BGADError(
                f"only `bgad fit` runs under torchrun (data-parallel training): run bgad {args.command} alone"
            )
        if hasattr(args, "device"):
            resolve_device(args.device)  # a missing GPU fails first, before anything is read or written
        return args.handler(args)
    except DatasetError as err:
        for problem in err.problems:
            print(f"bgad: error: {problem}", file=sys.stderr)
        if len(err.problems) > 1:
            print(f"bgad: {len(err.problems)} problems in the dataset; nothing was written", file=sys.stderr)
        return 2
    except BGADError as err:
        print(f"bgad: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused (a full disk, a read-only folder): nothing to fix in bgad
        print(f"bgad: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as interrupted:
        print(f"bgad: {interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("bgad: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
