"""The benchmark methods (`rrd_hf.methods`): pure losses against naive float64 re-derivations, gradient flow,
CRD's memory, and every registered method built from example outputs of tiny zoo models."""

import math
import threading

import pytest
import torch
import torch.nn.functional as F

from rrd_hf.features import student_feature_modules
from rrd_hf.methods import (
    METHODS,
    Activations,
    CRDMemory,
    MethodContext,
    build_method,
    extra_buffer_count,
    extra_parameter_count,
)
from rrd_hf.methods.crd import crd_loss
from rrd_hf.methods.memory import momentum_update as crd_memory_update
from rrd_hf.methods.feature import ab_loss, at_loss, fsp_loss, ft_loss, hint_loss, nst_loss, pool_to_common_size
from rrd_hf.methods.heads import ConvReg
from rrd_hf.methods.logit import (
    dkd_loss,
    dkd_terms,
    dkd_warmup_factor,
    kd_loss,
    kd_ls_loss,
    standardize_logits,
)
from rrd_hf.methods.relation import cc_loss, pkt_loss, rkd_loss, sp_loss
from rrd_hf.methods.vid import vid_initial_log_scale, vid_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only oversubscribe xdist's cores


ALL_NAMES = ["rrd", "kd", "dkd", "kd_ls", "dkd_ls", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd"]


def randn(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).float()


def approx(value, expected, rel=1e-4, abs=1e-6):
    value = value.detach() if isinstance(value, torch.Tensor) else value
    expected = expected.detach() if isinstance(expected, torch.Tensor) else expected
    return pytest.approx(float(expected), rel=rel, abs=abs) == float(value)


# ------------------------------------------------------------------------------------------------ naive helpers
def softmax_list(values, temperature=1.0):
    top = max(values)
    exps = [math.exp((v - top) / temperature) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def kl_list(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def naive_kd(s, t, temperature):
    rows = [kl_list(softmax_list(t_i, temperature), softmax_list(s_i, temperature)) for s_i, t_i in zip(s.tolist(), t.tolist())]
    return sum(rows) / len(rows) * temperature**2


def naive_standardize(logits):
    out = []
    for row in logits.tolist():
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
        out.append([(v - mean) / (std + 1e-7) for v in row])
    return torch.tensor(out, dtype=torch.float64)


def naive_dkd_parts(s_row, t_row, label, temperature):
    """Per-sample TCKD and NCKD straight from the definitions of Zhao et al. (probabilities, not log space)."""
    p_s, p_t = softmax_list(s_row, temperature), softmax_list(t_row, temperature)
    b_s, b_t = [p_s[label], 1 - p_s[label]], [p_t[label], 1 - p_t[label]]
    tckd = kl_list(b_t, b_s)
    hat_s = [p / (1 - p_s[label]) for j, p in enumerate(p_s) if j != label]
    hat_t = [p / (1 - p_t[label]) for j, p in enumerate(p_t) if j != label]
    nckd = kl_list(hat_t, hat_s)
    return tckd * temperature**2, nckd * temperature**2, b_t[1]


def avg_pool_naive(f, out_h, out_w):
    b, c, h, w = f.shape
    kh, kw = h // out_h, w // out_w
    out = torch.zeros(b, c, out_h, out_w, dtype=torch.float64)
    for i in range(b):
        for j in range(c):
            for y in range(out_h):
                for x in range(out_w):
                    out[i, j, y, x] = f[i, j, y * kh:(y + 1) * kh, x * kw:(x + 1) * kw].double().mean()
    return out


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ------------------------------------------------------------------------------------------------ logit losses
def test_kd_matches_naive():
    s, t = randn(4, 7, seed=1, scale=3), randn(4, 7, seed=2, scale=3)
    assert approx(kd_loss(s, t, 4.0), naive_kd(s, t, 4.0))


def test_standardize_logits_matches_naive_and_is_float32():
    z = randn(3, 6, seed=3, scale=5).to(torch.bfloat16)
    out = standardize_logits(z)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), naive_standardize(z.float()), atol=1e-5)


def test_kd_ls_equals_kd_on_standardised_logits():
    s, t = randn(4, 10, seed=4, scale=4), randn(4, 10, seed=5, scale=2)
    expected = naive_kd(naive_standardize(s), naive_standardize(t), 2.0)
    assert approx(kd_ls_loss(s, t, 2.0), expected)
    assert approx(kd_ls_loss(s, t, 2.0), kd_loss(standardize_logits(s), standardize_logits(t), 2.0), rel=1e-6)


def test_logit_standardisation_is_invariant_to_shift_and_scale():
    s, t = randn(5, 8, seed=6), randn(5, 8, seed=7)
    shift_s, shift_t = randn(5, 1, seed=8, scale=10), randn(5, 1, seed=9, scale=10)
    base = kd_ls_loss(s, t)
    moved = kd_ls_loss(3.0 * s + shift_s, 0.25 * t + shift_t)
    assert approx(moved, float(base), rel=1e-4)
    labels = torch.tensor([0, 1, 2, 3, 7])
    base_dkd = dkd_loss(s, t, labels, temperature=2.0, logit_standardization=True)
    moved_dkd = dkd_loss(7.0 * s - 3.0, 0.5 * t + shift_t, labels, temperature=2.0, logit_standardization=True)
    assert approx(moved_dkd, float(base_dkd), rel=1e-4)
    # Plain KD is not scale invariant: the test above could fail.
    assert abs(float(kd_loss(3.0 * s, t)) - float(kd_loss(s, t))) > 1e-3


def test_dkd_terms_match_their_definitions():
    s, t = randn(6, 5, seed=10, scale=3), randn(6, 5, seed=11, scale=3)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    tckd, nckd = dkd_terms(s, t, labels, temperature=4.0)
    parts = [naive_dkd_parts(a, b, y, 4.0) for a, b, y in zip(s.tolist(), t.tolist(), labels.tolist())]
    assert approx(tckd, sum(p[0] for p in parts) / 6)
    assert approx(nckd, sum(p[1] for p in parts) / 6)
    assert approx(dkd_loss(s, t, labels, alpha=1.0, beta=0.0, temperature=4.0), float(tckd), rel=1e-6)
    assert approx(dkd_loss(s, t, labels, alpha=0.0, beta=1.0, temperature=4.0), float(nckd), rel=1e-6)
    expected = 0.5 * (1.0 * sum(p[0] for p in parts) + 8.0 * sum(p[1] for p in parts)) / 6
    assert approx(dkd_loss(s, t, labels, alpha=1.0, beta=8.0, temperature=4.0, warmup_factor=0.5), expected)


def test_dkd_decomposes_kd_per_sample():
    """KD = TCKD + (1 − p_t,gt) · NCKD for every sample (Zhao et al., eq. 7)."""
    s, t = randn(4, 6, seed=12, scale=2), randn(4, 6, seed=13, scale=2)
    labels = torch.tensor([1, 0, 5, 3])
    for i in range(4):
        tckd, nckd = dkd_terms(s[i:i + 1], t[i:i + 1], labels[i:i + 1], temperature=3.0)
        p_t_other = naive_dkd_parts(s[i].tolist(), t[i].tolist(), int(labels[i]), 3.0)[2]
        assert approx(float(tckd) + p_t_other * float(nckd), float(kd_loss(s[i:i + 1], t[i:i + 1], 3.0)), rel=1e-4)


def test_dkd_matches_the_mdistiller_masking_form():
    """mdistiller subtracts 1000 from the target logit for NCKD and takes log of summed probabilities for TCKD."""
    s, t = randn(3, 5, seed=14, scale=2).double(), randn(3, 5, seed=15, scale=2).double()
    labels = torch.tensor([2, 0, 4])
    T = 4.0
    gt = F.one_hot(labels, 5).double()
    p_s, p_t = F.softmax(s / T, 1), F.softmax(t / T, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * T**2 / 3
    nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, 1), F.softmax(t / T - 1000.0 * gt, 1), reduction="sum") * T**2 / 3
    assert approx(dkd_loss(s.float(), t.float(), labels), float(tckd + 8 * nckd))


def test_dkd_with_standardisation_is_dkd_on_standardised_logits():
    s, t = randn(4, 6, seed=16, scale=3), randn(4, 6, seed=17, scale=3)
    labels = torch.tensor([0, 1, 2, 3])
    expected = dkd_loss(naive_standardize(s).float(), naive_standardize(t).float(), labels, temperature=2.0)
    assert approx(dkd_loss(s, t, labels, temperature=2.0, logit_standardization=True), float(expected), rel=1e-5)


def test_dkd_warmup_factor():
    assert dkd_warmup_factor(1, 20) == pytest.approx(0.05)
    assert dkd_warmup_factor(10, 20) == pytest.approx(0.5)
    assert dkd_warmup_factor(20, 20) == 1.0 and dkd_warmup_factor(200, 20) == 1.0
    with pytest.raises(ValueError):
        dkd_warmup_factor(-1)


def test_logit_losses_validate_inputs():
    with pytest.raises(ValueError, match="same shape"):
        kd_ls_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels"):
        dkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        dkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), None)


# ------------------------------------------------------------------------------------------------ feature maps
def test_hint_loss_matches_naive():
    a, b = randn(2, 3, 2, 2, seed=20), randn(2, 3, 2, 2, seed=21)
    expected = sum((x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist())) / a.numel()
    assert approx(hint_loss(a, b), expected)
    with pytest.raises(ValueError, match="shape"):
        hint_loss(a, b[:, :2])


@pytest.mark.parametrize(
    "s_shape,t_shape",
    [((2, 4, 8, 8), (2, 6, 8, 8)), ((2, 4, 8, 8), (2, 6, 4, 4)), ((2, 4, 4, 4), (2, 6, 8, 8)), ((2, 4, 8, 8), (2, 6, 5, 5))],
)
def test_convreg_maps_student_to_teacher_shape(s_shape, t_shape):
    assert ConvReg(s_shape, t_shape)(torch.randn(s_shape)).shape == t_shape


def test_convreg_rejects_unsupported_shapes():
    with pytest.raises(ValueError, match="hint layer"):
        ConvReg((2, 4, 3, 3), (2, 6, 8, 8))


@pytest.mark.parametrize(
    "s_shape,t_shape,kernel",
    [((2, 3, 8, 8), (2, 5, 4, 4), "integer"), ((2, 3, 4, 4), (2, 5, 8, 8), "integer"),
     ((2, 3, 8, 4), (2, 5, 2, 2), "integer"), ((2, 3, 6, 6), (2, 5, 4, 4), "adaptive"),
     ((2, 3, 4, 4), (2, 5, 4, 4), None)],
)
def test_pooling_uses_an_integer_kernel_when_the_sizes_divide(s_shape, t_shape, kernel):
    # On CUDA, adaptive_avg_pool2d's backward raises under torch.use_deterministic_algorithms(True) (its docstring);
    # avg_pool2d's does not. Which op ran is read from the autograd graph; the values are adaptive pooling's
    # (RepDistiller's F.adaptive_avg_pool2d), within rounding.
    f_s, f_t = randn(*s_shape, seed=20).requires_grad_(), randn(*t_shape, seed=21).requires_grad_()
    p_s, p_t = pool_to_common_size(f_s, f_t)
    size = tuple(min(a, b) for a, b in zip(s_shape[2:], t_shape[2:]))
    assert p_s.shape[2:] == p_t.shape[2:] == size
    pooled = p_s if s_shape[2] > t_shape[2] else p_t
    original = f_s if s_shape[2] > t_shape[2] else f_t
    if kernel is None:
        assert p_s is f_s and p_t is f_t
        return
    expected_op = "AvgPool2DBackward" if kernel == "integer" else "AdaptiveAvgPool2DBackward"
    assert type(pooled.grad_fn).__name__.startswith(expected_op)
    reference = F.adaptive_avg_pool2d(original, size)
    torch.testing.assert_close(pooled, reference, rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(pooled.square().sum(), original)
    (reference_grad,) = torch.autograd.grad(reference.square().sum(), original)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-7)
    if kernel == "integer":  # and against the naive window mean
        torch.testing.assert_close(pooled.double(), avg_pool_naive(original.detach(), *size), rtol=1e-6, atol=1e-7)


def naive_attention(f):
    b, c, h, w = f.shape
    maps = []
    for i in range(b):
        a = [sum(float(f[i, ch, y, x]) ** 2 for ch in range(c)) / c for y in range(h) for x in range(w)]
        norm = math.sqrt(sum(v * v for v in a))
        maps.append([v / max(norm, 1e-12) for v in a])
    return maps


@pytest.mark.parametrize("t_size", [4, 2])
def test_at_loss_matches_naive(t_size):
    f_s, f_t = randn(2, 3, 4, 4, seed=22), randn(2, 5, t_size, t_size, seed=23)
    pooled_s = avg_pool_naive(f_s, t_size, t_size) if t_size < 4 else f_s.double()
    a_s, a_t = naive_attention(pooled_s), naive_attention(f_t.double())
    expected = sum((x - y) ** 2 for rs, rt in zip(a_s, a_t) for x, y in zip(rs, rt)) / (2 * t_size * t_size)
    assert approx(at_loss(f_s, f_t), expected)


def test_nst_loss_matches_naive():
    f_s, f_t = randn(2, 3, 2, 3, seed=24), randn(2, 4, 2, 3, seed=25)

    def channels(f, i):
        rows = [f[i, c].flatten().tolist() for c in range(f.shape[1])]
        return [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]

    def mean_kernel(xs_per_sample, ys_per_sample):
        values = [sum(a * b for a, b in zip(x, y)) ** 2 for xs, ys in zip(xs_per_sample, ys_per_sample) for x in xs for y in ys]
        return sum(values) / len(values)

    s = [channels(f_s, i) for i in range(2)]
    t = [channels(f_t, i) for i in range(2)]
    expected = mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)
    assert approx(nst_loss(f_s, f_t), expected)


def test_fsp_loss_matches_naive():
    s_maps = [randn(2, 2, 4, 4, seed=26), randn(2, 3, 2, 2, seed=27), randn(2, 2, 2, 2, seed=28)]
    t_maps = [randn(2, 2, 4, 4, seed=29), randn(2, 3, 2, 2, seed=30), randn(2, 2, 2, 2, seed=31)]

    def fsp(bottom, top):
        if bottom.shape[2] > top.shape[2]:
            bottom = avg_pool_naive(bottom, top.shape[2], top.shape[3])
        bottom, top = bottom.double(), top.double()
        hw = top.shape[2] * top.shape[3]
        return [
            [[float((top[b, j] * bottom[b, i]).sum()) / hw for i in range(bottom.shape[1])] for j in range(top.shape[1])]
            for b in range(top.shape[0])
        ]

    expected = 0.0
    for k in range(2):
        g_s, g_t = fsp(s_maps[k], s_maps[k + 1]), fsp(t_maps[k], t_maps[k + 1])
        diffs = [(x - y) ** 2 for bs, bt in zip(g_s, g_t) for rs, rt in zip(bs, bt) for x, y in zip(rs, rt)]
        expected += sum(diffs) / len(diffs)
    assert approx(fsp_loss(s_maps, t_maps), expected)
    with pytest.raises(ValueError, match="channel"):
        fsp_loss([s_maps[0], s_maps[1]], [t_maps[0], randn(2, 4, 2, 2)])


def test_ab_loss_matches_naive():
    sources = [randn(2, 2, 3, 3, seed=32, scale=1.5), randn(2, 3, 2, 2, seed=33, scale=1.5)]
    targets = [randn(2, 2, 3, 3, seed=34), randn(2, 3, 2, 2, seed=35)]
    margin = 1.0
    expected = 0.0
    for i, (s, t) in enumerate(zip(sources, targets)):
        total = 0.0
        for sv, tv in zip(s.flatten().tolist(), t.flatten().tolist()):
            if tv <= 0 and sv > -margin:
                total += (sv + margin) ** 2
            if tv > 0 and sv <= margin:
                total += (sv - margin) ** 2
        weight = 2.0 ** (i - 2 + 1)  # 1/2 for the first of two stages, 1 for the last
        expected += weight * total / 2 * 3 / 1000
    assert approx(ab_loss(sources, targets, margin), expected)


def naive_ft_factor(f, i, p1=2):
    """RepDistiller `distiller_zoo/FT.py`, `FactorTransfer.factor(f) = F.normalize(f.pow(p1).mean(1).view(B, -1))`,
    for sample i: for every position the mean over channels of f^p1, then the L2 norm over positions."""
    c, h, w = f.shape[1:]
    spatial = [sum(float(f[i, ch, y, x]) ** p1 for ch in range(c)) / c for y in range(h) for x in range(w)]
    norm = math.sqrt(sum(v * v for v in spatial))
    return [v / max(norm, 1e-12) for v in spatial]


@pytest.mark.parametrize("t_size", [2, 4])
def test_ft_loss_matches_the_benchmark_factor(t_size):
    # FactorTransfer.factor_loss with p1 = 2, p2 = 1: pool the larger map to the smaller, then
    # (factor(f_s) - factor(f_t)).abs().mean(), a mean over the B * H * W entries of the factors.
    f_s, f_t = randn(2, 3, 4, 4, seed=36), randn(2, 3, t_size, t_size, seed=37)
    pooled_s = avg_pool_naive(f_s, t_size, t_size) if t_size < 4 else f_s.double()
    diffs = [abs(a - b) for i in range(2)
             for a, b in zip(naive_ft_factor(pooled_s, i), naive_ft_factor(f_t.double(), i))]
    expected = sum(diffs) / len(diffs)
    assert len(diffs) == 2 * t_size * t_size
    assert approx(ft_loss(f_s, f_t), expected)
    squared = sum(d * d for d in diffs) / len(diffs)  # p2 = 2
    assert approx(ft_loss(f_s, f_t, p2=2), squared)


def test_ft_loss_is_not_the_normalised_flattened_map():
    # The benchmark's factor keeps only the energy per position (channel mean of the square), so flipping the sign
    # of the map or permuting its channels changes nothing. The definition rrd_hf used before, normalize(f.view(B,
    # -1)) compared entry by entry, sees both: a test written from it must fail on ft_loss.
    f_s = randn(2, 3, 2, 2, seed=36)

    def old_definition(a, b):
        a, b = a.double().flatten(1), b.double().flatten(1)
        return float((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)).abs().mean())

    for f_t in (-f_s, f_s[:, [2, 0, 1]]):
        assert float(ft_loss(f_s, f_t)) == pytest.approx(0.0, abs=1e-7)
        assert old_definition(f_s, f_t) > 0.1


# ------------------------------------------------------------------------------------------------ relations
def test_sp_loss_matches_naive():
    f_s, f_t = randn(3, 2, 2, 2, seed=40), randn(3, 4, 1, 1, seed=41)

    def gram(f):
        rows = [r.flatten().tolist() for r in f]
        g = [[sum(a * b for a, b in zip(x, y)) for y in rows] for x in rows]
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in g]

    g_s, g_t = gram(f_s), gram(f_t)
    expected = sum((a - b) ** 2 for rs, rt in zip(g_s, g_t) for a, b in zip(rs, rt)) / 9
    assert approx(sp_loss(f_s, f_t), expected)


def test_cc_repdistiller_form_matches_naive():
    e_s, e_t = randn(4, 3, seed=42), randn(4, 3, seed=43)
    d = [[abs(a - b) for a, b in zip(rs, rt)] for rs, rt in zip(e_s.tolist(), e_t.tolist())]
    expected = sum(sum(x * y for x, y in zip(d[i], d[i + 1])) for i in range(3)) / 3
    assert approx(cc_loss(e_s, e_t), expected)
    with pytest.raises(ValueError, match="kernel"):
        cc_loss(e_s, e_t, kernel="rbf")


def test_cc_gaussian_kernel_tends_to_the_exact_rbf():
    """With many Taylor terms the kernel is exp(−γ‖a − b‖²) of unit vectors, derived here directly."""
    e_s, e_t = randn(4, 5, seed=44), randn(4, 3, seed=45)
    gamma = 0.4

    def rbf(e):
        rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in e.tolist()]
        return [[math.exp(-gamma * sum((a - b) ** 2 for a, b in zip(x, y))) for y in rows] for x in rows]

    k_s, k_t = rbf(e_s), rbf(e_t)
    expected = sum((a - b) ** 2 for rs, rt in zip(k_s, k_t) for a, b in zip(rs, rt)) / 16
    assert approx(cc_loss(e_s, e_t, kernel="gaussian", gamma=gamma, max_order=20), expected, rel=1e-4)
    # order 2 (the default) is an approximation, close but not equal
    assert float(cc_loss(e_s, e_t, kernel="gaussian")) != pytest.approx(expected, rel=1e-6)


def test_rkd_loss_matches_naive():
    f_s, f_t = randn(4, 3, seed=46), randn(4, 5, seed=47, scale=2)

    def psi(f):
        rows = f.tolist()
        n = len(rows)
        dist = [[math.dist(rows[i], rows[j]) for j in range(n)] for i in range(n)]
        mean = sum(dist[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        dist = [[v / mean for v in row] for row in dist]
        angles = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u = [a - b for a, b in zip(rows[j], rows[i])]
                    v = [a - b for a, b in zip(rows[k], rows[i])]
                    nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
                    angles.append(0.0 if nu == 0 or nv == 0 else sum(a * b for a, b in zip(u, v)) / (nu * nv))
        return [v for row in dist for v in row], angles

    d_s, a_s = psi(f_s)
    d_t, a_t = psi(f_t)
    loss_d = sum(smooth_l1(a - b) for a, b in zip(d_s, d_t)) / len(d_s)
    loss_a = sum(smooth_l1(a - b) for a, b in zip(a_s, a_t)) / len(a_s)
    assert approx(rkd_loss(f_s, f_t), 25 * loss_d + 50 * loss_a, rel=1e-4, abs=1e-5)


def test_pkt_loss_matches_naive():
    f_s, f_t = randn(4, 3, seed=48), randn(4, 6, seed=49)
    eps = 1e-7

    def probs(f):
        rows = [[v / (math.sqrt(sum(u * u for u in r)) + eps) for v in r] for r in f.tolist()]
        k = [[(sum(a * b for a, b in zip(x, y)) + 1) / 2 for y in rows] for x in rows]
        return [[v / sum(row) for v in row] for row in k]

    p_s, p_t = probs(f_s), probs(f_t)
    expected = sum(t * math.log((t + eps) / (s + eps)) for rs, rt in zip(p_s, p_t) for s, t in zip(rs, rt)) / 16
    assert approx(pkt_loss(f_s, f_t), expected, rel=1e-4, abs=1e-8)


# ------------------------------------------------------------------------------------------------ VID
def test_vid_loss_matches_naive():
    mean, target = randn(2, 3, 2, 2, seed=50), randn(2, 3, 2, 2, seed=51)
    log_scale = randn(3, seed=52)
    eps = 1e-5
    total = 0.0
    for b in range(2):
        for c in range(3):
            var = math.log(1 + math.exp(float(log_scale[c]))) + eps
            for y in range(2):
                for x in range(2):
                    total += 0.5 * ((float(mean[b, c, y, x]) - float(target[b, c, y, x])) ** 2 / var + math.log(var))
    assert approx(vid_loss(mean, target, log_scale, eps), total / mean.numel())
    assert math.log(1 + math.exp(vid_initial_log_scale(5.0))) + 1e-5 == pytest.approx(5.0)


# ------------------------------------------------------------------------------------------------ CRD
def naive_crd(z_s, z_t, bank_s, bank_t, idx, norm_s, norm_t, temperature, n):
    def nce(z, bank, norm):
        total = 0.0
        k = len(idx[0]) - 1
        noise = k / n
        for z_i, row in zip(z.tolist(), idx.tolist()):
            for col, j in enumerate(row):
                p = math.exp(sum(a * b for a, b in zip(z_i, bank[j].tolist())) / temperature) / norm
                total += math.log(p / (p + noise + 1e-7)) if col == 0 else math.log(noise / (p + noise + 1e-7))
        return -total / len(idx)

    return nce(z_s, bank_t, norm_s) + nce(z_t, bank_s, norm_t)


def test_crd_loss_matches_naive():
    n, d = 11, 4
    z_s, z_t = F.normalize(randn(3, d, seed=60), dim=1), F.normalize(randn(3, d, seed=61), dim=1)
    bank_s, bank_t = F.normalize(randn(n, d, seed=62), dim=1), F.normalize(randn(n, d, seed=63), dim=1)
    idx = torch.tensor([[0, 3, 5, 7, 7, 10], [4, 1, 2, 0, 9, 8], [10, 6, 6, 6, 2, 1]])
    value = crd_loss(z_s, z_t, bank_s, bank_t, idx, 2.5, 3.5, 0.07)
    assert approx(value, naive_crd(z_s, z_t, bank_s, bank_t, idx, 2.5, 3.5, 0.07, n))


def test_crd_gradient_counts_repeated_negatives_as_the_reference_does():
    # RepDistiller ContrastMemory gathers bank rows (index_select -> (B, K + 1, D)) and takes bmm with the
    # embedding, so a negative drawn twice contributes twice, with no scatter. crd_scores gathers columns of
    # z @ bank^T instead; its backward accumulates repeated columns (a scatter-add). Same gradient, duplicates included.
    n, d = 9, 4
    z_s = F.normalize(randn(3, d, seed=66), dim=1).requires_grad_()
    z_t = F.normalize(randn(3, d, seed=67), dim=1).requires_grad_()
    bank_s, bank_t = F.normalize(randn(n, d, seed=68), dim=1), F.normalize(randn(n, d, seed=69), dim=1)
    idx = torch.tensor([[0, 3, 3, 3, 7], [4, 1, 1, 8, 8], [2, 5, 6, 5, 5]])  # repeated negatives in every row
    crd_loss(z_s, z_t, bank_s, bank_t, idx, 2.5, 3.5, 0.07).backward()

    def reference_nce(z, bank, norm):
        rows = bank.index_select(0, idx.reshape(-1)).view(3, 5, d)
        out = torch.exp(torch.bmm(rows, z.view(3, d, 1)).squeeze(2) / 0.07) / norm
        noise = 4 / n
        return -(torch.log(out[:, 0] / (out[:, 0] + noise + 1e-7)).sum()
                 + torch.log(noise / (out[:, 1:] + noise + 1e-7)).sum()) / 3

    ref_s, ref_t = z_s.detach().double().requires_grad_(), z_t.detach().double().requires_grad_()
    (reference_nce(ref_s, bank_t.double(), 2.5) + reference_nce(ref_t, bank_s.double(), 3.5)).backward()
    torch.testing.assert_close(z_s.grad, ref_s.grad.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z_t.grad, ref_t.grad.float(), rtol=1e-5, atol=1e-6)


def test_crd_memory_update_rule():
    memory = randn(6, 3, seed=64)
    keys = randn(4, 3, seed=65)
    indices = torch.tensor([4, 1, 4, 0])  # 4 repeated: its first occurrence wins
    updated = crd_memory_update(memory, keys, indices, momentum=0.5)
    expected = memory.double().clone()
    for key, i in ((keys[0], 4), (keys[1], 1), (keys[3], 0)):
        row = [0.5 * a + 0.5 * b for a, b in zip(memory[i].tolist(), key.tolist())]
        norm = math.sqrt(sum(v * v for v in row))
        expected[i] = torch.tensor([v / norm for v in row], dtype=torch.float64)
    assert torch.allclose(updated.double(), expected, atol=1e-6)
    assert updated is not memory and torch.equal(memory, randn(6, 3, seed=64))  # out of place
    with pytest.raises(ValueError, match="out of range"):
        crd_memory_update(memory, keys[:1], torch.tensor([6]), 0.5)


def test_crd_memory_initialisation_matches_repdistiller_range():
    memory = CRDMemory(50, dim=12, num_negatives=8, seed=0)
    bound = 1 / math.sqrt(12 / 3)
    assert memory.student_bank.abs().max() <= bound and memory.teacher_bank.abs().max() <= bound
    assert not torch.equal(memory.student_bank, memory.teacher_bank)
    assert (memory.normalizers == -1).all() and int(memory.num_updates) == 0
    assert torch.equal(memory.student_bank, CRDMemory(50, dim=12, num_negatives=8, seed=0).student_bank)


def test_crd_negatives_are_seeded_by_seed_counter_and_process():
    index = torch.tensor([3, 9, 0])
    a, b = CRDMemory(40, 8, num_negatives=16, seed=5), CRDMemory(40, 8, num_negatives=16, seed=5)
    draw = a.sample_indices(index)
    assert draw.shape == (3, 17) and torch.equal(draw[:, 0], index)
    assert torch.equal(draw, b.sample_indices(index))
    assert not torch.equal(draw, a.sample_indices(index, process_index=1))
    assert not torch.equal(draw, CRDMemory(40, 8, num_negatives=16, seed=6).sample_indices(index))
    # the counter is state: a memory loaded at another count draws differently, at the same count identically
    b.load_state_dict({**b.state_dict(), "num_updates": torch.tensor(3)})
    assert not torch.equal(draw, b.sample_indices(index))
    a.load_state_dict({**a.state_dict(), "num_updates": torch.tensor(3)})
    assert torch.equal(a.sample_indices(index), b.sample_indices(index))


def test_crd_other_class_negatives_exclude_the_own_class():
    labels = torch.arange(60) % 4  # 15 samples per class, 45 in the complement
    memory = CRDMemory(60, 8, num_negatives=30, seed=1, labels=labels)
    index = torch.tensor([0, 5, 10, 59])
    draw = memory.sample_indices(index)
    for row, i in zip(draw.tolist(), index.tolist()):
        negatives = row[1:]
        assert all(labels[j] != labels[i] for j in negatives)
        assert len(set(negatives)) == len(negatives)  # without replacement
        assert len(set(row)) == len(row)  # no repeated bank row at all: the score gather's backward has no collision
    wide = CRDMemory(60, 8, num_negatives=50, seed=1, labels=labels)  # K > 45: with replacement, as the reference
    draw = wide.sample_indices(index)
    assert all(labels[j] != labels[i] for row, i in zip(draw.tolist(), index.tolist()) for j in row[1:])
    assert "labels" not in memory.state_dict()


def test_crd_other_class_negatives_are_uniform_over_the_other_classes():
    # RepDistiller's CIFAR sampler: np.random.choice(cls_negative[target], K, replace=False), every other-class
    # sample equally likely. Counted over 3,000 rows: each of the 45 candidates is expected 3000 * 10 / 45 = 667
    # times (standard deviation ~23); samples of the row's own class never.
    labels = torch.arange(60) % 4
    memory = CRDMemory(60, 8, num_negatives=10, seed=2, labels=labels)
    draw = memory.sample_indices(torch.zeros(3000, dtype=torch.long))[:, 1:]
    counts = torch.bincount(draw.reshape(-1), minlength=60)
    assert counts[labels == 0].sum() == 0
    others = counts[labels != 0].double()
    assert others.sum() == 30000 and others.min() > 667 - 120 and others.max() < 667 + 120
    assert all(len(set(row)) == 10 for row in draw.tolist())


def tiny_outputs(features):
    return Activations(logits=torch.zeros(features.shape[0], 3), features=features)


def tiny_context(s_dim=6, t_dim=5, **kwargs):
    return MethodContext(tiny_outputs(torch.zeros(2, s_dim)), tiny_outputs(torch.zeros(2, t_dim)), **kwargs)


def make_crd(torch_seed=0, n=20, seed=0, **kwargs):
    torch.manual_seed(torch_seed)
    return build_method("crd", tiny_context(num_samples=n, seed=seed), **kwargs)


def test_crd_module_first_batch_normaliser_and_update():
    crd = make_crd(num_negatives=7).train()
    f_s, f_t = randn(4, 6, seed=70), randn(4, 5, seed=71)
    index = torch.tensor([1, 2, 3, 19])
    old_s, old_t = crd.memory.student_bank.clone(), crd.memory.teacher_bank.clone()
    idx = crd.memory.sample_indices(index)
    z_s, z_t = crd.embed(f_s, f_t)
    with torch.no_grad():
        sims_s = torch.exp((z_s.double() @ old_t.double().t()).gather(1, idx) / 0.07)
        sims_t = torch.exp((z_t.double() @ old_s.double().t()).gather(1, idx) / 0.07)
    norm_s, norm_t = float(sims_s.mean()) * 20, float(sims_t.mean()) * 20
    loss = crd(tiny_outputs(f_s), tiny_outputs(f_t), index=index)
    assert approx(loss, naive_crd(z_s, z_t, old_s, old_t, idx, norm_s, norm_t, 0.07, 20), rel=1e-4)
    assert crd.memory.normalizers.tolist() == pytest.approx([norm_s, norm_t], rel=1e-5)
    assert int(crd.memory.num_updates) == 1
    assert torch.allclose(crd.memory.student_bank[index], F.normalize(0.5 * old_s[index] + 0.5 * z_s.detach(), dim=1))
    assert torch.allclose(crd.memory.teacher_bank[index], F.normalize(0.5 * old_t[index] + 0.5 * z_t.detach(), dim=1))
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(crd.memory.student_bank[untouched], old_s[untouched])
    # eval mode changes no state
    state = {k: v.clone() for k, v in crd.state_dict().items()}
    crd.eval()(tiny_outputs(f_s), tiny_outputs(f_t), index=index)
    assert all(torch.equal(state[k], v) for k, v in crd.state_dict().items())


def test_crd_out_of_place_update_keeps_earlier_graphs_valid():
    crd = make_crd(num_negatives=5).train()
    f_s = randn(3, 6, seed=72).requires_grad_()
    f_t = randn(3, 5, seed=73)
    bank_before = crd.memory.student_bank
    copy_before = bank_before.clone()
    first = crd(tiny_outputs(f_s), tiny_outputs(f_t), index=torch.tensor([0, 1, 2]))
    second = crd(tiny_outputs(f_s), tiny_outputs(f_t), index=torch.tensor([0, 1, 2]))
    (first + second).backward()  # an in-place bank update would fail here (tensor saved for backward modified)
    assert f_s.grad is not None and torch.isfinite(f_s.grad).all()
    assert crd.memory.student_bank is not bank_before and torch.equal(bank_before, copy_before)


def test_crd_state_dict_round_trip_reproduces_the_run():
    a = make_crd(torch_seed=0, num_negatives=6).train()
    batches = [(randn(4, 6, seed=80 + i), randn(4, 5, seed=90 + i), torch.randperm(20)[:4]) for i in range(3)]
    for f_s, f_t, index in batches[:2]:
        a(tiny_outputs(f_s), tiny_outputs(f_t), index=index)
    b = make_crd(torch_seed=1, num_negatives=6, seed=123).train()  # different heads and memory seed ...
    b.load_state_dict(a.state_dict())
    b.memory.seed = a.memory.seed  # ... the draw seed is configuration, not state
    f_s, f_t, index = batches[2]
    loss_a = a(tiny_outputs(f_s), tiny_outputs(f_t), index=index)
    loss_b = b(tiny_outputs(f_s), tiny_outputs(f_t), index=index)
    assert loss_a.item() == loss_b.item()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


class ThreadGather:
    """all_gather over threads: each rank gets the concatenation of every rank's tensor (rank order)."""

    def __init__(self, world):
        self.slots = [None] * world
        self.barrier = threading.Barrier(world)

    def for_rank(self, rank):
        def gather(tensor):
            self.slots[rank] = tensor
            self.barrier.wait()
            out = torch.cat([s.reshape(-1, *tensor.shape[1:]) for s in self.slots])
            self.barrier.wait()
            return out

        return gather


def test_crd_state_is_identical_across_processes_and_matches_one_process():
    world, steps = 2, 3
    ranks = [make_crd(torch_seed=0, num_negatives=6).train() for _ in range(world)]
    ranks[1].load_state_dict(ranks[0].state_dict())
    single = make_crd(torch_seed=0, num_negatives=6).train()
    single.load_state_dict(ranks[0].state_dict())
    gather = ThreadGather(world)
    for rank, module in enumerate(ranks):
        module.context.gather = gather.for_rank(rank)
        module.context.process_index = rank
    data = [(randn(4, 6, seed=100 + i), randn(4, 5, seed=200 + i), torch.randperm(20)[:4]) for i in range(steps)]
    errors = []

    def run(rank):
        try:
            for f_s, f_t, index in data:
                part = slice(2 * rank, 2 * rank + 2)
                ranks[rank](tiny_outputs(f_s[part]), tiny_outputs(f_t[part]), index=index[part])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    state0, state1 = ranks[0].memory.state_dict(), ranks[1].memory.state_dict()
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key
    for f_s, f_t, index in data:
        single(tiny_outputs(f_s), tiny_outputs(f_t), index=index)
    assert torch.allclose(single.memory.student_bank, ranks[0].memory.student_bank, atol=1e-6)
    assert torch.allclose(single.memory.teacher_bank, ranks[0].memory.teacher_bank, atol=1e-6)
    # the two processes drew different negatives for their different samples
    assert not torch.equal(
        ranks[0].memory.sample_indices(torch.tensor([0, 1]), process_index=0),
        ranks[1].memory.sample_indices(torch.tensor([0, 1]), process_index=1),
    )


def test_crd_needs_index_and_num_samples():
    crd = make_crd(num_negatives=4)
    with pytest.raises(ValueError, match="index"):
        crd(tiny_outputs(torch.zeros(2, 6)), tiny_outputs(torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="num_samples"):
        build_method("crd", tiny_context())
    assert extra_buffer_count(crd) == 2 * 20 * 128 + 2 + 1
    assert extra_parameter_count(crd) == (6 * 128 + 128) + (5 * 128 + 128)


# ------------------------------------------------------------------------------------------------ gradients
def _grad_cases():
    labels = torch.tensor([0, 2, 1])
    maps = lambda seed, c=3, h=4: randn(3, c, h, h, seed=seed)  # noqa: E731
    vecs = lambda seed, d=5: randn(3, d, seed=seed)  # noqa: E731
    return {
        "kd": (lambda s, t: kd_loss(s, t), vecs(1), vecs(2)),
        "kd_ls": (lambda s, t: kd_ls_loss(s, t), vecs(1), vecs(2)),
        "dkd": (lambda s, t: dkd_loss(s, t, labels), vecs(1), vecs(2)),
        "dkd_ls": (lambda s, t: dkd_loss(s, t, labels, logit_standardization=True), vecs(1), vecs(2)),
        "fitnet": (hint_loss, maps(3), maps(4)),
        "at": (at_loss, maps(3), maps(4, 5, 2)),
        "nst": (nst_loss, maps(3), maps(4, 5, 2)),
        "fsp": (lambda s, t: fsp_loss([s, s.flip(1)], [t, t.flip(1)]), maps(3), maps(4)),
        "ab": (lambda s, t: ab_loss([s], [t]), maps(3), maps(4)),
        "ft": (ft_loss, maps(3), maps(4)),
        "sp": (sp_loss, maps(3), maps(4, 5, 2)),
        "rkd": (rkd_loss, vecs(5), vecs(6, 7)),
        "pkt": (pkt_loss, vecs(5), vecs(6, 7)),
        "vid": (lambda s, t: vid_loss(s, t, torch.zeros(3)), maps(3), maps(4)),
        "crd": (
            lambda s, t: crd_loss(
                F.normalize(s, dim=1), F.normalize(s.flip(0), dim=1), t, t.flip(0), torch.tensor([[0, 1], [1, 2], [2, 0]]), 1.0, 1.0
            ),
            vecs(5),
            vecs(6),
        ),
    }


@pytest.mark.parametrize("case", sorted(_grad_cases()))
def test_pure_losses_send_gradient_to_student_only(case):
    fn, student, teacher = _grad_cases()[case]
    student, teacher = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    loss = fn(student, teacher)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_losses_compute_in_float32_under_bf16_autocast():
    s, t = randn(3, 4, 4, 4, seed=300), randn(3, 4, 4, 4, seed=301)
    s16, t16 = s.bfloat16(), t.bfloat16()
    for fn in (at_loss, nst_loss, sp_loss, hint_loss, ft_loss):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = fn(s16, t16)
        assert value.dtype == torch.float32
        assert approx(value, float(fn(s16.float(), t16.float())), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = kd_loss(s16.flatten(1), t16.flatten(1))
    assert value.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ modules on zoo models
_EXAMPLES = {}


@pytest.fixture(scope="module")
def zoo():
    from rrd_hf.models import build_model

    torch.manual_seed(0)
    _EXAMPLES.clear()
    return {name: build_model(name, 10) for name in ("resnet8", "resnet32", "wrn_16_2")}


def _outputs(model, x, preact, grad):
    with torch.set_grad_enabled(grad):
        return Activations.from_model_output(model(x, output_hidden_states=True, preact=preact))


def _example(zoo, model_name, preact):
    """Example outputs of a dummy forward (eval, no grad) on 2x3x32x32, cached per model and preact."""
    key = (model_name, preact)
    if key not in _EXAMPLES:
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        _EXAMPLES[key] = _outputs(zoo[model_name].eval(), x, preact, grad=False)
    return _EXAMPLES[key]


def _build(zoo, name, teacher_name, **kwargs):
    cls = METHODS[name]
    s_example = _example(zoo, "resnet8", cls.needs_preact)
    t_example = _example(zoo, teacher_name, cls.needs_preact)
    context = MethodContext(s_example, t_example, num_samples=50 if cls.uses_index(kwargs) else None)
    return build_method(name, context, **kwargs)


def test_registry_has_every_method_and_rejects_unknown_names():
    assert sorted(METHODS) == sorted(ALL_NAMES)
    for cls in METHODS.values():
        assert cls.default_weight > 0
    with pytest.raises(ValueError, match="choose one of ab, at, cc, crd"):
        build_method("hint", tiny_context(3, 3))
    assert build_method("KD", tiny_context(3, 3)).name == "kd"
    with pytest.raises(ValueError, match="does not take 'temprature'; its options .* are: temperature=4.0"):
        build_method("kd", tiny_context(3, 3), temprature=2.0)


@pytest.mark.filterwarnings("ignore:.*stage maps")
@pytest.mark.parametrize("teacher_name", ["resnet32", "wrn_16_2"])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_method_builds_and_trains_on_zoo_models(zoo, name, teacher_name):
    cls = METHODS[name]
    if name == "fsp" and teacher_name == "wrn_16_2":
        with pytest.raises(ValueError, match="channel"):
            _build(zoo, name, teacher_name)
        return
    method = _build(zoo, name, teacher_name).train()
    student, teacher = zoo["resnet8"].train(), zoo[teacher_name].eval()
    student.zero_grad(set_to_none=True)
    teacher.zero_grad(set_to_none=True)
    # a batch of 4 (examples had 2): RKD of 2 samples is identically 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    s_out = _outputs(student, x, cls.needs_preact, grad=True)
    t_out = _outputs(teacher, x, cls.needs_preact, grad=True)  # not detached by the caller: the method must do it
    method.context.epoch = 1
    loss = method(s_out, t_out, index=torch.tensor([4, 17, 0, 49]), labels=torch.tensor([3, 9, 0, 3]))
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()), "gradient leaked into the teacher"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without gradient (DDP would fail): {missing}"
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


def test_method_flags_and_hidden_state_errors(zoo):
    assert METHODS["ab"].needs_preact and METHODS["crd"].needs_index and METHODS["dkd"].needs_labels
    assert not METHODS["ab"].main_stage_loss and not METHODS["fsp"].main_stage_loss and METHODS["ft"].main_stage_loss
    no_hidden = tiny_outputs(torch.zeros(2, 64))
    for name in ("fitnet", "at", "sp", "vid", "ab", "ft", "fsp", "nst"):
        with pytest.raises(ValueError, match="output_hidden_states=True"):
            build_method(name, MethodContext(no_hidden, no_hidden))
    with pytest.warns(UserWarning, match="preact=True"):
        x = torch.randn(2, 3, 32, 32)
        post = _outputs(zoo["resnet8"].eval(), x, preact=False, grad=False)
        build_method("ab", MethodContext(post, _outputs(zoo["resnet32"].eval(), x, preact=False, grad=False)))
    with pytest.raises(ValueError, match="hint_layer"):
        _build(zoo, "fitnet", "resnet32", hint_layer=4)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        Activations.from_model_output(type("Out", (), {"logits": torch.zeros(2, 3), "hidden_states": None})())


def test_dkd_module_applies_the_warmup(zoo):
    method = _build(zoo, "dkd", "resnet32")
    s, t = tiny_outputs(randn(2, 10, seed=400)), tiny_outputs(randn(2, 10, seed=401))
    s.logits, t.logits = s.features, t.features
    labels = torch.tensor([1, 2])
    full = float(method(s, t, labels=labels))  # outside a training loop (context.epoch None): no warm-up
    method.context.epoch = 5
    assert float(method(s, t, labels=labels)) == pytest.approx(full * 5 / 20, rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        method(s, t)


def _on_meta(activations: Activations, requires_grad: bool) -> Activations:
    def move(t):
        return t.detach().to("meta").requires_grad_(requires_grad)

    return Activations(move(activations.logits), move(activations.features),
                       tuple(move(h) for h in activations.hidden_states))


@pytest.mark.filterwarnings("ignore:.*stage maps")
@pytest.mark.parametrize("name", ALL_NAMES)
def test_training_steps_read_nothing_back_from_the_device(zoo, name, monkeypatch):
    """The meta device stands in for an accelerator: it holds no values, so `.item()`, `bool()`, `int()`, `.tolist()`,
    copies to the host and ops whose output size depends on the data (boolean masks, `nonzero`, `masked_select`,
    `unique`) all raise on it. Two training steps of every method, forward and backward, must run there.

    Two stand-ins, neither a host read: autocast has no meta backend (`float32_math` becomes a no-op), and a
    random generator cannot live on meta (CRD draws its negatives from the default one)."""
    import contextlib
    import sys

    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("rrd_hf.methods") and hasattr(module, "float32_math"):
            monkeypatch.setattr(module, "float32_math", lambda tensor: contextlib.nullcontext())
    monkeypatch.setattr(CRDMemory, "_generator", lambda self, process_index: None)
    cls = METHODS[name]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    student = _outputs(zoo["resnet8"].eval(), x, cls.needs_preact, grad=False)
    teacher = _outputs(zoo["resnet32"].eval(), x, cls.needs_preact, grad=False)
    context = MethodContext(student, teacher, num_samples=50, dataset_labels=torch.arange(50) % 10, epoch=1)
    method = build_method(name, context).to("meta").train()  # construction-time checks ran on CPU values
    index, labels = torch.tensor([4, 17, 0, 49], device="meta"), torch.tensor([3, 9, 0, 3], device="meta")
    for _ in range(2):  # the first step sets CRD's normalisers; the second is the steady state
        s_meta = _on_meta(student, requires_grad=True)
        loss = method(s_meta, _on_meta(teacher, requires_grad=False), index=index, labels=labels)
        assert loss.device.type == "meta" and loss.dim() == 0
        loss.backward()
        assert any(t.grad is not None for t in (s_meta.logits, s_meta.features, *s_meta.hidden_states))
    if method.init_stage is not None:
        method.begin_init_stage()
        method(_on_meta(student, True), _on_meta(teacher, False), index=index, labels=labels).backward()
        method.end_init_stage()


@pytest.mark.parametrize("name,kwargs", [("ab", {}), ("ft", {}), ("fsp", {}), ("fitnet", {"init_epochs": 2})])
def test_init_stage_trains_exactly_the_listed_parameters(zoo, name, kwargs):
    cls = METHODS[name]
    method = _build(zoo, name, "resnet32", **kwargs).train()
    assert method.init_stage is not None and method.init_stage.epochs == kwargs.get("init_epochs", 30)
    student, teacher = zoo["resnet8"].train(), zoo["resnet32"].eval()
    before = {id(p): p.requires_grad for p in method.parameters()}
    params = method.begin_init_stage()
    ids = {id(p) for p in params}
    assert all(p.requires_grad for p in params)
    others = [p for p in method.parameters() if id(p) not in ids]
    assert not any(p.requires_grad for p in others), "the method's parameters outside the init stage must be frozen"
    if method.init_stage.trains_student:  # the stage runner adds the student's feature modules (not the classifier)
        feature_params = [p for m in student_feature_modules(student) for p in m.parameters()]
        assert not any(id(p) in {id(q) for q in feature_params} for p in student.classifier.parameters())
        assert len(feature_params) == len(list(student.parameters())) - 2
        params = params + feature_params
    student.zero_grad(set_to_none=True)
    method.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 32, 32)
    loss = method(_outputs(student, x, cls.needs_preact, True), _outputs(teacher, x, cls.needs_preact, False))
    loss.backward()
    assert torch.isfinite(loss)
    if name == "fitnet":  # only the layers up to the hint layer and the regressor get a gradient (documented)
        assert all(p.grad is not None for p in method.regressor.parameters())
        assert all(p.grad is not None for p in student.layer2.parameters())
        assert all(p.grad is None for p in student.layer3.parameters())
    else:
        assert all(p.grad is not None for p in params)
    if name == "ft":
        reconstruction_only = method.paraphraser.decoder[0].weight.grad
        assert reconstruction_only is not None
    method.end_init_stage()
    assert {id(p): p.requires_grad for p in method.parameters()} == before
    with pytest.raises(ValueError, match="no init stage"):
        _build(zoo, "at", "resnet32").begin_init_stage()


def test_extra_parameter_counts(zoo):
    assert extra_parameter_count(_build(zoo, "kd", "resnet32")) == 0
    fitnet = _build(zoo, "fitnet", "resnet32")  # 32 -> 32 channels at 16x16: 1x1 conv with bias + BN
    assert extra_parameter_count(fitnet) == 32 * 32 + 32 + 2 * 32
    assert extra_buffer_count(fitnet) == 2 * 32 + 1
    ft = _build(zoo, "ft", "resnet32")
    assert extra_parameter_count(ft, trainable_only=True) == extra_parameter_count(ft.translator)
