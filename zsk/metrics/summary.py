"""Mean ± standard deviation over repeated runs, as papers report results over several seeds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def mean_std(values: Iterable[float | None]) -> dict[str, float | None]:
    """``{"mean", "std"}`` with the sample standard deviation (n - 1); 0 for one value, None for none.

    Missing (None) and NaN values are left out.
    """
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std}


def summarize_runs(results: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """``{"runs": n, key: {"mean", "std"}}`` for each of ``keys`` found in the results; a key whose
    values are dicts of numbers (e.g. per-class accuracy) is summarised entry by entry."""
    out: dict[str, Any] = {"runs": len(results)}
    for key in keys:
        present = [r[key] for r in results if key in r]
        if not present:
            continue
        if isinstance(present[0], dict):
            out[key] = {name: mean_std(p.get(name) for p in present) for name in present[0]}
        else:
            out[key] = mean_std(present)
    return out
