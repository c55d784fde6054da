"""Hugging Face models and tokenizers by hub id or local directory, with a clear offline error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zsk.core.errors import ZskError


def _load(loader: Any, name_or_path: str, what: str, option: str, **kwargs: Any) -> Any:
    local = Path(name_or_path).expanduser()
    if local.exists():
        try:
            return loader.from_pretrained(str(local), **kwargs)
        except (OSError, ValueError) as e:
            raise ZskError(f"cannot load {what} from {local}: {str(e).splitlines()[0]}") from None
    try:
        return loader.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if _offline():
        reason = "offline mode is on"
    elif not _hub_reachable():
        reason = "the hub cannot be reached from this machine"
    else:
        try:
            return loader.from_pretrained(name_or_path, **kwargs)
        except (OSError, ValueError) as e:
            reason = str(e).splitlines()[0]
    raise ZskError(f"{what} {name_or_path!r} is not in the local Hugging Face cache and could not be downloaded "
                   f"({reason}); save it with `save_pretrained` on a machine with network and pass the directory "
                   f"with --set {option}=/path/to/{name_or_path.split('/')[-1]}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def hub_file(repo: str, names: tuple[str, ...], option: str) -> Path:
    """The local path of the first of ``names`` in the hub repository ``repo`` (e.g. timm's
    ``model.safetensors``): from the local Hugging Face cache, else downloaded into it when the hub is
    reachable and offline mode is off (the policy of :func:`load_hf_model`); else a ``ZskError`` naming
    ``option``."""
    from huggingface_hub import hf_hub_download

    for local_only in (True, False):
        if not local_only and (_offline() or not _hub_reachable()):
            break
        for name in names:
            try:
                return Path(hf_hub_download(repo, name, local_files_only=local_only))
            except Exception:  # noqa: BLE001 - not cached / not in the repo: try the next file, then fail below
                continue
    raise ZskError(f"{option}: {repo!r} is not in the local Hugging Face cache and could not be downloaded; fetch "
                   f"it on a machine with network (huggingface-cli download {repo}) or give a local file")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub, so an offline machine fails at once instead of after the
    hub client's retries with back-off (minutes)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_hf_model(name_or_path: str, option: str = "model.encoder", loader: Any = None, **kwargs: Any) -> Any:
    """``AutoModel`` (or ``loader``) from a local directory, the HF cache, or the hub."""
    if loader is None:
        from transformers import AutoModel as loader  # noqa: N813
    return _load(loader, name_or_path, "model", option, **kwargs)


def load_hf_tokenizer(name_or_path: str, option: str = "model.encoder", **kwargs: Any) -> Any:
    """``AutoTokenizer`` from a local directory, the HF cache, or the hub."""
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, name_or_path, "tokenizer", option, **kwargs)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder."""
    return Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
