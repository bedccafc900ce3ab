"""rrd_hf against the training loop a researcher writes by hand, side by side, in one run.

Side A is a plain PyTorch loop (plain_loop.py), RepDistiller-style: the same rrd_hf zoo models, images
decoded once into memory (as torchvision's CIFAR datasets hold them), per-sample transforms in DataLoader workers
(random crop with 4-pixel zero padding, horizontal flip, normalise: plain torch on the PIL image), SGD (momentum
0.9, weight decay 5e-4 on every parameter, lr 0.05), the teacher under `no_grad` in eval mode, and the losses
written out there (not imported from rrd_hf): CE, KD (T = 4), RRD (FIFO memory of 16384 teacher embeddings,
τ_s 0.04, τ_t 0.1, 128-d heads, enqueue after), RRD+KD, CRD (RepDistiller's bmm form: 16384 negatives drawn
uniformly, T 0.07, bank momentum 0.5). By default it keeps RepDistiller's per-step meters (`loss.item()`).
Side B is `python -m rrd_hf.train` (what `rrd-hf train` runs) on a temporary recipe with the same models, data,
weights and optimiser: whatever rrd_hf's default path is, since the recipe names no data path. Extra rrd_hf
variants (`--variant NAME="--flag value ..."`) run next to it, e.g. the per-sample data path.

rrd_hf's runs say whether they decoded the training images or read them from the decoded-image cache an earlier run
kept (`decoded_cache`, on by default: the first run on a split decodes).

Runs alternate (plain, rrd_hf, plain, rrd_hf, ...) in subprocesses, each a fresh process that loads the data,
builds the models and trains one epoch on the first N training images (no evaluation unless `--eval`, no
checkpoints). Per run it prints the wall seconds and CPU seconds (the process and its loader workers, from
`getrusage(RUSAGE_CHILDREN)`), the training time from the first to the last optimizer step, and the steady-state
images/s and the main process's page faults per step between optimizer step `--warmup-steps` and the last
(timed by torch's global optimizer-step hook, the same clock on both sides; on CUDA the clock synchronises at
those two steps only). Then the median ratio
rrd_hf / plain per method and pair, the adjacent runs of one repeat paired.

    python benchmarks/side_by_side.py --quick            # smoke test on generated images
    python benchmarks/side_by_side.py                    # both pairs, CE KD RRD RRD+KD CRD, 6,400 images, 3 repeats
    python benchmarks/side_by_side.py --pairs resnet20-resnet8 --methods KD,RRD --repeats 5 --tag r20
    python benchmarks/side_by_side.py --variant per_sample="--data_pipeline per_sample" --reference per_sample

Data: the CIFAR-10 folder (Hub layout) given with `--data`, else `$RRD_HF_CIFAR10`, else the repository's
`data/cifar10` (ignored by git) when present (the first N training images); otherwise generated JPEG images in the
same Hub layout. Teachers: randomly initialised zoo models saved once with save_pretrained (speed only), unless
`--teacher-epochs` trains them first through rrd_hf (for accuracy runs with `--eval`).

Every run and the summary go to a result file, rewritten after each run: by default
benchmarks/results/side_by_side-<hardware>-torch<version>-<commit>.json (`--quick` adds the tag `quick`; see
benchmarks/README.md), or the `--json PATH` given.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA_ENV = "RRD_HF_CIFAR10"  # a CIFAR-10 folder in the Hub layout, used when --data is not given
if str(HERE) not in sys.path:  # plain_loop and json_output live next to this script
    sys.path.insert(0, str(HERE))
import json_output  # noqa: E402


def default_data() -> Path:
    """`$RRD_HF_CIFAR10`, else the repository's `data/cifar10` (ignored by git); generated images when absent."""
    return Path(os.environ.get(DATA_ENV) or REPO / "data" / "cifar10")

PAIRS = {  # name: (teacher, student)
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4"),  # compute-bound: the teacher's forward dominates
    "resnet20-resnet8": ("resnet20", "resnet8"),  # data-bound on a CPU: small models, per-sample transforms
}
# Loss weights per method, as in the benchmark's published runs (rrd_hf's recipes use the same).
METHODS = {
    "CE": {"ce": 1.0},
    "KD": {"ce": 0.1, "kd": 0.9},
    "RRD": {"ce": 1.0, "rrd": 1.0},
    "RRD+KD": {"ce": 1.0, "kd": 1.0, "rrd": 1.0},
    "CRD": {"ce": 1.0, "crd": 0.8},
}
# The benchmark's protocol (RepDistiller / the RRD paper), shared by both sides.
PROTOCOL = {
    "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "padding": 4, "flip_prob": 0.5,
    "kd_temperature": 4.0, "embedding_dim": 128, "memory_size": 16384, "student_temperature": 0.04,
    "teacher_temperature": 0.1, "crd_negatives": 16384, "crd_temperature": 0.07, "crd_momentum": 0.5,
}
TARGETS = {("resnet32x4-resnet8x4", "KD"): 1.0, ("resnet32x4-resnet8x4", "RRD"): 1.0,  # rrd_hf / plain wall time
           ("resnet20-resnet8", "KD"): 0.9, ("resnet20-resnet8", "RRD"): 0.9}
PLAIN = "plain"
RRD_HF = "rrd_hf"


# ============================================================================================ shared step clock


class StepClock:
    """Timestamps optimizer steps with torch's global step hook, so both loops are timed by the same code.

    Records the first step, step `warmup` and step `last` (synchronising CUDA only at those two), from which the
    steady-state rate excludes start-up, warm-up and anything after the last timed step (evaluation, saving).
    """

    def __init__(self, warmup: int, last: int, cuda: bool):
        self.warmup, self.last, self.cuda = warmup, last, cuda
        self.steps = 0
        self.first = self.start = self.end = None
        self.faults_start = self.faults_end = None  # the main process's minor page faults at `warmup` and `last`

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def __call__(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        if self.steps == 1:
            self.first = self._now()
        if self.steps == self.warmup:
            self.start = self._now()
            self.faults_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if self.steps == self.last:
            self.end = self._now()
            self.faults_end = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def install(self) -> "StepClock":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(self)
        return self


def _device_name(cuda: bool) -> str:
    if cuda:
        import torch

        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


def _child_report(spec: dict, clock: StepClock, started: float, cuda: bool) -> dict:
    """What a child writes back: step timings, steady rate, peak memory, versions."""
    import torch

    batch = spec["batch_size"]
    report = {
        "steps": clock.steps, "device": _device_name(cuda), "torch": torch.__version__,
        "setup_s": (clock.first - started) if clock.first else None,
        "train_s": (clock.end - clock.first) if clock.end and clock.first else None,
        "steady_images_per_s": None,
    }
    if clock.start is not None and clock.end is not None and clock.end > clock.start:
        report["steady_images_per_s"] = (clock.last - clock.warmup) * batch / (clock.end - clock.start)
        # Fresh host pages the main process faulted in per steady step: a step that reuses its memory takes ~none.
        report["page_faults_per_step"] = (clock.faults_end - clock.faults_start) / (clock.last - clock.warmup)
    if cuda:
        report["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        report["peak_memory_kind"] = "cuda max_memory_allocated"
    else:
        report["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        report["peak_memory_kind"] = "host max RSS of the main process"
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except ImportError:
        pass
    return report


def _window(spec: dict) -> tuple[int, int]:
    """(warm-up step, last timed step): the last step of the first epoch, so evaluation never falls inside."""
    per_epoch = spec["num_images"] // spec["batch_size"]
    last = per_epoch
    warmup = min(spec["warmup_steps"], max(last - 1, 1))
    return warmup, last


# ============================================================================================ side A: plain loop


def plain_child(spec: dict) -> dict:
    started = time.perf_counter()
    import torch

    # The plain loop borrows rrd_hf's zoo so that both sides train the same architectures, but the zoo's models are
    # transformers models: importing them (and the rrd_hf package around them) is start-up that a script with plain
    # nn.Module copies would not pay. Timed here so that the summary can also compare without it.
    zoo_started = time.perf_counter()
    import rrd_hf.models  # noqa: F401
    zoo_import_s = time.perf_counter() - zoo_started

    cuda = torch.cuda.is_available() and not spec["cpu"]
    warmup, last = _window(spec)
    clock = StepClock(warmup, last, cuda).install()
    from plain_loop import PlainRun

    run = PlainRun(spec)
    history = []
    for _ in range(spec["epochs"]):
        run.train_epoch()
        if run.test_loader is not None:
            history.append(run.evaluate())
    report = _child_report(spec, clock, started, cuda)
    report["zoo_import_s"] = zoo_import_s
    if history:
        report.update(last_top1=history[-1]["top1"], last_top5=history[-1]["top5"],
                      best_top1=max(h["top1"] for h in history))
    return report


# ============================================================================================ side B: rrd_hf


def rrd_hf_recipe(spec: dict) -> dict:
    """The temporary recipe: the benchmark's protocol in rrd_hf's fields, no evaluation, no checkpoints."""
    p, w = spec["protocol"], spec["weights"]
    recipe = {
        "student": spec["student"], "dataset": spec["data"], "max_train_samples": spec["num_images"],
        "num_train_epochs": spec["epochs"], "per_device_train_batch_size": spec["batch_size"],
        "per_device_eval_batch_size": 256, "learning_rate": p["learning_rate"], "optim": "sgd",
        "optim_args": f"momentum={p['momentum']}", "weight_decay": p["weight_decay"], "decay_all_parameters": True,
        "lr_scheduler_type": spec["lr_schedule"], "max_grad_norm": 0.0, "dataloader_num_workers": spec["workers"],
        "dataloader_drop_last": True, "save_strategy": "no", "logging_steps": 100, "report_to": "none",
        "seed": spec["seed"], "ce_weight": w["ce"], "kd_weight": w.get("kd", 0.0), "rrd_weight": w.get("rrd", 0.0),
        "kd_temperature": p["kd_temperature"], "embedding_dim": p["embedding_dim"], "memory_size": p["memory_size"],
        "student_temperature": p["student_temperature"], "teacher_temperature": p["teacher_temperature"],
        "enqueue": "after", "memory_type": "fifo",
    }
    if spec["eval"]:
        recipe["eval_strategy"] = "epoch"
        if spec.get("num_eval_images"):
            recipe["max_eval_samples"] = spec["num_eval_images"]
    else:  # rrd_hf still evaluates once at the end: keep that to one batch
        recipe.update(eval_strategy="no", max_eval_samples=spec["batch_size"])
    if "crd" in w:
        recipe.update(distill_method="crd", distill_weight=w["crd"])
    if set(w) - {"ce"}:
        recipe["teacher_model_name_or_path"] = spec["teacher_path"]
    if spec["cpu"]:
        recipe["use_cpu"] = True
    return recipe


class DecodedFrom(logging.Handler):
    """Whether rrd_hf's in-memory path decoded the training images or read them from its decoded-image cache (the
    first log line of `rrd_hf.data.device` about a split is the training split's)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.train_images_from = None  # "decoding", "cache" or None (another data path)

    def emit(self, record: logging.LogRecord) -> None:
        if self.train_images_from is None:
            message = record.getMessage()
            self.train_images_from = "cache" if "read from" in message else "decoding" if "kept in" in message else None

    def install(self) -> "DecodedFrom":
        source = logging.getLogger("rrd_hf.data.device")
        source.setLevel(logging.INFO)
        source.addHandler(self)
        return self


def rrd_hf_child(spec: dict) -> dict:
    started = time.perf_counter()
    import runpy

    import torch
    import yaml

    cuda = torch.cuda.is_available() and not spec["cpu"]
    warmup, last = _window(spec)
    clock = StepClock(warmup, last, cuda).install()
    recipe_path = Path(spec["output_dir"]) / "recipe.yaml"
    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(yaml.safe_dump(rrd_hf_recipe(spec), sort_keys=False))
    argv = [str(recipe_path), "--output_dir", spec["output_dir"], *shlex.split(spec.get("flags") or "")]
    sys.argv = ["rrd_hf.train", *argv]
    decoded = DecodedFrom().install()
    runpy.run_module("rrd_hf.train", run_name="__main__", alter_sys=True)
    report = _child_report(spec, clock, started, cuda)
    report["train_images_from"] = decoded.train_images_from
    results = Path(spec["output_dir"]) / "results.json"
    if results.is_file():
        values = json.loads(results.read_text())
        keys = ("train_runtime", "train_samples_per_second")
        if spec["eval"]:  # otherwise run() evaluated one batch only: no accuracy to report
            keys += ("best_top1", "last_top1", "last_top5")
        for key in keys:
            if values.get(key) is not None:
                report[key] = values[key]
    report["argv"] = argv
    return report


# ============================================================================================ orchestration


@dataclass
class Run:
    pair: str
    method: str
    side: str  # "plain", "rrd_hf" or a variant name
    repeat: int
    wall_s: float = float("nan")
    cpu_s: float = float("nan")
    ok: bool = False
    child: dict = field(default_factory=dict)

    def row(self) -> dict:
        keep = ("train_s", "setup_s", "steady_images_per_s", "page_faults_per_step", "peak_memory_mb", "best_top1",
                "last_top1", "last_top5", "train_images_from",
                "device", "torch", "transformers", "steps")
        return {**{k: v for k, v in asdict(self).items() if k != "child"}, **{k: self.child.get(k) for k in keep}}


def generate_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random JPEG images (quality 75) in the Hub layout of `uoft-cs/cifar10`."""
    import io

    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
    from PIL import Image

    from rrd_hf.data import CIFAR10_CLASS_NAMES

    rng = np.random.default_rng(seed)
    folder = root / "cifar10" / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    features = Features({"img": ImageFeature(), "label": ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    for split, n in (("train", n_train), ("test", n_test)):
        coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)  # smooth images compress like photographs
        images = []
        for array in coarse:
            buffer = io.BytesIO()
            Image.fromarray(array).resize((32, 32), Image.BILINEAR).save(buffer, format="JPEG", quality=75)
            images.append({"bytes": buffer.getvalue(), "path": None})
        labels = (np.arange(n) % len(CIFAR10_CLASS_NAMES)).tolist()
        Dataset.from_dict({"img": images, "label": labels}, features=features).to_parquet(
            str(folder / f"{split}-00000-of-00001.parquet")
        )
    return root / "cifar10"


def save_random_teacher(name: str, path: Path, class_names, mean, std, seed: int) -> Path:
    """A randomly initialised zoo teacher with its image processor: the speed of a forward does not need training."""
    import torch

    from rrd_hf.data import cifar_image_processor, save_pretrained_with_processor
    from rrd_hf.models import build_model

    torch.manual_seed(seed)
    model = build_model(name, num_labels=len(class_names), id2label=dict(enumerate(class_names)))
    save_pretrained_with_processor(model, path, cifar_image_processor(mean=mean, std=std))
    return path


def _child_env(args) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_child(kind: str, spec: dict, work: Path, label: str, env: dict) -> tuple[float, float, dict | None, Path]:
    """Run one side in a fresh process; return (wall s, CPU s of it and its children, its report, its log)."""
    shutil.rmtree(spec["output_dir"], ignore_errors=True)  # scratch of an earlier invocation with this --work-dir
    spec_path = work / f"{label}.spec.json"
    result_path = work / f"{label}.result.json"
    log_path = work / f"{label}.log"
    spec_path.write_text(json.dumps(dict(spec, result=str(result_path))))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", str(spec_path)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(work))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(result_path.read_text()) if code == 0 and result_path.is_file() else None
    return wall, cpu, report, log_path


def _fmt(value, spec=".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def summarise(runs: list[Run], sides: list[str], reference: str | None) -> list[dict]:
    """Median ratios per (pair, method, side) to the plain loop (and to `reference`), adjacent runs paired."""
    rows = []
    keys = sorted({(r.pair, r.method) for r in runs}, key=lambda k: (k[0], list(METHODS).index(k[1])
                                                                       if k[1] in METHODS else -1))
    for pair, method in keys:
        by_side = {side: {r.repeat: r for r in runs if (r.pair, r.method, r.side) == (pair, method, side) and r.ok}
                   for side in sides}
        for side in sides:
            mine = by_side[side]
            if not mine:
                continue
            first = next(iter(mine.values())).child
            row = {"pair": pair, "method": method, "side": side, "runs": len(mine),
                   "device": first.get("device"), "torch": first.get("torch"), "transformers": first.get("transformers"),
                   "wall_s": statistics.median(r.wall_s for r in mine.values()),
                   "cpu_s": statistics.median(r.cpu_s for r in mine.values())}
            rates = [r.child.get("steady_images_per_s") for r in mine.values() if r.child.get("steady_images_per_s")]
            row["steady_images_per_s"] = statistics.median(rates) if rates else None
            for key in ("last_top1", "last_top5", "best_top1", "peak_memory_mb", "page_faults_per_step"):
                values = [r.child[key] for r in mine.values() if r.child.get(key) is not None]
                row[key] = statistics.median(values) if values else None
            for other, prefix in ((PLAIN, "vs_plain"), (reference, f"vs_{reference}")):
                if other is None or side in (other, PLAIN) or not by_side.get(other):
                    continue
                repeats = sorted(set(mine) & set(by_side[other]))
                if not repeats:
                    continue
                row[f"{prefix}_wall"] = statistics.median(mine[k].wall_s / by_side[other][k].wall_s for k in repeats)
                row[f"{prefix}_cpu"] = statistics.median(mine[k].cpu_s / by_side[other][k].cpu_s for k in repeats)
                rate_ratios = [by_side[other][k].child["steady_images_per_s"] / mine[k].child["steady_images_per_s"]
                               for k in repeats if mine[k].child.get("steady_images_per_s")
                               and by_side[other][k].child.get("steady_images_per_s")]
                row[f"{prefix}_step_time"] = statistics.median(rate_ratios) if rate_ratios else None
                if other == PLAIN:  # against the plain loop without its import of the zoo (see plain_child)
                    bare = [mine[k].wall_s / (by_side[other][k].wall_s - by_side[other][k].child["zoo_import_s"])
                            for k in repeats if by_side[other][k].child.get("zoo_import_s") is not None]
                    row["vs_plain_wall_without_zoo_import"] = statistics.median(bare) if bare else None
            target = TARGETS.get((pair, method))
            if side == RRD_HF and target is not None and row.get("vs_plain_wall") is not None:
                row["target"] = target
                row["meets_target"] = row["vs_plain_wall"] <= target
            rows.append(row)
    return rows


def print_summary(rows: list[dict], reference: str | None) -> None:
    accuracy = any(row.get("last_top1") is not None for row in rows)
    columns = [("runs", "runs", "d", 4), ("wall s", "wall_s", ".1f", 7), ("CPU s", "cpu_s", ".1f", 7),
               ("img/s", "steady_images_per_s", ".0f", 8), ("faults/step", "page_faults_per_step", ".0f", 11),
               ("peak MB", "peak_memory_mb", ".0f", 8),
               ("x plain wall", "vs_plain_wall", ".3f", 12), ("x plain CPU", "vs_plain_cpu", ".3f", 11),
               ("x plain step", "vs_plain_step_time", ".3f", 12),
               ("x plain wall*", "vs_plain_wall_without_zoo_import", ".3f", 13)]
    if reference:
        columns += [(f"x {reference} wall", f"vs_{reference}_wall", ".3f", 16),
                    (f"x {reference} step", f"vs_{reference}_step_time", ".3f", 16)]
    if accuracy:
        columns += [("top-1", "last_top1", ".2f", 7), ("top-5", "last_top5", ".2f", 7), ("best", "best_top1", ".2f", 7)]
    print(f"\n{'pair':<22} {'method':<7} {'side':<11}" + "".join(f" {title:>{width}}" for title, _, _, width in columns)
          + "  target")
    for row in rows:
        target = ""
        if "target" in row:
            target = f"<={row['target']:.1f} {'yes' if row['meets_target'] else 'NO'}"
        print(f"{row['pair']:<22} {row['method']:<7} {row['side']:<11}"
              + "".join(f" {_fmt(row.get(key), spec):>{width}}" for _, key, spec, width in columns) + f"  {target}")


CSV_FIRST = ("pair", "method", "side", "runs", "wall_s", "cpu_s", "steady_images_per_s", "vs_plain_wall", "vs_plain_cpu",
             "vs_plain_step_time")


class ResultFile:
    """The result file (benchmarks/json_output.py): its record's hardware, commit and date are read once, and its
    path is fixed at the first write, which is rewritten after every run."""

    def __init__(self, args, started: str, argv: list[str] | None):
        self.args, self.started, self.argv = args, started, argv
        self.path = self.hardware = self.commit = None

    def write(self, results: dict, runs: list[Run]) -> None:
        if self.hardware is None:
            # The device the children trained on, as they report it ("CPU: <model> (<n> cores)" or the GPU's name).
            names = [r.child.get("device") for r in runs if r.child.get("device")]
            gpu = next((n for n in names if not n.startswith("CPU")), None)
            self.hardware = json_output.hardware("cuda" if gpu else "cpu", gpu_name=gpu)
            self.commit = json_output.commit()
        saved = json_output.record("side_by_side", results, tag=self.args.tag, hardware_info=self.hardware,
                                   commit_id=self.commit, date=self.started, argv=self.argv)
        if self.path is None:
            self.path = json_output.result_path(self.args, saved) or False
        if self.path:
            json_output.write_json(self.path, saved)


def write_outputs(args, runs: list[Run], rows: list[dict], meta: dict, result_file: ResultFile) -> None:
    result_file.write({**meta, "runs": [r.row() for r in runs], "summary": rows}, runs)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        seen = dict.fromkeys(k for row in rows for k in row)
        fieldnames = [k for k in CSV_FIRST if k in seen] + [k for k in seen if k not in CSV_FIRST]
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


def parse_variants(values: list[str]) -> dict[str, str]:
    variants = {RRD_HF: ""}
    for value in values:
        name, _, flags = value.partition("=")
        if not name or name in (PLAIN,):
            raise SystemExit(f"--variant needs NAME=FLAGS with a name other than {PLAIN!r}, got {value!r}.")
        variants[name] = flags
    return variants


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=f"CIFAR-10 folder in the Hub layout (default ${DATA_ENV}, else "
                                                      "data/cifar10, else generated images)")
    parser.add_argument("--generated", action="store_true", help="always use generated images")
    parser.add_argument("--num-images", type=int, default=6400, help="train on the first N images (0: all)")
    parser.add_argument("--num-eval-images", type=int, default=0, help="with --eval: the first N test images (0: all)")
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, from {', '.join(PAIRS)}")
    parser.add_argument("--methods", default=None, help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    parser.add_argument("--sides", default=f"{PLAIN},{RRD_HF}", help="plain and/or rrd_hf (and variant names)")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="--flag value ..."',
                        help="an extra rrd_hf run with these flags, e.g. per_sample=\"--data_pipeline per_sample\"")
    parser.add_argument("--reference", default=None, help="also print ratios to this variant (e.g. per_sample)")
    parser.add_argument("--rrd-flags", default="", help="flags added to every rrd_hf run (e.g. \"--bf16 true\")")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers on both sides")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--warmup-steps", type=int, default=10, help="optimizer steps left out of the steady rate")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--eval", action="store_true", help="evaluate every epoch (top-1/top-5 in the results)")
    parser.add_argument("--teacher-epochs", type=int, default=0,
                        help="train each pair's teacher this many epochs through rrd_hf first (0: random init)")
    parser.add_argument("--plain-meters", choices=("repdistiller", "none"), default="repdistiller",
                        help="the plain loop's per-step loss.item() meter (RepDistiller's) or none")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both sides (default torch's)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds: start no run that the last run's duration says would end after this")
    parser.add_argument("--work-dir", default=None, help="keep runs, logs and teachers here (default: a temp dir)")
    json_output.add_result_arguments(parser)  # --json PATH, --no-json, --tag
    parser.add_argument("--csv", default=None, help="write the summary to this CSV file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: generated data, 128 images, resnet20-resnet8, RRD+KD and CRD once")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="only print the summaries of earlier result files")
    parser.add_argument("--child", choices=(PLAIN, RRD_HF), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        report = (plain_child if args.child == PLAIN else rrd_hf_child)(spec)
        Path(spec["result"]).write_text(json.dumps(report, indent=2))
        return []

    if args.report:
        for path in args.report:
            saved = json.loads(Path(path).read_text())
            if "benchmark" in saved and "results" in saved:  # a result file of json_output.py: the results inside
                saved = saved["results"]
            reference = next((k for row in saved["summary"] for k in row if k.startswith("vs_") and k.endswith("_wall")
                              and k != "vs_plain_wall"), None)
            print(f"\n{path}: {saved.get('data')}, {saved.get('num_images')} images, {saved.get('epochs')} epoch(s), "
                  f"{saved.get('device')}, torch {saved.get('torch')}")
            print_summary(saved["summary"], reference[3:-5] if reference else None)
        return []
    if args.quick:
        args.generated, args.num_images, args.pairs, args.repeats = True, 128, "resnet20-resnet8", 1
        args.warmup_steps = 1
        args.methods = args.methods or "RRD+KD,CRD"
        args.tag = args.tag or "quick"  # never under the name of a measurement
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    from rrd_hf.data import get_dataset_info

    info = get_dataset_info("cifar10")
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    methods = [m.strip().upper() for m in (args.methods or ",".join(METHODS)).split(",") if m.strip()]
    for name, known in ((pairs, PAIRS), (methods, METHODS)):
        unknown = sorted(set(name) - set(known))
        if unknown:
            raise SystemExit(f"unknown {unknown}: choose from {', '.join(known)}.")
    variants = parse_variants(args.variant)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    sides += [v for v in variants if v != RRD_HF and v not in sides]
    if args.reference and args.reference not in sides:
        raise SystemExit(f"--reference {args.reference!r} is not a side or variant ({', '.join(sides)}).")

    temp = tempfile.TemporaryDirectory(prefix="side_by_side_") if args.work_dir is None else None
    work = Path(args.work_dir or temp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else default_data()
    if args.generated or not data.is_dir():
        origin = "generated JPEG images (Hub layout of uoft-cs/cifar10)"
        n_train = max(args.num_images, 2 * args.batch_size)
        data = generate_cifar10(work / "data", n_train, max(args.num_eval_images, args.batch_size))
    else:
        origin = f"CIFAR-10 from {data}"
    data = data.resolve()
    num_images = args.num_images
    if num_images <= 0:
        from datasets import load_dataset

        num_images = len(load_dataset(str(data), split="train"))
    load = os.getloadavg()[0]
    print(f"data: {origin}; {num_images} training images, batch {args.batch_size}, {args.workers} workers, "
          f"{args.epochs} epoch(s), {args.repeats} repeat(s); sides {', '.join(sides)}; load average {load:.2f} on "
          f"{os.cpu_count()} CPUs (other processes skew the numbers: compare ratios, not seconds)", flush=True)

    env = _child_env(args)
    base_spec = {
        "data": str(data), "num_images": num_images, "num_eval_images": args.num_eval_images or None,
        "batch_size": args.batch_size, "workers": args.workers, "epochs": args.epochs, "seed": args.seed,
        "warmup_steps": args.warmup_steps, "lr_schedule": args.lr_schedule, "eval": args.eval,
        "plain_meters": args.plain_meters, "threads": args.threads, "cpu": args.cpu, "protocol": PROTOCOL,
        "mean": list(info.mean), "std": list(info.std), "num_labels": len(info.class_names),
    }
    runs: list[Run] = []
    meta = {"data": origin, "num_images": num_images, "batch_size": args.batch_size, "workers": args.workers,
            "epochs": args.epochs, "repeats": args.repeats, "variants": variants, "rrd_flags": args.rrd_flags,
            "load_average_at_start": load, "command": " ".join(shlex.quote(a) for a in sys.argv)}
    started = time.perf_counter()
    result_file = ResultFile(args, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), argv)
    last_duration = 0.0

    def out_of_time() -> bool:
        return args.deadline is not None and time.perf_counter() - started + last_duration > args.deadline

    for pair in pairs:
        teacher_name, student_name = PAIRS[pair]
        teacher_path = work / "teachers" / teacher_name
        if not (teacher_path / "config.json").is_file():
            save_random_teacher(teacher_name, teacher_path, info.class_names, info.mean, info.std, args.seed)
        if args.teacher_epochs > 0:
            spec = dict(base_spec, student=teacher_name, weights=METHODS["CE"], epochs=args.teacher_epochs,
                        output_dir=str(work / "runs" / pair / "teacher"), flags=args.rrd_flags, teacher_path=None)
            wall, cpu, report, log = run_child(RRD_HF, spec, work, f"{pair}-teacher", env)
            last_duration = wall
            run = Run(pair, "teacher", RRD_HF, 0, wall, cpu, report is not None, report or {})
            runs.append(run)
            print(f"{pair:<22} teacher {teacher_name}: {wall:.1f} s wall, top-1 {_fmt(run.child.get('last_top1'))}",
                  flush=True)
            if report is None:
                print(Path(log).read_text()[-3000:])
                raise SystemExit(f"training the teacher failed: see {log}")
            teacher_path = Path(spec["output_dir"])
        for repeat in range(args.repeats):
            for method in methods:
                for side in sides:
                    if out_of_time():
                        print(f"deadline: skipping {pair} {method} {side} repeat {repeat}", flush=True)
                        continue
                    kind = PLAIN if side == PLAIN else RRD_HF
                    label = f"{pair}-{method.replace('+', '_')}-{side}-{repeat}"
                    spec = dict(base_spec, student=student_name, teacher_path=str(teacher_path),
                                weights=METHODS[method], output_dir=str(work / "runs" / label),
                                flags=" ".join(filter(None, [args.rrd_flags, variants.get(side, "")])))
                    wall, cpu, report, log = run_child(kind, spec, work, label, env)
                    last_duration = wall
                    run = Run(pair, method, side, repeat, wall, cpu, report is not None, report or {})
                    runs.append(run)
                    c = run.child
                    print(f"{pair:<22} {method:<7} {side:<11} #{repeat}  wall {wall:7.1f} s  CPU {cpu:7.1f} s  "
                          f"setup {_fmt(c.get('setup_s')):>5} s  train {_fmt(c.get('train_s')):>6} s  "
                          f"steady {_fmt(c.get('steady_images_per_s'), '.0f'):>6} img/s  "
                          f"faults/step {_fmt(c.get('page_faults_per_step'), '.0f'):>6}"
                          + (f"  top-1 {_fmt(c.get('last_top1'))}" if c.get("last_top1") is not None else "")
                          + (f"  images from {c['train_images_from']}" if c.get("train_images_from") else "")
                          + ("" if run.ok else f"  FAILED (log: {log})"), flush=True)
                    if not run.ok:
                        print(Path(log).read_text()[-3000:], flush=True)
                    rows = summarise(runs, sides, args.reference)
                    write_outputs(args, runs, rows, meta, result_file)  # after every run: a killed job keeps what it measured

    rows = summarise(runs, sides, args.reference)
    if runs and runs[-1].child:
        meta.update(device=runs[-1].child.get("device"), torch=runs[-1].child.get("torch"))
    write_outputs(args, runs, rows, meta, result_file)
    print_summary(rows, args.reference)
    if result_file.path:
        print(f"\nresults: {result_file.path}")
    print(f"\nratios: rrd_hf / plain of adjacent runs, median over repeats (below 1: rrd_hf is faster). 'step' compares "
          f"steady-state images/s (after {args.warmup_steps} warm-up steps). 'wall*' compares with the plain loop's wall "
          "time less its import of rrd_hf's zoo (transformers models), which a script with plain nn.Module copies would "
          f"not pay. Total {time.perf_counter() - started:.0f} s.")
    if temp is not None:
        temp.cleanup()
    if any(not r.ok for r in runs):
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
