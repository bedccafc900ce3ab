"""`rrd_hf.garbage_collection`: no collector passes over the imported library while it is imported, nor when a
command-line process ends; everything that must happen at exit still happens."""

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rrd_hf.garbage_collection import paused, run_command

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=environment, timeout=300)


@pytest.mark.parametrize("enabled", [True, False])
def test_paused_stops_the_collector_inside_and_restores_its_state(enabled):
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
        with pytest.raises(RuntimeError), paused():
            raise RuntimeError("the state comes back after an error too")
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


# Counts the full (generation 2) collections while `import rrd_hf` runs in a fresh process: torch, transformers and
# datasets are imported by it. Without the pause there were 8 of them (0.03-0.27 s each on this project's CPU).
COUNT_IMPORT_COLLECTIONS = """
    import gc, sys
    full = []
    gc.callbacks.append(lambda phase, info: full.append(1) if phase == "stop" and info["generation"] == 2 else None)
    if sys.argv[1] == "unpaused":  # the package imports this module first: a stand-in whose pause does nothing
        import contextlib, types
        stand_in = types.ModuleType("rrd_hf.garbage_collection")
        stand_in.paused = contextlib.nullcontext
        sys.modules["rrd_hf.garbage_collection"] = stand_in
    import rrd_hf
    assert gc.isenabled(), "the collector must be on again after the import"
    print(len(full))
"""


def test_importing_rrd_hf_runs_no_full_collection():
    paused_run = _python(COUNT_IMPORT_COLLECTIONS, "paused")
    assert paused_run.returncode == 0, paused_run.stderr[-3000:]
    unpaused_run = _python(COUNT_IMPORT_COLLECTIONS, "unpaused")
    assert unpaused_run.returncode == 0, unpaused_run.stderr[-3000:]
    # The comparison shows that the count can fail: the same import without the pause collects several times.
    assert int(paused_run.stdout.split()[-1]) == 0
    assert int(unpaused_run.stdout.split()[-1]) >= 3


# After `import rrd_hf` in a fresh process: the objects in the two young generations, and the collections of those
# generations that ran during the import and on the allocations that follow it. The stand-in ("no_move") pauses like
# paused() but leaves what the import created in the youngest generation.
YOUNG_AFTER_IMPORT = """
    import contextlib, gc, sys, types
    young = []
    gc.callbacks.append(lambda phase, info: young.append(1) if phase == "stop" and info["generation"] < 2 else None)
    if sys.argv[1] == "no_move":
        @contextlib.contextmanager
        def pause_only():
            gc.disable()
            try:
                yield
            finally:
                gc.enable()
        stand_in = types.ModuleType("rrd_hf.garbage_collection")
        stand_in.paused = pause_only
        sys.modules["rrd_hf.garbage_collection"] = stand_in
    import rrd_hf
    sizes = [len(gc.get_objects(generation=g)) for g in (0, 1)]
    kept = [[i] for i in range(5000)]  # a few young collections after the import
    print(sizes[0], sizes[1], len(gc.get_objects(generation=2)))
"""


def test_what_the_import_created_skips_the_young_generations():
    """Without the move, the first young collection after the import walks the 400,000-odd imported objects
    (0.29 s on this project's CPU) and the next one walks them again."""
    moved = _python(YOUNG_AFTER_IMPORT, "moved")
    assert moved.returncode == 0, moved.stderr[-3000:]
    left = _python(YOUNG_AFTER_IMPORT, "no_move")
    assert left.returncode == 0, left.stderr[-3000:]
    young0, young1, old = map(int, moved.stdout.split())
    assert young0 + young1 < 5_000 and old > 100_000, moved.stdout
    left0, left1, _ = map(int, left.stdout.split())
    assert left0 + left1 > 100_000, left.stdout  # the check above can fail


def test_paused_keeps_what_the_program_froze_itself():
    script = """
        import gc
        from rrd_hf.garbage_collection import paused
        kept = [[i] for i in range(1000)]
        gc.freeze()
        frozen = gc.get_freeze_count()
        with paused():
            more = [[i] for i in range(1000)]
        assert gc.get_freeze_count() == frozen, (frozen, gc.get_freeze_count())
        gc.unfreeze()
        with paused():
            more = [[i] for i in range(1000)]
        assert gc.get_freeze_count() == 0 and gc.is_tracked(more[0])
        assert any(o is more for o in gc.get_objects(generation=2)), "moved to the oldest generation"
        print("ok")
    """
    result = _python(script)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# A command run through `run_command` in a fresh process. With DEBUG_STATS (set by the atexit handler registered
# first, so it runs last), CPython reports on stderr the size of every generation at each collection of the
# interpreter's shutdown. The script also sets up what must still happen at exit: an atexit handler, a
# weakref.finalize, an unflushed logging file handler and buffered stdout, each writing a marker.
EXIT_SCRIPT = """
    import atexit, gc, logging, sys, weakref
    atexit.register(gc.set_debug, gc.DEBUG_STATS)
    import rrd_hf
    from rrd_hf.garbage_collection import run_command
    out = sys.argv[2]
    def main():
        handler = logging.FileHandler(out + ".log", delay=False)
        logging.getLogger("probe").addHandler(handler)
        logging.getLogger("probe").warning("logged")
        atexit.register(lambda: open(out + ".atexit", "w").write("atexit"))
        class Holder: pass
        holder = Holder()
        holder.self = holder  # kept alive by a cycle only: a finaliser on it is not run at exit (documented)
        keeper = Holder()
        weakref.finalize(keeper, lambda: open(out + ".finalize", "w").write("finalize"))
        sys.modules["__main__"].keeper = keeper
        sys.stdout.write("buffered stdout")
        if sys.argv[1] == "error":
            raise SystemExit(3)
    if sys.argv[1] == "plain":
        main()
    else:
        run_command(main)
"""


def _objects_walked_at_exit(stderr: str) -> int:
    """The most objects CPython's collections reported in generations 0-2 once DEBUG_STATS was set."""
    prefix = "gc: objects in each generation:"
    counts = [sum(int(n) for n in line[len(prefix):].split())
              for line in stderr.splitlines() if line.startswith(prefix)]
    return max(counts, default=0)


@pytest.mark.parametrize("how", ["run_command", "error"])
def test_a_command_ends_without_walking_its_objects_and_still_runs_its_exit_work(tmp_path, how):
    out = str(tmp_path / "marker")
    result = _python(EXIT_SCRIPT, how, out)
    assert result.returncode == (3 if how == "error" else 0), result.stderr[-3000:]
    assert result.stdout == "buffered stdout"
    for suffix, text in ((".atexit", "atexit"), (".finalize", "finalize"), (".log", "logged\n")):
        assert Path(out + suffix).read_text() == text, suffix
    assert _objects_walked_at_exit(result.stderr) < 20_000, result.stderr[-2000:]


def test_without_run_command_the_exit_walks_every_object(tmp_path):
    """The check above can fail: the same script without run_command makes the final collections walk the
    400,000-odd objects of the imported libraries."""
    result = _python(EXIT_SCRIPT, "plain", str(tmp_path / "marker"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _objects_walked_at_exit(result.stderr) > 100_000


def test_run_command_freezes_what_exists_before_and_after_the_command():
    script = """
        import gc, sys
        from rrd_hf.garbage_collection import run_command
        before = gc.get_freeze_count()
        kept = []
        run_command(lambda: kept.extend([object(), [1], {"a": 2}] * 1000))
        assert gc.get_freeze_count() > before + 1000, (before, gc.get_freeze_count())
        print("ok")
    """
    result = _python(script)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# What `python -m MODULE --help` runs, with DEBUG_STATS set by the first atexit handler (so it runs last); or, for
# "console", what pyproject's `rrd-hf` script runs: `entry()`.
ENTRY_POINT = """
    import atexit, gc, runpy, sys
    atexit.register(gc.set_debug, gc.DEBUG_STATS)
    if sys.argv[1] == "console":
        sys.argv = ["rrd-hf", "--help"]
        from rrd_hf.cli import entry
        entry()
    else:
        sys.argv = [sys.argv[1], "--help"]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("entry_point", ["console", "rrd_hf.cli", "rrd_hf.train", "rrd_hf.demo"])
def test_every_entry_point_ends_without_walking_its_objects(entry_point):
    """`rrd-hf` (pyproject's console script), `python -m rrd_hf.cli`, `python -m rrd_hf.train` and
    `python -m rrd_hf.demo` all end through run_command (`--help` returns early in each of them)."""
    assert 'rrd-hf = "rrd_hf.cli:entry"' in (REPO / "pyproject.toml").read_text()
    result = _python(ENTRY_POINT, entry_point)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower()
    assert _objects_walked_at_exit(result.stderr) < 20_000, result.stderr[-2000:]


def test_the_in_process_main_freezes_nothing():
    """The `main()` that tests and programs call in their own process leaves the collector's generations alone."""
    before = gc.get_freeze_count()
    from rrd_hf.cli import main

    main(["--help"])
    assert gc.get_freeze_count() == before


def test_the_process_overhead_benchmark_runs_every_case_on_both_sides(tmp_path):
    """benchmarks/process_overhead.py, once per case and side (the train case on generated images)."""
    script = REPO / "benchmarks" / "process_overhead.py"
    result = subprocess.run([sys.executable, str(script), "--repeats", "1", "--data", str(tmp_path / "absent")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split()[:1] in (["import"], ["exit"], ["train"]) and len(line.split()) == 5}
    assert set(rows) == {"import", "exit", "train"}, result.stdout
    for case, (_, with_s, without_s, saved, ratio) in rows.items():
        assert float(with_s) > 0 and float(without_s) > 0, case
