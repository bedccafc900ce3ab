"""Configuration of the CIFAR ResNets (RepDistiller ``models/resnet.py``: resnet8-110, resnet8x4, resnet32x4)."""

from ._cifar_common import CifarConfig


class CifarResNetConfig(CifarConfig):
    """CIFAR ResNet: a 3x3 stem and three stages with strides 1/2/2 on 32x32 inputs.

    Args:
        depth: 6n+2 for basic blocks (8, 14, 20, 32, 44, 56, 110), or 9n+2 for bottleneck blocks.
        num_filters: ``[stem, stage1, stage2, stage3]`` widths. ``[16, 16, 32, 64]`` gives the thin nets and
            ``[32, 64, 128, 256]`` gives the x4 nets.
        block_type: ``"basic"`` (every benchmark model) or ``"bottleneck"`` (expansion 4), as in the reference.
    """

    model_type = "cifar_resnet"

    depth: int = 20
    num_filters: list[int] | tuple[int, ...] = (16, 16, 32, 64)
    block_type: str = "basic"

    def _normalize_fields(self):
        self.depth = int(self.depth)
        self.num_filters = [int(v) for v in self.num_filters]
        if len(self.num_filters) != 4:
            raise ValueError(f"num_filters must have 4 entries (stem + 3 stages), got {self.num_filters}")
        self.block_type = str(self.block_type).lower()
        if self.block_type not in ("basic", "bottleneck"):
            raise ValueError(f"block_type must be 'basic' or 'bottleneck', got {self.block_type!r}")
        divisor = 6 if self.block_type == "basic" else 9
        if self.depth < divisor + 2 or (self.depth - 2) % divisor != 0:
            raise ValueError(
                f"depth={self.depth} is invalid for {self.block_type} blocks: depth must be {divisor}n+2 with n >= 1"
            )

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // (6 if self.block_type == "basic" else 9)

    def _compute_feature_dim(self) -> int:
        return self.num_filters[3] * (1 if self.block_type == "basic" else 4)


__all__ = ["CifarResNetConfig"]
