"""The handlers of the ``bgad`` commands: typed options in, one line per user error (a :class:`BGADError`), results
out; ``bgad fit`` has one handler per mode."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import BGADConfig, load_config
from ..data.checks import check_dataset
from ..data.demo import make_demo_dataset
from ..data.layouts import DatasetSpec
from ..deploy.engines import choose_engine, load_detector
from ..deploy.export import ONNX_FILE, export_onnx
from ..detector import BGAD
from ..errors import BGADError
from ..inference import Detector
from ..method.model import BGADModel
from ..method.thresholds import Thresholds, describe_operating_point, override_thresholds
from ..runtime.devices import resolve_device
from ..runtime.distributed import process_group
from ..storage.model_files import model_digest
from .ablation import run_ablation
from .benchmark import collect_benchmark, run_benchmark
from .calibration import calibrate_run
from .crossval import cross_validate
from .options import config_for, dataset_spec, required_dataset
from .prediction import SCORES_CSV, check_output, collect_images, predict_folder
from .review import REVIEW_CSV, REVIEW_SHEET, review_queue, write_review
from .runs import RunResults, evaluate_run, fit_run, resume_run
from .speed import inference_speed, training_speed
from .update import update_run

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


def cmd_fit(args: argparse.Namespace) -> int:
    """``bgad fit`` in one of its modes: a plain fit, ``--from RUN``, ``--resume RUN`` or ``--cv N``."""
    if (args.meta_epochs is not None or args.normal_fraction is not None) and args.parent is None:
        raise BGADError("--meta-epochs and --normal-fraction go with --from RUN (the update's schedule)")
    if args.select is not None and (args.parent is not None or args.resume is not None or args.cv is not None):
        raise BGADError("--select goes with a plain fit (not with --from, --resume or --cv)")
    mode = _fit_from if args.parent is not None else _resume if args.resume is not None else None
    mode = mode or (_cross_validate if args.cv is not None else _plain_fit)
    alone = [
        option for option, value in (("--cv", args.cv), ("--from", args.parent), ("--select", args.select)) if value
    ]
    with process_group(resolve_device(args.device)) as parallel:
        if parallel is not None and alone:
            raise BGADError(f"{alone[0]} does not run under torchrun: run it as one process")
        try:
            return mode(args)
        except RuntimeError as err:  # a collective failed: another process stopped (process 0 says why)
            if parallel is None or parallel.is_main:
                raise
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise BGADError(f"process {parallel.rank} stopped with the launch: {reason}") from None


def _fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a new run (or each fold's run) takes from the command line, as :func:`fit_run` names them."""
    return {
        "overwrite": args.overwrite,
        "eval_size": args.eval_size or "input",
        "drop_duplicates": args.drop_duplicates,
        "progress": not args.quiet,
        "device": args.device,
    }


def _plain_fit(args: argparse.Namespace) -> int:
    if args.output is None:
        raise BGADError("--output is required (the run folder to create)")
    options = _fit_options(args)
    results = fit_run(required_dataset(args), args.output, config_for(args), select_folds=args.select, **options)
    return _report_fit(results, args.output)


def _fit_from(args: argparse.Namespace) -> int:
    """``bgad fit --from RUN``: one line for every option it cannot take, then the update."""
    given = [option for name, option in _NOT_WITH_FROM if getattr(args, name) not in (None, False, [])]
    if given:
        raise BGADError(
            f"--from RUN trains on with RUN's data and options, so {', '.join(given)} cannot go with it "
            "(it takes --defect-dir, --mask-dir, --normal-dir, --meta-epochs, --normal-fraction, --eval-size, --output)"
        )
    if args.output is None:
        raise BGADError("--output is required (the new run folder to create; RUN is left unchanged)")
    results = update_run(
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
    return _report_fit(results, args.output)


def _resume(args: argparse.Namespace) -> int:
    if args.output is not None or args.cv is not None or dataset_spec(args) is not None:
        raise BGADError(
            "--resume takes the data, options and output of the interrupted fit; give nothing else but --device"
        )
    return _report_fit(resume_run(args.resume, progress=not args.quiet, device=args.device), args.resume)


def _cross_validate(args: argparse.Namespace) -> int:
    if args.output is None:
        raise BGADError("--output is required (the folder for the folds' runs and cv.md)")
    summary = cross_validate(required_dataset(args), args.output, config_for(args), args.cv, **_fit_options(args))
    print(json.dumps(summary, indent=2))
    print(f"folds, cv.json and cv.md written to {args.output}", file=sys.stderr)
    return 0


def _report_fit(results: RunResults | None, output: Path) -> int:
    """Print a fit's metrics (JSON on stdout) and its operating point; None: a process other than 0 of a
    data-parallel fit, for which process 0 reports."""
    if results is None:
        return 0
    print(json.dumps(results.to_dict(), indent=2))
    if results.operating_point is not None:
        threshold = results.decisions["image_threshold"]
        print(f"image threshold {threshold:.4g}: {describe_operating_point(results.operating_point)}", file=sys.stderr)
    print(f"model, metrics and logs written to {output}", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    report = check_dataset(
        required_dataset(args).load(),
        config_for(args).train,
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


def cmd_ablate(args: argparse.Namespace) -> int:
    config = config_for(args)
    path = run_ablation(required_dataset(args), args.output, config, progress=not args.quiet, device=args.device)
    print(path.read_text())
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    results = evaluate_run(
        args.run,
        dataset_spec(args),
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


def _thresholds(args: argparse.Namespace, detector: Detector) -> Thresholds:
    """The thresholds to judge by: the --image-threshold, --pixel-threshold and --target-fpr options over the
    model's own."""
    return override_thresholds(
        detector.thresholds_,
        detector.normal_scores_,
        image=args.image_threshold,
        pixel=args.pixel_threshold,
        target_fpr=args.target_fpr,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    if args.review and args.maps != "all":
        raise BGADError("--review shows the heatmaps: it needs --maps all")
    check_output(args.output)
    detector = _load_for_prediction(args)
    thresholds = _thresholds(args, detector)
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
            thresholds=thresholds,
            problems=problems,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(f"bgad: interrupted; the images scored so far are in {args.output / SCORES_CSV}", file=sys.stderr)
        return 130
    flagged = sum(s.is_anomalous for s in scored)
    print(f"{len(scored)} images scored, {flagged} flagged anomalous; results in {args.output}", file=sys.stderr)
    if args.review:
        items = review_queue(scored, thresholds, args.review)
        write_review(args.output, items)
        print(f"{len(items)} images to review: {args.output / REVIEW_CSV} and {REVIEW_SHEET}", file=sys.stderr)
    if problems:
        print(f"bgad: {len(problems)} input(s) could not be processed (listed above)", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import Scorer, listening_socket, model_description, serve

    with listening_socket(args.host, args.port) as listener:  # a port in use fails now, before the model loads
        detector = _load_for_prediction(args)
        thresholds = _thresholds(args, detector)
        description = model_description(args.run, detector, thresholds)
        scorer = Scorer(detector, description, max_pixels=args.max_pixels, thresholds=thresholds)
        print(
            f"bgad serve: http://{args.host}:{args.port}/ (API schema at /openapi.json); Ctrl-C stops", file=sys.stderr
        )
        serve(scorer, listener, args.host)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
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


def cmd_export(args: argparse.Namespace) -> int:
    output = args.output or args.run / ONNX_FILE
    export_onnx(BGAD.load(args.run), output, source_digest=model_digest(args.run))
    print(f"exported {args.run} to {output}", file=sys.stderr)
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
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


def cmd_benchmark(args: argparse.Namespace) -> int:
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


def cmd_demo(args: argparse.Namespace) -> int:
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
