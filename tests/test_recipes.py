"""Every recipe parses into the benchmark protocol and runs a couple of steps on tiny generated data."""

import json
from pathlib import Path

import numpy as np
import pytest

from rrd_hf.methods import METHODS

from rrd_hf.train import main as train_main, parse_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TEACHER_RECIPES = sorted((RECIPES / "cifar100" / "teachers").glob("*.yaml"))
STUDENT_RECIPES = sorted((RECIPES / "cifar100" / "students").glob("*.yaml"))
METHOD_RECIPES = sorted((RECIPES / "cifar100" / "methods").glob("*.yaml"))
# Running all ~200 method recipes would take many minutes: every method runs on the pair that has them all.
METHOD_RUNS = [p for p in METHOD_RECIPES if p.stem.startswith("resnet32x4_resnet8x4_")]
SMALL = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
         "--memory_size", "16", "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "0",
         "--use_cpu", "true", "--disable_tqdm", "true", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def cifar100_like(tmp_path_factory):
    """A few images in the exact uoft-cs/cifar100 schema, saved with save_to_disk."""
    import datasets

    from rrd_hf.data import CIFAR100_COARSE_CLASS_NAMES, CIFAR100_FINE_CLASS_NAMES

    features = datasets.Features({
        "img": datasets.Image(),
        "fine_label": datasets.ClassLabel(names=list(CIFAR100_FINE_CLASS_NAMES)),
        "coarse_label": datasets.ClassLabel(names=list(CIFAR100_COARSE_CLASS_NAMES)),
    })
    rng = np.random.default_rng(0)

    def split(n):
        return datasets.Dataset.from_dict({
            "img": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)],
            "fine_label": [int(i) for i in rng.integers(0, 100, n)],
            "coarse_label": [int(i) for i in rng.integers(0, 20, n)],
        }, features=features)

    path = tmp_path_factory.mktemp("data") / "cifar100"
    datasets.DatasetDict(train=split(16), test=split(8)).save_to_disk(str(path))
    return str(path)


def _estimate_batchnorm_statistics(model):
    """Random weights, but BatchNorm statistics measured on image-like inputs, as a trained teacher's are: with the
    default statistics (mean 0, var 1) a deep random network's maps grow to hundreds and two-stage methods such as
    FT's paraphraser diverge in their first steps (the run then stops on non-finite values)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the batches below
    generator = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(pixel_values=torch.randn(16, 3, 32, 32, generator=generator))
    model.eval()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    from rrd_hf.data import CIFAR100_FINE_CLASS_NAMES
    from rrd_hf.models import build_model

    root = tmp_path_factory.mktemp("teachers")
    labels = dict(enumerate(CIFAR100_FINE_CLASS_NAMES))

    def get(name):
        path = root / name
        if not path.exists():
            model = build_model(name, 100, id2label=labels, label2id={v: k for k, v in labels.items()})
            _estimate_batchnorm_statistics(model)
            model.save_pretrained(path)
        return str(path)

    return get


def test_every_pair_has_both_recipes():
    assert len(TEACHER_RECIPES) == 6 and len(STUDENT_RECIPES) == 26
    # 13 pairs x 14 baselines, less FSP on the 6 cross-architecture pairs and wrn_40_1, plus 5 modern x 4 pairs
    assert len(METHOD_RECIPES) == 13 * 14 - 7 + 5 * 4
    from rrd_hf.methods import METHODS

    r8x4 = {p.stem.removeprefix("resnet32x4_resnet8x4_") for p in METHOD_RUNS}
    assert set(METHODS) - {"kd", "rrd"} <= r8x4 | {"kd_ls", "dkd_ls"}  # every registered method has a recipe
    names = {p.stem for p in STUDENT_RECIPES}
    assert all(name.replace("_rrd_kd", "_rrd") in names for name in names)


@pytest.mark.parametrize("recipe", TEACHER_RECIPES + STUDENT_RECIPES + METHOD_RECIPES, ids=lambda p: p.stem)
def test_recipe_follows_the_benchmark_protocol(recipe):
    model_args, data_args, config = parse_recipe([str(recipe)])
    assert data_args.dataset == "cifar100"
    assert (config.num_train_epochs, config.per_device_train_batch_size) == (240, 64)
    assert config.lr_decay_epochs == [150, 180, 210] and config.lr_decay_rate == 0.1
    assert config.weight_decay == 5e-4 and config.decay_all_parameters and config.max_grad_norm == 0.0
    assert config.optim == "sgd" and "momentum=0.9" in config.optim_args
    small_lr = model_args.student in ("MobileNetV2", "ShuffleV1", "ShuffleV2")
    assert config.learning_rate == (0.01 if small_lr else 0.05)
    if recipe in METHOD_RECIPES:
        assert config.needs_teacher and config.teacher_model_name_or_path.startswith("runs/cifar100/teachers/")
        if recipe.stem.endswith("_crd"):
            assert (config.distill_method, config.distill_weight, config.kd_weight) == ("crd", 0.8, 0.0)
        if recipe.stem.endswith("_kd") and not recipe.stem.endswith("crd_kd"):
            assert (config.ce_weight, config.kd_weight, config.distill_method) == (0.1, 0.9, None)
        if recipe.stem.endswith("_fitnet"):
            assert (config.distill_method, config.distill_weight) == ("fitnet", 100.0)
    elif recipe in STUDENT_RECIPES:
        assert (config.ce_weight, config.rrd_weight) == (1.0, 1.0)
        assert config.kd_weight == (1.0 if recipe.stem.endswith("_rrd_kd") else 0.0)
        assert (config.student_temperature, config.teacher_temperature, config.enqueue) == (0.04, 0.10, "after")
        assert (config.memory_size, config.embedding_dim) == (16384, 128)
    else:
        assert (config.kd_weight, config.rrd_weight) == (0.0, 0.0)


def test_flags_override_the_recipe_and_typos_are_caught(tmp_path):
    recipe = STUDENT_RECIPES[0]
    _, _, config = parse_recipe([str(recipe), "--seed", "3", "--learning_rate", "0.1"])
    assert (config.seed, config.learning_rate) == (3, 0.1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: resnet8\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown fields \\['learnig_rate'\\]"):
        parse_recipe([str(bad)])


@pytest.mark.parametrize("recipe", TEACHER_RECIPES + STUDENT_RECIPES + METHOD_RUNS, ids=lambda p: p.stem)
def test_recipe_runs_two_steps(recipe, tmp_path, cifar100_like, teachers):
    model_args, _, config = parse_recipe([str(recipe)])
    overrides = ["--dataset", cifar100_like, "--output_dir", str(tmp_path / "run")] + SMALL
    if recipe in METHOD_RUNS and any(METHODS[term.method].has_init_stage for term in config.loss_terms):
        overrides += ["--init_epochs", "1"]  # a one-epoch init stage for the two-stage methods
    if recipe not in TEACHER_RECIPES:
        teacher_name = Path(config.teacher_model_name_or_path).name
        overrides += ["--teacher_model_name_or_path", teachers(teacher_name)]
        results = train_main([str(recipe)] + overrides)
    else:
        results = train_main([str(recipe)] + overrides, teacher_only=True)
    assert results["global_step"] == 2 and results["last_top1"] is not None
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["student"] == model_args.student
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "preprocessor_config.json").is_file()
