#!/usr/bin/env bash
# bgad on one NVIDIA GPU, in under 8 minutes: `bgad speed` at batch 1 and 32, a default-preset and a paper-preset
# fit, and a one-process torchrun fit, each with its wall time, metrics and peak GPU memory; a summary at the end.
#
#   bash benchmarks/gpu_check.sh [DATA_ROOT]     # from the repo root; DATA_ROOT (default ../shared/data/mvtec_ad)
#                                                # must hold the category (bottle) in the MVTec AD layout
#
# Needs the README's install with a CUDA build of torch, and nvidia-smi. Each step runs under `timeout`, capped so
# that all of them together stay within 8 minutes; a step that hits its cap is reported as such, with the
# meta-epochs its fit finished, and the check goes on. The paper preset (25 meta-epochs x 8 sub-epochs) is capped
# at 6 meta-epochs by a YAML override, since the whole schedule does not fit in its share (about 2 minutes; see
# docs/performance.md): the summary extrapolates the whole schedule from the seconds per meta-epoch.
#
# Peak GPU memory: nvidia-smi's memory.used, polled every 200 ms during the step, minus its value before the step.
# It is what the process holds on the device (CUDA context and the caching allocator's reserve included), which
# is what sizing a GPU needs; a peak shorter than 200 ms can be missed.
#
# Knobs (environment variables):
#   BGAD_GPU_CHECK_DEVICE=cuda         cpu: a dry run of the plumbing on a machine without a GPU (no GPU memory)
#   BGAD_GPU_CHECK_TINY=0              1: fits at 64 px, 3 meta-epochs; speed of the fast preset (with cpu: a quick
#                                      check of the script itself)
#   BGAD_GPU_CHECK_CATEGORY=bottle     the category of DATA_ROOT to fit
#   BGAD_GPU_CHECK_PAPER_META_EPOCHS=6 the paper fit's meta-epochs (25: the whole schedule; give it a longer cap)
#   BGAD_GPU_CHECK_PAPER_CAP=140       the paper fit's cap in seconds (more than 140: the check may pass 8 minutes)
#   BGAD_GPU_CHECK_OUT=DIR             where runs, logs and outputs go (default: a new folder under ${TMPDIR:-/tmp})
#   BGAD_PYTHON=PATH                   the interpreter (default: .venv/bin/python when present, else python3)
set -euo pipefail

DATA_ROOT=${1:-../shared/data/mvtec_ad}
DEVICE=${BGAD_GPU_CHECK_DEVICE:-cuda}
TINY=${BGAD_GPU_CHECK_TINY:-0}
CATEGORY=${BGAD_GPU_CHECK_CATEGORY:-bottle}
PAPER_META_EPOCHS=${BGAD_GPU_CHECK_PAPER_META_EPOCHS:-6}
OUT=${BGAD_GPU_CHECK_OUT:-}
if [[ -n ${BGAD_PYTHON:-} ]]; then
    PY=$BGAD_PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
# Caps in seconds: 430 in all (plus 5 s per step if a step must be killed), which leaves the checks before
# the steps and the summary well inside 8 minutes.
CAP_SPEED=60
CAP_DEFAULT=150
CAP_PAPER=${BGAD_GPU_CHECK_PAPER_CAP:-140}
CAP_TORCHRUN=80

die() {
    echo "gpu_check: error: $*" >&2
    exit 2
}

[[ $DEVICE == cuda || $DEVICE == cpu ]] || die "BGAD_GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'"
[[ $CAP_PAPER =~ ^[1-9][0-9]*$ ]] || die "BGAD_GPU_CHECK_PAPER_CAP must be a number of seconds, got '$CAP_PAPER'"
if ! [[ $PAPER_META_EPOCHS =~ ^[0-9]+$ ]] || ((PAPER_META_EPOCHS < 3 || PAPER_META_EPOCHS > 25)); then
    die "BGAD_GPU_CHECK_PAPER_META_EPOCHS must be 3 ... 25 (the warm-up takes 2), got '$PAPER_META_EPOCHS'"
fi
[[ -d $DATA_ROOT/$CATEGORY/train/good ]] ||
    die "no category '$CATEGORY' in '$DATA_ROOT' (expected $DATA_ROOT/$CATEGORY/train/good): give the data root"
"$PY" -c "import bgad" 2>/dev/null ||
    die "'$PY' cannot import bgad: install it as the README says (or set BGAD_PYTHON)"
FIT_HELP=$("$PY" -m bgad fit --help)
[[ $FIT_HELP == *--device* ]] || die "this bgad's fit has no --device option"
BGAD_VERSION=$("$PY" -c "import bgad; print(bgad.__version__)")
TORCH=$("$PY" -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda)")
if [[ $DEVICE == cuda ]]; then
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
    "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
        die "torch $TORCH sees no GPU: the README installs the CPU build; install a CUDA build of torch"
    GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader -i 0)
else
    GPU="none (BGAD_GPU_CHECK_DEVICE=cpu: a dry run, no GPU memory measured)"
fi

if [[ -z $OUT ]]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/bgad_gpu_check.XXXXXX")
fi
mkdir -p "$OUT"

# YAML overrides of the fits' settings (bgad fit --config: over the preset).
TINY_YAML=$OUT/tiny.yaml
PAPER_YAML=$OUT/paper_cap.yaml
printf 'model:\n  image_size: 64\ntrain:\n  meta_epochs: 3\n' >"$TINY_YAML"
printf 'train:\n  meta_epochs: %s\n' "$PAPER_META_EPOCHS" >"$PAPER_YAML"
if [[ $TINY == 1 ]]; then
    DEFAULT_CONFIG=(--config "$TINY_YAML")
    PAPER_CONFIG=(--config "$TINY_YAML")
    FAST_CONFIG=(--config "$TINY_YAML")
    PAPER_NOTE="TINY: 64 px, 3 meta-epochs"
    SPEED_ARGS=(--preset fast --repeats 2)
else
    DEFAULT_CONFIG=()
    PAPER_CONFIG=(--config "$PAPER_YAML")
    FAST_CONFIG=()
    PAPER_NOTE="capped at $PAPER_META_EPOCHS of 25 meta-epochs (train.meta_epochs via --config)"
    if ((PAPER_META_EPOCHS < 25)); then
        PAPER_NOTE+=": the whole schedule does not fit in its cap"
    fi
    SPEED_ARGS=()
fi

echo "gpu_check: bgad $BGAD_VERSION, torch $TORCH, python $PY"
echo "gpu_check: GPU: $GPU"
echo "gpu_check: data $DATA_ROOT/$CATEGORY, device $DEVICE, output $OUT"
echo "gpu_check: caps: speed ${CAP_SPEED} s, default fit ${CAP_DEFAULT} s, paper fit ${CAP_PAPER} s, torchrun fit ${CAP_TORCHRUN} s"
echo "gpu_check: paper fit $PAPER_NOTE"

gpu_memory_used() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0
}

POLLER=""
stop_poller() {
    if [[ -n $POLLER ]]; then
        kill "$POLLER" 2>/dev/null || true
        wait "$POLLER" 2>/dev/null || true
        POLLER=""
    fi
}
trap stop_poller EXIT

STEPS=()
declare -A STATUS WALL PEAK
run_step() { # run_step NAME CAP COMMAND...: stdout to NAME.out, stderr to NAME.log; wall time, GPU memory, status
    local name=$1 cap=$2 base=0 rc=0 start
    shift 2
    STEPS+=("$name")
    echo
    echo "== $name (cap $cap s): $*"
    if [[ $DEVICE == cuda ]]; then
        base=$(gpu_memory_used)
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 >"$OUT/$name.mem" 2>/dev/null &
        POLLER=$!
    fi
    start=$(date +%s%N)
    timeout --kill-after=5 "$cap" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" || rc=$?
    WALL[$name]=$(awk -v start="$start" -v end="$(date +%s%N)" 'BEGIN { printf "%.1f", (end - start) / 1e9 }')
    stop_poller
    PEAK[$name]="n/a"
    if [[ $DEVICE == cuda && -s $OUT/$name.mem ]]; then
        PEAK[$name]=$(($(sort -n "$OUT/$name.mem" | tail -n 1) - base))
    fi
    case $rc in
    0) STATUS[$name]="ok" ;;
    124 | 137) STATUS[$name]="TIMEOUT" ;;
    *) STATUS[$name]="FAILED($rc)" ;;
    esac
    if [[ $DEVICE == cuda ]]; then
        echo "$name: ${STATUS[$name]} in ${WALL[$name]} s, peak GPU memory ${PEAK[$name]} MiB over the $base MiB before"
    else
        echo "$name: ${STATUS[$name]} in ${WALL[$name]} s"
    fi
    if ((rc != 0)); then
        echo "-- last lines of $OUT/$name.log:"
        tail -n 8 "$OUT/$name.log" || true
    fi
}

fit() { # fit NAME CAP FIT_ARGS...: a plain bgad fit of the category into OUT/NAME
    local name=$1 cap=$2
    shift 2
    run_step "$name" "$cap" "$PY" -m bgad fit --device "$DEVICE" --data-root "$DATA_ROOT" --category "$CATEGORY" \
        --output "$OUT/$name" "$@"
}

report() { # report NAME: a step's result in one line, read from its files
    "$PY" - "$OUT" "$1" "$PAPER_META_EPOCHS" "$TINY" <<'EOF'
import json
import sys
from pathlib import Path


def speed(out: Path) -> str:
    r = json.loads((out / "speed.out").read_text())
    batches = [
        f"{k}: {b['end_to_end_ms']:.2f} ms/img end to end ({b['backbone_ms']:.2f} backbone), {b['images_per_s']:.0f} img/s"
        for k, b in r.items()
        if k.startswith("batch_") and isinstance(b, dict)
    ]
    return "; ".join([*batches, f"flow training {r['train_vectors_per_s']:,} vectors/s", r["device"]])


def fit(out: Path, name: str, paper_epochs: int, tiny: bool) -> str:
    log = out / name / "train_log.jsonl"
    if not log.is_file():
        log = out / f".{name}.partial" / "train_log.jsonl"  # an unfinished fit keeps its work here
    epochs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    seconds = [e["seconds"] for e in epochs if e["phase"] != "normal-only"]
    mean = sum(seconds) / len(seconds) if seconds else 0.0
    per_epoch = f"{mean:.1f} s per BG-SPP meta-epoch" if seconds else "no BG-SPP meta-epoch finished"
    metrics = out / name / "metrics.json"
    if not metrics.is_file():
        return f"no metrics; {len(epochs)} meta-epoch(s) finished, {per_epoch}"
    m = json.loads(metrics.read_text())
    line = (
        f"image/pixel AUROC {m['image_auroc']:.3f}/{m['pixel_auroc']:.3f}, AUPRO {m['pixel_aupro']:.3f}, "
        f"train {m['train_seconds']:.0f} s, {len(epochs)} meta-epochs, {per_epoch}"
    )
    if name == "fit_paper" and seconds and not tiny and paper_epochs < 25:
        wall = float((out / "fit_paper.wall").read_text())
        line += f"; all 25 meta-epochs: about {wall + (25 - len(epochs)) * mean:.0f} s wall (extrapolated)"
    return line


out, name = Path(sys.argv[1]), sys.argv[2]
try:
    print(speed(out) if name == "speed" else fit(out, name, int(sys.argv[3]), sys.argv[4] == "1"))
except (OSError, ValueError, KeyError) as err:
    print(f"could not read its output: {err!r}")
EOF
}

run_step speed "$CAP_SPEED" "$PY" -m bgad speed --device "$DEVICE" --batch-size 32 ${SPEED_ARGS[@]+"${SPEED_ARGS[@]}"}
fit fit_default "$CAP_DEFAULT" ${DEFAULT_CONFIG[@]+"${DEFAULT_CONFIG[@]}"}
fit fit_paper "$CAP_PAPER" --preset paper "${PAPER_CONFIG[@]}"
echo "${WALL[fit_paper]}" >"$OUT/fit_paper.wall"
run_step torchrun_fit "$CAP_TORCHRUN" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m bgad fit --device "$DEVICE" --data-root "$DATA_ROOT" --category "$CATEGORY" --output "$OUT/torchrun_fit" \
    --preset fast ${FAST_CONFIG[@]+"${FAST_CONFIG[@]}"}

echo
echo "== summary: bgad $BGAD_VERSION, torch $TORCH, device $DEVICE, GPU $GPU, $CATEGORY"
printf '%-13s %-10s %8s %14s  %s\n' step status "wall s" "peak GPU MiB" result
for name in "${STEPS[@]}"; do
    printf '%-13s %-10s %8s %14s  %s\n' "$name" "${STATUS[$name]}" "${WALL[$name]}" "${PEAK[$name]}" "$(report "$name")"
done
echo "fit_default: preset default; fit_paper: preset paper, $PAPER_NOTE; torchrun_fit: preset fast, torchrun" \
    "(python -m torch.distributed.run --standalone --nproc_per_node 1)"
echo "total: $SECONDS s (the caps keep it under 480 s); runs and logs in $OUT"
