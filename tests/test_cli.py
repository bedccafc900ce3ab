"""The command line: every subcommand's help and errors, evaluate, aggregate, the declared dependencies, the demo,
and `accelerate launch -m rrd_hf.train` on a recipe."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TinyImageDataset, tiny_model
from rrd_hf.commands.cli import COMMANDS, DEBUG_ENV
from rrd_hf.commands.cli import main as cli
from rrd_hf.runs.results import (
    MixedConfigurationsError,
    aggregate_results,
    aggregate_runs,
    group_runs,
    load_run,
    summarize_log_history,
)

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


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of `rrd-hf ARGV` run in this process."""
    try:
        cli(argv)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------- evaluate


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

    # --data-dir: a local copy of a known dataset gives the same numbers as the path itself
    cli(["evaluate", str(tmp_path / "ckpt"), "--dataset", "cifar10", "--data-dir", cifar10_like, "--split", "test",
         "--device", "cpu", "--output", str(tmp_path / "dir.json")])
    from_dir = json.loads((tmp_path / "dir.json").read_text())
    assert (from_dir["top1"], from_dir["top5"], from_dir["num_samples"]) == (metrics["top1"], metrics["top5"], 12)


# ------------------------------------------------------------------------------------------------- aggregate


def write_cli_run(folder: Path, seed: int, best: float, last: float, **fields) -> str:
    """A run folder as `rrd-hf train` leaves it: results.json, _rrd_run.json (training arguments) and config.json."""
    folder.mkdir(parents=True)
    args = {"output_dir": str(folder), "seed": seed, "learning_rate": 0.05, "num_train_epochs": 240.0,
            "per_device_train_batch_size": 64, "ce_weight": 1.0, "kd_weight": 1.0, "rrd_weight": 1.0,
            "logging_steps": 50, "report_to": []}
    args.update(fields)
    (folder / "results.json").write_text(json.dumps({
        "dataset": "cifar100", "student": "resnet8x4", "teacher": "me/resnet32x4", "seed": seed,
        "ce_weight": args["ce_weight"], "kd_weight": args["kd_weight"], "rrd_weight": args["rrd_weight"],
        "best_top1": best, "last_top1": last, "data_args": {"dataset": "cifar100", "max_train_samples": None}}))
    (folder / "_rrd_run.json").write_text(json.dumps({
        "teacher": "me/resnet32x4", "dataset": "cifar100", "world_size": 1, "student_init": "",
        "summary": {"best_top1": best, "last_top1": last}, "training_args": args}))
    (folder / "config.json").write_text(json.dumps({"zoo_name": "resnet8x4", "model_type": "cifar_resnet",
                                                    "num_labels": 100, "transformers_version": "5.24.0"}))
    return str(folder)


def test_results_best_last_and_aggregate(tmp_path, capsys):
    history = [{"loss": 1.0, "step": 1}, {"eval_accuracy": 0.5, "eval_top5_accuracy": 0.9, "epoch": 1.0, "step": 10},
               {"eval_accuracy": 0.7, "eval_top5_accuracy": 0.95, "epoch": 2.0, "step": 20},
               {"eval_accuracy": 0.6, "eval_top5_accuracy": 0.97, "epoch": 3.0, "step": 30}]
    summary = summarize_log_history(history)
    assert (summary["best_top1"], summary["best_epoch"], summary["last_top1"], summary["last_epoch"]) == (70.0, 2.0, 60.0, 3.0)
    runs = [write_cli_run(tmp_path / f"seed{seed}", seed, best, last)
            for seed, (best, last) in enumerate([(75.0, 74.0), (76.0, 75.5), (77.0, 75.0)])]
    aggregate = aggregate_results(json.loads(Path(r, "results.json").read_text()) for r in runs)
    assert aggregate["best_top1"]["mean"] == pytest.approx(76.0) and aggregate["best_top1"]["std"] == pytest.approx(1.0)
    assert aggregate["last_top1"]["mean"] == pytest.approx(74.8333, abs=1e-3)
    code, out, _ = run_cli(["aggregate", *runs], capsys)
    assert code == 0
    assert "best_top1: 76.00 ± 1.00  (n=3)" in out and "runs: 3 (seeds 0, 1, 2)" in out
    assert "student resnet8x4, teacher me/resnet32x4, dataset cifar100, objective 1·CE + 1·KD + 1·RRD" in out


def test_aggregate_refuses_runs_of_different_configurations(tmp_path, capsys):
    kd = [write_cli_run(tmp_path / f"kd{s}", s, 74.0 + s, 73.0 + s, kd_weight=1.0) for s in range(2)]
    alone = [write_cli_run(tmp_path / f"alone{s}", s, 70.0 + s, 69.0 + s, kd_weight=0.0) for s in range(2)]
    with pytest.raises(MixedConfigurationsError) as error:
        aggregate_runs([*kd, *alone])
    assert [len(group.runs) for group in error.value.groups] == [2, 2]

    code, out, err = run_cli(["aggregate", *kd, *alone], capsys)
    assert code == 1 and out == "" and "Traceback" not in err
    assert "2 different configurations" in err
    differences = err.split("They differ in:")[1].split("Aggregate")[0]
    assert re.search(r'loss.terms: \["kd", "rrd"\] in .*kd0, .*kd1; \["rrd"\] in .*alone0, .*alone1', differences)
    assert differences.count("\n") == 2, differences  # one line: the KD term's own fields are not repeated
    assert "learning_rate" not in differences and "seed" not in differences
    assert f"rrd-hf aggregate {kd[0]} {kd[1]}" in err and f"rrd-hf aggregate {alone[0]} {alone[1]}" in err

    code, out, _ = run_cli(["aggregate", "--per-config", *kd, *alone], capsys)
    assert code == 0
    assert 'configuration 1 of 2: loss.terms=["kd", "rrd"]' in out and 'configuration 2 of 2: loss.terms=["rrd"]' in out
    assert "best_top1: 74.50 ± 0.71  (n=2)" in out and "best_top1: 70.50 ± 0.71  (n=2)" in out

    # every field that changes the result splits the set; the seed and output_dir do not
    lr = write_cli_run(tmp_path / "lr", 5, 71.0, 70.0, learning_rate=0.01)
    with pytest.raises(MixedConfigurationsError, match="learning_rate: 0.05 in"):
        aggregate_runs([*kd, lr])
    assert len(aggregate_runs([*kd, lr], ignore=["learning_rate"])) == 1
    code, out, _ = run_cli(["aggregate", "--json", "--ignore", "learning_rate", *kd, lr], capsys)
    groups = json.loads(out)
    assert code == 0 and len(groups) == 1 and groups[0]["seeds"] == [0, 1, 5]
    stronger_kd = write_cli_run(tmp_path / "kd2", 7, 71.0, 70.0, kd_weight=2.0)
    with pytest.raises(MixedConfigurationsError, match=r"loss.kd.weight: 1.0 in .*; 2.0 in .*kd2"):
        aggregate_runs([*kd, stronger_kd])


def test_aggregate_groups_runs_that_differ_only_in_how_images_were_read(tmp_path):
    """data_pipeline and decoded_cache change how images are read, not which: a run from before decoded_cache existed
    (no such field) and runs with it on or off are one configuration."""
    runs = [write_cli_run(tmp_path / f"run{s}", s, 74.0 + s, 73.0 + s) for s in range(3)]
    for run, extra in zip(runs, ({}, {"decoded_cache": True, "data_pipeline": "in_memory"},
                                 {"decoded_cache": False, "data_pipeline": "per_sample"})):
        results = json.loads(Path(run, "results.json").read_text())
        results["data_args"].update(extra)
        Path(run, "results.json").write_text(json.dumps(results))
    assert [len(group.runs) for group in group_runs(load_run(r) for r in runs)] == [3]
    changed = json.loads(Path(runs[2], "results.json").read_text())
    changed["data_args"]["max_train_samples"] = 100  # which images: another configuration
    Path(runs[2], "results.json").write_text(json.dumps(changed))
    assert [len(group.runs) for group in group_runs(load_run(r) for r in runs)] == [2, 1]


def test_aggregate_compares_the_objective_not_its_spelling(tmp_path):
    """The loss terms are resolved first: KD+RRD by shorthand or by distill_terms is one configuration, and the
    options of a switched-off term do not split runs."""
    shorthand = write_cli_run(tmp_path / "shorthand", 0, 75.0, 74.0, kd_weight=1.0, rrd_weight=None)
    spelled = write_cli_run(tmp_path / "terms", 1, 76.0, 75.0, kd_weight=None, rrd_weight=None,
                            distill_terms=[{"method": "rrd"}, {"method": "kd", "weight": 1}])
    (group,) = aggregate_runs([shorthand, spelled])
    assert group["num_runs"] == 2 and group["setting"]["objective"] == "1·CE + 1·KD + 1·RRD"
    kd_only = [write_cli_run(tmp_path / f"kd_only{k}", k, 74.0, 73.0, kd_weight=1.0, rrd_weight=0.0, memory_size=k)
               for k in (4096, 16384)]  # the RRD memory of a run without RRD
    assert len(aggregate_runs(kd_only)) == 1
    with pytest.raises(MixedConfigurationsError, match=r"loss.rrd.memory_size: 4096 in .*; 16384 in"):
        aggregate_runs([write_cli_run(tmp_path / f"rrd{k}", k, 74.0, 73.0, memory_size=k) for k in (4096, 16384)])
    write_cli_run(tmp_path / "bad", 0, 75.0, 74.0, distill_method="no_such_method")
    with pytest.raises(ValueError, match=r"_rrd_run.json: the run's loss terms cannot be read"):
        load_run(tmp_path / "bad")


def test_aggregate_warns_about_a_repeated_seed(tmp_path, capsys):
    runs = [write_cli_run(tmp_path / name, 0, 75.0, 74.0) for name in ("a", "b")]
    code, out, _ = run_cli(["aggregate", *runs], capsys)
    assert code == 0 and "seed(s) 0 appear more than once" in out


def api_run(folder: Path, seed: int, kd_weight: float) -> str:
    """Train and save through the Python API (no results.json: only what RRDTrainer.save_model writes)."""
    from rrd_hf import RRDConfig, RRDTrainer

    args = RRDConfig(output_dir=str(folder), max_steps=2, per_device_train_batch_size=8, memory_size=16,
                     kd_weight=kd_weight, use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
                     learning_rate=0.05, optim="sgd", seed=seed)
    trainer = RRDTrainer(model=tiny_model(seed=seed), teacher_model=tiny_model(width=16, seed=9), args=args,
                         train_dataset=TinyImageDataset(32, with_index=True), eval_dataset=TinyImageDataset(16, seed=1))
    trainer.train()
    trainer.evaluate()
    trainer.save_model()
    return str(folder)


def test_aggregate_reads_runs_saved_through_the_python_api(tmp_path, capsys):
    runs = [api_run(tmp_path / f"kd{seed}", seed, 1.0) for seed in (0, 1)]
    other = api_run(tmp_path / "no_kd", 0, 0.0)
    assert not (tmp_path / "kd0" / "results.json").exists()
    run = load_run(runs[0])
    assert run.seed == 0 and 0 <= run.metrics["best_top1"] <= 100
    assert run.configuration["student"] == "TinyConvForImageClassification"
    assert run.configuration["student.width"] == 8
    assert run.configuration["teacher_architecture"] == "TinyConvForImageClassification"  # the model, not its wrapper
    (group,) = aggregate_runs(runs)
    assert group["num_runs"] == 2 and group["seeds"] == [0, 1]
    with pytest.raises(MixedConfigurationsError, match="loss.terms"):
        aggregate_runs([*runs, other])
    code, out, _ = run_cli(["aggregate", *runs], capsys)
    assert code == 0 and "(n=2)" in out


def test_aggregate_names_the_file_of_a_bad_run(tmp_path, capsys, monkeypatch):
    good = write_cli_run(tmp_path / "good", 0, 75.0, 74.0)
    broken = tmp_path / "broken"
    write_cli_run(broken, 1, 75.0, 74.0)
    (broken / "results.json").write_text('{"best_top1": 75.0,')  # truncated by an interrupted run
    code, _, err = run_cli(["aggregate", good, str(broken)], capsys)
    assert code == 1 and "Traceback" not in err and "JSONDecodeError" not in err
    assert f"{broken / 'results.json'} is not valid JSON" in err and "leave its folder out" in err

    (broken / "results.json").write_text("[75.0, 74.0]")
    with pytest.raises(ValueError, match=r"results.json holds a JSON list, not an object"):
        load_run(broken)
    (broken / "results.json").write_text(json.dumps({"best_top1": "75%"}))
    with pytest.raises(ValueError, match=r"best_top1 is '75%', not a finite number"):
        load_run(broken)
    (broken / "results.json").write_text(json.dumps({"num_evaluations": 0}))
    with pytest.raises(ValueError, match="has no accuracy"):
        load_run(broken)

    (tmp_path / "parent" / "seed0").mkdir(parents=True)
    write_cli_run(tmp_path / "parent" / "seed1", 1, 75.0, 74.0)
    with pytest.raises(FileNotFoundError, match=r"It contains run folders \(seed1\): pass those"):
        load_run(tmp_path / "parent")
    code, _, err = run_cli(["aggregate", str(tmp_path / "missing")], capsys)
    assert code == 1 and "missing not found" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError):  # the exception, and so its traceback, on request
        cli(["--debug", "aggregate", str(tmp_path / "missing")])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError):
        cli(["aggregate", str(tmp_path / "missing")])


# ------------------------------------------------------------------------------------------------- help and errors


def test_every_subcommand_has_a_short_help_with_its_positionals_first(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and all(f"  {name} " in out for name in COMMANDS)
    expected = {"train": "RECIPE.yaml", "train-teacher": "RECIPE.yaml", "evaluate": "CHECKPOINT",
                "aggregate": "RUN", "probe": "CHECKPOINT", "plots": "CHECKPOINT", "demo": "[options]"}
    for name, positional in expected.items():
        code, out, _ = run_cli([name, "--help"], capsys)
        usage = out.splitlines()[0]
        assert code == 0 and usage.startswith(f"usage: rrd-hf {name} {positional}"), usage
        assert len(out.splitlines()) < 90, f"{name} --help is {len(out.splitlines())} lines"
    shared = {"evaluate": ("--output FILE.json",), "probe": ("--seed N", "--output FILE.json"),
              "plots": ("--seed N", "--output-dir DIR")}
    for name, own in shared.items():  # the same flag names wherever they apply
        _, out, _ = run_cli([name, "--help"], capsys)
        for flag in ("--dataset NAME", "--data-dir DIR", "--split SPLIT", "--batch-size N", "--device DEVICE", *own):
            assert flag in out, (name, flag)


def test_train_help_is_short_and_points_to_every_field(capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0 and out.startswith("usage: rrd-hf train RECIPE.yaml")
    assert "RECIPE.yaml" in out.split("positional arguments:")[1]
    assert "--kd_weight X" in out and "--per_device_train_batch_size N" in out and "--bf16 [BOOL]" in out
    assert "`rrd-hf train --help-all` lists them" in out and "--lr_scheduler_type" not in out
    assert "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m rrd_hf.train" in out
    code, everything, _ = run_cli(["train", "--help-all"], capsys)
    assert code == 0 and everything.startswith("usage: rrd-hf train RECIPE.yaml")
    assert "--lr_scheduler_type" in everything and "--distill_kwargs" in everything
    assert len(everything.splitlines()) > 5 * len(out.splitlines())
    _, teacher, _ = run_cli(["train-teacher", "-h"], capsys)
    assert teacher.startswith("usage: rrd-hf train-teacher") and "--kd_weight" not in teacher


def test_argument_errors_are_two_lines_not_a_usage_dump(tmp_path, capsys):
    code, out, err = run_cli(["train", "--learning_rate", "abc"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[0].startswith("usage: rrd-hf train RECIPE.yaml") and len(err.splitlines()) == 2
    assert "invalid float value: 'abc'" in err
    code, _, err = run_cli(["evaluate"], capsys)
    assert code == 2 and "the following arguments are required: CHECKPOINT" in err and len(err.splitlines()) == 3
    code, _, err = run_cli(["trian"], capsys)
    assert code == 2 and "unknown command 'trian'. Did you mean 'train'?" in err


def test_user_errors_print_one_message_without_a_traceback(tmp_path, capsys):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("student: resnet8\nlerning_rate: 0.1\n")
    code, out, err = run_cli(["train", str(recipe)], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"rrd-hf train: error: recipe {recipe} has unknown fields ['lerning_rate']")
    assert err.splitlines()[-1] == f"({DEBUG_ENV}=1 shows the traceback)" and len(err.splitlines()) == 2


def test_a_command_line_user_error_in_a_fresh_process(tmp_path):
    """The console script as a user runs it: exit status 1, the message, no traceback; RRD_HF_DEBUG=1 shows it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop(DEBUG_ENV, None)
    command = [sys.executable, "-m", "rrd_hf.commands.cli", "aggregate", str(tmp_path / "nowhere")]
    quiet = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and "nowhere not found" in quiet.stderr
    loud = subprocess.run(command, env={**env, DEBUG_ENV: "1"}, capture_output=True, text=True, timeout=300)
    assert loud.returncode == 1 and "Traceback" in loud.stderr


# ------------------------------------------------------------------------------------------------- dependencies


def test_every_import_is_a_declared_dependency_or_a_guarded_extra():
    """Each third-party import of rrd_hf is in `dependencies`, or sits in a `try: ... except ImportError` whose
    message names a `pip install 'rrd_hf[extra]'` that lists it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    required = {name(r) for r in project["dependencies"]}
    extras = {extra: {name(r) for r in requirements} for extra, requirements in project["optional-dependencies"].items()}
    distribution = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}  # import name -> distribution
    problems = []
    for path in sorted((ROOT / "rrd_hf").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        guarded = {}  # id(import node) -> the extra its handler names
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                handlers = " ".join(ast.unparse(h) for h in node.handlers if "ImportError" in ast.unparse(h.type or h))
                extra = re.search(r"rrd_hf\[(\w+)\]", handlers)
                for inner in node.body:
                    for child in ast.walk(inner):
                        guarded[id(child)] = extra.group(1) if extra else None
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "rrd_hf":
                    continue
                dist = distribution.get(top, top).lower().replace("_", "-")
                where = f"{path.relative_to(ROOT)}:{node.lineno} imports {top}"
                if dist in required:
                    continue
                extra = guarded.get(id(node))
                if extra is None:
                    problems.append(f"{where}: not a dependency, and not guarded by an ImportError naming an extra")
                elif dist not in extras.get(extra, set()):
                    problems.append(f"{where}: its message names rrd_hf[{extra}], which does not list {dist}")
    assert not problems, "\n".join(problems)
    for integration in ("tensorboard", "wandb", "trackio"):  # report_to="<name>" has an extra that installs it
        assert integration in extras.get(integration, set()), integration


# ------------------------------------------------------------------------------------------------- launchers


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
    run = load_run(tmp_path / "run")  # the folder `rrd-hf aggregate` reads
    assert run.seed == 3 and run.configuration["student"] == "resnet8" and run.configuration["loss.kd.weight"] == 1.0
    assert run.configuration["weight_decay"] == 5e-4 and run.configuration["data.max_train_samples"] is None


def test_a_second_demo_into_the_same_folder_is_refused_before_any_work(tmp_path, capsys):
    from rrd_hf.models import build_model

    build_model("resnet8", 10).save_pretrained(tmp_path / "student-RRD")  # what an earlier demo left
    before = sorted(p.name for p in (tmp_path / "student-RRD").iterdir())
    with pytest.raises(SystemExit) as exit_info:
        cli(["demo", "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{tmp_path} already holds a demo: student-RRD/ (model.safetensors" in err
    assert "--output-dir NEW_FOLDER" in err and "--overwrite" in err
    assert sorted(p.name for p in (tmp_path / "student-RRD").iterdir()) == before  # nothing touched
    assert not (tmp_path / "teacher").exists()
    from rrd_hf.commands.demo import DemoSettings, check_output_dir

    check_output_dir(DemoSettings(output_dir=str(tmp_path), overwrite=True))  # --overwrite lets it through


def test_demo_table_says_epoch_in_the_singular_and_shows_each_runs_real_time():
    """The demo's table alone (no training): "1 epoch", and a short run's time in tenths rather than "0"."""
    from rrd_hf.commands.demo import DemoSettings, STUDENT_RUNS, format_table

    settings = DemoSettings(output_dir="out", teacher_epochs=1, epochs=1, seed=3)
    names = ["teacher", *STUDENT_RUNS]
    results = {name: {"top1": 50.0 + i, "top5": 90.0 + i} for i, name in enumerate(names)}
    timings = dict(zip(names, (0.42, 3.0, 12.34, 99.96, 250.4)))
    table = format_table(settings, results, timings, 17.6, num_train=256, num_eval=128)
    assert "Teacher resnet20 (1 epoch); student resnet8, 1 epoch per run;" in table and "epochs" not in table
    assert table.startswith("Fashion-MNIST: 256 training images, 128 test images. ")  # sizes of the splits unknown
    subset = format_table(settings, results, timings, 17.6, num_train=256, num_eval=10000, train_total=60000,
                          eval_total=10000)
    assert subset.startswith("Fashion-MNIST: 256 of the 60,000 training images, 10,000 test images (seeded subsets).")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "model" not in line]
    assert [row.split("|")[4].strip() for row in rows] == ["0.4", "3.0", "12.3", "100", "250"]
    assert rows[0] == "| teacher            |   50.00 |   90.00 |    0.4 |"
    assert "Total 18 s." in table
    assert "+2.00 top-1 points over the student alone, +1.00 over KD." in table  # RRD: 53 against 51 and 52
    several = format_table(DemoSettings(teacher_epochs=3, epochs=2), results, {}, 600.0, num_train=1, num_eval=1)
    assert "(3 epochs); student resnet8, 2 epochs per run" in several and "Total 10.0 min." in several
    assert all(row.split("|")[4].strip() == "-" for row in several.splitlines()[4:9])  # a time not measured


def test_demo_runs_end_to_end_on_a_small_budget(tmp_path, capsys):
    from rrd_hf.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; ./run does it)")
    from transformers import AutoModelForImageClassification

    cli(["demo", "--output-dir", str(tmp_path), "--train-samples", "256", "--eval-samples", "128",
         "--epochs", "1", "--teacher-epochs", "1", "--memory-size", "64", "--seed", "3"])
    out = capsys.readouterr().out
    rows = ("teacher", "student alone", "student + KD", "student + RRD", "student + RRD + KD")
    for row in rows:
        assert f"| {row} " in out
    # a subset is called one: in the table, the summary and the card of every model
    assert "256 of the 60,000 training images, 128 of the 10,000 test images (seeded subsets)" in out
    assert "resnet8, 1 epoch per run" in out
    assert "Seed 3, one seed." in out and "One seed (3)" in out
    summary = json.loads((tmp_path / "demo_results.json").read_text())
    assert tuple(summary["results"]) == rows and summary["settings"]["seed"] == 3
    assert summary["evaluated_on"] == "128 of the 10,000 test images"
    from rrd_hf.hub.card import build_model_card

    card = str(build_model_card(tmp_path / "student-RRD-KD"))
    assert "- Training images: 256 of the 60,000 images of the `train` split of Fashion-MNIST (a subset" in card
    assert "on 128 of the 10,000 images of the `test` split of Fashion-MNIST (a subset" in card
    student = AutoModelForImageClassification.from_pretrained(tmp_path / "student-RRD-KD")
    assert student.config.id2label[0] == "T-shirt/top"
    assert (tmp_path / "student-RRD-KD" / "preprocessor_config.json").is_file()
    run = load_run(tmp_path / "student-RRD-KD")  # the demo's runs can be aggregated over seeds
    assert run.metrics["best_top1"] == pytest.approx(summary["results"]["student + RRD + KD"]["top1"], abs=1e-3)
