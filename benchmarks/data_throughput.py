"""Images/second of the two training input paths of rrd_hf.data, on CPU, in one run.

(a) per-sample: ``prepare_dataset`` (``set_transform``: decode + random crop + flip + normalise per image)
    through a ``torch.utils.data.DataLoader`` (batch 64) with ``num_workers`` 0 and 2;
(b) fast path: decode once to an in-memory uint8 tensor (timed separately, a one-off cost), then per epoch
    ``InMemoryImageDataset`` through a ``DataLoader`` (batch 64) and ``DeviceAugmentation`` on the batch (here the
    "device" is the CPU), and the same without a ``DataLoader`` (index the tensor directly).

Data: the CIFAR-10 folder (Hub layout) given with `--data`, else `$RRD_HF_CIFAR10`, else the repository's
`data/cifar10` (ignored by git) when present; otherwise generated 32x32 images. The result file goes to
benchmarks/results/ (benchmarks/README.md).

    python benchmarks/data_throughput.py                  # 10,000 training images, both paths
    python benchmarks/data_throughput.py --num-images 0   # the whole split
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from json_output import add_result_arguments, write_result  # noqa: E402
from side_by_side import default_data  # noqa: E402


def generated_cifar10(n: int):
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image

    from rrd_hf.data import CIFAR10_CLASS_NAMES

    rng = np.random.default_rng(0)
    features = Features({"img": Image(), "label": ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    return Dataset.from_dict(
        {"img": list(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)), "label": (np.arange(n) % 10).tolist()},
        features=features,
    )


def timed_epoch(loader, step=None) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    for batch in loader:
        pixels = batch["pixel_values"]
        if step is not None:
            pixels = step(batch)
        count += pixels.shape[0]
    return count, time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="CIFAR-10 folder in the Hub layout (default: $RRD_HF_CIFAR10, "
                                                      "else data/cifar10, else generated images)")
    parser.add_argument("--num-images", type=int, default=10_000, help="training images to use (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers for path (a)")
    parser.add_argument("--fast-epochs", type=int, default=3, help="epochs timed for path (b) (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    add_result_arguments(parser)
    args = parser.parse_args(argv)
    args.data = args.data or str(default_data())

    import torch
    from transformers import default_data_collator

    from rrd_hf.data import DeviceAugmentation, InMemoryImageDataset, load_image_dataset, prepare_dataset

    if args.threads:
        torch.set_num_threads(args.threads)

    if Path(args.data).is_dir():
        dataset = load_image_dataset(args.data, "train", dataset_name="cifar10")
        origin = f"real CIFAR-10 ({args.data})"
    else:
        dataset = load_image_dataset(generated_cifar10(max(args.num_images, 1000)), "train", dataset_name="cifar10")
        origin = "generated 32x32 images (real CIFAR-10 not found)"
    if args.num_images and args.num_images < len(dataset):
        dataset = dataset.select(range(args.num_images))
    n = len(dataset)
    print(f"data: {origin}, {n} training images, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes skew the numbers)")

    rows = []
    # (a) per-sample transforms through a DataLoader
    per_sample = prepare_dataset(dataset, "train", dataset_name="cifar10", train=True, with_index=True)
    for workers in args.workers:
        loader = torch.utils.data.DataLoader(
            per_sample, batch_size=args.batch_size, shuffle=True, num_workers=workers,
            collate_fn=default_data_collator, persistent_workers=False,
        )
        count, seconds = timed_epoch(loader)
        rows.append(("per-sample set_transform + DataLoader", workers, count, seconds))

    # (b) decode once, then in-memory uint8 + DeviceAugmentation
    start = time.perf_counter()
    memory = InMemoryImageDataset.from_dataset(dataset, 32)
    decode_seconds = time.perf_counter() - start
    rows.append(("decode once to uint8 (one-off)", 0, n, decode_seconds))
    augment = DeviceAugmentation("cifar10", seed=0)
    step = lambda batch: augment(batch["pixel_values"], training=True, index=batch["index"])  # noqa: E731
    best = None
    for _ in range(args.fast_epochs):
        loader = torch.utils.data.DataLoader(memory, batch_size=args.batch_size, shuffle=True, num_workers=0)
        count, seconds = timed_epoch(loader, step)
        best = seconds if best is None else min(best, seconds)
    rows.append(("in-memory uint8 + DataLoader + DeviceAugmentation", 0, n, best))
    best = None
    for _ in range(args.fast_epochs):
        start = time.perf_counter()
        for idx in torch.randperm(n).split(args.batch_size):
            augment(memory.images[idx], training=True, index=memory.index[idx])
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    rows.append(("in-memory uint8, tensor indexing + DeviceAugmentation", 0, n, best))

    print()
    print(f"{'path':<56} {'workers':>7} {'images':>7} {'seconds':>8} {'images/s':>10}")
    print("-" * 92)
    results = []
    for name, workers, count, seconds in rows:
        rate = count / seconds
        results.append({"path": name, "workers": workers, "images": count, "seconds": seconds, "images_per_s": rate})
        print(f"{name:<56} {workers:>7} {count:>7} {seconds:>8.2f} {rate:>10.0f}")
    per_sample_best = max(r["images_per_s"] for r in results if r["path"].startswith("per-sample"))
    fast_loader = next(r for r in results if "DataLoader + DeviceAugmentation" in r["path"])["images_per_s"]
    fast_direct = results[-1]["images_per_s"]
    decode_rate = next(r for r in results if r["path"].startswith("decode"))["images_per_s"]
    ratio_loader = fast_loader / per_sample_best
    ratio_direct = fast_direct / per_sample_best
    # one epoch of the fast path including its one-off decode, for an honest first-epoch comparison
    first_epoch = n / (n / decode_rate + n / fast_loader)
    print()
    print(f"ratio fast path (DataLoader) / best per-sample path: {ratio_loader:.1f}x")
    print(f"ratio fast path (tensor indexing) / best per-sample path: {ratio_direct:.1f}x")
    print(f"fast path first epoch including the decode: {first_epoch:.0f} images/s "
          f"({first_epoch / per_sample_best:.1f}x the best per-sample path)")
    summary = {"data": origin, "images": n, "batch_size": args.batch_size, "rows": results,
               "ratio_fast_dataloader_vs_per_sample": ratio_loader, "ratio_fast_indexing_vs_per_sample": ratio_direct}
    write_result(args, "data_throughput", summary, device="cpu", argv=argv)
    return summary


if __name__ == "__main__":
    main()
