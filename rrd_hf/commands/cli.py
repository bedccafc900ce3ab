"""`rrd-hf`: the command line of rrd_hf, one subcommand per task, shaped like the Hugging Face CLIs.

Every subcommand parses its arguments here and calls a library function (`rrd-hf push` keeps its parser in
`rrd_hf.hub`). The flags mean the same everywhere: positional arguments first, then `--dataset NAME` with
`--data-dir DIR` for a local copy, `--split`, `--batch-size`, `--device`, `--seed`, `--output FILE.json` (a metrics
file) and `--output-dir DIR` (a folder). `rrd-hf train` takes every field of its recipe as `--field value`.

A user error (bad argument, missing file, unusable data) prints one message and exits with status 1 (2 for a bad
command line); `RRD_HF_DEBUG=1 rrd-hf ...` or `rrd-hf --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable

from .process import run_command
from .train import BASIC_USER_ERRORS, user_errors

__all__ = ["main", "entry", "COMMANDS", "DEBUG_ENV"]

DEBUG_ENV = "RRD_HF_DEBUG"
#: Errors that come from what the user asked for (arguments, files, data, missing extras): one message, no traceback.
#: A run stopped by its NaN/inf check is one of them: the message says what went non-finite and what to do. So is a
#: push the Hub refused or could not receive (offline, no token, `rrd_hf.hub.HubPublishError`): the message says
#: what to do and that nothing was changed. `USER_ERRORS` (below) includes it; importing `rrd_hf.hub` costs seconds
#: (transformers), which `rrd-hf --help` should not pay, so it is looked up only where such an error can exist.
def __getattr__(name: str):
    if name == "USER_ERRORS":
        return user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_user_error(error: BaseException) -> bool:
    """Whether `error` is one of `USER_ERRORS`; a HubPublishError can only have been raised once its module was
    imported, so the module is not imported to find out."""
    if isinstance(error, BASIC_USER_ERRORS):
        return True
    hub_errors = sys.modules.get("rrd_hf.hub.errors")
    return hub_errors is not None and isinstance(error, hub_errors.HubPublishError)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; numbers show as N (integer) or X (real) instead of the upper-cased name."""

    def _get_default_metavar_for_optional(self, action):
        return getattr(action.type, "metavar", None) or {int: "N", float: "X"}.get(action.type) \
            or super()._get_default_metavar_for_optional(action)


class _Parser(argparse.ArgumentParser):
    """An argument error prints the one-line usage and the error, not the whole help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message}\n(`{self.prog} --help` lists the arguments)\n")


def _default(function: Callable, name: str):
    """The default of a library function's parameter, so the command line never restates it."""
    return inspect.signature(function).parameters[name].default


def _write_json(path: str, data: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)


def _check_output(path: str | None, checkpoint: str | None = None) -> None:
    """Refuse an `--output` file that cannot be written, before the work whose result it is meant to keep (a probe
    runs for hours), and never let a metrics file replace a file of the run's own record: `results.json` (best/last
    accuracy, which `rrd-hf aggregate` and the model card read), `_rrd_run.json`, `config.json` and the like."""
    if not path:
        return
    from ..runs.record import RUN_INFO_NAME, TRAINING_ARGS_NAME
    from ..runs.results import RESULTS_NAME

    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    name = os.path.basename(target)
    run_files = (RESULTS_NAME, RUN_INFO_NAME, TRAINING_ARGS_NAME, "config.json", "trainer_state.json",
                 "preprocessor_config.json")
    if name in run_files and (
            (checkpoint is not None and os.path.isdir(checkpoint)
             and os.path.realpath(folder) == os.path.realpath(checkpoint))
            or any(os.path.isfile(os.path.join(folder, own)) for own in (RUN_INFO_NAME, "config.json"))):
        raise FileExistsError(f"--output {path} is the run's own {name} (part of its record): write the metrics to "
                              f"another file, e.g. {os.path.join(os.path.dirname(path), 'eval.json')}.")
    if os.path.isdir(target):
        raise IsADirectoryError(f"--output {path} is a folder: give a file name, e.g. "
                                f"{os.path.join(path, 'metrics.json')}.")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rrd_hf-write-test-"):
            pass
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise PermissionError(f"{target} is read-only")
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(f"--output {path} cannot be written ({reason}): choose a writable place; nothing was "
                      "run.") from None


def _whole(minimum: int):
    """argparse type: a whole number >= `minimum` (so that 0 or -5 images, epochs or batches are refused up front)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.metavar = "N"
    return parse


def _real(minimum: float, *, strict: bool):
    """argparse type: a finite number above `minimum` (`strict`) or at least it: a NaN or infinite learning rate
    trains nothing and a run would report its numbers all the same."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            relation = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be a finite number {relation} {minimum:g}, got {text}")
        return value

    parse.metavar = "X"
    return parse


_positive_real, _nonnegative_real = _real(0, strict=True), _real(0, strict=False)


def _add_data_arguments(parser, *, dataset: str, dataset_help: str, split_help: str) -> None:
    parser.add_argument("--dataset", default=dataset, metavar="NAME", help=f"{dataset_help} (default {dataset})")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="local copy of the dataset: Hub layout, save_to_disk folder, parquet files or imagefolder "
                             "(default: the dataset's Hub id; see docs/data.md)")
    parser.add_argument("--split", default=None, help=split_help)


def _add_device_argument(parser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")


# ------------------------------------------------------------------------------------------------- demo


def _demo(argv: list[str]) -> None:
    from .demo import DemoSettings, run_demo

    defaults = DemoSettings()
    parser = _Parser(
        prog="rrd-hf demo", usage="%(prog)s [options]",
        description="The embedded offline demo on Fashion-MNIST: a teacher, then one student alone, with KD, with RRD "
        "and with RRD+KD on the same budget; prints the table and saves every model Hub-ready.",
        epilog="example: rrd-hf demo --train-samples 60000 --epochs 10   # the full training set, longer",
    )
    parser.add_argument("--output-dir", default=defaults.output_dir, help="folder of the models and demo_results.json "
                        f"(default {defaults.output_dir})")
    parser.add_argument("--teacher", default=defaults.teacher, help=f"zoo name (default {defaults.teacher})")
    parser.add_argument("--student", default=defaults.student, help=f"zoo name (default {defaults.student})")
    parser.add_argument("--train-samples", type=_whole(0), default=defaults.train_samples,
                        help=f"training images, a seeded subset (default {defaults.train_samples}; 0 = all 60,000)")
    parser.add_argument("--eval-samples", type=_whole(0), default=defaults.eval_samples,
                        help=f"test images (default {defaults.eval_samples or 'all'}; 0 = all 10,000)")
    parser.add_argument("--teacher-epochs", type=_whole(1), default=defaults.teacher_epochs,
                        help=f"(default {defaults.teacher_epochs})")
    parser.add_argument("--epochs", type=_whole(1), default=defaults.epochs,
                        help=f"epochs of each student run (default {defaults.epochs})")
    parser.add_argument("--batch-size", type=_whole(1), default=defaults.batch_size,
                        help=f"(default {defaults.batch_size})")
    parser.add_argument("--learning-rate", type=_positive_real, default=defaults.learning_rate,
                        help=f"(default {defaults.learning_rate})")
    parser.add_argument("--memory-size", type=_whole(1), default=defaults.memory_size,
                        help=f"RRD memory K (default {defaults.memory_size}; 16384 in the paper, for 50k images)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"(default {defaults.seed})")
    parser.add_argument("--gpu", action="store_true", help="use the accelerator when there is one")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the models of an earlier demo in --output-dir (refused without it)")
    run_demo(DemoSettings(**vars(parser.parse_args(argv))))


# ------------------------------------------------------------------------------------------------- train

#: The fields `rrd-hf train --help` shows; every other field is behind `--help-all`.
TRAIN_HELP_FIELDS = (
    ("models", ("student", "teacher_model_name_or_path")),
    ("data", ("dataset", "data_dir", "max_train_samples", "image_size", "data_pipeline")),
    ("objective (loss = ce_weight·CE + the weighted terms: kd_weight, rrd_weight, distill_method, or distill_terms)",
     ("ce_weight", "kd_weight", "rrd_weight", "distill_method", "distill_terms")),
    ("training (transformers.TrainingArguments)",
     ("output_dir", "seed", "num_train_epochs", "per_device_train_batch_size", "learning_rate", "eval_strategy",
      "bf16", "report_to", "resume_from_checkpoint")),
)
TEACHER_HELP_FIELDS = (
    ("models", ("student",)),
    TRAIN_HELP_FIELDS[1],
    TRAIN_HELP_FIELDS[3],
)


def _recipe_parser(prog: str, teacher_only: bool):
    """The parser `rrd_hf.train` parses recipes with, named after the subcommand (for --help-all)."""
    from .train import recipe_parser

    parser = recipe_parser(prog)
    for action in parser._actions:  # argparse %-formats help texts: a literal "25%" would break --help
        if action.help:
            action.help = re.sub(r"%(?!\(\w+\)[sdrf])", "%%", action.help)
    if teacher_only:
        parser.set_defaults(kd_weight=0.0, rrd_weight=0.0)
    return parser


def _recipe_help(prog: str, teacher_only: bool) -> str:
    """The short help of train / train-teacher: the positional recipe and the common fields, help texts taken
    from the fields themselves (so they cannot drift), and a pointer to the other fields."""
    full = _recipe_parser(prog, teacher_only)
    actions = {action.dest: action for action in full._actions}
    what = "Train a teacher with cross-entropy only" if teacher_only else "Distil a student"
    short = _Parser(
        prog=prog, usage=f"{prog} RECIPE.yaml [--field value ...]", add_help=False,
        description=f"{what} from a recipe, a YAML (or JSON) file of fields; flags on the command line override it. "
        "The run writes a Hub-ready model, results.json (best and last top-1/top-5) and _rrd_run.json into output_dir.",
        epilog=f"Every field of the recipe is accepted as --field value (underscores or dashes): ModelArguments, "
        f"DataArguments and RRDConfig, which holds every transformers.TrainingArguments field "
        f"({len(actions) - 1} in all). `{prog} --help-all` lists them.\n\n"
        "Several GPUs: accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m rrd_hf.train RECIPE.yaml "
        "[--field value ...]\n(docs/multi-gpu.md).\n\nexample:\n  "
        + ("rrd-hf train-teacher recipes/cifar100/teachers/resnet32x4.yaml --output_dir runs/teacher_r32x4"
           if teacher_only else
           "rrd-hf train recipes/cifar100/students/resnet32x4_resnet8x4_rrd_kd.yaml --output_dir runs/r8x4_s1 --seed 1"),
    )
    folder = "teachers" if teacher_only else "students"
    short.add_argument("recipe", metavar="RECIPE.yaml", help=f"recipe file, e.g. recipes/cifar100/{folder}/*.yaml "
                       "(optional: every field can be given as a flag instead)")
    short.add_argument("-h", "--help", action="store_true", help="show this help")
    short.add_argument("--help-all", action="store_true", help="show every field of the recipe")
    for title, names in TEACHER_HELP_FIELDS if teacher_only else TRAIN_HELP_FIELDS:
        group = short.add_argument_group(title)
        for name in names:
            action = actions[name]
            default = action.default
            text = (action.help or "").rstrip(".")  # already %-escaped by _recipe_parser
            if default is not None and default != argparse.SUPPRESS and "%(default)" not in text:
                text += f" (default: {default})".replace("%", "%%")
            flag = action.nargs == "?" and action.const is True  # HfArgumentParser's booleans: --bf16 [false]
            metavar = "BOOL" if flag else "{%s}" % ",".join(map(str, action.choices)) if action.choices \
                else {int: "N", float: "X"}.get(action.type, "VALUE")
            group.add_argument(action.option_strings[0], nargs="?" if flag else None, metavar=metavar, help=text)
    return short.format_help()


def _train(argv: list[str], teacher_only: bool = False) -> None:
    prog = "rrd-hf train-teacher" if teacher_only else "rrd-hf train"
    if "--help-all" in argv:
        _recipe_parser(prog, teacher_only).print_help()
        return
    if not argv or "-h" in argv or "--help" in argv:
        print(_recipe_help(prog, teacher_only))
        return
    from .train import main as train_main

    train_main(argv, teacher_only=teacher_only)


# ------------------------------------------------------------------------------------------------- evaluate


def _evaluate(argv: list[str]) -> None:
    from ..evaluation.checkpoint import evaluate_checkpoint

    parser = _Parser(
        prog="rrd-hf evaluate", usage="%(prog)s CHECKPOINT [--dataset NAME] [--data-dir DIR] [--split SPLIT] [options]",
        description="Top-1/top-5 of any image-classification checkpoint on a dataset, with evaluation transforms "
        "(resize, the dataset's normalisation).",
        epilog="example: rrd-hf evaluate runs/r8x4 --dataset cifar100 --data-dir ~/data/cifar100 --output top1.json",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="folder written by save_pretrained, or a Hub id")
    _add_data_arguments(parser, dataset=_default(evaluate_checkpoint, "dataset"),
                        dataset_help="known name (cifar100, cifar10, tiny-imagenet, stl10, fashion_mnist), Hub id or "
                                     "local path",
                        split_help="split to evaluate (default: the dataset's evaluation split)")
    parser.add_argument("--image-size", type=_whole(1), default=_default(evaluate_checkpoint, "image_size"),
                        help="side the images are resized to (default %(default)s)")
    parser.add_argument("--batch-size", type=_whole(1), default=_default(evaluate_checkpoint, "batch_size"),
                        help="(default %(default)s)")
    parser.add_argument("--max-samples", type=_whole(1), default=None, help="only the first N images")
    _add_device_argument(parser)
    parser.add_argument("--output", default=None, metavar="FILE.json",
                        help="also write the metrics to this file (never a run's own results.json)")
    args = parser.parse_args(argv)
    _check_output(args.output, args.checkpoint)
    metrics = evaluate_checkpoint(args.checkpoint, args.dataset, args.split, data_dir=args.data_dir,
                                  image_size=args.image_size, batch_size=args.batch_size, max_samples=args.max_samples,
                                  device=args.device)
    print(f"top-1 {metrics['top1']:.2f} %, top-5 {metrics['top5']:.2f} % on {metrics['evaluated_on']}", file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    if args.output:
        _write_json(args.output, metrics)


# ------------------------------------------------------------------------------------------------- aggregate


def _aggregate(argv: list[str]) -> None:
    from ..runs.results import aggregate_runs, format_groups

    parser = _Parser(
        prog="rrd-hf aggregate", usage="%(prog)s RUN [RUN ...] [--per-config] [--ignore FIELD] [--json]",
        description="Mean ± std (n − 1) of best/last top-1 and top-5 over runs of one configuration (e.g. seeds). "
        "Reads the folders of `rrd-hf train` and of RRDTrainer.save_model. Runs of different configurations (models, "
        "data, loss terms and weights, epochs, learning rate, batch size, ...; not the seed or output_dir) are not "
        "averaged together: the command names the fields that differ.",
        epilog="example: rrd-hf aggregate runs/r8x4_rrd_kd_seed*",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their results.json / _rrd_run.json)")
    parser.add_argument("--per-config", action="store_true",
                        help="one mean per configuration instead of refusing a mixed set")
    parser.add_argument("--ignore", action="append", default=[], metavar="FIELD",
                        help="leave FIELD out of the comparison (repeatable; a pattern such as 'data.*' works), when "
                             "you know it does not change the result")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--output", default=None, metavar="FILE.json", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    _check_output(args.output)
    groups = aggregate_runs(args.runs, per_config=args.per_config, ignore=args.ignore)
    print(json.dumps(groups, indent=2) if args.json else format_groups(groups))
    if args.output:
        _write_json(args.output, {"groups": groups})


# ------------------------------------------------------------------------------------------------- probe


def _probe(argv: list[str]) -> None:
    from ..evaluation.probe import PROBE_DEFAULTS, linear_probe

    d = PROBE_DEFAULTS
    parser = _Parser(
        prog="rrd-hf probe", usage="%(prog)s CHECKPOINT [--dataset NAME] [--data-dir DIR] [options]",
        description="Transfer linear probe (the CRD/RRD protocol): freeze the model, train a new linear classifier on "
        "the target dataset at 32x32, report top-1 of the last and the best epoch.",
        epilog="example: rrd-hf probe runs/wrn_16_2_rrd --dataset stl10 --data-dir ~/data/stl10 "
               "--output runs/wrn_16_2_rrd/probe_stl10.json",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="folder written by save_pretrained, or a Hub id")
    _add_data_arguments(parser, dataset=_default(linear_probe, "dataset"),
                        dataset_help="stl10 or tiny-imagenet (any known dataset works)",
                        split_help="evaluation split (default: test for STL-10, valid for Tiny ImageNet)")
    parser.add_argument("--train-split", default=None, help="training split (default: the dataset's)")
    parser.add_argument("--batch-size", type=_whole(1), default=d["batch_size"],
                        help="training batch (default %(default)s)")
    parser.add_argument("--eval-batch-size", type=_whole(1), default=_default(linear_probe, "eval_batch_size"),
                        help="(default %(default)s)")
    parser.add_argument("--max-train-samples", type=_whole(1), default=None,
                        help="seeded random subset of the training split")
    parser.add_argument("--max-eval-samples", type=_whole(1), default=None,
                        help="seeded random subset of the evaluation split")
    _add_device_argument(parser)
    parser.add_argument("--seed", type=int, default=_default(linear_probe, "seed"), help="(default %(default)s)")
    parser.add_argument("--num-workers", type=_whole(0), default=_default(linear_probe, "num_workers"),
                        help="processes decoding the images once")
    parser.add_argument("--output", default=None, metavar="FILE.json",
                        help="also write the metrics to this file (name it CHECKPOINT/probe_<dataset>.json to have "
                             "`rrd-hf push` put it in the model card)")
    parser.add_argument("--no-history", action="store_true", help="leave the per-epoch history out of the printout")
    protocol = parser.add_argument_group("protocol (defaults: the reference code's)")
    protocol.add_argument("--epochs", type=_whole(1), default=d["epochs"], help="(default %(default)s)")
    protocol.add_argument("--milestones", type=int, nargs="*", default=list(d["milestones"]),
                          help="epochs of LR × lr-decay-rate (default %(default)s)")
    protocol.add_argument("--lr", type=_positive_real, default=None, help="default 0.05 (0.01 for MobileNetV2/ShuffleNets)")
    protocol.add_argument("--lr-decay-rate", type=_positive_real, default=d["lr_decay_rate"], help="(default %(default)s)")
    protocol.add_argument("--momentum", type=_nonnegative_real, default=d["momentum"], help="(default %(default)s)")
    protocol.add_argument("--weight-decay", type=_nonnegative_real, default=d["weight_decay"], help="(default %(default)s)")
    protocol.add_argument("--image-size", type=_whole(1), default=d["image_size"], help="(default %(default)s)")
    protocol.add_argument("--bn-train", action="store_true",
                          help="keep the model in train mode like the reference code: BatchNorm running statistics "
                               "adapt to the target data (default: frozen source statistics, backbone in eval mode)")
    protocol.add_argument("--feature-module", default=None, help="dotted name of the classifier to replace")
    args = parser.parse_args(argv)
    _check_output(args.output, args.checkpoint)  # before hours of probing, not after
    metrics = linear_probe(
        args.checkpoint, args.dataset, data_dir=args.data_dir, train_split=args.train_split, eval_split=args.split,
        epochs=args.epochs, milestones=args.milestones, lr=args.lr, lr_decay_rate=args.lr_decay_rate,
        momentum=args.momentum, weight_decay=args.weight_decay, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, image_size=args.image_size, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, bn_train=args.bn_train, feature_module=args.feature_module,
        device=args.device, seed=args.seed, num_workers=args.num_workers,
    )
    shown = {k: v for k, v in metrics.items() if k != "history"} if args.no_history else metrics
    print(json.dumps(shown, indent=2))  # first: if writing fails after all, the metrics are on the screen
    if args.output:
        _write_json(args.output, metrics)


# ------------------------------------------------------------------------------------------------- plots


def _plots(argv: list[str]) -> None:
    from ..evaluation.plots import make_figures

    parser = _Parser(
        prog="rrd-hf plots", usage="%(prog)s CHECKPOINT --teacher TEACHER [--dataset NAME] [--data-dir DIR] [options]",
        description="The paper's figures: student vs teacher class-correlation difference of the logits and a t-SNE "
        "of the student's penultimate embeddings (PNG + plots.json).",
        epilog="example: rrd-hf plots runs/r8x4 --teacher runs/teacher_r32x4 --data-dir ~/data/cifar100",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the student: folder written by save_pretrained, or a "
                        "Hub id")
    parser.add_argument("--teacher", required=True, help="the teacher: folder or Hub id")
    _add_data_arguments(parser, dataset=_default(make_figures, "dataset"), dataset_help="known dataset name",
                        split_help="default: the dataset's evaluation split")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="default: CHECKPOINT/figures for a local checkpoint (where `rrd-hf push` finds them)")
    parser.add_argument("--batch-size", type=_whole(1), default=_default(make_figures, "batch_size"),
                        help="(default %(default)s)")
    parser.add_argument("--max-samples", type=_whole(1), default=None, help="first N evaluation images")
    _add_device_argument(parser)
    parser.add_argument("--seed", type=int, default=_default(make_figures, "seed"), help="(default %(default)s)")
    figure = parser.add_argument_group("figures")
    figure.add_argument("--image-size", type=int, default=_default(make_figures, "image_size"),
                        help="(default %(default)s)")
    figure.add_argument("--tsne-max-samples", type=int, default=_default(make_figures, "tsne_max_samples"),
                        help="random subset for the t-SNE (default %(default)s)")
    figure.add_argument("--tsne-classes", type=int, default=_default(make_figures, "tsne_classes"),
                        help="t-SNE of the first N classes only, 0 for all (default %(default)s)")
    figure.add_argument("--perplexity", type=float, default=_default(make_figures, "perplexity"),
                        help="(default %(default)s)")
    figure.add_argument("--max-iter", type=int, default=_default(make_figures, "max_iter"),
                        help="t-SNE iterations, scikit-learn's max_iter (default %(default)s)")
    figure.add_argument("--vmax", type=float, default=None,
                        help="top of the heatmap's colour scale (default: the largest difference)")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or (os.path.join(args.checkpoint, "figures") if os.path.isdir(args.checkpoint)
                                     else "figures")
    summary = make_figures(
        args.checkpoint, args.teacher, args.dataset, data_dir=args.data_dir, split=args.split, output_dir=output_dir,
        image_size=args.image_size, max_samples=args.max_samples, tsne_max_samples=args.tsne_max_samples,
        tsne_classes=args.tsne_classes or None, perplexity=args.perplexity, max_iter=args.max_iter, vmax=args.vmax,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
    )
    print(json.dumps({"output_dir": output_dir, **summary}, indent=2))


# ------------------------------------------------------------------------------------------------- push


def _push(argv: list[str]) -> None:
    from .push import push_command as push

    push(argv)


# ------------------------------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    arguments: str
    summary: str
    run: Callable[[list[str]], None]


COMMANDS = {command.name: command for command in (
    Command("demo", "", "the offline demo: a teacher, then a student alone, with KD, RRD and RRD+KD", _demo),
    Command("train", "RECIPE.yaml", "distil a student from a recipe (flags override it)", _train),
    Command("train-teacher", "RECIPE.yaml", "train a teacher with cross-entropy only",
            lambda argv: _train(argv, teacher_only=True)),
    Command("evaluate", "CHECKPOINT", "top-1/top-5 of a checkpoint on a dataset", _evaluate),
    Command("aggregate", "RUN ...", "mean ± std over the seeds of one configuration", _aggregate),
    Command("push", "CHECKPOINT REPO_ID", "publish the clean student with its model card", _push),
    Command("probe", "CHECKPOINT", "transfer linear probe (stl10, tiny-imagenet)", _probe),
    Command("plots", "CHECKPOINT", "correlation-difference and t-SNE figures (PNG)", _plots),
)}


def _overview() -> str:
    width = max(len(f"{c.name} {c.arguments}") for c in COMMANDS.values())
    lines = ["usage: rrd-hf [--debug] <command> [<args>]", "",
             "Knowledge distillation for vision models (RRD and baselines), native to Hugging Face transformers.", "",
             "commands:"]
    lines += [f"  {f'{c.name} {c.arguments}':<{width}}  {c.summary}" for c in COMMANDS.values()]
    lines += ["", "`rrd-hf <command> --help` shows a command's arguments. A user error prints one message; "
              f"{DEBUG_ENV}=1 or --debug shows the traceback."]
    return "\n".join(lines)


def _debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested()
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"usage: rrd-hf [--debug] <command> [<args>]\nrrd-hf: error: unknown command {name!r}.{hint} Choose one "
              f"of {', '.join(COMMANDS)} (`rrd-hf --help`).", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rrd_hf").setLevel(os.environ.get("RRD_HF_LOG_LEVEL", "INFO"))
    try:
        COMMANDS[name].run(rest)
    except BrokenPipeError:  # the reader went away (`rrd-hf ... | head`): not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"rrd-hf {name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if debug or not _is_user_error(error):
            raise
        print(f"rrd-hf {name}: error: {error}\n({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)


def entry() -> None:
    """The `rrd-hf` console script: `main()` without garbage collections over what was imported before it, nor
    at the end of the process (`rrd_hf.commands.process`)."""
    run_command(main)


if __name__ == "__main__":
    entry()
