"""Bitwise reproducibility on CPU (docs/reproducibility.md): two runs with one seed, and a run resumed from a
checkpoint inside an epoch, end with identical student and method state, to the bit (`torch.equal`, no tolerance).

CRD draws its negatives and updates its banks, FT runs an init stage before its main stage, RRD keeps a FIFO memory:
each of those is state a resume must restore exactly.
"""

import pytest
import torch

from helpers import StopAt, TinyImageDataset
from rrd_hf import RRDConfig, RRDTrainer
from rrd_hf.models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")


def run(tmp_path, objective, stop_at=None, resume=None):
    torch.manual_seed(0)
    terms = {"rrd": dict(rrd_weight=1.0, memory_size=16)}.get(
        objective, dict(rrd_weight=0.0, distill_method=objective, init_epochs=1 if objective == "ft" else None))
    # 36 samples / batch 8: 4 full steps and a short one per epoch; the checkpoint at step 3 sits inside an epoch.
    args = RRDConfig(output_dir=str(tmp_path), max_steps=7, save_strategy="steps", save_steps=3,
                     per_device_train_batch_size=8, learning_rate=0.05, optim="sgd", optim_args="momentum=0.9",
                     weight_decay=5e-4, logging_steps=1, use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
                     **terms)
    trainer = RRDTrainer(model=build_model("resnet8", 4), teacher_model=build_model("resnet14", 4), args=args,
                         train_dataset=TinyImageDataset(36, num_labels=4, size=32, with_index=True))
    if stop_at is not None:
        trainer.add_callback(StopAt(stop_at))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def differing(a, b) -> list[str]:
    names = [f"student.{k}" for k, v in a.model.state_dict().items() if not torch.equal(v, b.model.state_dict()[k])]
    return names + [k for k, v in a.methods.state_dict().items() if not torch.equal(v, b.methods.state_dict()[k])]


@pytest.mark.parametrize("objective", ["rrd", "crd", "ft"])
def test_runs_and_resumed_runs_are_bitwise_identical_on_cpu(tmp_path, objective):
    first = run(tmp_path / "first", objective)
    second = run(tmp_path / "second", objective)
    assert differing(first, second) == []
    run(tmp_path / "part", objective, stop_at=3)
    resumed = run(tmp_path / "part", objective, resume=str(tmp_path / "part" / "checkpoint-3"))
    assert resumed.state.global_step == 7
    assert differing(first, resumed) == []
    losses = [[log["loss"] for log in t.state.log_history if "loss" in log and log["step"] > 3] for t in (first, resumed)]
    assert losses[0] == losses[1]
