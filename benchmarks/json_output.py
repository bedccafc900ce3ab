"""The result files of the benchmark scripts: one JSON file per measurement, named by what produced it.

Every benchmark writes, by default, `benchmarks/results/<name>` where the name is built from the file's own record
(`result_name`):

    <benchmark>[-<tag>]-<hardware>-torch<version>-<commit>.json
    side_by_side-amd-epyc-2cores-torch2.13.0-4c2a89d.json
    side_by_side-nvidia-h100-80gb-hbm3-torch2.11.0-4c2a89d-dirty.json

* benchmark: the script's name (`side_by_side`, `step_time`, ...); tag: an optional word (`--tag`) that keeps runs
  with different options apart;
* hardware: the CUDA device's name when the benchmark ran on CUDA, else the CPU's model name (from /proc/cpuinfo,
  without trademarks, clock and the chip's own core count) and the cores this process may use;
* torch version without its local part (`2.13.0+cpu` -> `2.13.0`; the full version is recorded inside);
* commit: `git rev-parse --short HEAD`, with `-dirty` when tracked files differ from it (result files aside);
  `RRD_HF_COMMIT` overrides it (a machine without the repository's `.git`); `unknown` without either.

Inside, next to the results: the benchmark, the date (UTC), the exact command line, the commit, the hardware (CPU
model, cores, torch's threads, the GPUs, the device used) and the versions of Python, torch, transformers and the
other packages that take part. A run with the same benchmark, tag, hardware, torch and commit replaces the file.

`--json PATH` writes the same record to PATH instead; `--no-json` writes nothing. `RRD_HF_BENCHMARK_RESULTS=DIR`
moves the default folder. Under pytest (`PYTEST_CURRENT_TEST` set, also in the scripts it starts) no default file
is written, so that the test suite leaves no result files behind; an explicit `--json` still is.

    python benchmarks/json_output.py FILE.json ...                      # copy to benchmarks/results/ under their names
    python benchmarks/json_output.py --wrap side_by_side OLD.json       # record a bare JSON file of earlier results
    python benchmarks/json_output.py --commit                           # the commit this checkout's files record
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RESULTS_ENV = "RRD_HF_BENCHMARK_RESULTS"
COMMIT_ENV = "RRD_HF_COMMIT"
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "huggingface_hub", "numpy", "pillow", "rrd_hf")

__all__ = ["RESULTS", "write_json", "slug", "cpu_model", "hardware", "hardware_slug", "commit", "versions",
           "record", "result_name", "default_result_path", "add_result_arguments", "result_path", "write_result"]


def write_json(path: str | os.PathLike, data) -> Path:
    """Write `data` as indented JSON, creating the folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def slug(text: str) -> str:
    """Lower case, runs of anything but letters, digits and dots turned into one hyphen."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


_CPU_NOISE = re.compile(r"\((r|tm|c)\)|\bcpu\b|\bprocessor\b|\b\d+-core\b|@.*$|\b(with|w/) radeon.*$", re.I)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's `model name`, else the platform's), as the system reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() in ("model name", "Model", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _gpu_names() -> list[str]:
    """The machine's CUDA devices, without initialising CUDA in this process unless it already is."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def hardware(device: str = "cpu", gpu_name: str | None = None) -> dict:
    """What ran the benchmark. `device`: "cpu" or "cuda" (the device the measured work ran on); `gpu_name`: that
    GPU's name when the caller knows it (a child process reported it), else read from torch or nvidia-smi."""
    gpus = _gpu_names()
    info = {"device": device, "cpu": cpu_model(), "cpu_cores": _usable_cores(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "gpus": gpus, "gpu": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    if device == "cuda":
        if gpu_name is None and torch is not None and torch.cuda.is_available():
            gpu_name = torch.cuda.get_device_name()
        info["gpu"] = gpu_name or (gpus[0] if gpus else "unknown GPU")
    return info


def hardware_slug(info: dict) -> str:
    """`nvidia-h100-80gb-hbm3` for a CUDA run, `intel-xeon-platinum-8481c-2cores` for a CPU run."""
    if info.get("device") == "cuda":
        return slug(info.get("gpu") or "unknown GPU")
    name = slug(_CPU_NOISE.sub(" ", info.get("cpu") or "unknown CPU"))
    cores = info.get("cpu_cores")
    return f"{name}-{cores}cores" if cores else name


def commit(repo: str | os.PathLike = REPO) -> str:
    """`git rev-parse --short HEAD` of the repository, `-dirty` when tracked files (result files aside) differ from
    it; `RRD_HF_COMMIT` when set; `unknown` without git. Reads only: no lock, no index refresh written."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    git = ["git", "--no-optional-locks", "-C", str(repo)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)benchmarks/results"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return head.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict:
    """Python's and the packages' versions (the imported module's `__version__` where it is imported)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = None
        found[name] = str(version) if version is not None else None
    return found


def _command(argv: list[str] | None, benchmark: str) -> str:
    if argv is not None:  # main(argv) called from Python: the command that would do the same
        return shlex.join(["python", f"benchmarks/{benchmark}.py", *argv])
    return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def record(benchmark: str, results, *, device: str = "cpu", gpu_name: str | None = None, tag: str | None = None,
           argv: list[str] | None = None, hardware_info: dict | None = None, commit_id: str | None = None,
           date: str | None = None) -> dict:
    """The content of a result file: who measured what, how, on what, and the results."""
    return {
        "benchmark": benchmark,
        "tag": tag,
        "date": date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": _command(argv, benchmark),
        "commit": commit_id or commit(),
        "hardware": hardware_info or hardware(device, gpu_name),
        "versions": versions(),
        "environment": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
                        if k in os.environ},
        "results": results,
    }


def result_name(saved: dict) -> str:
    """The file name of a record: `<benchmark>[-<tag>]-<hardware>-torch<version>-<commit>.json`."""
    torch_version = (saved.get("versions", {}).get("torch") or "unknown").split("+")[0]
    parts = [saved["benchmark"], *([slug(saved["tag"])] if saved.get("tag") else []),
             hardware_slug(saved.get("hardware", {})), f"torch{torch_version}", slug(saved.get("commit") or "unknown")]
    return "-".join(parts) + ".json"


def default_result_path(saved: dict) -> Path:
    return Path(os.environ.get(RESULTS_ENV) or RESULTS) / result_name(saved)


def add_result_arguments(parser: argparse.ArgumentParser) -> None:
    """`--json PATH`, `--no-json` and `--tag WORD`, the same in every benchmark script."""
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the result file here (default: benchmarks/results/<benchmark>-<hardware>-"
                             "torch<version>-<commit>.json; see benchmarks/README.md)")
    parser.add_argument("--no-json", action="store_true", help="write no result file")
    parser.add_argument("--tag", default=None, help="a word added to the default file name after the benchmark's, "
                                                    "to keep runs with different options apart")


def result_path(args: argparse.Namespace, saved: dict) -> Path | None:
    """Where a script writes `saved`: `--json`, else the default name (nothing with `--no-json` or under pytest)."""
    if getattr(args, "no_json", False):
        return None
    if getattr(args, "json", None):
        return Path(args.json)
    if os.environ.get("PYTEST_CURRENT_TEST"):
        return None
    return default_result_path(saved)


def write_result(args: argparse.Namespace, benchmark: str, results, *, device: str = "cpu",
                 gpu_name: str | None = None, argv: list[str] | None = None) -> Path | None:
    """Record `results` and write them where `args` says (see `result_path`); return the path written, if any."""
    saved = record(benchmark, results, device=device, gpu_name=gpu_name, tag=getattr(args, "tag", None), argv=argv)
    path = result_path(args, saved)
    if path is None:
        return None
    write_json(path, saved)
    print(f"results: {path}", flush=True)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Copy result files to a folder under the name their own record gives "
                                                 "them (e.g. the files a GPU run returned).")
    parser.add_argument("files", nargs="*")
    parser.add_argument("--commit", action="store_true",
                        help="only print the commit the result files record for this checkout (for RRD_HF_COMMIT)")
    parser.add_argument("--to", default=str(RESULTS), help="folder (default benchmarks/results)")
    parser.add_argument("--wrap", metavar="BENCHMARK", default=None,
                        help="the files hold bare results (a JSON file written before result files existed): record "
                             "them as this benchmark's, measured on this machine's CPU at this checkout's commit (or "
                             "RRD_HF_COMMIT), dated by the file's modification time")
    parser.add_argument("--tag", default=None, help="with --wrap: the record's tag")
    args = parser.parse_args(argv)
    if args.commit:
        print(commit())
        return
    if not args.files:
        parser.error("give the result files to copy (or --commit)")
    for file in args.files:
        saved = json.loads(Path(file).read_text())
        if args.wrap:
            date = datetime.datetime.fromtimestamp(Path(file).stat().st_mtime, datetime.timezone.utc)
            saved = record(args.wrap, saved, tag=args.tag, date=date.strftime("%Y-%m-%dT%H:%M:%SZ"))
            saved["command"] = saved["results"].get("command") if isinstance(saved["results"], dict) else None
            target = write_json(Path(args.to) / result_name(saved), saved)
        else:
            if "benchmark" not in saved or "results" not in saved:
                raise SystemExit(f"{file} is not a result file (no benchmark/results keys): see --wrap.")
            target = Path(args.to) / result_name(saved)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
        print(f"{file} -> {target}")


if __name__ == "__main__":
    main()
