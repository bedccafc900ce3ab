"""The command line: evaluate, aggregate, the demo, and `accelerate launch -m rrd_hf.train` on a recipe."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rrd_hf.cli import main as cli
from rrd_hf.results import aggregate_results, summarize_log_history

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar10_like(tmp_path_factory):
    import datasets

    from rrd_hf.data import CIFAR10_CLASS_NAMES

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    rng = np.random.default_rng(0)

    def split(n):
        return datasets.Dataset.from_dict({"img": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)],
                                           "label": [int(i) for i in rng.integers(0, 10, n)]}, features=features)

    path = tmp_path_factory.mktemp("data") / "cifar10"
    datasets.DatasetDict(train=split(24), test=split(12)).save_to_disk(str(path))
    return str(path)


def test_evaluate_reports_top1_top5_of_a_checkpoint(tmp_path, cifar10_like, capsys):
    from rrd_hf.data import prepare_dataset
    from rrd_hf.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", 10).eval()
    model.save_pretrained(tmp_path / "ckpt")
    cli(["evaluate", str(tmp_path / "ckpt"), "--dataset", cifar10_like, "--split", "test", "--device", "cpu",
         "--output", str(tmp_path / "m.json")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    data = prepare_dataset(cifar10_like, "test", train=False, stats="cifar10")
    pixels = torch.stack([data[i]["pixel_values"] for i in range(len(data))])
    labels = torch.tensor([data[i]["labels"] for i in range(len(data))])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    top5 = logits.topk(5, dim=1).indices
    assert metrics["num_samples"] == 12
    assert metrics["top1"] == pytest.approx(100 * (top5[:, 0] == labels).float().mean().item())
    assert metrics["top5"] == pytest.approx(100 * (top5 == labels[:, None]).any(1).float().mean().item())
    assert '"top1"' in capsys.readouterr().out


def test_results_best_last_and_aggregate(tmp_path, capsys):
    history = [{"loss": 1.0, "step": 1}, {"eval_accuracy": 0.5, "eval_top5_accuracy": 0.9, "epoch": 1.0, "step": 10},
               {"eval_accuracy": 0.7, "eval_top5_accuracy": 0.95, "epoch": 2.0, "step": 20},
               {"eval_accuracy": 0.6, "eval_top5_accuracy": 0.97, "epoch": 3.0, "step": 30}]
    summary = summarize_log_history(history)
    assert (summary["best_top1"], summary["best_epoch"], summary["last_top1"], summary["last_epoch"]) == (70.0, 2.0, 60.0, 3.0)
    runs = []
    for seed, (best, last) in enumerate([(75.0, 74.0), (76.0, 75.5), (77.0, 75.0)]):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps({"best_top1": best, "last_top1": last}))
        runs.append(str(run))
    aggregate = aggregate_results(json.loads(Path(r, "results.json").read_text()) for r in runs)
    assert aggregate["best_top1"]["mean"] == pytest.approx(76.0) and aggregate["best_top1"]["std"] == pytest.approx(1.0)
    assert aggregate["last_top1"]["mean"] == pytest.approx(74.8333, abs=1e-3)
    cli(["aggregate", *runs])
    assert "best_top1: 76.00 ± 1.00  (n=3)" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="results.json"):
        cli(["aggregate", str(tmp_path / "missing")])


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["trian"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_accelerate_launch_runs_a_recipe_like_rrd_hf_train(tmp_path, cifar10_like):
    teacher = tmp_path / "teacher"
    from rrd_hf.data import CIFAR10_CLASS_NAMES
    from rrd_hf.models import build_model

    labels = dict(enumerate(CIFAR10_CLASS_NAMES))
    build_model("resnet14", 10, id2label=labels, label2id={v: k for k, v in labels.items()}).save_pretrained(teacher)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"student: resnet8\ndataset: {cifar10_like}\nteacher_model_name_or_path: {teacher}\n"
                      "kd_weight: 1.0\nmemory_size: 16\nweight_decay: 5e-4\nmax_steps: 2\n"
                      "per_device_train_batch_size: 4\nreport_to: none\nsave_strategy: 'no'\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / "cpu.yaml"), "-m", "rrd_hf.train", str(recipe),
               "--output_dir", str(tmp_path / "run"), "--seed", "3"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["global_step"], results["seed"], results["objective"]) == (2, 3, "1·CE + 1·KD + 1·RRD")
    args = torch.load(tmp_path / "run" / "training_args.bin", weights_only=False)
    assert args.weight_decay == 5e-4 and isinstance(args.weight_decay, float)  # YAML's "5e-4" string coerced


def test_demo_runs_end_to_end_on_a_small_budget(tmp_path, capsys):
    from rrd_hf.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; ./run does it)")
    from transformers import AutoModelForImageClassification

    cli(["demo", "--output-dir", str(tmp_path), "--train-samples", "256", "--eval-samples", "128",
         "--epochs", "1", "--teacher-epochs", "1", "--memory-size", "64"])
    out = capsys.readouterr().out
    for row in ("teacher", "student alone", "student + KD", "student + RRD"):
        assert row in out
    results = json.loads((tmp_path / "demo_results.json").read_text())["results"]
    assert set(results) == {"teacher", "student alone", "student + KD", "student + RRD"}
    student = AutoModelForImageClassification.from_pretrained(tmp_path / "student-RRD")
    assert student.config.id2label[0] == "T-shirt/top"
    assert (tmp_path / "student-RRD" / "preprocessor_config.json").is_file()
