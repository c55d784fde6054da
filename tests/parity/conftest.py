"""tests/parity replays the figures of tools/parity/<task>.py: its helpers (figures file, comparison) come
from tools/parity/common.py, which needs no official code."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "parity"))
