"""Configuration of the CIFAR VGGs (RepDistiller ``models/vgg.py``: vgg8_bn ... vgg19_bn)."""

from ._cifar_common import CifarConfig

# RepDistiller's cfg table. Five stages of 3x3 convs; "S" is its small vgg8 variant.
VGG_STAGES = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class CifarVGGConfig(CifarConfig):
    """VGG with five conv stages, max-pooling between them and a single linear classifier.

    Args:
        stages: five lists of conv widths, one list per stage. The benchmark uses ``VGG_STAGES["S"|"A"|"B"|"D"|"E"]``
            for vgg8/11/13/16/19. The defaults are vgg13's.
        batch_norm: BN after every conv. The benchmark uses the ``*_bn`` models, so this is True.
    """

    model_type = "cifar_vgg"

    stages: list[list[int]] | tuple = tuple(tuple(s) for s in VGG_STAGES["B"])
    batch_norm: bool = True

    def _normalize_fields(self):
        self.stages = [[int(v) for v in stage] for stage in self.stages]
        if len(self.stages) != 5 or any(len(stage) == 0 for stage in self.stages):
            raise ValueError(f"stages must be 5 non-empty lists of conv widths, got {self.stages}")

    def _compute_feature_dim(self) -> int:
        return self.stages[-1][-1]


__all__ = ["CifarVGGConfig", "VGG_STAGES"]
