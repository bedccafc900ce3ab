"""What all methods share (`rrd_hf.methods.base`, `registry`): the registry, gradient flow and float32 math of every
pure loss, and every registered method built from example outputs of tiny zoo models and trained there (on CPU
and on the meta device, which stands in for an accelerator), init stages and extra parameter counts."""

import pytest
import torch
import torch.nn.functional as F

from helpers import approx, build_on_zoo, randn, tiny_context, tiny_outputs, zoo, zoo_outputs  # noqa: F401  (zoo: a fixture)
from rrd_hf.classifiers.activations import student_feature_modules
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
from rrd_hf.methods.feature import ab_loss, at_loss, fsp_loss, ft_loss, hint_loss, nst_loss
from rrd_hf.methods.logit import dkd_loss, kd_loss, kd_ls_loss
from rrd_hf.methods.relation import pkt_loss, rkd_loss, sp_loss
from rrd_hf.methods.vid import vid_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only oversubscribe xdist's cores


ALL_NAMES = ["rrd", "kd", "dkd", "kd_ls", "dkd_ls", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd"]


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
            build_on_zoo(zoo, name, teacher_name)
        return
    method = build_on_zoo(zoo, name, teacher_name).train()
    student, teacher = zoo["resnet8"].train(), zoo[teacher_name].eval()
    student.zero_grad(set_to_none=True)
    teacher.zero_grad(set_to_none=True)
    # a batch of 4 (examples had 2): RKD of 2 samples is identically 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    s_out = zoo_outputs(student, x, cls.needs_preact, grad=True)
    t_out = zoo_outputs(teacher, x, cls.needs_preact, grad=True)  # not detached by the caller: the method must do it
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
    assert METHODS["ab"].needs_preact and METHODS["crd"].needs_index
    assert not METHODS["ab"].main_stage_loss and not METHODS["fsp"].main_stage_loss and METHODS["ft"].main_stage_loss
    no_hidden = tiny_outputs(torch.zeros(2, 64))
    for name in ("fitnet", "at", "sp", "vid", "ab", "ft", "fsp", "nst"):
        with pytest.raises(ValueError, match="output_hidden_states=True"):
            build_method(name, MethodContext(no_hidden, no_hidden))
    with pytest.warns(UserWarning, match="preact=True"):
        x = torch.randn(2, 3, 32, 32)
        post = zoo_outputs(zoo["resnet8"].eval(), x, preact=False, grad=False)
        build_method("ab", MethodContext(post, zoo_outputs(zoo["resnet32"].eval(), x, preact=False, grad=False)))
    with pytest.raises(ValueError, match="hint_layer"):
        build_on_zoo(zoo, "fitnet", "resnet32", hint_layer=4)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        Activations.from_model_output(type("Out", (), {"logits": torch.zeros(2, 3), "hidden_states": None})())


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
    student = zoo_outputs(zoo["resnet8"].eval(), x, cls.needs_preact, grad=False)
    teacher = zoo_outputs(zoo["resnet32"].eval(), x, cls.needs_preact, grad=False)
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
    method = build_on_zoo(zoo, name, "resnet32", **kwargs).train()
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
    loss = method(zoo_outputs(student, x, cls.needs_preact, True), zoo_outputs(teacher, x, cls.needs_preact, False))
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
        build_on_zoo(zoo, "at", "resnet32").begin_init_stage()


def test_extra_parameter_counts(zoo):
    assert extra_parameter_count(build_on_zoo(zoo, "kd", "resnet32")) == 0
    fitnet = build_on_zoo(zoo, "fitnet", "resnet32")  # 32 -> 32 channels at 16x16: 1x1 conv with bias + BN
    assert extra_parameter_count(fitnet) == 32 * 32 + 32 + 2 * 32
    assert extra_buffer_count(fitnet) == 2 * 32 + 1
    ft = build_on_zoo(zoo, "ft", "resnet32")
    assert extra_parameter_count(ft, trainable_only=True) == extra_parameter_count(ft.translator)
