"""What a user can hand the command line that it must not trust: crafted recipes, datasets, arguments and outputs.

Every test runs `rrd-hf ...` (`rrd_hf.commands.cli.main`) on a crafted file or folder, as a user would, and checks
that the command either does the right thing or stops with one clear line (no traceback) before doing any work.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rrd_hf.commands.cli import DEBUG_ENV
from rrd_hf.commands.cli import main as cli


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of `rrd-hf ARGV` run in this process."""
    try:
        cli([str(a) for a in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, *phrases):
    """A user error: status 1 and one message line (plus the pointer to RRD_HF_DEBUG), or an argument error: status
    2, the usage line, one error line and the pointer to --help. Never a traceback."""
    lines = [line for line in err.splitlines() if "Warning" not in line and not line.startswith(" ")]
    assert "Traceback" not in err, err[-3000:]
    if code == 1:
        message = [line for line in lines if ": error: " in line]
        assert len(message) == 1 and lines[-1] == f"({DEBUG_ENV}=1 shows the traceback)", err[-3000:]
    else:
        assert code == 2, (code, err[-3000:])
        message = [line for line in lines if ": error: " in line]
        assert len(message) == 1 and lines[0].startswith("usage: "), err[-3000:]
    for phrase in phrases:
        assert phrase in message[0], (phrase, message[0])
    return message[0]


def cifar10_split(n, seed=0, labels=None):
    import datasets

    from rrd_hf.data import CIFAR10_CLASS_NAMES

    rng = np.random.default_rng(seed)
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    labels = [int(i) for i in rng.integers(0, 10, n)] if labels is None else labels
    return datasets.Dataset.from_dict({"img": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)],
                                       "label": labels}, features=features)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A CIFAR-10-like save_to_disk folder (24 train / 12 test images) and a resnet8 checkpoint for it."""
    import datasets

    from rrd_hf.models import build_model

    root = tmp_path_factory.mktemp("hostile")
    datasets.DatasetDict(train=cifar10_split(24), test=cifar10_split(12, 1)).save_to_disk(str(root / "cifar10"))
    torch.manual_seed(0)
    build_model("resnet8", 10).save_pretrained(root / "ckpt")
    return root


# ------------------------------------------------------------------------------------------- string labels (7)


def string_label_folder(root: Path, train_labels, test_labels) -> Path:
    """Parquet files in the Hub layout whose labels are class names (strings), as many exported datasets have."""
    import datasets

    folder = root / "plain_text"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("string")})
    for split, labels in (("train", train_labels), ("test", test_labels)):
        images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in labels]
        datasets.Dataset.from_dict({"img": images, "label": list(labels)}, features=features).to_parquet(
            str(folder / f"{split}-00000-of-00001.parquet"))
    return root


def always(class_id: int, num_labels: int, folder: Path) -> str:
    """A checkpoint that predicts `class_id` for every image."""
    from rrd_hf.models import build_model

    model = build_model("resnet8", num_labels)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[class_id] = 50.0
    model.save_pretrained(folder)
    return str(folder)


def test_string_labels_are_numbered_once_for_every_split(tmp_path, capsys):
    """The test split lacks 'bird': numbered on its own it would call 'cat' 0 instead of 1, and a model that always
    answers 'cat' would score the share of 'dog' images instead of the share of 'cat' images."""
    data = string_label_folder(tmp_path / "pets", ["bird", "cat", "dog"] * 4, ["cat", "cat", "cat", "dog"])
    cat = always(1, 3, tmp_path / "always_cat")  # train ids: bird 0, cat 1, dog 2
    code, out, err = run_cli(["evaluate", cat, "--dataset", "cifar10", "--data-dir", data, "--device", "cpu"], capsys)
    assert code == 0, err[-3000:]
    metrics = json.loads(out)
    assert metrics["top1"] == pytest.approx(75.0) and metrics["num_samples"] == 4

    from rrd_hf.data import resolve_dataset

    resolved = resolve_dataset("cifar10", data_dir=str(data))
    assert resolved.train.features["label"].names == resolved.eval.features["label"].names == ["bird", "cat", "dog"]


def test_a_split_with_a_class_the_training_split_lacks_is_refused(tmp_path, capsys, saved):
    data = string_label_folder(tmp_path / "pets", ["cat", "dog"] * 4, ["cat", "horse", "dog", "emu"])
    code, _, err = run_cli(["evaluate", saved / "ckpt", "--dataset", "cifar10", "--data-dir", data, "--device", "cpu"],
                           capsys)
    assert_one_line(code, err, "does not have: 'emu', 'horse'", "training split 'train'")


# ------------------------------------------------------------------------------------------- outputs (10 and more)


def test_probe_refuses_an_unwritable_output_before_probing(tmp_path, capsys, saved, monkeypatch):
    import rrd_hf.evaluation.probe as probe

    calls = []
    real = probe.linear_probe

    @functools.wraps(real)  # the command line reads its defaults from the signature
    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "linear_probe", spy)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = run_cli(["probe", saved / "ckpt", "--dataset", "cifar10", "--data-dir", saved / "cifar10",
                              "--epochs", "1", "--device", "cpu", "--output", blocker / "probe.json"], capsys)
    assert_one_line(code, err, "cannot be written", "nothing was run")
    assert calls == [] and out == ""


def test_probe_prints_its_metrics_before_writing_them(tmp_path, capsys, saved, monkeypatch):
    import rrd_hf.commands.cli as cli_module

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_module, "_write_json", full_disk)
    code, out, err = run_cli(["probe", saved / "ckpt", "--dataset", "cifar10", "--data-dir", saved / "cifar10",
                              "--epochs", "1", "--device", "cpu", "--no-history", "--output", tmp_path / "p.json"],
                             capsys)
    assert code == 1 and "No space left on device" in err
    printed = json.loads(out)  # the hours of probing are not lost with the file
    assert printed["epochs"] == 1 and "last_top1" in printed


def test_evaluate_never_overwrites_the_runs_own_results(tmp_path, capsys, saved):
    run = tmp_path / "run"
    shutil.copytree(saved / "ckpt", run)
    record = json.dumps({"best_top1": 71.5, "last_top1": 70.9})
    (run / "results.json").write_text(record)
    code, out, err = run_cli(["evaluate", run, "--dataset", "cifar10", "--data-dir", saved / "cifar10", "--device",
                              "cpu", "--output", run / "results.json"], capsys)
    assert_one_line(code, err, "is the run's own results.json")
    assert (run / "results.json").read_text() == record and out == ""
    config = (run / "config.json").read_text()
    code, _, err = run_cli(["evaluate", run, "--dataset", "cifar10", "--data-dir", saved / "cifar10", "--device",
                            "cpu", "--output", run / "config.json"], capsys)
    assert_one_line(code, err, "is the run's own config.json")
    assert (run / "config.json").read_text() == config


def test_evaluate_on_part_of_a_split_says_so(tmp_path, capsys, saved):
    code, out, err = run_cli(["evaluate", saved / "ckpt", "--dataset", "cifar10", "--data-dir", saved / "cifar10",
                              "--device", "cpu", "--max-samples", "5", "--output", tmp_path / "m.json"], capsys)
    assert code == 0, err[-3000:]
    printed, written = json.loads(out), json.loads((tmp_path / "m.json").read_text())
    assert printed == written
    assert printed["evaluated_on"] == "5 of 12 test images (a subset of the split, not all of it)"
    assert "on 5 of 12 test images" in err
    code, out, _ = run_cli(["evaluate", saved / "ckpt", "--dataset", "cifar10", "--data-dir", saved / "cifar10",
                            "--device", "cpu"], capsys)
    assert code == 0 and json.loads(out)["evaluated_on"] == "all 12 test images"


def test_the_card_of_a_run_on_a_subset_says_how_many_images_it_was_trained_on(tmp_path, capsys):
    """A run limited by max_train_samples records how many images it saw; the published card says it."""
    from rrd_hf import RRDConfig, RRDTrainer
    from rrd_hf.commands.train import DataArguments, _load_splits
    from rrd_hf.models import build_model

    folder = tmp_path / "cifar10" / "plain_text"
    folder.mkdir(parents=True)
    cifar10_split(24).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    cifar10_split(8, 1).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    data_args = DataArguments(dataset=str(tmp_path / "cifar10"), data_pipeline="in_memory", max_train_samples=16,
                              decoded_cache=False)
    train, evaluation, transform, num_labels, _, _ = _load_splits(data_args, 0)
    args = RRDConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=8, use_cpu=True,
                     report_to="none", disable_tqdm=True, save_strategy="no", eval_strategy="no", kd_weight=0.0,
                     rrd_weight=0.0)
    trainer = RRDTrainer(model=build_model("resnet8", num_labels), args=args, train_dataset=train,
                         eval_dataset=evaluation, batch_transform=transform)
    trainer.train()
    trainer.save_model()
    code, _, err = run_cli(["push", tmp_path / "run", "me/r8", "--export-dir", tmp_path / "export"], capsys)
    assert code == 0, err[-3000:]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "- Training images: 16 of the 50,000 images of the `train` split of CIFAR-10 (a subset" in card


# ------------------------------------------------------------------------------------------- one line, not a traceback


def test_recipe_with_broken_indentation(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("student: resnet8\n  kd_weight: 1.0\n")
    code, _, err = run_cli(["train", recipe], capsys)
    assert_one_line(code, err, f"recipe {recipe} is not valid YAML", "line 2, column 12")


def test_recipe_with_a_duplicate_key_is_refused_not_read_as_the_last(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("student: resnet8\nkd_weight: 1.0\nstudent: resnet20\n")
    code, _, err = run_cli(["train", recipe, "--output_dir", tmp_path / "run"], capsys)
    assert_one_line(code, err, "line 3: 'student' is given twice (first on line 1)")
    (tmp_path / "r.json").write_text('{"student": "resnet8", "student": "resnet20"}')
    code, _, err = run_cli(["train", tmp_path / "r.json", "--output_dir", tmp_path / "run"], capsys)
    assert_one_line(code, err, "'student' is given twice")


def test_recipe_with_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    levels = ["  a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    for previous, name in zip("abcde", "bcdef"):
        levels.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("student: resnet8\ndistill_method: rrd\ndistill_kwargs:\n" + "\n".join(levels) + "\n")
    started = time.perf_counter()
    code, _, err = run_cli(["train", recipe, "--output_dir", tmp_path / "run"], capsys)
    assert time.perf_counter() - started < 30
    assert_one_line(code, err, f"recipe {recipe}: line 5, column", "YAML aliases (*a) are not accepted")
    assert len(err) < 1000


def test_an_unknown_zoo_name_is_not_sent_to_the_hub(tmp_path, capsys):
    code, _, err = run_cli(["train", "--student", "resnet9", "--dataset", "cifar10", "--data_dir", tmp_path / "none",
                            "--output_dir", tmp_path / "run"], capsys)
    assert_one_line(code, err, "student 'resnet9': unknown zoo name (close: resnet8")
    assert "Hub" not in err.replace("Hub id", "")


@pytest.mark.parametrize("kwargs, phrase", [
    ('{"num_labels": 5}', "sets num_labels: the student takes it from the dataset"),
    ('{depth: 14}', "student_init_kwargs is not valid JSON"),
    ('{"detph": 14}', "'detph' (close: depth"),
    ('{"depth": 9}', "do not make a valid resnet8: depth=9 is invalid"),
    ('[14]', "must be a JSON object"),
])
def test_bad_student_init_kwargs(tmp_path, capsys, kwargs, phrase):
    code, _, err = run_cli(["train", "--student", "resnet8", "--student_init_kwargs", kwargs, "--dataset", "cifar10",
                            "--data_dir", tmp_path / "none", "--output_dir", tmp_path / "run"], capsys)
    assert_one_line(code, err, phrase)


def test_student_init_kwargs_of_a_folder_student_are_refused_not_ignored(tmp_path, capsys, saved):
    code, _, err = run_cli(["train", "--student", saved / "ckpt", "--student_init_kwargs", '{"depth": 14}',
                            "--output_dir", tmp_path / "run"], capsys)
    assert_one_line(code, err, "student_init_kwargs is only for a zoo student")


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_an_empty_test_split(tmp_path, capsys, saved, layout):
    import datasets

    data = tmp_path / "cifar10"
    if layout == "save_to_disk":
        datasets.DatasetDict(train=cifar10_split(8), test=cifar10_split(0)).save_to_disk(str(data))
    else:
        (data / "plain_text").mkdir(parents=True)
        cifar10_split(8).to_parquet(str(data / "plain_text" / "train-00000-of-00001.parquet"))
        cifar10_split(0).to_parquet(str(data / "plain_text" / "test-00000-of-00001.parquet"))
    code, _, err = run_cli(["evaluate", saved / "ckpt", "--dataset", "cifar10", "--data-dir", data, "--device", "cpu"],
                           capsys)
    assert_one_line(code, err, f"the split 'test' of {data} holds no images")


def test_an_empty_split_of_a_loaded_dataset_is_refused_by_role():
    import datasets

    from rrd_hf.data import DataError, resolve_dataset

    resolved = resolve_dataset(datasets.DatasetDict(train=cifar10_split(4), test=cifar10_split(4).select([])),
                               stats="cifar10")
    with pytest.raises(DataError, match=r"the evaluation split 'test' of .* holds no images"):
        resolved.eval


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_train_samples_must_be_positive(tmp_path, capsys, value):
    code, _, err = run_cli(["train", "--student", "resnet8", "--max_train_samples", value, "--output_dir",
                            tmp_path / "run"], capsys)
    assert_one_line(code, err, f"max_train_samples must be a whole number >= 1", f"got {value}")


def test_a_dataset_path_that_is_not_utf8(tmp_path, capsys, saved):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/data-\xff"))
    try:
        shutil.copytree(saved / "cifar10", folder)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    code, _, err = run_cli(["evaluate", saved / "ckpt", "--dataset", "cifar10", "--data-dir", folder, "--device",
                            "cpu"], capsys)
    assert_one_line(code, err, "data-\\xff' is not valid UTF-8", "ln -s")


def test_push_while_offline(capsys, saved):
    code, _, err = run_cli(["push", saved / "ckpt", "me/r8"], capsys)  # the tests run with HF_HUB_OFFLINE=1
    assert_one_line(code, err, "the Hub is offline", "--export-dir")


@pytest.mark.parametrize("flag, value, phrase", [
    ("--lr", "nan", "argument --lr: must be a finite number > 0, got nan"),
    ("--epochs", "0", "argument --epochs: must be >= 1, got 0"),
    ("--batch-size", "0", "argument --batch-size: must be >= 1, got 0"),
])
def test_probe_settings_that_would_train_nothing(capsys, saved, flag, value, phrase):
    code, _, err = run_cli(["probe", saved / "ckpt", "--dataset", "cifar10", "--data-dir", saved / "cifar10",
                            "--device", "cpu", flag, value], capsys)
    assert_one_line(code, err, phrase)


def test_evaluate_zero_samples(capsys, saved):
    code, _, err = run_cli(["evaluate", saved / "ckpt", "--dataset", "cifar10", "--data-dir", saved / "cifar10",
                            "--max-samples", "0"], capsys)
    assert_one_line(code, err, "argument --max-samples: must be >= 1, got 0")


def test_demo_memory_smaller_than_a_batch_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    import rrd_hf.commands.demo as demo

    def no_data(settings):
        raise AssertionError("the demo loaded its data although a later run's settings are invalid")

    monkeypatch.setattr(demo, "_load_data", no_data)
    code, out, err = run_cli(["demo", "--output-dir", tmp_path / "demo", "--memory-size", "8"], capsys)
    assert_one_line(code, err, "memory_size=8 is smaller than the global batch (64 samples")
    assert out == "" and not (tmp_path / "demo").exists()
