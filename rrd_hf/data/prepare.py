"""``prepare_dataset``: load + normalise + transform, ready for a ``transformers.Trainer``."""

from __future__ import annotations

from .errors import DataError
from .checks import check_labels
from .loading import load_with_info
from .provenance import INDEX_COLUMN, describe_source
from .registry import StatsLike
from .transforms import build_transforms

__all__ = ["prepare_dataset"]


def prepare_dataset(
    source,
    split: str | None,
    *,
    train: bool | None = None,
    image_size: int | None = 32,
    with_index: bool = False,
    stats: StatsLike | None = None,
    num_labels: int | None = None,
    seed: int | None = None,
    padding: int = 4,
    flip_prob: float = 0.5,
    name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    dataset_name: str | None = None,
    **load_kwargs,
):
    """Load ``source`` with :func:`load_image_dataset` and attach the benchmark transform.

    Items then come out as ``{"pixel_values": float32 (3, S, S), "labels": int}`` (plus ``"index"`` when
    ``with_index``), which ``transformers.default_data_collator`` stacks into a batch.

    **Give the Trainer ``TrainingArguments(remove_unused_columns=False)``**: otherwise it drops the ``image``
    column (not a ``forward`` argument) *before* the transform runs and fails with ``KeyError: 'image'`` or
    "No columns in the dataset match the model's forward method signature". With ``with_index=True`` the
    batch also holds ``index``, which the model's ``forward`` does not take: the distillation trainer must pop it
    in ``compute_loss``.

    Args:
        source, split, name, image_column, label_column, dataset_name, **load_kwargs: as in
            :func:`load_image_dataset`. ``split=None`` returns a ``DatasetDict`` with every split prepared.
        train: training augmentation (random crop + flip) or evaluation (deterministic). Default: ``True`` for
            the dataset's training split (``"train"`` for unknown datasets), ``False`` otherwise.
        image_size: output side length (transfer datasets are resized: STL-10 96→32, Tiny ImageNet 64→32).
        stats: normalisation stats (see :func:`build_transforms`); default: those of the known dataset the
            source holds. Required for sources that are not a known dataset.
        num_labels: if given, :func:`check_labels` first (raises on labels outside ``[0, num_labels)``).
        seed, padding, flip_prob: see :class:`ImageClassificationTransform`. With a ``seed`` each training image's
            crop and flip are a pure function of ``(seed, epoch, index)``; tell the dataset the epoch with
            :func:`rrd_hf.data.set_epoch` before each epoch's DataLoader iterator is created (``RRDTrainer`` does).
            ``seed=None``: torch's global RNG (not reproducible across worker counts or resumes).
    """
    import datasets

    loaded, info = load_with_info(
        source,
        split,
        name=name,
        image_column=image_column,
        label_column=label_column,
        dataset_name=dataset_name,
        add_index=True,
        **load_kwargs,
    )
    if stats is None:
        if info is None:
            raise DataError(
                f"no normalisation stats for {describe_source(next(iter(loaded.values())) if isinstance(loaded, dict) else loaded)}: "
                "it is not a known dataset. Pass stats=((r, g, b), (r, g, b)) (compute them with "
                "rrd_hf.data.compute_mean_std(dataset)), stats='<known name>', or dataset_name='<known name>' if it "
                "holds a known dataset."
            )
        stats = info
    train_split = info.train_split if info is not None else "train"
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {split: loaded}
    out = {}
    for split_name, dataset in splits.items():
        if num_labels is not None:
            check_labels(dataset, num_labels)
        is_train = train if train is not None else split_name == train_split
        transform = build_transforms(
            stats,
            is_train,
            image_size,
            with_index,
            padding=padding,
            flip_prob=flip_prob,
            seed=seed,
            source=describe_source(dataset),
        )
        # The transform decodes the images itself, so a corrupt one is reported with its index and source.
        dataset = dataset.cast_column("image", datasets.Image(mode="RGB", decode=False))
        assert INDEX_COLUMN in dataset.column_names
        out[split_name] = dataset.with_transform(transform)
    return out[split] if split is not None else datasets.DatasetDict(out)
