"""The init stages of AB, FSP and FT through RRDTrainer, against an independent re-statement of the benchmark's loop.

The reference is RepDistiller `helper/pretrain.py::init()` (the CRD benchmark code), restated below without any of
rrd_hf's stage machinery:

    model_t.eval(); model_s.eval(); init_modules.train()
    optimizer = optim.SGD(init_modules.parameters(), lr, momentum=0.9, weight_decay=5e-4)
    for epoch in 1..init_epochs, for each batch:
        feat_s = model_s(x, is_feat=True, preact=(distill == "abound"))
        feat_t = model_t(x, is_feat=True, preact=...)  (no grad)
        abound: loss = sum(ABLoss(connector(feat_s[1:-1]), feat_t[1:-1]))
        factor: loss = MSE(paraphraser(feat_t[-2]) reconstruction, feat_t[-2])
        fsp:    loss = sum(FSP(feat_s[:-1], feat_t[:-1]))
        optimizer.zero_grad(); loss.backward(); optimizer.step()

`init_modules` is `[connector, model_s.get_feat_modules()]` for AB, `model_s.get_feat_modules()` for FSP and
`[paraphraser]` for FT; for a WRN, `get_feat_modules()` is `[conv1, block1, block2, block3]` (models/wrn.py): the
final BatchNorm `bn1` and `fc` are not trained, and `bn1` stays in eval mode. The trainer runs the same batches in the
same order (sequential sampling), so parameters, BatchNorm statistics and the first loss must agree.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import TinyImageDataset
from rrd_hf import RRDConfig, RRDTrainer
from rrd_hf.models import build_model

LEARNING_RATE, WEIGHT_DECAY, BATCH, SAMPLES, INIT_EPOCHS = 0.05, 5e-4, 8, 16, 2


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ the reference
def wrn_get_feat_modules(model: nn.Module) -> nn.ModuleList:
    """RepDistiller models/wrn.py `WideResNet.get_feat_modules()` (named here, not taken from rrd_hf)."""
    return nn.ModuleList([model.conv1, model.block1, model.block2, model.block3])


def feats(model: nn.Module, x: torch.Tensor, preact: bool) -> list[torch.Tensor]:
    """`model(x, is_feat=True, preact=preact)[0]`: stem, stage outputs, pooled vector."""
    return list(model(pixel_values=x, output_hidden_states=True, preact=preact).hidden_states)


def ab_loss_group(g_s, g_t, margin=1.0):
    """RepDistiller distiller_zoo/AB.py `ABLoss.forward` (weights 2^(i - n + 1), / batch, / 1000 * 3)."""
    n, batch = len(g_s), g_s[0].shape[0]
    group = []
    for i, (s, t) in enumerate(zip(g_s, g_t)):
        l2 = ((s + margin) ** 2 * ((s > -margin) & (t <= 0)).float()
              + (s - margin) ** 2 * ((s <= margin) & (t > 0)).float())
        group.append(2 ** (i - n + 1) * torch.abs(l2).sum() / batch / 1000 * 3)
    return group


def fsp_loss_group(g_s, g_t):
    """RepDistiller distiller_zoo/FSP.py `FSP.forward` (the larger of two consecutive maps pooled to the smaller)."""

    def compute_fsp(g):
        out = []
        for bot, top in zip(g[:-1], g[1:]):
            if bot.shape[2] > top.shape[2]:
                bot = F.adaptive_avg_pool2d(bot, (top.shape[2], top.shape[2]))
            elif bot.shape[2] < top.shape[2]:
                top = F.adaptive_avg_pool2d(top, (bot.shape[2], bot.shape[2]))
            bot = bot.unsqueeze(1).flatten(3)
            top = top.unsqueeze(2).flatten(3)
            out.append((bot * top).mean(-1))
        return out

    return [(s - t).pow(2).mean() for s, t in zip(compute_fsp(g_s), compute_fsp(g_t))]


def repdistiller_init(distill, model_s, model_t, init_modules, batches, epochs, lr):
    """`helper/pretrain.py::init()`, returning the loss of every step."""
    model_t.eval()
    model_s.eval()
    init_modules.train()
    optimizer = torch.optim.SGD(init_modules.parameters(), lr=lr, momentum=0.9, weight_decay=WEIGHT_DECAY)
    losses = []
    for _ in range(epochs):
        for x in batches:
            preact = distill == "ab"
            feat_s = feats(model_s, x, preact)
            with torch.no_grad():
                feat_t = [f.detach() for f in feats(model_t, x, preact)]
            if distill == "ab":
                loss = sum(ab_loss_group(init_modules[0](feat_s[1:-1]), feat_t[1:-1]))
            elif distill == "ft":
                _, reconstruction = init_modules[0](feat_t[-2])
                loss = F.mse_loss(reconstruction, feat_t[-2])
            else:
                loss = sum(fsp_loss_group(feat_s[:-1], feat_t[:-1]))
            losses.append(float(loss.detach()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return losses


# ------------------------------------------------------------------------------------------------ the trainer
def make_trainer(tmp_path, method, student="wrn_16_1", teacher="wrn_16_2", samples=SAMPLES, **overrides):
    torch.manual_seed(0)
    student_model, teacher_model = build_model(student, 4), build_model(teacher, 4)
    values = dict(output_dir=str(tmp_path / method), rrd_weight=0.0, distill_method=method, init_epochs=INIT_EPOCHS,
                  per_device_train_batch_size=BATCH, train_sampling_strategy="sequential", learning_rate=LEARNING_RATE,
                  weight_decay=WEIGHT_DECAY, max_grad_norm=0.0, max_steps=1, use_cpu=True, report_to="none",
                  disable_tqdm=True, save_strategy="no", seed=0, logging_steps=1)
    values.update(overrides)
    return RRDTrainer(model=student_model, teacher_model=teacher_model, args=RRDConfig(**values),
                      train_dataset=TinyImageDataset(samples, num_labels=4, size=32, with_index=True))


def train_and_capture_init_stage(trainer):
    """Train; return what the init stage left (student state, method state, the stage optimizer's learning rates)."""
    captured = {}
    leave_stage = trainer.leave_stage

    def capture_then_leave():
        if trainer.stage is not None:
            captured["student"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            captured["method"] = {k: v.detach().clone() for k, v in trainer.methods.state_dict().items()}
            captured["lrs"] = {group["lr"] for group in trainer.optimizer.param_groups}
        leave_stage()

    trainer.leave_stage = capture_then_leave
    trainer.train()
    return captured


def batches_of(trainer):
    images = trainer.train_dataset.images
    return [images[i:i + BATCH] for i in range(0, len(images), BATCH)]


def init_stage_losses(trainer):
    return [log["init_stage_loss"] for log in trainer.state.log_history if "init_stage_loss" in log]


def assert_states_match(actual: dict, expected: dict, what: str):
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        # float32 rounding: the trainer's and the reference loop's forwards may add in other orders
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what} {name} {m}")


def changed_names(before: dict, after: dict) -> set[str]:
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.filterwarnings("ignore:.*stage maps")
def test_ab_init_stage_is_the_benchmarks_loop_on_a_wrn_student(tmp_path):
    trainer = make_trainer(tmp_path, "ab")
    student, teacher = copy.deepcopy(trainer.model), copy.deepcopy(trainer.teacher.model)
    connector = copy.deepcopy(trainer.methods["ab"].connector).requires_grad_(True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    reference_losses = repdistiller_init("ab", student, teacher, nn.ModuleList([connector, wrn_get_feat_modules(student)]),
                                         batches_of(trainer), INIT_EPOCHS, LEARNING_RATE)
    captured = train_and_capture_init_stage(trainer)

    assert captured["lrs"] == {LEARNING_RATE}  # AB's stage runs at the run's learning rate, as init() does
    assert_states_match(captured["student"], student.state_dict(), "student")
    connector_state = {k[len("ab.connector."):]: v for k, v in captured["method"].items() if k.startswith("ab.connector.")}
    assert_states_match(connector_state, connector.state_dict(), "connector")
    # What moved and what did not, named from the benchmark's WRN: everything under conv1/block1-3 (their BN
    # statistics included), but not the final BatchNorm (parameters nor statistics) and not the classifier.
    changed = changed_names(before, captured["student"])
    assert not {name for name in changed if name.startswith(("bn1.", "classifier."))}
    for prefix in ("conv1.", "block1.", "block2.", "block3."):
        assert any(name.startswith(prefix) for name in changed), prefix
    assert {"block2.layer.0.bn1.running_mean", "block3.layer.0.bn1.running_var"} <= changed
    # The BatchNorms that preact calls twice (block2/3.layer[0].bn1) count two batches per step; others one.
    steps = INIT_EPOCHS * SAMPLES // BATCH
    assert int(captured["student"]["block2.layer.0.bn1.num_batches_tracked"]) == 2 * steps
    assert int(captured["student"]["block1.layer.0.bn1.num_batches_tracked"]) == steps
    assert int(captured["student"]["bn1.num_batches_tracked"]) == 0
    # The logged loss of the first epoch is the mean of its steps' losses, as the reference computes them.
    epoch_losses = init_stage_losses(trainer)
    per_epoch = SAMPLES // BATCH
    expected = [sum(reference_losses[i:i + per_epoch]) / per_epoch for i in range(0, len(reference_losses), per_epoch)]
    assert epoch_losses == pytest.approx(expected, rel=1e-5)


@pytest.mark.filterwarnings("ignore:.*stage maps")
def test_ab_first_loss_reads_the_final_batchnorm_in_eval_mode(tmp_path):
    # The third AB term reads bn1(block3 output) (preact). The benchmark computes it with the student in eval mode
    # and only get_feat_modules() in train mode, so bn1 normalises with its running statistics; with the whole
    # student in train mode it would use the batch's statistics (the 47.1 vs 69.7 at one setting). Equal
    # widths, as in wrn_40_2 -> wrn_16_2: the connectors are identities, so nothing re-normalises bn1's output.
    trainer = make_trainer(tmp_path, "ab", teacher="wrn_16_1", samples=BATCH, init_epochs=1)  # one step, one log
    x = batches_of(trainer)[0]
    student, connector = copy.deepcopy(trainer.model), copy.deepcopy(trainer.methods["ab"].connector).train()
    with torch.no_grad():
        feat_t = feats(copy.deepcopy(trainer.teacher.model).eval(), x, preact=True)[1:-1]

        def terms(whole_student_in_train_mode: bool) -> list[float]:
            model = copy.deepcopy(student).train(whole_student_in_train_mode)
            wrn_get_feat_modules(model).train()
            return [float(v) for v in ab_loss_group(copy.deepcopy(connector)(feats(model, x, preact=True)[1:-1]), feat_t)]

        benchmark, train_mode = terms(False), terms(True)
    assert benchmark[:2] == pytest.approx(train_mode[:2], rel=1e-6)  # the first two terms do not read bn1
    assert benchmark[2] != pytest.approx(train_mode[2], rel=1e-2)
    train_and_capture_init_stage(trainer)
    assert init_stage_losses(trainer) == pytest.approx([sum(benchmark)], rel=1e-5)
    assert init_stage_losses(trainer) != pytest.approx([sum(train_mode)], rel=1e-3)


def test_fsp_init_stage_is_the_benchmarks_loop_on_a_wrn_student(tmp_path):
    trainer = make_trainer(tmp_path, "fsp", teacher="wrn_16_1")  # FSP needs equal channel counts
    student, teacher = copy.deepcopy(trainer.model), copy.deepcopy(trainer.teacher.model)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    reference_losses = repdistiller_init("fsp", student, teacher, wrn_get_feat_modules(student), batches_of(trainer),
                                         INIT_EPOCHS, LEARNING_RATE)
    captured = train_and_capture_init_stage(trainer)

    assert captured["lrs"] == {LEARNING_RATE}
    assert_states_match(captured["student"], student.state_dict(), "student")
    changed = changed_names(before, captured["student"])
    assert not {name for name in changed if name.startswith(("bn1.", "classifier."))}
    assert int(captured["student"]["block2.layer.0.bn1.num_batches_tracked"]) == INIT_EPOCHS * SAMPLES // BATCH
    per_epoch = SAMPLES // BATCH
    expected = [sum(reference_losses[i:i + per_epoch]) / per_epoch for i in range(0, len(reference_losses), per_epoch)]
    assert init_stage_losses(trainer) == pytest.approx(expected, rel=1e-5)


def test_ft_init_stage_trains_the_paraphraser_alone_at_the_runs_learning_rate(tmp_path):
    trainer = make_trainer(tmp_path, "ft")
    student, teacher = copy.deepcopy(trainer.model), copy.deepcopy(trainer.teacher.model)
    paraphraser = copy.deepcopy(trainer.methods["ft"].paraphraser).requires_grad_(True)
    translator_before = {k: v.clone() for k, v in trainer.methods["ft"].translator.state_dict().items()}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    reference_losses = repdistiller_init("ft", student, teacher, nn.ModuleList([paraphraser]), batches_of(trainer),
                                         INIT_EPOCHS, LEARNING_RATE)
    captured = train_and_capture_init_stage(trainer)

    # RepDistiller's init() takes opt.learning_rate here (a vgg8 student would get 0.05, not a fixed 0.01)
    assert captured["lrs"] == {trainer.args.learning_rate} == {LEARNING_RATE}
    assert_states_match(captured["student"], before, "student")  # the student is untouched, statistics included
    assert all(torch.equal(captured["student"][k], v) for k, v in before.items())
    para_state = {k[len("ft.paraphraser."):]: v for k, v in captured["method"].items() if k.startswith("ft.paraphraser.")}
    assert_states_match(para_state, paraphraser.state_dict(), "paraphraser")
    translator_state = {k[len("ft.translator."):]: v for k, v in captured["method"].items() if k.startswith("ft.translator.")}
    assert all(torch.equal(translator_state[k], v) for k, v in translator_before.items())
    per_epoch = SAMPLES // BATCH
    expected = [sum(reference_losses[i:i + per_epoch]) / per_epoch for i in range(0, len(reference_losses), per_epoch)]
    assert init_stage_losses(trainer) == pytest.approx(expected, rel=1e-5)


def test_ft_init_learning_rate_follows_the_run_unless_set(tmp_path):
    # MobileNetV2/ShuffleNet students train at 0.01: their FT init stage too, with nothing else to set.
    run_lr = make_trainer(tmp_path / "a", "ft", init_epochs=1, learning_rate=0.01)
    assert train_and_capture_init_stage(run_lr)["lrs"] == {0.01}
    explicit = make_trainer(tmp_path / "b", "ft", init_epochs=1, distill_kwargs={"init_learning_rate": 0.02})
    assert train_and_capture_init_stage(explicit)["lrs"] == {0.02}


#: Students for which RepDistiller's helper/pretrain.py::init() uses lr = 0.01 under FT (`--distill factor`);
#: every other student gets opt.learning_rate.
REPDISTILLER_FT_INIT_LR_0_01 = {"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                                "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"}


def test_ft_recipes_state_the_benchmarks_init_learning_rate():
    import json
    from pathlib import Path

    import yaml

    recipes = sorted((Path(__file__).parents[1] / "recipes" / "cifar100" / "methods").glob("*_ft.yaml"))
    assert recipes
    wrong = []
    for path in recipes:
        recipe = yaml.safe_load(path.read_text())
        kwargs = recipe.get("distill_kwargs") or {}
        kwargs = json.loads(kwargs) if isinstance(kwargs, str) else kwargs
        expected = 0.01 if recipe["student"] in REPDISTILLER_FT_INIT_LR_0_01 else None  # None: the run's rate
        if kwargs.get("init_learning_rate") != expected:
            wrong.append(f"{path.name}: init_learning_rate {kwargs.get('init_learning_rate')}, expected {expected}")
    assert not wrong, wrong
