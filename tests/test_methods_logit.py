"""Logit methods (`rrd_hf.methods.logit`: KD, KD with logit standardisation, DKD, DKD+LS): the pure losses against
naive re-derivations from their definitions, and DKD's module."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import approx, build_on_zoo, randn, tiny_outputs, zoo  # noqa: F401  (zoo: a fixture)
from rrd_hf.methods.logit import (
    dkd_loss,
    dkd_terms,
    dkd_warmup_factor,
    kd_loss,
    kd_ls_loss,
    standardize_logits,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only oversubscribe xdist's cores


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


def test_dkd_module_applies_the_warmup(zoo):
    method = build_on_zoo(zoo, "dkd", "resnet32")
    s, t = tiny_outputs(randn(2, 10, seed=400)), tiny_outputs(randn(2, 10, seed=401))
    s.logits, t.logits = s.features, t.features
    labels = torch.tensor([1, 2])
    full = float(method(s, t, labels=labels))  # outside a training loop (context.epoch None): no warm-up
    method.context.epoch = 5
    assert float(method(s, t, labels=labels)) == pytest.approx(full * 5 / 20, rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        method(s, t)
