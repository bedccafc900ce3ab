"""Configuration of the CIFAR ShuffleNetV2 (RepDistiller ``models/ShuffleNetv2.py``: ShuffleV2, net_size 1)."""

from ._cifar_common import CifarConfig


class CifarShuffleNetV2Config(CifarConfig):
    """ShuffleNetV2 for 32x32 inputs: a 1x1 stem, three stages that each open with a stride-2 down block, a 1x1 conv.

    Args:
        out_channels: widths of the three stages and of the final 1x1 conv. net_size 1 (ShuffleV2) is
            ``[116, 232, 464, 1024]``.
        num_blocks: basic blocks per stage, after each stage's down block. ShuffleV2 uses ``[3, 7, 3]``.
        split_ratio: fraction of channels that a basic block passes through untouched.
    """

    model_type = "cifar_shufflenetv2"

    out_channels: list[int] | tuple[int, ...] = (116, 232, 464, 1024)
    num_blocks: list[int] | tuple[int, ...] = (3, 7, 3)
    split_ratio: float = 0.5

    def _normalize_fields(self):
        self.out_channels = [int(v) for v in self.out_channels]
        self.num_blocks = [int(v) for v in self.num_blocks]
        if len(self.out_channels) != 4 or len(self.num_blocks) != 3 or min(self.num_blocks) < 1:
            raise ValueError(
                f"out_channels needs 4 entries and num_blocks 3 (>= 1); got {self.out_channels}, {self.num_blocks}"
            )

    def _compute_feature_dim(self) -> int:
        return self.out_channels[-1]


__all__ = ["CifarShuffleNetV2Config"]
