#!/usr/bin/env bash
# The prepared accelerator run: on CIFAR-10 with the fast path (decoded uint8 images in memory, augmentation on the
# device), train a teacher, then the same student alone, with KD, with RRD and with RRD+KD on the same budget, and
# write every results.json (top-1/top-5, best and last epoch, images per second) plus a summary under $OUT.
#
#   cp -r ../shared/data/cifar10 data/cifar10           # an ignored folder: carry it to the device machine
#   OUT=$OUT EPOCHS=15 bash benchmarks/cifar10_device_run.sh
#   EXTRA="--max_steps 2 --use_cpu true --bf16 false" OUT=/tmp/smoke bash benchmarks/cifar10_device_run.sh   # CPU smoke
set -euo pipefail
DATA="${DATA:-data/cifar10}"
OUT="${OUT:-runs/cifar10_device}"
EPOCHS="${EPOCHS:-15}"
TEACHER="${TEACHER:-resnet32x4}"
STUDENT="${STUDENT:-resnet8x4}"
EXTRA="${EXTRA:-}"
RRD_HF="${RRD_HF:-rrd-hf}"
common="--dataset $DATA --device_augmentation true --bf16 true --num_train_epochs $EPOCHS
  --per_device_train_batch_size 64 --per_device_eval_batch_size 512 --learning_rate 0.05 --optim sgd
  --optim_args momentum=0.9 --weight_decay 5e-4 --decay_all_parameters true --lr_scheduler_type cosine
  --max_grad_norm 0 --eval_strategy epoch --save_strategy no --logging_steps 100 --report_to none
  --dataloader_num_workers 0 --dataloader_pin_memory false --seed 0"

# shellcheck disable=SC2086
$RRD_HF train-teacher --student "$TEACHER" --output_dir "$OUT/teacher" $common $EXTRA
for run in "alone --rrd_weight 0" "kd --ce_weight 0.1 --kd_weight 0.9 --rrd_weight 0" "rrd" "rrd_kd --kd_weight 1"; do
  name="${run%% *}"
  flags="${run#"$name"}"
  # shellcheck disable=SC2086
  $RRD_HF train --student "$STUDENT" --teacher_model_name_or_path "$OUT/teacher" --output_dir "$OUT/$name" \
    $common $flags $EXTRA
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {name: json.loads((out / name / "results.json").read_text()) for name in ("teacher", "alone", "kd", "rrd", "rrd_kd")}
keys = ("best_top1", "last_top1", "last_top5", "train_samples_per_second", "train_runtime")
summary = {name: {k: r.get(k) for k in keys} for name, r in rows.items()}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(f"{'run':<8}" + "".join(f"{k:>26}" for k in keys))
for name, r in summary.items():
    print(f"{name:<8}" + "".join(f"{r[k] if r[k] is not None else float('nan'):>26.2f}" for k in keys))
PY
