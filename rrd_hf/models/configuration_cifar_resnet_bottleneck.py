"""Configuration of the bottleneck ResNet for 32x32 inputs (RepDistiller ``models/resnetv2.py``: ResNet50)."""

from ._cifar_common import CifarConfig


class CifarResNetBottleneckConfig(CifarConfig):
    """ImageNet-style bottleneck ResNet adapted to CIFAR: a 3x3 stride-1 stem with no max-pool, then four stages.

    Args:
        num_blocks: bottleneck blocks per stage. ``[3, 4, 6, 3]`` is ResNet50.
        widths: the inner (pre-expansion) width of each stage. The output width is 4x this.
        zero_init_residual: zero the last BN of every block at init (reference option, off by default).
    """

    model_type = "cifar_resnet_bottleneck"

    num_blocks: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    widths: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    zero_init_residual: bool = False

    def _normalize_fields(self):
        self.num_blocks = [int(v) for v in self.num_blocks]
        self.widths = [int(v) for v in self.widths]
        if len(self.num_blocks) != 4 or len(self.widths) != 4 or min(self.num_blocks) < 1:
            raise ValueError(
                f"num_blocks and widths need 4 entries each, with num_blocks >= 1; got {self.num_blocks}, {self.widths}"
            )

    def _compute_feature_dim(self) -> int:
        return self.widths[-1] * 4


__all__ = ["CifarResNetBottleneckConfig"]
