"""Overlap and surface-distance metrics for 3-D binary segmentations (Dice, Jaccard, HD95, ASD, ASSD).

Surfaces are the voxels of a mask that touch the background through a face (6-connectivity), volume
edges counting as background. Distances come from Euclidean distance transforms
(``scipy.ndimage.distance_transform_edt``); with ``spacing=None`` they are in voxels (what the DTC
paper reports), with a spacing tuple in millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient 2|P∩G| / (|P| + |G|); 1.0 when both are empty."""
    p, g = _as_bool(pred), _as_bool(target)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom


def jaccard(pred: np.ndarray, target: np.ndarray) -> float:
    """Jaccard index |P∩G| / |P∪G|; 1.0 when both are empty."""
    p, g = _as_bool(pred), _as_bool(target)
    union = int((p | g).sum())
    return 1.0 if union == 0 else int((p & g).sum()) / union


def surface(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Border voxels of a mask: inside voxels with a background neighbour (outside the volume counts)."""
    m = _as_bool(mask)
    structure = ndimage.generate_binary_structure(m.ndim, connectivity)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def surface_distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None,
                      connectivity: int = 1) -> np.ndarray:
    """Distance from every surface voxel of ``source`` to the nearest surface voxel of ``target``."""
    s_surf, t_surf = surface(source, connectivity), surface(target, connectivity)
    if not s_surf.any() or not t_surf.any():
        raise ValueError("surface distances need two non-empty masks")
    dist_to_target = ndimage.distance_transform_edt(~t_surf, sampling=spacing)
    return dist_to_target[s_surf]


def hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the pooled surface distances in both directions (robust Hausdorff distance)."""
    both = np.concatenate([surface_distances(pred, target, spacing), surface_distances(target, pred, spacing)])
    return float(np.percentile(both, 95))


def asd(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Directed average surface distance: mean distance from the prediction's surface to the target's."""
    return float(surface_distances(pred, target, spacing).mean())


def assd(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Symmetric average surface distance: the mean of the two directed ASDs."""
    return 0.5 * (asd(pred, target, spacing) + asd(target, pred, spacing))


def binary_case_metrics(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None,
                        asd_mode: str = "directed") -> dict[str, float]:
    """Dice, Jaccard, HD95 and ASD of one case.

    An empty prediction scores 0 on all four (the DTC evaluation code's convention, so averages over a
    test set match its tables); an empty target with a non-empty prediction gives Dice = Jaccard = 0
    and NaN distances (undefined).
    """
    if asd_mode not in ("directed", "symmetric"):
        raise ValueError(f"asd_mode must be 'directed' or 'symmetric', got {asd_mode!r}")
    p, g = _as_bool(pred), _as_bool(target)
    if not p.any():
        return {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    out = {"dice": dice(p, g), "jaccard": jaccard(p, g)}
    if not g.any():
        out.update(hd95=float("nan"), asd=float("nan"))
        return out
    d_pg = surface_distances(p, g, spacing)  # one distance transform per direction, shared by both metrics
    d_gp = surface_distances(g, p, spacing)
    out["hd95"] = float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    out["asd"] = float(d_pg.mean()) if asd_mode == "directed" else 0.5 * float(d_pg.mean() + d_gp.mean())
    return out
