"""Configuration of the CIFAR MobileNetV2 (RepDistiller ``models/mobilenetv2.py``: mobile_half)."""

from ._cifar_common import CifarConfig


class CifarMobileNetV2Config(CifarConfig):
    """MobileNetV2 with RepDistiller's stride pattern for 32x32 inputs (a stride-2 stem, final 2x2 map).

    Args:
        expand_ratio: T, the expansion of the inverted-residual blocks after the first. RepDistiller uses 6.
        width_mult: channel multiplier. ``mobile_half`` is 0.5.
    """

    model_type = "cifar_mobilenetv2"

    expand_ratio: int = 6
    width_mult: float = 0.5

    def _normalize_fields(self):
        self.expand_ratio, self.width_mult = int(self.expand_ratio), float(self.width_mult)
        if self.expand_ratio < 1 or self.width_mult <= 0:
            raise ValueError(
                f"expand_ratio must be >= 1 and width_mult > 0, got {self.expand_ratio}, {self.width_mult}"
            )

    @property
    def last_channel(self) -> int:
        # The reference keeps 1280 unless the net is widened.
        if float(self.width_mult) > 1.0:
            return _make_divisible(1280 * float(self.width_mult))
        return 1280

    def _compute_feature_dim(self) -> int:
        return self.last_channel


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


__all__ = ["CifarMobileNetV2Config"]
