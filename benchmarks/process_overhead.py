"""What a command-line process of rrd_hf spends outside training: its start-up and its shutdown.

Measures `rrd_hf.garbage_collection` against the same processes without it. Every case runs in turn, in fresh
processes, `--repeats` times, and the summary gives the medians and their ratio (with / without):

* **import**: `import rrd_hf` (torch, transformers and datasets come with it), to its last statement. "without"
  puts a stand-in for `rrd_hf.garbage_collection` whose pause does nothing in `sys.modules` first.
* **exit**: from the last statement of a process that imported rrd_hf and ran a command to the end of the process
  (the interpreter's shutdown, read by the parent as the time the child's end was seen, less the time the child
  printed). "with" runs the command through `run_command`.
* **train**: a whole `python -m rrd_hf.train` process, as a user starts it: a resnet8 student, cross-entropy only,
  `--max_steps` steps (`--rrd_weight 0`: no teacher) on the first 256 images of CIFAR-10 (`../shared/data/cifar10`, else generated images in
  its Hub layout). "without" calls `rrd_hf.train.main()` in a process that imported the stand-in first.

    PYTHONPATH=$PWD python benchmarks/process_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

STAND_IN = """
import contextlib, sys, types
stand_in = types.ModuleType("rrd_hf.garbage_collection")
stand_in.paused = contextlib.nullcontext
stand_in.run_command = lambda main: main()
sys.modules["rrd_hf.garbage_collection"] = stand_in
"""

IMPORT = """
import os, sys, time
started = time.perf_counter()
import rrd_hf
sys.stdout.write(f"{time.perf_counter() - started}\\n")
sys.stdout.flush()
os._exit(0)
"""

EXIT = """
import sys, time
import rrd_hf
from rrd_hf.garbage_collection import run_command
from rrd_hf.models import build_model
run_command(lambda: build_model("resnet8", num_labels=10))
sys.stdout.write(f"{time.time()}\\n")
sys.stdout.flush()
"""

TRAIN_WITHOUT = """
import logging, sys
from rrd_hf.train import main
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
main(sys.argv[1:])
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1"}


def _run(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=REPO)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, result.stdout


def measure_import(with_handling: bool) -> float:
    code = IMPORT if with_handling else STAND_IN + IMPORT
    _, out = _run([sys.executable, "-c", code])
    return float(out.split()[-1])


def measure_exit(with_handling: bool) -> float:
    code = EXIT if with_handling else STAND_IN + EXIT
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    line = process.stdout.readline()
    process.wait()
    ended = time.time()
    if process.returncode != 0:
        raise SystemExit(f"the exit probe failed ({process.returncode})")
    return ended - float(line)


def measure_train(with_handling: bool, train_args: list[str], output_dir: Path) -> float:
    argv = [*train_args, "--output_dir", str(output_dir), "--overwrite_output_dir", "true"]
    if with_handling:
        wall, _ = _run([sys.executable, "-m", "rrd_hf.train", *argv])
    else:
        wall, _ = _run([sys.executable, "-c", STAND_IN + TRAIN_WITHOUT, *argv])
    return wall


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per case and side")
    parser.add_argument("--cases", default="import,exit,train", help="comma-separated subset of import,exit,train")
    parser.add_argument("--max-steps", type=int, default=2, help="optimizer steps of the train case")
    parser.add_argument("--data", default=None, help="CIFAR-10 folder in the Hub layout (default ../shared/data)")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - {"import", "exit", "train"}
    if unknown or args.repeats < 1:
        raise SystemExit(f"--cases takes import, exit, train (got {sorted(unknown)}); --repeats must be >= 1.")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.repeats} fresh processes per "
          "case and side, in turn", flush=True)
    with tempfile.TemporaryDirectory(prefix="process_overhead_") as work:
        work = Path(work)
        train_args: list[str] = []
        if "train" in cases:
            import side_by_side as sbs

            data = Path(args.data) if args.data else sbs.DEFAULT_DATA
            if not data.is_dir():
                data = sbs.generate_cifar10(work / "data", 256, 64)
            train_args = ["--student", "resnet8", "--rrd_weight", "0", "--dataset", str(data.resolve()),
                          "--max_train_samples", "256",
                          "--max_eval_samples", "64", "--max_steps", str(args.max_steps),
                          "--per_device_train_batch_size", "64", "--save_strategy", "no", "--report_to", "none",
                          "--use_cpu", "true"]
        times: dict[tuple[str, bool], list[float]] = {(c, w): [] for c in cases for w in (True, False)}
        for repeat in range(args.repeats):
            for case in cases:
                order = (True, False) if repeat % 2 == 0 else (False, True)
                for with_handling in order:
                    if case == "import":
                        seconds = measure_import(with_handling)
                    elif case == "exit":
                        seconds = measure_exit(with_handling)
                    else:
                        seconds = measure_train(with_handling, train_args, work / f"run_{with_handling}")
                    times[(case, with_handling)].append(seconds)
                    print(f"  {case:6s} {'with' if with_handling else 'without':7s} #{repeat}  {seconds:6.2f} s",
                          flush=True)
    print(f"\n{'case':8s} {'with s':>8s} {'without s':>10s} {'saved s':>8s} {'ratio':>7s}")
    summary = {}
    for case in cases:
        with_s, without_s = statistics.median(times[(case, True)]), statistics.median(times[(case, False)])
        summary[case] = {"with_s": with_s, "without_s": without_s, "ratio": with_s / without_s}
        print(f"{case:8s} {with_s:8.2f} {without_s:10.2f} {without_s - with_s:8.2f} {with_s / without_s:7.3f}")
    print("\nmedians over fresh processes; ratio = with rrd_hf.garbage_collection / without it; train: a whole "
          "python -m rrd_hf.train process (start-up, data, steps, save, exit)")
    return summary


if __name__ == "__main__":
    main()
