"""Writes every CIFAR-100 recipe, and the recipe table of recipes/README.md, from the tables below.

    python recipes/make_recipes.py    # rewrites recipes/cifar100/**.yaml and README's table, removes stale YAMLs

This file is the single source of the recipes (tests/test_recipes.py checks the files match it). Every recipe
states every loss weight explicitly, so it means the same thing whatever rrd_hf's defaults are, and names the
source of every constant in a YAML comment that cites an entry of docs/references.md (`ref(anchor)`), where the
paper table or the repository file, line and commit of the value is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
RECIPE_ROOT = HERE / "cifar100"

Pair = tuple[str, str]

REFERENCES = "docs/references.md"


def ref(anchor: str) -> str:
    """A citation of an entry of docs/references.md (tests/test_recipes.py checks that the anchor exists)."""
    return f"{REFERENCES}#{anchor}"


# --------------------------------------------------------------------------------------------------------------
# Published numbers (top-1 %, CIFAR-100) and where they come from
# --------------------------------------------------------------------------------------------------------------

# Short keys of the sources of published numbers; README prints them as footnotes. Each says whether the number
# is a last-epoch or a best-epoch accuracy (docs/references.md#best-or-last-epoch).
NUMBER_SOURCES = {
    "crd": "CRD paper tables as in the RepDistiller README (CRD+KD: as in the RRD authors' README); last-epoch "
           f"accuracy; see {ref('benchmark-numbers')} and {ref('best-or-last-epoch')}",
    "rrd": "RRD authors' README of Sep 2024 (giakoumoglou/distillers `5a19fd0`); last-epoch accuracy by their code; "
           f"see {ref('rrd-numbers')} and {ref('best-or-last-epoch')}",
    "dkd": "DKD authors' numbers in the mdistiller README (wrn_40_2 → wrn_16_2: 76.24 as in the LS README, 76.23 in "
           f"the mdistiller README); best epoch, mean of 5 runs; see {ref('dkd-numbers')} and "
           f"{ref('best-or-last-epoch')}",
    "ls": "logit-standardization-KD README (Sun et al., CVPR 2024); best epoch; see "
          f"{ref('ls-numbers')} and {ref('best-or-last-epoch')}",
}

TEACHERS = {"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64,
            "ResNet50": 79.34}  # source "crd" (docs/references.md#teachers-and-students-alone)
# (teacher, student): (student alone, KD, RRD, RRD+KD); student alone and KD: "crd", RRD and RRD+KD: "rrd"
# (docs/references.md#teachers-and-students-alone, #benchmark-numbers, #rrd-numbers).
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
# The four pairs with published numbers of both logit-standardisation methods that the recipes reproduce
# (docs/references.md#ls-numbers).
MODERN_PAIRS = (("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"), ("resnet32x4", "ShuffleV2"))

# Rows of the benchmark tables (source "crd"), in their order; None: not in the table. CRD+KD is read from the RRD
# authors' README, the other rows from the RepDistiller README (docs/references.md#benchmark-numbers,
# #crd-with-kd-numbers).
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
# DKD's published numbers: every pair with a DKD config in mdistiller (docs/references.md#dkd-numbers).
DKD_PUBLISHED = {("resnet56", "resnet20"): 71.97, ("resnet110", "resnet32"): 74.11,
                 ("resnet32x4", "resnet8x4"): 76.32, ("wrn_40_2", "wrn_16_2"): 76.24, ("wrn_40_2", "wrn_40_1"): 74.81,
                 ("vgg13", "vgg8"): 74.68, ("resnet32x4", "ShuffleV1"): 76.45, ("wrn_40_2", "ShuffleV1"): 76.70,
                 ("vgg13", "MobileNetV2"): 69.71, ("ResNet50", "MobileNetV2"): 70.35,
                 ("resnet32x4", "ShuffleV2"): 77.07}
# KD+LS and DKD+LS on MODERN_PAIRS (docs/references.md#ls-numbers).
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
# DKD's beta per pair: DKD.BETA of mdistiller's configs/cifar100/dkd/ config of the pair, or cfg.py's default 8.0
# where the config sets none (docs/references.md#dkd-beta).
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
DKD_DEFAULT_BETA = 8.0  # mdistiller cfg.py DKD.BETA, for the two pairs without a DKD config
SMALL_LR = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}

# The LS authors' CIFAR-100 runs behind KD_LS_PUBLISHED and DKD_LS_PUBLISHED, read from the names of the logs their
# README links (`KD_TYPE,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT[,BETA]`; docs/references.md#ls-runs).
# KD+LS: pair -> (base temperature, --kd-weight, log).
LS_KD_RUNS: dict[Pair, tuple[float, float, str]] = {
    ("resnet32x4", "resnet8x4"): (2.0, 9.0, "logs/KD/kd,resnet32x4,resnet8x4,2,9.txt"),
    ("wrn_40_2", "wrn_16_2"): (2.0, 9.0, "logs/KD/kd,wrn_40_2,wrn_16_2,2,9.txt"),
    ("vgg13", "vgg8"): (3.0, 9.0, "logs/KD/kd,vgg13,vgg8,3,9.txt"),
    ("resnet32x4", "ShuffleV2"): (2.0, 9.0, "logs/KD/kd,resnet32x4,ShuffleV2,2,9.txt"),
}
# DKD+LS: pair -> (base temperature, --kd-weight, DKD.BETA, log). A log name without a beta ran with the LS config's
# DKD.BETA, which for these two pairs is cfg.py's default 8.0. tools/train.py multiplies DKD.ALPHA (1) and DKD.BETA
# by --kd-weight, so the runs trained with alpha = weight and beta = weight x DKD.BETA.
LS_DKD_RUNS: dict[Pair, tuple[float, float, float, str]] = {
    ("resnet32x4", "resnet8x4"): (2.0, 9.0, 8.0, "logs/DKD/dkd,resnet32x4,resnet8x4,2,9.txt"),
    ("wrn_40_2", "wrn_16_2"): (2.0, 12.0, 2.0, "logs/DKD/dkd,wrn_40_2,wrn_16_2,2,12,2.0.txt"),
    ("vgg13", "vgg8"): (2.0, 15.0, 2.0, "logs/DKD/dkd,vgg13,vgg8,2,15,2.0.txt"),
    ("resnet32x4", "ShuffleV2"): (2.0, 9.0, 8.0, "logs/DKD/dkd,resnet32x4,ShuffleV2,2,9.txt"),
}


def dkd_beta(pair: Pair) -> tuple[float, str]:
    """(beta, source) of DKD for a pair."""
    if pair in DKD_BETA:
        return DKD_BETA[pair], f"DKD.BETA of mdistiller's DKD config of this pair ({ref('dkd-beta')})"
    return DKD_DEFAULT_BETA, ("mdistiller's default DKD.BETA (engine/cfg.py): mdistiller has no DKD config, and DKD "
                              f"no published number, for this pair ({ref('dkd-beta')})")


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
    src = ref("training-protocol")
    return [
        Line("dataset", "cifar100", "the benchmark's dataset (uoft-cs/cifar100)"),
        Line("num_train_epochs", 240, f"{script} --epochs 240 ({src})"),
        Line("per_device_train_batch_size", 64, f"{script} --batch_size 64, one process ({src})"),
        Line("learning_rate", 0.01 if small else 0.05,
             f"{script} parse_option: 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 ({src})" if small
             else f"{script} --learning_rate 0.05 ({src})"),
        Line("optim", "sgd", f"{script}: optim.SGD ({src})"),
        Line("optim_args", "momentum=0.9", f"{script} --momentum 0.9 ({src})"),
        Line("weight_decay", 5e-4, f"{script} --weight_decay 5e-4 ({src})"),
        Line("decay_all_parameters", True,
             f"{script}: SGD over all parameters, BatchNorm and biases included ({src})"),
        Line("lr_decay_epochs", [150, 180, 210], f"{script} --lr_decay_epochs 150,180,210 ({src})"),
        Line("lr_decay_rate", 0.1, f"{script} --lr_decay_rate 0.1 ({src})"),
        Line("max_grad_norm", 0.0, f"no gradient clipping in the benchmark code ({src})"),
        Line("dataloader_drop_last", drop_last,
             "the RRD authors' CIFAR-100 loader drops the last partial batch (the FIFO memory needs full batches; "
             f"{ref('data-loaders')})"
             if drop_last else
             f"RepDistiller's and mdistiller's CIFAR-100 train loaders keep the last partial batch ({ref('data-loaders')})"),
        Line("ddp_find_unused_parameters", False,
             "every trainable parameter gets a gradient in every main-stage step (tests/test_models.py, "
             "tests/test_methods_trainer.py): no DDP graph walk per step"),
        Line("eval_strategy", "epoch", f"the benchmark evaluates every epoch ({src})"),
        Line("per_device_eval_batch_size", 256, "rrd_hf choice; evaluation runs in eval mode, results do not depend on it"),
        Line("dataloader_num_workers", 4, "rrd_hf choice (does not change results)"),
        Line("save_strategy", "epoch", "rrd_hf choice: resumable runs"),
        Line("save_total_limit", 2, "rrd_hf choice"),
        Line("logging_steps", 100, "rrd_hf choice"),
        Line("report_to", "none", "rrd_hf choice"),
        Line("seed", 0, f"rrd_hf choice: the benchmark code sets no seed; vary it with --seed ({ref('library-choices')})"),
    ]


def rrd_lines() -> list[Line]:
    """RRD in the setting of the authors' 2024 code (giakoumoglou/distillers 5a19fd0), that of the quoted numbers."""
    src = ref("rrd-setting")
    return [
        Line("rrd_weight", 1.0, f"RRD authors' commands: -b 1 ({src})"),
        Line("rrd_preset", "published", "the 2024 code's setting; the three fields below state it explicitly"),
        Line("student_temperature", 0.04, f"RRD 2024 code --nce_t_s 0.04 ({src})"),
        Line("teacher_temperature", 0.10, f"RRD 2024 code --nce_t_t 0.10 ({src})"),
        Line("enqueue", "after", f"RRD 2024 code: the batch is enqueued after the loss ({src})"),
        Line("memory_size", 16384, f"RRD code --nce_k 16384 ({src})"),
        Line("embedding_dim", 128, f"RRD code --feat_dim 128 ({src})"),
        Line("memory_type", "fifo", f"the FIFO queue, the only memory of the 2024 code ({src})"),
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
    return f"none (DKD's authors have no result for this pair; {ref('dkd-numbers')})"


def _not_published(pair: Pair) -> str:
    return f"none (not a published combination; {ref('combinations')})"


def baseline(key: str, weight: float, **extra: tuple[object, str]) -> Callable[[Pair], list[Line]]:
    """A benchmark baseline: CE 1 + `weight` x method (RepDistiller -r 1 -a 0 -b weight)."""
    src = ref("benchmark-weights")

    def lines(pair: Pair) -> list[Line]:
        return [
            Line("ce_weight", 1.0, f"{REPD} -r (gamma), default 1 ({src})"),
            off("kd_weight", "Hinton KD (-a 0)"),
            off("rrd_weight", "RRD"),
            Line("distill_method", key, f"{REPD} --distill {REPD_KEYS.get(key, key)} ({src})"),
            Line("distill_weight", weight, f"{REPD_SCRIPT}: -b {weight:g} ({src})"),
            *(Line(name, value, source) for name, (value, source) in extra.items()),
        ]

    return lines


REPD_KEYS = {"ab": "abound", "ft": "factor", "fitnet": "hint", "at": "attention", "cc": "correlation", "sp": "similarity"}
INIT_30 = (30, f"{REPD} --init_epochs 30 ({ref('init-stage')})")

#: Students whose FT init stage RepDistiller's helper/pretrain.py::init() runs at lr 0.01 (its lines 22-27 at b84f547,
#: docs/references.md#ft-init-learning-rate); every other student's at the run's learning rate (the rrd_hf default,
#: init_learning_rate None): 0.01 for MobileNetV2/ShuffleNets, 0.05 for vgg8.
FT_INIT_LR_0_01 = {"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
                   "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"}


def ft_lines(pair: Pair) -> list[Line]:
    lines = baseline("ft", 200.0, init_epochs=INIT_30)(pair)
    if pair[1] in FT_INIT_LR_0_01:
        lines.append(Line("distill_kwargs", {
            "init_learning_rate": (0.01, "RepDistiller helper/pretrain.py init(): lr 0.01 for FT with ResNet/WRN students "
                                         f"({ref('ft-init-learning-rate')})")}, "rrd_hf.methods ft keyword arguments"))
    return lines


BASELINES: dict[str, Callable[[Pair], list[Line]]] = {
    "fitnet": baseline("fitnet", 100.0),
    "at": baseline("at", 1000.0),
    "sp": baseline("sp", 3000.0),
    "cc": baseline("cc", 0.02),
    "vid": baseline("vid", 1.0),
    "rkd": baseline("rkd", 1.0),
    "pkt": baseline("pkt", 30000.0),
    "ab": baseline("ab", 1.0, init_epochs=INIT_30),  # the weight is inert: AB's loss runs in the init stage only
    "ft": ft_lines,
    "fsp": baseline("fsp", 50.0, init_epochs=INIT_30),  # inert too, as AB's
    "nst": baseline("nst", 50.0),
    "crd": baseline("crd", 0.8),
}


def kd_lines(pair: Pair) -> list[Line]:
    src = ref("kd")
    return [
        Line("ce_weight", 0.1, f"RepDistiller README and {REPD_SCRIPT}, KD: -r 0.1 ({src})"),
        Line("kd_weight", 0.9, f"RepDistiller README and {REPD_SCRIPT}, KD: -a 0.9 ({src})"),
        Line("kd_temperature", 4.0, f"{REPD} --kd_T 4 ({src})"),
        off("rrd_weight", "RRD"),
    ]


def crd_kd_lines(pair: Pair) -> list[Line]:
    src = ref("crd-with-kd-weights")
    return [
        Line("ce_weight", 1.0, f"{REPD} -r (gamma), default 1 ({src})"),
        Line("kd_weight", 1.0, f"{REPD_SCRIPT}, CRD+KD: -a 1 ({src})"),
        Line("kd_temperature", 4.0, f"{REPD} --kd_T 4 ({ref('kd')})"),
        off("rrd_weight", "RRD"),
        Line("distill_method", "crd", f"{REPD} --distill crd ({src})"),
        Line("distill_weight", 0.8, f"{REPD_SCRIPT}, CRD+KD: -b 0.8 ({src})"),
    ]


def dkd_kwargs(pair: Pair) -> Line:
    beta, beta_source = dkd_beta(pair)
    src = ref("dkd")
    return Line("distill_kwargs", {
        "alpha": (1.0, f"mdistiller DKD.ALPHA 1.0 ({src})"),
        "beta": (beta, beta_source),
        "temperature": (4.0, f"mdistiller DKD.T 4.0 ({src})"),
        "warmup_epochs": (20, f"mdistiller DKD.WARMUP 20: linear warm-up of the DKD term, 1-based epochs ({src})"),
    }, "rrd_hf.methods dkd keyword arguments")


def dkd_lines(pair: Pair) -> list[Line]:
    src = ref("dkd")
    return [
        Line("ce_weight", 1.0, f"mdistiller DKD.CE_WEIGHT 1.0 ({src})"),
        off("kd_weight", "Hinton KD"),
        off("rrd_weight", "RRD"),
        Line("distill_method", "dkd", "Decoupled KD (Zhao et al., CVPR 2022; mdistiller distillers/DKD.py)"),
        Line("distill_weight", 1.0, f"mdistiller adds alpha*TCKD + beta*NCKD with no further weight ({src})"),
        dkd_kwargs(pair),
    ]


def rrd_dkd_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 1.0, f"CE weight 1 in both RRD (-r 1) and DKD (DKD.CE_WEIGHT 1.0) ({ref('combinations')})"),
        off("kd_weight", "Hinton KD"),
        *rrd_lines(),
        Line("distill_method", "dkd", "Decoupled KD (mdistiller distillers/DKD.py)"),
        Line("distill_weight", 1.0, f"DKD at its own published weight, alpha*TCKD + beta*NCKD ({ref('dkd')})"),
        dkd_kwargs(pair),
    ]


def _ls_kd_lines(pair: Pair) -> tuple[Line, Line]:
    """distill_weight and distill_kwargs of KD+LS on a pair: the setting of the LS authors' run of that pair."""
    temperature, weight, log = LS_KD_RUNS[pair]
    src = ref("ls-runs")
    return (
        Line("distill_weight", weight,
             f"--kd-weight {weight:g} of the LS authors' run {log}, in place of KD.LOSS.KD_WEIGHT ({src})"),
        Line("distill_kwargs", {"temperature": (temperature, f"--base-temp {temperature:g} of that run, in place of "
                                                             f"KD.TEMPERATURE ({src})")},
             "rrd_hf.methods kd_ls keyword arguments"),
    )


def kd_ls_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 0.1, f"KD.LOSS.CE_WEIGHT 0.1, which the LS command leaves as is ({ref('ls-command')})"),
        off("kd_weight", "Hinton KD (replaced by kd_ls)"),
        off("rrd_weight", "RRD"),
        Line("distill_method", "kd_ls",
             f"KD on z-scored logits (Sun et al., CVPR 2024, --logit-stand; {ref('logit-standardisation')})"),
        *_ls_kd_lines(pair),
    ]


def dkd_ls_lines(pair: Pair) -> list[Line]:
    temperature, weight, beta, log = LS_DKD_RUNS[pair]
    src, cmd = ref("ls-runs"), ref("ls-command")
    named = log.removesuffix(".txt").split(",")[5:]  # the log name's sixth value, when present, is the run's beta
    beta_source = (f"DKD.BETA {beta:g} of the LS authors' run {log}" if named else
                   f"DKD.BETA of the LS config of this pair, which sets none: default {beta:g} (run {log})")
    return [
        Line("ce_weight", 1.0, f"DKD.CE_WEIGHT 1.0, which the LS command leaves as is ({cmd})"),
        off("kd_weight", "Hinton KD"),
        off("rrd_weight", "RRD"),
        Line("distill_method", "dkd_ls",
             f"DKD on z-scored logits (Sun et al., CVPR 2024, --logit-stand; {ref('logit-standardisation')})"),
        Line("distill_weight", weight,
             f"--kd-weight {weight:g} of the LS authors' run {log}; LS tools/train.py multiplies DKD.ALPHA and "
             f"DKD.BETA by it, so the run trained with alpha {weight:g}, beta {weight * beta:g} ({src}, {cmd})"),
        Line("distill_kwargs", {
            "alpha": (1.0, f"DKD.ALPHA 1.0, times distill_weight ({ref('dkd')}, {cmd})"),
            "beta": (beta, f"{beta_source}, times distill_weight ({src})"),
            "temperature": (temperature, f"--base-temp {temperature:g} of that run, in place of DKD.T ({src})"),
            "warmup_epochs": (20, f"DKD.WARMUP 20, kept by the LS code ({ref('dkd')}, {ref('logit-standardisation')})"),
        }, "rrd_hf.methods dkd_ls keyword arguments"),
    ]


def rrd_kd_ls_lines(pair: Pair) -> list[Line]:
    return [
        Line("ce_weight", 0.1, f"KD+LS's CE weight; this combination has no published setting ({ref('combinations')})"),
        off("kd_weight", "Hinton KD (replaced by kd_ls)"),
        *rrd_lines(),
        Line("distill_method", "kd_ls",
             f"KD on z-scored logits (Sun et al., CVPR 2024; {ref('logit-standardisation')})"),
        *_ls_kd_lines(pair),
    ]


def rrd_student_lines(with_kd: bool) -> Callable[[Pair], list[Line]]:
    src = ref("rrd-setting")

    def lines(pair: Pair) -> list[Line]:
        kd = [Line("kd_weight", 1.0, f"RRD authors' command, RRD+KD: -a 1 ({src})"),
              Line("kd_temperature", 4.0, f"RRD code --kd_T 4 ({src})")] if with_kd else [off("kd_weight", "Hinton KD (-a 0)")]
        return [Line("ce_weight", 1.0, f"RRD code: -r default 1 ({src})"), *kd, *rrd_lines()]

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
                    note="KD with logit standardisation, the LS authors' CIFAR-100 run of this pair"),
    "dkd_ls": Method("DKD+LS", dkd_ls_lines, pairs=MODERN_PAIRS, published=DKD_LS_PUBLISHED, number_source="ls",
                     note="DKD with logit standardisation, the LS authors' CIFAR-100 run of this pair"),
    "rrd_kd_ls": Method("RRD+KD+LS", rrd_kd_ls_lines, pairs=MODERN_PAIRS,
                        note="RRD (published setting) plus KD+LS (the LS authors' run of this pair)",
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
        f"Published top-1: {TEACHERS[name]:.2f} (the teacher row of the CRD paper tables as in the RepDistiller README;",
        f"last-epoch accuracy; see {ref('teachers-and-students-alone')} and {ref('best-or-last-epoch')}).",
        f"  rrd-hf train-teacher recipes/cifar100/teachers/{name}.yaml",
        f"Each line's comment names the source of its value; {REFERENCES} gives each source's file, line and commit.",
    ]
    lines = [
        Line("student", name, "the teacher trained here (RepDistiller model name)"),
        Line("output_dir", f"runs/cifar100/teachers/{name}", "where the method recipes look for it"),
        Line("ce_weight", 1.0, f"RepDistiller train_teacher.py: cross-entropy only ({ref('training-protocol')})"),
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
        "Every loss weight is stated; each line's comment names the source of its value, and",
        f"{REFERENCES} gives each source's file, line and commit.",
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
