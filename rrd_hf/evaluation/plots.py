"""The paper's two pictures of a student: its class-correlation difference with the teacher, and a t-SNE.

    rrd-hf plots runs/r8x4_rrd --teacher runs/teacher_r32x4 --dataset cifar100 --data-dir ../data/cifar100

1. Correlation difference (CRD's figure, `cifar/plot_corr.py` of the RRD code): on each test sample the logits are
   standardised over classes (minus their mean, divided by their std); the class-wise means of these vectors give
   C×C matrices M_T and M_S (row = true class, column = logit). `|M_S − M_T|` with its diagonal zeroed is drawn as a
   heatmap whose colour scale runs from 0 to the largest difference (the reference's fixed 0..3 left typical
   students' maps, with maxima well under 1, nearly white), class names on the ticks where they fit; its max and
   mean (over all C² entries, diagonal included as zeros, as the reference prints them) summarise how far the
   student's inter-class structure is from the teacher's.
2. t-SNE (`cifar/plot_tsne.py`, perplexity 40) of the student's penultimate embeddings, i.e. the classifier's input
   read with `rrd_hf.classifiers.activations.FeatureTap`, coloured by class. The reference embeds the logits; the penultimate
   features are what RRD distils. With more than 20 classes only the first 20 are drawn by default (as the
   reference's second figure does), so that colours stay distinguishable and the legend can name them.

Needs the `plots` extra (`pip install rrd_hf[plots]`: matplotlib, scikit-learn). Figures are drawn on
`matplotlib.figure.Figure` objects, without pyplot: headless, and the user's backend is left alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "standardize_logits",
    "class_correlation_matrix",
    "correlation_difference",
    "plot_correlation_difference",
    "correlation_difference_figure",
    "color_limits",
    "tick_classes",
    "tsne_embedding",
    "plot_tsne",
    "tsne_figure",
    "logits_and_features",
    "make_figures",
    "CORRELATION_FIGURE",
    "TSNE_FIGURE",
    "PLOTS_JSON",
]

logger = logging.getLogger(__name__)

CORRELATION_FIGURE = "correlation_difference.png"
TSNE_FIGURE = "tsne.png"
PLOTS_JSON = "plots.json"
#: Up to this many classes every tick (and t-SNE legend entry) is named; beyond, every k-th tick.
MAX_TICK_LABELS = 20


def _matplotlib():
    """matplotlib, with `matplotlib.figure` loaded: figures are drawn on `Figure` objects without pyplot, so no
    backend or global state of the user's session is touched and nothing needs closing."""
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as error:
        raise ImportError("figures need matplotlib and scikit-learn: pip install 'rrd_hf[plots]'") from error
    return matplotlib


# ------------------------------------------------------------------------------------------------- numbers


def standardize_logits(logits) -> np.ndarray:
    """Each row minus its mean, divided by its (population) std over classes; constant rows become 0."""
    logits = np.asarray(logits, dtype=np.float64)
    centred = logits - logits.mean(axis=1, keepdims=True)
    std = logits.std(axis=1, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)


def class_correlation_matrix(logits, labels, num_classes: int | None = None, standardize: bool = True) -> np.ndarray:
    """C×C matrix whose row c is the mean (standardised) logit vector of the samples of true class c.

    Classes without samples get a row of NaN (they are ignored by `correlation_difference`).
    """
    logits = standardize_logits(logits) if standardize else np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    num_classes = num_classes or logits.shape[1]
    counts = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.float64)
    sums = np.zeros((num_classes, logits.shape[1]))
    np.add.at(sums, labels, logits)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def correlation_difference(student_logits, teacher_logits, labels, num_classes: int | None = None) -> dict:
    """`|M_S − M_T|` with the diagonal zeroed, and its max and mean (see the module docstring)."""
    student_logits, teacher_logits = np.asarray(student_logits), np.asarray(teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {student_logits.shape} and teacher logits {teacher_logits.shape} differ: "
                         "both models must predict the same classes.")
    num_classes = num_classes or student_logits.shape[1]
    m_s = class_correlation_matrix(student_logits, labels, num_classes)
    m_t = class_correlation_matrix(teacher_logits, labels, num_classes)
    difference = np.abs(m_s - m_t)
    np.fill_diagonal(difference, 0.0)
    missing = int(np.isnan(difference).any(axis=1).sum())
    difference = np.nan_to_num(difference, nan=0.0)
    return {"matrix": difference, "max_difference": float(difference.max()), "mean_difference": float(difference.mean()),
            "classes_without_samples": missing}


def tsne_embedding(features, *, perplexity: float = 40.0, max_iter: int = 1000, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of `features` (scikit-learn); the perplexity is lowered when there are too few samples for it."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as error:
        raise ImportError("the t-SNE figure needs scikit-learn: pip install 'rrd_hf[plots]'") from error
    features = np.asarray(features, dtype=np.float32)
    limit = max((len(features) - 1) / 3.0, 1.0)
    if perplexity > limit:
        logger.warning("perplexity %.1f is too large for %d samples: using %.1f.", perplexity, len(features), limit)
        perplexity = limit
    tsne = TSNE(n_components=2, perplexity=perplexity, max_iter=max_iter, init="pca", random_state=seed)
    return tsne.fit_transform(features)


# ------------------------------------------------------------------------------------------------- figures


def tick_classes(num_classes: int, max_labels: int = MAX_TICK_LABELS) -> tuple[list[int], int]:
    """Which classes get a tick label: all up to `max_labels`, else every k-th (returned with k) so names stay legible."""
    if num_classes <= max_labels:
        return list(range(num_classes)), 1
    step = math.ceil(num_classes / max_labels)
    return list(range(0, num_classes, step)), step


def color_limits(values, *, signed: bool | None = None, vmax: float | None = None) -> tuple[float, float]:
    """The colour scale of a difference, from the data: symmetric around 0 for a signed one (`signed=None`: signed
    when a value is negative), from 0 for an absolute one; `vmax` fixes its top instead. Never empty, so an all-zero
    matrix still draws."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if signed is None:
        signed = bool((finite < 0).any())
    if vmax is not None and not vmax > 0:
        raise ValueError(f"vmax must be > 0, got {vmax}: it is the top of the colour scale (omit it to scale from the "
                         "data).")
    top = float(vmax) if vmax is not None else float(np.abs(finite).max()) if finite.size else 0.0
    top = top if top > 0 else 1.0
    return (-top, top) if signed else (0.0, top)


def correlation_difference_figure(difference: np.ndarray, *, class_names: Sequence[str] | None = None,
                                  title: str | None = None, vmax: float | None = None, signed: bool | None = None,
                                  label: str | None = None):
    """Heatmap of a C×C difference (a `matplotlib.figure.Figure`, no pyplot state).

    The colour scale comes from the data (`color_limits`; `vmax` overrides its top): Blues from 0 for an absolute
    difference, RdBu_r symmetric around 0 for a signed one. Ticks carry class names where they fit (`tick_classes`).
    `label` names the quantity on the colour bar (default: |M_S − M_T|, or M_S − M_T when signed).
    """
    matplotlib = _matplotlib()
    difference = np.asarray(difference, dtype=np.float64)
    num_classes = len(difference)
    low, high = color_limits(difference, signed=signed, vmax=vmax)
    size = 7.0 if num_classes > 20 else 5.5
    figure = matplotlib.figure.Figure(figsize=(size + 1.4, size))
    axis = figure.add_subplot()
    image = axis.imshow(difference, cmap="RdBu_r" if low < 0 else "Blues", vmin=low, vmax=high,
                        interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    quantity = "M_S − M_T" if low < 0 else "|M_S − M_T|"
    colorbar.set_label(label or f"{quantity} (class-mean standardised logit)")
    ticks, step = tick_classes(num_classes)
    names = list(class_names) if class_names is not None and len(class_names) == num_classes else None
    text = [names[i] if names else str(i) for i in ticks]
    axis.set_xticks(ticks, text, rotation=90, fontsize=7 if num_classes > 10 else 8)
    axis.set_yticks(ticks, text, fontsize=7 if num_classes > 10 else 8)
    every = f", one in {step} labelled" if step > 1 else ""
    axis.set_xlabel(f"logit of class ({num_classes} classes{every})")
    axis.set_ylabel("true class")
    axis.set_title(title or "Student vs teacher class-correlation difference", fontsize=9)
    figure.tight_layout()
    return figure


def plot_correlation_difference(difference: np.ndarray, path: str | os.PathLike, *, dpi: int = 150, **kwargs) -> str:
    """`correlation_difference_figure(difference, **kwargs)` saved as PNG; returns the path."""
    correlation_difference_figure(difference, **kwargs).savefig(path, dpi=dpi)
    return os.fspath(path)


def tsne_figure(embedding: np.ndarray, labels, *, class_names: Sequence[str] | None = None, title: str | None = None,
                max_legend: int = MAX_TICK_LABELS):
    """Scatter of a 2-D embedding coloured by class (a `matplotlib.figure.Figure`).

    Up to `max_legend` classes: tab20 colours and a legend with the class names. Beyond: a continuous colour map,
    no legend (it would not fit), and a note saying so.
    """
    matplotlib = _matplotlib()
    embedding = np.asarray(embedding)
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    named = len(classes) <= max_legend
    cmap = matplotlib.colormaps["tab20" if named else "nipy_spectral"]
    figure = matplotlib.figure.Figure(figsize=(8.5 if named else 7.5, 7))
    axis = figure.add_subplot()
    for rank, cls in enumerate(classes):
        chosen = labels == cls
        colour = cmap(rank % 20) if named else cmap(rank / max(len(classes) - 1, 1))
        name = class_names[cls] if class_names is not None and cls < len(class_names) else str(cls)
        axis.scatter(embedding[chosen, 0], embedding[chosen, 1], s=6, alpha=0.7, color=colour, label=name)
    if named:
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2.5, frameon=False)
    else:
        axis.text(0.01, 0.01, f"{len(classes)} classes: too many to name, colours follow the class index",
                  transform=axis.transAxes, fontsize=7, va="bottom")
    axis.set_xlabel("t-SNE 1")
    axis.set_ylabel("t-SNE 2")
    axis.set_title(title or "t-SNE of the student's penultimate embeddings", fontsize=9)
    figure.tight_layout()
    return figure


def plot_tsne(embedding: np.ndarray, labels, path: str | os.PathLike, *, dpi: int = 150, **kwargs) -> str:
    """`tsne_figure(embedding, labels, **kwargs)` saved as PNG; returns the path."""
    tsne_figure(embedding, labels, **kwargs).savefig(path, dpi=dpi)
    return os.fspath(path)


# ------------------------------------------------------------------------------------------------- models → arrays


@torch.no_grad()
def logits_and_features(model, dataset, *, batch_size: int = 256, device=None, feature_module: str | None = None,
                        batch_transform=None, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, penultimate features, labels) of `model` in eval mode over a dataset of `pixel_values`/`labels`."""
    from tqdm.auto import tqdm
    from transformers import default_data_collator

    from ..classifiers.activations import FeatureTap

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    tap = FeatureTap(model, feature_module)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=default_data_collator)
    logits, features, labels = [], [], []
    try:
        for batch in tqdm(loader, desc="forward", disable=not progress, unit="batch"):
            pixel_values = batch["pixel_values"].to(device)
            if batch_transform is not None:
                pixel_values = batch_transform(pixel_values)
            logits.append(model(pixel_values=pixel_values).logits.float().cpu())
            features.append(tap.pop().float().cpu())
            labels.append(batch["labels"])
    finally:
        tap.remove()
    return torch.cat(logits).numpy(), torch.cat(features).numpy(), torch.cat(labels).numpy()


def _name(model, path: str | None) -> str:
    """Zoo name, else the folder / Hub name, else the class name: short enough for a figure title."""
    config = getattr(model, "config", None)
    name = getattr(config, "zoo_name", None) or path or getattr(model, "name_or_path", None)
    return os.path.basename(os.path.normpath(name)) if name else type(model).__name__


def make_figures(
    student,
    teacher,
    dataset: str = "cifar100",
    *,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
    output_dir: str | os.PathLike = "figures",
    image_size: int = 32,
    max_samples: int | None = None,
    tsne_max_samples: int | None = 5000,
    tsne_classes: int | None = 20,
    perplexity: float = 40.0,
    max_iter: int = 1000,
    vmax: float | None = None,
    batch_size: int = 256,
    device=None,
    seed: int = 0,
    dpi: int = 150,
    progress: bool = True,
) -> dict:
    """Write `correlation_difference.png`, `tsne.png` and `plots.json` into `output_dir`; return the summary.

    `student`/`teacher`: checkpoint folders, Hub ids or modules. Images are normalised with the dataset's statistics
    for the student; the teacher gets them resized/renormalised to what its image processor says (if it has one).
    `max_samples` caps the evaluation samples (first N, deterministic), `tsne_max_samples` those of the t-SNE (seeded
    random subset), `tsne_classes` restricts the t-SNE to the first N classes when there are more (None: all).
    `vmax` fixes the top of the heatmap's colour scale (default: the largest difference).
    """
    from ..classifiers.inputs import ImageStats
    from ..classifiers.loading import load_image_classifier
    from ..classifiers.teacher import FrozenTeacher
    from ..data import prepare_dataset, resolve_dataset

    _matplotlib()  # fail early, before the forward passes, when matplotlib is missing
    student_path = os.fspath(student) if isinstance(student, (str, os.PathLike)) else None
    teacher_path = os.fspath(teacher) if isinstance(teacher, (str, os.PathLike)) else None
    if student_path is not None:
        student = load_image_classifier(student_path, role="student")

    resolved = resolve_dataset(dataset, data_dir=data_dir, eval_split=split)
    raw, stats, split_name = resolved.eval, resolved.require_stats(), resolved.eval_split
    if max_samples is not None:
        raw = raw.select(range(min(max_samples, len(raw))))
    class_names = resolved.class_names
    data = prepare_dataset(raw, split_name, train=False, image_size=image_size, stats=stats,
                           num_labels=student.config.num_labels)

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The teacher sees the student's batches as it does in training: resized and renormalised to what it expects.
    frozen = FrozenTeacher(teacher, student=student, device=device,
                           student_stats=ImageStats(mean=list(stats.mean), std=list(stats.std)))
    s_logits, s_features, labels = logits_and_features(student, data, batch_size=batch_size, device=device,
                                                       progress=progress)
    t_logits, _, _ = logits_and_features(frozen.model, data, batch_size=batch_size, device=device, progress=progress,
                                         batch_transform=None if frozen.adapter.is_identity else frozen.adapter)
    num_classes = student.config.num_labels
    diff = correlation_difference(s_logits, t_logits, labels, num_classes)

    os.makedirs(output_dir, exist_ok=True)
    s_name, t_name = _name(student, student_path), _name(frozen.model, teacher_path)
    pretty = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "tiny-imagenet": "Tiny ImageNet", "stl10": "STL-10"}
    data_name = f"{pretty.get(resolved.name, resolved.name)} {split_name}"
    corr_path = plot_correlation_difference(
        diff["matrix"], os.path.join(output_dir, CORRELATION_FIGURE), vmax=vmax, dpi=dpi, class_names=class_names,
        title=f"|M_S − M_T|, student {s_name} vs teacher {t_name}\n{data_name}, max {diff['max_difference']:.2f}, "
              f"mean {diff['mean_difference']:.3f}")

    chosen = np.arange(len(labels))
    restricted = tsne_classes is not None and num_classes > tsne_classes
    if restricted:
        chosen = chosen[labels < tsne_classes]
    if tsne_max_samples is not None and len(chosen) > tsne_max_samples:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, tsne_max_samples, replace=False))
    embedding = tsne_embedding(s_features[chosen], perplexity=perplexity, max_iter=max_iter, seed=seed)
    scope = f"first {tsne_classes} of {num_classes} classes" if restricted else f"{num_classes} classes"
    tsne_path = plot_tsne(embedding, labels[chosen], os.path.join(output_dir, TSNE_FIGURE), class_names=class_names, dpi=dpi,
                          title=f"t-SNE of the penultimate embeddings of {s_name}\n{data_name}, {scope}, {len(chosen)} samples")

    summary = {
        "student": student_path or s_name, "teacher": teacher_path or t_name, "dataset": data_name,
        "num_samples": int(len(labels)), "num_classes": int(num_classes),
        "max_difference": diff["max_difference"], "mean_difference": diff["mean_difference"],
        "color_scale": list(color_limits(diff["matrix"], vmax=vmax)),
        "classes_without_samples": diff["classes_without_samples"],
        "tsne_samples": int(len(chosen)), "tsne_classes": tsne_classes if restricted else int(num_classes),
        "perplexity": perplexity, "max_iter": max_iter,
        "files": {"correlation": os.path.basename(corr_path), "tsne": os.path.basename(tsne_path)},
    }
    with open(os.path.join(output_dir, PLOTS_JSON), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary
