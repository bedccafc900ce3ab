"""One answer to "which data is this?": load a source, recognise it, choose its splits, read its classes and stats.

Training, evaluation, the transfer probe and the figures all start from a dataset name or a path, and all go through
:func:`resolve_dataset` (resolve → infer → validate), so they agree on the splits (``valid``, not a missing
``test``, for a Tiny ImageNet folder), the classes and the statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import DataError, UnknownSplitError
from .loading import TRAIN_SPLIT_NAMES, infer_dataset_info, load_image_dataset
from .provenance import describe_source
from .registry import DatasetInfo, NormalizationStats, StatsLike, find_dataset_info, resolve_stats

__all__ = ["ResolvedDataset", "resolve_dataset", "EVAL_SPLIT_NAMES", "TRAIN_SPLIT_NAMES"]

#: Split names tried, in order, when the dataset is not a known one (or its known split is absent); the training
#: names live in `rrd_hf.data.loading`, which numbers string labels by the training split.
EVAL_SPLIT_NAMES = ("test", "validation", "valid", "val", "eval", "dev")


@dataclass
class ResolvedDataset:
    """A loaded dataset and what is known about it.

    ``splits`` maps every split name to its normalised ``image``/``label``/``index`` ``datasets.Dataset``;
    ``train_split``/``eval_split`` are the chosen names (``None`` when the source has no such split);
    ``stats`` is ``None`` for a source that is neither a known dataset nor given statistics.
    """

    source: object
    description: str
    info: DatasetInfo | None
    splits: dict
    train_split: str | None
    eval_split: str | None
    class_names: list[str] | None
    num_labels: int
    stats: NormalizationStats | None

    @property
    def name(self) -> str:
        """The known dataset's short name, else the source's description."""
        return self.info.name if self.info is not None else self.description

    @property
    def train(self):
        """The training split; :class:`UnknownSplitError` naming the available splits when there is none."""
        return self._split(self.train_split, "training", TRAIN_SPLIT_NAMES,
                           "--train_split NAME (train) or train_split=")

    @property
    def eval(self):
        """The evaluation split; :class:`UnknownSplitError` naming the available splits when there is none."""
        return self._split(self.eval_split, "evaluation", EVAL_SPLIT_NAMES, "--split NAME (evaluate) or split=")

    def _split(self, chosen, role, tried, how):
        if chosen is None:
            raise UnknownSplitError(
                f"{self.description} has no {role} split (looked for {list(tried)}); available splits: "
                f"{sorted(self.splits)}. Name one with {how}."
            )
        split = self.splits[chosen]
        if len(split) == 0:  # nothing to train on or to measure: every later step would fail or report nonsense
            others = sorted(name for name, data in self.splits.items() if len(data) and name != chosen)
            raise DataError(
                f"the {role} split '{chosen}' of {self.description} holds no images. "
                + (f"Name another with {how} (non-empty: {others})." if others else "No split of it holds any.")
            )
        return split

    def require_stats(self) -> NormalizationStats:
        """The normalisation statistics, or a :class:`DataError` saying how to provide them."""
        if self.stats is not None:
            return self.stats
        raise DataError(
            f"{self.description} is not a known dataset, so the mean/std to normalise it with are unknown. Name the "
            "known dataset it holds (command line: --dataset cifar10 --data_dir PATH; Python: "
            "resolve_dataset('cifar10', data_dir=PATH)), or give the statistics (Python: "
            "stats=rrd_hf.data.compute_mean_std(dataset) or stats=((r, g, b), (r, g, b)))."
        )


def _class_names(splits: dict, prefer: str | None) -> list[str] | None:
    import datasets

    order = ([prefer] if prefer in splits else []) + [name for name in splits if name != prefer]
    for name in order:
        feature = splits[name].features.get("label")
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
    return None


def _max_label(splits: dict) -> int:
    import numpy as np

    highest = -1
    for split in splits.values():
        if len(split):
            highest = max(highest, int(np.max(split.with_format("numpy", columns=["label"])[:]["label"])))
    return highest


def _choose(requested: str | None, known: str | None, candidates: tuple[str, ...], available, description: str):
    if requested is not None:
        if requested not in available:
            raise UnknownSplitError(
                f"split {requested!r} not found in {description}; available splits: {sorted(available)}. Pass one "
                "of those."
            )
        return requested
    for name in ((known,) if known else ()) + candidates:
        if name in available:
            return name
    return None


def resolve_dataset(
    source,
    *,
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    train_split: str | None = None,
    eval_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    stats: StatsLike | None = None,
    **load_kwargs,
) -> ResolvedDataset:
    """Load every split of ``source`` and resolve what the rest of rrd_hf needs to know about it.

    Args:
        source: a known name (``"cifar100"``), a Hub id, a local path, or a loaded ``Dataset``/``DatasetDict``
            (anything :func:`load_image_dataset` takes).
        data_dir: a local copy of ``source`` (Hub layout, parquet, ``save_to_disk`` or imagefolder); with a known
            ``source`` name the copy is read as that dataset (its columns, classes and statistics).
        name: the dataset config name (``load_dataset(..., name=)``).
        train_split, eval_split: the split names; by default the known dataset's (``valid`` for Tiny ImageNet),
            else the first present of :data:`TRAIN_SPLIT_NAMES` / :data:`EVAL_SPLIT_NAMES`. A name given
            explicitly must exist.
        image_column, label_column: override the column detection.
        stats: the normalisation statistics (default: the known dataset's).
        **load_kwargs: passed to ``datasets.load_dataset``.

    Raises:
        UnknownSplitError for an explicit split that is absent, and every error of :func:`load_image_dataset`
        (an offline Hub source raises :class:`DatasetUnavailableError` saying how to pass a local copy).
    """
    import datasets

    known = find_dataset_info(source) if isinstance(source, str) else None
    location = os.fspath(data_dir) if data_dir is not None else source
    loaded = load_image_dataset(
        location, None, name=name, image_column=image_column, label_column=label_column,
        dataset_name=known.name if known is not None else None, label_names_split=train_split, **load_kwargs,
    )
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    info = known or infer_dataset_info(location if not isinstance(location, (datasets.Dataset, datasets.DatasetDict))
                                       else None, dataset=loaded)
    description = describe_source(next(iter(splits.values()))) if splits else repr(location)
    description = description.split(" (split ")[0]
    chosen_train = _choose(train_split, info.train_split if info else None, TRAIN_SPLIT_NAMES, splits, description)
    chosen_eval = _choose(eval_split, info.eval_split if info else None, EVAL_SPLIT_NAMES, splits, description)
    class_names = _class_names(splits, chosen_train)
    if class_names is None and info is not None and info.class_names is not None:
        class_names = list(info.class_names)
    if class_names is not None:
        num_labels = len(class_names)
    elif info is not None:
        num_labels = info.num_classes
    else:
        num_labels = _max_label(splits) + 1
    if stats is not None:
        resolved_stats = resolve_stats(stats)
    else:
        resolved_stats = info.stats if info is not None else None
    return ResolvedDataset(
        source=source, description=description, info=info, splits=splits, train_split=chosen_train,
        eval_split=chosen_eval, class_names=class_names, num_labels=num_labels, stats=resolved_stats,
    )
