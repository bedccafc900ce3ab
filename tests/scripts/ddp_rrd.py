"""Trains a tiny student with RRD+KD and writes each process's final state; run alone or under torchrun."""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from helpers import TinyImageDataset, tiny_model  # noqa: E402
from rrd_hf import RRDConfig, RRDTrainer  # noqa: E402


def augmented_data():
    """The fast path: uint8 images in memory, random crop + flip on the device from (seed, epoch, sample index)."""
    from rrd_hf.data import DeviceAugmentation, InMemoryImageDataset

    data = TinyImageDataset(48, with_index=True)
    images = ((data.images - data.images.min()) / (data.images.max() - data.images.min()) * 255).to(torch.uint8)
    return InMemoryImageDataset(images, data.labels, stats="cifar10"), DeviceAugmentation("cifar10", seed=0)


def main(out_dir: str, per_device_batch: int, variant: str) -> None:
    """`variant`: `fifo` / `momentum` (RRD+KD with that memory), `crd` (CRD+KD: dataset-sized banks), or `augmented`
    (RRD+KD, FIFO, on the augmented fast path: every process must crop each sample as one process would)."""
    losses = dict(rrd_weight=0.0, distill_method="crd") if variant == "crd" else dict(memory_type="fifo" if
                                                                                      variant == "augmented" else variant)
    train, transform = augmented_data() if variant == "augmented" else (TinyImageDataset(48, with_index=True), None)
    args = RRDConfig(
        output_dir=os.path.join(out_dir, "run"), max_steps=6, per_device_train_batch_size=per_device_batch,
        memory_size=24, kd_weight=1.0, learning_rate=0.1, optim="sgd", logging_steps=2, **losses,
        use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", seed=0, dataloader_drop_last=True,
        distill_kwargs={"num_negatives": 16} if variant == "crd" else None,
    )
    # No BatchNorm: per-process batch statistics would make 2x4 differ from 1x8 for reasons unrelated to RRD.
    trainer = RRDTrainer(
        model=tiny_model(seed=1, use_bn=False), teacher_model=tiny_model(width=16, seed=2, use_bn=False), args=args,
        train_dataset=train, batch_transform=transform,
    )
    trainer.train()
    rank = trainer.args.process_index
    state = {f"student.{k}": v for k, v in trainer.model.state_dict().items()}
    state |= {f"distill.{k}": v for k, v in trainer.methods.state_dict().items()}
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, os.path.join(out_dir, f"rank{rank}.safetensors"))
    logs = [log for log in trainer.state.log_history if "loss" in log]
    with open(os.path.join(out_dir, f"logs{rank}.json"), "w") as handle:
        json.dump({"world_size": trainer.args.world_size, "logs": logs}, handle)
    trainer.accelerator.wait_for_everyone()  # every process done writing before the process group goes away
    trainer.end()
    # torch 2.13 can deadlock at interpreter exit when a DDP reducer tears down the gloo process group while its
    # worker thread frees a finished all_gather (it needs the GIL the main thread holds). Everything is written:
    # leave without running destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
