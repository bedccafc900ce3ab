"""Configuration of the CIFAR Wide ResNets (RepDistiller ``models/wrn.py``: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2)."""

from ._cifar_common import CifarConfig


class CifarWideResNetConfig(CifarConfig):
    """Pre-activation Wide ResNet with stage widths ``[16, 16k, 32k, 64k]``, where k is ``widen_factor``.

    Args:
        depth: 6n+4 (16, 40, ...), giving n blocks per stage.
        widen_factor: k. The penultimate size is 64k.
        drop_rate: dropout between the two convs of a block. 0 in the benchmark.
    """

    model_type = "cifar_wrn"

    depth: int = 40
    widen_factor: int = 2
    drop_rate: float = 0.0

    def _normalize_fields(self):
        self.depth, self.widen_factor, self.drop_rate = int(self.depth), int(self.widen_factor), float(self.drop_rate)
        if self.depth < 10 or (self.depth - 4) % 6 != 0:
            raise ValueError(f"depth={self.depth} is invalid: Wide ResNet depth must be 6n+4 with n >= 1")
        if int(self.widen_factor) < 1:
            raise ValueError(f"widen_factor must be >= 1, got {self.widen_factor}")
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")

    @property
    def channels(self) -> list[int]:
        k = int(self.widen_factor)
        return [16, 16 * k, 32 * k, 64 * k]

    def _compute_feature_dim(self) -> int:
        return 64 * int(self.widen_factor)


__all__ = ["CifarWideResNetConfig"]
