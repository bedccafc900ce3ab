"""The decoded-image cache of the in-memory path (`rrd_hf.data.decoded_cache`).

Specified here: a split loaded by `datasets` from files is decoded once and read back by later loads with bitwise the
same images, labels and sample ids; changed data files, another selection or another size are decoded again; a
damaged (bit rot included), foreign or crafted cache file is decoded again and replaced, with a warning; cache files
get the umask's mode; a file of the user's is never
overwritten; nothing is kept for in-memory or `save_to_disk` datasets nor with `datasets` caching off; a folder that
cannot be written costs only the saving.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from safetensors.torch import load_file, save_file

import rrd_hf.data.device as device_module
from rrd_hf.data import CIFAR10_CLASS_NAMES, InMemoryImageDataset, decode_to_uint8, resolve_dataset
from rrd_hf.data.decoded_cache import PREFIX, decoded_cache_path, read_decoded, write_decoded
from rrd_hf.commands.train import DataArguments, _load_splits


def cifar10_split(n, seed=0):
    images = list(np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8))
    features = Features({"img": Image(), "label": ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    return Dataset.from_dict({"img": images, "label": [(i * 7) % 10 for i in range(n)]}, features=features)


def write_hub_layout(root, train_seed=0, n=24):
    """CIFAR-10 in the Hub repo's layout (parquet per split): `datasets` loads it into its cache folder."""
    folder = root / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    cifar10_split(n, train_seed).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    cifar10_split(8, 99).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    return root


def train_split(root, **kwargs):
    return resolve_dataset(str(root), **kwargs).train


def fresh_decode(dataset, size=32):
    return decode_to_uint8(dataset, size)


def refuse_decoding(monkeypatch):
    """Make any decoding fail: what loads afterwards must come from the cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("decoded although a valid cache file was there")

    monkeypatch.setattr(device_module, "decode_to_uint8", refuse)


def test_a_split_is_decoded_once_and_read_back_bitwise(tmp_path, monkeypatch, caplog):
    root = write_hub_layout(tmp_path / "cifar10")
    dataset = train_split(root)
    path = decoded_cache_path(dataset, 32)
    assert path is not None and path.name.startswith(PREFIX) and not path.exists()
    with caplog.at_level(logging.INFO):
        first = InMemoryImageDataset.from_dataset(dataset, 32, cache_file="auto")
    assert path.is_file() and "kept in" in caplog.text
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    images, labels, index = fresh_decode(dataset)
    assert torch.equal(first.images, images) and torch.equal(first.labels, labels) and torch.equal(first.index, index)
    refuse_decoding(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = InMemoryImageDataset.from_dataset(train_split(root), 32, cache_file="auto")  # a fresh load
    assert "read from" in caplog.text
    assert torch.equal(again.images, images) and torch.equal(again.labels, labels) and torch.equal(again.index, index)
    assert again.class_names == first.class_names and (again.split, again.split_size) == (first.split, first.split_size)
    # without the cache, the same load decodes (and meets the refusal)
    with pytest.raises(AssertionError, match="decoded although"):
        InMemoryImageDataset.from_dataset(train_split(root), 32)


def test_the_command_line_reads_the_cache_and_can_be_told_not_to(tmp_path, monkeypatch):
    root = write_hub_layout(tmp_path / "cifar10")
    args = dict(dataset=str(root), data_pipeline="in_memory", max_eval_samples=4)
    train, evaluation = _load_splits(DataArguments(**args), 0)[:2]
    refuse_decoding(monkeypatch)
    cached_train, cached_eval = _load_splits(DataArguments(**args), 0)[:2]
    for a, b in ((train, cached_train), (evaluation, cached_eval)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.index, b.index)
    with pytest.raises(AssertionError, match="decoded although"):
        _load_splits(DataArguments(decoded_cache=False, **args), 0)


def test_changed_files_another_selection_or_size_are_decoded_again(tmp_path, caplog):
    root = write_hub_layout(tmp_path / "cifar10", train_seed=0)
    before = InMemoryImageDataset.from_dataset(train_split(root), 32, cache_file="auto")
    time.sleep(0.01)  # a new modification time, as any rewrite of the files has
    write_hub_layout(root, train_seed=1)  # the same names, other pixels
    changed = train_split(root)
    after = InMemoryImageDataset.from_dataset(changed, 32, cache_file="auto")
    assert torch.equal(after.images, fresh_decode(changed)[0]) and not torch.equal(after.images, before.images)
    subset = changed.select(range(5))
    assert torch.equal(InMemoryImageDataset.from_dataset(subset, 32, cache_file="auto").images, fresh_decode(subset)[0])
    small = InMemoryImageDataset.from_dataset(changed, 16, cache_file="auto")
    assert small.images.shape[-2:] == (16, 16) and torch.equal(small.images, fresh_decode(changed, 16)[0])
    assert len({decoded_cache_path(changed, 32), decoded_cache_path(subset, 32), decoded_cache_path(changed, 16)}) == 3


def test_another_pillow_is_decoded_again(tmp_path, monkeypatch):
    """Pillow decodes the bytes: another version (another libjpeg, other resampling) may give other pixels."""
    import PIL

    dataset = train_split(write_hub_layout(tmp_path / "cifar10"))
    InMemoryImageDataset.from_dataset(dataset, 32, cache_file="auto")
    written = decoded_cache_path(dataset, 32)
    assert read_decoded(written, dataset, 32) is not None
    monkeypatch.setattr(PIL, "__version__", "0.0.1")
    assert decoded_cache_path(dataset, 32) != written and read_decoded(written, dataset, 32) is None


def _crafted(path, dataset, kind):
    good = load_file(str(path))
    import PIL

    metadata = {"format": "rrd_hf.decoded_images", "version": "1", "fingerprint": dataset._fingerprint,
                "image_size": "32", "decoder": f"Pillow {PIL.__version__}"}
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "not safetensors":
        path.write_bytes(b"\x80\x04 pickled? no: nothing here is ever unpickled")
    elif kind == "other data":
        save_file({"images": torch.zeros_like(good["images"])}, str(path), metadata={**metadata, "fingerprint": "x"})
    elif kind == "other version":
        save_file({"images": torch.zeros_like(good["images"])}, str(path), metadata={**metadata, "version": "0"})
    elif kind == "wrong shape":
        save_file({"images": good["images"][:-1].clone()}, str(path), metadata=metadata)
    elif kind == "wrong dtype":
        save_file({"images": good["images"].float()}, str(path), metadata=metadata)
    elif kind == "extra tensor":
        save_file({"images": good["images"], "labels": torch.zeros(3)}, str(path), metadata=metadata)
    elif kind == "bit rot":  # a few flipped bytes in the pixel data, the header intact
        data = bytearray(path.read_bytes())
        for offset in (-1, -777, -3001):
            data[offset] ^= 0x5A
        path.write_bytes(bytes(data))
    elif kind == "copied metadata":  # another file's metadata (its digest too) on other pixels
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            copied = handle.metadata()
        save_file({"images": 255 - good["images"]}, str(path), metadata=copied)


@pytest.mark.parametrize("kind", ["truncated", "not safetensors", "other data", "other version", "wrong shape",
                                  "wrong dtype", "extra tensor", "bit rot", "copied metadata"])
def test_a_damaged_or_crafted_cache_file_is_decoded_again_and_replaced(tmp_path, caplog, kind):
    root = write_hub_layout(tmp_path / "cifar10")
    dataset = train_split(root)
    InMemoryImageDataset.from_dataset(dataset, 32, cache_file="auto")
    path = decoded_cache_path(dataset, 32)
    _crafted(path, dataset, kind)
    with caplog.at_level(logging.WARNING):
        loaded = InMemoryImageDataset.from_dataset(dataset, 32, cache_file="auto")
    assert "decoding again" in caplog.text, caplog.text
    assert torch.equal(loaded.images, fresh_decode(dataset)[0])
    assert torch.equal(read_decoded(path, dataset, 32), loaded.images)  # rewritten whole


def test_the_command_line_decodes_a_damaged_cache_again(tmp_path, caplog):
    """What `rrd-hf train` reads (`_load_splits`): a cache file whose pixels rotted after it was written is not
    trained on; the split is decoded again, with a warning, and the file rewritten."""
    root = write_hub_layout(tmp_path / "cifar10")
    args = dict(dataset=str(root), data_pipeline="in_memory")
    train = _load_splits(DataArguments(**args), 0)[0]
    path = decoded_cache_path(train_split(root), 32)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = _load_splits(DataArguments(**args), 0)[0]
    assert "do not match the digest" in caplog.text
    assert torch.equal(again.images, train.images)
    assert torch.equal(read_decoded(path, train_split(root), 32), train.images)


def test_cache_files_get_the_umasks_mode(tmp_path):
    """A shared `datasets` cache: the decoded file is as readable to the other users as the cache files beside it."""
    dataset = train_split(write_hub_layout(tmp_path / "cifar10"))
    old = os.umask(0o022)
    try:
        InMemoryImageDataset.from_dataset(dataset, 32, cache_file="auto")
        assert os.stat(decoded_cache_path(dataset, 32)).st_mode & 0o777 == 0o644
        os.umask(0o077)
        InMemoryImageDataset.from_dataset(dataset, 16, cache_file="auto")
        assert os.stat(decoded_cache_path(dataset, 16)).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_an_explicit_cache_file_of_the_users_is_never_overwritten(tmp_path):
    dataset = train_split(write_hub_layout(tmp_path / "cifar10"))
    weights = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(2)}, str(weights))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for path in (weights, notes):
        before = path.read_bytes()
        with pytest.raises(FileExistsError, match="not a decoded-image cache written by rrd_hf"):
            InMemoryImageDataset.from_dataset(dataset, 32, cache_file=path)
        assert path.read_bytes() == before
    # a file that this cache wrote (for another size) is rewritten
    mine = tmp_path / "decoded.safetensors"
    InMemoryImageDataset.from_dataset(dataset, 16, cache_file=mine)
    assert InMemoryImageDataset.from_dataset(dataset, 32, cache_file=mine).images.shape[-1] == 32
    assert read_decoded(mine, dataset, 32) is not None


def test_nothing_is_kept_for_data_outside_the_datasets_cache(tmp_path):
    import datasets

    in_memory = cifar10_split(6)
    assert decoded_cache_path(in_memory, 32) is None
    saved = tmp_path / "saved"
    DatasetDict(train=cifar10_split(6), test=cifar10_split(2, 1)).save_to_disk(str(saved))
    from_disk = train_split(saved)
    assert from_disk.cache_files and decoded_cache_path(from_disk, 32) is None  # the user's folder, not the cache
    InMemoryImageDataset.from_dataset(from_disk, 32, cache_file="auto")
    assert not [p for p in saved.rglob("*") if p.name.startswith(PREFIX)]
    hub = train_split(write_hub_layout(tmp_path / "cifar10"))
    datasets.disable_caching()
    try:
        assert decoded_cache_path(hub, 32) is None
    finally:
        datasets.enable_caching()
    assert decoded_cache_path(hub, 32) is not None


def test_a_folder_that_cannot_be_written_only_costs_the_saving(tmp_path, monkeypatch, caplog):
    dataset = train_split(write_hub_layout(tmp_path / "cifar10"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    images = fresh_decode(dataset)[0]
    with caplog.at_level(logging.INFO):
        assert write_decoded(blocker / "sub" / "x.safetensors", images, dataset, 32) is False
    assert "not cached" in caplog.text
    loaded = InMemoryImageDataset.from_dataset(dataset, 32, cache_file=blocker / "x.safetensors")
    assert torch.equal(loaded.images, images)

    # a failure in the middle of writing leaves neither the file nor its temporary
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    target = tmp_path / "out" / "x.safetensors"
    assert write_decoded(target, images, dataset, 32) is False
    assert not target.exists() and os.listdir(target.parent) == []


def test_a_write_killed_halfway_leaves_no_cache_file_and_its_leftover_is_cleaned(tmp_path):
    """A process killed (SIGKILL) while writing: the final name never holds a partial file, the next load decodes, and
    its write removes the dead process's temporary file (a live process's is left alone)."""
    import subprocess
    import sys
    import textwrap

    root = write_hub_layout(tmp_path / "cifar10")
    dataset = train_split(root)
    path = decoded_cache_path(dataset, 32)
    script = textwrap.dedent(f"""
        import os, signal, safetensors.torch
        from rrd_hf.data import resolve_dataset, InMemoryImageDataset
        def die(tensors, filename, metadata=None):
            open(filename, "wb").write(b"half of a file")
            os.kill(os.getpid(), signal.SIGKILL)
        safetensors.torch.save_file = die
        InMemoryImageDataset.from_dataset(resolve_dataset({str(root)!r}).train, 32, cache_file="auto")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == -9, result.stderr[-3000:]
    leftovers = list(path.parent.glob(f".{path.name}.*.tmp"))
    assert len(leftovers) == 1 and not path.exists()
    live = path.parent / f".{path.name}.{os.getpid()}.feed.tmp"  # this process is alive: its file must stay
    live.write_bytes(b"being written")
    loaded = InMemoryImageDataset.from_dataset(dataset, 32, cache_file="auto")
    assert torch.equal(loaded.images, fresh_decode(dataset)[0]) and read_decoded(path, dataset, 32) is not None
    assert list(path.parent.glob(f".{path.name}.*.tmp")) == [live]
