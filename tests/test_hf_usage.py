"""What a Hugging Face user does, checked end to end: README's Python example on another dataset than CIFAR-100,
a Hub-style ViT teacher at its own size and normalisation, the saved processor and class names."""

import json

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from helpers import TinyImageDataset
from rrd_hf import RRDConfig, RRDTrainer


@pytest.fixture(scope="module")
def cifar10_folder(tmp_path_factory):
    import datasets

    from rrd_hf.data import CIFAR10_CLASS_NAMES

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    rng = np.random.default_rng(1)

    def split(n):
        return datasets.Dataset.from_dict({"img": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)],
                                           "label": [i % 10 for i in range(n)]}, features=features)

    path = tmp_path_factory.mktemp("data") / "cifar10"
    datasets.DatasetDict(train=split(32), test=split(10)).save_to_disk(str(path))
    return str(path)


def readme_args(output_dir, **extra):
    return RRDConfig(output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=8, memory_size=16,
                     learning_rate=0.05, optim="sgd", optim_args="momentum=0.9", weight_decay=5e-4,
                     decay_all_parameters=True, max_grad_norm=0.0, kd_weight=1.0, use_cpu=True, report_to="none",
                     disable_tqdm=True, save_strategy="no", **extra)


def test_readme_python_example_on_cifar10_saves_its_statistics_and_class_names(tmp_path, cifar10_folder):
    from rrd_hf.data import CIFAR10_CLASS_NAMES, get_dataset_info, prepare_dataset
    from rrd_hf.data import cifar_image_processor
    from rrd_hf.models import build_model

    train = prepare_dataset(cifar10_folder, "train", with_index=True, seed=0)  # random crop + flip + normalise
    test = prepare_dataset(cifar10_folder, "test")
    teacher = build_model("resnet8", 10)
    student = build_model("resnet8", 10)  # default labels LABEL_0 ... LABEL_9
    trainer = RRDTrainer(model=student, teacher_model=teacher, args=readme_args(tmp_path / "run"),
                         train_dataset=train, eval_dataset=test)
    trainer.train()
    trainer.save_model()

    cifar10 = get_dataset_info("cifar10")
    saved = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == pytest.approx(list(cifar10.mean)) and saved["image_std"] == pytest.approx(list(cifar10.std))
    assert saved["size"] == {"height": 32, "width": 32}
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "run")  # `import rrd_hf` registered it
    assert [model.config.id2label[i] for i in range(10)] == list(CIFAR10_CLASS_NAMES)
    classify = pipeline("image-classification", model=str(tmp_path / "run"), device="cpu")
    from PIL import Image

    answer = classify(Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)))
    assert answer[0]["label"] in CIFAR10_CLASS_NAMES

    # The old README's processor carried CIFAR-100 statistics: now an error that says what to do, not a silent mismatch.
    with pytest.raises(ValueError, match="processing_class normalises with mean=.* but the training batches .*image_processor_for"):
        RRDTrainer(model=build_model("resnet8", 10), teacher_model=teacher, args=readme_args(tmp_path / "run2"),
                   train_dataset=train, processing_class=cifar_image_processor())


def test_readme_quickstart_in_memory_path_then_loading_in_a_fresh_process(tmp_path, cifar10_folder):
    """README's quickstart as written (in-memory data, per-batch augmentation on the device), on a CIFAR-10-schema
    folder; then README's loading lines in a new interpreter that imports only `rrd_hf.models`."""
    import subprocess
    import sys

    from rrd_hf.data import DeviceAugmentation, InMemoryImageDataset, get_dataset_info, load_image_dataset
    from rrd_hf.models import build_model

    info = get_dataset_info("cifar10")
    train = InMemoryImageDataset.from_dataset(load_image_dataset(cifar10_folder, "train"), cache_file=None)
    test = InMemoryImageDataset.from_dataset(load_image_dataset(cifar10_folder, "test"), cache_file=None)
    augment = DeviceAugmentation(info, seed=0)
    trainer = RRDTrainer(model=build_model("resnet8", 10), teacher_model=build_model("resnet8", 10),
                         args=readme_args(tmp_path / "run", eval_strategy="steps", eval_steps=2),
                         train_dataset=train, eval_dataset=test, batch_transform=augment)
    trainer.train()
    trainer.save_model()
    saved = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == pytest.approx(list(info.mean))

    script = (
        "import json, sys\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "import rrd_hf.models\n"
        "from transformers import AutoModelForImageClassification, pipeline\n"
        "model = AutoModelForImageClassification.from_pretrained(sys.argv[1])\n"
        "classify = pipeline('image-classification', model=sys.argv[1], device='cpu')\n"
        "answer = classify(Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)))\n"
        "print(json.dumps({'labels': [model.config.id2label[i] for i in range(10)], 'top': answer[0]['label']}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["labels"] == list(info.class_names) and found["top"] in info.class_names


def test_a_student_whose_class_names_disagree_with_the_data_is_refused(tmp_path, cifar10_folder):
    from rrd_hf.data import CIFAR10_CLASS_NAMES, prepare_dataset
    from rrd_hf.models import build_model

    train = prepare_dataset(cifar10_folder, "train", with_index=True, seed=0)
    shuffled = list(CIFAR10_CLASS_NAMES)[1:] + [CIFAR10_CLASS_NAMES[0]]
    with pytest.raises(ValueError, match="id2label differs from the dataset's classes \\(label 0"):
        RRDTrainer(model=build_model("resnet8", class_names=shuffled), teacher_model=build_model("resnet8", 10),
                   args=readme_args(tmp_path), train_dataset=train)


def tiny_vit(image_size, seed, **extra):
    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=image_size, patch_size=16, num_channels=3, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=4,
                                    **extra)
    return AutoModelForImageClassification.from_config(config)


def test_a_vit_module_teacher_at_64_pixels_trains_a_32_pixel_student_with_no_extra_arguments(tmp_path):
    from rrd_hf.models import build_model

    teacher = tiny_vit(64, seed=3)
    seen = []
    teacher.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["pixel_values"].shape)), with_kwargs=True)
    trainer = RRDTrainer(model=build_model("resnet8", 4), teacher_model=teacher, args=readme_args(tmp_path),
                         train_dataset=TinyImageDataset(16, size=32, with_index=True))
    trainer.train()
    assert seen and all(shape[-2:] == (64, 64) for shape in seen)


def test_a_vit_teacher_loaded_from_its_folder_brings_its_own_normalisation(tmp_path):
    from rrd_hf.models import build_model

    tiny_vit(64, seed=3).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessorPil(size={"height": 64, "width": 64}, image_mean=[0.5] * 3,
                                      image_std=[0.5] * 3).save_pretrained(tmp_path / "vit")
    teacher = AutoModelForImageClassification.from_pretrained(tmp_path / "vit")  # a module, but it knows its folder
    assert list(AutoImageProcessor.from_pretrained(tmp_path / "vit").image_mean) == [0.5] * 3
    args = readme_args(tmp_path / "out", student_image_mean=[0.1, 0.2, 0.3], student_image_std=[0.3, 0.3, 0.3])
    trainer = RRDTrainer(model=build_model("resnet8", 4), teacher_model=teacher, args=args,
                         train_dataset=TinyImageDataset(16, size=32, with_index=True))
    adapter = trainer.teacher.adapter
    assert adapter.size == (64, 64)
    x = torch.zeros(1, 3, 32, 32)  # student-normalised zeros are the student's mean: (0.1 - 0.5) / 0.5 for the teacher
    torch.testing.assert_close(adapter(x)[0, :, 0, 0], torch.tensor([-0.8, -0.6, -0.4]))
    trainer.train()


def test_report_to_without_its_extra_says_which_extra_to_install(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match=r"report_to='tensorboard' needs .*pip install 'rrd_hf\[tensorboard\]'"):
        RRDConfig(output_dir=str(tmp_path), report_to="tensorboard")
