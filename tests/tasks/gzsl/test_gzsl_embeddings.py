"""GloVe text format and DGP's lemma averaging (spec "Input features")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zsk.core.cache import Cache
from zsk.core.errors import ZskError
from zsk.data.embeddings import embed_synsets, load_glove, phrase_vector, read_glove, synset_vector

GLOVE = """the 1 0 0
dog 2 0 0
hot 0 2 0
water 0 0 4
ice 0 4 0
cream 2 2 2
"""


@pytest.fixture
def glove_file(tmp_path: Path) -> Path:
    p = tmp_path / "glove.3d.txt"
    p.write_text(GLOVE)
    return p


def test_read_glove(glove_file: Path) -> None:
    wv = read_glove(glove_file)
    assert wv.dim == 3 and wv.words[:2] == ["the", "dog"]
    assert wv.get("water").tolist() == [0, 0, 4] and wv.get("cat") is None


def test_phrase_and_synset_averaging(glove_file: Path) -> None:
    wv = read_glove(glove_file)
    # '_'-split words averaged; case folded
    assert phrase_vector(wv, "Hot_Water").tolist() == [0, 1, 2]
    # a missing word falls back to its '-'-split sub-words: ice-cream -> mean(ice, cream) = (1, 3, 1)
    assert phrase_vector(wv, "ice-cream").tolist() == [1, 3, 1]
    # unknown words are skipped, not counted as zeros
    assert phrase_vector(wv, "hot_unknownword").tolist() == [0, 2, 0]
    assert phrase_vector(wv, "zzz") is None
    # synset: mean over lemmas that have a vector: dog (2,0,0) and hot_water (0,1,2) -> (1, .5, 1)
    assert synset_vector(wv, ["dog", "qqq", "hot_water"]).tolist() == [1, 0.5, 1]
    assert synset_vector(wv, ["qqq"]).tolist() == [0, 0, 0]
    x = embed_synsets(wv, [["dog"], ["hot_water"], ["qqq"]])
    assert np.allclose(x[0], [1, 0, 0]) and np.allclose(x[1], np.array([0, 1, 2]) / np.sqrt(5))
    assert np.allclose(x[2], 0)  # zero rows stay zero


def test_glove_dimension_mismatch_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.txt"
    p.write_text("a 1 2 3\nb 1 2\n")
    with pytest.raises(ZskError, match=r"bad\.txt:2: 2 values where the file's dimension is 3"):
        read_glove(p)
    with pytest.raises(ZskError, match="GloVe text file"):
        read_glove(tmp_path / "none.txt")


def test_load_glove_is_cached(glove_file: Path) -> None:
    first = load_glove(glove_file)
    assert Cache().info().get("glove", {}).get("entries") == 1
    second = load_glove(glove_file)
    assert second.words == first.words and np.array_equal(second.vectors, first.vectors)
    assert Cache().info()["glove"]["entries"] == 1


def test_glove_word2vec_header_and_overlong_rows(tmp_path: Path) -> None:
    """A word2vec header (``count dim``) gives the dimension and is skipped; a header that disagrees with the
    rows, or a row with more numbers than the dimension, names the file and line (issue 12)."""
    p = tmp_path / "w2v.txt"
    p.write_text("2 3\na 1 2 3\nb 4 5 6\n")
    wv = read_glove(p)
    assert wv.words == ["a", "b"] and wv.dim == 3
    p.write_text("2 300\na 1 2 3\nb 4 5 6\n")
    with pytest.raises(ZskError, match=r"w2v\.txt:2: 3 values where the file's dimension is 300"):
        read_glove(p)
    p.write_text("a 1 2 3\nb 4 5 6 7\n")
    with pytest.raises(ZskError, match=r"w2v\.txt:2: 4 values where the file's dimension is 3"):
        read_glove(p)
    p.write_text("a 1 2 3\n. . . 4 5 6\n")  # GloVe 840B has tokens with spaces: still read
    assert read_glove(p).words == ["a", ". . ."]
