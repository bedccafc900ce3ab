"""`embeddings · memoryᵀ` against a constant memory of keys, through oneDNN's inner product on CPU.

RRD's and CRD's largest products are a (B, D) batch of embeddings times a (K, D) memory (K = 16384 keys, or the
dataset size for CRD; D = 128), and, in the backward, the (B, K) gradient times the same memory. On a CPU,
PyTorch gives float32 matrix products to MKL, which on AMD processors runs its AVX2 code; oneDNN, the library
PyTorch's CPU convolutions already use, runs the same products with AVX-512 where the processor has it. On this
project's first CPU (AMD EPYC, Zen 5, 2 cores), at B 64, K 16384, D 128, each product took 0.3–0.4× of MKL's time and
the whole RRD loss, forward and backward, 0.55–0.59× (`python benchmarks/rrd_loss_time.py`, which also runs it
with its products forced onto each path). The values are the same up to float rounding: every entry is the same sum of D (forward) or K
(backward) products, added in another order.

MKL chooses its code by the processor's vendor, not by its instruction sets: on Intel processors it runs AVX-512
and is as fast as oneDNN or faster (an Intel Xeon with AVX-512 and AMX: the RRD loss 1.08–1.10× slower on oneDNN). So the
oneDNN path is taken on AMD processors only (`onednn_preferred`); the environment variable
`RRD_HF_CPU_MEMORY_PRODUCT` = `onednn` | `matmul` | `auto` (the default) overrides that choice.

Everywhere else (CUDA, a build without oneDNN, `torch.backends.mkldnn.enabled = False`, another dtype, a memory
that needs a gradient) it is the plain `embeddings @ memory.t()`.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
from torch.autograd.function import once_differentiable

__all__ = ["memory_similarities", "onednn_inner_product_available", "onednn_preferred", "PRODUCT_ENV"]

#: Environment variable: `onednn`, `matmul` or `auto` (oneDNN on AMD processors, where MKL takes its AVX2 code).
PRODUCT_ENV = "RRD_HF_CPU_MEMORY_PRODUCT"


def _inner_product(inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`inputs @ weight.t()` by oneDNN (the op PyTorch's compiler uses for CPU linear layers)."""
    return torch.ops.mkldnn._linear_pointwise(inputs, weight, None, "none", [], "")


@functools.cache
def onednn_inner_product_available() -> bool:
    """Whether this PyTorch build has oneDNN's inner product and it agrees with `torch.mm` (checked once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        inputs, weight = torch.randn(5, 7, generator=generator), torch.randn(11, 7, generator=generator)
        grad = torch.randn(5, 11, generator=generator)
        return bool(torch.allclose(_inner_product(inputs, weight), inputs @ weight.t(), rtol=1e-5, atol=1e-5)
                    and torch.allclose(_inner_product(grad, weight.t()), grad @ weight, rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):  # an op missing or refused in this build
        return False


@functools.cache
def cpu_vendor() -> str:
    """The processor's vendor string (`AuthenticAMD`, `GenuineIntel`, ...), or '' when it cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def onednn_preferred() -> bool:
    """Whether float32 CPU products with a memory go to oneDNN: `RRD_HF_CPU_MEMORY_PRODUCT`, else AMD processors."""
    return _preferred(os.environ.get(PRODUCT_ENV, "auto"), cpu_vendor())


@functools.cache
def _preferred(setting: str, vendor: str) -> bool:
    """The decision for one setting and vendor, made once (three products per training step ask)."""
    choice = setting.strip().lower() or "auto"
    if choice not in ("auto", "onednn", "matmul"):
        raise ValueError(f"{PRODUCT_ENV}={setting!r} is not one of auto, onednn, matmul: unset it "
                         "(auto: oneDNN on AMD processors) or choose one of those.")
    if choice == "matmul" or not onednn_inner_product_available():
        return False
    return choice == "onednn" or "AMD" in vendor


class _MemoryProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(memory)  # replaced, never modified in place, by the memories' updates
        return _inner_product(embeddings, memory)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (memory,) = ctx.saved_tensors
        return _inner_product(grad.contiguous(), memory.t()), None


def memory_similarities(embeddings: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """`embeddings @ memory.t()`, shape (B, K); the gradient flows to `embeddings` only when `memory` is a constant."""
    fast = (
        embeddings.device.type == "cpu" and memory.device.type == "cpu"
        and embeddings.dtype == torch.float32 and memory.dtype == torch.float32
        and embeddings.dim() == 2 and memory.dim() == 2 and embeddings.shape[0] > 0
        and not memory.requires_grad
        and torch.backends.mkldnn.enabled and onednn_preferred()
    )
    if not fast:
        return embeddings @ memory.t()
    embeddings = embeddings.contiguous()
    if embeddings.requires_grad and torch.is_grad_enabled():
        return _MemoryProduct.apply(embeddings, memory)
    return _inner_product(embeddings, memory)
