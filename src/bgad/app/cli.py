"""The ``bgad`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from .._version import __version__
from ..config import PRESETS, RESIZE_MODES, SYNTHESES, BGADConfig, load_config
from ..data.checks import check_dataset
from ..data.demo import make_demo_dataset
from ..data.layouts import DatasetSpec
from ..detector import BGAD
from ..devices import DEVICES, resolve_device
from ..distributed import launched, process_group
from ..engines import ENGINES, choose_engine, load_detector
from ..errors import BGADError, DatasetError, TrainingInterrupted
from ..evaluation import EVAL_SIZES
from ..export import ONNX_FILE, export_onnx
from ..inference import Detector
from ..method.model import BGADModel
from ..method.thresholds import describe_operating_point, override_thresholds
from ..model_files import model_digest
from .ablation import run_ablation
from .benchmark import collect_benchmark, parse_shard, run_benchmark
from .calibration import calibrate_run
from .crossval import cross_validate
from .prediction import MAPS, SCORES_CSV, check_output, collect_images, predict_folder
from .review import REVIEW_CSV, REVIEW_SHEET, review_queue, write_review
from .runs import RunResults, evaluate_run, fit_run, resume_run
from .serve import MAX_PIXELS
from .speed import inference_speed, training_speed
from .update import update_run


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"bgad: error: {message}\n")


def _config_for(args: argparse.Namespace) -> BGADConfig:
    config = load_config(args.preset or "default", args.config)
    overrides = {
        "num_anomalies": args.num_anomalies,
        "seed": args.seed,
        "anomaly_sampling": args.anomaly_sampling,
        "synthesis": getattr(args, "synthesis", None),
    }
    train = {k: v for k, v in overrides.items() if v is not None}
    model = {"resize": args.resize} if args.resize is not None else {}
    target = getattr(args, "target_fpr", None)
    threshold = {"target_fpr": target} if target is not None else {}
    return BGADConfig.from_dict({"train": train, "model": model, "threshold": threshold}, base=config)


def _dataset_spec(args: argparse.Namespace) -> DatasetSpec | None:
    """The dataset the data options describe, or None if none."""
    given = [name for name in ("data_root", "normal_dir", "manifest") if getattr(args, name) is not None]
    if len(given) > 1:
        raise BGADError(f"give one data source, not {' and '.join('--' + g.replace('_', '-') for g in given)}")
    folder_options = args.defect_dir or args.mask_dir or args.test_normal_dir
    if folder_options and args.normal_dir is None:
        raise BGADError("--defect-dir, --mask-dir and --test-normal-dir need --normal-dir")
    if (args.data_root is None) != (args.category is None):
        raise BGADError("--data-root and --category go together")
    if not given:
        return None
    unmasked = args.unmasked_defects or "error"
    if args.data_root is not None:
        return DatasetSpec(
            args.layout or "mvtec",
            {"data_root": _absolute(args.data_root), "category": args.category, "unmasked": unmasked},
        )
    if args.manifest is not None:
        return DatasetSpec("manifest", {"manifest": _absolute(args.manifest), "unmasked": unmasked})
    return DatasetSpec(
        "folders",
        {
            "normal_dir": _absolute(args.normal_dir),
            "defect_dirs": [_absolute(p) for p in args.defect_dir],
            "mask_dirs": [_absolute(p) for p in args.mask_dir],
            "test_normal_dirs": [_absolute(p) for p in args.test_normal_dir],
            "test_normal_ratio": 0.2 if args.test_normal_ratio is None else args.test_normal_ratio,
            "unmasked": unmasked,
        },
    )


def _absolute(path: Path) -> str:
    return str(path.absolute())


def _required_dataset(args: argparse.Namespace) -> DatasetSpec:
    spec = _dataset_spec(args)
    if spec is None:
        raise BGADError("no data given: use --data-root with --category, --normal-dir, or --manifest")
    return spec


# fit's options that --from cannot take (RUN's data and options are used), as (attribute, option).
_NOT_WITH_FROM = [
    (name, "--" + name.replace("_", "-"))
    for name in (
        "resume",
        "cv",
        "data_root",
        "category",
        "layout",
        "manifest",
        "test_normal_dir",
        "test_normal_ratio",
        "unmasked_defects",
        "num_anomalies",
        "seed",
        "anomaly_sampling",
        "resize",
        "preset",
        "config",
        "synthesis",
        "overwrite",
        "drop_duplicates",
    )
]


def _fit_from(args: argparse.Namespace) -> RunResults:
    """``bgad fit --from RUN``: one line for every option it cannot take, then the update."""
    given = [option for name, option in _NOT_WITH_FROM if getattr(args, name) not in (None, False, [])]
    if given:
        raise BGADError(
            f"--from RUN trains on with RUN's data and options, so {', '.join(given)} cannot go with it "
            "(it takes --defect-dir, --mask-dir, --normal-dir, --meta-epochs, --normal-fraction, --eval-size, --output)"
        )
    if args.output is None:
        raise BGADError("--output is required (the new run folder to create; RUN is left unchanged)")
    return update_run(
        args.parent,
        args.output,
        args.defect_dir,
        args.mask_dir,
        normal_dir=args.normal_dir,
        meta_epochs=args.meta_epochs,
        normal_fraction=args.normal_fraction,
        eval_size=args.eval_size,
        progress=not args.quiet,
        device=args.device,
    )


def _cmd_fit(args: argparse.Namespace) -> int:
    with process_group(resolve_device(args.device)) as parallel:
        if parallel is not None and (args.cv is not None or args.parent is not None or args.select is not None):
            option = "--cv" if args.cv is not None else "--from" if args.parent is not None else "--select"
            raise BGADError(f"{option} does not run under torchrun: run it as one process")
        try:
            return _fit(args)
        except RuntimeError as err:  # a collective failed: another process stopped (process 0 says why)
            if parallel is None or parallel.is_main:
                raise
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise BGADError(f"process {parallel.rank} stopped with the launch: {reason}") from None


def _fit(args: argparse.Namespace) -> int:
    if (args.meta_epochs is not None or args.normal_fraction is not None) and args.parent is None:
        raise BGADError("--meta-epochs and --normal-fraction go with --from RUN (the update's schedule)")
    if args.select is not None and (args.parent is not None or args.resume is not None or args.cv is not None):
        raise BGADError("--select goes with a plain fit (not with --from, --resume or --cv)")
    if args.parent is not None:
        output = args.output
        results = _fit_from(args)
    elif args.resume is not None:
        if args.output is not None or args.cv is not None or _dataset_spec(args) is not None:
            raise BGADError(
                "--resume takes the data, options and output of the interrupted fit; give nothing else but --device"
            )
        output = args.resume
        results = resume_run(output, progress=not args.quiet, device=args.device)
    elif args.cv is not None:
        if args.output is None:
            raise BGADError("--output is required (the folder for the folds' runs and cv.md)")
        summary = cross_validate(
            _required_dataset(args),
            args.output,
            _config_for(args),
            args.cv,
            overwrite=args.overwrite,
            eval_size=args.eval_size or "input",
            drop_duplicates=args.drop_duplicates,
            progress=not args.quiet,
            device=args.device,
        )
        print(json.dumps(summary, indent=2))
        print(f"folds, cv.json and cv.md written to {args.output}", file=sys.stderr)
        return 0
    else:
        if args.output is None:
            raise BGADError("--output is required (the run folder to create)")
        config = _config_for(args)
        output = args.output
        results = fit_run(
            _required_dataset(args),
            output,
            config,
            overwrite=args.overwrite,
            eval_size=args.eval_size or "input",
            drop_duplicates=args.drop_duplicates,
            progress=not args.quiet,
            device=args.device,
            select_folds=args.select,
        )
    if results is None:  # a process other than 0 of a data-parallel fit: process 0 reports
        return 0
    print(json.dumps(results.to_dict(), indent=2))
    if results.operating_point is not None:
        threshold = results.decisions["image_threshold"]
        print(f"image threshold {threshold:.4g}: {describe_operating_point(results.operating_point)}", file=sys.stderr)
    print(f"model, metrics and logs written to {output}", file=sys.stderr)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    report = check_dataset(
        _required_dataset(args).load(),
        _config_for(args).train,
        drop_duplicates=args.drop_duplicates,
        progress=not args.quiet,
    )
    print(report.summary())
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"bgad: error: {problem}", file=sys.stderr)
    if report.problems:
        print(f"bgad: {len(report.problems)} problem(s) found", file=sys.stderr)
        return 2
    print("no problems found")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    config = _config_for(args)
    path = run_ablation(_required_dataset(args), args.output, config, progress=not args.quiet, device=args.device)
    print(path.read_text())
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    results = evaluate_run(
        args.run,
        _dataset_spec(args),
        output=args.output,
        eval_size=args.eval_size or "input",
        progress=not args.quiet,
        device=args.device,
    )
    print(json.dumps(results.to_dict(), indent=2))
    return 0


def _load_for_prediction(args: argparse.Namespace) -> Detector:
    engine, device = args.engine, resolve_device(args.device).type  # auto: cuda or cpu
    if args.compile and engine not in ("auto", "torch"):
        raise BGADError(f"--compile applies to the torch engine, not {engine}")
    if args.compile:
        engine = "torch"
    elif engine == "auto":
        engine, why = choose_engine(args.run, device=device)
        if not args.quiet:
            print(f"bgad: engine {engine} ({why})", file=sys.stderr)
    detector = load_detector(args.run, engine, device=device)
    if args.compile:
        detector.model_.compile_flows()
    return detector


def _apply_thresholds(args: argparse.Namespace, detector: Detector) -> None:
    """The --image-threshold, --pixel-threshold and --target-fpr options, over the model's own thresholds."""
    detector.thresholds_ = override_thresholds(
        detector.thresholds_,
        detector.normal_scores_,
        image=args.image_threshold,
        pixel=args.pixel_threshold,
        target_fpr=args.target_fpr,
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.review and args.maps != "all":
        raise BGADError("--review shows the heatmaps: it needs --maps all")
    check_output(args.output)
    detector = _load_for_prediction(args)
    _apply_thresholds(args, detector)
    images, problems = collect_images(args.paths, skip=args.output)
    for problem in problems:
        print(f"bgad: error: {problem}", file=sys.stderr)
    if not images:
        print("bgad: error: no images to predict on", file=sys.stderr)
        return 2
    try:
        scored = predict_folder(
            detector,
            images,
            args.output,
            batch_size=args.batch_size,
            mask_every_image=args.mask_every_image,
            maps=args.maps,
            problems=problems,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(f"bgad: interrupted; the images scored so far are in {args.output / SCORES_CSV}", file=sys.stderr)
        return 130
    flagged = sum(s.is_anomalous for s in scored)
    print(f"{len(scored)} images scored, {flagged} flagged anomalous; results in {args.output}", file=sys.stderr)
    if args.review:
        items = review_queue(scored, detector.thresholds_, args.review)
        write_review(args.output, items)
        print(f"{len(items)} images to review: {args.output / REVIEW_CSV} and {REVIEW_SHEET}", file=sys.stderr)
    if problems:
        print(f"bgad: {len(problems)} input(s) could not be processed (listed above)", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import Scorer, listening_socket, model_description, serve

    with listening_socket(args.host, args.port) as listener:  # a port in use fails now, before the model loads
        detector = _load_for_prediction(args)
        _apply_thresholds(args, detector)
        scorer = Scorer(detector, model_description(args.run, detector), max_pixels=args.max_pixels)
        print(
            f"bgad serve: http://{args.host}:{args.port}/ (API schema at /openapi.json); Ctrl-C stops", file=sys.stderr
        )
        serve(scorer, listener, args.host)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    if len(args.mask_dir) > len(args.defect_dir):
        raise BGADError("--mask-dir needs --defect-dir")
    summary = calibrate_run(
        args.run,
        args.output,
        args.normal_dir,
        defect_dirs=args.defect_dir,
        mask_dirs=args.mask_dir,
        target_fpr=args.target_fpr,
        device=args.device,
    )
    print(json.dumps(summary, indent=2))
    print(f"calibrated model written to {args.output} ({args.run} is unchanged)", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    output = args.output or args.run / ONNX_FILE
    export_onnx(BGAD.load(args.run), output, source_digest=model_digest(args.run))
    print(f"exported {args.run} to {output}", file=sys.stderr)
    return 0


def _cmd_speed(args: argparse.Namespace) -> int:
    if args.run is not None:
        detector = BGAD.load(args.run)
        model, config = detector.model_, detector.config
    else:
        config = load_config(args.preset)
        model = BGADModel(config.model)
    device = resolve_device(args.device)
    model.to(device).eval()
    if args.compile:
        model.compile_flows()
    cpu = f"cpu ({torch.get_num_threads()} threads)"
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
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


def _add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="onnx (onnxruntime) and openvino run RUN/model.onnx (bgad export); auto (default): the fastest of "
        "those that is installed when RUN/model.onnx exists, else torch",
    )


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


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


def _shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except BGADError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _cmd_benchmark(args: argparse.Namespace) -> int:
    if args.collect:
        settings = {
            "--data-root": args.data_root,
            "--categories": args.categories,
            "--preset": args.preset,
            "--seeds": args.seeds,
            "--jobs": args.jobs,
            "--no-baseline": args.no_baseline or None,
            "--config": args.config,
            "--shard": args.shard,
        }
        given = [flag for flag, value in settings.items() if value is not None]
        if given:
            raise BGADError(f"--collect takes --output only (the settings are in its plan.json); drop {given[0]}")
        md = collect_benchmark(args.output)
    elif args.data_root is None:
        raise BGADError("--data-root is required (or --collect, to gather the results of --shard runs)")
    else:
        shard = args.shard or (0, 1)
        md = run_benchmark(
            args.data_root,
            args.output,
            categories=args.categories,
            preset=args.preset or "default",
            seeds=args.seeds or [0],
            jobs=args.jobs or 1,
            baseline=not args.no_baseline,
            config_file=args.config,
            shard=shard,
            progress=not args.quiet,
            device=args.device,
        )
        if md is None:
            print(
                f"shard {shard[0]}/{shard[1]} done, its results are in {args.output / 'runs'}; once every shard has "
                f"finished: bgad benchmark --collect --output {args.output}"
            )
            return 0
    print(f"benchmark results: {md} and {md.with_name('results.csv')} (runs in {md.parent / 'runs'})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    data_root = args.output / "data"
    print(f"writing a synthetic dataset to {data_root}", file=sys.stderr)
    make_demo_dataset(data_root, category="demo_part", seed=args.seed)
    config = BGADConfig.from_dict({"train": {"seed": args.seed}}, base=load_config("fast"))
    run = args.output / "run"
    dataset = DatasetSpec("mvtec", {"data_root": str(data_root.absolute()), "category": "demo_part"})
    results = fit_run(dataset, run, config, overwrite=True, progress=not args.quiet, device=args.device)
    print(json.dumps(results.to_dict(), indent=2))
    print(
        f"demo done: data in {data_root}, model and metrics in {run} (re-test: bgad test --run {run})", file=sys.stderr
    )
    return 0


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-anomalies",
        type=_count_or_all,
        help="known anomalies to train on, drawn from the defect images (default 10), or all (then use --cv)",
    )
    parser.add_argument("--seed", type=int, help="seed for the anomaly choice and training (default 0)")
    parser.add_argument(
        "--anomaly-sampling",
        help="stratified (default), random, type:NAME (all known anomalies of one type) or fold:K/N",
    )
    parser.add_argument(
        "--resize", choices=RESIZE_MODES, help="non-square images: stretch to a square (default) or pad (keep)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default, paper or fast (default: default)")
    parser.add_argument("--config", type=Path, help="YAML file with model/loss/train options over the preset")


def _add_data_options(parser: argparse.ArgumentParser, default_help: str = "") -> None:
    group = parser.add_argument_group(
        "data",
        f"one of: --data-root with --category, --normal-dir (with defect folders), or --manifest. {default_help}",
    )
    group.add_argument("--data-root", type=Path, help="folder holding the category folders of a benchmark layout")
    group.add_argument("--category", help="category (VisA: object) to use")
    group.add_argument("--layout", choices=["mvtec", "btad", "visa"], help="default mvtec")
    group.add_argument("--normal-dir", type=Path, help="folder of good images")
    group.add_argument("--defect-dir", type=Path, action="append", default=[], help="folder of defect images (repeat)")
    group.add_argument("--mask-dir", type=Path, action="append", default=[], help="folder of masks (repeat)")
    group.add_argument(
        "--test-normal-dir", type=Path, action="append", default=[], help="good images kept for evaluation (repeat)"
    )
    group.add_argument(
        "--test-normal-ratio", type=float, help="without --test-normal-dir: good images held out (default 0.2)"
    )
    group.add_argument("--manifest", type=Path, help="CSV with path,label,mask,split[,defect_type]")
    group.add_argument(
        "--unmasked-defects",
        choices=["error", "image-only"],
        help="a defect image without a mask is an error (default) or evaluated at image level only",
    )


def _add_threshold_options(parser: argparse.ArgumentParser) -> None:
    decide = parser.add_argument_group("decisions (default: the model's own thresholds, model.json)")
    decide.add_argument("--image-threshold", type=float, help="an image is anomalous when its score is above this")
    decide.add_argument("--pixel-threshold", type=float, help="a pixel is in the defect mask when above this")
    decide.add_argument(
        "--target-fpr",
        type=_rate,
        help="instead of --image-threshold: the threshold expected to flag this share of good parts (from the "
        "model's out-of-sample normal scores)",
    )


def _count_or_all(text: str) -> int:
    if text == "all":
        return -1
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count or 'all': {text!r}")
    return int(text)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        choices=DEVICES,
        help="where to compute: cpu (default), cuda, or auto (cuda when torch sees a GPU, else cpu)",
    )


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _add_eval_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-size",
        choices=EVAL_SIZES,
        help="pixel metrics on the model's input grid (default; fit --from: RUN's) or, with full, also at each "
        "image's resolution against the original masks (metrics.json: full_resolution)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bgad", description="Supervised anomaly detection with BGAD.")
    parser.add_argument("--version", action="version", version=f"bgad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        if name not in ("check", "export"):  # the two commands that compute nothing on a model's device
            _add_device_option(sub)
        return sub

    fit = command("fit", _cmd_fit, "check a dataset, train on it, save the model and evaluate it")
    _add_data_options(fit)
    fit.add_argument("--output", type=Path, help="run folder to create")
    update = fit.add_argument_group(
        "train on from a run",
        "--from RUN --defect-dir NEW [--mask-dir M] [--normal-dir NEW_GOOD] --output RUN2: RUN's model trained on "
        "with its own training images and the new ones, into a new run (RUN is never changed)",
    )
    update.add_argument("--from", dest="parent", type=Path, metavar="RUN", help="the run to start from")
    update.add_argument(
        "--meta-epochs", type=_positive_int, help="with --from: BG-SPP meta-epochs (default train.update_meta_epochs)"
    )
    update.add_argument(
        "--normal-fraction",
        type=_share,
        help="with --from: share of RUN's good images trained on, a seeded sample; the new ones always are "
        "(default train.update_normal_fraction)",
    )
    fit.add_argument("--resume", type=Path, metavar="RUN", help="continue the interrupted fit of RUN (alone)")
    _add_training_options(fit)
    fit.add_argument("--synthesis", choices=SYNTHESES, help="synthetic anomalies (default cutpaste)")
    fit.add_argument(
        "--target-fpr",
        type=_rate,
        help="the share of good parts the image threshold may flag, estimated out of sample (default "
        "threshold.target_fpr, 0.01)",
    )
    fit.add_argument("--overwrite", action="store_true", help="replace an existing bgad run folder (never another)")
    fit.add_argument(
        "--cv",
        type=_positive_int,
        metavar="N",
        help="N-fold cross-validation over the labelled defects: one run per fold in OUTPUT/fold<k>, cv.md",
    )
    fit.add_argument(
        "--select",
        type=_positive_int,
        nargs="?",
        const=3,
        metavar="K",
        help="before the fit, choose the levels and the score temperature by K-fold cross-validation over the "
        "known anomalies (default 3 folds; K more fits; never uses evaluation images); recorded in run.json",
    )
    _add_eval_size_option(fit)

    check = command("check", _cmd_check, "check a dataset before training: list every problem found")
    _add_data_options(check)
    _add_training_options(check)
    for data_command in (fit, check):
        data_command.add_argument(
            "--drop-duplicates",
            action="store_true",
            help="an evaluation image identical to a training image is dropped from the evaluation (default: error)",
        )

    ablate = command("ablate", _cmd_ablate, "train the method's variants on one dataset and print the table")
    _add_data_options(ablate)
    ablate.add_argument("--output", type=Path, required=True, help="folder for the variants' runs and ablation.md")
    _add_training_options(ablate)

    test = command("test", _cmd_test, "re-evaluate a saved run and print its metrics as JSON")
    test.add_argument("--run", type=Path, required=True)
    test.add_argument("--output", type=Path, help="also write metrics.json and report.html here (never into RUN)")
    _add_eval_size_option(test)
    _add_data_options(test, default_help="default: the data the run was trained on")

    predict = command("predict", _cmd_predict, "score new images: scores.csv, heatmaps and masks at original size")
    predict.add_argument("--run", type=Path, required=True, help="run folder or an exported .onnx file")
    _add_engine_option(predict)
    predict.add_argument("--output", type=Path, required=True, help="folder for scores.csv, heatmaps/ and masks/")
    predict.add_argument("--batch-size", type=_positive_int, default=4, help="images per forward pass (default 4)")
    predict.add_argument("--compile", action="store_true", help="torch.compile the flows (worth it for many images)")
    _add_threshold_options(predict)
    predict.add_argument(
        "--review",
        type=_positive_int,
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

    serve = command("serve", _cmd_serve, "serve a model: a web page and a JSON API for scoring images")
    serve.add_argument("--run", type=Path, required=True, help="run or model folder, or an exported .onnx file")
    _add_engine_option(serve)
    serve.add_argument("--compile", action="store_true", help="torch.compile the flows (slower start, faster answers)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument(
        "--max-pixels", type=_positive_int, default=MAX_PIXELS, help="larger uploads are refused (default 50 MP)"
    )
    _add_threshold_options(serve)

    calibrate = command(
        "calibrate", _cmd_calibrate, "set thresholds and score calibration again from new good images (no retraining)"
    )
    calibrate.add_argument("--run", type=Path, required=True, help="a run or model folder (left unchanged)")
    calibrate.add_argument("--normal-dir", type=Path, required=True, help="good images the model has not trained on")
    calibrate.add_argument("--defect-dir", type=Path, action="append", default=[], help="defect images (repeatable)")
    calibrate.add_argument("--mask-dir", type=Path, action="append", default=[], help="their masks (repeatable)")
    calibrate.add_argument(
        "--target-fpr", type=_rate, help="image threshold expected to flag this share of good parts (default: config)"
    )
    calibrate.add_argument("--output", type=Path, required=True, help="the new model folder to create")

    export = command("export", _cmd_export, "export a trained run for deployment (ONNX, with its thresholds)")
    export.add_argument("--run", type=Path, required=True)
    export.add_argument("--output", type=Path, help=f"default: RUN/{ONNX_FILE}")

    speed = command("speed", _cmd_speed, "measure backbone, end-to-end inference and training speed (JSON)")
    speed.add_argument("--run", type=Path, help="a trained run (default: an untrained model of --preset)")
    speed.add_argument("--preset", default="default", choices=sorted(PRESETS))
    speed.add_argument("--batch-size", type=_positive_int, default=8, help="the larger batch size measured besides 1")
    speed.add_argument(
        "--repeats", type=_positive_int, default=10, help="timed repeats per measurement (median reported)"
    )
    speed.add_argument("--compile", action="store_true", help="torch.compile the flows before measuring")

    bench = command("benchmark", _cmd_benchmark, "BGAD and two one-class floors, categories x seeds: results.md/csv")
    bench.add_argument(
        "--data-root", type=Path, help="folder holding the category folders (required but for --collect)"
    )
    bench.add_argument("--output", type=Path, required=True, help="results folder (resumes the tasks done there)")
    bench.add_argument("--categories", type=_comma_list, help="comma list (default: every folder with train/good)")
    bench.add_argument("--preset", choices=sorted(PRESETS), help="default: default")
    bench.add_argument("--seeds", type=_seed_list, help="comma list of seeds (default 0)")
    bench.add_argument("--jobs", type=_positive_int, help="tasks run at once, each in its own process (default 1)")
    bench.add_argument(
        "--no-baseline", action="store_true", help="skip the one-class floors (gaussian and the padim variants)"
    )
    bench.add_argument("--config", type=Path, help="YAML file with model/loss/train options over the preset")
    bench.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="run only shard I of N (0-based; tasks sorted by category, seed, dealt round-robin) into a shared "
        "--output, writing no table; e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
    )
    bench.add_argument(
        "--collect", action="store_true", help="write results.md/csv of OUTPUT from its shards' stored results"
    )

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
