"""One loader for every image-classification source, returning one normalised view.

:func:`load_image_dataset` accepts a known short name (``"cifar100"``), a Hub id (``"uoft-cs/cifar100"``),
a local folder laid out like the Hub repo (``data/cifar10``), parquet or arrow file(s), a
``save_to_disk`` folder, an ``imagefolder`` directory, or an already loaded ``Dataset``/``DatasetDict``,
and always returns the same columns:

* ``image``: ``Image(mode="RGB")`` (grayscale, palette and RGBA images are converted to RGB at decode time);
* ``label``: the source's ``ClassLabel`` when it has one (class names kept), else integer ids. String labels are
  class-encoded with **one** id map for every split: the sorted names of the training split (or, without one, of all
  splits). Numbering each split on its own would shift every id of a split that lacks a class, and an accuracy
  measured on it would compare unrelated classes; a split holding a name the training split lacks is refused;
* ``index``: ``int64``, the row number in the split as loaded. It travels with the row through
  ``shuffle``/``select``/``filter``, so it is the stable sample id for a momentum memory or CRD's
  contrastive memory bank.

Image and label columns are found from the known Hub schemas (``img``/``fine_label`` for CIFAR-100,
``img``/``label`` for CIFAR-10, ``image``/``label`` elsewhere), then by feature type (the ``Image`` column,
the ``ClassLabel`` column); ``image_column=``/``label_column=`` override the detection.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import (
    DataError,
    DatasetUnavailableError,
    DataSourceNotFoundError,
    MissingColumnError,
    UnknownSplitError,
)
from .checks import verify_images
from .fashion_mnist import fashion_mnist_available, load_fashion_mnist
from .provenance import (IMAGE_COLUMN, INDEX_COLUMN, LABEL_COLUMN, columns_description, describe_source, read_tag,
                         set_tag, split_facts)
from .registry import KNOWN_DATASETS, DatasetInfo, find_dataset_info, get_dataset_info

__all__ = [
    "load_image_dataset",
    "load_with_info",
    "infer_dataset_info",
    "describe_source",
    "columns_description",
    "IMAGE_COLUMN",
    "LABEL_COLUMN",
    "INDEX_COLUMN",
]

_SPLIT_WORDS = {"train", "test", "valid", "validation", "val", "eval", "dev", "unlabeled", "unlabelled"}
#: Split names tried, in order, for the training split when the dataset is not a known one.
TRAIN_SPLIT_NAMES = ("train", "training")
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "y")
_IMAGE_NAMES = ("image", "img")


# ------------------------------------------------------------------------------------ known-dataset guess
def _wordnet_ids(names) -> bool:
    return bool(names) and all(re.fullmatch(r"n\d{8}", str(n)) for n in names)


def infer_dataset_info(source=None, dataset=None, dataset_name=None) -> DatasetInfo | None:
    """Which known dataset ``source``/``dataset`` holds, if any (for default columns and normalisation stats).

    In order: ``dataset_name`` (must be known), the source string as a short name or Hub id, the last two
    folder names of a local path (``.../cifar10/plain_text/train-*.parquet`` → CIFAR-10), the tag that
    :func:`load_image_dataset` leaves on its output, and finally the ``ClassLabel`` names (exactly the
    CIFAR-10/CIFAR-100/STL-10/Fashion-MNIST names, or 200 WordNet ids → Tiny ImageNet).
    """
    if dataset_name is not None:
        return get_dataset_info(dataset_name)
    if isinstance(source, DatasetInfo):
        return source
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        info = find_dataset_info(text)
        if info is not None:
            return info
        path = Path(text)
        parts = ([path.name] if path.suffix == "" else []) + [p.name for p in list(path.parents)[:2]]
        for part in parts:
            if part and find_dataset_info(part) is not None:
                return find_dataset_info(part)
    if dataset is not None:
        first = next(iter(dataset.values())) if hasattr(dataset, "values") else dataset
        _, known = read_tag(first)
        if known in KNOWN_DATASETS:
            return KNOWN_DATASETS[known]
        import datasets

        for column, feature in first.features.items():
            if isinstance(feature, datasets.ClassLabel):
                names = tuple(feature.names)
                for info in KNOWN_DATASETS.values():
                    if info.class_names is not None and names == info.class_names:
                        return info
                if len(names) == 200 and _wordnet_ids(names):
                    return KNOWN_DATASETS["tiny-imagenet"]
    return None


# --------------------------------------------------------------------------------------- raw loading
def _group_files_by_split(files: Sequence[Path]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for f in files:
        match = re.match(r"([A-Za-z]+)(?:[-_.]|$)", f.stem)
        word = match.group(1).lower() if match else ""
        if word not in _SPLIT_WORDS:  # files not named by split: everything is one "train" split
            return {"train": [str(p) for p in files]}
        groups.setdefault(word, []).append(str(f))
    return groups


def _builder_for(files: Iterable[Path]) -> str:
    suffixes = {f.suffix.lower() for f in files}
    builders = {_FILE_BUILDERS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise DataSourceNotFoundError(
            f"cannot load files with suffixes {sorted(suffixes)}: give .parquet or .arrow files (all of one kind), a "
            "folder, a Hub id or a known dataset name."
        )
    return builders.pop()


def _load_files(data_files, load_kwargs):
    import datasets

    if isinstance(data_files, dict):
        all_files = [Path(f) for fs in data_files.values() for f in ([fs] if isinstance(fs, (str, os.PathLike)) else fs)]
        groups = {split: [str(f) for f in ([fs] if isinstance(fs, (str, os.PathLike)) else fs)] for split, fs in data_files.items()}
    else:
        all_files = [Path(f) for f in data_files]
        groups = _group_files_by_split(all_files)
    missing = [str(f) for f in all_files if not f.is_file()]
    if missing:
        raise DataSourceNotFoundError(f"no such file(s): {missing}.")
    return datasets.load_dataset(_builder_for(all_files), data_files=groups, **load_kwargs)


def _looks_like_path(text: str) -> bool:
    if text.startswith((".", "/", "~", "\\")) or os.path.isabs(text):
        return True
    if Path(text).suffix.lower() in _FILE_BUILDERS:
        return True
    return text.count("/") > 1 or "\\" in text


def _hub_offline() -> bool:
    try:
        import datasets.config

        return bool(datasets.config.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - defensive
        return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def _load_hub(hub_id: str, name, load_kwargs, shown: str):
    import datasets

    try:
        return datasets.load_dataset(hub_id, name=name, **load_kwargs)
    except DataError:
        raise
    except OSError as exc:  # ConnectionError, FileNotFoundError (DatasetNotFoundError), HfHubHTTPError
        if _hub_offline():
            why = (
                "offline mode is on (HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1) and the dataset is not in the local "
                f"cache ({datasets.config.HF_DATASETS_CACHE})"
            )
        else:
            why = "the Hub could not be reached, or the repo does not exist or is gated (log in with `hf auth login`)"
        folder = hub_id.split("/")[-1]
        raise DatasetUnavailableError(
            f"could not load {shown} from the Hugging Face Hub: {why} [{type(exc).__name__}: {exc}]. Pass a local path "
            f"instead: on the command line `--data-dir /path/to/{folder}` (with `--dataset {folder}`) or `--dataset "
            f"/path/to/{folder}`; in Python resolve_dataset('{folder}', data_dir='/path/to/{folder}') or "
            f"load_image_dataset('/path/to/{folder}', split='train'). A local copy is a folder laid out like the Hub "
            "repo, parquet file(s), a save_to_disk folder or an imagefolder directory; make one while online with "
            f"`hf download {hub_id} --repo-type dataset --local-dir /path/to/{folder}`."
        ) from exc


def _check_utf8_path(text: str) -> None:
    """`datasets` keeps paths as UTF-8 text (cache names, JSON state files), so a path holding other bytes fails
    deep inside it with an encoding error that names neither the path nor a way out: say both here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(text)
        raise DataSourceNotFoundError(
            f"the dataset path {raw!r} is not valid UTF-8, and the datasets library can only read UTF-8 paths: rename "
            "it, or link it under a UTF-8 name (ln -s OLD NEW) and pass that."
        ) from None


def _empty_saved_splits(path: Path) -> list[str]:
    """The splits of a ``save_to_disk`` folder saved without a data file (no rows)."""
    import json

    folders = [path]
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        folders = [path / name for name in splits]
    empty = []
    for folder in folders:
        try:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not state.get("_data_files"):
            empty.append(folder.name if folder != path else "(the only split)")
    return empty


def _empty_split_error(path: Path, splits: list[str]) -> DataError:
    """An empty split stops `datasets` from loading the whole folder, with a message that names neither the split nor
    the folder; an empty evaluation split would otherwise end in an accuracy of nothing."""
    named = ", ".join(f"'{name}'" for name in splits)
    what = f"the split {named} of {path} holds" if len(splits) == 1 else \
        f"the splits {named} of {path} hold" if splits else f"a split of {path} holds"
    return DataError(
        f"{what} no images: add images, or remove the empty split from the folder (training and evaluation need "
        "images in the splits they use)."
    )


def _load_raw(source, name, load_kwargs, split=None):
    """Load ``source`` as a ``Dataset`` or ``DatasetDict``; returns ``(loaded, description)``."""
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        first = next(iter(source.values())) if isinstance(source, datasets.DatasetDict) else source
        described, _ = read_tag(first)
        return source, described or "an in-memory dataset"
    if isinstance(source, dict) or (isinstance(source, (list, tuple)) and source):
        shown = f"files {source!r}" if isinstance(source, dict) else f"files {[os.fspath(s) for s in source]}"
        return _load_files(source, load_kwargs), shown
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(
            f"cannot load a dataset from {type(source).__name__}: pass a known name ({', '.join(KNOWN_DATASETS)}), a "
            "Hub id, a local path, a list of parquet/arrow files or a datasets.Dataset/DatasetDict."
        )
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        _check_utf8_path(text)
        if path.is_file():
            return _load_files([path], load_kwargs), str(path)
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                return datasets.load_from_disk(str(path)), str(path)
            except IndexError:  # `datasets` cannot read back a split saved with no rows
                raise _empty_split_error(path, _empty_saved_splits(path)) from None
        try:
            return datasets.load_dataset(str(path), name=name, **load_kwargs), str(path)
        except (datasets.exceptions.DataFilesNotFoundError, FileNotFoundError) as exc:
            raise DataSourceNotFoundError(
                f"no readable data in folder {path} ({type(exc).__name__}: {exc}). Expected parquet/arrow files laid "
                "out like the Hub repo (e.g. <split>-00000-of-00001.parquet, optionally under a config folder), a "
                "save_to_disk folder (dataset_dict.json or state.json), or an imagefolder layout "
                "(<split>/<class>/<image>.png)."
            ) from exc
        except ValueError as exc:  # `datasets` refuses a whole folder for one split without rows
            empty = re.fullmatch(r'Instruction "(.+)" corresponds to no data!', str(exc))
            if empty is None:
                raise
            raise _empty_split_error(path, [empty.group(1)]) from None
    info = find_dataset_info(text)
    if info is not None:
        if info.name == "fashion_mnist" and name is None and not load_kwargs and fashion_mnist_available():
            return load_fashion_mnist(split=split), f"Fashion-MNIST from the Debian package ({text!r})"
        return _load_hub(info.hub_id, name, load_kwargs, f"{text!r} (Hub id {info.hub_id!r})"), f"{info.hub_id} (Hub)"
    if _looks_like_path(text):
        raise DataSourceNotFoundError(f"no such file or directory: {text!r} (resolved to {path.resolve()}).")
    if "/" not in text:
        get_dataset_info(text)  # raises UnknownDatasetError listing the known names
    shown = f"{text!r} (not a local path either: {path.resolve()} does not exist)"
    return _load_hub(text, name, load_kwargs, shown), f"{text} (Hub)"


# ------------------------------------------------------------------------------------------ normalising
def _pick_image_column(dataset, requested, info, source) -> str:
    import datasets

    features = dataset.features
    if requested is not None:
        if requested not in features:
            raise MissingColumnError(
                f"image column {requested!r} not found in {source}; columns present: {columns_description(dataset)}. "
                "Pass image_column= one of those."
            )
        if not isinstance(features[requested], datasets.Image):
            raise MissingColumnError(
                f"column {requested!r} of {source} is {features[requested]!r}, not an Image feature; columns present: "
                f"{columns_description(dataset)}. Cast it first (dataset.cast_column({requested!r}, datasets.Image())) "
                "or pass image_column= the Image column."
            )
        return requested
    image_columns = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    if info is not None and info.image_column in image_columns:
        return info.image_column
    for candidate in _IMAGE_NAMES:
        if candidate in image_columns:
            return candidate
    if len(image_columns) == 1:
        return image_columns[0]
    if not image_columns:
        raise MissingColumnError(
            f"no image column in {source}: no column has the datasets.Image feature; columns present: "
            f"{columns_description(dataset)}. Pass image_column= (an Image column) or cast one with "
            "dataset.cast_column(name, datasets.Image())."
        )
    raise MissingColumnError(
        f"several Image columns in {source}: {image_columns}; pass image_column= to choose one."
    )


def _pick_label_column(dataset, requested, info, source, image_column) -> str:
    import datasets

    features = dataset.features
    if requested is not None:
        if requested not in features:
            raise MissingColumnError(
                f"label column {requested!r} not found in {source}; columns present: {columns_description(dataset)}. "
                "Pass label_column= one of those."
            )
        return requested
    if info is not None and info.label_column in features:
        return info.label_column
    for candidate in _LABEL_NAMES:
        if candidate in features and candidate != image_column:
            return candidate
    class_labels = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(class_labels) == 1:
        return class_labels[0]
    raise MissingColumnError(
        f"no label column found in {source} (looked for {list(_LABEL_NAMES)} or a single ClassLabel column); "
        f"columns present: {columns_description(dataset)}. Pass label_column= the column holding the class ids."
    )


def _is_string_feature(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _string_label_names(loaded, names_split, image_column, label_column, info, shown):
    """``(names, split)``: the class names that number string labels in every split, and the split they come from
    (``None`` for all splits together); ``(None, None)`` when the labels are not strings or there is one split only."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict) or len(loaded) < 2:
        return None, None
    columns = {}
    for split_name, ds in loaded.items():
        try:
            image_col = _pick_image_column(ds, image_column, info, shown)
            columns[split_name] = _pick_label_column(ds, label_column, info, shown, image_col)
        except DataError:  # said when (and if) that split is normalised
            continue
    string_splits = [s for s, col in columns.items() if _is_string_feature(loaded[s].features[col])]
    if not string_splits:
        return None, None
    order = ([names_split] if names_split else []) + ([info.train_split] if info is not None else []) + list(
        TRAIN_SPLIT_NAMES)
    reference = next((s for s in order if s in string_splits), None)
    sources = [reference] if reference is not None else string_splits
    names = set()
    for split_name in sources:
        names.update(v for v in loaded[split_name].unique(columns[split_name]) if v is not None)
    return sorted(names), reference


def _encode_string_labels(dataset, names, reference, source):
    """Number the string labels of ``dataset`` by ``names`` (shared by every split), refusing names it lacks."""
    import datasets

    unknown = sorted({v for v in dataset.unique(LABEL_COLUMN) if v is not None} - set(names))
    if unknown:
        shown = ", ".join(map(repr, unknown[:10])) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise DataError(
            f"{source} has labels that the training split '{reference}' does not have: {shown}. A model trained on "
            f"that split has no id for them; fix the labels or drop those rows."
        )
    return dataset.cast_column(LABEL_COLUMN, datasets.ClassLabel(names=list(names)))


def _normalise(dataset, *, image_column, label_column, info, keep_columns, add_index, source, label_names=None,
               names_reference=None):
    import datasets

    image_col = _pick_image_column(dataset, image_column, info, source)
    label_col = _pick_label_column(dataset, label_column, info, source, image_col)
    if label_col == image_col:
        raise MissingColumnError(f"image and label column are the same ({image_col!r}) in {source}.")
    features = dataset.features
    label_feature = features[label_col]
    if isinstance(label_feature, datasets.Value):
        if label_feature.dtype == "string" or label_feature.dtype == "large_string":
            pass  # class-encoded below
        elif not (label_feature.dtype.startswith(("int", "uint")) or label_feature.dtype == "bool"):
            raise MissingColumnError(
                f"label column {label_col!r} of {source} holds {label_feature.dtype} values; labels must be integer "
                f"class ids (or strings, which are class-encoded). Columns present: {columns_description(dataset)}. "
                "Pass label_column= another column or cast this one to int."
            )
    elif not isinstance(label_feature, datasets.ClassLabel):
        raise MissingColumnError(
            f"label column {label_col!r} of {source} is {label_feature!r}; single-label classification needs a "
            f"ClassLabel or integer column. Columns present: {columns_description(dataset)}."
        )
    keep = list(keep_columns)
    unknown = [c for c in keep if c not in features]
    if unknown:
        raise MissingColumnError(
            f"keep_columns {unknown} not found in {source}; columns present: {columns_description(dataset)}."
        )
    clashes = [c for c in keep if c in (IMAGE_COLUMN, LABEL_COLUMN, INDEX_COLUMN) or c in (image_col, label_col)]
    if clashes:
        raise MissingColumnError(
            f"keep_columns {clashes} clash with the normalised columns 'image'/'label'/'index'; rename them first."
        )
    existing_index = (
        INDEX_COLUMN in features
        and INDEX_COLUMN not in (image_col, label_col)
        and isinstance(features[INDEX_COLUMN], datasets.Value)
        and features[INDEX_COLUMN].dtype.startswith(("int", "uint"))
    )
    selected = [image_col, label_col] + keep + ([INDEX_COLUMN] if existing_index else [])
    dataset = dataset.select_columns(selected)
    renames = {old: new for old, new in ((image_col, IMAGE_COLUMN), (label_col, LABEL_COLUMN)) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    if _is_string_feature(dataset.features[LABEL_COLUMN]):
        if label_names is not None:  # one id map for every split of the dataset
            dataset = _encode_string_labels(dataset, label_names, names_reference, source)
        else:
            dataset = dataset.class_encode_column(LABEL_COLUMN)
    image_feature = dataset.features[IMAGE_COLUMN]
    if image_feature.mode != "RGB" or not image_feature.decode:
        dataset = dataset.cast_column(IMAGE_COLUMN, datasets.Image(mode="RGB"))
    if add_index and not existing_index:
        dataset = dataset.add_column(
            INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64), feature=datasets.Value("int64")
        )
    return dataset


def _select_split(loaded, split, shown):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        splits = dict(loaded)
    elif loaded.split is not None:
        splits = {str(loaded.split): loaded}
    else:  # a lone Dataset without a split name (from_dict, ...) is whichever split is asked for
        splits = {split if split is not None else "train": loaded}
    if split is None:
        return splits
    if split not in splits:
        raise UnknownSplitError(
            f"split {split!r} not found in {shown}; available splits: {list(splits)}. Pass one of those as split= "
            "(Tiny ImageNet's evaluation split is 'valid'; CIFAR, STL-10 and Fashion-MNIST use 'test')."
        )
    return {split: splits[split]}


def load_with_info(
    source,
    split=None,
    *,
    name=None,
    image_column=None,
    label_column=None,
    dataset_name=None,
    keep_columns=(),
    add_index=True,
    verify=False,
    label_names_split=None,
    **load_kwargs,
):
    import datasets

    loaded, shown = _load_raw(source, name, load_kwargs, split)
    info = infer_dataset_info(source if not isinstance(source, (datasets.Dataset, datasets.DatasetDict)) else None,
                              loaded, dataset_name)
    label_names, names_reference = _string_label_names(loaded, label_names_split, image_column, label_column, info,
                                                       shown)
    out = {}
    for split_name, ds in _select_split(loaded, split, shown).items():
        suffix = f" (split '{split_name}')"
        where = shown if shown.endswith(suffix) else shown + suffix
        ds = _normalise(
            ds,
            image_column=image_column,
            label_column=label_column,
            info=info,
            keep_columns=keep_columns,
            add_index=add_index,
            source=where,
            label_names=label_names,
            names_reference=names_reference,
        )
        set_tag(ds, where, info)
        if verify:
            verify_images(ds)
        out[split_name] = ds
    result = out[split] if split is not None else datasets.DatasetDict(out)
    return result, info


def load_image_dataset(
    source,
    split: str | None = None,
    *,
    name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    dataset_name: str | None = None,
    keep_columns: Sequence[str] = (),
    add_index: bool = True,
    verify: bool = False,
    label_names_split: str | None = None,
    **load_kwargs,
):
    """Load an image-classification dataset from any source as the normalised ``image``/``label``/``index`` view.

    Args:
        source: a known short name or alias (``"cifar100"``, ``"tiny-imagenet"``, ...; see ``KNOWN_DATASETS``),
            a Hub id (``"uoft-cs/cifar100"``), a local folder laid out like the Hub repo, a ``save_to_disk``
            folder, an ``imagefolder`` directory (``<split>/<class>/<image>``), a ``.parquet``/``.arrow`` file,
            a list of them (split taken from file names like ``train-00000-of-00001.parquet``, else ``train``),
            a ``{split: files}`` dict, or a loaded ``datasets.Dataset``/``DatasetDict``.
            ``"fashion_mnist"`` is read from the Debian package ``dataset-fashion-mnist`` when installed.
        split: the split to return as a ``Dataset``; ``None`` returns a ``DatasetDict`` of all splits.
        name: the Hub/builder config name (``load_dataset(..., name=)``).
        image_column, label_column: override the column detection.
        dataset_name: the known dataset the source holds, when it cannot be inferred from the path or class names
            (affects the default columns; :func:`prepare_dataset` also takes the normalisation stats from it).
        keep_columns: extra source columns to keep unchanged (e.g. ``["coarse_label"]``).
        add_index: add the ``index`` column (row number in the split as loaded); an existing integer ``index``
            column is kept as is.
        verify: decode every image now and raise :class:`CorruptImageError` at the first unreadable one.
        label_names_split: the split whose string labels (sorted) number the classes of every split; default the
            training split (the known dataset's, else ``train``/``training``), else the names of all splits.
        **load_kwargs: passed to ``datasets.load_dataset`` (``cache_dir``, ``revision``, ``num_proc``, ...).

    Raises:
        UnknownDatasetError, UnknownSplitError, MissingColumnError, DataSourceNotFoundError,
        DatasetUnavailableError (Hub unreachable or offline and not cached: pass a local path), CorruptImageError.
    """
    result, _ = load_with_info(
        source,
        split,
        name=name,
        image_column=image_column,
        label_column=label_column,
        dataset_name=dataset_name,
        keep_columns=keep_columns,
        add_index=add_index,
        verify=verify,
        label_names_split=label_names_split,
        **load_kwargs,
    )
    return result
