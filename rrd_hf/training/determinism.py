"""`full_determinism`'s process-wide settings, applied for the duration of a block and then put back.

transformers applies them (`enable_full_determinism`) when a `Trainer` is built with `full_determinism=True` and
leaves them set: deterministic algorithms for every later torch call of the program, cuDNN's benchmark off, and
environment variables that every later CUDA/cuBLAS start-up reads. A library must leave its caller's process as it
found it, so `RRDTrainer` applies them while it trains and restores what was there before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["determinism_settings"]

#: The environment variables `transformers.trainer_utils.enable_full_determinism` sets.
_ENVIRONMENT = ("CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "ASCEND_LAUNCH_BLOCKING", "HCCL_DETERMINISTIC",
                "FLASH_ATTENTION_DETERMINISTIC")


def _apply() -> None:
    # The settings of transformers' enable_full_determinism, without its reseeding (the Trainer seeds itself).
    os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    os.environ["ASCEND_LAUNCH_BLOCKING"] = "1"
    os.environ["HCCL_DETERMINISTIC"] = "1"
    os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@contextmanager
def determinism_settings(enabled: bool = False, *, restore: bool = True) -> Iterator[None]:
    """Inside the block: full determinism's settings when `enabled`; after it, the settings found on entry
    (when `restore`), whatever the block changed."""
    environment = {name: os.environ.get(name) for name in _ENVIRONMENT}
    algorithms = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        _apply()
    try:
        yield
    finally:
        if restore:
            for name, value in environment.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
