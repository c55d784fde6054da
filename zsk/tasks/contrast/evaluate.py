"""Evaluation of the contrast task: top-1 / top-5 accuracy of the linear probe on frozen MetAug features
(`LinearProbing_MetAug.py`'s `validate`; Resize + CenterCrop test images), reported with the protocol that
trained the probe (metaug, solo_offline or online)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsk.core.checkpoint import load_model_state
from zsk.core.errors import ZskError
from zsk.core.task import Loaded, loaded_model, read_trained
from zsk.tasks.contrast import data as cdata
from zsk.tasks.contrast.config import Config
from zsk.tasks.contrast.model import MetAugNet
from zsk.tasks.contrast.train import build_model, eval_split, probe_accuracy

TASK = "contrast"


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """The MetAug network of a checkpoint (encoders, generators, memory bank, probe) in eval mode."""
    cfg, state = read_trained(TASK, checkpoint, Config, sets, recipe)
    net = network_of(cfg, state, checkpoint)
    load_model_state(net, state.get("model") or {}, source=str(checkpoint))
    return loaded_model(net, cfg, state, checkpoint, device, parts={"probe_trained": probe_trained(state)})


def network_of(cfg: Config, state: dict, checkpoint: Path) -> MetAugNet:
    """The (untrained) MetAug network a training checkpoint's weights fit. Refused: a checkpoint of another kind
    (no n_data / class_names), and the linear stage's own checkpoints (last-linear.pt, best-linear.pt), which hold
    the probe head only: the message says which file holds the whole network instead of listing missing weights."""
    extra = dict(state.get("extra") or {})
    if "n_data" not in extra or "class_names" not in extra:
        raise ZskError(f"{checkpoint} is not a contrast training checkpoint (no n_data / class_names): pass a run's "
                       "best.pt, last.pt or last-pretrain.pt")
    if state.get("stage") == "linear":
        raise ZskError(f"{checkpoint} holds the linear probe head only: pass the run folder or its best.pt (the "
                       "whole network), or last-pretrain.pt for a new linear evaluation")
    return build_model(cfg, int(extra["n_data"]), len(extra["class_names"]))


def probe_trained(state: dict) -> bool:
    """Whether the checkpoint's linear probe was trained: not in a pretraining-stage checkpoint
    (last-pretrain.pt, best-pretrain.pt), nor in a run whose recipe had no linear stage (eval.protocol online)."""
    protocol = ((state.get("recipe") or {}).get("eval") or {}).get("protocol", "metaug")
    return state.get("stage") != "pretrain" and protocol != "online"


def check_probe(loaded: Loaded) -> None:
    """A score or label of the untrained linear probe would be noise reported as a protocol's number: refuse."""
    if loaded.cfg.eval.protocol != "online" and not loaded.parts.get("probe_trained", True):
        raise ZskError(f"{loaded.checkpoint} has no trained linear probe (a pretraining checkpoint, or a run without "
                       f"the linear stage): run `zsk contrast linear --checkpoint {loaded.checkpoint}` and use that "
                       "run's best.pt, or --set eval.protocol=online for a run trained with model.online_probe")


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None) -> dict[str, Any]:
    """{"top1", "top5", "protocol", ...}: the probe of the checkpoint scored on `split` (default: eval.split or
    data.val_split). The online head is scored when eval.protocol is online."""
    cfg: Config = loaded.cfg
    name = split or eval_split(cfg)
    images = cdata.read_split(cfg.data, name)
    classes = list(loaded.extra.get("class_names") or [])
    if images.classes != classes:
        raise ZskError(f"{images.source}: its {len(images.classes)} classes differ from the {len(classes)} the "
                       f"checkpoint {loaded.checkpoint} was trained on")
    check_probe(loaded)
    online = cfg.eval.protocol == "online"
    head = loaded.model.online_probe if online else loaded.model.probe
    if head is None:
        raise ZskError(f"{loaded.checkpoint} has no online probe: use --set eval.protocol=metaug")
    dataset = cdata.LabImages(images, cdata.test_transform(cfg.data))
    scores = probe_accuracy(loaded.model, head, dataset, cfg.eval.batch_size, loaded.device, cfg.runtime.workers,
                            online)
    result = {**scores, "protocol": cfg.eval.protocol, "layer": cfg.eval.layer, "features": cfg.eval.features,
              "split": name, "images": len(images)}
    return result
