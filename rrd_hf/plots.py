"""The paper's two pictures of a student: its class-correlation difference with the teacher, and a t-SNE.

    rrd-hf plots runs/r8x4_rrd --teacher runs/teacher_r32x4 --dataset cifar100 --data-dir ../data/cifar100

1. Correlation difference (CRD's figure, `cifar/plot_corr.py` of the RRD code): on each test sample the logits are
   standardised over classes (minus their mean, divided by their std); the class-wise means of these vectors give
   C×C matrices M_T and M_S (row = true class, column = logit). `|M_S − M_T|` with its diagonal zeroed is drawn as a
   heatmap (Blues, 0 to 3); its max and mean (over all C² entries, diagonal included as zeros, as the reference
   prints them) summarise how far the student's inter-class structure is from the teacher's.
2. t-SNE (`cifar/plot_tsne.py`, perplexity 40) of the student's penultimate embeddings, i.e. the classifier's input
   read with `rrd_hf.features.FeatureTap`, coloured by class. The reference embeds the logits; the penultimate
   features are what RRD distils. With more than 20 classes only the first 20 are drawn by default (as the
   reference's second figure does), so that colours stay distinguishable.

Needs the `plots` extra (`pip install rrd_hf[plots]`: matplotlib, scikit-learn); matplotlib runs headless (Agg).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np
import torch

__all__ = [
    "standardize_logits",
    "class_correlation_matrix",
    "correlation_difference",
    "plot_correlation_difference",
    "tsne_embedding",
    "plot_tsne",
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


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("figures need matplotlib and scikit-learn: pip install 'rrd_hf[plots]'") from error
    matplotlib.use("Agg", force=True)  # headless: no display on training machines
    import matplotlib.pyplot as plt

    return plt


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


def plot_correlation_difference(difference: np.ndarray, path: str | os.PathLike, *, title: str | None = None,
                                vmax: float = 3.0, dpi: int = 150) -> str:
    """Heatmap of `|M_S − M_T|` (Blues, 0..vmax, colour bar), saved as PNG."""
    plt = _pyplot()
    size = 7.0 if len(difference) > 20 else 5.0
    figure, axis = plt.subplots(figsize=(size + 1.2, size))
    image = axis.imshow(difference, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    colorbar.set_label("|M_S − M_T| (standardised logits)")
    axis.set_xlabel("logit of class")
    axis.set_ylabel("true class")
    axis.set_title(title or "Student vs teacher class-correlation difference")
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return os.fspath(path)


def plot_tsne(embedding: np.ndarray, labels, path: str | os.PathLike, *, class_names=None, title: str | None = None,
              dpi: int = 150) -> str:
    """Scatter of a 2-D embedding coloured by class (tab20 up to 20 classes, a continuous map beyond), saved as PNG."""
    plt = _pyplot()
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab20" if len(classes) <= 20 else "nipy_spectral")
    figure, axis = plt.subplots(figsize=(8.5 if len(classes) <= 20 else 7.5, 7))
    for rank, cls in enumerate(classes):
        chosen = labels == cls
        colour = cmap(rank % 20) if len(classes) <= 20 else cmap(rank / max(len(classes) - 1, 1))
        name = class_names[cls] if class_names is not None and cls < len(class_names) else str(cls)
        axis.scatter(embedding[chosen, 0], embedding[chosen, 1], s=6, alpha=0.7, color=colour, label=name)
    if len(classes) <= 20:
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2.5, frameon=False)
    axis.set_xlabel("t-SNE 1")
    axis.set_ylabel("t-SNE 2")
    axis.set_title(title or "t-SNE of the student's penultimate embeddings")
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return os.fspath(path)


# ------------------------------------------------------------------------------------------------- models → arrays


@torch.no_grad()
def logits_and_features(model, dataset, *, batch_size: int = 256, device=None, feature_module: str | None = None,
                        batch_transform=None, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, penultimate features, labels) of `model` in eval mode over a dataset of `pixel_values`/`labels`."""
    from tqdm.auto import tqdm
    from transformers import default_data_collator

    from .features import FeatureTap

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
    vmax: float = 3.0,
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
    """
    from .data import prepare_dataset, resolve_dataset
    from .pretrained import load_image_classifier
    from .teacher import ImageStats, TeacherInputAdapter, check_same_labels, image_stats_from_pretrained

    _pyplot()  # fail early, before the forward passes, when matplotlib is missing
    teacher_path = os.fspath(teacher) if isinstance(teacher, (str, os.PathLike)) else None
    student_path = os.fspath(student) if isinstance(student, (str, os.PathLike)) else None
    if student_path is not None:
        student = load_image_classifier(student_path, role="student")
    if teacher_path is not None:
        teacher = load_image_classifier(teacher_path, role="teacher")
    check_same_labels(student, teacher)

    resolved = resolve_dataset(dataset, data_dir=data_dir, eval_split=split)
    raw, stats, split_name = resolved.eval, resolved.require_stats(), resolved.eval_split
    if max_samples is not None:
        raw = raw.select(range(min(max_samples, len(raw))))
    class_names = resolved.class_names
    data = prepare_dataset(raw, split_name, train=False, image_size=image_size, stats=stats,
                           num_labels=student.config.num_labels)

    teacher_stats = image_stats_from_pretrained(teacher_path) or ImageStats()
    adapter = TeacherInputAdapter(size=teacher_stats.size, student=ImageStats(mean=list(stats.mean), std=list(stats.std)),
                                  teacher=teacher_stats)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    s_logits, s_features, labels = logits_and_features(student, data, batch_size=batch_size, device=device,
                                                       progress=progress)
    t_logits, _, _ = logits_and_features(teacher, data, batch_size=batch_size, device=device, progress=progress,
                                         batch_transform=None if adapter.is_identity else adapter.to(device))
    num_classes = student.config.num_labels
    diff = correlation_difference(s_logits, t_logits, labels, num_classes)

    os.makedirs(output_dir, exist_ok=True)
    s_name, t_name = _name(student, student_path), _name(teacher, teacher_path)
    pretty = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "tiny-imagenet": "Tiny ImageNet", "stl10": "STL-10"}
    data_name = f"{pretty.get(resolved.name, resolved.name)} {split_name}"
    corr_path = plot_correlation_difference(
        diff["matrix"], os.path.join(output_dir, CORRELATION_FIGURE), vmax=vmax, dpi=dpi,
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
        "classes_without_samples": diff["classes_without_samples"],
        "tsne_samples": int(len(chosen)), "tsne_classes": tsne_classes if restricted else int(num_classes),
        "perplexity": perplexity, "max_iter": max_iter,
        "files": {"correlation": os.path.basename(corr_path), "tsne": os.path.basename(tsne_path)},
    }
    with open(os.path.join(output_dir, PLOTS_JSON), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def _plots(argv: list[str]) -> None:
    """`rrd-hf plots CHECKPOINT --teacher T --dataset cifar100 [--output-dir DIR]`."""
    parser = argparse.ArgumentParser(
        prog="rrd-hf plots",
        description="The paper's figures: student vs teacher class-correlation difference of the logits and a t-SNE "
        "of the student's penultimate embeddings (PNG + plots.json).",
    )
    parser.add_argument("checkpoint", help="the student: folder written by save_pretrained, or a Hub id")
    parser.add_argument("--teacher", required=True, help="the teacher: folder or Hub id")
    parser.add_argument("--dataset", default="cifar100", help="known dataset name (default cifar100)")
    parser.add_argument("--data-dir", default=None, help="local copy of the dataset (default: its Hub id)")
    parser.add_argument("--split", default=None, help="default: the dataset's evaluation split")
    parser.add_argument("--output-dir", default=None,
                        help="default: CHECKPOINT/figures for a local checkpoint (where `rrd-hf push` finds them)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-samples", type=int, default=None, help="first N evaluation samples")
    parser.add_argument("--tsne-max-samples", type=int, default=5000, help="random subset for the t-SNE")
    parser.add_argument("--tsne-classes", type=int, default=20, help="t-SNE of the first N classes only (0: all)")
    parser.add_argument("--perplexity", type=float, default=40.0)
    parser.add_argument("--max-iter", type=int, default=1000, help="t-SNE iterations (scikit-learn max_iter)")
    parser.add_argument("--vmax", type=float, default=3.0, help="top of the heatmap's colour scale")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    output_dir = args.output_dir or (os.path.join(args.checkpoint, "figures") if os.path.isdir(args.checkpoint) else "figures")
    summary = make_figures(
        args.checkpoint, args.teacher, args.dataset, data_dir=args.data_dir, split=args.split, output_dir=output_dir,
        image_size=args.image_size, max_samples=args.max_samples, tsne_max_samples=args.tsne_max_samples,
        tsne_classes=args.tsne_classes or None, perplexity=args.perplexity, max_iter=args.max_iter, vmax=args.vmax,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
    )
    print(json.dumps({"output_dir": output_dir, **summary}, indent=2))
