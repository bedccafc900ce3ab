"""`memory_similarities` (oneDNN's inner product on CPU) against float64 sums written out, on both of its paths."""

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from rrd_hf.methods import rrd_loss, similarity
from rrd_hf.methods.crd import crd_scores
from rrd_hf.methods.similarity import memory_similarities, onednn_inner_product_available

needs_onednn = pytest.mark.skipif(not onednn_inner_product_available(),
                                  reason="this PyTorch build has no working oneDNN inner product")


@contextmanager
def mkldnn_enabled(enabled: bool):
    """`torch.backends.mkldnn.enabled` for the block (`torch.backends.mkldnn.flags` also sets TF32 and warns)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def unit(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1).float()


def reference(embeddings, memory, grad):
    """Similarities and d(Σ grad · similarities)/d embeddings as float64 sums over the shared axis (einsum)."""
    e, m, g = embeddings.double(), memory.double(), grad.double()
    return torch.einsum("bd,kd->bk", e, m), torch.einsum("bk,kd->bd", g, m)


@pytest.fixture
def force_onednn(monkeypatch):
    """oneDNN for every eligible product, whatever this machine's CPU vendor (the `auto` choice)."""
    monkeypatch.setenv(similarity.PRODUCT_ENV, "onednn")


@pytest.fixture
def count_onednn_calls(monkeypatch):
    calls = []
    original = similarity._inner_product

    def counting(inputs, weight):
        calls.append((tuple(inputs.shape), tuple(weight.shape)))
        return original(inputs, weight)

    monkeypatch.setattr(similarity, "_inner_product", counting)
    return calls


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "matmul"])
@pytest.mark.parametrize("batch,keys,dim", [(7, 300, 16), (64, 4096, 128), (1, 5, 3)])
def test_values_and_gradient_match_float64_sums(onednn, batch, keys, dim, monkeypatch):
    if onednn and not onednn_inner_product_available():
        pytest.skip("this PyTorch build has no working oneDNN inner product")
    monkeypatch.setenv(similarity.PRODUCT_ENV, "onednn" if onednn else "matmul")
    embeddings, memory = unit(batch, dim, seed=1), unit(keys, dim, seed=2)
    grad = torch.randn(batch, keys, generator=torch.Generator().manual_seed(3))
    expected, expected_grad = reference(embeddings, memory, grad)
    leaf = embeddings.clone().requires_grad_()
    with mkldnn_enabled(onednn):
        values = memory_similarities(leaf, memory)
        values.backward(grad)
    assert values.shape == (batch, keys) and values.dtype == torch.float32
    torch.testing.assert_close(values.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(leaf.grad.double(), expected_grad, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_float32_cpu_products_go_through_onednn_forward_and_backward(force_onednn, count_onednn_calls):
    embeddings, memory = unit(4, 8, seed=1).requires_grad_(), unit(32, 8, seed=2)
    memory_similarities(embeddings, memory).sum().backward()
    assert count_onednn_calls == [((4, 8), (32, 8)), ((4, 32), (8, 32))]  # z·Mᵀ, then the gradient ·M
    with torch.no_grad():
        memory_similarities(embeddings, memory)
    assert len(count_onednn_calls) == 3


@needs_onednn
@pytest.mark.parametrize("vendor,choice,expected", [
    ("AuthenticAMD", None, True), ("AuthenticAMD", "auto", True), ("GenuineIntel", None, False),
    ("", None, False), ("AuthenticAMD", "matmul", False), ("GenuineIntel", "onednn", True),
    ("GenuineIntel", " OneDNN ", True),
])
def test_the_cpu_vendor_or_the_environment_picks_the_path(vendor, choice, expected, monkeypatch, count_onednn_calls):
    """MKL runs AVX2 code on AMD processors whatever they support, AVX-512 on Intel's: oneDNN on AMD only, by default."""
    monkeypatch.setattr(similarity, "cpu_vendor", lambda: vendor)
    if choice is None:
        monkeypatch.delenv(similarity.PRODUCT_ENV, raising=False)
    else:
        monkeypatch.setenv(similarity.PRODUCT_ENV, choice)
    embeddings, memory = unit(4, 8, seed=1).requires_grad_(), unit(32, 8, seed=2)
    values = memory_similarities(embeddings, memory)
    values.sum().backward()
    assert similarity.onednn_preferred() is expected
    assert len(count_onednn_calls) == (2 if expected else 0)
    torch.testing.assert_close(values, embeddings.detach() @ memory.t())


def test_an_unknown_product_choice_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(similarity.PRODUCT_ENV, "mkl")
    with pytest.raises(ValueError, match="RRD_HF_CPU_MEMORY_PRODUCT='mkl' is not one of auto, onednn, matmul"):
        memory_similarities(unit(4, 8), unit(32, 8))


def test_the_cpu_vendor_is_read_once_as_a_string():
    assert isinstance(similarity.cpu_vendor(), str)
    assert similarity.cpu_vendor() is similarity.cpu_vendor()


@needs_onednn
def test_other_cases_take_the_plain_product(force_onednn, count_onednn_calls):
    embeddings, memory = unit(4, 8, seed=1), unit(32, 8, seed=2)
    # A memory that needs a gradient gets one (the oneDNN path treats it as a constant).
    trained = memory.clone().requires_grad_()
    memory_similarities(embeddings, trained).sum().backward()
    torch.testing.assert_close(trained.grad, embeddings.sum(0).expand(32, 8))
    memory_similarities(embeddings.double(), memory.double())  # not float32
    with mkldnn_enabled(False):  # the user turned oneDNN off
        memory_similarities(embeddings, memory)
    assert memory_similarities(embeddings[:0], memory).shape == (0, 32)  # an empty batch
    assert count_onednn_calls == []


def test_strided_embeddings_and_memory_give_the_same_values():
    embeddings, memory = unit(16, 6, seed=1), unit(40, 6, seed=2)
    strided_embeddings = embeddings.t().contiguous().t()
    strided_memory = memory.t().contiguous().t()
    torch.testing.assert_close(memory_similarities(strided_embeddings, strided_memory), embeddings @ memory.t())


def test_a_memory_changed_in_place_before_backward_is_an_error_not_a_wrong_gradient():
    embeddings, memory = unit(4, 8, seed=1).requires_grad_(), unit(32, 8, seed=2)
    values = memory_similarities(embeddings, memory)
    memory.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        values.sum().backward()


@pytest.mark.parametrize("switch", ["environment", "mkldnn_flag"])
def test_rrd_and_crd_on_either_path_agree(switch, monkeypatch):
    """The losses built on it: the same values and gradients with oneDNN on and off (float rounding apart)."""
    z_s, z_t, memory = unit(16, 32, seed=1), unit(16, 32, seed=2), unit(2048, 32, seed=3)
    indices = torch.randint(0, 2048, (16, 65), generator=torch.Generator().manual_seed(4))
    results = []
    for enabled in (True, False):
        if switch == "environment":
            monkeypatch.setenv(similarity.PRODUCT_ENV, "onednn" if enabled else "matmul")
        else:
            monkeypatch.setenv(similarity.PRODUCT_ENV, "onednn")
        with mkldnn_enabled(enabled or switch == "environment"):
            student = z_s.clone().requires_grad_()
            loss = rrd_loss(student, z_t, memory, 0.04, 0.1) + crd_scores(student, memory, indices, 0.07).log().mean()
            loss.backward()
            results.append((loss.detach(), student.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
