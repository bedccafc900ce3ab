"""Runs users can trust, tested on the path they run (the command line, the recipes' augmentation, loader workers):
same seed same run, exact resume on both data paths, SIGKILL at any moment, non-finite numbers, finished folders."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers import StopAt, TinyImageDataset, tiny_model
from rrd_hf import RRDConfig, RRDTrainer
from rrd_hf.training.checkpoints import COMPLETE_MARKER, DISTILL_STATE_NAME, is_complete
from rrd_hf.training.guard import NonFiniteError
from rrd_hf.commands.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def cifar10_folder(tmp_path_factory):
    """48 training and 16 test images in the uoft-cs/cifar10 schema, saved with save_to_disk."""
    import datasets

    from rrd_hf.data import CIFAR10_CLASS_NAMES

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    rng = np.random.default_rng(0)

    def split(n):
        return datasets.Dataset.from_dict({"img": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)],
                                           "label": [int(i) % 10 for i in range(n)]}, features=features)

    path = tmp_path_factory.mktemp("data") / "cifar10"
    datasets.DatasetDict(train=split(48), test=split(16)).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def cifar10_hub_folder(tmp_path_factory, cifar10_folder):
    """The same images in the Hub repo's layout (parquet per split): `datasets` loads them into its cache, where the
    in-memory path keeps their decoded images for later runs."""
    import datasets

    root = tmp_path_factory.mktemp("hub") / "cifar10"
    (root / "plain_text").mkdir(parents=True)
    for split in ("train", "test"):
        datasets.load_from_disk(cifar10_folder)[split].to_parquet(str(root / "plain_text" / f"{split}-00000-of-00001.parquet"))
    return str(root)


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    from rrd_hf.data import CIFAR10_CLASS_NAMES
    from rrd_hf.models import build_model

    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("teacher") / "resnet8"
    build_model("resnet8", class_names=list(CIFAR10_CLASS_NAMES)).save_pretrained(path)
    return str(path)


def recipe(tmp_path, cifar10_folder, teacher_folder, **extra) -> Path:
    """An RRD+KD recipe as a user writes one: random crop + flip on, SGD, step decay, drop_last."""
    values = dict(student="resnet8", dataset=cifar10_folder, teacher_model_name_or_path=teacher_folder, kd_weight=1.0,
                  memory_size=32, per_device_train_batch_size=8, max_steps=8, learning_rate=0.05, optim="sgd",
                  optim_args="momentum=0.9", weight_decay=5.0e-4, decay_all_parameters=True, lr_decay_epochs=[1],
                  max_grad_norm=0.0, dataloader_drop_last=True, eval_strategy="no", save_strategy="steps",
                  save_steps=4, logging_steps=4, report_to="none", disable_tqdm=True, use_cpu=True, seed=7)
    values.update(extra)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(values))
    return path


def weights(folder) -> dict:
    return load_file(Path(folder) / "model.safetensors")


def assert_bitwise_equal(a: dict, b: dict, what: str):
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{what}: {different[:5]} differ"


# ------------------------------------------------------------------------------------------------ same seed, same run
@pytest.mark.parametrize("data_pipeline,workers,layout", [("in_memory", 0, "saved"), ("per_sample", 2, "saved"),
                                                      ("in_memory", 2, "hub")])
def test_the_same_recipe_and_seed_give_bitwise_the_same_student(tmp_path, cifar10_folder, cifar10_hub_folder,
                                                                 teacher_folder, data_pipeline, workers, layout):
    """With the Hub layout the first run decodes (in 2 worker processes) and keeps the decoded images in the
    `datasets` cache; the second reads them back."""
    data = cifar10_hub_folder if layout == "hub" else cifar10_folder
    path = recipe(tmp_path, data, teacher_folder, data_pipeline=data_pipeline, dataloader_num_workers=workers,
                  save_strategy="no")
    logs = {}
    for run in ("a", "b"):  # separate processes: nothing is shared but the recipe (and the datasets cache)
        command = [sys.executable, "-m", "rrd_hf.train", str(path), "--output_dir", str(tmp_path / run)]
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[run] = result.stderr
    if layout == "hub":
        assert "decoded images read from" not in logs["a"] and "decoded images read from" in logs["b"], logs["b"][-3000:]
    assert_bitwise_equal(weights(tmp_path / "a"), weights(tmp_path / "b"), "two runs with seed 7")
    different_seed = train_main([str(path), "--output_dir", str(tmp_path / "c"), "--seed", "8"])
    assert different_seed["global_step"] == 8
    assert any(not torch.equal(v, weights(tmp_path / "c")[k]) for k, v in weights(tmp_path / "a").items())


def test_train_teacher_twice_gives_the_same_teacher(tmp_path, cifar10_folder, teacher_folder):
    path = recipe(tmp_path, cifar10_folder, teacher_folder, kd_weight=0.0, rrd_weight=0.0, save_strategy="no",
                  teacher_model_name_or_path=None, max_steps=4)
    for run in ("a", "b"):
        train_main([str(path), "--output_dir", str(tmp_path / run)], teacher_only=True)
    assert_bitwise_equal(weights(tmp_path / "a"), weights(tmp_path / "b"), "two teacher runs")


# ------------------------------------------------------------------------------------------------ exact resume
@pytest.mark.parametrize("data_pipeline,workers", [("in_memory", 0), ("per_sample", 0), ("per_sample", 2)])
def test_resume_with_augmentation_equals_the_uninterrupted_run(tmp_path, cifar10_folder, teacher_folder, data_pipeline,
                                                              workers):
    # 48 images / batch 8 with drop_last = 6 steps per epoch: checkpoint 4 sits inside epoch 0, the LR decays at
    # step 6 and step 8 is in epoch 1 (new crops): the resumed run must redo all of that exactly.
    path = recipe(tmp_path, cifar10_folder, teacher_folder, data_pipeline=data_pipeline, dataloader_num_workers=workers)
    full = tmp_path / "full"
    train_main([str(path), "--output_dir", str(full)])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")  # as left by a run stopped after step 4
    train_main([str(path), "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    assert_bitwise_equal(weights(full), weights(resumed), "resumed from step 4")
    # the memory and heads, and the optimizer's momentum buffers, too
    assert_bitwise_equal(load_file(full / "checkpoint-8" / DISTILL_STATE_NAME),
                         load_file(resumed / "checkpoint-8" / DISTILL_STATE_NAME), DISTILL_STATE_NAME)
    momentum = [torch.load(folder / "checkpoint-8" / "optimizer.pt")["state"] for folder in (full, resumed)]
    assert momentum[0].keys() == momentum[1].keys()
    assert all(torch.equal(momentum[0][k]["momentum_buffer"], momentum[1][k]["momentum_buffer"]) for k in momentum[0])


def test_resume_with_a_crd_memory_and_an_init_stage_equals_the_uninterrupted_run(tmp_path):
    # CRD's banks and draws, and an init stage (FT) that a resumed run must not repeat.
    def make(out, **extra):
        args = RRDConfig(output_dir=str(out), max_steps=6, per_device_train_batch_size=8, init_epochs=1,
                         distill_terms=[{"method": "crd", "kwargs": {"num_negatives": 16}}, {"method": "ft"}],
                         save_strategy="steps", save_steps=3, learning_rate=0.05, optim="sgd", use_cpu=True,
                         report_to="none", disable_tqdm=True, seed=0, **extra)
        from rrd_hf.models import build_model

        torch.manual_seed(0)
        return RRDTrainer(model=build_model("resnet8", 4), teacher_model=build_model("resnet14", 4), args=args,
                          train_dataset=TinyImageDataset(32, num_labels=4, size=32, with_index=True))

    full = make(tmp_path / "full")
    full.train()
    part = make(tmp_path / "part")
    part.add_callback(StopAt(3))
    part.train()
    resumed = make(tmp_path / "part")
    resumed.train(resume_from_checkpoint="latest")
    assert resumed.init_stage_history == []
    assert_bitwise_equal(full.model.state_dict(), resumed.model.state_dict(), "student")
    assert_bitwise_equal(full.methods.state_dict(), resumed.methods.state_dict(), "methods")


# ------------------------------------------------------------------------------------------------ SIGKILL
def _kill_during_a_save(command, output_dir: Path, timeout=300) -> bool:
    """Start `command`, SIGKILL it as soon as a new checkpoint folder exists without its completion marker (i.e.
    while it is being written); True if that happened, False if the run ended first."""
    existing = set(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else set()
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            folders = set(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else set()
            partial = [f for f in folders - existing if not (f / COMPLETE_MARKER).exists()]
            if partial:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.0005)
        return False
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_sigkill_during_checkpoint_saves_then_resume_latest_equals_the_uninterrupted_run(tmp_path, cifar10_folder,
                                                                                        teacher_folder):
    path = recipe(tmp_path, cifar10_folder, teacher_folder, save_steps=2, max_steps=8)
    reference = tmp_path / "reference"  # a process like the killed ones: CPU results depend on the thread count
    result = subprocess.run([sys.executable, "-m", "rrd_hf.train", str(path), "--output_dir", str(reference)], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "rrd_hf.train", str(path), "--output_dir", str(out),
               "--resume_from_checkpoint", "latest"]
    kills = 0
    for _ in range(6):  # each attempt resumes from the newest complete checkpoint, then is killed mid-save again
        if not _kill_during_a_save(command, out):
            break
        kills += 1
        partial = [f for f in out.glob("checkpoint-*") if not is_complete(str(f))]
        assert partial, "the kill was meant to leave a half-written checkpoint"
        if kills == 2:
            break
    assert kills >= 1, "never caught a checkpoint while it was written"
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_bitwise_equal(weights(reference), weights(out), f"after {kills} kills mid-save")
    assert all(is_complete(str(f)) for f in out.glob("checkpoint-*"))


# ------------------------------------------------------------------------------------------------ non-finite numbers
class _Poisoned(TinyImageDataset):
    def __init__(self, value, at=16, **kwargs):
        super().__init__(32, with_index=True, **kwargs)
        self.images[at] = value  # the first batch with it is step 3 (batches of 8, sequential)


@pytest.mark.parametrize("value,expected", [
    (float("nan"), "^loss_ce is nan, loss_kd is nan, loss_rrd is nan; .* at step 3: .*largest \\|pixel_values\\| was nan"),
    (1e30, "the BatchNorm statistics bn1.running_mean is .*, bn1.running_var is inf.* at step 3: .* was 1e\\+30"),
])
def test_non_finite_input_stops_the_run_and_nothing_non_finite_is_saved(tmp_path, value, expected):
    args = RRDConfig(output_dir=str(tmp_path / "run"), max_steps=8, per_device_train_batch_size=8, memory_size=16,
                     kd_weight=1.0, save_strategy="steps", save_steps=2, logging_steps=1, learning_rate=0.05,
                     optim="sgd", use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
                     train_sampling_strategy="sequential")
    trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2), args=args,
                         train_dataset=_Poisoned(value))
    with pytest.raises(NonFiniteError, match=expected):
        trainer.train()
    assert trainer.state.global_step <= 3
    saved = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert saved == ["checkpoint-2"]  # the checkpoint before the bad batch, and nothing after it
    for name, tensor in load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors").items():
        assert torch.isfinite(tensor.float()).all(), name
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step was never applied


def test_the_finiteness_check_can_be_switched_off(tmp_path):
    args = RRDConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, memory_size=16,
                     check_finite=False, save_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True,
                     train_sampling_strategy="sequential")
    RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2), args=args,
               train_dataset=_Poisoned(float("nan"))).train()


class _SpoilWeights(TrainerCallback):
    """What an optimizer step with finite gradients can do (a huge learning rate): non-finite weights."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            next(model.parameters()).fill_(float("inf"))


@pytest.mark.parametrize("save_strategy", ["steps", "no"])
def test_weights_made_non_finite_by_the_last_step_are_never_saved(tmp_path, save_strategy):
    args = RRDConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=8, memory_size=16,
                     save_strategy=save_strategy, save_steps=1, use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2), args=args,
                         train_dataset=TinyImageDataset(16, with_index=True), callbacks=[_SpoilWeights()])
    with pytest.raises(NonFiniteError, match="the weights .* hold NaN or inf after step 1: they were not saved"):
        trainer.train()
        trainer.save_model()
    assert not list((tmp_path / "run").rglob("model.safetensors"))


@pytest.mark.parametrize("field,value", [("learning_rate", float("inf")), ("weight_decay", float("nan")),
                                         ("ce_weight", float("nan")), ("kd_weight", float("inf")),
                                         ("teacher_image_mean", [0.5, float("nan"), 0.5]),
                                         ("distill_terms", [{"method": "kd", "kwargs": {"temperature": float("nan")}}]),
                                         ("distill_kwargs", '{"temperature": Infinity}')])
def test_non_finite_numbers_in_the_config_are_refused(tmp_path, field, value):
    extra = {"distill_method": "kd"} if field == "distill_kwargs" else {}
    with pytest.raises(ValueError, match=f"^{field} must hold finite numbers only, got"):
        RRDConfig(output_dir=str(tmp_path), **{field: value}, **extra)


def test_the_command_line_refuses_a_nan_learning_rate_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rrd_hf.commands.cli", "train", "--student", "resnet8", "--dataset", "cifar10",
                             "--output_dir", str(tmp_path), "--learning_rate", "nan"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "rrd-hf train: error: learning_rate must hold finite numbers only, got nan." in result.stderr
    assert "Traceback" not in result.stderr


def test_resuming_with_another_objective_is_refused_with_what_changed(tmp_path):
    def make(**extra):
        args = RRDConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=8, save_steps=1,
                         use_cpu=True, report_to="none", disable_tqdm=True, **{"memory_size": 16, **extra})
        return RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2), args=args,
                          train_dataset=TinyImageDataset(16, with_index=True))

    make().train()
    with pytest.raises(ValueError, match="was trained with other settings: memory_size 16 -> 32. .*Resume with the "
                                         "checkpoint's settings.*memory_size cannot change on resume"):
        make(memory_size=32).train(resume_from_checkpoint="latest")


# ------------------------------------------------------------------------------------------------ finished folders
def test_a_finished_run_is_never_overwritten_without_being_asked(tmp_path, cifar10_folder, teacher_folder):
    path = recipe(tmp_path, cifar10_folder, teacher_folder, max_steps=4)
    out = tmp_path / "run"
    train_main([str(path), "--output_dir", str(out)])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds a run .*--resume_from_checkpoint latest.*--overwrite_output_dir"):
        train_main([str(path), "--output_dir", str(out), "--seed", "9"])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched, byte for byte
    train_main([str(path), "--output_dir", str(out), "--resume_from_checkpoint", "latest"])  # resuming is fine
    train_main([str(path), "--output_dir", str(out), "--seed", "9", "--overwrite_output_dir", "--max_steps", "2"])
    assert not (out / "checkpoint-4").exists()  # the old run's checkpoints do not mix in
    assert json.loads((out / "results.json").read_text())["seed"] == 9


def test_a_half_written_checkpoint_is_skipped_by_latest_and_refused_by_name(tmp_path, cifar10_folder, teacher_folder):
    path = recipe(tmp_path, cifar10_folder, teacher_folder, max_steps=8, save_steps=2)
    out = tmp_path / "run"
    train_main([str(path), "--output_dir", str(out), "--max_steps", "4"])
    broken = out / "checkpoint-4"
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="not a complete checkpoint .*changed since it was written: model.safetensors"):
        train_main([str(path), "--output_dir", str(out), "--resume_from_checkpoint", str(broken)])
    results = train_main([str(path), "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert results["global_step"] == 8  # checkpoint-2 was the newest complete one


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0])  # the guard reads the norms for the logged grad_norm / after clipping
def test_a_non_finite_gradient_alone_stops_the_run_before_its_step(tmp_path, max_grad_norm):
    args = RRDConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, memory_size=16,
                     kd_weight=1.0, max_grad_norm=max_grad_norm, save_strategy="no", logging_steps=1, use_cpu=True,
                     report_to="none", disable_tqdm=True, train_sampling_strategy="sequential")
    trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2), args=args,
                         train_dataset=TinyImageDataset(48, with_index=True))
    calls = []
    trainer.model.conv1.weight.register_hook(lambda grad: calls.append(1) or (grad * float("inf") if len(calls) == 3 else grad))
    with pytest.raises(NonFiniteError, match=r"the gradients? .*conv1\.weight is (inf|nan).* at step 3"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step was never applied
