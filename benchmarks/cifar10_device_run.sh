#!/usr/bin/env bash
# The prepared CUDA run: one command on a fresh GPU machine (600 s per command, 64 MiB carried, 8 files back from
# $OUT). See benchmarks/README.md ("The GPU run") for the preparation and the call.
#
#   1. installs the carried wheels (.whl/, benchmarks/device_wheels.txt) into a private folder and fails early
#      without CUDA, data or a working import of rrd_hf;
#   2. speed: benchmarks/side_by_side.py on the GPU: KD and RRD on resnet32x4->resnet8x4 and resnet20->resnet8,
#      the plain loop, rrd_hf's default path and rrd_hf's per-sample data path, steady-state images/s;
#   3. accuracy: a resnet32x4 teacher, then resnet8x4 alone, with KD, RRD and RRD+KD on the full CIFAR-10,
#      top-1/top-5 every epoch (the same harness, rrd_hf side only);
#   4. writes only results under $OUT: env.json, speed.json, speed.csv, accuracy.json, accuracy.csv, log.txt.
#      speed.json and accuracy.json are result files (benchmarks/json_output.py, tags "speed" and "accuracy");
#      `python benchmarks/json_output.py speed.json accuracy.json` copies them to benchmarks/results/ under their
#      names. Put RRD_HF_COMMIT=<what `python benchmarks/json_output.py --commit` prints in the checkout> in the
#      command: the GPU machine has no .git, and the files record the commit.
#
# Each phase gets a deadline (side_by_side.py starts no run that would end after it) and a hard timeout; results
# are rewritten after every run, so a phase cut short still returns what it measured.
#
#   OUT=$OUT bash benchmarks/cifar10_device_run.sh                 # on the device (the tool sets OUT)
#   DRY_RUN=1 OUT=/tmp/dry PYTHON=.venv/bin/python bash benchmarks/cifar10_device_run.sh   # CPU dry run, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:?set OUT to the folder that receives the results}"
DRY_RUN="${DRY_RUN:-0}"
PYTHON="${PYTHON:-python3}"
PHASES="${PHASES:-speed accuracy}"
DATA="${DATA:-data/cifar10}"
WHEELS="${WHEELS:-.whl}"
WORK="${WORK:-/tmp/rrd_hf_device}"
BUDGET_S="${BUDGET_S:-550}"                # the whole script; the tool kills a command at 600 s
SPEED_BUDGET_S="${SPEED_BUDGET_S:-220}"
PER_SAMPLE_FLAGS="${PER_SAMPLE_FLAGS:---data_pipeline per_sample}"
ACCURACY_FLAGS="${ACCURACY_FLAGS:-}"            # rrd_hf's default data path
if [ "$DRY_RUN" = 1 ]; then               # the same steps on a tiny budget, on the CPU
  SPEED_PAIRS="${SPEED_PAIRS:-resnet20-resnet8}"
  SPEED_IMAGES="${SPEED_IMAGES:-128}"; WARMUP_STEPS="${WARMUP_STEPS:-1}"; WORKERS="${WORKERS:-2}"
  TEACHER_EPOCHS="${TEACHER_EPOCHS:-1}"; EPOCHS="${EPOCHS:-1}"
  ACCURACY_IMAGES="${ACCURACY_IMAGES:-128}"; EVAL_IMAGES="${EVAL_IMAGES:-64}"
else
  SPEED_PAIRS="${SPEED_PAIRS:-resnet32x4-resnet8x4,resnet20-resnet8}"
  SPEED_IMAGES="${SPEED_IMAGES:-12800}"; WARMUP_STEPS="${WARMUP_STEPS:-20}"; WORKERS="${WORKERS:-8}"
  TEACHER_EPOCHS="${TEACHER_EPOCHS:-10}"; EPOCHS="${EPOCHS:-10}"
  ACCURACY_IMAGES="${ACCURACY_IMAGES:-0}"; EVAL_IMAGES="${EVAL_IMAGES:-0}"
fi
SPEED_METHODS="${SPEED_METHODS:-KD,RRD}"
ACCURACY_METHODS="${ACCURACY_METHODS:-CE,KD,RRD,RRD+KD}"

mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1
started=$SECONDS
echo "== rrd_hf device run $(date -u +%FT%TZ) dry_run=$DRY_RUN phases='$PHASES' budget ${BUDGET_S}s"

# --- 1. environment -------------------------------------------------------------------------------------------------
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  if [ "$DRY_RUN" = 1 ]; then  # prove the wheel set installs for the device's Python 3.12; keep this machine's own
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 "$WHEELS"/*.whl
    echo "dry run: the carried wheels install for cp312 into $WORK/site (not used on this machine)"
  else
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$WHEELS"/*.whl
    export PYTHONPATH="$WORK/site"
  fi
else
  echo "no wheels in $WHEELS/: using the installed packages (see benchmarks/README.md for the wheels to carry)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_HOME="$WORK/hf_home"            # datasets' cache on the scratch disk, never under $OUT

DRY_RUN="$DRY_RUN" DATA="$DATA" "$PYTHON" - "$OUT/env.json" <<'PY'
"""Fail early (no CUDA, no data, an import that breaks) and record the environment."""
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

dry_run = os.environ["DRY_RUN"] == "1"
if not torch.cuda.is_available() and not dry_run:
    sys.exit("no CUDA device visible to torch: this script measures the GPU (DRY_RUN=1 runs its steps on the CPU).")
data = Path(os.environ["DATA"])
if not sorted(data.glob("**/train-*.parquet")):
    sys.exit(f"no CIFAR-10 at {data}/: put a copy in the Hub layout there and carry it (see benchmarks/README.md).")
import datasets  # noqa: E402,F401
import transformers  # noqa: E402

import rrd_hf  # noqa: E402,F401
from rrd_hf.training.trainer import RRDTrainer  # noqa: E402,F401

versions = {}
for name in ("torch", "transformers", "accelerate", "datasets", "huggingface_hub", "safetensors", "numpy", "pyarrow"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
env = {"python": platform.python_version(), "versions": versions, "transformers_file": transformers.__file__,
       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cpu_count": os.cpu_count()}
if os.path.isdir("/dev/shm"):  # DataLoader workers hand batches over through it
    shm = os.statvfs("/dev/shm")
    env["dev_shm_free_gib"] = shm.f_bavail * shm.f_frsize / 2**30
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
               multiprocessors=props.multi_processor_count)
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem",
                                            "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
Path(sys.argv[1]).write_text(json.dumps(env, indent=2))
print(json.dumps(env, indent=2))
PY

remaining() { echo $(( BUDGET_S - (SECONDS - started) )); }
common=(--data "$DATA" --workers "$WORKERS" --warmup-steps "$WARMUP_STEPS")
[ "$DRY_RUN" = 1 ] && common+=(--cpu)

# --- 2. speed: plain loop vs rrd_hf (default path, per-sample path) --------------------------------------------------
if [[ " $PHASES " == *" speed "* ]]; then
  budget=$(( SPEED_BUDGET_S < $(remaining) ? SPEED_BUDGET_S : $(remaining) ))
  echo "== speed (${budget}s): $SPEED_PAIRS, $SPEED_METHODS, $SPEED_IMAGES images, $WORKERS workers"
  timeout -k 5 "$budget" "$PYTHON" benchmarks/side_by_side.py "${common[@]}" --pairs "$SPEED_PAIRS" \
    --methods "$SPEED_METHODS" --num-images "$SPEED_IMAGES" --repeats 1 --deadline $(( budget - 10 )) \
    --variant "per_sample=$PER_SAMPLE_FLAGS" --reference per_sample --work-dir "$WORK/speed" \
    --json "$OUT/speed.json" --tag speed --csv "$OUT/speed.csv" || echo "speed phase ended with status $?"
fi

# --- 3. accuracy: teacher, then the students on the full split --------------------------------------------------------
if [[ " $PHASES " == *" accuracy "* ]]; then
  budget=$(( $(remaining) - 5 ))
  echo "== accuracy (${budget}s): resnet32x4 teacher $TEACHER_EPOCHS epochs, resnet8x4 $ACCURACY_METHODS $EPOCHS epochs"
  timeout -k 5 "$budget" "$PYTHON" benchmarks/side_by_side.py "${common[@]}" --pairs resnet32x4-resnet8x4 \
    --sides rrd_hf --methods "$ACCURACY_METHODS" --num-images "$ACCURACY_IMAGES" --num-eval-images "$EVAL_IMAGES" \
    --epochs "$EPOCHS" --teacher-epochs "$TEACHER_EPOCHS" --eval --lr-schedule cosine --repeats 1 \
    --rrd-flags "$ACCURACY_FLAGS" --deadline $(( budget - 10 )) --work-dir "$WORK/accuracy" \
    --json "$OUT/accuracy.json" --tag accuracy --csv "$OUT/accuracy.csv" || echo "accuracy phase ended with status $?"
fi

# --- 4. the tables last, where the tool's output tail shows them ---------------------------------------------------
reports=()
for name in speed accuracy; do [ -f "$OUT/$name.json" ] && reports+=("$OUT/$name.json"); done
[ ${#reports[@]} -gt 0 ] && "$PYTHON" benchmarks/side_by_side.py --report "${reports[@]}"
echo "== done in $(( SECONDS - started ))s; files under $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
