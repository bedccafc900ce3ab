"""The student and its data: the label names and the image processor it is saved with follow the training data.

A student trained on CIFAR-10 batches normalised with CIFAR-10's statistics must be saved with a processor that
normalises that way, and must answer CIFAR-10's class names; both are read from the data, in the Python API as on
the command line.
"""

from __future__ import annotations

import torch

from ..data import dataset_class_names, image_processor_for
from ..classifiers.inputs import image_stats_from_processor
from ..classifiers.labels import label_names

__all__ = ["processor_matching_data", "name_classes_from_data"]


def processor_matching_data(processing_class, data_stats, train_dataset, batch_transform):
    """The image processor saved with the student must normalise as the training batches were: build it from the
    data when none is given; refuse one that disagrees (pipeline() and evaluation would see other inputs)."""
    if data_stats is None:
        return processing_class
    if processing_class is None:
        return image_processor_for(train_dataset, batch_transform=batch_transform)
    given = image_stats_from_processor(processing_class)
    if given is not None and given.mean is not None and (
            not torch.allclose(torch.tensor(given.mean), torch.tensor(data_stats.mean), atol=1e-6)
            or not torch.allclose(torch.tensor(given.std), torch.tensor(data_stats.std), atol=1e-6)):
        raise ValueError(
            f"processing_class normalises with mean={given.mean} std={given.std}, but the training batches are "
            f"normalised with mean={list(data_stats.mean)} std={list(data_stats.std)}: the saved student would see "
            "other inputs in pipeline() and evaluation than in training. Pass rrd_hf.data.image_processor_for("
            "train_dataset), or leave processing_class unset (it is then built from the data)."
        )
    return processing_class


def name_classes_from_data(model, train_dataset) -> None:
    """Give a student with default labels (`LABEL_i`) the dataset's class names; refuse names that disagree."""
    names = dataset_class_names(train_dataset) if train_dataset is not None else None
    config = getattr(model, "config", None)
    if not names or config is None or len(names) != config.num_labels:
        return
    own = label_names(config)
    if own is None:
        config.id2label = dict(enumerate(names))
        config.label2id = {name: i for i, name in enumerate(names)}
    elif own != list(names):
        differing = next(i for i, (a, b) in enumerate(zip(own, names)) if a != b)
        raise ValueError(
            f"the student's id2label differs from the dataset's classes (label {differing}: student {own[differing]!r}, "
            f"dataset {names[differing]!r}): its predictions would carry the wrong names. Build the student with the "
            "dataset's class names (rrd_hf.models.build_model(..., class_names=...)) or in the dataset's label order."
        )
