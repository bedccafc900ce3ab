"""Writes the CIFAR-100 teacher and student recipes from one table, so they cannot drift apart.

    python recipes/make_recipes.py        # rewrites recipes/cifar100/**.yaml and the table in recipes/README.md
"""

from pathlib import Path

HERE = Path(__file__).parent
# Published top-1 (%) of the teachers (CRD/RepDistiller, also in the RRD tables).
TEACHERS = {"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64, "ResNet50": 79.34}
# (teacher, student): (student alone, KD, RRD, RRD+KD), the authors' README tables of Sep 2024 (rrd-paper.md §3).
PAIRS = {
    ("wrn_40_2", "wrn_16_2"): (73.26, 74.92, 75.33, 75.66),
    ("wrn_40_2", "wrn_40_1"): (71.98, 73.54, 73.55, 74.67),
    ("resnet56", "resnet20"): (69.06, 70.66, 70.71, 72.19),
    ("resnet110", "resnet20"): (69.06, 70.67, 70.72, 71.74),
    ("resnet110", "resnet32"): (71.14, 73.08, 73.10, 73.54),
    ("resnet32x4", "resnet8x4"): (72.50, 73.33, 74.48, 75.08),
    ("vgg13", "vgg8"): (70.36, 72.98, 73.99, 74.32),
    ("vgg13", "MobileNetV2"): (64.60, 67.37, 67.93, 69.98),
    ("ResNet50", "MobileNetV2"): (64.60, 67.35, 68.84, 69.13),
    ("ResNet50", "vgg8"): (70.36, 73.81, 74.01, 74.26),
    ("resnet32x4", "ShuffleV1"): (70.50, 74.07, 74.11, 75.18),
    ("resnet32x4", "ShuffleV2"): (71.82, 74.45, 74.80, 76.83),
    ("wrn_40_2", "ShuffleV1"): (70.50, 74.83, 74.98, 76.31),
}
SMALL_LR = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}  # lr 0.01 in the benchmark code

# Baselines of the paper's tables with the benchmark's loss weights (RepDistiller scripts): name -> weights.
# `kd` is the trainer's built-in Hinton KD (kd_weight); the others are rrd_hf.methods by name.
BASELINES = {
    "kd": dict(ce_weight=0.1, kd_weight=0.9),
    "fitnet": dict(distill_method="fitnet", distill_weight=100.0),
    "at": dict(distill_method="at", distill_weight=1000.0),
    "sp": dict(distill_method="sp", distill_weight=3000.0),
    "cc": dict(distill_method="cc", distill_weight=0.02),
    "vid": dict(distill_method="vid", distill_weight=1.0),
    "rkd": dict(distill_method="rkd", distill_weight=1.0),
    "pkt": dict(distill_method="pkt", distill_weight=30000.0),
    "ab": dict(distill_method="ab", distill_weight=1.0),  # 30 init epochs, then CE only (as the benchmark code)
    "ft": dict(distill_method="ft", distill_weight=200.0),  # 30 init epochs of the paraphraser
    "fsp": dict(distill_method="fsp", distill_weight=50.0),  # 30 init epochs, then CE only
    "nst": dict(distill_method="nst", distill_weight=50.0),
    "crd": dict(distill_method="crd", distill_weight=0.8),
    "crd_kd": dict(distill_method="crd", distill_weight=0.8, kd_weight=1.0),
}
# Row order of the published tables (rrd-paper.md §3): index into each pair's tuple below.
TABLE_ROWS = ["kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "crd_kd"]
PUBLISHED = {  # (teacher, student): top-1 of the rows above (None: not in the table)
    ("wrn_40_2", "wrn_16_2"): (74.92, 73.58, 74.08, 73.83, 73.56, 74.11, 73.35, 74.54, 72.50, 73.25, 72.91, 73.68, 75.48, 75.64),
    ("wrn_40_2", "wrn_40_1"): (73.54, 72.24, 72.77, 72.43, 72.21, 73.30, 72.22, 73.45, 72.38, 71.59, None, 72.24, 74.14, 74.38),
    ("resnet56", "resnet20"): (70.66, 69.21, 70.55, 69.67, 69.63, 70.38, 69.61, 70.34, 69.47, 69.84, 69.95, 69.60, 71.16, 71.63),
    ("resnet110", "resnet20"): (70.67, 68.99, 70.22, 70.04, 69.48, 70.16, 69.25, 70.25, 69.53, 70.22, 70.11, 69.53, 71.46, 71.56),
    ("resnet110", "resnet32"): (73.08, 71.06, 72.31, 72.69, 71.48, 72.61, 71.82, 72.61, 70.98, 72.37, 71.89, 71.96, 73.48, 73.75),
    ("resnet32x4", "resnet8x4"): (73.33, 73.50, 73.44, 72.94, 72.97, 73.09, 71.90, 73.64, 73.17, 72.86, 72.62, 73.30, 75.51, 75.46),
    ("vgg13", "vgg8"): (72.98, 71.02, 71.43, 72.68, 70.71, 71.23, 71.48, 72.88, 70.94, 70.58, 70.23, 71.53, 73.94, 74.29),
    ("vgg13", "MobileNetV2"): (67.37, 64.14, 59.40, 66.30, 64.86, 65.56, 64.52, 67.13, 66.06, 61.78, None, 58.16, 69.73, 69.94),
    ("ResNet50", "MobileNetV2"): (67.35, 63.16, 58.58, 68.08, 65.43, 67.57, 64.43, 66.52, 67.20, 60.99, None, 64.96, 69.11, 69.54),
    ("ResNet50", "vgg8"): (73.81, 70.69, 71.84, 73.34, 70.25, 70.30, 71.50, 73.01, 70.65, 70.29, None, 71.28, 74.30, 74.58),
    ("resnet32x4", "ShuffleV1"): (74.07, 73.59, 71.73, 73.48, 71.14, 73.38, 72.28, 74.10, 73.55, 71.75, None, 74.12, 75.11, 75.12),
    ("resnet32x4", "ShuffleV2"): (74.45, 73.54, 72.73, 74.56, 71.29, 73.40, 73.21, 74.69, 74.31, 72.50, None, 74.68, 75.65, 76.05),
    ("wrn_40_2", "ShuffleV1"): (74.83, 73.73, 73.32, 74.52, 71.38, 73.61, 72.21, 73.89, 73.34, 72.03, None, 74.89, 76.05, 76.27),
}
# Modern logit methods and RRD combined with them, on the four pairs with published state-of-the-art numbers
# (anchors.md §4): name -> (weights, {pair: published top-1 or None}).
MODERN = {
    "dkd": (dict(distill_method="dkd", distill_weight=1.0),
            {("resnet32x4", "resnet8x4"): 76.32, ("wrn_40_2", "wrn_16_2"): 76.24, ("vgg13", "vgg8"): 74.68,
             ("resnet32x4", "ShuffleV2"): 77.07}),
    "kd_ls": (dict(ce_weight=0.1, distill_method="kd_ls", distill_weight=9.0),
              {("resnet32x4", "resnet8x4"): 76.62, ("wrn_40_2", "wrn_16_2"): 76.11, ("vgg13", "vgg8"): 74.36,
               ("resnet32x4", "ShuffleV2"): 75.56}),
    "dkd_ls": (dict(distill_method="dkd_ls", distill_weight=9.0),
               {("resnet32x4", "resnet8x4"): 77.01, ("wrn_40_2", "wrn_16_2"): 76.39, ("vgg13", "vgg8"): 74.81,
                ("resnet32x4", "ShuffleV2"): 77.37}),
    "rrd_dkd": (dict(rrd_weight=1.0, distill_method="dkd", distill_weight=1.0), {}),
    "rrd_kd_ls": (dict(ce_weight=0.1, rrd_weight=1.0, distill_method="kd_ls", distill_weight=9.0), {}),
}
MODERN_PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"), ("resnet32x4", "ShuffleV2")]

PROTOCOL = """\
dataset: cifar100
num_train_epochs: 240
per_device_train_batch_size: 64
per_device_eval_batch_size: 256
learning_rate: {lr}
optim: sgd
optim_args: momentum=0.9
weight_decay: 5.0e-4
decay_all_parameters: true
lr_decay_epochs: [150, 180, 210]
lr_decay_rate: 0.1
max_grad_norm: 0.0
dataloader_drop_last: true
dataloader_num_workers: 4
eval_strategy: epoch
save_strategy: epoch
save_total_limit: 2
logging_steps: 100
report_to: none
seed: 0
"""


def teacher_recipe(name: str) -> str:
    return (
        f"# Teacher {name} on CIFAR-100, plain cross-entropy, the benchmark protocol (RepDistiller train_teacher.py).\n"
        f"# Published top-1: {TEACHERS[name]:.2f}.   rrd-hf train-teacher recipes/cifar100/teachers/{name}.yaml\n"
        f"student: {name}\n"
        f"output_dir: runs/cifar100/teachers/{name}\n"
        "ce_weight: 1.0\nkd_weight: 0.0\nrrd_weight: 0.0\n"
        + PROTOCOL.format(lr=0.01 if name in SMALL_LR else 0.05)
    )


def student_recipe(teacher: str, student: str, with_kd: bool) -> str:
    alone, kd, rrd, rrd_kd = PAIRS[(teacher, student)]
    method = "RRD+KD" if with_kd else "RRD"
    name = f"{teacher}_{student}_{'rrd_kd' if with_kd else 'rrd'}"
    return (
        f"# {method}: {teacher} -> {student} on CIFAR-100, the published setting (loss = 1 CE"
        f"{' + 1 KD (T=4)' if with_kd else ''} + 1 RRD, tau_s 0.04, tau_t 0.10, enqueue after, K 16384, dim 128).\n"
        f"# Published top-1: {rrd_kd if with_kd else rrd:.2f} (student alone {alone:.2f}, KD {kd:.2f}).\n"
        f"# Needs the teacher first: rrd-hf train-teacher recipes/cifar100/teachers/{teacher}.yaml\n"
        f"#   rrd-hf train recipes/cifar100/students/{name}.yaml\n"
        f"student: {student}\n"
        f"teacher_model_name_or_path: runs/cifar100/teachers/{teacher}\n"
        f"output_dir: runs/cifar100/students/{name}\n"
        "rrd_preset: published\n"
        f"ce_weight: 1.0\nkd_weight: {1.0 if with_kd else 0.0}\nrrd_weight: 1.0\n"
        "kd_temperature: 4.0\nmemory_size: 16384\nembedding_dim: 128\nmemory_type: fifo\n"
        + PROTOCOL.format(lr=0.01 if student in SMALL_LR else 0.05)
    )


def method_recipe(teacher: str, student: str, method: str, weights: dict, published) -> str:
    values = {"ce_weight": 1.0, "kd_weight": 0.0, "rrd_weight": 0.0, **weights}
    lines = [f"{key}: {value}" for key, value in values.items()]
    number = f"{published:.2f}" if published is not None else "none (no published number)"
    name = f"{teacher}_{student}_{method}"
    return (
        f"# {method}: {teacher} -> {student} on CIFAR-100 with the benchmark's loss weights. Published top-1: {number}.\n"
        f"#   rrd-hf train recipes/cifar100/methods/{name}.yaml   (train the teacher first)\n"
        f"student: {student}\n"
        f"teacher_model_name_or_path: runs/cifar100/teachers/{teacher}\n"
        f"output_dir: runs/cifar100/methods/{name}\n"
        + "\n".join(lines) + "\n"
        + PROTOCOL.format(lr=0.01 if student in SMALL_LR else 0.05)
    )


def method_recipes():
    """(file name, text) of every baseline and modern-method recipe."""
    for (teacher, student), row in PUBLISHED.items():
        for method, published in zip(TABLE_ROWS, row):
            if method == "fsp" and published is None:
                continue  # FSP needs equal channel counts: absent from the cross-architecture table
            yield f"{teacher}_{student}_{method}", method_recipe(teacher, student, method, BASELINES[method], published)
    for method, (weights, numbers) in MODERN.items():
        for teacher, student in MODERN_PAIRS:
            published = numbers.get((teacher, student))
            yield f"{teacher}_{student}_{method}", method_recipe(teacher, student, method, weights, published)


def table() -> str:
    rows = ["| recipe | teacher | student | published top-1 (student alone / KD / this) |", "|---|---|---|---|"]
    for name, acc in TEACHERS.items():
        rows.append(f"| `cifar100/teachers/{name}.yaml` | — | {name} | {acc:.2f} |")
    for (teacher, student), (alone, kd, rrd, rrd_kd) in PAIRS.items():
        for with_kd, value in ((False, rrd), (True, rrd_kd)):
            name = f"{teacher}_{student}_{'rrd_kd' if with_kd else 'rrd'}"
            rows.append(f"| `cifar100/students/{name}.yaml` | {teacher} | {student} | {alone:.2f} / {kd:.2f} / **{value:.2f}** |")
    rows += ["", "Baselines and modern methods (`cifar100/methods/`, published top-1; — = no published number):", "",
             "| pair | " + " | ".join(TABLE_ROWS + list(MODERN)) + " |", "|---" * (len(TABLE_ROWS) + len(MODERN) + 1) + "|"]
    for pair in PUBLISHED:
        cells = [f"{v:.2f}" if v is not None else "n/a" for v in PUBLISHED[pair]]
        cells += [(f"{n[pair]:.2f}" if n.get(pair) is not None else "—") if pair in MODERN_PAIRS else "n/a"
                  for _, n in MODERN.values()]
        rows.append(f"| {pair[0]} → {pair[1]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    (HERE / "cifar100" / "teachers").mkdir(parents=True, exist_ok=True)
    (HERE / "cifar100" / "students").mkdir(parents=True, exist_ok=True)
    for name in TEACHERS:
        (HERE / "cifar100" / "teachers" / f"{name}.yaml").write_text(teacher_recipe(name))
    for teacher, student in PAIRS:
        for with_kd in (False, True):
            name = f"{teacher}_{student}_{'rrd_kd' if with_kd else 'rrd'}"
            (HERE / "cifar100" / "students" / f"{name}.yaml").write_text(student_recipe(teacher, student, with_kd))
    (HERE / "cifar100" / "methods").mkdir(parents=True, exist_ok=True)
    for name, text in method_recipes():
        (HERE / "cifar100" / "methods" / f"{name}.yaml").write_text(text)
    readme = HERE / "README.md"
    text = readme.read_text()
    start, end = text.index("<!-- table -->") + len("<!-- table -->"), text.index("<!-- /table -->")
    readme.write_text(text[:start] + "\n" + table() + "\n" + text[end:])


if __name__ == "__main__":
    main()
