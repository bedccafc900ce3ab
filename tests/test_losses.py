"""The losses against independent naive computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from rrd_hf.methods import kd_loss, rrd_loss


def unit(*shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1).to(dtype)


def naive_rrd(student, teacher, memory, tau_s, tau_t):
    """Double loops over samples and memory slots in plain Python floats."""
    total = 0.0
    for s_i, t_i in zip(student.tolist(), teacher.tolist()):
        sims_s = [sum(a * b for a, b in zip(s_i, m)) / tau_s for m in memory.tolist()]
        sims_t = [sum(a * b for a, b in zip(t_i, m)) / tau_t for m in memory.tolist()]
        max_s, max_t = max(sims_s), max(sims_t)
        z_s = sum(math.exp(v - max_s) for v in sims_s)
        z_t = sum(math.exp(v - max_t) for v in sims_t)
        for v_s, v_t in zip(sims_s, sims_t):
            p_t = math.exp(v_t - max_t) / z_t
            log_p_s = v_s - max_s - math.log(z_s)
            total -= p_t * log_p_s
    return total / len(student)


@pytest.mark.parametrize("tau_s,tau_t", [(0.04, 0.1), (0.1, 0.02), (0.5, 0.5), (0.01, 0.01)])
def test_rrd_loss_matches_naive_loops(tau_s, tau_t):
    student, teacher, memory = unit(5, 8, seed=1), unit(5, 8, seed=2), unit(13, 8, seed=3)
    value = rrd_loss(student, teacher, memory, tau_s, tau_t)
    assert value.dtype == torch.float32 and value.dim() == 0
    assert value.item() == pytest.approx(naive_rrd(student, teacher, memory, tau_s, tau_t), rel=1e-4, abs=1e-4)


def test_gradient_reaches_only_the_student():
    student = unit(4, 6, seed=1).requires_grad_()
    teacher = unit(4, 6, seed=2).requires_grad_()
    memory = unit(9, 6, seed=3).requires_grad_()
    rrd_loss(student, teacher, memory, 0.04, 0.1).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert memory.grad is None


def test_gradient_matches_finite_differences():
    student = unit(3, 5, seed=4, dtype=torch.float64)
    teacher, memory = unit(3, 5, seed=5, dtype=torch.float64), unit(7, 5, seed=6, dtype=torch.float64)
    # The function computes in float32; compare its analytic gradient with central differences of the naive loop.
    s = student.clone().requires_grad_()
    rrd_loss(s, teacher, memory, 0.2, 0.1).backward()
    eps = 1e-5
    numeric = torch.zeros_like(student)
    for i in range(student.shape[0]):
        for j in range(student.shape[1]):
            plus, minus = student.clone(), student.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (naive_rrd(plus, teacher, memory, 0.2, 0.1) - naive_rrd(minus, teacher, memory, 0.2, 0.1)) / (2 * eps)
    torch.testing.assert_close(s.grad, numeric, rtol=1e-3, atol=1e-3)


def test_teacher_temperature_to_zero_with_own_key_gives_infonce():
    batch, dim, tau_s = 6, 32, 0.07
    student, teacher = unit(batch, dim, seed=1), unit(batch, dim, seed=2)
    others = unit(40, dim, seed=3)
    memory = torch.cat([others[:20], teacher, others[20:]])  # enqueue-before: own keys sit in the memory
    positives = torch.arange(20, 20 + batch)
    infonce = F.cross_entropy(student @ memory.t() / tau_s, positives)
    value = rrd_loss(student, teacher, memory, tau_s, 1e-4)
    assert value.item() == pytest.approx(infonce.item(), rel=1e-5)


def test_equal_distributions_give_teacher_entropy():
    teacher, memory = unit(5, 16, seed=7), unit(30, 16, seed=8)
    tau = 0.1
    value = rrd_loss(teacher.clone(), teacher, memory, tau, tau)
    p_t = torch.softmax(teacher.double() @ memory.double().t() / tau, dim=1)
    entropy = -(p_t * p_t.log()).sum(1).mean()
    assert value.item() == pytest.approx(entropy.item(), rel=1e-5)
    # ... and any other student is worse (H(p, q) >= H(p) with equality iff q = p)
    assert rrd_loss(unit(5, 16, seed=9), teacher, memory, tau, tau).item() > value.item()


def test_float32_under_bf16_autocast_and_stable_at_small_temperatures():
    student = unit(64, 128, seed=1).bfloat16()
    teacher = unit(64, 128, seed=2).bfloat16()
    memory = unit(4096, 128, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = rrd_loss(student, teacher, memory, 0.01, 0.01)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    s, t, m = student.double(), teacher.double(), memory.double()
    reference = -(torch.softmax(t @ m.t() / 0.01, 1) * torch.log_softmax(s @ m.t() / 0.01, 1)).sum(1).mean()
    assert value.item() == pytest.approx(reference.item(), rel=1e-4)


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_non_positive_temperatures_are_rejected(bad):
    x = unit(2, 4)
    with pytest.raises(ValueError, match="must be > 0"):
        rrd_loss(x, x, unit(3, 4), bad, 0.1)
    with pytest.raises(ValueError, match="must be > 0"):
        rrd_loss(x, x, unit(3, 4), 0.1, bad)


def test_shape_errors_are_explained():
    with pytest.raises(ValueError, match="same shape"):
        rrd_loss(unit(2, 4), unit(3, 4), unit(5, 4), 0.1, 0.1)
    with pytest.raises(ValueError, match="memory dimension"):
        rrd_loss(unit(2, 4), unit(2, 4), unit(5, 3), 0.1, 0.1)


def test_kd_loss_matches_naive_definition():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 10, generator=generator), torch.randn(6, 10, generator=generator)
    T = 4.0
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist()):
        z_s = sum(math.exp(v / T) for v in s_row)
        z_t = sum(math.exp(v / T) for v in t_row)
        for v_s, v_t in zip(s_row, t_row):
            p_t = math.exp(v_t / T) / z_t
            p_s = math.exp(v_s / T) / z_s
            total += p_t * (math.log(p_t) - math.log(p_s))
    expected = total / 6 * T**2
    s = student.clone().requires_grad_()
    t = teacher.clone().requires_grad_()
    value = kd_loss(s, t, T)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    assert kd_loss(teacher, teacher, T).item() == pytest.approx(0.0, abs=1e-6)


def test_the_loss_timing_benchmark_runs_and_finds_both_forms_equal():
    """benchmarks/rrd_loss_time.py asserts that rrd_loss and the textbook form agree before it prints a ratio."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rrd_loss_time.py"
    out = subprocess.run([sys.executable, str(script), "--memory-size", "512", "--repeats", "2", "--warmup", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "loss and gradient agree" in out and "rrd_hf / textbook" in out
