"""Device checks of docs/reproducibility.md for every distillation method; prints and writes one JSON report.

    python tests/scripts/cuda_determinism.py [OUT_DIR]

On CUDA it checks what a CPU cannot show:
* `pooling`: under `torch.use_deterministic_algorithms(True)`, the backward of `pool_to_common_size` with sizes that
  divide runs (integer-kernel pooling), and adaptive pooling's backward raises (the reason for the choice);
* `deterministic`: with deterministic algorithms on (as `full_determinism=True` sets them), two runs of two training
  steps of each method (student forward and backward included) from the same state give bitwise equal gradients
  and method state; CRD with uniform negatives (repeated indices) included;
* `syncs`: each method's forward and backward with `torch.cuda.set_sync_debug_mode("error")`, after a warm-up step;
* `crd_uniform_default_mode`: whether CRD's gradient with uniform negatives varies over repeated backward passes
  without deterministic algorithms (informative: atomic additions may or may not reorder).
On CPU the same steps run (a dry run of the script); the CUDA-only entries are reported as skipped.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # before any cuBLAS handle, as full_determinism sets it
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402

from rrd_hf.methods import METHODS, Activations, MethodContext, build_method  # noqa: E402
from rrd_hf.methods.feature import pool_to_common_size  # noqa: E402
from rrd_hf.models import build_model  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH, SAMPLES, CLASSES = 16, 64, 10


def models(name: str):
    """resnet8 from vgg8, whose stage maps are half the student's size (so AT, NST, VID and FT pool); AB pairs the
    stages one to one and FSP needs equal channel counts: resnet8 from resnet32 for those two."""
    torch.manual_seed(0)
    teacher = "resnet32" if name in ("ab", "fsp") else "vgg8"
    return build_model("resnet8", CLASSES).to(DEVICE), build_model(teacher, CLASSES).to(DEVICE).eval()


def batch(step: int):
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(BATCH, 3, 32, 32, generator=generator)
    index = torch.randperm(SAMPLES, generator=generator)[:BATCH]
    return x.to(DEVICE), index.to(DEVICE), (index % CLASSES).to(DEVICE)


def activations(model, x, preact):
    return Activations.from_model_output(model(pixel_values=x, output_hidden_states=True, preact=preact))


def build(name, student, teacher, **kwargs):
    cls = METHODS[name]
    x, _, _ = batch(0)
    with torch.no_grad():
        student.eval()
        s, t = activations(student, x, cls.needs_preact), activations(teacher, x, cls.needs_preact)
        student.train()
    labels = (torch.arange(SAMPLES) % CLASSES).to(DEVICE)
    context = MethodContext(s.detach(), t.detach(), num_samples=SAMPLES, dataset_labels=labels, seed=0, epoch=1)
    with torch.random.fork_rng(devices=[DEVICE] if DEVICE.type == "cuda" else []):
        torch.manual_seed(0)
        return build_method(name, context, **kwargs).to(DEVICE).train()


def two_steps(name, **kwargs):
    """Gradients of the student and the method after two steps, and the method's state (fresh models each call)."""
    student, teacher = models(name)
    method = build(name, student, teacher, **kwargs)
    cls = METHODS[name]
    for step in (1, 2):
        student.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
        x, index, labels = batch(step)
        with torch.no_grad():
            t = activations(teacher, x, cls.needs_preact)
        loss = method(activations(student, x, cls.needs_preact), t, index=index, labels=labels)
        loss.backward()
    grads = {f"student.{n}": p.grad for n, p in student.named_parameters() if p.grad is not None}
    grads.update({f"method.{n}": p.grad for n, p in method.named_parameters() if p.grad is not None})
    return grads, {k: v.clone() for k, v in method.state_dict().items()}, float(loss.detach())


def check_pooling():
    if DEVICE.type != "cuda":
        return "skipped (CUDA only)"
    torch.use_deterministic_algorithms(True)
    try:
        f_s = torch.randn(4, 8, 8, 8, device=DEVICE, requires_grad=True)
        pooled, _ = pool_to_common_size(f_s, torch.randn(4, 8, 4, 4, device=DEVICE))
        pooled.sum().backward()
        integer = "ok"
        try:
            torch.nn.functional.adaptive_avg_pool2d(f_s, (4, 4)).sum().backward()
            adaptive = "did not raise"
        except RuntimeError as error:
            adaptive = f"raised: {str(error)[:120]}"
        return {"integer_kernel_backward": integer, "adaptive_backward": adaptive}
    finally:
        torch.use_deterministic_algorithms(False)


def check_deterministic():
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    results = {}
    cases = [(name, {}) for name in sorted(METHODS)] + [("crd_uniform", {"negatives": "uniform"})]
    try:
        for label, kwargs in cases:
            name = "crd" if label == "crd_uniform" else label
            try:
                a, state_a, loss_a = two_steps(name, **kwargs)
                b, state_b, loss_b = two_steps(name, **kwargs)
                equal = (a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                         and all(torch.equal(state_a[k], state_b[k]) for k in state_a) and loss_a == loss_b)
                results[label] = "bitwise equal" if equal else "DIFFERENT"
            except RuntimeError as error:
                results[label] = f"raised: {str(error)[:160]}"
    finally:
        torch.use_deterministic_algorithms(False)
    return results


def check_syncs():
    if DEVICE.type != "cuda":
        return "skipped (CUDA only)"
    results = {}
    for name in sorted(METHODS):
        student, teacher = models(name)
        method = build(name, student, teacher)
        cls = METHODS[name]
        outputs = []
        for step in (1, 2):  # step 1 may take one-time branches (CRD's normalisers); step 2 is checked
            x, index, labels = batch(step)
            with torch.no_grad():
                s = activations(student, x, cls.needs_preact).detach()
                t = activations(teacher, x, cls.needs_preact).detach()
            for tensor in (s.logits, s.features, *s.hidden_states):
                tensor.requires_grad_()
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error" if step == 2 else "default")
            try:
                method(s, t, index=index, labels=labels).backward()
                outputs.append("ok")
            except RuntimeError as error:
                outputs.append(f"sync: {str(error)[:160]}")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        results[name] = outputs[-1]
    return results


def check_crd_uniform_default_mode(repeats: int = 5):
    if DEVICE.type != "cuda":
        return "skipped (CUDA only)"
    grads = [two_steps("crd", negatives="uniform")[0] for _ in range(repeats)]
    differing = sum(any(not torch.equal(g[k], grads[0][k]) for k in grads[0]) for g in grads[1:])
    return f"{differing} of {repeats - 1} repeats differ bitwise from the first"


def main(out_dir: str | None) -> None:
    warnings.filterwarnings("ignore", message=".*stage maps")
    report = {
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "pooling": check_pooling(),
        "deterministic": check_deterministic(),
        "syncs": check_syncs(),
        "crd_uniform_default_mode": check_crd_uniform_default_mode(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "cuda_determinism.json"), "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT"))
