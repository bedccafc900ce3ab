"""Configuration of the CIFAR ShuffleNetV1 (RepDistiller ``models/ShuffleNetv1.py``: ShuffleV1)."""

from ._cifar_common import CifarConfig


class CifarShuffleNetV1Config(CifarConfig):
    """ShuffleNetV1 for 32x32 inputs: a 1x1 stem with 24 channels, then three stages that each start with stride 2.

    Args:
        out_planes: output width of each stage. ShuffleV1 uses ``[240, 480, 960]`` with 3 groups.
        num_blocks: blocks per stage. ShuffleV1 uses ``[4, 8, 4]``.
        groups: number of groups of the grouped 1x1 convs.
    """

    model_type = "cifar_shufflenetv1"

    out_planes: list[int] | tuple[int, ...] = (240, 480, 960)
    num_blocks: list[int] | tuple[int, ...] = (4, 8, 4)
    groups: int = 3

    def _normalize_fields(self):
        self.out_planes = [int(v) for v in self.out_planes]
        self.num_blocks = [int(v) for v in self.num_blocks]
        self.groups = int(self.groups)
        if len(self.out_planes) != 3 or len(self.num_blocks) != 3 or min(self.num_blocks) < 1:
            raise ValueError(f"out_planes and num_blocks need 3 entries each; got {self.out_planes}, {self.num_blocks}")

    def _compute_feature_dim(self) -> int:
        return self.out_planes[-1]


__all__ = ["CifarShuffleNetV1Config"]
