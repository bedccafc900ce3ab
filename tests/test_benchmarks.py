"""The benchmarks' result files (benchmarks/json_output.py: names, records, where they go), and the side-by-side
benchmark's smoke test (`benchmarks/side_by_side.py --quick`): both sides in fresh processes on generated images,
every loss of both sides once, the result file written into a folder that does not exist yet, and each rrd_hf run
telling whether it decoded its images or read them from the decoded-image cache."""

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
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "side_by_side" and saved["tag"] == "quick" and "--quick" in saved["command"]
    assert saved["hardware"]["device"] in ("cpu", "cuda") and saved["versions"]["torch"]
    report = saved["results"]
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
    assert json.loads(out.read_text())["results"]["entries"] == result["entries"]
    assert sum(result["hits_per_epoch"]) == 300 * 30 - result["entries"]
    # (timings are not compared: at this size a cache saves less than the noise of one timed call)
    assert result["teacher_ms_per_step"]["without"] == result["teacher_forward_ms"][16]
    assert result["teacher_ms_per_step"]["with"] > 0
    assert "repeat a view" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- result files


def _json_output():
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    import json_output

    return json_output


def _saved(**changes):
    saved = {"benchmark": "side_by_side", "tag": None, "commit": "4c2a89d",
             "hardware": {"device": "cpu", "cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "cpu_cores": 2},
             "versions": {"torch": "2.13.0+cpu"}, "results": {}}
    saved.update(changes)
    return saved


def test_a_result_file_is_named_by_benchmark_hardware_torch_and_commit():
    name = _json_output().result_name
    assert name(_saved()) == "side_by_side-intel-xeon-platinum-8481c-2cores-torch2.13.0-4c2a89d.json"
    assert name(_saved(commit="4c2a89d-dirty", tag="r20 KD")) == (
        "side_by_side-r20-kd-intel-xeon-platinum-8481c-2cores-torch2.13.0-4c2a89d-dirty.json")
    gpu = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "cpu": "AMD EPYC 9B14 96-Core Processor", "cpu_cores": 16}
    assert name(_saved(benchmark="step_time", hardware=gpu, versions={"torch": "2.11.0+cu128"})) == (
        "step_time-nvidia-h100-80gb-hbm3-torch2.11.0-4c2a89d.json")
    cpu = dict(gpu, device="cpu")  # a CPU run on a GPU machine is named by its CPU, without the chip's core count
    assert name(_saved(hardware=cpu)) == "side_by_side-amd-epyc-9b14-16cores-torch2.13.0-4c2a89d.json"
    assert name(_saved(hardware={}, versions={}, commit=None)) == "side_by_side-unknown-torchunknown-unknown.json"


def test_a_result_file_records_what_ran_how_and_where(monkeypatch):
    json_output = _json_output()
    monkeypatch.setenv("RRD_HF_COMMIT", "abc1234-dirty")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    saved = json_output.record("step_time", {"rows": [1, 2]}, tag="t", argv=["--repeats", "3", "--teacher", "a b"])
    assert saved["benchmark"] == "step_time" and saved["tag"] == "t" and saved["results"] == {"rows": [1, 2]}
    assert saved["command"] == "python benchmarks/step_time.py --repeats 3 --teacher 'a b'"
    assert saved["commit"] == "abc1234-dirty"
    assert saved["environment"] == {"OMP_NUM_THREADS": "2"}
    hardware = saved["hardware"]
    assert hardware["device"] == "cpu" and hardware["gpu"] is None and hardware["cpu"]
    assert hardware["cpu_cores"] >= 1 and isinstance(hardware["gpus"], list)
    import torch
    import transformers

    assert saved["versions"]["torch"] == torch.__version__
    assert saved["versions"]["transformers"] == transformers.__version__
    assert len(saved["date"]) == 20 and saved["date"].endswith("Z")
    json.dumps(saved)  # JSON all the way down
    named = json_output.record("x", {}, device="cuda", gpu_name="NVIDIA A100-SXM4-40GB")["hardware"]
    assert named["device"] == "cuda" and named["gpu"] == "NVIDIA A100-SXM4-40GB"
    # Without the override: the repository's short commit, with -dirty when tracked files differ from it.
    monkeypatch.delenv("RRD_HF_COMMIT")
    import re

    assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?|unknown", json_output.commit())


def test_result_files_go_to_benchmarks_results_unless_told_otherwise(tmp_path, monkeypatch, capsys):
    import argparse

    json_output = _json_output()
    parser = argparse.ArgumentParser()
    json_output.add_result_arguments(parser)
    saved = _saved()
    assert json_output.default_result_path(saved) == (
        REPO / "benchmarks" / "results" / "side_by_side-intel-xeon-platinum-8481c-2cores-torch2.13.0-4c2a89d.json")
    assert json_output.result_path(parser.parse_args(["--json", str(tmp_path / "a.json")]), saved) == tmp_path / "a.json"
    assert json_output.result_path(parser.parse_args(["--no-json"]), saved) is None
    assert json_output.result_path(parser.parse_args([]), saved) is None  # under pytest: no file in the repository
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.setenv("RRD_HF_BENCHMARK_RESULTS", str(tmp_path / "results"))
    assert json_output.result_path(parser.parse_args([]), saved) == tmp_path / "results" / json_output.result_name(saved)
    path = json_output.write_result(parser.parse_args(["--tag", "demo"]), "rrd_loss_time", {"ratio": 0.5},
                                    argv=["--tag", "demo"])
    written = json.loads(path.read_text())
    assert path.parent == tmp_path / "results" and path.name == json_output.result_name(written)
    assert path.name.startswith("rrd_loss_time-demo-") and written["results"] == {"ratio": 0.5}
    assert f"results: {path}" in capsys.readouterr().out


def test_result_files_are_copied_under_their_names_and_old_files_wrapped(tmp_path, monkeypatch):
    json_output = _json_output()
    monkeypatch.setenv("RRD_HF_COMMIT", "1234abc")
    returned = tmp_path / "speed.json"  # what a GPU run sends back under a fixed name
    json_output.write_json(returned, _saved(tag="speed", hardware={"device": "cuda", "gpu": "NVIDIA H200"}))
    json_output.main([str(returned), "--to", str(tmp_path / "results")])
    assert (tmp_path / "results" / "side_by_side-speed-nvidia-h200-torch2.13.0-4c2a89d.json").is_file()
    bare = tmp_path / "before.json"
    bare.write_text(json.dumps({"command": "side_by_side.py --methods KD,RRD", "summary": []}))
    json_output.main([str(bare), "--to", str(tmp_path / "results"), "--wrap", "side_by_side", "--tag", "before"])
    (wrapped,) = (tmp_path / "results").glob("side_by_side-before-*-1234abc.json")
    saved = json.loads(wrapped.read_text())
    assert saved["results"]["summary"] == [] and saved["command"] == "side_by_side.py --methods KD,RRD"
    assert wrapped.name == json_output.result_name(saved)


def test_side_by_side_report_reads_result_files_and_bare_summaries(tmp_path, capsys):
    json_output = _json_output()
    import side_by_side

    summary = {"data": "generated", "num_images": 128, "epochs": 1, "device": "CPU", "torch": "2.13.0",
               "summary": [{"pair": "resnet20-resnet8", "method": "KD", "side": "rrd_hf", "runs": 1, "wall_s": 9.0,
                            "vs_plain_wall": 0.5}]}
    bare, recorded = tmp_path / "bare.json", tmp_path / "recorded.json"
    json_output.write_json(bare, summary)
    json_output.write_json(recorded, json_output.record("side_by_side", summary, commit_id="x"))
    side_by_side.main(["--report", str(bare), str(recorded)])
    out = capsys.readouterr().out
    assert out.count("resnet20-resnet8       KD      rrd_hf") == 2 and out.count("0.500") == 2
