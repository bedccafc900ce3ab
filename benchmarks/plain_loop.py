"""The training loop a researcher writes from the benchmark's papers (RepDistiller-style), for side_by_side.py.

Written here on purpose, not imported from rrd_hf: only the zoo models come from rrd_hf (the same networks on both
sides). Images are decoded once into memory, as torchvision's CIFAR datasets hold them; each sample is turned
into a tensor and augmented in the DataLoader workers (random crop with zero padding, horizontal flip,
normalise, in plain torch on the PIL image); SGD over the student and the heads; the teacher in eval mode under
`no_grad`; the losses written out below:

* KD: RepDistiller's `DistillKL` (KL of the softened distributions, times T², per sample).
* RRD: 128-d linear heads, L2-normalised, a FIFO queue of teacher embeddings (MoCo-style, enqueued after the loss),
  cross-entropy between the teacher's and the student's softmax over the queue (τ_t, τ_s).
* CRD: RepDistiller's `CRDLoss` / `ContrastMemory` / `ContrastLoss` in their bmm form (the K + 1 bank rows of each
  sample are gathered, then multiplied), with the negatives drawn uniformly in the loop (RepDistiller's CIFAR runs
  draw them from the other classes in the loader workers instead).

`PlainRun(spec)` builds everything from the spec side_by_side.py writes; `step()` takes an optional timer so that
profile_step.py can time its parts.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


def load_split(data: str, split: str, limit: int | None):
    """Decode a split once: uint8 (N, H, W, 3) images and int64 labels."""
    from datasets import load_dataset

    dataset = load_dataset(data, split=split)
    if limit:
        dataset = dataset.select(range(min(limit, len(dataset))))
    image_column = "img" if "img" in dataset.column_names else "image"
    label_column = "label" if "label" in dataset.column_names else "fine_label"
    images = np.stack([np.asarray(row[image_column].convert("RGB"), dtype=np.uint8) for row in dataset])
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    return images, labels


class CIFARDataset(torch.utils.data.Dataset):
    """In-memory images with the benchmark's per-sample transform; items are (image, label, index)."""

    def __init__(self, images, labels, mean, std, train: bool, padding: int = 4, flip_prob: float = 0.5):
        self.images, self.labels, self.train = images, labels, train
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.padding, self.flip_prob = padding, flip_prob

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = Image.fromarray(self.images[i])  # what torchvision's CIFAR10.__getitem__ hands its transforms
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)  # ToTensor
        if self.train:
            p = self.padding
            height, width = x.shape[1:]
            x = F.pad(x, (p, p, p, p))  # RandomCrop(32, padding=4) pads with zeros
            top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = x[:, top : top + height, left : left + width]
            if torch.rand(()).item() < self.flip_prob:  # RandomHorizontalFlip
                x = x.flip(2)
        x = (x - self.mean) / self.std  # Normalize
        return x, int(self.labels[i]), i


def kd_loss(logit_s, logit_t, temperature):
    """RepDistiller's `DistillKL`."""
    p_s = F.log_softmax(logit_s / temperature, dim=1)
    p_t = F.softmax(logit_t / temperature, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * temperature**2 / logit_s.shape[0]


class RRDLoss(nn.Module):
    """RRD with a FIFO memory of teacher embeddings."""

    def __init__(self, student_dim, teacher_dim, n_data, protocol):
        super().__init__()
        dim = protocol["embedding_dim"]
        self.embed_s = nn.Linear(student_dim, dim)
        self.embed_t = nn.Linear(teacher_dim, dim)
        self.register_buffer("queue", F.normalize(torch.randn(protocol["memory_size"], dim), dim=1))
        self.pointer = 0
        self.tau_s, self.tau_t = protocol["student_temperature"], protocol["teacher_temperature"]

    def forward(self, f_s, f_t, index):
        z_s = F.normalize(self.embed_s(f_s), dim=1)
        with torch.no_grad():
            z_t = F.normalize(self.embed_t(f_t), dim=1)
        memory = self.queue.clone().detach()  # the queue is updated in place below
        p_t = F.softmax(z_t @ memory.t() / self.tau_t, dim=1)
        log_p_s = F.log_softmax(z_s @ memory.t() / self.tau_s, dim=1)
        loss = -(p_t * log_p_s).sum(dim=1).mean()
        size = self.queue.shape[0]
        slots = (self.pointer + torch.arange(z_t.shape[0], device=z_t.device)) % size  # enqueue after
        self.queue[slots] = z_t
        self.pointer = (self.pointer + z_t.shape[0]) % size
        return loss


class CRDLoss(nn.Module):
    """RepDistiller's CRD with uniform negatives: two banks of momentum-averaged embeddings, NCE on K + 1 rows."""

    def __init__(self, student_dim, teacher_dim, n_data, protocol):
        super().__init__()
        dim = protocol["embedding_dim"]
        self.embed_s = nn.Linear(student_dim, dim)
        self.embed_t = nn.Linear(teacher_dim, dim)
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_v1", torch.rand(n_data, dim) * 2 * stdv - stdv)  # student embeddings
        self.register_buffer("memory_v2", torch.rand(n_data, dim) * 2 * stdv - stdv)  # teacher embeddings
        self.n_data, self.k = n_data, protocol["crd_negatives"]
        self.temperature, self.momentum = protocol["crd_temperature"], protocol["crd_momentum"]
        self.z_v1 = self.z_v2 = None

    def nce(self, x):
        """`ContrastLoss`: the positive in column 0, K noise samples with P_n = 1 / N."""
        batch, m = x.shape[0], x.shape[1] - 1
        noise = m / self.n_data
        log_d1 = torch.log(x[:, 0] / (x[:, 0] + noise + 1e-7))
        log_d0 = torch.log(noise / (x[:, 1:] + noise + 1e-7))
        return -(log_d1.sum() + log_d0.sum()) / batch

    def forward(self, f_s, f_t, index):
        v1 = F.normalize(self.embed_s(f_s), dim=1)
        v2 = F.normalize(self.embed_t(f_t), dim=1)
        batch, dim = v1.shape
        idx = torch.randint(0, self.n_data, (batch, self.k + 1), device=v1.device)
        idx[:, 0] = index
        weight_v1 = torch.index_select(self.memory_v1, 0, idx.view(-1)).view(batch, self.k + 1, dim)
        out_v2 = torch.exp(torch.bmm(weight_v1, v2.unsqueeze(2)).squeeze(2) / self.temperature)
        weight_v2 = torch.index_select(self.memory_v2, 0, idx.view(-1)).view(batch, self.k + 1, dim)
        out_v1 = torch.exp(torch.bmm(weight_v2, v1.unsqueeze(2)).squeeze(2) / self.temperature)
        if self.z_v1 is None:  # fixed on the first batch, as in ContrastMemory
            self.z_v1 = (out_v1.mean() * self.n_data).item()
            self.z_v2 = (out_v2.mean() * self.n_data).item()
        loss = self.nce(out_v1 / self.z_v1) + self.nce(out_v2 / self.z_v2)
        with torch.no_grad():
            for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
                rows = memory.index_select(0, index) * self.momentum + v.detach() * (1 - self.momentum)
                memory.index_copy_(0, index, F.normalize(rows, dim=1))
        return loss


DISTILLERS = {"rrd": RRDLoss, "crd": CRDLoss}


def lr_lambda(schedule: str, total_steps: int):
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    return lambda step: 1.0


class PlainRun:
    """Data, models, losses and optimiser of one run, built from side_by_side.py's spec."""

    def __init__(self, spec: dict):
        from transformers import AutoModelForImageClassification

        from rrd_hf.models import build_model  # the zoo (also registers it with the Auto classes)

        self.spec, p = spec, spec["protocol"]
        self.device = torch.device("cuda" if torch.cuda.is_available() and not spec["cpu"] else "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as RepDistiller's train_student.py
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        torch.manual_seed(spec["seed"])
        images, labels = load_split(spec["data"], "train", spec["num_images"])
        self.n_data = len(labels)
        train_set = CIFARDataset(images, labels, spec["mean"], spec["std"], True, p["padding"], p["flip_prob"])
        self.loader = torch.utils.data.DataLoader(
            train_set, batch_size=spec["batch_size"], shuffle=True, num_workers=spec["workers"], drop_last=True
        )
        self.test_loader = None
        if spec["eval"]:
            test_images, test_labels = load_split(spec["data"], "test", spec.get("num_eval_images"))
            test_set = CIFARDataset(test_images, test_labels, spec["mean"], spec["std"], train=False)
            self.test_loader = torch.utils.data.DataLoader(test_set, batch_size=256, num_workers=spec["workers"])
        self.weights = spec["weights"]
        self.student = build_model(spec["student"], num_labels=spec["num_labels"]).to(self.device)
        self.teacher = None
        if set(self.weights) - {"ce"}:
            self.teacher = AutoModelForImageClassification.from_pretrained(spec["teacher_path"]).to(self.device).eval()
            self.teacher.requires_grad_(False)
        self.need_features = any(name in self.weights for name in DISTILLERS)
        self.distillers = nn.ModuleDict()
        for name, cls in DISTILLERS.items():
            if name in self.weights:
                s_dim, t_dim = self.student.classifier.in_features, self.teacher.classifier.in_features
                self.distillers[name] = cls(s_dim, t_dim, self.n_data, p)
        self.distillers.to(self.device)
        params = [*self.student.parameters(), *self.distillers.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=p["learning_rate"], momentum=p["momentum"],
                                         weight_decay=p["weight_decay"])
        total = spec["epochs"] * len(self.loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(spec["lr_schedule"], total))
        self.meters = spec["plain_meters"] == "repdistiller"
        self.loss_sum, self.seen = 0.0, 0

    def loss(self, s_out, t_out, y, index):
        w, p = self.weights, self.spec["protocol"]
        loss = w["ce"] * F.cross_entropy(s_out.logits, y)
        if "kd" in w:
            loss = loss + w["kd"] * kd_loss(s_out.logits, t_out.logits, p["kd_temperature"])
        for name, module in self.distillers.items():
            loss = loss + w[name] * module(s_out.hidden_states[-1], t_out.hidden_states[-1], index)
        return loss

    def step(self, x, y, index, timer=None):
        """One training step; `timer(name)`, a context-manager factory, times its parts when given."""
        part = timer or (lambda name: nullcontext())
        with part("host to device"):
            x, y, index = x.to(self.device), y.to(self.device), index.to(self.device)
        with part("student forward"):
            s_out = self.student(pixel_values=x, output_hidden_states=self.need_features)
        t_out = None
        if self.teacher is not None:
            with part("teacher forward"), torch.no_grad():
                t_out = self.teacher(pixel_values=x, output_hidden_states=self.need_features)
        with part("loss / method"):
            loss = self.loss(s_out, t_out, y, index)
        with part("backward"):
            self.optimizer.zero_grad()
            loss.backward()
        with part("optimizer"):
            self.optimizer.step()
            self.scheduler.step()
        with part("other (meters)"):
            if self.meters:  # RepDistiller's AverageMeter(loss.item())
                self.loss_sum += loss.item() * x.shape[0]
                self.seen += x.shape[0]
        return loss

    def train_epoch(self):
        self.student.train()
        for x, y, index in self.loader:
            self.step(x, y, index)

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.student.eval()
        correct1 = correct5 = total = 0
        for x, y, _ in self.test_loader:
            x, y = x.to(self.device), y.to(self.device)
            top5 = self.student(pixel_values=x).logits.topk(5, dim=1).indices
            correct1 += (top5[:, 0] == y).sum().item()
            correct5 += (top5 == y[:, None]).any(dim=1).sum().item()
            total += y.numel()
        return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}
