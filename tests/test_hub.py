"""Hub publishing with a fake Hub client: the exact files that go up, the card, failures, HubMixin in a Trainer."""

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
import tomllib
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import save_file

from helpers import TinyImageDataset
from rrd_hf import RRDConfig, RRDTrainer
from rrd_hf.hub import (
    RUN_INFO_NAME,
    ExportError,
    HubMixin,
    HubPublishError,
    build_model_card,
    export_student,
    push_to_hub,
    template_path,
)
from rrd_hf.models import build_model, cifar_image_processor, save_pretrained_with_processor

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLEAN = {"config.json", "model.safetensors", "configuration_cifar_resnet.py", "modeling_cifar_resnet.py",
         "_cifar_common.py", "preprocessor_config.json", "README.md", "figures/correlation_difference.png"}
NEVER = ("rrd_state", "optimizer", "scheduler", "rng_state", "training_args", "trainer_state", "checkpoint-",
         "teacher", "results.json", RUN_INFO_NAME)


class FakeApi:
    """Records Hub calls; keeps a copy of each uploaded folder (the real one is a temporary stage)."""

    def __init__(self, tmp_path, fail: Exception | None = None, namespace: str = "me"):
        self.calls, self.uploads, self.fail, self.namespace = [], [], fail, namespace
        self.keep = tmp_path / "uploaded"

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"{self.namespace}/{repo_id}")

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        if self.fail is not None:
            raise self.fail
        copy = self.keep / str(len(self.uploads))
        shutil.copytree(kwargs["folder_path"], copy)
        self.uploads.append(copy)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0", oid="0")

    def run_as_future(self, fn, *args, **kwargs):
        future = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


def files_of(folder) -> set[str]:
    folder = pathlib.Path(folder)
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def snapshot(folder) -> dict[str, str]:
    folder = pathlib.Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_png(path, size=(24, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (30, 90, 200)).save(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as `rrd-hf train` leaves it, plus everything that must never be uploaded."""
    root = tmp_path_factory.mktemp("run") / "resnet8-rrd"
    torch.manual_seed(0)
    names = {0: "cat", 1: "dog", 2: "car", 3: "cow"}
    student = build_model("resnet8", 4, id2label=names)
    save_pretrained_with_processor(student, root)
    args = RRDConfig(output_dir=str(root), num_train_epochs=240, per_device_train_batch_size=64, learning_rate=0.05,
                     optim="sgd", optim_args="momentum=0.9", weight_decay=5e-4, decay_all_parameters=True,
                     lr_decay_epochs=[150, 180, 210], kd_weight=0.0, rrd_weight=1.0, memory_size=16384, seed=3,
                     teacher_model_name_or_path="me/resnet14-teacher", report_to="none", use_cpu=True)
    torch.save(args, root / "training_args.bin")
    (root / "results.json").write_text(json.dumps({
        "dataset": "cifar100", "teacher": "me/resnet14-teacher", "seed": 3, "global_step": 187440,
        "num_evaluations": 240, "best_top1": 71.23, "best_top5": 91.5, "best_epoch": 231.0, "best_step": 180000,
        "last_top1": 70.98, "last_top5": 91.2, "last_epoch": 240.0, "last_step": 187440}))
    save_file({"student_head.weight": torch.zeros(2, 2)}, root / "rrd_state.safetensors")
    torch.save({"state": {}}, root / "optimizer.pt")
    (root / "checkpoint-2").mkdir()
    shutil.copy(root / "model.safetensors", root / "checkpoint-2" / "model.safetensors")
    save_file({"w": torch.zeros(1)}, root / "checkpoint-2" / "rrd_state.safetensors")
    build_model("resnet14", 4).save_pretrained(root / "teacher")
    write_png(root / "figures" / "correlation_difference.png")
    (root / "figures" / "plots.json").write_text(json.dumps({"dataset": "CIFAR-100 test", "max_difference": 1.25,
                                                              "mean_difference": 0.125}))
    return root


def test_push_uploads_exactly_the_clean_student_in_one_commit(run_dir, tmp_path):
    before = snapshot(run_dir)
    api = FakeApi(tmp_path)
    info = push_to_hub(run_dir, "me/resnet8-rrd", api=api, private=True, token="hf_x", teacher="me/resnet14-teacher")
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["exist_ok"] is True and api.calls[0][2]["private"] is True
    upload = api.calls[1][2]
    assert upload["repo_id"] == "me/resnet8-rrd" and upload["token"] == "hf_x" and info.oid == "0"
    uploaded = files_of(api.uploads[0])
    assert uploaded == CLEAN
    assert not any(word in name for name in uploaded for word in NEVER)
    assert not os.path.exists(upload["folder_path"])  # the stage is gone
    assert snapshot(run_dir) == before  # nothing local was touched


def test_card_metadata_body_and_round_trip(run_dir, tmp_path):
    api = FakeApi(tmp_path)
    push_to_hub(run_dir, "me/resnet8-rrd", api=api)
    text = (api.uploads[0] / "README.md").read_text(encoding="utf-8")
    card = ModelCard.load(api.uploads[0] / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-classification" and data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0" and data["datasets"] == ["uoft-cs/cifar100"]
    assert {"image-classification", "knowledge-distillation", "rrd", "distillation:rrd", "rrd_hf"} <= set(data["tags"])
    assert data["teacher_model"] == "me/resnet14-teacher"
    assert "base_model" not in data and "base_model:" not in text
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["accuracy"].metric_value == 70.98 and results["top_5_accuracy"].metric_value == 91.2  # last epoch
    assert results["accuracy"].dataset_type == "uoft-cs/cifar100" and results["accuracy"].dataset_split == "test"
    assert results["accuracy"].task_type == "image-classification"
    for expected in (
        "[me/resnet14-teacher](https://huggingface.co/me/resnet14-teacher)",
        "| loss | 1 · CE + 1 · RRD |", "| τ_s (student temperature) | 0.04 |",
        "| τ_t (teacher temperature) | 0.1 |", "| enqueue order | after |", "| memory type | fifo |",
        "| memory size K | 16384 |", "| embedding dim (projection heads) | 128 |", "| epochs | 240 |",
        "64 per process × number of processes not recorded", "| optimizer | sgd (momentum=0.9) |",
        "| learning rate | 0.05 |", "× 0.1 at epochs 150, 180, 210", "0.0005 (every parameter)", "| seed | 3 |",
        "| best epoch | 71.23 | 91.5 | 231.0 |", "| last epoch | 70.98 | 91.2 | 240.0 |",
        'AutoModelForImageClassification.from_pretrained("me/resnet8-rrd", trust_remote_code=True)',
        'pipeline("image-classification", model="me/resnet8-rrd", trust_remote_code=True)',
        "arXiv:2407.12073", "Giakoumoglou", "@article{", "Hardware: not recorded", "Training time: not recorded",
        "![figures/correlation_difference.png](figures/correlation_difference.png)", "max 1.250, mean 0.125",
    ):
        assert expected in text, expected
    assert "KD temperature" not in text  # kd_weight = 0: not a setting of this run
    # Round trip: the metadata written is the metadata read back.
    reloaded = ModelCard(str(card))
    assert reloaded.data.to_dict() == data
    assert [(r.metric_type, r.metric_value) for r in reloaded.data.eval_results] == [
        (r.metric_type, r.metric_value) for r in card.data.eval_results]


def test_unknown_facts_are_said_to_be_unknown(tmp_path):
    bare = tmp_path / "bare"
    build_model("resnet8", 4).save_pretrained(bare)  # no processor, no arguments, no results
    card = build_model_card(bare, repo_id="me/bare")
    text = str(card)
    assert "model-index" not in text and "datasets:" not in text and "teacher_model" not in text
    assert "hyper-parameters were not recorded" in text and "its accuracy is unknown" in text
    assert "no `preprocessor_config.json`" in text and 'pipeline("image-classification"' not in text
    assert not any(ch.isdigit() for ch in text.split("## Evaluation")[1].split("## How to use")[0])


def test_teacher_card_has_no_distillation_lineage(run_dir):
    card = build_model_card(run_dir, repo_id="me/resnet8-teacher", kind="teacher")
    data = card.data.to_dict()
    assert "teacher_model" not in data and "base_model" not in data
    assert "knowledge-distillation" not in data["tags"] and "distillation-teacher" in data["tags"]
    assert "to serve as the **teacher**" in str(card)


def test_a_local_teacher_is_described_but_not_linked_nor_its_path_published(run_dir):
    card = build_model_card(run_dir, repo_id="me/resnet8-rrd", teacher=str(run_dir / "teacher"))
    text = str(card)
    assert "teacher_model" not in card.data.to_dict() and "base_model" not in card.data.to_dict()
    assert "local teacher checkpoint (`teacher`, resnet14)" in text and str(run_dir) not in text


def test_other_distillation_methods_are_named_for_what_they_are(run_dir):
    args = RRDConfig(output_dir=str(run_dir), rrd_weight=0.0, kd_weight=1.0, distill_method="crd", report_to="none",
                     use_cpu=True)
    card = build_model_card(run_dir, training_args=args)
    tags, text = card.data.tags, str(card)
    assert "distillation:crd-kd" in tags and "knowledge-distillation" in tags and "rrd" not in tags
    assert "with **CRD+KD**" in text and "| loss | 1 · CE + 1 · KD + 0.8 · CRD |" in text
    assert "τ_s" not in text  # no RRD term: its settings did not matter


def test_best_epoch_is_reported_only_when_it_was_loaded(run_dir):
    args = json.loads(json.dumps(torch.load(run_dir / "training_args.bin", weights_only=False).to_dict()))
    card = build_model_card(run_dir, training_args={**args, "load_best_model_at_end": True})
    assert card.data.eval_results[0].metric_value == 71.23


def test_upload_failure_keeps_local_files_and_says_why(run_dir, tmp_path):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    before = snapshot(run_dir)
    response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/me/x/commit/main"))
    forbidden = HfHubHTTPError("403 Forbidden: you do not have write access", response=response)
    api = FakeApi(tmp_path, fail=forbidden)
    with pytest.raises(HubPublishError, match=r"not authorised.*hf auth login.*intact") as caught:
        push_to_hub(run_dir, "me/resnet8-rrd", api=api)
    assert caught.value.__cause__ is forbidden
    with pytest.raises(HubPublishError, match="cannot reach the Hub"):
        push_to_hub(run_dir, "me/resnet8-rrd", api=FakeApi(tmp_path, fail=ConnectionError("connection reset")))
    assert snapshot(run_dir) == before


def test_offline_mode_fails_fast_with_what_to_do(run_dir):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: the real client refuses every call
    with pytest.raises(HubPublishError, match=r"HF_HUB_OFFLINE.*--export-dir"):
        push_to_hub(run_dir, "me/resnet8-rrd")  # default HfApi()


def test_an_inconsistent_folder_is_refused_before_any_hub_call(run_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    build_model("resnet14", 4).save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", broken / "model.safetensors")  # wrong weights
    api = FakeApi(tmp_path)
    with pytest.raises(ExportError, match="do not"):
        push_to_hub(broken, "me/broken", api=api)
    shutil.copy(run_dir / "model.safetensors", broken / "model.safetensors")
    os.remove(broken / "_cifar_common.py")  # needed by modeling_cifar_resnet.py's relative import
    with pytest.raises(ExportError, match="_cifar_common.py"):
        push_to_hub(broken, "me/broken", api=api)
    assert api.calls == []
    with pytest.raises(ExportError, match="not empty"):
        export_student(run_dir, broken)  # never mixes an export into existing files


def test_short_repo_name_gets_the_namespace_in_the_card(run_dir, tmp_path):
    api = FakeApi(tmp_path, namespace="alice")
    push_to_hub(run_dir, "resnet8-rrd", api=api)
    assert api.calls[1][1] == "alice/resnet8-rrd"
    assert 'from_pretrained("alice/resnet8-rrd"' in (api.uploads[0] / "README.md").read_text(encoding="utf-8")


def test_cli_export_dir_loads_with_the_remote_code_it_ships(run_dir, tmp_path):
    from transformers import AutoModelForImageClassification
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from rrd_hf.cli import main

    out = tmp_path / "export"
    main(["push", str(run_dir), "me/resnet8-rrd", "--export-dir", str(out), "--teacher", "me/resnet14-teacher"])
    assert files_of(out) == CLEAN
    # Load with the exported code itself (what trust_remote_code does on a machine without rrd_hf; here rrd_hf's
    # registered classes would take precedence): every file it imports must have been exported.
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    config_class = get_class_from_dynamic_module(auto_map["AutoConfig"], str(out))
    model_class = get_class_from_dynamic_module(auto_map["AutoModelForImageClassification"], str(out))
    assert model_class.__module__.startswith("transformers_modules.")
    model = model_class.from_pretrained(out, config=config_class.from_pretrained(out)).eval()
    reference = AutoModelForImageClassification.from_pretrained(run_dir).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, reference(pixel_values=x).logits)
    assert model.config.id2label[1] == "dog"


def test_templates_ship_with_the_package_and_every_subpackage_is_listed():
    for kind in ("student", "teacher"):
        assert pathlib.Path(template_path(kind)).is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["rrd_hf.model_cards"] == "model_cards"
    assert "*.jinja" in setuptools["package-data"]["rrd_hf.model_cards"]
    on_disk = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "rrd_hf").rglob("*.py")
               if "__pycache__" not in p.parts}
    missing = on_disk - set(setuptools["packages"])
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml (or wheels lack them)"


# ------------------------------------------------------------------------------------------------- HubMixin


def test_trainer_push_to_hub_publishes_only_the_clean_student(tmp_path, monkeypatch):
    import transformers.trainer

    api = FakeApi(tmp_path)
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)  # Trainer's own Hub calls go here too
    out = tmp_path / "run"
    args = RRDConfig(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                     memory_size=32, use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="steps",
                     save_steps=2, eval_strategy="steps", eval_steps=2, logging_steps=2, optim="sgd", kd_weight=1.0,
                     seed=0, push_to_hub=True, hub_model_id="me/student", hub_strategy="every_save")
    trainer = RRDTrainer(model=build_model("resnet8", 4), teacher_model=build_model("resnet14", 4), args=args,
                 train_dataset=TinyImageDataset(32, size=8, with_index=True), eval_dataset=TinyImageDataset(16, size=8),
                 processing_class=cifar_image_processor())  # 8x8 images: the CIFAR nets pool globally
    trainer.train()
    assert (out / "checkpoint-2" / "distill_state.safetensors").is_file() and (out / "checkpoint-2" / RUN_INFO_NAME).is_file()
    checkpoint_pushes = len(api.uploads)
    assert checkpoint_pushes == 2  # steps 2 and 4, each the clean student of its checkpoint
    future = trainer.push_to_hub(commit_message="done", blocking=False, teacher="me/resnet14-teacher",
                                 dataset="cifar10")
    future.result()
    for upload in api.uploads:
        assert files_of(upload) == CLEAN - {"figures/correlation_difference.png"}
    commit = api.calls[-1][2]
    assert commit["commit_message"] == "done" and commit["repo_id"] == "me/student"
    card = ModelCard.load(api.uploads[-1] / "README.md")
    text = str(card)
    assert card.data.to_dict()["teacher_model"] == "me/resnet14-teacher" and "base_model" not in card.data.to_dict()
    assert card.data.datasets == ["uoft-cs/cifar10"] and "distillation:rrd-kd" in card.data.tags
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "top_5_accuracy"}
    assert "Hardware: CPU" in text and "Processes (world size): 1" in text and "Optimizer steps: 4" in text
    assert "Training time: not recorded" not in text and "| KD temperature T | 4 |" in text
    assert "8 per process × 1 process = 8" in text
    assert (out / "README.md").read_text(encoding="utf-8") == (api.uploads[-1] / "README.md").read_text(encoding="utf-8")
    # The folder remembers the run: a later `rrd-hf push` of it writes the same facts.
    later = str(build_model_card(out, repo_id="me/student", teacher="me/resnet14-teacher", dataset="cifar10"))
    assert "Hardware: CPU" in later and "| KD temperature T | 4 |" in later


def test_rrd_trainer_publishes_through_the_hub_mixin():
    assert issubclass(RRDTrainer, HubMixin)
    assert RRDTrainer.push_to_hub is HubMixin.push_to_hub and RRDTrainer.create_model_card is HubMixin.create_model_card
