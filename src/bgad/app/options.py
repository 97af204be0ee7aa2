"""The command line's options: argument types that check a value and name it in one line, the option groups
several commands share, and the typed values (configuration, dataset) that the handlers get from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import PRESETS, RESIZE_MODES, BGADConfig, load_config
from ..data.layouts import DatasetSpec
from ..deploy.engines import ENGINES
from ..errors import BGADError
from ..evaluation import EVAL_SIZES
from ..runtime.devices import DEVICES
from .benchmark import parse_shard


def config_for(args: argparse.Namespace) -> BGADConfig:
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


def dataset_spec(args: argparse.Namespace) -> DatasetSpec | None:
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
            {"data_root": absolute(args.data_root), "category": args.category, "unmasked": unmasked},
        )
    if args.manifest is not None:
        return DatasetSpec("manifest", {"manifest": absolute(args.manifest), "unmasked": unmasked})
    return DatasetSpec(
        "folders",
        {
            "normal_dir": absolute(args.normal_dir),
            "defect_dirs": [absolute(p) for p in args.defect_dir],
            "mask_dirs": [absolute(p) for p in args.mask_dir],
            "test_normal_dirs": [absolute(p) for p in args.test_normal_dir],
            "test_normal_ratio": 0.2 if args.test_normal_ratio is None else args.test_normal_ratio,
            "unmasked": unmasked,
        },
    )


def absolute(path: Path) -> str:
    return str(path.absolute())


def required_dataset(args: argparse.Namespace) -> DatasetSpec:
    spec = dataset_spec(args)
    if spec is None:
        raise BGADError("no data given: use --data-root with --category, --normal-dir, or --manifest")
    return spec


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="onnx (onnxruntime) and openvino run RUN/model.onnx (bgad export); auto (default): the fastest of "
        "those that is installed when RUN/model.onnx exists, else torch",
    )


def comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty items, got {text!r}")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"an item is repeated in {text!r}")
    return items


def seed_list(text: str) -> list[int]:
    items = comma_list(text)
    if not all(item.isdigit() for item in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return [int(item) for item in items]


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


def shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except BGADError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-anomalies",
        type=count_or_all,
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


def add_data_options(parser: argparse.ArgumentParser, default_help: str = "") -> None:
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


def add_threshold_options(parser: argparse.ArgumentParser) -> None:
    decide = parser.add_argument_group("decisions (default: the model's own thresholds, model.json)")
    decide.add_argument("--image-threshold", type=float, help="an image is anomalous when its score is above this")
    decide.add_argument("--pixel-threshold", type=float, help="a pixel is in the defect mask when above this")
    decide.add_argument(
        "--target-fpr",
        type=rate,
        help="instead of --image-threshold: the threshold expected to flag this share of good parts (from the "
        "model's out-of-sample normal scores)",
    )


def count_or_all(text: str) -> int:
    if text == "all":
        return -1
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count or 'all': {text!r}")
    return int(text)


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        choices=DEVICES,
        help="where to compute: cpu (default), cuda, or auto (cuda when torch sees a GPU, else cpu)",
    )


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_eval_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-size",
        choices=EVAL_SIZES,
        help="pixel metrics on the model's input grid (default; fit --from: RUN's) or, with full, also at each "
        "image's resolution against the original masks (metrics.json: full_resolution)",
    )
