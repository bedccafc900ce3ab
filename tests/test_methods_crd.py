"""CRD (`rrd_hf.methods.crd`): the loss against a naive re-derivation and RepDistiller's gather form, the banks'
update rule and initialisation, the negative sampler, and the module (first-batch normalisers, state, data
parallelism). The banks' out-of-place updates are tested with the RRD memories in test_memory.py."""

import math
import threading

import pytest
import torch
import torch.nn.functional as F

from helpers import approx, randn, tiny_context, tiny_outputs
from rrd_hf.methods import CRDMemory, build_method, extra_buffer_count, extra_parameter_count
from rrd_hf.methods.crd import crd_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only oversubscribe xdist's cores


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
    """Both banks: `bank[i] ← normalize(m · bank[i] + (1 − m) · z_i)` at the batch's indices, written out in Python
    floats; a repeated index takes the key of its first occurrence; the update is out of place."""
    memory = CRDMemory(6, 3, num_negatives=2, momentum=0.5, seed=0)
    student_keys, teacher_keys = randn(4, 3, seed=64), randn(4, 3, seed=65)
    indices = torch.tensor([4, 1, 4, 0])  # 4 repeated: its first occurrence wins
    old = {"student_bank": memory.student_bank, "teacher_bank": memory.teacher_bank}
    copies = {name: bank.clone() for name, bank in old.items()}
    memory.update(student_keys, teacher_keys, indices)
    for name, keys in (("student_bank", student_keys), ("teacher_bank", teacher_keys)):
        expected = copies[name].double().clone()
        for key, i in ((keys[0], 4), (keys[1], 1), (keys[3], 0)):
            row = [0.5 * a + 0.5 * b for a, b in zip(copies[name][i].tolist(), key.tolist())]
            norm = math.sqrt(sum(v * v for v in row))
            expected[i] = torch.tensor([v / norm for v in row], dtype=torch.float64)
        updated = getattr(memory, name)
        assert torch.allclose(updated.double(), expected, atol=1e-6), name
        assert updated is not old[name] and torch.equal(old[name], copies[name]), name  # out of place
    assert memory.updates == 1 and int(memory.num_updates) == 1
    with pytest.raises(ValueError, match="out of range"):
        memory.update(student_keys[:1], teacher_keys[:1], torch.tensor([6]))


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
