"""``zsk gzsl make-graph``: DGP's graph files from a split and WordNet (nltk) or a plain edge list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zsk.core.errors import ZskError
from zsk.core.io import atomic_path
from zsk.core.progress import log, warn
from zsk.data.embeddings import load_glove
from zsk.data.graphs import (
    KnowledgeGraph,
    ancestor_groups,
    induce_wordnet_graph,
    read_edge_list,
    read_names,
    write_dense_grouped_graph,
    write_induced_graph,
)
from zsk.tasks.gzsl.data import check_out_dir, read_split
from zsk.tasks.gzsl.word_vectors import embed_lemmas


def order_nodes(ids: list[str], edges: np.ndarray, first: list[str]) -> KnowledgeGraph:
    """Renumber an edge-list graph so that ``first`` (train then test wnids) come first, in that order,
    followed by the other nodes in file order (DGP's node order: fc rows first)."""
    rest = [i for i in ids if i not in set(first)]
    order = list(first) + rest
    pos = {w: k for k, w in enumerate(order)}
    remap = np.asarray([pos[w] for w in ids], dtype=np.int64)
    new_edges = remap[edges] if len(edges) else edges
    return KnowledgeGraph(wnids=order, edges=np.unique(new_edges, axis=0) if len(new_edges) else new_edges)


def build_graph_files(split: Path, out: Path, edges: Path | None = None, xml_wnids: Path | None = None,
                      glove: Path | None = None, names: Path | None = None,
                      nltk_data: Path | None = None, lemma_case: str = "keep") -> dict[str, Any]:
    """Write ``imagenet-induced-graph.json`` and ``imagenet-dense-grouped-graph.json`` under ``out``
    (node vectors looked up as ``materials/glove.py`` does; ``lemma_case="lower"`` folds case)."""
    check_out_dir(out)
    sp = read_split(split)
    first = sp.train + sp.test
    if edges is not None:
        if xml_wnids is not None:
            raise ZskError("--xml-wnids bounds the WordNet hypernym search; it does not apply to --edges")
        ids, e = read_edge_list(edges)
        known = set(ids)
        missing = [w for w in first if w not in known]
        if missing:
            raise ZskError(f"split wnid {missing[0]} of {split} is missing from the edge list {edges} "
                           f"({len(missing)} missing)")
        graph = order_nodes(ids, e, first)
        lemmas = [[w] for w in graph.wnids]
    else:
        xml = None
        if xml_wnids is not None:
            import json

            try:
                xml = json.loads(xml_wnids.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ZskError(f"cannot read {xml_wnids}: {err} (expected a JSON list of wnids)") from None
            if not isinstance(xml, list) or not all(isinstance(w, str) for w in xml):
                raise ZskError(f"{xml_wnids}: expected a JSON list of wnids")
        graph, lemmas = induce_wordnet_graph(sp.train, sp.test, xml, nltk_data)
    if names is not None:
        table = read_names(names)
        lemmas = [[n.replace(" ", "_") for n in table[w]] if w in table else lem
                  for w, lem in zip(graph.wnids, lemmas, strict=True)]
    if glove is not None:
        wv = load_glove(glove)
        graph.vectors = embed_lemmas(wv, lemmas, case=lemma_case)
        zero = int((np.abs(graph.vectors).sum(1) == 0).sum())
        if zero:
            warn(f"{zero} of {graph.num_nodes} nodes have no word in {glove}: their vector is zero")
    else:
        warn("no --glove given: the graph has no vectors; train with model.word_vectors=GLOVE_FILE")
    groups = ancestor_groups(graph.num_nodes, graph.edges)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "imagenet-induced-graph.json") as tmp:
            write_induced_graph(tmp, graph)
        with atomic_path(out / "imagenet-dense-grouped-graph.json") as tmp:
            write_dense_grouped_graph(tmp, graph, groups)
    except OSError as e:
        raise ZskError(f"cannot write the graph files under --out {out}: {e.strerror or e}") from None
    log(f"wrote {out / 'imagenet-induced-graph.json'} and {out / 'imagenet-dense-grouped-graph.json'}")
    return {"nodes": graph.num_nodes, "edges": int(len(graph.edges)), "train": len(sp.train), "test": len(sp.test),
            "edges_per_distance": [int(len(g)) for g in groups],
            "word_dim": None if graph.vectors is None else int(graph.vectors.shape[1]), "out": str(out)}
