"""Colour-space conversions used as views by multi-view methods (CMC, MetAug): sRGB -> CIE Lab.

The formulas are scikit-image's `color.rgb2lab` (sRGB companding, the sRGB -> XYZ matrix, the D65 / 2°
white point), so features match the official code that calls it, without the scikit-image dependency.
"""

from __future__ import annotations

import numpy as np

RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
D65_WHITE = np.array([0.95047, 1.0, 1.08883])

# per-channel normalisation of Lab used by CMC and MetAug (train_MetAug.py): the middle and half-range of each channel
LAB_MEAN = ((0 + 100) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100 - 0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 (or float in [0, 1]) sRGB -> (..., 3) float64 L* a* b* (L in [0, 100])."""
    arr = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    lin = np.where(arr > 0.04045, ((arr + 0.055) / 1.055) ** 2.4, arr / 12.92)
    xyz = lin @ RGB_TO_XYZ.T / D65_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    x, y, z = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * y - 16.0, 500.0 * (x - y), 200.0 * (y - z)], axis=-1)
