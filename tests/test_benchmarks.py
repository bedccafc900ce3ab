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
