"""RRDTrainer end to end on tiny generated data (CPU, offline)."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageClassification, TrainerCallback

from helpers import StopAt, TinyConvConfig, TinyConvForImageClassification, TinyImageDataset, tiny_model
from rrd_hf import DISTILL_STATE_NAME, RRDConfig, RRDTrainer
from rrd_hf.training.checkpoints import COMPLETE_MARKER

AutoConfig.register(TinyConvConfig.model_type, TinyConvConfig, exist_ok=True)
AutoModelForImageClassification.register(TinyConvConfig, TinyConvForImageClassification, exist_ok=True)


def make_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        memory_size=32, logging_steps=2, use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
        learning_rate=0.05, optim="sgd", dataloader_num_workers=0, seed=0,
    )
    values.update(overrides)
    return RRDConfig(**values)


def make_trainer(tmp_path, student=None, teacher=None, train_n=64, with_index=True, **overrides):
    student = student if student is not None else tiny_model(seed=1)
    teacher = teacher if teacher is not None else tiny_model(width=16, seed=2)
    return RRDTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, **overrides),
        train_dataset=TinyImageDataset(train_n, with_index=with_index), eval_dataset=TinyImageDataset(16, seed=1),
    )


def clone_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_end_to_end_teacher_frozen_student_and_head_trained_memory_filled(tmp_path):
    trainer = make_trainer(tmp_path, kd_weight=1.0)
    teacher_before = clone_state(trainer.teacher.model)
    student_before = clone_state(trainer.model)
    head_before = clone_state(trainer.methods["rrd"].student_head)
    teacher_head_before = clone_state(trainer.methods["rrd"].teacher_head)
    trainer.train()

    for name, value in trainer.teacher.model.state_dict().items():  # weights and BN running statistics
        torch.testing.assert_close(value, teacher_before[name], msg=f"teacher {name} changed")
    assert not trainer.teacher.model.training
    for name, value in trainer.methods["rrd"].teacher_head.state_dict().items():
        torch.testing.assert_close(value, teacher_head_before[name])
    assert any(not torch.equal(v, student_before[k]) for k, v in trainer.model.state_dict().items())
    assert not torch.equal(trainer.methods["rrd"].student_head.weight, head_before["weight"])

    # 6 steps x 8 samples = 48 teacher embeddings written into a memory of 32: full, and made of teacher keys.
    memory = trainer.methods["rrd"].memory
    assert memory.num_filled == 32 and int(memory.num_updates) == 6
    dataset = TinyImageDataset(64)
    with torch.no_grad():
        trainer.teacher.model(pixel_values=dataset.images)
        _, z_t = trainer.methods["rrd"].embed(torch.zeros(64, trainer.methods["rrd"].student_head.in_features), trainer.teacher.reader.feature_tap.pop())
    similarity = memory.keys @ z_t.t()
    assert torch.allclose(similarity.max(dim=1).values, torch.ones(32), atol=1e-5)

    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(train_logs) == 3
    for log in train_logs:
        assert {"loss_ce", "loss_kd", "loss_rrd"} <= set(log)
        total = log["loss_ce"] + log["loss_kd"] + log["loss_rrd"]
        assert log["loss"] == pytest.approx(total, rel=1e-4)


def test_evaluation_is_student_only_and_leaves_memory_alone(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train()
    keys, updates = trainer.methods["rrd"].memory.keys.clone(), int(trainer.methods["rrd"].memory.num_updates)
    calls = []
    handle = trainer.teacher.model.register_forward_hook(lambda *a: calls.append(1))
    metrics = trainer.evaluate()
    handle.remove()
    assert calls == []
    torch.testing.assert_close(trainer.methods["rrd"].memory.keys, keys)
    assert int(trainer.methods["rrd"].memory.num_updates) == updates
    assert {"eval_loss", "eval_accuracy", "eval_top5_accuracy"} <= set(metrics)
    # eval_loss is the student's plain cross-entropy
    data = TinyImageDataset(16, seed=1)
    with torch.no_grad():
        logits = trainer.model(pixel_values=data.images).logits
    expected = torch.nn.functional.cross_entropy(logits, data.labels).item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["eval_accuracy"] == pytest.approx((logits.argmax(1) == data.labels).float().mean().item())


def test_teacher_stays_in_eval_mode_even_if_switched(tmp_path):
    # unfolded, so that the teacher keeps a BatchNorm whose statistics train mode would move
    trainer = make_trainer(tmp_path, max_steps=2, fold_teacher_batch_norm=False)
    stats = trainer.teacher.model.bn1.running_mean.clone()
    trainer.teacher.model.train()
    trainer.train()
    assert not trainer.teacher.model.training
    torch.testing.assert_close(trainer.teacher.model.bn1.running_mean, stats)


def test_save_model_writes_a_clean_student(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train()
    out = tmp_path / "student"
    trainer.save_model(str(out))
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors"} <= files and DISTILL_STATE_NAME not in files
    saved = load_file(out / "model.safetensors")
    assert set(saved) == set(trainer.model.state_dict())
    reloaded = AutoModelForImageClassification.from_pretrained(out)
    data = TinyImageDataset(4)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=data.images).logits, trainer.model(pixel_values=data.images).logits)


def run_to_step(tmp_path, name, stop_at=None, resume=None, **overrides):
    trainer = make_trainer(
        tmp_path, max_steps=9, save_strategy="steps", save_steps=4, output_dir=str(tmp_path / name),
        dataloader_drop_last=False, train_n=40, kd_weight=1.0, **overrides,
    )
    if stop_at is not None:
        trainer.add_callback(StopAt(stop_at))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("memory_type", ["fifo", "momentum"])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, memory_type):
    # 40 samples / batch 8 = 5 steps per epoch: the checkpoint at step 4 sits inside an epoch.
    full = run_to_step(tmp_path, "full", memory_type=memory_type)
    interrupted = run_to_step(tmp_path, "part", stop_at=4, memory_type=memory_type)
    assert interrupted.state.global_step == 4
    checkpoint = tmp_path / "part" / "checkpoint-4"
    assert (checkpoint / DISTILL_STATE_NAME).is_file()
    resumed = run_to_step(tmp_path, "part", resume=str(checkpoint), memory_type=memory_type)
    assert resumed.state.global_step == 9
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=f"student {name}")
    for name, value in full.methods["rrd"].state_dict().items():
        torch.testing.assert_close(resumed.methods["rrd"].state_dict()[name], value, msg=f"rrd {name}")


def test_resume_from_a_checkpoint_without_distill_state_fails_clearly(tmp_path):
    run_to_step(tmp_path, "part", stop_at=4)
    checkpoint = tmp_path / "part" / "checkpoint-4"
    os.remove(checkpoint / DISTILL_STATE_NAME)
    with pytest.raises(ValueError, match=f"not a complete checkpoint \\(missing {DISTILL_STATE_NAME}"):
        run_to_step(tmp_path, "part", resume=str(checkpoint))
    os.remove(checkpoint / COMPLETE_MARKER)  # now like a checkpoint of a plain Trainer
    with pytest.raises(FileNotFoundError, match="cannot be restored"):
        run_to_step(tmp_path, "part", resume=str(checkpoint))


def test_bf16_autocast_on_cpu_keeps_losses_float32(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, max_steps=2, kd_weight=1.0)
    seen = {}
    original = trainer.compute_loss
    trainer.model.conv2.register_forward_hook(lambda m, i, out: seen.__setitem__("student_conv", out.dtype))
    trainer.teacher.model.conv2.register_forward_hook(lambda m, i, out: seen.__setitem__("teacher_conv", out.dtype))

    def probe(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = original(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        seen["loss"] = loss.dtype
        seen["terms"] = {k: v.dtype for k, v in trainer._loss_terms.sums.items()}
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = probe
    trainer.train()
    assert seen["student_conv"] == torch.bfloat16 and seen["teacher_conv"] == torch.bfloat16  # both autocast
    assert seen["loss"] == torch.float32
    assert all(dtype == torch.float32 for dtype in seen["terms"].values())
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    # CE + KD (no memory, whose content depends on how a step is split) on a model without BatchNorm.
    def one_step(batch, accumulation):
        trainer = RRDTrainer(
            model=tiny_model(seed=1, use_bn=False), teacher_model=tiny_model(width=16, seed=2),
            args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=batch,
                           gradient_accumulation_steps=accumulation, rrd_weight=0.0, kd_weight=1.0, logging_steps=1,
                           train_sampling_strategy="sequential", learning_rate=0.5),
            train_dataset=TinyImageDataset(16),
        )
        trainer.train()
        return trainer.model.state_dict(), trainer.state.log_history[0]["loss"]

    full, full_loss = one_step(8, 1)
    accumulated, accumulated_loss = one_step(4, 2)
    assert accumulated_loss == pytest.approx(full_loss, rel=1e-5)
    for name, value in full.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6)


def test_clipping_covers_the_student_head(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, max_grad_norm=1e-3, learning_rate=1.0)
    student_before, head_before = clone_state(trainer.model), clone_state(trainer.methods["rrd"].student_head)
    trainer.train()
    squared = sum(((trainer.model.state_dict()[k] - v) ** 2).sum() for k, v in student_before.items()
                  if v.dtype.is_floating_point and "running" not in k)
    squared += sum(((trainer.methods["rrd"].student_head.state_dict()[k] - v) ** 2).sum() for k, v in head_before.items())
    assert squared.sqrt().item() <= 1e-3 * 1.001


def test_optimizer_holds_student_head_not_teacher_head_and_decays_all_when_asked(tmp_path):
    trainer = make_trainer(tmp_path, optim_args="momentum=0.9", weight_decay=5e-4, decay_all_parameters=True)
    trainer.create_optimizer()
    params = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in params for p in trainer.methods["rrd"].student_head.parameters())
    assert not any(id(p) in params for p in trainer.methods["rrd"].teacher_head.parameters())
    assert not any(id(p) in params for p in trainer.teacher.model.parameters())
    assert params[id(trainer.model.bn1.weight)] == 5e-4 and params[id(trainer.methods["rrd"].student_head.bias)] == 5e-4
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9

    default = make_trainer(tmp_path, weight_decay=5e-4)
    default.create_optimizer()
    params = {id(p): group["weight_decay"] for group in default.optimizer.param_groups for p in group["params"]}
    assert params[id(default.methods["rrd"].student_head.bias)] == 0.0


def test_step_decay_by_epochs(tmp_path):
    # 64 samples / batch 8 = 8 steps per epoch; decay x0.1 at epochs 1 and 2.
    trainer = make_trainer(tmp_path, max_steps=-1, num_train_epochs=3, lr_decay_epochs=[1, 2], learning_rate=0.1,
                           logging_steps=1)
    trainer.train()
    lrs = {log["step"]: log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log}
    # The logged LR is the one each step used: epoch 0 = steps 1-8, epoch 1 = steps 9-16, epoch 2 = steps 17-24.
    assert [lrs[s] for s in (1, 8, 9, 16, 17, 24)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_different_label_sets_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="same label set"):
        make_trainer(tmp_path, teacher=tiny_model(num_labels=5, seed=2))
    student, teacher = tiny_model(seed=1), tiny_model(seed=2)
    student.config.id2label = {i: n for i, n in enumerate(["cat", "dog", "car", "cow"])}
    teacher.config.id2label = {i: n for i, n in enumerate(["dog", "cat", "car", "cow"])}
    with pytest.raises(ValueError, match="label names differ"):
        make_trainer(tmp_path, student=student, teacher=teacher)


def test_teacher_from_a_local_path_and_an_unreachable_hub_id(tmp_path):
    teacher = tiny_model(width=16, seed=2)
    teacher.save_pretrained(tmp_path / "teacher")
    trainer = RRDTrainer(model=tiny_model(seed=1), args=make_args(tmp_path, max_steps=1,
                         teacher_model_name_or_path=str(tmp_path / "teacher")), train_dataset=TinyImageDataset(16))
    torch.testing.assert_close(trainer.teacher.model.conv1.weight, teacher.conv1.weight)
    trainer.train()
    with pytest.raises(OSError, match="could not load the teacher"):
        RRDTrainer(model=tiny_model(), teacher_model="nobody/no-such-teacher", args=make_args(tmp_path))


def test_missing_teacher_and_student_alone(tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        RRDTrainer(model=tiny_model(), args=make_args(tmp_path))
    alone = RRDTrainer(model=tiny_model(), args=make_args(tmp_path, rrd_weight=0.0, max_steps=2),
                       train_dataset=TinyImageDataset(16))
    assert alone.teacher is None and len(alone.methods) == 0
    alone.train()
    assert all("loss_rrd" not in log for log in alone.state.log_history)


def test_momentum_memory_needs_the_index_column(tmp_path):
    trainer = make_trainer(tmp_path, memory_type="momentum", max_steps=2, with_index=False)
    with pytest.raises(ValueError, match="index"):
        trainer.train()
    trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2),
                         args=make_args(tmp_path, memory_type="momentum", max_steps=2),
                         train_dataset=TinyImageDataset(64, with_index=True))
    trainer.train()
    assert trainer.methods["rrd"].memory.num_filled == 16 and trainer.methods["rrd"].memory.size == 64


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(student_temperature=0.0), "student_temperature must be > 0"),
        (dict(teacher_temperature=-1.0), "teacher_temperature must be > 0"),
        (dict(kd_temperature=0.0), "kd_temperature must be > 0"),
        (dict(memory_size=4), "smaller than the global batch"),
        (dict(kd_weight=-1.0), "kd_weight must be >= 0"),
        (dict(ce_weight=0.0, rrd_weight=0.0), "every loss weight is 0"),
        (dict(rrd_preset="nope"), "unknown rrd_preset"),
        (dict(enqueue="sideways"), "enqueue must be one of"),
        (dict(memory_type="lifo"), "memory_type must be one of"),
        (dict(lr_decay_epochs=[180, 150]), "increasing"),
        (dict(learning_rate="fast"), "must be a number"),
    ],
)
def test_invalid_config_fails_at_construction(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_presets_and_string_floats(tmp_path):
    published = make_args(tmp_path)
    assert (published.student_temperature, published.teacher_temperature, published.enqueue) == (0.04, 0.10, "after")
    code = make_args(tmp_path, rrd_preset="code-2025")
    assert (code.student_temperature, code.teacher_temperature, code.enqueue) == (0.10, 0.02, "before")
    mixed = RRDConfig(rrd_preset="code-2025", output_dir=str(tmp_path), student_temperature=0.2)
    assert (mixed.student_temperature, mixed.teacher_temperature) == (0.2, 0.02)
    yaml_like = make_args(tmp_path, weight_decay="5e-4", learning_rate="0.05")
    assert yaml_like.weight_decay == 5e-4 and yaml_like.learning_rate == 0.05
    assert make_args(tmp_path).remove_unused_columns is False


def test_trainer_rejects_plain_training_arguments(tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="RRDConfig"):
        RRDTrainer(model=tiny_model(), teacher_model=tiny_model(), args=TrainingArguments(output_dir=str(tmp_path)))


def test_momentum_memory_has_a_slot_for_every_dataset_index(tmp_path):
    import datasets

    data = TinyImageDataset(16)
    # indices as left by shuffle/select of a larger split: sparse, up to 31
    dataset = datasets.Dataset.from_dict({"pixel_values": data.images.numpy(), "labels": data.labels.tolist(),
                                          "index": list(range(0, 32, 2))}).with_format("torch")
    trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2),
                         args=make_args(tmp_path, memory_type="momentum", max_steps=2), train_dataset=dataset)
    assert trainer.methods["rrd"].memory.size == 31
    trainer.train()
    assert trainer.methods["rrd"].memory.num_filled == 16


def test_fsdp_is_refused_with_an_explanation(tmp_path, monkeypatch):
    from transformers import Trainer

    original = Trainer.create_accelerator_and_postprocess

    def pretend_fsdp(self):
        original(self)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", pretend_fsdp)
    with pytest.raises(NotImplementedError, match="use DDP"):
        make_trainer(tmp_path)


def test_evaluation_never_drops_samples_even_with_drop_last(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, dataloader_drop_last=True, per_device_eval_batch_size=6)
    prediction = trainer.predict(TinyImageDataset(16, seed=1))  # 16 = 2 x 6 + 4: the last batch must count
    assert prediction.predictions.shape[0] == 16 and prediction.label_ids.shape[0] == 16
    metrics = trainer.evaluate(TinyImageDataset(16, seed=1))
    data = TinyImageDataset(16, seed=1)
    with torch.no_grad():
        logits = trainer.model.eval()(pixel_values=data.images).logits
    expected = (logits.argmax(1) == data.labels).float().mean().item()
    assert metrics["eval_accuracy"] == pytest.approx(expected)
    assert len(trainer.get_train_dataloader()) == 64 // 8  # training still drops (here nothing to drop)


def test_logged_loss_terms_are_the_means_of_each_step_since_the_last_log(tmp_path):
    """Every training log holds, per term, the mean of the values of the steps since the previous log, read here
    from the methods themselves; between logs the trainer keeps one running sum per term, not one tensor per step."""
    trainer = make_trainer(tmp_path, max_steps=6, logging_steps=3, kd_weight=1.0)
    per_step = {"loss_rrd": [], "loss_kd": []}
    kept = []
    for name in ("rrd", "kd"):
        trainer.methods[name].register_forward_hook(
            lambda module, args, out, name=name: per_step[f"loss_{name}"].append(out.detach().item())
            if module.training else None)
    trainer.add_callback(type("Count", (TrainerCallback,), {
        "on_step_end": lambda self, *args, **kwargs: kept.append(len(trainer._loss_terms.sums))})())
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss_rrd" in log]
    assert [log["step"] for log in logs] == [3, 6]
    for log, steps in zip(logs, [slice(0, 3), slice(3, 6)]):
        for name, values in per_step.items():
            assert log[name] == pytest.approx(sum(values[steps]) / 3, rel=1e-6), (log["step"], name)
    assert set(kept) == {3}  # loss_ce, loss_kd, loss_rrd: one sum each, however many steps since the log


def test_floating_point_ops_is_the_trainers_estimate(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    batch = {"pixel_values": torch.zeros(5, 3, 8, 8), "labels": torch.zeros(5, dtype=torch.long)}
    expected = 6 * batch["pixel_values"].numel() * trainer.model.num_parameters(exclude_embeddings=True)
    assert trainer.floating_point_ops(batch) == expected == trainer.floating_point_ops(batch)
    assert trainer.floating_point_ops({"labels": batch["labels"]}) == 0
    trainer.train()  # two full batches: Trainer sums the estimate of each
    image = trainer.train_dataset[0]["pixel_values"]
    assert trainer.state.total_flos == 2 * 6 * trainer.args.per_device_train_batch_size * image.numel() * \
        trainer.model.num_parameters(exclude_embeddings=True)


@pytest.mark.parametrize("check_finite", [True, False])
def test_logged_grad_norm_is_the_students_gradient_norm(tmp_path, check_finite):
    """Without clipping (the recipes' max_grad_norm 0), the logged grad_norm is Trainer's: the norm of the student's
    gradients alone, not the heads', read here before each update. With the NaN guard on it comes from the guard's
    per-gradient norms, which must not change it."""
    trainer = make_trainer(tmp_path, max_steps=3, logging_steps=1, kd_weight=1.0, check_finite=check_finite,
                           max_grad_norm=0.0)
    expected = []
    trainer.add_callback(type("Read", (TrainerCallback,), {"on_pre_optimizer_step": lambda self, *a, **k: expected.append(
        sum(float(p.grad.double().square().sum()) for p in trainer.model.parameters() if p.grad is not None) ** 0.5)})())
    trainer.train()
    logged = [log["grad_norm"] for log in trainer.state.log_history if "grad_norm" in log]
    assert len(logged) == len(expected) == 3
    assert logged == pytest.approx(expected, rel=1e-5)
