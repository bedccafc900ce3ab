"""The side-by-side benchmark's smoke test (`benchmarks/side_by_side.py --quick`), as README gives it: both sides in
fresh processes on generated images, every loss of both sides once, the JSON written into a folder that does not exist
yet, and each rrd_hf run telling whether it decoded its images or read them from the decoded-image cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_side_by_side_quick_runs_both_sides_and_says_where_rrd_hf_images_came_from(tmp_path):
    out = tmp_path / "results" / "quick.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # a fresh datasets cache: the first rrd_hf run must decode
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "side_by_side.py"), "--quick", "--json",
                             str(out), "--work-dir", str(tmp_path / "work")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert runs and all(run["ok"] for run in runs), runs
    assert {run["side"] for run in runs} == {"plain", "rrd_hf"}
    sources = [run["train_images_from"] for run in runs if run["side"] == "rrd_hf"]
    assert sources[0] == "decoding" and set(sources[1:]) == {"cache"}, sources
    assert all(run["train_images_from"] is None for run in runs if run["side"] == "plain")
    assert "images from decoding" in result.stdout and "images from cache" in result.stdout
    assert any(row.get("vs_plain_wall") for row in report["summary"])


def _teacher_cache_module():
    import importlib.util

    sys.path.insert(0, str(REPO / "benchmarks"))  # its json_output helper
    spec = importlib.util.spec_from_file_location("teacher_cache", REPO / "benchmarks" / "teacher_cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_cache_counts_repeated_views_as_a_set_of_seen_views_would():
    """The benchmark's vectorised count against a Python set of (sample, top, left, flip) built one sample at a time."""
    from rrd_hf.data.augmentation import augmentation_params

    module = _teacher_cache_module()
    samples, epochs, seed = 40, 60, 3
    hits, entries = module.view_hits(samples, epochs, seed=seed, padding=1)  # 18 views: repeats come early
    seen, expected = set(), []
    for epoch in range(epochs):
        repeated = 0
        for index in range(samples):
            top, left, flip = (int(v) for v in augmentation_params(seed, epoch, [index], padding=1))
            repeated += (index, top, left, flip) in seen
            seen.add((index, top, left, flip))
        expected.append(repeated)
    assert hits == expected and entries == len(seen)
    assert sum(expected) > 0  # the comparison saw repeats


def test_teacher_cache_hit_rate_is_what_independent_uniform_views_give():
    """Over 240 epochs with 162 views, independent uniform draws repeat 1 − 162·(1 − (1 − 1/162)^240)/240 = 47.8%
    of the views (from the expected number of distinct values among 240 uniform draws): rrd_hf's stateless
    augmentation must behave so across epochs for the benchmark's (and README's) hit rate to mean anything."""
    module = _teacher_cache_module()
    samples, epochs, views = 20000, 240, 162
    hits, entries = module.view_hits(samples, epochs)
    expected_distinct = views * (1 - (1 - 1 / views) ** epochs)
    assert abs(entries / samples - expected_distinct) < 0.2  # 125.3 per sample; sd of the mean ~0.03
    assert abs(sum(hits) / (samples * epochs) - (1 - expected_distinct / epochs)) < 0.002
    assert hits[0] == 0 and hits[-1] > hits[len(hits) // 2] > hits[1]


def test_teacher_cache_benchmark_runs_and_reports(tmp_path, capsys):
    module = _teacher_cache_module()
    out = tmp_path / "cache.json"
    result = module.main(["--teacher", "resnet8", "--student", "resnet8", "--num-samples", "300", "--epochs", "30",
                          "--batch-size", "16", "--repeats", "1", "--num-labels", "10", "--json", str(out)])
    assert json.loads(out.read_text())["entries"] == result["entries"]
    assert sum(result["hits_per_epoch"]) == 300 * 30 - result["entries"]
    # (timings are not compared: at this size a cache saves less than the noise of one timed call)
    assert result["teacher_ms_per_step"]["without"] == result["teacher_forward_ms"][16]
    assert result["teacher_ms_per_step"]["with"] > 0
    assert "repeat a view" in capsys.readouterr().out
