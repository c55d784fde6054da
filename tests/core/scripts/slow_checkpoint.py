"""Write a large checkpoint slowly over an existing one and report half-way, so a test can SIGKILL it.

Usage: python slow_checkpoint.py PATH. Prints ``HALF`` on stdout once half of the new file is on disk,
then keeps writing slowly (the test kills it long before it finishes).
"""

from __future__ import annotations

import io
import sys
import time

import torch

from zsk.core import checkpoint


def slow_save(obj: object, f: io.BufferedWriter) -> None:
    """torch.save into memory, then trickle the bytes into the real file."""
    buf = io.BytesIO()
    real_save(obj, buf)
    data = buf.getvalue()
    chunk = len(data) // 64
    for i in range(0, len(data), chunk):
        f.write(data[i : i + chunk])
        f.flush()
        if i >= len(data) // 2 and not reported[0]:
            reported[0] = True
            print("HALF", flush=True)
        time.sleep(0.5 if reported[0] else 0.0)


real_save = torch.save
reported = [False]

if __name__ == "__main__":
    checkpoint.torch.save = slow_save  # type: ignore[assignment]
    checkpoint.save_checkpoint(sys.argv[1], {"step": 2, "model": {"w": torch.full((1024, 1024), 2.0)}})
    print("FINISHED", flush=True)
