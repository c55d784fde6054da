"""`zsk contrast predict`: for each image, the linear probe's class (top-5 with probabilities) and, with
`--embedding`, the three views' L2-normalised MetAug embeddings concatenated; one JSON row per image, also
written to OUT/predictions.jsonl. A checkpoint without a trained probe (last-pretrain.pt) gives the embeddings
only."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsk.core.io import atomic_open, output_folder, output_names
from zsk.core.task import Loaded
from zsk.data.images import read_image
from zsk.tasks.contrast import data as cdata
from zsk.tasks.contrast.config import Config
from zsk.tasks.contrast.model import LAYERS


@torch.no_grad()
def predict(loaded: Loaded, inputs: Sequence[Path], out: Path, *, embedding: bool = False,
            top_k: int = 5) -> Iterator[dict[str, Any]]:
    """Probe classes (and embeddings) of images, preprocessed as the probe's test images (Resize, CenterCrop, Lab),
    in batches of eval.batch_size; embeddings only when the checkpoint's probe was never trained."""
    cfg: Config = loaded.cfg
    net = loaded.model
    classes = list(loaded.extra.get("class_names") or [])
    online = cfg.eval.protocol == "online" and net.online_probe is not None
    head = net.online_probe if online else net.probe
    labels = online or bool(loaded.parts.get("probe_trained", True))
    embedding = embedding or not labels
    transform = cdata.test_transform(cfg.data)
    names = output_names(list(inputs))
    k = min(top_k, len(classes))
    rows = []
    for s in range(0, len(inputs), cfg.eval.batch_size):
        chunk = list(inputs[s : s + cfg.eval.batch_size])
        x = torch.stack([cdata.to_lab_tensor(np.asarray(transform(Image.fromarray(read_image(p))), dtype=np.uint8))
                         for p in chunk]).to(loaded.device)
        top = None
        if labels:
            f = net.encoder.with_features(x, 7 if net.layer == "pool" else LAYERS[net.layer])[1] if online \
                else net.probe_features(x)
            top = torch.softmax(head(f), 1).topk(k)
        emb = net.embed(x) if embedding else None
        for j, path in enumerate(chunk):
            row: dict[str, Any] = {"input": str(path), "input_name": names[s + j]}
            if top is not None:
                idx, val = top.indices[j].tolist(), top.values[j].tolist()
                row.update({"class": classes[idx[0]], "label": idx[0], "score": val[0],
                            "top": [{"class": classes[i], "score": v} for i, v in zip(idx, val, strict=True)],
                            "protocol": cfg.eval.protocol})
            if emb is not None:
                row["embedding"] = [round(v, 6) for v in emb[j].tolist()]
            rows.append(row)
            yield row
    folder = output_folder(out)
    with atomic_open(folder / "predictions.jsonl", "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
