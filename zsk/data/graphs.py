"""Knowledge graphs in the DGP JSON formats, plain edge lists, WordNet induction, hop-distance groups.

Formats (Kampffmeyer et al., CVPR 2019, `materials/` of the reference code):

* induced graph JSON: ``{"wnids": [N], "vectors": [N x D], "edges": [[child, parent], ...]}``;
* dense grouped graph JSON: ``{"wnids", "vectors", "edges_set": [[[u, ancestor], ...] for d = 0, 1, ...]}``
  where group ``d`` holds the pairs whose (shortest) hop distance along hypernym edges is ``d``;
* edge list text: one ``child parent`` pair per line (whitespace or tab separated, ``#`` comments),
  for any hierarchy that is not WordNet.

Node indices in ``edges`` always point into ``wnids``.
"""

from __future__ import annotations

import json
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from zsk.core.errors import ZskError
from zsk.core.io import read_json


@dataclass
class KnowledgeGraph:
    """Nodes (wnids or any ids), their word vectors and directed ``(child, parent)`` edges."""

    wnids: list[str]
    edges: np.ndarray  # (E, 2) int64, [child, parent]
    vectors: np.ndarray | None = None  # (N, D) float32

    @property
    def num_nodes(self) -> int:
        return len(self.wnids)

    def index(self) -> dict[str, int]:
        """wnid -> node index."""
        return {w: i for i, w in enumerate(self.wnids)}


def _check_wnids(path: Path, wnids: Any) -> list[str]:
    if not isinstance(wnids, list) or not all(isinstance(w, str) for w in wnids):
        raise ZskError(f"{path}: 'wnids' must be a list of strings")
    if len(set(wnids)) != len(wnids):
        seen: set[str] = set()
        dup = next(w for w in wnids if w in seen or seen.add(w))  # type: ignore[func-returns-value]
        raise ZskError(f"{path}: wnid {dup!r} appears twice in 'wnids'")
    return wnids


def _check_vectors(path: Path, vectors: Any, n: int) -> np.ndarray | None:
    if vectors is None:
        return None
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise ZskError(f"{path}: 'vectors' must be a list of equally long lists of numbers") from None
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ZskError(f"{path}: 'vectors' has shape {arr.shape}, expected ({n}, D): one vector per wnid")
    if not np.isfinite(arr).all():
        raise ZskError(f"{path}: 'vectors' holds NaN or infinite values")
    return arr


def _check_pairs(path: Path, pairs: Any, n: int, key: str) -> np.ndarray:
    if not isinstance(pairs, list):
        raise ZskError(f"{path}: '{key}' must be a list of [child, parent] index pairs")
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    try:
        arr = np.asarray(pairs, dtype=np.int64)
    except (TypeError, ValueError):
        raise ZskError(f"{path}: '{key}' must be a list of [child, parent] index pairs") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ZskError(f"{path}: '{key}' must be a list of [child, parent] index pairs, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= n:
        raise ZskError(f"{path}: '{key}' has node index {int(arr.max()) if arr.max() >= n else int(arr.min())} "
                       f"outside 0..{n - 1} (the 'wnids' list has {n} entries)")
    return arr


def read_induced_graph(path: str | Path) -> KnowledgeGraph:
    """Read ``imagenet-induced-graph.json`` (or any graph in its format) and validate it."""
    path = Path(path)
    obj = read_json(path, "graph file")
    if not isinstance(obj, dict) or "wnids" not in obj or "edges" not in obj:
        raise ZskError(f"{path}: a graph file holds {{'wnids', 'vectors', 'edges'}}; "
                       f"found keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
    wnids = _check_wnids(path, obj["wnids"])
    vectors = _check_vectors(path, obj.get("vectors"), len(wnids))
    edges = _check_pairs(path, obj["edges"], len(wnids), "edges")
    return KnowledgeGraph(wnids=wnids, edges=edges, vectors=vectors)


def write_induced_graph(path: str | Path, graph: KnowledgeGraph) -> None:
    """Write a graph in the ``imagenet-induced-graph.json`` format."""
    obj = {"wnids": list(graph.wnids),
           "vectors": [] if graph.vectors is None else np.asarray(graph.vectors, dtype=np.float32).tolist(),
           "edges": np.asarray(graph.edges, dtype=np.int64).reshape(-1, 2).tolist()}
    if graph.vectors is None:
        obj.pop("vectors")
    Path(path).write_text(json.dumps(obj))


def read_dense_grouped_graph(path: str | Path) -> tuple[KnowledgeGraph, list[np.ndarray]]:
    """Read ``imagenet-dense-grouped-graph.json``: the nodes and one ``(u, ancestor)`` array per hop
    distance ``d`` (index 0 = the node itself)."""
    path = Path(path)
    obj = read_json(path, "dense graph file")
    if not isinstance(obj, dict) or "wnids" not in obj or "edges_set" not in obj:
        raise ZskError(f"{path}: a dense grouped graph holds {{'wnids', 'vectors', 'edges_set'}}; "
                       f"found keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
    wnids = _check_wnids(path, obj["wnids"])
    vectors = _check_vectors(path, obj.get("vectors"), len(wnids))
    if not isinstance(obj["edges_set"], list):
        raise ZskError(f"{path}: 'edges_set' must be a list (one list of pairs per hop distance)")
    groups = [_check_pairs(path, g, len(wnids), f"edges_set[{d}]") for d, g in enumerate(obj["edges_set"])]
    one_hop = groups[1] if len(groups) > 1 else np.zeros((0, 2), dtype=np.int64)
    return KnowledgeGraph(wnids=wnids, edges=one_hop, vectors=vectors), groups


def write_dense_grouped_graph(path: str | Path, graph: KnowledgeGraph, groups: Sequence[np.ndarray]) -> None:
    """Write the ``imagenet-dense-grouped-graph.json`` format (all hop distances, unmerged)."""
    obj = {"wnids": list(graph.wnids),
           "vectors": [] if graph.vectors is None else np.asarray(graph.vectors, dtype=np.float32).tolist(),
           "edges_set": [np.asarray(g, dtype=np.int64).reshape(-1, 2).tolist() for g in groups]}
    if graph.vectors is None:
        obj.pop("vectors")
    Path(path).write_text(json.dumps(obj))


def read_edge_list(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a ``child parent`` edge list; nodes are numbered in order of first appearance."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ZskError(f"edge list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZskError(f"cannot read edge list {path}: {e}") from None
    ids: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) == 1:  # a node without a parent (a root)
            ids.setdefault(parts[0], len(ids))
            continue
        if len(parts) != 2:
            raise ZskError(f"{path}:{lineno}: expected 'child parent', got {line!r}")
        child, parent = (ids.setdefault(p, len(ids)) for p in parts)
        if child == parent:
            raise ZskError(f"{path}:{lineno}: {parts[0]!r} is its own parent")
        pairs.append((child, parent))
    if not ids:
        raise ZskError(f"edge list {path} is empty: write one 'child parent' pair per line")
    edges = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return list(ids), np.unique(edges, axis=0) if len(edges) else edges


def parent_matrix(num_nodes: int, edges: np.ndarray) -> sp.csr_matrix:
    """Sparse boolean P with P[child, parent] = 1."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    data = np.ones(len(edges), dtype=bool)
    m = sp.csr_matrix((data, (edges[:, 0], edges[:, 1])), shape=(num_nodes, num_nodes), dtype=bool)
    m.sum_duplicates()
    return m


def ancestor_groups(num_nodes: int, edges: np.ndarray, max_hops: int | None = None) -> list[np.ndarray]:
    """All (node, ancestor) pairs grouped by shortest hop distance along child->parent edges.

    Group 0 is ``(u, u)``; group ``d`` holds ``(u, x)`` with x reachable from u in ``d`` hypernym steps
    and not fewer (multiple inheritance keeps the shortest path). The pairs come in the order of DGP's
    ``make_dense_grouped_graph.py``: node by node, each node's ancestors in breadth-first discovery order
    over the parents in edge-file order, so the written file equals the official one pair for pair.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    parents: list[list[int]] = [[] for _ in range(num_nodes)]
    for u, v in edges.tolist():
        parents[u].append(v)
    out: list[list[tuple[int, int]]] = [[]]
    for u in range(num_nodes):
        dist = {u: 0}
        queue = [u]
        head = 0
        while head < len(queue):
            x = queue[head]
            head += 1
            if max_hops is not None and dist[x] >= max_hops:
                continue
            for y in parents[x]:
                if y not in dist:
                    dist[y] = dist[x] + 1
                    queue.append(y)
        for x in queue:
            d = dist[x]
            while len(out) <= d:
                out.append([])
            out[d].append((u, x))
    return [np.asarray(g, dtype=np.int64).reshape(-1, 2) for g in out]


def merge_groups(groups: Sequence[np.ndarray], max_distance: int) -> list[np.ndarray]:
    """Keep groups 0..max_distance-1 and merge every distance >= ``max_distance`` into one last group
    (DGP trains with 5 groups: 0, 1, 2, 3, >=4). Always returns ``max_distance + 1`` groups (empty ones
    stay empty)."""
    if max_distance < 1:
        raise ZskError(f"model.max_distance must be >= 1, got {max_distance}")
    out = [np.asarray(groups[d]) if d < len(groups) else np.zeros((0, 2), dtype=np.int64) for d in range(max_distance)]
    tail = [np.asarray(g) for g in groups[max_distance:] if len(g)]
    out.append(np.concatenate(tail, axis=0) if tail else np.zeros((0, 2), dtype=np.int64))
    return [g.astype(np.int64).reshape(-1, 2) for g in out]


def undirected_hops(num_nodes: int, edges: np.ndarray, sources: Sequence[int]) -> np.ndarray:
    """Hop distance of every node to the nearest source in the undirected graph (-1 = unreachable).

    Used to form ImageNet-style test sets ("2-hops", "3-hops") around the seen classes.
    """
    p = parent_matrix(num_nodes, edges)
    adj = (p + p.T).tocsr()
    dist = np.full(num_nodes, -1, dtype=np.int64)
    frontier = np.unique(np.asarray(sources, dtype=np.int64))
    dist[frontier] = 0
    d = 0
    while frontier.size:
        d += 1
        nbrs = np.unique(adj[frontier].indices)
        nbrs = nbrs[dist[nbrs] < 0]
        dist[nbrs] = d
        frontier = nbrs
    return dist


# ----------------------------------------------------------------------------- WordNet


# the files nltk's WordNetCorpusReader opens (its _FILES, less cntlist.rev, which only Lemma.count() reads):
# lexnames, the adjective data and every index and exception file on construction, index.sense to map the
# corpus onto the "wordnet" version, the other data files on the first synset of their part of speech
WORDNET_FILES = ("lexnames", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb", "data.adj",
                 "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}  # wnid pos letter -> data.<pos>


def _pointer_name(root: Any) -> str:
    """A readable location of an nltk path pointer (a folder, or ``archive.zip/entry``)."""
    zipped = getattr(root, "zipfile", None)
    if zipped is not None:
        return f"{zipped.filename}/{getattr(root, 'entry', '')}".rstrip("/")
    return str(getattr(root, "path", root))


@contextmanager
def wordnet_errors(where: str, culprit: Callable[[], str | None] = lambda: None) -> Iterator[None]:
    """Turn any failure of nltk's WordNet reader on a user-supplied corpus (a file that is missing,
    unreadable or not in WordNet's format) into a ``ZskError`` naming the corpus folder and, when
    ``culprit()`` knows it, the file being read."""
    try:
        yield
    except ZskError:
        raise
    except FileNotFoundError as e:
        missing = Path(str(e.filename)).name if e.filename else str(e)
        raise ZskError(f"the WordNet corpus {where} has no file {missing}: reinstall it "
                       f"(python -m nltk.downloader wordnet)") from None
    except Exception as e:  # noqa: BLE001 - nltk's parser raises anything on a damaged corpus
        first = (str(e).splitlines() or [""])[0] or type(e).__name__
        name = culprit()
        what = f"its file {name} is damaged" if name else "it is damaged"
        raise ZskError(f"cannot read the WordNet corpus {where}: {what} or not in WordNet's format "
                       f"({type(e).__name__}: {first}): reinstall it (python -m nltk.downloader wordnet)") from None


def _nltk_data_folder(nltk_data: str | Path) -> str:
    """The folder to search for ``corpora/wordnet``: ``nltk_data`` itself, or, when it is the corpus folder
    ``.../corpora/wordnet``, the folder two levels up."""
    folder = Path(nltk_data).expanduser().resolve()
    if not folder.is_dir():
        raise ZskError(f"nltk data folder not found: {folder} (--nltk-data / model.nltk_data: the folder holding "
                       f"corpora/wordnet)")
    if (folder / "lexnames").is_file() or (folder / "data.noun").is_file():  # the corpus folder itself
        if folder.name == "wordnet" and folder.parent.name == "corpora":
            return str(folder.parent.parent)
        raise ZskError(f"{folder} looks like a WordNet corpus folder: nltk reads it as DIR/corpora/wordnet, so move it "
                       f"there and pass DIR (--nltk-data / model.nltk_data)")
    if not ((folder / "corpora" / "wordnet").is_dir() or (folder / "corpora" / "wordnet.zip").is_file()):
        raise ZskError(f"{folder} holds no corpora/wordnet (nor corpora/wordnet.zip): pass the folder that does "
                       f"(--nltk-data / model.nltk_data), or run python -m nltk.downloader -d {folder} wordnet")
    return str(folder)


def load_wordnet(nltk_data: str | Path | None = None) -> Any:
    """nltk's WordNet reader; ``nltk_data`` is an extra search folder (holding ``corpora/wordnet``).

    Missing nltk or corpus -> ZskError saying how to install it; a corpus that lacks one of the files the
    reader opens (:data:`WORDNET_FILES`) or fails to parse -> ZskError naming the folder and the file.
    """
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise ZskError("building a WordNet graph needs nltk: pip install nltk") from None
    searches: list[list[str] | None] = [None]
    if nltk_data is not None:
        folder = _nltk_data_folder(nltk_data)
        if folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)
        searches.insert(0, [folder])  # the folder given wins over an installed corpus
    root = None
    for paths in searches:
        for name in ("corpora/wordnet.zip/wordnet/", "corpora/wordnet"):
            try:
                root = nltk.data.find(name, paths=paths)
                break
            except LookupError:
                continue
        if root is not None:
            break
    if root is None:
        raise ZskError("nltk's WordNet corpus is not installed: run `python -m nltk.downloader wordnet` "
                       "(or copy it to a folder and pass --nltk-data DIR), or give a prebuilt graph JSON / "
                       "an edge list instead")
    where = _pointer_name(root)
    for fileid in WORDNET_FILES:
        try:
            root.join(fileid)
        except OSError:
            raise ZskError(f"the WordNet corpus {where} has no file {fileid}: reinstall it "
                           f"(python -m nltk.downloader wordnet)") from None
    class Reader(WordNetCorpusReader):
        """nltk's reader, remembering the last file it opened (to name the damaged one)."""

        def open(self, file: str) -> Any:
            self.zsk_last_file = file
            return super().open(file)

    wn = Reader.__new__(Reader)
    wn.zsk_last_file = None
    wn.zsk_location = where
    with warnings.catch_warnings(), wordnet_errors(where, lambda: wn.zsk_last_file):
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not used here
        wn.__init__(root, None)
    return wn


def wnid_to_synset(wn: Any, wnid: str) -> Any:
    """``n02084071`` -> the WordNet synset (pos letter + 8-digit offset)."""
    if len(wnid) != 9 or not wnid[1:].isdigit() or wnid[0] not in POS_FILES:
        raise ZskError(f"{wnid!r} is not a WordNet id (expected a pos letter and 8 digits, e.g. n02084071)")
    data_file = "data." + POS_FILES[wnid[0]]
    with warnings.catch_warnings(), wordnet_errors(getattr(wn, "zsk_location", "in use"), lambda: data_file):
        warnings.simplefilter("ignore")
        synset = wn.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
    if synset is None:
        raise ZskError(f"wnid {wnid} is not in the installed WordNet ({getattr(wn, 'zsk_location', 'nltk')})")
    return synset


def synset_to_wnid(synset: Any) -> str:
    """The wnid of a synset."""
    return f"{synset.pos()}{synset.offset():08d}"


def hypernyms(synset: Any) -> list[Any]:
    """A synset's hypernyms sorted by name. NLTK 3.9 returns them in the order of a Python set, which
    changes with PYTHONHASHSEED (so node order, and hence the graph, changed from run to run); NLTK
    3.5-3.8 sorted them by name (``Synset._related(..., sort=True)``), which this restores."""
    return sorted(synset.hypernyms(), key=lambda s: s.name())


def induce_wordnet_graph(train_wnids: Sequence[str], test_wnids: Sequence[str],
                         xml_wnids: Sequence[str] | None = None, nltk_data: str | Path | None = None
                         ) -> tuple[KnowledgeGraph, list[list[str]]]:
    """Induce the hypernym graph over the given wnids (DGP's `make_induced_graph.py`, spec "Graph construction").

    Node order: the train wnids (as given: they must follow the CNN's fc rows), then the test wnids,
    then the hypernyms met by a BFS that stops climbing at nodes of ``xml_wnids`` (ImageNet's
    structure_released.xml; climb to the root when None), then the remaining xml wnids. Edges are
    (child, hypernym) for every hypernym present in the node set. Returns the graph (no vectors) and
    each node's lemma names, for :func:`zsk.data.embeddings.embed_synsets`.
    """
    wn = load_wordnet(nltk_data)
    with wordnet_errors(wn.zsk_location):
        return _induce(wn, train_wnids, test_wnids, xml_wnids)


def _induce(wn: Any, train_wnids: Sequence[str], test_wnids: Sequence[str], xml_wnids: Sequence[str] | None
            ) -> tuple[KnowledgeGraph, list[list[str]]]:
    xml = set(xml_wnids or [])
    order: list[str] = []
    synsets: dict[str, Any] = {}

    def add(wnid: str, synset: Any) -> bool:
        if wnid in synsets:
            return False
        synsets[wnid] = synset
        order.append(wnid)
        return True

    for w in list(train_wnids) + list(test_wnids):
        add(w, wnid_to_synset(wn, w))
    queue = deque(order)
    while queue:
        wnid = queue.popleft()
        if wnid in xml:  # make_induced_graph.py's BFS never climbs from a stop-set node, seeds included
            continue
        for parent in hypernyms(synsets[wnid]):
            pid = synset_to_wnid(parent)
            if add(pid, parent):
                queue.append(pid)
    for w in xml_wnids or []:
        if w not in synsets:
            add(w, wnid_to_synset(wn, w))
    index = {w: i for i, w in enumerate(order)}
    # getedges: node by node, each node's hypernyms in nltk's order, kept when the hypernym is a node
    edges = [(index[w], index[pid]) for w in order
             for pid in (synset_to_wnid(p) for p in hypernyms(synsets[w])) if pid in index]
    lemmas = [list(synsets[w].lemma_names()) for w in order]
    return KnowledgeGraph(wnids=order, edges=np.asarray(edges, dtype=np.int64).reshape(-1, 2)), lemmas


def wordnet_lemma_names(wnids: Sequence[str], nltk_data: str | Path | None = None) -> list[list[str]]:
    """The lemma names of each wnid (for word vectors and human-readable predictions)."""
    wn = load_wordnet(nltk_data)
    with wordnet_errors(wn.zsk_location):
        return [list(wnid_to_synset(wn, w).lemma_names()) for w in wnids]


def read_names(path: str | Path) -> dict[str, list[str]]:
    """ImageNet's ``words.txt``: ``wnid<TAB>name, other name`` per line -> wnid -> names."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ZskError(f"names file not found: {path} (ImageNet's words.txt: 'wnid<TAB>name, name' per line)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZskError(f"cannot read names file {path}: {e}") from None
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ZskError(f"{path}:{lineno}: expected 'wnid<TAB>name, name', got {line!r}")
        wnid, names = line.split("\t", 1)
        out[wnid.strip()] = [n.strip() for n in names.split(",") if n.strip()]
    return out
