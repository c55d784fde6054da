"""The sample writer's files in DGP's formats, and the readers' validation of bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zsk.core.errors import ZskError
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.data import (
    list_images,
    load_graph_data,
    read_fc_weights,
    read_features,
    read_split,
    read_testsets,
    write_sample,
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gzsl-sample")
    write_sample(root)
    return root


def cfg_for(root: Path, *sets: str) -> Config:
    return parse_config(Config, load_recipe("gzsl/demo", [f"data.root={root}", *sets]))


def test_sample_formats_and_testsets(sample: Path) -> None:
    split = read_split(sample / "imagenet-split.json")
    assert len(split.train) == 12 and len(split.test) == 24 and split.train == sorted(split.train)
    graph = json.loads((sample / "imagenet-induced-graph.json").read_text())
    assert graph["wnids"][:36] == split.train + split.test  # DGP's node order: seen, test, induced
    sets = json.loads((sample / "imagenet-testsets.json").read_text())
    assert set(sets["2-hops"]) <= set(sets["3-hops"]) <= set(sets["all"]) == set(split.test)
    # independent check of "2-hops": an unseen leaf is within 2 hops of a seen class iff one of its parents
    # has a seen child (the sample's seen and test classes are all leaves)
    parents: dict[str, set[str]] = {}
    for line in (sample / "edges.txt").read_text().splitlines()[1:]:
        c, p = line.split()
        parents.setdefault(c, set()).add(p)
    seen_parents = set().union(*(parents[w] for w in split.train))
    assert set(sets["2-hops"]) == {w for w in split.test if parents[w] & seen_parents}
    fc = read_fc_weights(sample / "fc-weights.json", split.train)
    assert fc.shape == (12, 513)
    feats, labels = read_features(sample / "features" / "test.npy", sample / "features" / "test-labels.txt")
    assert feats.shape == (288, 512) and set(labels) == set(split.test)
    paths, idx, missing = list_images(sample / "datasets" / "imagenet", split.test[:3] + ["n00000000"])
    assert len(paths) == 9 and sorted(set(idx)) == [0, 1, 2] and missing == ["n00000000"]


def test_word_vectors_recomputed_from_glove_match_the_graph(sample: Path) -> None:
    data = load_graph_data(cfg_for(sample, "model.word_vectors=glove.sample.50d.txt"))
    ref = np.asarray(json.loads((sample / "imagenet-induced-graph.json").read_text())["vectors"])
    assert np.allclose(data.vectors, ref, atol=1e-5)
    assert np.allclose(np.linalg.norm(data.vectors, axis=1), 1, atol=1e-5)


def test_dense_graph_must_match_graph(sample: Path, tmp_path: Path) -> None:
    dense = json.loads((sample / "imagenet-dense-grouped-graph.json").read_text())
    dense["wnids"] = dense["wnids"][::-1]
    (tmp_path / "dense.json").write_text(json.dumps(dense))
    with pytest.raises(ZskError, match="dense.json lists other nodes"):
        load_graph_data(cfg_for(sample, f"data.dense_graph={tmp_path / 'dense.json'}"))


def test_reader_errors(sample: Path, tmp_path: Path) -> None:
    split = read_split(sample / "imagenet-split.json")
    rows = json.loads((sample / "fc-weights.json").read_text())
    rows[0][0] = "n00000001"
    (tmp_path / "fc.json").write_text(json.dumps(rows))
    with pytest.raises(ZskError, match=f"fc.json has no classifier for seen class {split.train[0]}"):
        read_fc_weights(tmp_path / "fc.json", split.train)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["n1", "n2"], "test": ["n2"]}))
    with pytest.raises(ZskError, match="both a train and a test class"):
        read_split(tmp_path / "split.json")
    np.save(tmp_path / "f.npy", np.zeros((3, 4), dtype=np.float32))
    (tmp_path / "f-labels.txt").write_text("a\nb\n")
    with pytest.raises(ZskError, match="2 labels for 3 feature rows"):
        read_features(tmp_path / "f.npy", tmp_path / "f-labels.txt")


def test_gcnz_style_testset_lists(sample: Path, tmp_path: Path) -> None:
    sets = json.loads((sample / "imagenet-testsets.json").read_text())
    lists = tmp_path / "list"
    lists.mkdir()
    for name in ("2-hops", "all"):
        (lists / f"{name}.txt").write_text("\n".join(sets[name]) + "\n")
    assert read_testsets(lists) == {"2-hops": sets["2-hops"], "all": sets["all"]}
    with pytest.raises(ZskError, match="no <testset>.txt"):
        read_testsets(tmp_path)


def test_image_transforms() -> None:
    import torch
    from PIL import Image

    from zsk.tasks.gzsl.data import (
        center_crop,
        eval_transform,
        random_resized_crop,
        resize_shorter,
        train_transform,
    )

    im = Image.new("RGB", (80, 40), (255, 0, 128))
    assert resize_shorter(im, 20).size == (40, 20)
    x = eval_transform(20, 16)(im)
    assert x.shape == (3, 16, 16)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)
    # center crop keeps the middle: a left-right gradient's centre column survives
    grad = Image.fromarray(np.tile(np.arange(60, dtype=np.uint8)[None, :, None], (20, 1, 3)))
    assert np.asarray(center_crop(grad, 20))[0, :, 0].tolist() == list(range(20, 40))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = random_resized_crop(grad, 12, generator=g1), random_resized_crop(grad, 12, generator=g2)
    assert a.size == (12, 12) and np.array_equal(np.asarray(a), np.asarray(b))
    assert train_transform(12)(im).shape == (3, 12, 12)
    with pytest.raises(ZskError, match="data.crop"):
        eval_transform(16, 20)
