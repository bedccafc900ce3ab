"""Writes every CIFAR-100 recipe, and the recipe table of recipes/README.md, from the tables below.

    python recipes/make_recipes.py    # rewrites recipes/cifar100/**.yaml and README's table, removes stale YAMLs

This file is the single source of the recipes (tests/test_recipes.py checks the files match it). Every recipe
states every loss weight explicitly, so it means the same thing whatever rrd_hf's defaults are, and names the
source of every constant in a YAML comment. Sources marked "recalled" were written from memory of the cited
code, not checked against a stored copy of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
RECIPE_ROOT = HERE / "cifar100"

Pair = tuple[str, str]

# --------------------------------------------------------------------------------------------------------------
# Published numbers (top-1 %, CIFAR-100) and where they come from
# --------------------------------------------------------------------------------------------------------------

# Short keys of the sources of published numbers; README prints them as footnotes.
NUMBER_SOURCES = {
    "crd": "CRD paper tables, identical to the RepDistiller README (rrd-paper.md §3)",
    "rrd": "RRD authors' README tables of Sep 2024 (giakoumoglou/distillers `5a19fd0`; rrd-paper.md §3)",
    "dkd": "DKD paper / mdistiller README, via anchors.md §4 (wrn_40_2 → wrn_16_2: 76.24 in the DKD paper, "
           "76.23 in the mdistiller README)",
    "ls": "logit-standardization-KD README (Sun et al., CVPR 2024), via anchors.md §4",
}

TEACHERS = {"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64,
            "ResNet50": 79.34}  # source "crd"
# (teacher, student): (student alone, KD, RRD, RRD+KD); student alone and KD: "crd", RRD and RRD+KD: "rrd".
PAIRS: dict[Pair, tuple[float, float, float, float]] = {
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
ALL_PAIRS = tuple(PAIRS)
# The four pairs with published state-of-the-art logit-method numbers (anchors.md §4).
MODERN_PAIRS = (("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"), ("resnet32x4", "ShuffleV2"))

# Rows of the benchmark tables (source "crd"), in their order; None: not in the table.
TABLE_ROWS = ("kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "crd_kd")
PUBLISHED: dict[Pair, tuple[float | None, ...]] = {
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
# FSP needs equal channel counts in each layer pair: the same-architecture table marks wrn_40_2 → wrn_40_1 "N/A",
# the cross-architecture table has no FSP row. No recipe is written for these pairs.
FSP_MARKED_NA = {("wrn_40_2", "wrn_40_1")}
# Published numbers of the modern logit methods on MODERN_PAIRS (anchors.md §4). No other pair's number is in the
# sourced notes, so the other pairs' cells say so rather than quote a number from memory.
DKD_PUBLISHED = {("resnet32x4", "resnet8x4"): 76.32, ("wrn_40_2", "wrn_16_2"): 76.24, ("vgg13", "vgg8"): 74.68,
                 ("resnet32x4", "ShuffleV2"): 77.07}
KD_LS_PUBLISHED = {("resnet32x4", "resnet8x4"): 76.62, ("wrn_40_2", "wrn_16_2"): 76.11, ("vgg13", "vgg8"): 74.36,
                   ("resnet32x4", "ShuffleV2"): 75.56}
DKD_LS_PUBLISHED = {("resnet32x4", "resnet8x4"): 77.01, ("wrn_40_2", "wrn_16_2"): 76.39, ("vgg13", "vgg8"): 74.81,
                    ("resnet32x4", "ShuffleV2"): 77.37}

# Runs of a recipe by rrd_hf: recipe name -> what was measured (mean ± std over seeds, best and last epoch, and
# the command). Only add a run that exists; every other recipe says "not run".
MEASURED: dict[str, str] = {}

# --------------------------------------------------------------------------------------------------------------
# Sources of the constants
# --------------------------------------------------------------------------------------------------------------

REPD = "RepDistiller train_student.py"
REPD_SCRIPT = "RepDistiller scripts/run_cifar_distill.sh"
# DKD's beta per pair: DKD.BETA of mdistiller's configs/cifar100/dkd/ config of the pair (issue 11).
DKD_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet32x4", "ShuffleV1"): 8.0,
    ("resnet32x4", "ShuffleV2"): 8.0,
    ("ResNet50", "MobileNetV2"): 8.0,
    ("wrn_40_2", "ShuffleV1"): 8.0,
}
DKD_DEFAULT_BETA = 8.0  # mdistiller cfg.py CFG.DKD.BETA, for the two pairs without a DKD config
SMALL_LR = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}


def dkd_beta(pair: Pair) -> tuple[float, str]:
    """(beta, source) of DKD for a pair."""
    if pair in DKD_BETA:
        return DKD_BETA[pair], "DKD.BETA of mdistiller's DKD config of this pair (configs/cifar100/dkd/)"
    return DKD_DEFAULT_BETA, ("mdistiller's default DKD.BETA (engine/cfg.py): mdistiller has no DKD config, and DKD "
                              "no published number, for this pair")


@dataclass(frozen=True)
class Line:
    """One `key: value  # source` line; a dict value is a nested mapping of `key: (value, source)`."""

    key: str
    value: object
    source: str


def protocol(model: str, *, drop_last: bool, teacher: bool = False) -> list[Line]:
    """The training protocol shared by every recipe (RepDistiller's; mdistiller's CIFAR-100 solver is the same)."""
    script = "RepDistiller train_teacher.py" if teacher else REPD
    small = model in SMALL_LR
    return [
        Line("dataset", "cifar100", "the benchmark's dataset (uoft-cs/cifar100)"),
        Line("num_train_epochs", 240, f"{script} --epochs 240"),
        Line("per_device_train_batch_size", 64, f"{script} --batch_size 64 (one process)"),
        Line("learning_rate", 0.01 if small else 0.05,
             f"{script} parse_option: 0.01 for MobileNetV2/ShuffleV1/ShuffleV2" if small
             else f"{script} --learning_rate 0.05"),
        Line("optim", "sgd", f"{script}: optim.SGD"),
        Line("optim_args", "momentum=0.9", f"{script} --momentum 0.9"),
        Line("weight_decay", 5e-4, f"{script} --weight_decay 5e-4"),
        Line("decay_all_parameters", True, f"{script}: SGD over all parameters, BatchNorm and biases included"),
        Line("lr_decay_epochs", [150, 180, 210], f"{script} --lr_decay_epochs 150,180,210"),
        Line("lr_decay_rate", 0.1, f"{script} --lr_decay_rate 0.1"),
        Line("max_grad_norm", 0.0, "no gradient clipping in the benchmark code"),
        Line("dataloader_drop_last", drop_last,
             "the RRD authors' CIFAR-100 loader drops the last partial batch (the FIFO memory needs full batches)"
             if drop_last else "RepDistiller's and mdistiller's CIFAR-100 train loaders keep the last partial batch"),
        Line("ddp_find_unused_parameters", False,
             "every trainable parameter gets a gradient in every main-stage step (tests/test_models.py, "
             "tests/test_methods.py): no DDP graph walk per step"),
        Line("eval_strategy", "epoch", "the benchmark evaluates every epoch (best-epoch top-1 needs it)"),
        Line("per_device_eval_batch_size", 256, "rrd_hf choice; evaluation runs in eval mode, results do not depend on it"),
        Line("dataloader_num_workers", 4, "rrd_hf choice (does not change results)"),
        Line("save_strategy", "epoch", "rrd_hf choice: resumable runs"),
        Line("save_total_limit", 2, "rrd_hf choice"),
        Line("logging_steps", 100, "rrd_hf choice"),
        Line("report_to", "none", "rrd_hf choice"),
        Line("seed", 0, "rrd_hf choice: the benchmark code sets no seed; vary it with --seed for several runs"),
    ]


def rrd_lines() -> list[Line]:
    """RRD in the setting that produced the published numbers (the authors' 2024 code, rrd-paper.md §1)."""
    return [
        Line("rrd_weight", 1.0, "RRD authors' README: -b 1"),
        Line("rrd_preset", "published", "the 2024 code's setting; the three fields below state it explicitly"),
        Line("student_temperature", 0.04, "RRD 2024 code --nce_t_s 0.04 (rrd-paper.md §1.6)"),
        Line("teacher_temperature", 0.10, "RRD 2024 code --nce_t_t 0.10 (rrd-paper.md §1.6)"),
        Line("enqueue", "after", "RRD 2024 code: the batch is enqueued after the loss (rrd-paper.md §1.5)"),
        Line("memory_size", 16384, "RRD code --nce_k 16384"),
        Line("embedding_dim", 128, "RRD code --feat_dim 128"),
        Line("memory_type", "fifo", "the FIFO queue, the only memory of the 2024 code"),
    ]


def off(key: str, what: str) -> Line:
    return Line(key, 0.0, f"{what}: not part of this method")


# --------------------------------------------------------------------------------------------------------------
# The methods
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A distillation recipe family: its loss lines (every weight stated) per pair, its pairs and numbers."""

    title: str
    lines: Callable[[Pair], list[Line]]
    pairs: tuple[Pair, ...] = ALL_PAIRS
    published: Mapping[Pair, float | None] = field(default_factory=dict)
    number_source: str | None = None
    note: str = ""  # one header line on what the recipe reproduces
    uses_rrd: bool = False
    no_number: Callable[[Pair], str] = lambda pair: "none published"  # says why a pair has no published number


def _dkd_no_number(pair: Pair) -> str:
    if pair in DKD_BETA:
        return "in the DKD paper, not in the sourced notes (not quoted)"
    return "none (DKD has no result for this pair)"


def _not_published(pair: Pair) -> str:
    return "none (not a published combination)"


def baseline(key: str, weight: float, **extra: tuple[object, str]) -> Callable[[Pair], list[Line]]:
    """A benchmark baseline: CE 1 + `weight` x method (RepDistiller -r 1 -a 0 -b weight)."""

    def lines(pair: Pair) -> list[Line]:
        return [
            Line("ce_weight", 1.0, f"{REPD} -r (gamma), default 1"),
            off("kd_weight", "Hinton KD (-a 0)"),
            off("rrd_weight", "RRD"),
            Line("distill_method", key, f"{REPD} --distill {REPD_KEYS.get(key, key)}"),
            Line("distill_weight", weight, f"{REPD_SCRIPT}: -b {weight:g}"),
            *(Line(name, value, source) for name, (value, source) in extra.items()),
        ]

    return lines


REPD_KEYS = {"ab": "abound", "ft": "factor", "fitnet": "hint", "at": "attention", "cc": "correlation", "sp": "similarity"}
INIT_30 = (30, f"{REPD} --init_epochs 30")

BASELINES: dict[str, Callable[[Pair], list[Line]]] = {
    "fitnet": baseline("fitnet", 100.0),
    "at": baseline("at", 1000.0),
    "sp": baseline("sp", 3000.0),
    "cc": baseline("cc", 0.02),
    "vid": baseline("vid", 1.0),
    "rkd": baseline("rkd", 1.0),
    "pkt": baseline("pkt", 30000.0),
    "ab": baseline("ab", 1.0, init_epochs=INIT_30),  # the weight is inert: AB's loss runs in the init stage only
    "ft": baseline("ft", 200.0, init_epochs=INIT_30),
    "fsp": baseline("fsp", 50.0, init_epochs=INIT_30),  # inert too, as AB's
    "nst": baseline("nst", 50.0),
    "crd": baseline("crd", 0.8),
}


def kd_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 0.1, f"RepDistiller README and {REPD_SCRIPT}, KD: -r 0.1"),
        Line("kd_weight", 0.9, f"RepDistiller README and {REPD_SCRIPT}, KD: -a 0.9"),
        Line("kd_temperature", 4.0, f"{REPD} --kd_T 4"),
        off("rrd_weight", "RRD"),
    ]


def crd_kd_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 1.0, f"{REPD} -r (gamma), default 1"),
        Line("kd_weight", 1.0, f"{REPD_SCRIPT}, CRD+KD: -a 1 (recalled)"),
        Line("kd_temperature", 4.0, f"{REPD} --kd_T 4"),
        off("rrd_weight", "RRD"),
        Line("distill_method", "crd", f"{REPD} --distill crd"),
        Line("distill_weight", 0.8, f"{REPD_SCRIPT}, CRD+KD: -b 0.8 (recalled)"),
    ]


def dkd_kwargs(pair: Pair, *, standardized: bool) -> Line:
    beta, beta_source = dkd_beta(pair)
    if standardized:
        temperature = (2.0, "LS: --base-temp 2 replaces DKD.T (recalled)")
        beta_source += "; LS keeps the DKD configs and scales alpha and beta by the weight (recalled)"
    else:
        temperature = (4.0, "mdistiller DKD.T 4.0")
    return Line("distill_kwargs", {
        "alpha": (1.0, "mdistiller DKD.ALPHA 1.0"),
        "beta": (beta, beta_source),
        "temperature": temperature,
        "warmup_epochs": (20, "mdistiller DKD.WARMUP 20 (linear warm-up of the DKD term, 1-based epochs)"),
    }, "rrd_hf.methods dkd keyword arguments")


def dkd_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 1.0, "mdistiller DKD.CE_WEIGHT 1.0"),
        off("kd_weight", "Hinton KD"),
        off("rrd_weight", "RRD"),
        Line("distill_method", "dkd", "Decoupled KD (Zhao et al., CVPR 2022; mdistiller distillers/DKD.py)"),
        Line("distill_weight", 1.0, "mdistiller adds alpha*TCKD + beta*NCKD with no further weight"),
        dkd_kwargs(pair, standardized=False),
    ]


def rrd_dkd_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 1.0, "CE weight 1 in both RRD (-r 1) and DKD (DKD.CE_WEIGHT 1.0)"),
        off("kd_weight", "Hinton KD"),
        *rrd_lines(),
        Line("distill_method", "dkd", "Decoupled KD (mdistiller distillers/DKD.py)"),
        Line("distill_weight", 1.0, "DKD at its own published weight (alpha*TCKD + beta*NCKD)"),
        dkd_kwargs(pair, standardized=False),
    ]


LS_WEIGHT = "--kd-weight 9 of the logit-standardization-KD CIFAR-100 command (recalled)"


def kd_ls_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 0.1, "mdistiller KD.LOSS.CE_WEIGHT 0.1, which the LS command leaves as is (recalled)"),
        off("kd_weight", "Hinton KD (replaced by kd_ls)"),
        off("rrd_weight", "RRD"),
        Line("distill_method", "kd_ls", "KD on z-scored logits (Sun et al., CVPR 2024, --logit-stand)"),
        Line("distill_weight", 9.0, f"{LS_WEIGHT}, in place of KD.LOSS.KD_WEIGHT 0.9"),
        Line("distill_kwargs", {"temperature": (2.0, "LS: --base-temp 2 replaces KD.TEMPERATURE (recalled)")},
             "rrd_hf.methods kd_ls keyword arguments"),
    ]


def dkd_ls_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 1.0, "mdistiller DKD.CE_WEIGHT 1.0, unchanged by the LS command (recalled)"),
        off("kd_weight", "Hinton KD"),
        off("rrd_weight", "RRD"),
        Line("distill_method", "dkd_ls", "DKD on z-scored logits (Sun et al., CVPR 2024, --logit-stand)"),
        Line("distill_weight", 9.0, f"{LS_WEIGHT}; its tools/train.py multiplies DKD.ALPHA and DKD.BETA by it (recalled)"),
        dkd_kwargs(pair, standardized=True),
    ]


def rrd_kd_ls_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 0.1, "KD-LS's CE weight (this combination has no published setting)"),
        off("kd_weight", "Hinton KD (replaced by kd_ls)"),
        *rrd_lines(),
        Line("distill_method", "kd_ls", "KD on z-scored logits (Sun et al., CVPR 2024)"),
        Line("distill_weight", 9.0, f"KD-LS's weight, {LS_WEIGHT}"),
        Line("distill_kwargs", {"temperature": (2.0, "LS: --base-temp 2 (recalled)")},
             "rrd_hf.methods kd_ls keyword arguments"),
    ]


def rrd_student_lines(with_kd: bool) -> Callable[[Pair], list[Line]]:
    def lines(pair: Pair) -> list[Line]:
        kd = [Line("kd_weight", 1.0, "RRD authors' README, RRD+KD: -a 1"),
              Line("kd_temperature", 4.0, "RRD code --kd_T 4")] if with_kd else [off("kd_weight", "Hinton KD (-a 0)")]
        return [Line("ce_weight", 1.0, "RRD authors' README: -r 1"), *kd, *rrd_lines()]

    return lines


def _column(index: int) -> dict[Pair, float | None]:
    return {pair: row[index] for pair, row in PUBLISHED.items()}


def _baseline_pairs(key: str) -> tuple[Pair, ...]:
    if key != "fsp":
        return ALL_PAIRS
    return tuple(pair for pair, row in PUBLISHED.items() if row[TABLE_ROWS.index("fsp")] is not None)


STUDENT_METHODS: dict[str, Method] = {
    "rrd": Method("RRD", rrd_student_lines(False), published={p: v[2] for p, v in PAIRS.items()}, number_source="rrd",
                  note="the published RRD setting (loss = 1 CE + 1 RRD)", uses_rrd=True),
    "rrd_kd": Method("RRD+KD", rrd_student_lines(True), published={p: v[3] for p, v in PAIRS.items()},
                     number_source="rrd", note="the published RRD+KD setting (loss = 1 CE + 1 KD + 1 RRD)",
                     uses_rrd=True),
}
METHODS: dict[str, Method] = {
    "kd": Method("KD", kd_lines, published=_column(0), number_source="crd", note="the benchmark's KD"),
    **{key: Method({"fitnet": "FitNet"}.get(key, key.upper()), lines, pairs=_baseline_pairs(key),
                   published=_column(TABLE_ROWS.index(key)), number_source="crd",
                   note="the benchmark's setting (the method's own constants are rrd_hf.methods' defaults, "
                        "RepDistiller's)")
       for key, lines in BASELINES.items()},
    "crd_kd": Method("CRD+KD", crd_kd_lines, published=_column(TABLE_ROWS.index("crd_kd")), number_source="crd",
                     note="the benchmark's CRD+KD"),
    "dkd": Method("DKD", dkd_lines, published=DKD_PUBLISHED, number_source="dkd",
                  note="mdistiller's DKD setting (beta per pair)", no_number=_dkd_no_number),
    "rrd_dkd": Method("RRD+DKD", rrd_dkd_lines, note="RRD (published setting) plus DKD (mdistiller's setting, beta "
                      "per pair)", uses_rrd=True, no_number=_not_published),
    "kd_ls": Method("KD+LS", kd_ls_lines, pairs=MODERN_PAIRS, published=KD_LS_PUBLISHED, number_source="ls",
                    note="KD with logit standardisation, the LS authors' CIFAR-100 command"),
    "dkd_ls": Method("DKD+LS", dkd_ls_lines, pairs=MODERN_PAIRS, published=DKD_LS_PUBLISHED, number_source="ls",
                     note="DKD with logit standardisation, the LS authors' CIFAR-100 command"),
    "rrd_kd_ls": Method("RRD+KD+LS", rrd_kd_ls_lines, pairs=MODERN_PAIRS, note="RRD (published setting) plus KD+LS",
                        uses_rrd=True, no_number=_not_published),
}

# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return str(value)


def render(header: list[str], lines: list[Line]) -> str:
    body: list[tuple[str, str]] = []
    for line in lines:
        if isinstance(line.value, dict):
            body.append((f"{line.key}:", line.source))
            body += [(f"  {key}: {_scalar(value)}", source) for key, (value, source) in line.value.items()]
        else:
            body.append((f"{line.key}: {_scalar(line.value)}", line.source))
    width = max(len(text) for text, _ in body) + 2
    return "".join(f"# {h}\n" for h in header) + "".join(f"{text.ljust(width)}# {src}\n" for text, src in body)


def _number(method: Method, pair: Pair) -> str:
    value = method.published.get(pair)
    return f"{value:.2f} ({NUMBER_SOURCES[method.number_source]})" if value is not None else method.no_number(pair)


def teacher_recipe(name: str) -> str:
    header = [
        f"Teacher {name} on CIFAR-100: plain cross-entropy, the benchmark protocol.",
        f"Published top-1: {TEACHERS[name]:.2f} ({NUMBER_SOURCES['crd']}).",
        f"  rrd-hf train-teacher recipes/cifar100/teachers/{name}.yaml",
        "Each line's comment names the source of its value.",
    ]
    lines = [
        Line("student", name, "the teacher trained here (RepDistiller model name)"),
        Line("output_dir", f"runs/cifar100/teachers/{name}", "where the method recipes look for it"),
        Line("ce_weight", 1.0, "RepDistiller train_teacher.py: cross-entropy only"),
        off("kd_weight", "Hinton KD"),
        off("rrd_weight", "RRD"),
        *protocol(name, drop_last=False, teacher=True),
    ]
    return render(header, lines)


def method_recipe(folder: str, key: str, method: Method, pair: Pair) -> str:
    teacher, student = pair
    name = f"{teacher}_{student}_{key}"
    header = [
        f"{method.title}: {teacher} -> {student} on CIFAR-100, {method.note}.",
        f"Published top-1: {_number(method, pair)}.",
        f"  rrd-hf train recipes/cifar100/{folder}/{name}.yaml   (train the teacher first: "
        f"rrd-hf train-teacher recipes/cifar100/teachers/{teacher}.yaml)",
        "Every loss weight is stated; each line's comment names the source of its value.",
    ]
    if folder == "students":
        alone, kd = PAIRS[pair][:2]
        header.insert(2, f"For comparison: student alone {alone:.2f}, KD {kd:.2f} ({NUMBER_SOURCES['crd']}).")
    lines = [
        Line("student", student, "the benchmark's student (RepDistiller model name)"),
        Line("teacher_model_name_or_path", f"runs/cifar100/teachers/{teacher}", "written by the teacher recipe"),
        Line("output_dir", f"runs/cifar100/{folder}/{name}", "rrd_hf choice"),
        *method.lines(pair),
        *protocol(student, drop_last=method.uses_rrd),
    ]
    return render(header, lines)


def recipes() -> dict[str, str]:
    """Every recipe: path relative to recipes/ -> text."""
    out = {f"cifar100/teachers/{name}.yaml": teacher_recipe(name) for name in TEACHERS}
    for folder, methods in (("students", STUDENT_METHODS), ("methods", METHODS)):
        for key, method in methods.items():
            for pair in method.pairs:
                out[f"cifar100/{folder}/{pair[0]}_{pair[1]}_{key}.yaml"] = method_recipe(folder, key, method, pair)
    return out


def _measured(name: str) -> str:
    return MEASURED.get(name, "not run")


def table() -> str:
    """The README table: one row per teacher, and per method and pair (FSP's "N/A" pairs included)."""
    marks = {key: f"[{i + 1}]" for i, key in enumerate(NUMBER_SOURCES)}

    def cell(value: float | None, source: str) -> str:
        return f"{value:.2f} {marks[source]}"

    rows = ["| method | teacher → student | recipe | published top-1 | measured by rrd_hf |", "|---|---|---|---|---|"]
    for name, acc in TEACHERS.items():
        rows.append(f"| teacher (CE) | {name} | `cifar100/teachers/{name}.yaml` | {cell(acc, 'crd')} | {_measured(name)} |")
    for pair in ALL_PAIRS:
        for folder, methods in (("students", STUDENT_METHODS), ("methods", METHODS)):
            for key, method in methods.items():
                name = f"{pair[0]}_{pair[1]}_{key}"
                if pair in method.pairs:
                    value = method.published.get(pair)
                    number = cell(value, method.number_source) if value is not None else method.no_number(pair)
                    rows.append(f"| {method.title} | {pair[0]} → {pair[1]} | `cifar100/{folder}/{name}.yaml` | "
                                f"{number} | {_measured(name)} |")
                elif key == "fsp":
                    why = "N/A in the benchmark table" if pair in FSP_MARKED_NA else "not in the benchmark table"
                    rows.append(f"| FSP | {pair[0]} → {pair[1]} | none (FSP needs equal channel counts) | {why} | — |")
    notes = [f"{marks[key]} {text}." for key, text in NUMBER_SOURCES.items()]
    return "\n".join(rows + [""] + notes)


def main() -> None:
    expected = recipes()
    for path, text in expected.items():
        (HERE / path).parent.mkdir(parents=True, exist_ok=True)
        (HERE / path).write_text(text)
    for stale in RECIPE_ROOT.rglob("*.yaml"):
        if stale.relative_to(HERE).as_posix() not in expected:
            stale.unlink()
    readme = HERE / "README.md"
    text = readme.read_text()
    start, end = text.index("<!-- table -->") + len("<!-- table -->"), text.index("<!-- /table -->")
    readme.write_text(text[:start] + "\n" + table() + "\n" + text[end:])


if __name__ == "__main__":
    main()
