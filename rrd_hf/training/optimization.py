"""What RRDTrainer changes about Trainer's optimizer and schedule: the CIFAR step decay and fused steps."""

from __future__ import annotations

import torch

__all__ = ["multistep_schedule", "use_fused_step"]


def multistep_schedule(optimizer, decay_epochs: list[int], rate: float, steps_per_epoch: int | None):
    """The benchmark's step decay (× `rate` at the start of each listed epoch), in optimizer steps."""
    if steps_per_epoch is None:
        raise RuntimeError("the epoch length is unknown: lr_decay_epochs needs a train dataloader with a length.")
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [epoch * steps_per_epoch for epoch in decay_epochs], gamma=rate)


def use_fused_step(optimizer) -> bool:
    """Switch torch SGD/Adam/AdamW to their fused step where supported: one kernel per step, and a `found_inf`
    that skips the step on the device (see `rrd_hf.training.guard`). Returns whether the optimizer now honours `found_inf`.
    Fused and multi-tensor SGD give bitwise the same weights (checked on CPU)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if type(optimizer) not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        return False
    try:  # torch's own list; the fallback is what torch 2.4-2.13 support
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
    except ImportError:
        supported = ["cpu", "cuda"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params or any(p.device.type not in supported or not p.is_floating_point() for p in params):
        return False
    if any(group.get("differentiable") for group in optimizer.param_groups):
        return False
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    return True
