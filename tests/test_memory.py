"""Teacher memories (RRD's FIFO ring and momentum memory, CRD's two banks): every update against a naive row-by-row
computation, out-of-place updates (a loss computed before an update backpropagates as on a snapshot of the memory
it read), enqueue orders, state round trips."""

import pytest
import torch
import torch.nn.functional as F

from rrd_hf import Activations, FifoMemory, MethodContext, MomentumMemory, build_method, rrd_loss


def acts(features):
    return Activations(logits=torch.zeros(features.shape[0], 3), features=features)


def make_rrd(student_dim, teacher_dim, num_samples=None, **options):
    context = MethodContext(acts(torch.zeros(2, student_dim)), acts(torch.zeros(2, teacher_dim)), num_samples=num_samples)
    return build_method("rrd", context, **options)


def call(module, student_features, teacher_features, index=None):
    return module(acts(student_features), acts(teacher_features), index=index)


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_initial_rows_are_unit_norm_and_seeded():
    memory = FifoMemory(100, 16, seed=3)
    torch.testing.assert_close(memory.keys.norm(dim=1), torch.ones(100))
    torch.testing.assert_close(FifoMemory(100, 16, seed=3).keys, memory.keys)
    assert not torch.equal(FifoMemory(100, 16, seed=4).keys, memory.keys)
    assert memory.num_filled == 0


@pytest.mark.parametrize("batch_sizes", [[3, 4, 5, 7, 2, 11, 1], [10, 10, 10], [1] * 23, [25, 3]])
def test_fifo_wraps_around_like_writing_row_by_row(batch_sizes):
    size, dim = 10, 4
    memory = FifoMemory(size, dim)
    reference, pointer = memory.keys.clone(), 0
    for step, n in enumerate(batch_sizes):
        keys = unit(n, dim, seed=step)
        memory.update(keys)
        for row in keys:  # the naive ring: one row at a time
            reference[pointer] = row
            pointer = (pointer + 1) % size
        torch.testing.assert_close(memory.keys, reference)
        assert int(memory.pointer) == pointer
    assert memory.num_filled == min(sum(batch_sizes), size)
    torch.testing.assert_close(memory.keys.norm(dim=1), torch.ones(size))


def test_update_leaves_the_memory_the_loss_read_so_autograd_survives():
    memory = FifoMemory(8, 4)
    student = unit(3, 4, 1).requires_grad_()
    loss = rrd_loss(student, unit(3, 4, 2), memory.anchors(), 0.1, 0.1)
    before = memory.keys
    memory.update(unit(3, 4, 3))  # would raise "modified by an inplace operation" if written where the loss read
    loss.backward()
    assert student.grad is not None
    assert memory.keys is not before


def naive_momentum(bank, keys, indices, momentum):
    """`normalize(m · bank[i] + (1 − m) · key)` row by row; a repeated index keeps its first occurrence's value."""
    bank, seen = bank.clone(), set()
    for key, i in zip(keys, indices.tolist()):
        if i not in seen:
            seen.add(i)
            bank[i] = F.normalize(momentum * bank[i] + (1 - momentum) * key, dim=0)
    return bank


def _banked_memory(kind):
    """A memory of `kind` with, for each of its banks, the keys it receives from `update(keys, index)`."""
    from rrd_hf.methods.crd import CRDMemory

    if kind == "fifo":
        memory = FifoMemory(8, 4)
        return memory, {"keys": lambda keys: keys}, lambda keys, index: memory.update(keys)
    if kind == "momentum":
        memory = MomentumMemory(12, 4, momentum=0.5, num_anchors=None, seed=0)
        return memory, {"keys": lambda keys: keys}, lambda keys, index: memory.update(keys, index)
    memory = CRDMemory(12, 4, num_negatives=3, momentum=0.5, seed=0)
    banks = {"student_bank": lambda keys: keys, "teacher_bank": lambda keys: keys.flip(0)}
    return memory, banks, lambda keys, index: memory.update(keys, keys.flip(0), index)


@pytest.mark.parametrize("kind", ["momentum", "crd"])
def test_dataset_sized_banks_equal_the_naive_rule_at_every_update(kind):
    """The momentum memory (all slots as anchors) and CRD's two banks, against the update rule applied row by row."""
    memory, banks, update = _banked_memory(kind)
    expected = {name: getattr(memory, name).clone() for name in banks}
    for step in range(5):
        keys, index = unit(3, 4, step), torch.tensor([step, step + 5, step])  # a duplicate index as well
        for name, bank_keys in banks.items():
            expected[name] = naive_momentum(expected[name], bank_keys(keys), index, 0.5)
        update(keys, index)
        for name in banks:
            torch.testing.assert_close(getattr(memory, name), expected[name], msg=f"step {step}, {name}")


@pytest.mark.parametrize("kind", ["fifo", "momentum", "crd"])
def test_an_update_leaves_the_tensor_a_previous_loss_read_unchanged(kind):
    """Out of place: every update makes a new tensor, and the one a loss read keeps its values."""
    memory, banks, update = _banked_memory(kind)
    for step in range(3):
        read = {name: getattr(memory, name) for name in banks}  # what a loss of this step reads
        copies = {name: tensor.clone() for name, tensor in read.items()}
        update(unit(3, 4, step), torch.tensor([step, step + 4, step + 1]))
        for name in banks:
            assert getattr(memory, name) is not read[name], (step, name)
            assert torch.equal(read[name], copies[name]), (step, name)
            assert not torch.equal(getattr(memory, name), copies[name]), (step, name)  # the update did write


def _rrd_step(memory, seed, enqueue="after"):
    student = unit(3, 4, seed).requires_grad_()
    teacher = unit(3, 4, seed + 100)
    if enqueue == "before":
        memory.update(teacher)
    loss = rrd_loss(student, teacher, memory.anchors(), 0.1, 0.1)
    if enqueue == "after":
        memory.update(teacher)
    return student, loss


@pytest.mark.parametrize("enqueue", ["after", "before"])
def test_the_training_cycle_gives_the_snapshot_gradient_and_the_naive_ring(enqueue):
    """Loss, update, backward, as the trainer runs them: each step's gradient is the one computed on a snapshot of the
    memory the loss read, and after each update the memory is the naive ring's."""
    memory = FifoMemory(16, 4)
    reference = memory.keys.clone()
    for step in range(7):  # 21 keys into 16 slots: wraps around
        snapshot = memory.keys.clone()
        if enqueue == "before":
            for row, key in enumerate(unit(3, 4, step + 100)):
                snapshot[(3 * step + row) % 16] = key
        student, loss = _rrd_step(memory, step, enqueue)
        loss.backward()
        expected = unit(3, 4, step).requires_grad_()
        rrd_loss(expected, unit(3, 4, step + 100), snapshot, 0.1, 0.1).backward()
        assert torch.equal(student.grad, expected.grad), step
        for row, key in enumerate(unit(3, 4, step + 100)):
            reference[(3 * step + row) % 16] = key
        assert torch.equal(memory.keys, reference), step


@pytest.mark.parametrize("enqueue", ["after", "before"])
def test_a_graph_kept_across_updates_keeps_its_memory(enqueue):
    """Several losses summed before one backward (or any graph still alive): each backpropagates through the memory it
    read, as a loss on a snapshot of that memory does."""
    memory = FifoMemory(8, 4)
    snapshots, students, losses = [], [], []
    for step in range(3):
        snapshot = memory.keys.clone()
        if enqueue == "before":
            for row, key in enumerate(unit(3, 4, step + 100)):
                snapshot[(3 * step + row) % 8] = key
        snapshots.append(snapshot)
        student, loss = _rrd_step(memory, step, enqueue)
        students.append(student)
        losses.append(loss)
    sum(losses).backward()
    for snapshot, student, step in zip(snapshots, students, range(3)):
        expected = unit(3, 4, step).requires_grad_()
        rrd_loss(expected, unit(3, 4, step + 100), snapshot, 0.1, 0.1).backward()
        assert torch.equal(student.grad, expected.grad), step


@pytest.mark.parametrize("change", ["load_state_dict", "assign", "to"])
def test_fifo_stays_a_ring_when_its_keys_are_replaced_between_updates(change):
    """A checkpoint loaded into a memory in use (resume), an assigned or moved `keys`: the next updates still give
    exactly the naive ring's rows."""
    size, dim = 10, 4
    memory, source = FifoMemory(size, dim, seed=0), FifoMemory(size, dim, seed=7)
    for step in range(3):
        memory.update(unit(4, dim, step))
        source.update(unit(4, dim, 10 + step))
    if change == "load_state_dict":
        memory.load_state_dict(source.state_dict())
    elif change == "assign":
        memory.keys, memory.pointer = source.keys.clone(), source.pointer.clone()
    else:
        memory.to(torch.float64)
        source.to(torch.float64)
    reference, pointer = source.keys.clone() if change != "to" else memory.keys.clone(), int(memory.pointer)
    for step in range(3, 8):
        keys = unit(4, dim, step).to(reference.dtype)
        memory.update(keys)
        for row in keys:
            reference[pointer] = row
            pointer = (pointer + 1) % size
        assert torch.equal(memory.keys, reference), step


def test_state_dict_round_trip_continues_identically():
    a = FifoMemory(12, 4, seed=1)
    for step in range(3):
        a.update(unit(5, 4, step))
    b = FifoMemory(12, 4, seed=99)
    b.load_state_dict(a.state_dict())
    for step in range(3, 6):
        a.update(unit(5, 4, step))
        b.update(unit(5, 4, step))
    torch.testing.assert_close(a.keys, b.keys)
    assert int(a.pointer) == int(b.pointer) and a.num_filled == b.num_filled


@pytest.mark.parametrize("enqueue", ["after", "before"])
def test_enqueue_orders(enqueue):
    torch.manual_seed(0)
    module = make_rrd(6, 5, embedding_dim=4, memory_size=16, enqueue=enqueue, student_temperature=0.1,
                      teacher_temperature=0.05)
    s_feat, t_feat = torch.randn(3, 6), torch.randn(3, 5)
    z_s, z_t = module.embed(s_feat, t_feat)
    before = module.memory.keys.clone()
    after = before.clone()
    after[:3] = z_t
    loss = call(module, s_feat, t_feat)
    expected_memory = after if enqueue == "before" else before
    torch.testing.assert_close(loss, rrd_loss(z_s, z_t, expected_memory, 0.1, 0.05))
    torch.testing.assert_close(module.memory.keys, after)  # enqueued either way
    if enqueue == "before":  # each sample's own teacher key is an anchor
        own = (z_t @ module.memory.keys.t()).max(dim=1).values
        torch.testing.assert_close(own, torch.ones(3))


def test_teacher_head_is_frozen_and_eval_does_not_touch_memory():
    module = make_rrd(6, 5, embedding_dim=4, memory_size=16)
    assert not any(p.requires_grad for p in module.teacher_head.parameters())
    assert all(p.requires_grad for p in module.student_head.parameters())
    call(module, torch.randn(3, 6), torch.randn(3, 5)).backward()
    assert module.teacher_head.weight.grad is None
    assert module.student_head.weight.grad.abs().sum() > 0
    module.eval()
    keys = module.memory.keys.clone()
    call(module, torch.randn(3, 6), torch.randn(3, 5))
    torch.testing.assert_close(module.memory.keys, keys)


def test_momentum_memory_update_rule_and_duplicates():
    memory = MomentumMemory(10, 4, momentum=0.5, num_anchors=None, seed=0)
    old = memory.keys.clone()
    keys = unit(4, 4, 1)
    indices = torch.tensor([7, 2, 7, 5])  # sample 7 twice (a padded last batch): its first key wins
    memory.update(keys, indices)
    expected = old.clone()
    for row, i in ((0, 7), (1, 2), (3, 5)):
        expected[i] = F.normalize(0.5 * old[i] + 0.5 * keys[row], dim=0)
    torch.testing.assert_close(memory.keys, expected)
    assert memory.num_filled == 3
    torch.testing.assert_close(memory.keys.norm(dim=1), torch.ones(10))


def test_momentum_memory_anchor_draws_are_seeded_and_change_per_step():
    a, b = MomentumMemory(50, 4, num_anchors=8, seed=5), MomentumMemory(50, 4, num_anchors=8, seed=5)
    torch.testing.assert_close(a.anchors(), b.anchors())
    first = a.anchor_indices()
    assert len(set(first.tolist())) == 8
    a.update(unit(2, 4, 0), torch.tensor([0, 1]))
    assert not torch.equal(first, a.anchor_indices())
    c = MomentumMemory(50, 4, num_anchors=8, seed=0)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.keys, a.keys)
    assert int(c.num_updates) == int(a.num_updates)


def test_momentum_memory_errors_are_actionable():
    memory = MomentumMemory(10, 4)
    with pytest.raises(ValueError, match="index"):
        memory.update(unit(2, 4, 0))
    with pytest.raises(ValueError, match="out of range"):
        memory.update(unit(2, 4, 0), torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="momentum"):
        MomentumMemory(10, 4, momentum=1.0)


def test_rrd_loss_module_with_momentum_memory_trains():
    module = make_rrd(6, 5, num_samples=20, embedding_dim=4, num_anchors=8, memory_type="momentum")
    loss = call(module, torch.randn(3, 6), torch.randn(3, 5), torch.tensor([0, 4, 19]))
    loss.backward()
    assert torch.isfinite(loss) and module.memory.num_filled == 3


def test_the_momentum_memory_draws_num_anchors_slots_and_the_fifo_memory_refuses_the_option():
    """`memory_size` is the FIFO ring's length; the momentum memory has one slot per training sample and draws
    `num_anchors` of them at every step (all of them when there are fewer)."""
    module = make_rrd(6, 5, num_samples=20, embedding_dim=4, num_anchors=8, memory_type="momentum")
    assert module.memory.size == 20 and module.memory.anchors().shape == (8, 4)
    everything = make_rrd(6, 5, num_samples=20, embedding_dim=4, memory_type="momentum")
    assert everything.memory.anchors().shape == (20, 4)  # the default, 16384, exceeds the 20 slots
    with pytest.raises(ValueError, match="num_anchors=8 applies to the momentum memory only"):
        make_rrd(6, 5, embedding_dim=4, memory_size=32, num_anchors=8)
    with pytest.raises(ValueError, match="num_anchors must be >= 1"):
        make_rrd(6, 5, num_samples=20, embedding_dim=4, num_anchors=0, memory_type="momentum")
