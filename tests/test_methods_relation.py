"""Relational methods (`rrd_hf.methods.relation`: SP, CC, RKD, PKT): the pure losses against naive re-derivations."""

import math

import pytest

from helpers import approx, randn
from rrd_hf.methods.relation import cc_loss, pkt_loss, rkd_loss, sp_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only oversubscribe xdist's cores


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


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
