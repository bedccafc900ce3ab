"""The recipes: generated from one source, the benchmark's protocol and weights, and two training steps each.

The expected constants below are written from the method papers' and reference configs' values (RepDistiller's
scripts, mdistiller's DKD configs, the logit-standardisation authors' run logs; docs/references.md gives the file,
line and commit of each), not read from recipes/make_recipes.py, so a wrong table there fails here.
"""

import functools
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rrd_hf.methods import METHODS

from rrd_hf.commands.train import main as train_main, parse_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
REFERENCES = Path(__file__).resolve().parents[1] / "docs" / "references.md"
TEACHER_RECIPES = sorted((RECIPES / "cifar100" / "teachers").glob("*.yaml"))
STUDENT_RECIPES = sorted((RECIPES / "cifar100" / "students").glob("*.yaml"))
METHOD_RECIPES = sorted((RECIPES / "cifar100" / "methods").glob("*.yaml"))
ALL_RECIPES = TEACHER_RECIPES + STUDENT_RECIPES + METHOD_RECIPES
# Running all ~250 recipes would take many minutes: every method runs on the pair that has them all, plus AB on a
# WRN student (the preact forward with its second BatchNorm pass) and DKD on a pair with beta 6.
METHOD_RUNS = [p for p in METHOD_RECIPES if p.stem.startswith("resnet32x4_resnet8x4_")] + [
    RECIPES / "cifar100" / "methods" / "wrn_40_2_wrn_16_2_ab.yaml",
    RECIPES / "cifar100" / "methods" / "vgg13_vgg8_dkd.yaml",
]
SMALL = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
         "--memory_size", "16", "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "0",
         "--use_cpu", "true", "--disable_tqdm", "true", "--logging_steps", "1"]

# The 13 teacher -> student pairs of the benchmark's two CIFAR-100 tables (CRD paper, Tables 1 and 2).
PAIRS = [
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
    ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"),
    ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
    ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"),
]
# DKD's beta: DKD.BETA of mdistiller's configs/cifar100/dkd/ config of each pair; the pairs without a config
# (resnet110 -> resnet20, ResNet50 -> vgg8) take cfg.py's default 8.0 (issue 11).
DKD_BETA = {
    2.0: {("resnet110", "resnet32"), ("resnet56", "resnet20")},
    6.0: {("vgg13", "vgg8"), ("vgg13", "MobileNetV2"), ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1")},
}
# Loss weights of RepDistiller's scripts/run_cifar_distill.sh (-r CE, -a KD, -b the method), per recipe suffix.
BENCHMARK_WEIGHTS = {
    "kd": (0.1, 0.9, None, None), "fitnet": (1.0, 0.0, "fitnet", 100.0), "at": (1.0, 0.0, "at", 1000.0),
    "sp": (1.0, 0.0, "sp", 3000.0), "cc": (1.0, 0.0, "cc", 0.02), "vid": (1.0, 0.0, "vid", 1.0),
    "rkd": (1.0, 0.0, "rkd", 1.0), "pkt": (1.0, 0.0, "pkt", 30000.0), "ab": (1.0, 0.0, "ab", 1.0),
    "ft": (1.0, 0.0, "ft", 200.0), "fsp": (1.0, 0.0, "fsp", 50.0), "nst": (1.0, 0.0, "nst", 50.0),
    "crd": (1.0, 0.0, "crd", 0.8), "crd_kd": (1.0, 1.0, "crd", 0.8),
}
SMALL_LR_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}  # RepDistiller parse_option: lr 0.01
# The logit-standardisation authors' CIFAR-100 runs behind their README's numbers, from the names of the logs it links
# (KD_TYPE,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT[,BETA], README L83; docs/references.md#ls-runs) and
# tools/train.py, which multiplies DKD's alpha (1) and beta by the weight. KD+LS: pair -> (T, KD weight), CE 0.1.
LS_KD = {
    ("resnet32x4", "resnet8x4"): (2.0, 9.0),   # logs/KD/kd,resnet32x4,resnet8x4,2,9.txt
    ("vgg13", "vgg8"): (3.0, 9.0),             # logs/KD/kd,vgg13,vgg8,3,9.txt
    ("wrn_40_2", "wrn_16_2"): (2.0, 9.0),      # logs/KD/kd,wrn_40_2,wrn_16_2,2,9.txt
    ("resnet32x4", "ShuffleV2"): (2.0, 9.0),   # logs/KD/kd,resnet32x4,ShuffleV2,2,9.txt
}
# DKD+LS: pair -> (T, the alpha and beta the run trained with), CE 1, warm-up 20.
LS_DKD = {
    ("resnet32x4", "resnet8x4"): (2.0, 9.0, 72.0),   # logs/DKD/dkd,resnet32x4,resnet8x4,2,9.txt: config beta 8 (default)
    ("vgg13", "vgg8"): (2.0, 15.0, 30.0),            # logs/DKD/dkd,vgg13,vgg8,2,15,2.0.txt
    ("wrn_40_2", "wrn_16_2"): (2.0, 12.0, 24.0),     # logs/DKD/dkd,wrn_40_2,wrn_16_2,2,12,2.0.txt
    ("resnet32x4", "ShuffleV2"): (2.0, 9.0, 72.0),   # logs/DKD/dkd,resnet32x4,ShuffleV2,2,9.txt: config beta 8 (default)
}


def dkd_beta(pair):
    return next((beta for beta, pairs in DKD_BETA.items() if pair in pairs), 8.0)


@functools.cache
def _generator():
    """recipes/make_recipes.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_recipes", RECIPES / "make_recipes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _raw(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


def _suffix(stem: str) -> str:
    """The method part of `<teacher>_<student>_<method>`."""
    for teacher, student in PAIRS:
        if stem.startswith(f"{teacher}_{student}_"):
            return stem.removeprefix(f"{teacher}_{student}_")
    raise AssertionError(f"{stem} names no benchmark pair")


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

    def get(name):
        path = root / name
        if not path.exists():
            model = build_model(name, class_names=list(CIFAR100_FINE_CLASS_NAMES))
            _estimate_batchnorm_statistics(model)
            model.save_pretrained(path)
        return str(path)

    return get


# --------------------------------------------------------------------------------------------------------------
# One source
# --------------------------------------------------------------------------------------------------------------


def test_files_are_what_the_generator_writes():
    """recipes/make_recipes.py is the single source: no recipe or README table edited by hand, none stale."""
    generator = _generator()
    expected = generator.recipes()
    on_disk = {p.relative_to(RECIPES).as_posix(): p.read_text() for p in (RECIPES / "cifar100").rglob("*.yaml")}
    assert sorted(on_disk) == sorted(expected), "run `python recipes/make_recipes.py`"
    stale = [path for path, text in expected.items() if on_disk[path] != text]
    assert not stale, f"edited by hand or stale (run `python recipes/make_recipes.py`): {stale[:5]}"
    readme = (RECIPES / "README.md").read_text()
    table = readme[readme.index("<!-- table -->") + len("<!-- table -->"):readme.index("<!-- /table -->")]
    assert table.strip() == generator.table().strip(), "README table is stale: run `python recipes/make_recipes.py`"


def test_every_pair_has_its_recipes():
    assert len(TEACHER_RECIPES) == 6
    assert {p.stem for p in STUDENT_RECIPES} == {f"{t}_{s}_{m}" for t, s in PAIRS for m in ("rrd", "rrd_kd")}
    per_pair = {_suffix(p.stem) for p in METHOD_RECIPES if p.stem.startswith("wrn_40_2_wrn_16_2_")}
    assert per_pair == set(BENCHMARK_WEIGHTS) | {"dkd", "rrd_dkd", "kd_ls", "dkd_ls", "rrd_kd_ls"}
    # 13 pairs x (14 benchmark rows + DKD + RRD+DKD), less FSP on the 7 pairs the benchmark has none for, plus
    # KD+LS, DKD+LS and RRD+KD+LS on the 4 pairs with published logit-standardisation numbers.
    assert len(METHOD_RECIPES) == 13 * 16 - 7 + 3 * 4
    fsp = {p.stem.removesuffix("_fsp") for p in METHOD_RECIPES if p.stem.endswith("_fsp")}
    assert fsp == {"wrn_40_2_wrn_16_2", "resnet56_resnet20", "resnet110_resnet20", "resnet110_resnet32",
                   "resnet32x4_resnet8x4", "vgg13_vgg8"}


def test_every_registered_method_is_in_a_recipe():
    from rrd_hf.methods import METHODS

    used = set()
    for recipe in STUDENT_RECIPES + METHOD_RECIPES:
        raw = _raw(recipe)
        used |= {raw["distill_method"]} if raw.get("distill_method") else set()
        used |= {"kd"} if raw["kd_weight"] > 0 else set()
        used |= {"rrd"} if raw["rrd_weight"] > 0 else set()
    assert set(METHODS) <= used


# --------------------------------------------------------------------------------------------------------------
# What each recipe says
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=lambda p: p.stem)
def test_recipe_states_every_weight_and_every_source(recipe):
    """Every weight explicit (the meaning cannot follow a library default), every value line commented."""
    raw = _raw(recipe)
    assert {"ce_weight", "kd_weight", "rrd_weight"} <= set(raw)
    if raw.get("distill_method"):
        assert "distill_weight" in raw
    for line in recipe.read_text().splitlines():
        if line and not line.startswith("#"):
            value, _, source = line.partition("  # ")
            assert value.strip() and len(source.strip()) > 5, f"no source comment: {line!r}"


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=lambda p: p.stem)
def test_recipe_follows_the_benchmark_protocol(recipe):
    model_args, data_args, config = parse_recipe([str(recipe)])
    assert data_args.dataset == "cifar100"
    assert (config.num_train_epochs, config.per_device_train_batch_size) == (240, 64)
    assert config.lr_decay_epochs == [150, 180, 210] and config.lr_decay_rate == 0.1
    assert config.weight_decay == 5e-4 and config.decay_all_parameters and config.max_grad_norm == 0.0
    assert config.optim == "sgd" and "momentum=0.9" in config.optim_args
    assert config.learning_rate == (0.01 if model_args.student in SMALL_LR_STUDENTS else 0.05)
    assert config.ddp_find_unused_parameters is False
    # The RRD authors' loader drops the last partial batch (FIFO memory); RepDistiller's and mdistiller's keep it.
    assert config.dataloader_drop_last == (config.rrd_weight > 0)
    if config.rrd_weight > 0:  # the published RRD setting (the authors' 2024 code)
        assert config.rrd_weight == 1.0 and config.memory_type == "fifo"
        assert (config.student_temperature, config.teacher_temperature, config.enqueue) == (0.04, 0.10, "after")
        assert (config.memory_size, config.embedding_dim) == (16384, 128)
    if recipe in TEACHER_RECIPES:
        assert (config.ce_weight, config.kd_weight, config.rrd_weight, config.distill_method) == (1.0, 0.0, 0.0, None)
    else:
        assert config.needs_teacher and config.teacher_model_name_or_path.startswith("runs/cifar100/teachers/")
    if config.kd_weight > 0:
        assert config.kd_temperature == 4.0


@pytest.mark.parametrize("recipe", STUDENT_RECIPES, ids=lambda p: p.stem)
def test_rrd_recipes_are_the_published_setting(recipe):
    _, _, config = parse_recipe([str(recipe)])
    with_kd = recipe.stem.endswith("_rrd_kd")
    assert (config.ce_weight, config.kd_weight, config.rrd_weight, config.distill_method) == (
        1.0, 1.0 if with_kd else 0.0, 1.0, None)


@pytest.mark.parametrize("recipe", [p for p in METHOD_RECIPES if _suffix(p.stem) in BENCHMARK_WEIGHTS],
                         ids=lambda p: p.stem)
def test_baselines_carry_the_benchmark_weights(recipe):
    _, _, config = parse_recipe([str(recipe)])
    suffix = _suffix(recipe.stem)
    ce, kd, method, weight = BENCHMARK_WEIGHTS[suffix]
    assert (config.ce_weight, config.kd_weight, config.rrd_weight) == (ce, kd, 0.0)
    assert config.distill_method == method
    if method is not None:
        assert config.distill_weight == weight
    if suffix in ("ab", "ft", "fsp"):
        assert config.init_epochs == 30  # RepDistiller --init_epochs 30


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}_{p[1]}")
def test_dkd_recipes_carry_the_beta_of_their_pair(pair):
    """DKD alpha 1, beta per pair, T 4, warm-up 20, CE 1 (mdistiller); RRD+DKD adds RRD at weight 1; DKD+LS is
    the LS authors' run of the pair: the alpha and beta it trained with (its weight times DKD's), T 2."""
    stem = f"{pair[0]}_{pair[1]}"
    for suffix, rrd_weight in (("dkd", 0.0), ("rrd_dkd", 1.0)):
        _, _, config = parse_recipe([str(RECIPES / "cifar100" / "methods" / f"{stem}_{suffix}.yaml")])
        assert (config.ce_weight, config.kd_weight, config.rrd_weight) == (1.0, 0.0, rrd_weight)
        assert (config.distill_method, config.distill_weight) == ("dkd", 1.0)
        assert config.distill_kwargs == {"alpha": 1.0, "beta": dkd_beta(pair), "temperature": 4.0, "warmup_epochs": 20}
    ls = RECIPES / "cifar100" / "methods" / f"{stem}_dkd_ls.yaml"
    assert ls.exists() == (pair in LS_DKD)
    if ls.exists():
        _, _, config = parse_recipe([str(ls)])
        temperature, alpha, beta = LS_DKD[pair]
        assert (config.ce_weight, config.kd_weight, config.rrd_weight) == (1.0, 0.0, 0.0)
        assert config.distill_method == "dkd_ls"
        kwargs = config.distill_kwargs
        # rrd_hf's distill_weight multiplies alpha*TCKD + beta*NCKD: the products are what the run trained with.
        assert config.distill_weight * kwargs["alpha"] == pytest.approx(alpha)
        assert config.distill_weight * kwargs["beta"] == pytest.approx(beta)
        assert (kwargs["temperature"], kwargs["warmup_epochs"]) == (temperature, 20)


@pytest.mark.parametrize("recipe", [p for p in METHOD_RECIPES if _suffix(p.stem) in ("kd_ls", "rrd_kd_ls")],
                         ids=lambda p: p.stem)
def test_kd_ls_recipes(recipe):
    """KD+LS: the LS authors' run of the pair on mdistiller's KD (CE 0.1, KD weight 9, T of the run: 3 for
    vgg13 -> vgg8, 2 otherwise); RRD+KD+LS adds RRD at 1 to the same setting."""
    _, _, config = parse_recipe([str(recipe)])
    pair = next(p for p in LS_KD if recipe.stem.startswith(f"{p[0]}_{p[1]}_"))
    temperature, weight = LS_KD[pair]
    assert (config.ce_weight, config.kd_weight) == (0.1, 0.0)
    assert config.rrd_weight == (1.0 if recipe.stem.endswith("rrd_kd_ls") else 0.0)
    assert (config.distill_method, config.distill_weight) == ("kd_ls", weight)
    assert config.distill_kwargs == {"temperature": temperature}


def test_corrected_logit_standardisation_settings():
    """The values the LS authors' logs show, where the recipes once had the README's example command (weight 9 on
    the mdistiller beta, T 2): DKD+LS vgg13 -> vgg8 alpha 15, beta 30 and wrn_40_2 -> wrn_16_2 alpha 12, beta 24, at
    T 2; KD+LS (and RRD+KD+LS) vgg13 -> vgg8 at T 3. Read from the YAML files themselves."""
    methods = RECIPES / "cifar100" / "methods"
    for stem, (alpha, beta) in {"vgg13_vgg8_dkd_ls": (15.0, 30.0), "wrn_40_2_wrn_16_2_dkd_ls": (12.0, 24.0)}.items():
        raw = _raw(methods / f"{stem}.yaml")
        kwargs = raw["distill_kwargs"]
        assert raw["distill_method"] == "dkd_ls" and raw["ce_weight"] == 1.0, stem
        assert (raw["distill_weight"] * kwargs["alpha"], raw["distill_weight"] * kwargs["beta"]) == (alpha, beta), stem
        assert kwargs["temperature"] == 2.0, stem
    for stem in ("vgg13_vgg8_kd_ls", "vgg13_vgg8_rrd_kd_ls"):
        raw = _raw(methods / f"{stem}.yaml")
        assert raw["distill_method"] == "kd_ls" and raw["distill_kwargs"] == {"temperature": 3.0}, stem
        assert (raw["ce_weight"], raw["distill_weight"]) == (0.1, 9.0), stem
    assert not list(methods.glob("*_rrd_dkd_ls.yaml"))  # no recipe copies the DKD+LS setting


# --------------------------------------------------------------------------------------------------------------
# Sources: every citation points at docs/references.md, at an entry that exists
# --------------------------------------------------------------------------------------------------------------

CITATION = re.compile(r"docs/references\.md#([A-Za-z0-9_-]+)")


def _anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them (lower case, punctuation other than `-` and
    `_` dropped, spaces to `-`), plus explicit `<a id="...">` / `<a name="...">` anchors. Code blocks are skipped."""
    anchors, in_code = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            text = re.sub(r"`|\*|\[|\]\([^)]*\)", "", heading.group(1)).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors | set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", markdown))


def _citing_files() -> list[Path]:
    return [*ALL_RECIPES, RECIPES / "README.md", RECIPES / "make_recipes.py"]


def test_every_cited_reference_exists():
    """Each `docs/references.md#anchor` in the recipes, their README and their generator is a heading of the page,
    and so is each `#anchor` link inside the page."""
    page = REFERENCES.read_text()
    anchors = _anchors(page)
    assert {"dkd-beta", "ls-runs", "best-or-last-epoch", "values-not-located"} <= anchors
    cited: dict[str, set[str]] = {}
    for path in _citing_files():
        for anchor in CITATION.findall(path.read_text()):
            cited.setdefault(anchor, set()).add(path.name)
    assert cited, "no recipe cites docs/references.md"
    missing = {anchor: sorted(files)[:3] for anchor, files in cited.items() if anchor not in anchors}
    assert not missing, f"cited anchors that docs/references.md does not have: {missing}"
    internal = set(re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", page))
    assert internal <= anchors, sorted(internal - anchors)


def test_anchor_function_matches_github_slugs():
    assert _anchors("## DKD beta\n### Best or last epoch\n## CRD with KD numbers\n```\n# not a heading\n```\n") == {
        "dkd-beta", "best-or-last-epoch", "crd-with-kd-numbers"}
    assert _anchors("### `rrd_hf` choices\n") == {"rrd_hf-choices"}


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=lambda p: p.stem)
def test_recipe_cites_the_references_page(recipe):
    """Every recipe names its sources through docs/references.md (its protocol lines at least)."""
    assert CITATION.search(recipe.read_text()), recipe


def test_no_citation_of_a_missing_source():
    """No file under recipes/, nor the references page, cites a page that is not in the repository, marks a value as
    written from memory, or points outside the repository."""
    banned = re.compile(r"rrd-paper|anchors\.md|recalled|\.\./shared")
    files = [p for p in RECIPES.rglob("*") if p.is_file() and p.suffix in {".yaml", ".md", ".py"}] + [REFERENCES]
    found = {p.relative_to(RECIPES.parent).as_posix(): m.group(0) for p in files if (m := banned.search(p.read_text()))}
    assert not found, found


def test_readme_says_which_published_numbers_are_best_or_last_epoch():
    """RepDistiller's tables (and, by their code, the RRD authors') are last-epoch accuracies; DKD's and LS's are
    best-epoch ones (docs/references.md#best-or-last-epoch). The README's footnotes say which."""
    readme = (RECIPES / "README.md").read_text()
    notes = {line[:3]: line for line in readme.splitlines() if re.match(r"\[[1-4]\] ", line)}
    assert sorted(notes) == ["[1]", "[2]", "[3]", "[4]"]
    assert "last-epoch" in notes["[1]"] and "last-epoch" in notes["[2]"]
    assert "best epoch" in notes["[3]"] and "best epoch" in notes["[4]"]
    assert "report the best test epoch" not in readme


def test_readme_has_one_row_per_recipe_and_claims_no_run():
    readme = (RECIPES / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "`cifar100/" in line]
    named = [re.search(r"`cifar100/[^`]+\.yaml`", row).group(0).strip("`") for row in rows]
    assert sorted(named) == sorted(p.relative_to(RECIPES).as_posix() for p in ALL_RECIPES)
    measured = _generator().MEASURED
    for row, path in zip(rows, named):
        if Path(path).stem not in measured:
            assert row.rstrip().endswith("| not run |"), row
    assert "| FSP | wrn_40_2 → wrn_40_1 | none" in readme and "N/A in the benchmark table" in readme


def test_flags_override_the_recipe_and_typos_are_caught(tmp_path):
    recipe = STUDENT_RECIPES[0]
    _, _, config = parse_recipe([str(recipe), "--seed", "3", "--learning_rate", "0.1"])
    assert (config.seed, config.learning_rate) == (3, 0.1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: resnet8\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown fields \\['learnig_rate'\\]"):
        parse_recipe([str(bad)])


# --------------------------------------------------------------------------------------------------------------
# Launch configurations
# --------------------------------------------------------------------------------------------------------------

LAUNCH = {  # config -> (distributed type, precision): fp32 by default, the precision of the published numbers
    "single_gpu": ("NO", "no"), "single_gpu_bf16": ("NO", "bf16"),
    "multi_gpu": ("MULTI_GPU", "no"), "multi_gpu_bf16": ("MULTI_GPU", "bf16"), "cpu": ("NO", "no"),
}


def test_launch_configs_default_to_fp32_and_pin_one_gpu():
    from accelerate.commands.config.config_args import load_config_from_file

    assert {p.stem for p in (RECIPES / "accelerate").glob("*.yaml")} == set(LAUNCH)
    for name, (distributed, precision) in LAUNCH.items():
        config = load_config_from_file(str(RECIPES / "accelerate" / f"{name}.yaml"))
        assert (config.distributed_type.value, str(config.mixed_precision)) == (distributed, precision), name
        if name.startswith("single_gpu"):
            # One pinned GPU: "all" with distributed_type NO makes Trainer use nn.DataParallel on a multi-GPU host.
            assert config.gpu_ids == "0" and config.num_processes == 1


@pytest.mark.parametrize("name", ["single_gpu", "single_gpu_bf16"])
def test_single_gpu_launch_exposes_one_device(name, monkeypatch):
    """What `accelerate launch --config_file ...` puts in the environment of the training process on a CUDA host."""
    import torch
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    if hasattr(launch, "get_torch_accelerator_backend"):  # accelerate >= 1.16 sets the variable of the host's backend
        monkeypatch.setattr(launch, "get_torch_accelerator_backend", lambda check_available=True: ("cuda", torch.cuda))

    argv = ["--config_file", str(RECIPES / "accelerate" / f"{name}.yaml"), "-m", "rrd_hf.train", "recipe.yaml"]
    args = _validate_launch_command(launch_command_parser().parse_args(argv))[0]
    _, env = prepare_simple_launcher_cmd_env(args)
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["ACCELERATE_MIXED_PRECISION"] == LAUNCH[name][1]


# --------------------------------------------------------------------------------------------------------------
# Two training steps
# --------------------------------------------------------------------------------------------------------------


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
