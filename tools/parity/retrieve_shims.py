"""Shims that let the official LSEH code (yangong23/VSEnetworksLSEH) run on the CPU inside the parity script.

- ``torch.cuda.is_available`` answers True while an official loss runs: VSEpp_LSEH's ``ContrastiveLossLSEH``
  defines its diagonal mask only on that branch (``.cuda()`` is a no-op through ``common.cpu_shims``).
- ``nltk.tokenize.sent_tokenize`` keeps a caption one sentence when NLTK's punkt model is not installed
  (the official ``word_tokenize`` needs it; the compared captions are single sentences).
- ``pycocotools``, ``tensorboard_logger`` and ``cv2``/``imageio`` are stubbed: the compared modules import them
  for raw-image and logging paths that are never run.
- VSEinfty_LSEH's ``lib/loss.py`` reads a global ``LsaMargin`` that it never defines (only its size is used,
  for the diagonal mask); :func:`vseinf_loss_module` defines it as a zero matrix of the batch size.
- VSRN_LSEH's ``misc/rewards.py`` imports the CIDEr-D scorer of ``coco-caption`` (self-critical training, never
  run): :func:`vsrn_stubs` stubs ``pyciderevalcap``. :func:`official_path` puts one fork first on ``sys.path``
  for its top-level packages (``models``, ``misc``, ``GCN_lib``) and forgets them afterwards.
- VSEinfty_LSEH's ``EncoderText`` loads ``bert-base-uncased``; :func:`tiny_bert` stands in (random weights,
  768 wide because the official linear layer is ``nn.Linear(768, embed)``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from common import stub_module


@contextlib.contextmanager
def cuda_branch():
    """Let code that builds its masks only under ``torch.cuda.is_available()`` take that branch."""
    old = torch.cuda.is_available
    torch.cuda.is_available = lambda: True  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.is_available = old  # type: ignore[assignment]


def import_stubs() -> None:
    stub_module("pycocotools.coco", COCO=None)
    stub_module("tensorboard_logger", configure=lambda *a, **k: None, log_value=lambda *a, **k: None)
    stub_module("cv2")
    stub_module("imageio", imread=None)


def punkt_free_nltk() -> str:
    """Use NLTK's real sentence splitter when punkt is installed, else treat each caption as one sentence."""
    import nltk

    for res in ("tokenizers/punkt_tab/english/", "tokenizers/punkt/english.pickle"):
        try:
            nltk.data.find(res)
            return "punkt"
        except LookupError:
            continue
    nltk.tokenize.sent_tokenize = lambda text, language="english": [text]  # type: ignore[assignment]
    return "one sentence per caption (punkt not installed)"


def load_file(name: str, path: Path) -> ModuleType:
    """Import one official file as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def vseinf_loss_module(root: Path, batch: int) -> ModuleType:
    """VSEinfty_LSEH/lib/loss.py with its undefined ``LsaMargin`` global defined (size only)."""
    module = load_file("vseinf_loss", root / "VSEinfty_LSEH" / "lib" / "loss.py")
    module.LsaMargin = torch.zeros(batch, batch)  # type: ignore[attr-defined]
    return module


def tiny_bert(vocab_size: int = 40):
    """A one-layer random BERT, 768 wide (the official text encoder's linear layer takes 768 inputs)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertModel(cfg)


def vsrn_stubs() -> None:
    """VSRN_LSEH's model.py imports the CIDEr-D scorer for self-critical captioning, which is never run."""
    import_stubs()
    stub_module("pyciderevalcap.ciderD.ciderD", CiderD=None)


@contextlib.contextmanager
def official_path(folder: Path, packages: tuple[str, ...]):
    """``folder`` first on ``sys.path`` while its files are imported; its top-level ``packages`` are dropped
    from ``sys.modules`` before (another fork may hold the same names) and after."""
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


@contextlib.contextmanager
def no_cuda_sync():
    """``torch.cuda.synchronize()`` as a no-op (VSRN's ``calcualte_caption_loss`` calls it first thing)."""
    old = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.synchronize = old  # type: ignore[assignment]
