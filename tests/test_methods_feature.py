"""Feature-map methods (`rrd_hf.methods.feature`: FitNet, AT, NST, FSP, AB, FT; `rrd_hf.methods.vid`: VID): the pure
losses against naive re-derivations, the regressor's shapes and the pooling to a common size."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import approx, randn
from rrd_hf.methods.feature import ab_loss, at_loss, fsp_loss, ft_loss, hint_loss, nst_loss, pool_to_common_size
from rrd_hf.methods.heads import ConvReg
from rrd_hf.methods.vid import vid_initial_log_scale, vid_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only oversubscribe xdist's cores


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
