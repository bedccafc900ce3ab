"""Full backward hooks on the zoo's models: gradient-inspection tools hook every BatchNorm and ReLU module.

A full backward hook hands the module's output on as a view that autograd watches; anything that later overwrites
that output in place (an in-place ReLU or residual addition) makes ``backward()`` fail. These tests run the hooks
on every zoo network, and on checkpoints loaded from their shipped remote code in a process without rrd_hf, since
that code is what users of a saved model run.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _models_helpers import FAMILY_REPS
from rrd_hf.models import MODEL_NAMES, build_model

NUM_LABELS = 10
# Activation modules a gradient tool would hook. Families that apply ReLU functionally have none; their BatchNorm
# hooks sit right before those ReLUs.
ACTIVATIONS = (nn.ReLU, nn.ReLU6)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread, as in tests/test_models.py: tiny convs gain nothing from more on a shared runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _hook_and_backpropagate(model: nn.Module, preact: bool) -> dict:
    """Register full backward hooks on every BatchNorm and activation module, run a training step's forward and
    backward (cross-entropy, plus the hidden states with `preact` as a feature-distillation loss would use them),
    and say which hooked modules were reached and whether every gradient is finite."""
    calls: dict[str, int] = {}

    def hook(name):
        def record(module, grad_input, grad_output):
            calls[name] = calls.get(name, 0) + 1
            assert all(g is None or torch.isfinite(g).all() for g in grad_output), name

        return record

    hooked = [name for name, module in model.named_modules()
              if isinstance(module, (nn.modules.batchnorm._BatchNorm, *ACTIVATIONS))]
    handles = [model.get_submodule(name).register_full_backward_hook(hook(name)) for name in hooked]
    try:
        model.train().zero_grad(set_to_none=True)
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        labels = torch.tensor([1, 2])
        out = model(pixel_values=x, output_hidden_states=preact, preact=preact)
        loss = F.cross_entropy(out.logits, labels)
        if preact:
            loss = loss + sum(h.square().mean() for h in out.hidden_states)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    grads = [p.grad for p in model.parameters()]
    return {
        "n_batch_norms": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        "not_reached": [name for name in hooked if name not in calls],
        "grads_finite": all(g is not None and bool(torch.isfinite(g).all()) for g in grads),
        "loss_finite": bool(torch.isfinite(loss)),
    }


@pytest.mark.parametrize("name", list(MODEL_NAMES))
def test_full_backward_hooks_on_batch_norms_and_relus_backpropagate(name):
    """Every zoo model backpropagates with a full backward hook on each BatchNorm and ReLU module, and every hook
    is reached: nothing overwrites a hooked module's output in place. Checked with and without `preact`."""
    model = build_model(name, num_labels=NUM_LABELS)
    for preact in (False, True):
        report = _hook_and_backpropagate(model, preact)
        assert report["n_batch_norms"] > 0
        assert report["not_reached"] == [], (preact, report["not_reached"][:5])
        assert report["grads_finite"] and report["loss_finite"], preact


# Runs in `python -I`: every rrd_hf import fails, so the checkpoints load from their shipped code alone.
_REMOTE_SCRIPT = r"""
import json, sys


class _HideRrdHf:
    def find_spec(self, name, path=None, target=None):
        if name == "rrd_hf" or name.startswith("rrd_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
        return None


sys.meta_path.insert(0, _HideRrdHf())
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForImageClassification

torch.set_num_threads(1)
report = {}
for name, folder in json.loads(sys.argv[1]).items():
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    calls = {}

    def hook(key):
        def record(module, grad_input, grad_output):
            calls[key] = calls.get(key, 0) + 1
        return record

    hooked = [key for key, module in model.named_modules()
              if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6))]
    for key in hooked:
        model.get_submodule(key).register_full_backward_hook(hook(key))
    model.train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = model(pixel_values=x, preact=True)
    loss = F.cross_entropy(out.logits, torch.tensor([1, 2])) + sum(h.square().mean() for h in out.hidden_states)
    loss.backward()
    report[name] = {
        "class_module": type(model).__module__,
        "n_batch_norms": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        "not_reached": [key for key in hooked if key not in calls],
        "grads_finite": all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters()),
    }
report["_rrd_hf_modules_loaded"] = sorted(m for m in sys.modules if m == "rrd_hf" or m.startswith("rrd_hf."))
print("RESULT_JSON=" + json.dumps(report))
"""


def test_full_backward_hooks_on_the_shipped_remote_code(tmp_path):
    """The modeling files `save_pretrained` ships run in users' processes without rrd_hf: loaded there with
    ``trust_remote_code=True``, every family backpropagates with full backward hooks on its BatchNorms and ReLUs."""
    folders = {}
    for name, overrides in FAMILY_REPS.items():
        folders[name] = str(tmp_path / name)
        build_model(name, num_labels=NUM_LABELS, **overrides).save_pretrained(folders[name])
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf_home"),  # a fresh transformers_modules cache
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run([sys.executable, "-I", "-c", _REMOTE_SCRIPT, json.dumps(folders)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT_JSON=")]
    assert lines, proc.stdout[-3000:]
    report = json.loads(lines[-1][len("RESULT_JSON="):])
    assert report.pop("_rrd_hf_modules_loaded") == []
    assert set(report) == set(FAMILY_REPS)
    for name, result in report.items():
        assert result["class_module"].startswith("transformers_modules."), (name, result["class_module"])
        assert result["n_batch_norms"] > 0, name
        assert result["not_reached"] == [] and result["grads_finite"], (name, result)
