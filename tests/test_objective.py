"""The objective as data: any list of registered methods, a method defined outside rrd_hf, the shorthand fields, and
checkpoints written before every term was a method."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import StopAt, TinyImageDataset, tiny_model
from rrd_hf import METHODS, DistillationMethod, RRDConfig, RRDTrainer, register_method, resolve_loss_terms
from rrd_hf.training.checkpoints import COMPLETE_MARKER, DISTILL_STATE_NAME, LEGACY_STATE_NAME


def config(tmp_path, **values):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, memory_size=16,
                logging_steps=1, learning_rate=0.05, optim="sgd", use_cpu=True, report_to="none", disable_tqdm=True,
                save_strategy="no", seed=0)
    return RRDConfig(**{**base, **values})


def trainer_for(args, n=32):
    return RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2), args=args,
                      train_dataset=TinyImageDataset(n, with_index=True))


# A method written the way README tells users to: one class and one registration line (done in the fixture below,
# so that the registry other tests see stays the library's).
class LogitMSE(DistillationMethod):
    """Mean squared difference of the logits, with a trainable temperature-like scale."""

    name = "test_logit_mse"
    default_weight = 0.5

    def __init__(self, context, scale: float = 1.0):
        super().__init__(context)
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

    def forward(self, student, teacher, index=None, labels=None):
        return (self.scale * student.logits.float() - teacher.logits.detach().float()).pow(2).mean()


@pytest.fixture
def logit_mse():
    register_method(LogitMSE)
    yield LogitMSE
    del METHODS[LogitMSE.name]


def test_a_method_defined_outside_rrd_hf_trains_through_the_trainer(tmp_path, logit_mse):
    assert METHODS["test_logit_mse"] is LogitMSE
    trainer = trainer_for(config(tmp_path, distill_method="test_logit_mse", distill_kwargs={"scale": 2.0}))
    assert [(t.name, t.weight, t.kwargs) for t in trainer.loss_terms] == [("test_logit_mse", 0.5, {"scale": 2.0})]
    scale = trainer.methods["test_logit_mse"].scale
    assert scale.item() == 2.0
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs and all("loss_test_logit_mse" in log and "loss_rrd" not in log for log in logs)
    assert scale.item() != 2.0  # its parameter is in the optimizer
    total = logs[-1]["loss_ce"] + 0.5 * logs[-1]["loss_test_logit_mse"]
    assert logs[-1]["loss"] == pytest.approx(total, rel=1e-4)


def test_three_terms_together_each_logged_on_its_own(tmp_path):
    args = config(tmp_path, distill_terms=[{"method": "rrd"}, {"method": "kd", "weight": 1.0},
                                           {"method": "crd", "weight": 0.8, "kwargs": {"num_negatives": 16}}])
    trainer = trainer_for(args)
    assert set(trainer.methods) == {"rrd", "kd", "crd"}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    for log in logs:
        assert {"loss_ce", "loss_rrd", "loss_kd", "loss_crd"} <= set(log)
        expected = log["loss_ce"] + log["loss_rrd"] + log["loss_kd"] + 0.8 * log["loss_crd"]
        assert log["loss"] == pytest.approx(expected, rel=1e-4)
    assert trainer.methods["crd"].memory.updates == 3 and int(trainer.methods["rrd"].memory.num_updates) == 3


def test_the_same_method_twice_with_its_own_name_and_options(tmp_path):
    args = config(tmp_path, distill_terms=[{"method": "kd", "weight": 0.5, "kwargs": {"temperature": 4.0}},
                                           {"method": "kd", "name": "kd_t1", "weight": 0.5, "kwargs": {"temperature": 1.0}}])
    trainer = trainer_for(args)
    trainer.train()
    assert {"loss_kd", "loss_kd_t1"} <= set(trainer.state.log_history[0])
    with pytest.raises(ValueError, match="more than one term named \\['kd'\\]"):
        config(tmp_path, distill_terms=[{"method": "kd"}, {"method": "kd"}])


def test_shorthand_fields_map_onto_the_terms_and_crd_alone_is_crd():
    def terms(**fields):
        return [(t.name, t.weight) for t in resolve_loss_terms(fields)[1]]

    assert terms() == [("rrd", 1.0)]
    assert terms(kd_weight=1.0) == [("kd", 1.0), ("rrd", 1.0)]  # RRD+KD, the paper's recommended run
    assert terms(distill_method="crd") == [("crd", 0.8)]  # CRD alone: no silent RRD+CRD
    assert terms(distill_method="crd", kd_weight=1.0) == [("kd", 1.0), ("crd", 0.8)]
    assert terms(distill_method="dkd", rrd_weight=1.0) == [("rrd", 1.0), ("dkd", 1.0)]
    assert terms(rrd_weight=0.0) == []  # cross-entropy alone
    # saved arguments of a run before this change (every weight recorded) resolve to what that run trained
    old = dict(ce_weight=1.0, kd_weight=0.0, rrd_weight=1.0, distill_method="dkd", distill_weight=None,
               student_temperature=0.04, teacher_temperature=0.1, enqueue="after", memory_type="fifo",
               memory_size=16384, embedding_dim=128, memory_momentum=0.5)
    ce, resolved = resolve_loss_terms(old)
    assert (ce, [(t.name, t.weight) for t in resolved]) == (1.0, [("rrd", 1.0), ("dkd", 1.0)])
    assert resolved[0].kwargs["student_temperature"] == 0.04


@pytest.mark.parametrize("values,message", [
    (dict(distill_method="crd", distill_kwargs={"num_negative": 8}),
     "crd does not take 'num_negative'; its options .* num_negatives=16384"),
    (dict(distill_kwargs={"beta": 8}), "distill_kwargs=.* is set but no distill_method"),
    (dict(init_epochs=5), "init_epochs=5 is set but no term of the objective has an initialisation stage"),
    (dict(distill_terms=[{"method": "rrd"}], kd_weight=1.0), "the objective is given twice: distill_terms and kd_weight"),
    (dict(distill_terms=[{"metod": "rrd"}]), "needs a 'method'"),
    (dict(distill_terms='[{"method": "rrd", "wieght": 2}]'), "unknown keys \\['wieght'\\]"),
    (dict(distill_method="nope"), "unknown distillation method 'nope': choose one of"),
])
def test_objective_mistakes_fail_at_construction_with_what_to_do(tmp_path, values, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **values)


def test_checkpoints_written_before_the_change_still_resume(tmp_path):
    """A checkpoint as the previous version wrote it: the methods' state in rrd_state.safetensors, no marker."""
    def make(out):
        args = config(out, max_steps=6, save_strategy="steps", save_steps=3, kd_weight=1.0)
        return trainer_for(args, n=48)

    full = make(tmp_path / "full")
    full.train()
    part = make(tmp_path / "part")
    part.add_callback(StopAt(3))
    part.train()
    checkpoint = tmp_path / "part" / "out" / "checkpoint-3"
    state = load_file(checkpoint / DISTILL_STATE_NAME)
    assert set(state) >= {"rrd.student_head.weight", "rrd.memory.keys"}  # the same keys the old version wrote
    os.remove(checkpoint / DISTILL_STATE_NAME)
    os.remove(checkpoint / COMPLETE_MARKER)
    save_file(state, checkpoint / LEGACY_STATE_NAME)
    resumed = make(tmp_path / "part")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    for name, value in full.methods.state_dict().items():
        assert torch.equal(resumed.methods.state_dict()[name], value), name
