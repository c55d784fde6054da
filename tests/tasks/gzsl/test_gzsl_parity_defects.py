"""Defects of issue 11 (parity with yinboc/DGP): each test failed before its fix."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zsk.data.graphs import ancestor_groups, induce_wordnet_graph
from zsk.tasks.gzsl.config import Config, DataConfig, EvalConfig
from zsk.tasks.gzsl.data import load_graph_data, read_fc_weights, write_sample

ROOT = Path(__file__).resolve().parents[3]


def _tiny_wordnet_writer():
    spec = importlib.util.spec_from_file_location("zsk_test_graphs", ROOT / "tests" / "data" / "test_graphs.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod.write_wordnet


@pytest.fixture
def tiny_wordnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    import nltk

    wnids = _tiny_wordnet_writer()(tmp_path / "nltk_data")
    monkeypatch.setattr(nltk.data, "path", [])
    return tmp_path / "nltk_data", wnids


def test_induction_does_not_expand_seeds_in_the_xml_stop_set(tiny_wordnet) -> None:
    """make_induced_graph.py's BFS skips every node of the stop set, the seeds included: dog is an xml
    node, so its hypernyms (canine, pet) are reached only through other nodes (wolf -> canine)."""
    root, w = tiny_wordnet
    name = {v: k for k, v in w.items()}
    graph, _ = induce_wordnet_graph([w["dog"]], [w["wolf"]], xml_wnids=[w["dog"]], nltk_data=root)
    assert [name[x] for x in graph.wnids] == ["dog", "wolf", "canine", "animal", "entity"]
    edges = [(name[graph.wnids[c]], name[graph.wnids[p]]) for c, p in graph.edges]
    assert edges == [("dog", "canine"), ("wolf", "canine"), ("canine", "animal"), ("animal", "entity")]


def test_induced_edges_follow_node_then_hypernym_name_order(tiny_wordnet) -> None:
    """getedges: for each node in order, its hypernyms in nltk's (name-sorted) order."""
    root, w = tiny_wordnet
    name = {v: k for k, v in w.items()}
    graph, _ = induce_wordnet_graph([w["cat"]], [], nltk_data=root)
    edges = [(name[graph.wnids[c]], name[graph.wnids[p]]) for c, p in graph.edges]
    assert edges[:2] == [("cat", "animal"), ("cat", "pet")]


def test_dense_groups_follow_the_official_bfs_order() -> None:
    """make_dense_grouped_graph.py lists, for each node u in order, its ancestors in BFS discovery order."""
    edges = np.asarray([[0, 3], [0, 2], [2, 1], [3, 1]])
    groups = ancestor_groups(4, edges)
    assert groups[1].tolist() == [[0, 3], [0, 2], [2, 1], [3, 1]]
    assert groups[2].tolist() == [[0, 1]]


def test_official_fc_weights_layout_is_read(tmp_path: Path) -> None:
    """process_resnet.py writes rows [wnid, [w_1..w_F, b]]."""
    p = tmp_path / "fc-weights.json"
    p.write_text(json.dumps([["n1", [1.0, 2.0, 3.0]], ["n2", [4.0, 5.0, 6.0]]]))
    assert read_fc_weights(p, ["n2", "n1"]).tolist() == [[4, 5, 6], [1, 2, 3]]


def test_official_graph_vectors_are_l2_normalised_on_load(tmp_path: Path) -> None:
    """train_gcn_*.py: word_vectors = F.normalize(graph['vectors']) (the official graph files store raw GloVe means)."""
    write_sample(tmp_path)
    g = json.loads((tmp_path / "imagenet-induced-graph.json").read_text())
    g["vectors"] = (np.asarray(g["vectors"]) * 3.7).tolist()
    (tmp_path / "imagenet-induced-graph.json").write_text(json.dumps(g))
    cfg = Config(data=DataConfig(root=str(tmp_path), names=None))
    data = load_graph_data(cfg)
    np.testing.assert_allclose(np.linalg.norm(data.vectors, axis=1), 1.0, atol=1e-6)


def test_awa2_gzsl_candidates_are_awa2_train_plus_test(tmp_path: Path) -> None:
    """evaluate_awa2.py --consider-trains: candidates = awa2-split.json's train classes + its test classes,
    not the 1,000 ImageNet classes."""
    from zsk.tasks.gzsl.evaluate import evaluate_classifiers

    write_sample(tmp_path)
    awa = json.loads((tmp_path / "awa2-split.json").read_text())
    cfg = Config(data=DataConfig(root=str(tmp_path), names=None),
                 eval=EvalConfig(testset="awa2", generalized=True, features="features/test.npy",
                                 labels="features/test-labels.txt"))
    data = load_graph_data(cfg)
    pred = torch.nn.functional.normalize(torch.randn(data.graph.num_nodes, 513, generator=torch.Generator().manual_seed(0)), dim=1)
    r = evaluate_classifiers(cfg, data, pred, cnn=None, device=torch.device("cpu"))
    assert r["candidates"] == len(awa["train"]) + len(awa["test"])


def test_gcnz_recipe_is_the_gcnz_code() -> None:
    """GCNZ's GCN_dense_mse: no biases, dropout before layers 5 and 6 only, D^-1/2 (A+I) D^-1/2, inputs divided by
    their row sum, loss (N/M)^2/2 * sum of squares (mask rescaled by its mean)."""
    from zsk.core.recipe import load_recipe, parse_config
    from zsk.tasks.gzsl.losses import build_loss
    from zsk.tasks.gzsl.train import build_gnn

    cfg = parse_config(Config, load_recipe("gzsl/imagenet_gcnz"))
    gnn = build_gnn(cfg, 300, 2048)
    names = [n for n, _ in gnn.named_parameters()]
    assert len(names) == 6 and not any("bias" in n for n in names)
    drops = [not isinstance(layer.dropout, torch.nn.Identity) for layer in gnn.layers]
    assert drops == [False, False, False, False, True, True]
    assert (cfg.model.adjacency, cfg.model.input_norm, cfg.train.loss) == ("sym", "sum", "gcnz")
    pred, target = torch.zeros(4, 3), torch.ones(4, 3)
    assert float(build_loss("gcnz", 32)(pred, target)) == pytest.approx((32 / 4) ** 2 / 2 * 12)


def test_gcn_dense_model_and_recipe() -> None:
    """train_gcn_dense.py: two layers over every (node, ancestor) pair, descendant then ancestor operator."""
    from zsk.core.recipe import load_recipe, parse_config
    from zsk.tasks.gzsl.train import build_gnn, operators_for

    cfg = parse_config(Config, load_recipe("gzsl/imagenet_gcn_dense"))
    assert cfg.model.name == "gcn_dense"
    edges = np.asarray([[0, 1], [1, 2]])
    ops = operators_for(cfg, 3, edges, ancestor_groups(3, edges))
    assert len(ops.ancestors) == 1
    np.testing.assert_allclose(ops.ancestors[0].to_dense().numpy(),
                               [[1 / 3, 1 / 3, 1 / 3], [0, 0.5, 0.5], [0, 0, 1]], atol=1e-7)
    gnn = build_gnn(cfg, 300, 2049)
    assert sum(p.numel() for p in gnn.parameters() if p.requires_grad) == 300 * 2048 + 2048 + 2048 * 2049 + 2049


def test_dgp_on_a_shallow_graph_softmaxes_over_the_groups_present() -> None:
    """train_gcn_dense_att.py keeps min(#distances, 5) groups: on a graph of depth 2 the attention is a softmax
    over 3 weights (zsk used to give an empty 4th and 5th group softmax mass)."""
    from zsk.tasks.gzsl.train import build_gnn, operators_for

    cfg = Config()
    cfg.model.hidden = [4]
    edges = np.asarray([[0, 1], [1, 2]])
    ops = operators_for(cfg, 3, edges, ancestor_groups(3, edges))
    assert len(ops.ancestors) == 3
    gnn = build_gnn(cfg, 2, 3).eval()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    layer = gnn.descendant_phase
    support = layer.linear(x)
    want = sum(torch.sparse.mm(op, support) / 3 for op in ops.descendants)
    torch.testing.assert_close(layer(x, ops.descendants), torch.nn.functional.leaky_relu(want, 0.2))


def test_node_vectors_follow_the_official_glove_lookup(tmp_path) -> None:
    """materials/glove.py keeps case and tries the whole lemma before its words; zsk lower-cased."""
    import json

    import numpy as np

    from zsk.tasks.gzsl.graph_build import build_graph_files

    glove = tmp_path / "glove.txt"
    glove.write_text("persian 1 0 0\ncat 0 1 0\nhot_dog 0 0 1\nhot 1 1 0\ndog 0 1 1\n")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["n1"], "test": ["n2"]}))
    edges = tmp_path / "edges.txt"
    edges.write_text("n1 n0\nn2 n0\n")
    names = tmp_path / "words.txt"
    names.write_text("n1\tPersian cat\nn2\thot dog\n")
    out = tmp_path / "out"
    build_graph_files(split, out, edges=edges, glove=glove, names=names)
    vec = np.asarray(json.loads((out / "imagenet-induced-graph.json").read_text())["vectors"], dtype=np.float32)
    # "Persian" (capitalised) is not in a lower-case GloVe: only "cat"; "hot_dog" is found whole
    np.testing.assert_allclose(vec[:2], [[0, 1, 0], [0, 0, 1]], atol=1e-6)


def test_lemma_case_lower_is_an_option() -> None:
    import numpy as np

    from zsk.data.embeddings import WordVectors
    from zsk.tasks.gzsl.word_vectors import embed_lemmas

    wv = WordVectors(["persian", "cat", "hot", "dog"], np.eye(4, dtype=np.float32))
    keep = embed_lemmas(wv, [["Persian_cat"], ["Hot_dog", "missing"]], normalize=False)
    low = embed_lemmas(wv, [["Persian_cat"], ["Hot_dog", "missing"]], case="lower", normalize=False)
    np.testing.assert_allclose(keep, [[0, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(low, [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
