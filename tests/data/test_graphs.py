"""Graph formats, hop-distance groups on a hand-drawn hierarchy, edge lists and WordNet induction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zsk.core.errors import ZskError
from zsk.data.graphs import (
    KnowledgeGraph,
    ancestor_groups,
    induce_wordnet_graph,
    load_wordnet,
    merge_groups,
    read_dense_grouped_graph,
    read_edge_list,
    read_induced_graph,
    read_names,
    undirected_hops,
    write_dense_grouped_graph,
    write_induced_graph,
)

# Hand-drawn hierarchy (child -> parent):
#        a(0)
#       /    \
#     b(1)   c(2)
#     / \    /
#   d(3) e(4)        e has two parents (b and c), f(5) hangs under d
#    |
#   f(5)
EDGES = np.array([[1, 0], [2, 0], [3, 1], [4, 1], [4, 2], [5, 3]])


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(int(u), int(v)) for u, v in pairs}


def test_ancestor_groups_by_shortest_hop_distance() -> None:
    groups = ancestor_groups(6, EDGES)
    assert len(groups) == 4  # distances 0..3 (f -> d -> b -> a)
    assert as_set(groups[0]) == {(i, i) for i in range(6)}
    assert as_set(groups[1]) == {(1, 0), (2, 0), (3, 1), (4, 1), (4, 2), (5, 3)}
    # e reaches a through b and through c: one pair, at distance 2
    assert as_set(groups[2]) == {(3, 0), (4, 0), (5, 1)}
    assert as_set(groups[3]) == {(5, 0)}
    assert sum(len(g) for g in groups) == 6 + 6 + 3 + 1


def test_merge_groups_keeps_near_and_merges_far() -> None:
    groups = ancestor_groups(6, EDGES)
    merged = merge_groups(groups, 2)
    assert len(merged) == 3
    assert as_set(merged[0]) == as_set(groups[0]) and as_set(merged[1]) == as_set(groups[1])
    assert as_set(merged[2]) == {(3, 0), (4, 0), (5, 1), (5, 0)}
    # more groups asked than distances present: empty tail groups, always max_distance + 1 of them
    merged = merge_groups(groups, 5)
    assert len(merged) == 6 and len(merged[4]) == 0 and len(merged[5]) == 0
    with pytest.raises(ZskError):
        merge_groups(groups, 0)


def test_undirected_hops_from_sources() -> None:
    hops = undirected_hops(6, EDGES, [5])
    # f=5 -> d=1 -> b=2 -> a=3, e=3 (via b) ; c: via a (4) or e (4)
    assert hops.tolist() == [3, 2, 4, 1, 3, 0]


def test_induced_graph_round_trip_and_validation(tmp_path: Path) -> None:
    g = KnowledgeGraph(wnids=[f"n{i:08d}" for i in range(6)], edges=EDGES,
                       vectors=np.arange(12, dtype=np.float32).reshape(6, 2))
    path = tmp_path / "g.json"
    write_induced_graph(path, g)
    back = read_induced_graph(path)
    assert back.wnids == g.wnids and np.array_equal(back.edges, EDGES) and np.allclose(back.vectors, g.vectors)

    bad = json.loads(path.read_text())
    bad["edges"].append([0, 6])
    path.write_text(json.dumps(bad))
    with pytest.raises(ZskError, match=r"g\.json.*outside 0\.\.5"):
        read_induced_graph(path)
    bad["edges"].pop()
    bad["vectors"] = bad["vectors"][:5]
    path.write_text(json.dumps(bad))
    with pytest.raises(ZskError, match="one vector per wnid"):
        read_induced_graph(path)
    path.write_text("{not json")
    with pytest.raises(ZskError, match="not valid JSON"):
        read_induced_graph(path)
    with pytest.raises(ZskError, match="not found"):
        read_induced_graph(tmp_path / "missing.json")


def test_dense_grouped_graph_round_trip(tmp_path: Path) -> None:
    g = KnowledgeGraph(wnids=list("abcdef"), edges=EDGES, vectors=np.eye(6, dtype=np.float32))
    groups = ancestor_groups(6, EDGES)
    write_dense_grouped_graph(tmp_path / "d.json", g, groups)
    back, back_groups = read_dense_grouped_graph(tmp_path / "d.json")
    assert back.wnids == g.wnids
    assert [as_set(x) for x in back_groups] == [as_set(x) for x in groups]
    assert as_set(back.edges) == as_set(EDGES)


def test_edge_list(tmp_path: Path) -> None:
    p = tmp_path / "edges.txt"
    p.write_text("# a comment\nroot\ndog\tanimal\ncat animal  # trailing comment\nanimal root\n\n")
    ids, edges = read_edge_list(p)
    assert ids == ["root", "dog", "animal", "cat"]
    named = {(ids[c], ids[q]) for c, q in edges}
    assert named == {("dog", "animal"), ("cat", "animal"), ("animal", "root")}
    p.write_text("a b c\n")
    with pytest.raises(ZskError, match=r"edges\.txt:1"):
        read_edge_list(p)
    p.write_text("a a\n")
    with pytest.raises(ZskError, match="its own parent"):
        read_edge_list(p)


def test_read_names(tmp_path: Path) -> None:
    p = tmp_path / "words.txt"
    p.write_text("n01440764\ttench, Tinca tinca\nn01443537\tgoldfish\n")
    assert read_names(p) == {"n01440764": ["tench", "Tinca tinca"], "n01443537": ["goldfish"]}
    p.write_text("n01440764 tench\n")
    with pytest.raises(ZskError, match="wnid<TAB>name"):
        read_names(p)


# ----------------------------------------------------------------------------- a tiny WordNet corpus

# (offset key, lemma names, hypernym keys); the data file's byte offsets are computed when writing
SYNSETS = {
    "entity": (["entity"], []),
    "animal": (["animal", "beast"], ["entity"]),
    "pet": (["pet"], ["entity"]),
    "canine": (["canine"], ["animal"]),
    "dog": (["dog", "domestic_dog"], ["canine", "pet"]),
    "wolf": (["wolf"], ["canine"]),
    "cat": (["cat"], ["animal", "pet"]),
}


def write_wordnet(root: Path) -> dict[str, str]:
    """Write a WordNet 3.0-format noun database (nltk layout: <root>/corpora/wordnet/); returns name->wnid."""
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True)
    header = "  1 This is a tiny test database in the WordNet format.\n"
    # two passes: offsets depend on line lengths, which depend on 8-digit offsets (fixed width)
    offsets = {name: 0 for name in SYNSETS}
    for _ in range(2):
        lines, pos = [], len(header.encode())
        for name, (lemmas, hypers) in SYNSETS.items():
            offsets[name] = pos
            ptrs = " ".join(f"@ {offsets[h]:08d} n 0000" for h in hypers)
            words = " ".join(f"{lemma} 0" for lemma in lemmas)
            line = f"{pos:08d} 03 n {len(lemmas):02x} {words} {len(hypers):03d} {ptrs}".replace("  ", " ")
            line = line.rstrip() + f" | the {name} gloss\n"
            lines.append(line)
            pos += len(line.encode())
    (folder / "data.noun").write_text(header + "".join(lines))
    index: dict[str, list[int]] = {}
    for name, (lemmas, _) in SYNSETS.items():
        for lemma in lemmas:
            index.setdefault(lemma.lower(), []).append(offsets[name])
    (folder / "index.noun").write_text(header + "".join(
        f"{lemma} n {len(offs)} 0 {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}\n"
        for lemma, offs in sorted(index.items())))
    (folder / "lexnames").write_text("00\tadj.all\t3\n01\tadj.pert\t3\n02\tadv.all\t4\n03\tnoun.Tops\t1\n")
    for pos in ("verb", "adj", "adv"):
        (folder / f"data.{pos}").write_text("")
        (folder / f"index.{pos}").write_text("")
    for pos in ("noun", "verb", "adj", "adv"):
        (folder / f"{pos}.exc").write_text("")
    (folder / "index.sense").write_text("")
    return {name: f"n{offsets[name]:08d}" for name in SYNSETS}


@pytest.fixture
def tiny_wordnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    import nltk

    wnids = write_wordnet(tmp_path / "nltk_data")
    monkeypatch.setattr(nltk.data, "path", [])  # only what the test passes is searched
    return tmp_path / "nltk_data", wnids


def test_wordnet_induction_order_edges_and_lemmas(tiny_wordnet: tuple[Path, dict[str, str]]) -> None:
    root, w = tiny_wordnet
    graph, lemmas = induce_wordnet_graph([w["dog"], w["cat"]], [w["wolf"]], nltk_data=root)
    name = {v: k for k, v in w.items()}
    # train, test, then hypernyms in BFS order (dog: canine, pet; cat: animal; wolf: -; canine: animal; ...)
    assert [name[x] for x in graph.wnids] == ["dog", "cat", "wolf", "canine", "pet", "animal", "entity"]
    edges = {(name[graph.wnids[c]], name[graph.wnids[p]]) for c, p in graph.edges}
    assert edges == {("dog", "canine"), ("dog", "pet"), ("cat", "animal"), ("cat", "pet"), ("wolf", "canine"),
                     ("canine", "animal"), ("pet", "entity"), ("animal", "entity")}
    assert lemmas[0] == ["dog", "domestic_dog"] and lemmas[5] == ["animal", "beast"]


def test_wordnet_induction_stops_at_xml_nodes(tiny_wordnet: tuple[Path, dict[str, str]]) -> None:
    root, w = tiny_wordnet
    name = {v: k for k, v in w.items()}
    # canine is an xml node: the BFS does not climb past it from dog/wolf; entity is appended as an xml node
    graph, _ = induce_wordnet_graph([w["dog"]], [w["wolf"]], xml_wnids=[w["canine"], w["entity"]], nltk_data=root)
    assert [name[x] for x in graph.wnids] == ["dog", "wolf", "canine", "pet", "entity"]
    edges = {(name[graph.wnids[c]], name[graph.wnids[p]]) for c, p in graph.edges}
    assert ("canine", "animal") not in edges and ("pet", "entity") in edges
    assert edges == {("dog", "canine"), ("dog", "pet"), ("wolf", "canine"), ("pet", "entity")}


def test_wordnet_bad_wnid(tiny_wordnet: tuple[Path, dict[str, str]]) -> None:
    root, w = tiny_wordnet
    with pytest.raises(ZskError, match="not a WordNet id"):
        induce_wordnet_graph(["dog"], [], nltk_data=root)


def test_missing_wordnet_corpus_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(ZskError, match=r"nltk\.downloader wordnet"):
        load_wordnet()
