"""The objective's methods, built for the models and the data of a run, and wrapped for data parallelism."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..methods.objective import LossTerm
from ..data.indexing import index_slots, labels_by_index
from ..methods import MethodContext, build_method, method_class

__all__ = ["build_objective", "data_parallel"]


def build_objective(terms: list[LossTerm], context: MethodContext, train_dataset) -> nn.ModuleDict:
    """One module per term, keyed by its name. Completes `context` with what the methods ask of the training data
    (one slot per dataset index, the label of every index) and builds each term from the seed, not the global RNG,
    so that every process and every run with that seed gets the same heads and memories."""
    classes = [method_class(term.method) for term in terms]
    if any(cls.uses_index(term.kwargs) or cls.needs_dataset_labels for cls, term in zip(classes, terms)):
        context.num_samples = index_slots(train_dataset)
        if any(cls.needs_dataset_labels for cls in classes) and context.num_samples:
            context.dataset_labels = labels_by_index(train_dataset, context.num_samples)
    methods = nn.ModuleDict()
    for term in terms:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            methods[term.name] = build_method(term.method, context, **term.kwargs)
    return methods


def data_parallel(method: nn.Module, num_processes: int) -> nn.Module:
    """`method` wrapped in DDP when it has trainable parameters and several processes train, so that their gradients
    are all-reduced with the student's. Memories are kept identical by gathering keys, not by DDP: buffers are not
    broadcast at every forward (`broadcast_buffers=False`; DDP's one broadcast when it wraps finds them identical
    already, as every process builds them from the same seed). Inputs are already on the device (device_ids=None:
    DDP does not move them)."""
    trainable = any(p.requires_grad for p in method.parameters())
    if not (trainable and num_processes > 1 and torch.distributed.is_initialized()):
        return method
    return DistributedDataParallel(method, device_ids=None, find_unused_parameters=False, broadcast_buffers=False)
