"""Shims for running DGP's official scripts (yinboc/DGP) on a CPU with today's libraries.

* :func:`write_nltk_wordnet`: an nltk data folder (``DIR/corpora/wordnet``) over Debian's WordNet 3.0
  (``apt-get install wordnet-base wordnet-sense-index``: /usr/share/wordnet). nltk also opens ``lexnames``,
  which Debian does not ship; it is the fixed table of WordNet's 45 lexicographer files, written here from
  WordNet's documentation (lexnames(5WN): number, file name, syntactic category 1 noun 2 verb 3 adj 4 adv).
* :func:`sorted_hypernyms`: nltk >= 3.9 returns a synset's hypernyms in the order of a Python set (it follows
  PYTHONHASHSEED); nltk 3.x of 2018, which the official code ran on, sorted them by name. The official
  scripts are run with that order restored, as zsk does (``zsk.data.graphs.hypernyms``).
* ``torch.sparse.FloatTensor``: removed from recent PyTorch; the official ``spm_to_tensor`` calls it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

LEX_FILES = (
    ["adj.all", "adj.pert", "adv.all"]
    + ["noun." + n for n in ("Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication",
                             "event", "feeling", "food", "group", "location", "motive", "object", "person",
                             "phenomenon", "plant", "possession", "process", "quantity", "relation", "shape",
                             "state", "substance", "time")]
    + ["verb." + n for n in ("body", "change", "cognition", "communication", "competition", "consumption",
                             "contact", "creation", "emotion", "motion", "perception", "possession", "social",
                             "stative", "weather")]
    + ["adj.ppl"])
CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def lexnames_text() -> str:
    """WordNet's ``lexnames`` file: ``NN<TAB>name<TAB>category`` for the 45 lexicographer files."""
    assert len(LEX_FILES) == 45
    return "".join(f"{i:02d}\t{name}\t{CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEX_FILES))


def write_nltk_wordnet(dst: Path, src: Path = Path("/usr/share/wordnet")) -> Path:
    """``dst/corpora/wordnet`` with copies of the WordNet 3.0 database in ``src`` (nltk refuses links that leave
    its root) and a written ``lexnames``;
    returns ``dst`` (pass it as nltk's data path / ``--nltk-data``)."""
    folder = dst / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
                 "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense", "cntlist.rev"):
        target = folder / name
        if not target.exists() and (src / name).exists():
            shutil.copyfile(src / name, target)
    (folder / "lexnames").write_text(lexnames_text())
    return dst


@contextlib.contextmanager
def sorted_hypernyms() -> Iterator[None]:
    """nltk's ``Synset.hypernyms`` in name order (nltk 3.3-3.8 behaviour) while the block runs."""
    from nltk.corpus.reader.wordnet import Synset

    original = Synset.hypernyms
    Synset.hypernyms = lambda self: sorted(original(self), key=lambda s: s.name())  # type: ignore[method-assign]
    try:
        yield
    finally:
        Synset.hypernyms = original  # type: ignore[method-assign]


def torch_shims() -> None:
    """``torch.sparse.FloatTensor(indices, values, shape)`` for the official ``spm_to_tensor``."""
    if not hasattr(torch.sparse, "FloatTensor"):
        torch.sparse.FloatTensor = lambda i, v, s: torch.sparse_coo_tensor(i, v, s)  # type: ignore[attr-defined]


def stub_glove() -> None:
    """make_induced_graph.py imports ``glove.GloVe`` at module level; the graph comparison never embeds."""
    import sys
    import types

    if "glove" not in sys.modules:
        mod = types.ModuleType("glove")
        mod.GloVe = object  # type: ignore[attr-defined]
        sys.modules["glove"] = mod
