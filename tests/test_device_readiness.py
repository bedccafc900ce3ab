"""What the first GPU run needs, checked on CPU: no host-device synchronisation in a training step on the fast path,
no nn.DataParallel, no fp16 where it would do nothing."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import TrainerCallback

from helpers import TinyImageDataset, tiny_model
from rrd_hf import RRDConfig, RRDTrainer

# Calls that make the host wait for the accelerator (on CPU they are free, so they are counted instead): reading a
# value back, and ops whose output size depends on the data.
_SYNCS = {
    "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero", "unique",
    "unique_consecutive", "masked_select", "equal", "allclose", "argwhere", "_local_scalar_dense", "repeat_interleave",
}


class SyncCounter(TorchFunctionMode):
    """Counts the synchronising calls made while `active` (a TorchFunctionMode sees every tensor op in Python)."""

    def __init__(self):
        super().__init__()
        self.active = False
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.active:
            name = getattr(func, "__name__", str(func))
            boolean_index = name == "__getitem__" and any(
                isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in (args[1:] if len(args) > 1 else ()))
            if name in _SYNCS or boolean_index:
                self.calls.append(name)
        return func(*args, **kwargs)


class CountSteps(TrainerCallback):
    """Switches the counter on for each optimizer step: forward, backward, methods, optimizer (not logging, not I/O)."""

    def __init__(self, counter):
        self.counter = counter

    def on_step_begin(self, args, state, control, **kwargs):
        self.counter.active = True

    def on_step_end(self, args, state, control, **kwargs):
        self.counter.active = False


def fast_path_trainer(tmp_path, **values):
    from rrd_hf.data import DeviceAugmentation, InMemoryImageDataset

    data = TinyImageDataset(64, size=8)
    images = ((data.images - data.images.min()) / (data.images.max() - data.images.min()) * 255).to(torch.uint8)
    train = InMemoryImageDataset(images, data.labels, stats="cifar10")
    base = dict(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, memory_size=32, kd_weight=1.0,
                learning_rate=0.05, optim="sgd", optim_args="momentum=0.9", logging_steps=100, save_strategy="no",
                use_cpu=True, report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0)
    return RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2),
                      args=RRDConfig(**{**base, **values}), train_dataset=train,
                      batch_transform=DeviceAugmentation("cifar10", seed=0))


@pytest.mark.parametrize("values", [{}, {"memory_type": "momentum"}, {"distill_method": "crd", "kd_weight": None,
                                                                      "distill_kwargs": {"num_negatives": 16}}])
def test_a_training_step_on_the_fast_path_never_waits_for_the_device(tmp_path, values):
    trainer = fast_path_trainer(tmp_path, **values)
    counter = SyncCounter()
    trainer.add_callback(CountSteps(counter))
    with counter:
        trainer.train()
    assert trainer.state.global_step == 6
    assert counter.calls == [], f"host syncs inside training steps: {sorted(set(counter.calls))}"


def test_the_counter_sees_a_sync_when_there_is_one(tmp_path):
    trainer = fast_path_trainer(tmp_path, optim="rmsprop")  # no fused step: the NaN check reads its flag every step
    counter = SyncCounter()
    trainer.add_callback(CountSteps(counter))
    with counter:
        trainer.train()
    assert "__bool__" in counter.calls


def test_several_gpus_in_one_process_are_refused_with_the_launch_command(tmp_path, monkeypatch):
    monkeypatch.setattr(RRDConfig, "n_gpu", property(lambda self: 2))
    with pytest.raises(ValueError, match="nn.DataParallel.*accelerate launch --multi_gpu"):
        RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2),
                   args=RRDConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
                   train_dataset=TinyImageDataset(16, with_index=True))


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2),
                   args=RRDConfig(output_dir=str(tmp_path), use_cpu=True, fp16=True, report_to="none"),
                   train_dataset=TinyImageDataset(16, with_index=True))


def test_the_frozen_teacher_is_cast_once_for_bf16(tmp_path):
    trainer = fast_path_trainer(tmp_path, bf16=True, max_steps=1)
    assert trainer.teacher.model.conv1.weight.dtype == torch.bfloat16 and trainer.teacher.model.bn1.weight.dtype == torch.float32
    assert trainer.model.conv1.weight.dtype == torch.float32  # the student keeps float32 master weights
    trainer.train()
