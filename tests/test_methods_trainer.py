"""Every registered method end to end through RRDTrainer for a few steps (tiny zoo models, generated data)."""

import pytest
import torch

from helpers import StopAt, TinyImageDataset, tiny_model
from rrd_hf import DISTILL_STATE_NAME, RRDConfig, RRDTrainer
from rrd_hf.methods import METHODS
from rrd_hf.models import build_model

torch.set_num_threads(1)


def make(tmp_path, method, teacher="resnet14", **overrides):
    torch.manual_seed(0)
    student, teacher_model = build_model("resnet8", 4), build_model(teacher, 4)
    values = dict(output_dir=str(tmp_path / method), max_steps=3, per_device_train_batch_size=8, memory_size=16,
                  rrd_weight=0.0, distill_method=method, learning_rate=0.05, optim="sgd", logging_steps=1,
                  use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", seed=0,
                  init_epochs=1 if METHODS[method].has_init_stage else None)
    values.update(overrides)
    return RRDTrainer(model=student, teacher_model=teacher_model, args=RRDConfig(**values),
                      train_dataset=TinyImageDataset(32, num_labels=4, size=32, with_index=True))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_through_the_trainer(tmp_path, method):
    trainer = make(tmp_path, method)
    module = trainer.methods[method]
    teacher_before = {k: v.clone() for k, v in trainer.teacher.model.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainable_before = {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3
    if module.main_stage_loss:
        values = [log[f"loss_{method}"] for log in logs]
        assert all(torch.isfinite(torch.tensor(values)))
        total = logs[-1]["loss_ce"] * trainer.args.ce_weight + logs[-1][f"loss_{method}"] * trainer.loss_terms[-1].weight
        assert logs[-1]["loss"] == pytest.approx(total, rel=1e-3, abs=1e-5)
    else:  # AB and FSP: RepDistiller trains them only in the init stage
        assert all(f"loss_{method}" not in log for log in logs)
    if module.init_stage is not None:  # init_epochs=1 also turns FitNet's hint stage on
        assert [log["init_stage_epoch"] for log in trainer.state.log_history if "init_stage_loss" in log] == [1]
    for name, value in trainer.teacher.model.state_dict().items():
        torch.testing.assert_close(value, teacher_before[name], msg=f"teacher {name} changed")
    assert any(not torch.equal(v, student_before[k]) for k, v in trainer.model.state_dict().items())
    if module.main_stage_loss:  # every trainable part got a gradient in the last step (DDP needs that too)
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    changed = [n for n, v in module.named_parameters() if n in trainable_before and not torch.equal(v, trainable_before[n])]
    assert changed or not trainable_before, f"no parameter of {method} was trained"
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in module.parameters() if p.requires_grad)


def test_crd_plus_kd_and_rrd_plus_dkd_combine(tmp_path):
    crd_kd = make(tmp_path, "crd", kd_weight=1.0)
    crd_kd.train()
    assert {"loss_ce", "loss_kd", "loss_crd"} <= set(crd_kd.state.log_history[0])
    rrd_dkd = make(tmp_path, "dkd", rrd_weight=1.0)
    rrd_dkd.train()
    assert {"loss_ce", "loss_rrd", "loss_dkd"} <= set(rrd_dkd.state.log_history[0])
    assert set(rrd_dkd.methods) == {"rrd", "dkd"}


@pytest.mark.parametrize("method", ["crd", "ft"])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, method):
    options = dict(max_steps=6, save_strategy="steps", save_steps=3)
    full = make(tmp_path / "full", method, **options)
    full.train()
    part = make(tmp_path / "part", method, **options)
    part.add_callback(StopAt(3))
    part.train()
    checkpoint = tmp_path / "part" / method / "checkpoint-3"
    assert (checkpoint / DISTILL_STATE_NAME).is_file()
    resumed = make(tmp_path / "part", method, **options)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.init_stage_history == []  # the init stage is part of the checkpoint, not run again
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=f"student {name}")
    for name, value in full.methods.state_dict().items():
        torch.testing.assert_close(resumed.methods.state_dict()[name], value, msg=name)


def test_unknown_method_and_missing_preact_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown distillation method 'nope'"):
        RRDConfig(output_dir=str(tmp_path), distill_method="nope")
    import transformers
    from transformers import AutoModelForImageClassification

    hf = AutoModelForImageClassification.from_config(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4))
    with pytest.raises(ValueError, match="pre-activation"):
        RRDTrainer(model=hf, teacher_model=build_model("resnet8", 4),
                   args=RRDConfig(output_dir=str(tmp_path), distill_method="ab", rrd_weight=0.0, use_cpu=True,
                                  report_to="none"),
                   train_dataset=TinyImageDataset(8, num_labels=4, size=32))


def test_feature_methods_on_models_without_hidden_states_use_forward_hooks(tmp_path):
    # tests/helpers' TinyConv returns no hidden_states: name its stem and stage instead.
    args = RRDConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, rrd_weight=0.0,
                     distill_method="at", student_hidden_modules=["conv1", "conv2"],
                     teacher_hidden_modules=["conv1", "conv2"], use_cpu=True, report_to="none", logging_steps=1)
    trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2), args=args,
                         train_dataset=TinyImageDataset(16, size=8))
    trainer.train()
    assert all(torch.isfinite(torch.tensor(log["loss_at"])) for log in trainer.state.log_history if "loss" in log)
    with torch.no_grad():
        out = trainer.model(pixel_values=TinyImageDataset(2, size=8).images)
    outputs = trainer.student_reader.read(out)
    assert [tuple(h.shape) for h in outputs.hidden_states] == [(2, 8, 8, 8), (2, 16, 4, 4), (2, 16)]


def test_hf_cnn_hidden_states_get_the_pooled_vector_appended(tmp_path):
    import transformers
    from transformers import AutoModelForImageClassification

    def resnet(seed):
        torch.manual_seed(seed)
        return AutoModelForImageClassification.from_config(transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4))

    args = RRDConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, rrd_weight=0.0,
                     distill_method="fitnet", use_cpu=True, report_to="none", logging_steps=1)
    trainer = RRDTrainer(model=resnet(1), teacher_model=resnet(2), args=args,
                         train_dataset=TinyImageDataset(16, num_labels=4, size=32))
    trainer.train()
    assert all(torch.isfinite(torch.tensor(log["loss_fitnet"])) for log in trainer.state.log_history if "loss" in log)
    with torch.no_grad():
        out = trainer.model(pixel_values=torch.randn(2, 3, 32, 32), output_hidden_states=True)
    hidden = trainer.student_reader.read(out).hidden_states
    assert len(hidden) == len(out.hidden_states) + 1 and hidden[-1].shape == (2, 16)
