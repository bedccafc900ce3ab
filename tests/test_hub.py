"""Hub publishing with a fake Hub client: the exact files that go up, the card, failures, HubMixin in a Trainer."""

import concurrent.futures
import hashlib
import json
import logging
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
from rrd_hf.data import cifar_image_processor, save_pretrained_with_processor
from rrd_hf.models import build_model

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
    torch.save(args, root / "training_args.bin")  # as Trainer writes it; publishing never opens it
    (root / "training_args.json").write_text(json.dumps(args.to_dict(), default=str))  # as HubMixin writes it
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


@pytest.fixture(scope="module")
def bare_dir(tmp_path_factory):
    """Weights and config only: every fact of the card comes from the arguments of the test."""
    root = tmp_path_factory.mktemp("bare") / "resnet8"
    build_model("resnet8", 4).save_pretrained(root)
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


def test_the_objective_comes_from_the_recorded_loss_terms(run_dir, bare_dir):
    legacy = {**json.loads((run_dir / "training_args.json").read_text()), "rrd_weight": 1.0, "kd_weight": 0.0,
              "distill_method": "dkd", "distill_weight": 1.0, "distill_kwargs": {"alpha": 1.0, "beta": 8.0}}
    rrd = {key: legacy[key] for key in ("student_temperature", "teacher_temperature", "enqueue", "memory_type",
                                        "memory_size", "embedding_dim")}
    terms = [{"name": "rrd", "method": "rrd", "weight": 1.0, "kwargs": rrd},
             {"name": "dkd", "method": "dkd", "weight": 1.0, "kwargs": {"alpha": 1.0, "beta": 8.0}}]
    # What the trainer resolved wins over the arguments it was given (here deliberately different).
    recorded = {"ce_weight": 1.0, "loss_terms": terms, "training_args": {**legacy, "distill_method": None}}
    for card in (build_model_card(bare_dir, run_record=recorded), build_model_card(bare_dir, training_args=legacy)):
        text = str(card)
        assert "with **RRD+DKD**" in text and "distillation:rrd-dkd" in card.data.tags and "rrd" in card.data.tags
        assert "| method arguments | {\"alpha\": 1.0, \"beta\": 8.0} |" in text and "| τ_s (student temperature) | 0.04 |" in text
        assert "DKD as implemented in `rrd_hf.methods`" in text and "KD temperature" not in text
    assert "| loss | 1 · CE + 1 · RRD + 1 · DKD |" in str(build_model_card(bare_dir, run_record=recorded))
    three = {**recorded, "loss_terms": [*terms[:1], {"name": "kd", "method": "kd", "weight": 0.5,
                                                     "kwargs": {"temperature": 4.0}},
                                        {"name": "crd", "method": "crd", "weight": 0.8, "kwargs": {}}]}
    card = build_model_card(bare_dir, run_record=three)
    assert "with **RRD+CRD+KD**" in str(card) and "distillation:rrd-crd-kd" in card.data.tags
    assert "| KD temperature T | 4 |" in str(card)


def test_best_epoch_is_reported_only_when_it_was_loaded(run_dir):
    args = json.loads((run_dir / "training_args.json").read_text())
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

    from rrd_hf.commands.cli import main

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


# ------------------------------------------------------------------------------------------------- what the card claims


def card_line(card, start):
    return next(line for line in str(card).splitlines() if line.startswith(start))


EVALUATED = {"num_evaluations": 1, "last_top1": 50.0, "last_top5": 90.0, "last_epoch": 1.0, "last_step": 8}


@pytest.mark.parametrize("record, dataset, claim, qualifier, split", [
    ({"eval_num_samples": 200, "eval_split": "test", "eval_split_size": 10_000}, "cifar100",
     "on 200 of the 10,000 images of the `test` split of CIFAR-100 (a subset of the split, not all of it)",
     "200 of 10,000 test images", "test"),
    # A local copy that holds 1,000 test images is still a subset of CIFAR-100's test split.
    ({"eval_num_samples": 1_000, "eval_split": "test", "eval_split_size": 1_000}, "cifar100",
     "on 1,000 of the 10,000 images of the `test` split of CIFAR-100", "1,000 of 10,000 test images", "test"),
    ({"eval_num_samples": 10_000, "eval_split": "valid", "eval_split_size": 10_000}, "tiny-imagenet",
     "on all 10,000 images of the `valid` split of Tiny ImageNet", None, "valid"),
    ({"eval_num_samples": 8_000, "eval_split": "test"}, "stl10", "on all 8,000 images of the `test` split of STL-10",
     None, "test"),
    ({"eval_num_samples": 200, "eval_split": "test", "eval_split_size": None}, "mydata",
     "on 200 images of the `test` split of mydata (the split's full size is not known here", "200 test images", "test"),
    ({"eval_num_samples": 16, "eval_split": None, "eval_split_size": None}, "cifar10",
     "on 16 evaluation images of CIFAR-10 (which split was not recorded)", "16 evaluation images", None),
])
def test_the_card_says_how_many_images_of_which_split_were_evaluated(bare_dir, record, dataset, claim, qualifier, split):
    card = build_model_card(bare_dir, repo_id="me/r8", dataset=dataset, results=EVALUATED, run_record=record)
    text = str(card)
    assert claim in text
    if record["eval_num_samples"] != 10_000 and record["eval_num_samples"] != 8_000:
        assert "on all" not in text
    if split is None:
        assert "split of" not in text  # no split is claimed
    result = card.data.eval_results[0]
    assert result.dataset_split == split and result.metric_value == 50.0
    assert result.metric_name == "Top-1 accuracy (%)" + (f", {qualifier}" if qualifier else "")


def test_a_folder_that_recorded_no_evaluation_facts_says_what_is_assumed(run_dir):
    text = str(build_model_card(run_dir, repo_id="me/r8"))
    assert ("on the `test` split of CIFAR-100, the dataset's evaluation split (assumed: neither the split nor the "
            "number of images evaluated was recorded, so it may be a subset)") in text
    given = str(build_model_card(run_dir, repo_id="me/r8", eval_split="test"))
    assert "on the `test` split of CIFAR-100 (the number of images evaluated was not recorded, so it may be a subset)" in given


@pytest.mark.parametrize("epochs_trained", [0.4, 1.0, 2.5, 3.0, 3.2])
def test_the_card_describes_only_the_lr_decays_that_happened(run_dir, bare_dir, epochs_trained):
    milestones, steps_per_epoch = [1, 2, 3], 10
    # Independent definition: the rates torch's MultiStepLR (as the trainer builds it) gave the steps that ran.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [m * steps_per_epoch for m in milestones], gamma=0.1)
    used = []
    for _ in range(round(epochs_trained * steps_per_epoch)):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    applied = [m for i, m in enumerate(milestones) if min(used) < 0.5 * 0.1 ** i]
    missed = [m for m in milestones if m not in applied]

    args = {**json.loads((run_dir / "training_args.json").read_text()), "lr_decay_epochs": milestones}
    card = build_model_card(bare_dir, training_args=args, run_record={"epoch": epochs_trained})
    row = card_line(card, "| LR schedule |")
    if not missed:
        assert row == "| LR schedule | × 0.1 at epochs 1, 2, 3 |"
    elif not applied:
        assert row.startswith(f"| LR schedule | constant: training stopped at epoch {epochs_trained:g}, before")
        assert "none was applied" in row and "× 0.1 at" not in row
    else:
        claimed = row.removeprefix("| LR schedule | × 0.1 at ").split(";")[0]
        assert claimed.split(" ", 1)[1] == ", ".join(map(str, applied))
        assert f"{', '.join(map(str, missed))} not reached (training stopped at epoch {epochs_trained:g})" in row
    planned = card_line(card, "| epochs |")
    assert planned == f"| epochs | 240 planned, {epochs_trained:g} trained |"


def test_a_short_trainer_run_records_its_subset_evaluation_and_claims_no_decay(tmp_path):
    import datasets

    source = TinyImageDataset(40, size=8)
    evaluation = datasets.Dataset.from_dict(
        {"pixel_values": source.images.tolist(), "labels": source.labels.tolist()}, split=datasets.NamedSplit("test"),
    ).with_format("torch").select(range(12))  # as max_eval_samples does
    out = tmp_path / "run"
    args = RRDConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                     memory_size=32, use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
                     eval_strategy="steps", eval_steps=2, optim="sgd", kd_weight=1.0, seed=0,
                     lr_decay_epochs=[150, 180, 210])
    trainer = RRDTrainer(model=build_model("resnet8", 4), teacher_model=build_model("resnet14", 4), args=args,
                         train_dataset=TinyImageDataset(32, size=8, with_index=True), eval_dataset=evaluation)
    trainer.train()
    api = FakeApi(tmp_path)
    trainer.push_to_hub(api=api, dataset="cifar10")
    record = json.loads((out / RUN_INFO_NAME).read_text())
    assert (record["eval_num_samples"], record["eval_split"], record["epoch"]) == (12, "test", 0.5)
    for text in ((api.uploads[0] / "README.md").read_text(encoding="utf-8"),
                 str(build_model_card(out, repo_id="me/student", dataset="cifar10"))):  # later, from the folder
        assert "on 12 of the 10,000 images of the `test` split of CIFAR-10 (a subset of the split" in text
        assert "| LR schedule | constant: training stopped at epoch 0.5, before the × 0.1 decays planned at epochs " \
               "150, 180, 210 (none was applied) |" in text
        assert "× 0.1 at epochs" not in text and "| training length | 2 optimizer steps |" in text


# ------------------------------------------------------------------------------------------------- untrusted folders


class TouchOnUnpickle:
    """Unpickling this creates `marker`: what a crafted `training_args.bin` could do instead."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def write_custom_code_model(folder, marker):
    """A model whose architecture neither transformers nor rrd_hf knows; importing its code creates `marker`."""
    folder.mkdir(parents=True)
    (folder / "configuration_toy.py").write_text(
        f"open({str(marker)!r}, 'w').close()  # runs only if this file is imported\n"
        "from transformers import PretrainedConfig\n\n\nclass ToyConfig(PretrainedConfig):\n"
        "    model_type = 'toy-untrusted'\n")
    (folder / "modeling_toy.py").write_text(
        "import torch\nfrom transformers import PreTrainedModel\n"
        "from transformers.modeling_outputs import ImageClassifierOutput\n\nfrom .configuration_toy import ToyConfig\n\n\n"
        "class ToyForImageClassification(PreTrainedModel):\n    config_class = ToyConfig\n\n"
        "    def __init__(self, config):\n        super().__init__(config)\n"
        "        self.classifier = torch.nn.Linear(3, config.num_labels)\n        self.post_init()\n\n"
        "    def forward(self, pixel_values=None, labels=None, **kwargs):\n"
        "        return ImageClassifierOutput(logits=self.classifier(pixel_values.mean(dim=(2, 3))))\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "toy-untrusted", "architectures": ["ToyForImageClassification"], "num_labels": 2,
        "id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1},
        "auto_map": {"AutoConfig": "configuration_toy.ToyConfig",
                     "AutoModelForImageClassification": "modeling_toy.ToyForImageClassification"}}))
    save_file({"classifier.weight": torch.zeros(2, 3), "classifier.bias": torch.zeros(2)}, folder / "model.safetensors")
    return folder


def test_a_pickled_training_args_bin_is_never_opened(run_dir, tmp_path, caplog):
    from rrd_hf.commands.cli import main

    probe = tmp_path / "probe-unpickled"  # the crafted pickle works: unpickling it does run its code
    torch.save(TouchOnUnpickle(probe), tmp_path / "probe.bin")
    torch.load(tmp_path / "probe.bin", weights_only=False)
    assert probe.exists()

    marker, crafted = tmp_path / "unpickled", tmp_path / "crafted"
    shutil.copytree(run_dir, crafted)
    os.remove(crafted / "training_args.json")
    torch.save(TouchOnUnpickle(marker), crafted / "training_args.bin")
    api = FakeApi(tmp_path)
    with caplog.at_level(logging.WARNING, logger="rrd_hf"):
        push_to_hub(crafted, "me/resnet8-rrd", api=api)
        main(["push", str(crafted), "me/resnet8-rrd", "--export-dir", str(tmp_path / "export")])
    assert not marker.exists()
    text = (api.uploads[0] / "README.md").read_text(encoding="utf-8")
    assert "hyper-parameters were not recorded" in text and "| learning rate |" not in text
    assert "never unpickles training_args.bin" in caplog.text and "--training-args" in caplog.text
    # The values can still be given, as data.
    main(["push", str(crafted), "me/resnet8-rrd", "--export-dir", str(tmp_path / "given"),
          "--training-args", str(run_dir / "training_args.json")])
    assert "| learning rate | 0.05 |" in (tmp_path / "given" / "README.md").read_text(encoding="utf-8")
    assert not marker.exists()


def test_rrd_hf_architectures_load_without_running_the_folders_code(run_dir, tmp_path):
    marker, crafted = tmp_path / "imported", tmp_path / "crafted"
    shutil.copytree(run_dir, crafted)
    with open(crafted / "_cifar_common.py", "a", encoding="utf-8") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').close()\n")
    api = FakeApi(tmp_path)
    push_to_hub(crafted, "me/resnet8-rrd", api=api)
    export_student(crafted, tmp_path / "export", trust_remote_code=True)  # consent is not needed, nor used
    assert not marker.exists()
    assert files_of(api.uploads[0]) == CLEAN  # the code is published for users to read, not run here


def test_unknown_custom_code_runs_only_with_the_users_flag(tmp_path, capsys):
    from rrd_hf.commands.cli import main

    marker = tmp_path / "imported"
    folder = write_custom_code_model(tmp_path / "toy", marker)
    api = FakeApi(tmp_path)
    with pytest.raises(ExportError, match=r"'toy-untrusted'.*trust_remote_code=True.*--trust-remote-code"):
        push_to_hub(folder, "me/toy", api=api)
    with pytest.raises(SystemExit):  # the command line prints the reason in one message
        main(["push", str(folder), "me/toy", "--export-dir", str(tmp_path / "refused")])
    assert "modeling_toy.py" in capsys.readouterr().err
    assert api.calls == [] and not marker.exists() and not (tmp_path / "refused").exists()
    main(["push", str(folder), "me/toy", "--export-dir", str(tmp_path / "trusted"), "--trust-remote-code"])
    assert marker.exists()  # with the user's consent, validation imported the model's code
    assert files_of(tmp_path / "trusted") == {"config.json", "model.safetensors", "configuration_toy.py",
                                              "modeling_toy.py", "README.md"}


@pytest.mark.parametrize("module", ["sub/../../../../{outside}/sitecustomize", "{outside_abs}/sitecustomize",
                                    "..", "sub/modeling_x", "org/repo--modeling_x"])
def test_a_crafted_auto_map_writes_nothing_outside_the_export(run_dir, tmp_path, module):
    """An auto_map entry that is not a bare module name (with a symlinked sub-folder, `..`, an absolute path, another
    repository) is refused before anything is copied; nothing appears outside the export folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sitecustomize.py").write_text("print('planted')\n")
    crafted = tmp_path / "crafted"
    shutil.copytree(run_dir, crafted)
    os.symlink(outside, crafted / "sub")
    config = json.loads((crafted / "config.json").read_text())
    name = module.format(outside=os.path.relpath(outside, crafted), outside_abs=str(outside).lstrip("/"))
    config["auto_map"]["AutoConfig"] = f"{name}.Evil"
    (crafted / "config.json").write_text(json.dumps(config))
    victim = tmp_path / "victim"
    victim.mkdir()
    before = snapshot(tmp_path / "victim"), sorted(p.name for p in outside.iterdir())
    with pytest.raises(ExportError, match="auto_map"):
        export_student(crafted, tmp_path / "export")
    with pytest.raises(ExportError, match="auto_map"):
        push_to_hub(crafted, "me/resnet8-rrd", api=FakeApi(tmp_path))
    assert not (tmp_path / "export").exists() or not os.listdir(tmp_path / "export")
    assert (snapshot(tmp_path / "victim"), sorted(p.name for p in outside.iterdir())) == before


@pytest.mark.parametrize("link", ["figures/correlation_difference.png", "model.safetensors", "_cifar_common.py"])
def test_a_symlinked_file_is_never_followed_into_the_export(run_dir, tmp_path, link):
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's secret\n")
    crafted = tmp_path / "crafted"
    shutil.copytree(run_dir, crafted)
    os.remove(crafted / link)
    os.symlink(secret, crafted / link)
    api = FakeApi(tmp_path)
    with pytest.raises(ExportError, match="link"):
        push_to_hub(crafted, "me/resnet8-rrd", api=api)
    with pytest.raises(ExportError, match="link"):
        export_student(crafted, tmp_path / "export")
    assert api.calls == []
    exported = [p for p in (tmp_path / "export").rglob("*") if p.is_file()] if (tmp_path / "export").exists() else []
    assert not any("secret" in p.read_text(errors="ignore") for p in exported)


def test_rrd_hf_architectures_export_rrd_hfs_own_code_not_the_folders(run_dir, tmp_path, caplog):
    import rrd_hf.models

    crafted = tmp_path / "crafted"
    shutil.copytree(run_dir, crafted)
    with open(crafted / "modeling_cifar_resnet.py", "a", encoding="utf-8") as handle:
        handle.write("\nimport os  # tampered\n")
    with caplog.at_level(logging.WARNING, logger="rrd_hf"):
        export_student(crafted, tmp_path / "export")
    ours = pathlib.Path(rrd_hf.models.__file__).parent
    for name in ("modeling_cifar_resnet.py", "configuration_cifar_resnet.py", "_cifar_common.py"):
        assert (tmp_path / "export" / name).read_bytes() == (ours / name).read_bytes()
    assert "modeling_cifar_resnet.py differs from rrd_hf's own copy" in caplog.text


def test_loading_a_folder_with_unknown_code_never_prompts_and_says_how_to_trust_it(tmp_path):
    """`evaluate`, `probe`, `plots` and a teacher path all load through `load_image_classifier`: in a terminal,
    transformers would ask whether to run the folder's code; rrd_hf refuses instead, with the way to consent."""
    from rrd_hf.classifiers.loading import load_image_classifier

    marker = tmp_path / "imported"
    folder = write_custom_code_model(tmp_path / "toy", marker)
    with pytest.raises(OSError, match="runs a folder's code only when you say so.*trust_remote_code=True"):
        load_image_classifier(folder, role="teacher")
    assert not marker.exists()
    assert load_image_classifier(folder, role="teacher", trust_remote_code=True).config.num_labels == 2
    assert marker.exists()


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
    # The arguments are saved as data next to every set of weights (publishing never unpickles training_args.bin).
    saved_args = json.loads((out / "checkpoint-2" / "training_args.json").read_text())
    assert saved_args == json.loads(json.dumps(args.to_dict(), default=str)) and saved_args["seed"] == 0
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
