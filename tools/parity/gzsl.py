"""Parity of zsk's gzsl task with DGP's official code (yinboc/DGP, Kampffmeyer et al. CVPR 2019).

    python tools/parity/gzsl.py --official /path/to/DGP [--save tests/parity/gzsl] [--wordnet /usr/share/wordnet]

Imports the official modules from the checkout (models/, utils.py, evaluate_*.py, materials/*.py), builds
both sides with the same weights and seeded inputs, and prints component | max abs diff | verdict. With
WordNet 3.0 installed (Debian: wordnet-base + wordnet-sense-index) it also runs the official graph induction
on DGP's own imagenet-split.json / imagenet-xml-wnids.json and compares zsk's make-graph node for node and
edge for edge. It also runs materials/glove.py's GloVe lookup on a synthetic GloVe file and measures
bf16 autocast against fp32 on DGP (CPU).
"""

from __future__ import annotations

import json
import runpy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402
import gzsl_shims  # noqa: E402

N_IN, N_HID, N_OUT = 50, 32, 33  # small widths (the paper: 300 -> 2048 -> 2049)


def small_graph(seed: int) -> tuple[int, np.ndarray, int]:
    """The zsk sample hierarchy (49 nodes, multiple inheritance, 12 seen classes first)."""
    from zsk.tasks.gzsl.data import write_sample

    tmp = Path(tempfile.mkdtemp())
    write_sample(tmp, seed=seed)
    g = json.loads((tmp / "imagenet-induced-graph.json").read_text())
    seen = len(json.loads((tmp / "imagenet-split.json").read_text())["train"])
    n, edges = len(g["wnids"]), [tuple(e) for e in g["edges"]]
    # three ancestors above the root, so that every DGP distance group (0, 1, 2, 3, >= 4) is populated
    root = next(i for i in range(n) if i not in {c for c, _ in edges})
    edges += [(root, n), (n, n + 1), (n + 1, n + 2)]
    return n + 3, np.asarray(edges, dtype=np.int64), seen


def run_official_script(script: Path, workdir: Path, argv: list[str]) -> None:
    """Run one of the official materials/*.py scripts (they are top-level code) inside ``workdir``."""
    import os

    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [str(script), *argv]
    os.chdir(workdir)
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)


def compare_step(rep: common.Report, name: str, off_model: torch.nn.Module, ours: torch.nn.Module,
                 pairs: list[tuple[str, str, bool]], x: torch.Tensor, ops: object, target: torch.Tensor,
                 seen: int, seed: int) -> None:
    """Train-mode forward (same dropout masks from the same seed), the l2 loss, the gradients and one Adam
    step with weight decay on both sides."""
    from zsk.core.trainer import TrainConfig, build_optimizer
    from zsk.tasks.gzsl.losses import classifier_l2_loss

    off_params = dict(off_model.named_parameters())
    our_params = dict(ours.named_parameters())
    off_model.train(), ours.train()
    torch.manual_seed(seed)
    out_off = off_model(x)
    torch.manual_seed(seed)
    out_our = ours(x, ops)
    rep.compare(f"{name} forward (train mode, dropout)", out_our, out_off)
    util = sys.modules["utils"]
    loss_off = util.l2_loss(out_off[list(range(seen))], target)
    loss_our = classifier_l2_loss(out_our[:seen], target)
    rep.compare(f"{name} loss l2 (utils.l2_loss)", loss_our, loss_off)
    opt_off = torch.optim.Adam(off_model.parameters(), lr=1e-3, weight_decay=5e-4)
    opt_our = build_optimizer([{"params": list(ours.parameters())}], TrainConfig(optimizer="adam", lr=1e-3,
                                                                               weight_decay=5e-4, epochs=1))
    opt_off.zero_grad(), opt_our.zero_grad()
    loss_off.backward(), loss_our.backward()
    def ours_like(v: torch.Tensor, ref: torch.Tensor, t: bool) -> torch.Tensor:
        return v.T if t else v[: ref.shape[0]] if v.shape != ref.shape else v

    grad = max(common.max_abs_diff(ours_like(our_params[b].grad, off_params[a], t), off_params[a].grad)
               for a, b, t in pairs)
    rep.rows.append((f"{name} grads (every parameter)", grad, "equal" if grad <= common.TOL else "DIFFERENT"))
    rep.keep(f"{name}/grad_first", off_params[pairs[0][0]].grad.clone())
    opt_off.step(), opt_our.step()
    step = max(common.max_abs_diff(ours_like(our_params[b].detach(), off_params[a], t), off_params[a])
               for a, b, t in pairs)
    rep.rows.append((f"{name} params after one Adam step (wd 5e-4)", step,
                     "equal" if step <= common.TOL else "DIFFERENT"))


def copy_weights(off_model: torch.nn.Module, ours: torch.nn.Module, pairs: list[tuple[str, str, bool]],
                 gen: torch.Generator, rep: common.Report | None = None, name: str = "") -> None:
    """Random official weights (attention too), copied into zsk (``t``: transpose w (in,out) -> (out,in))."""
    off = dict(off_model.named_parameters())
    our = dict(ours.named_parameters())
    with torch.no_grad():
        for a, b, t in pairs:
            off[a].copy_(torch.randn(off[a].shape, generator=gen) * 0.2)
            if rep is not None:
                rep.keep(f"{name}/weights/{a}", off[a].detach().clone())  # a copy: the step updates in place
            if our[b].shape != off[a].shape and not t:  # zsk keeps max_distance + 1 distance weights
                our[b][: off[a].shape[0]].copy_(off[a])
            else:
                our[b].copy_(off[a].T if t else off[a])


def models(rep: common.Report, seed: int) -> None:
    from zsk.data.graphs import ancestor_groups
    from zsk.tasks.gzsl.config import Config, ModelConfig
    from zsk.tasks.gzsl.train import build_gnn, operators_for

    gcn_mod = __import__("models.gcn", fromlist=["GCN"])
    dense_mod = __import__("models.gcn_dense", fromlist=["GCN_Dense"])
    att_mod = __import__("models.gcn_dense_att", fromlist=["GCN_Dense_Att"])
    n, edges, seen = small_graph(seed)
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, N_IN, generator=gen))
    target = F.normalize(torch.randn(seen, N_OUT, generator=gen))
    rep.keep("inputs/x", x), rep.keep("inputs/target", target), rep.keep("inputs/edges", edges)
    groups = ancestor_groups(n, edges)

    # DGP (train_gcn_dense_att.py): groups 0..3 and >= 4
    lim = 4
    edges_set = [g.tolist() for g in groups]
    for i in range(lim + 1, len(edges_set)):
        edges_set[lim].extend(edges_set[i])
    edges_set = edges_set[: lim + 1]
    off = att_mod.GCN_Dense_Att(n, edges_set, N_IN, N_OUT, f"d{N_HID},d")
    cfg = Config(model=ModelConfig(name="dgp", hidden=[N_HID]))
    ours = build_gnn(cfg, N_IN, N_OUT)
    pairs = [("conv1.w", "descendant_phase.linear.weight", True), ("conv1.b", "descendant_phase.linear.bias", False),
             ("conv-last.w", "ancestor_phase.linear.weight", True), ("conv-last.b", "ancestor_phase.linear.bias", False),
             ("a_att", "descendant_phase.distance_weights", False), ("r_att", "ancestor_phase.distance_weights", False)]
    copy_weights(off, ours, pairs, gen, rep, "DGP")
    ops = operators_for(cfg, n, edges, groups)
    off.eval(), ours.eval()
    rep.compare("DGP forward (eval)", ours(x, ops), off(x))
    rep.compare("DGP parameter count", sum(p.numel() for p in ours.parameters()),
                sum(p.numel() for p in off.parameters()))
    compare_step(rep, "DGP", off, ours, pairs, x, ops, target, seen, seed)

    # GCN_Dense (train_gcn_dense.py): every (node, ancestor) pair, make_dense_graph.py's edges
    dense_edges = [p for g in groups for p in g.tolist()]
    off = dense_mod.GCN_Dense(n, dense_edges, N_IN, N_OUT, f"d{N_HID},d")
    cfg = Config(model=ModelConfig(name="gcn_dense", hidden=[N_HID]))
    ours = build_gnn(cfg, N_IN, N_OUT)
    pairs = [("conv1.w", "descendant_phase.linear.weight", True), ("conv1.b", "descendant_phase.linear.bias", False),
             ("conv-last.w", "ancestor_phase.linear.weight", True), ("conv-last.b", "ancestor_phase.linear.bias", False)]
    copy_weights(off, ours, pairs, gen, rep, "GCN_Dense")
    ops = operators_for(cfg, n, edges, groups)
    off.eval(), ours.eval()
    rep.compare("GCN_Dense forward (eval)", ours(x, ops), off(x))
    rep.compare("GCN_Dense parameter count (trainable)", sum(p.numel() for p in ours.parameters() if p.requires_grad),
                sum(p.numel() for p in off.parameters()))
    compare_step(rep, "GCN_Dense", off, ours, pairs, x, ops, target, seen, seed)

    # SGCN (train_gcn_basic.py): symmetric edges plus self-loops
    sym = edges.tolist() + [(v, u) for u, v in edges.tolist()] + [(u, u) for u in range(n)]
    off = gcn_mod.GCN(n, sym, N_IN, N_OUT, f"d{N_HID},d")
    cfg = Config(model=ModelConfig(name="sgcn", hidden=[N_HID]))
    ours = build_gnn(cfg, N_IN, N_OUT)
    pairs = [("conv1.w", "layers.0.linear.weight", True), ("conv1.b", "layers.0.bias", False),
             ("conv-last.w", "layers.1.linear.weight", True), ("conv-last.b", "layers.1.bias", False)]
    copy_weights(off, ours, pairs, gen, rep, "SGCN")
    ops = operators_for(cfg, n, edges, groups)
    off.eval(), ours.eval()
    rep.compare("SGCN forward (eval)", ours(x, ops), off(x))
    rep.compare("SGCN parameter count", sum(p.numel() for p in ours.parameters()),
                sum(p.numel() for p in off.parameters()))
    compare_step(rep, "SGCN", off, ours, pairs, x, ops, target, seen, seed)
    rep.note("GCNZ model and loss", "not compared: the GCNZ code is TensorFlow 1 (JudyYe/zero-shot-gcn); "
             "its layers, D^-1/2(A+I)D^-1/2, row-sum inputs and (N/M)^2/2 loss are pinned by unit tests")


def schedule(rep: common.Report) -> None:
    """train_gcn_*.py: constant Adam lr 1e-3 for 3000 epochs, one step per epoch."""
    from zsk.core.recipe import load_recipe, parse_config
    from zsk.core.trainer import lr_factor
    from zsk.tasks.gzsl.config import Config

    cfg = parse_config(Config, load_recipe("gzsl/imagenet_dgp")).train
    ours = [cfg.lr * lr_factor(t, cfg.epochs, cfg) for t in range(cfg.epochs)]
    rep.compare("LR schedule (3000 epochs, DGP recipe)", np.asarray(ours), np.full(3000, 1e-3), keep=False)


def metrics(rep: common.Report, seed: int) -> None:
    """evaluate_imagenet.py / evaluate_awa2.py test_on_subset on the same features and classifiers."""
    from zsk.tasks.gzsl.metrics import HitAtK, append_bias_input, candidate_indices, per_class_top1

    ev_in = __import__("evaluate_imagenet")
    ev_awa = __import__("evaluate_awa2")
    gen = torch.Generator().manual_seed(seed + 1)
    n_train, n_test, per, d = 20, 15, 6, 16
    pred = F.normalize(torch.randn(n_train + n_test, d + 1, generator=gen))
    feats = torch.randn(n_test, per, d, generator=gen)
    rep.keep("metrics/pred", pred), rep.keep("metrics/feats", feats)
    identity = torch.nn.Identity()
    for gzsl in (False, True):
        off_hits = torch.zeros(5)
        tot = 0
        for c in range(n_test):
            ds = [(feats[c, i], 0) for i in range(per)]
            h, t = ev_in.test_on_subset(ds, identity, n_train, pred, n_train + c, consider_trains=gzsl)
            off_hits += h.cpu()
            tot += t
        cand = candidate_indices(list(range(n_train, n_train + n_test)), list(range(n_train)), gzsl)
        pos = {int(ci): k for k, ci in enumerate(cand)}
        hits = HitAtK([1, 2, 5, 10, 20])
        f = append_bias_input(feats.reshape(-1, d), d + 1)
        labels = torch.tensor([pos[n_train + c] for c in range(n_test) for _ in range(per)])
        hits.update(f @ pred[torch.from_numpy(cand)].T, labels)
        ours = hits.compute()
        rep.compare(f"hit@1/2/5/10/20 ({'GZSL +train' if gzsl else 'ZSL'}, evaluate_imagenet.py)",
                    np.asarray([ours[f"hit@{k}"] for k in (1, 2, 5, 10, 20)]), (off_hits / tot).numpy())
        accs = []
        for c in range(n_test):
            ds = [(feats[c, i], 0) for i in range(per)]
            hit, t = ev_awa.test_on_subset(ds, identity, n_train, pred, n_train + c, gzsl)
            accs.append(hit / t)
        scores = f @ pred[torch.from_numpy(cand)].T
        ours_top1 = per_class_top1(scores.argmax(1), labels, len(cand))
        rep.compare(f"AwA2 mean per-class top-1 ({'GZSL +train' if gzsl else 'ZSL'}, evaluate_awa2.py)",
                    ours_top1, float(np.mean(accs)))


def readers(rep: common.Report, official: Path, seed: int) -> None:
    """Files in the official layout: process_resnet.py's fc-weights.json, make_dense(_grouped)_graph.py's
    output, and an induced graph with raw (unnormalised) vectors, read as the official trainers do."""
    from zsk.tasks.gzsl.config import Config, DataConfig
    from zsk.tasks.gzsl.data import load_graph_data, load_targets, write_sample

    tmp = Path(tempfile.mkdtemp())
    write_sample(tmp, seed=seed)
    g = json.loads((tmp / "imagenet-induced-graph.json").read_text())
    gen = torch.Generator().manual_seed(seed + 2)
    g["vectors"] = (torch.randn(len(g["wnids"]), N_IN, generator=gen) * 0.4).tolist()  # raw GloVe-like means
    (tmp / "imagenet-induced-graph.json").write_text(json.dumps(g))
    split = json.loads((tmp / "imagenet-split.json").read_text())
    raw = {"fc.weight": torch.randn(len(split["train"]), N_OUT - 1, generator=gen),
           "fc.bias": torch.randn(len(split["train"]), generator=gen), "conv1.weight": torch.zeros(1)}
    torch.save(raw, tmp / "resnet50-raw.pth")
    run_official_script(official / "materials" / "process_resnet.py", tmp, [])
    run_official_script(official / "materials" / "make_dense_grouped_graph.py", tmp, [])
    fcfile = json.loads((tmp / "fc-weights.json").read_text())
    off_fc = F.normalize(torch.tensor([r[1] for r in fcfile]))
    off_x = F.normalize(torch.tensor(g["vectors"]))
    cfg = Config(data=DataConfig(root=str(tmp), names=None, dense_graph="imagenet-dense-grouped-graph.json"))
    data = load_graph_data(cfg)
    rep.keep("reader/raw_vectors", np.asarray(g["vectors"], dtype=np.float32))
    rep.compare("reader: graph vectors, F.normalize on load (train_gcn_*.py)", data.vectors, off_x)
    rep.compare("reader: fc-weights.json [wnid, [w, b]] -> targets (process_resnet.py)",
                load_targets(cfg, data, None), off_fc)
    dense = json.loads((tmp / "imagenet-dense-grouped-graph.json").read_text())
    same = all(np.asarray(a).reshape(-1, 2).tolist() == b for a, b in zip(data.groups, dense["edges_set"], strict=True))
    rep.compare("reader: dense grouped graph (make_dense_grouped_graph.py), pairs in order",
                float(not same and len(data.groups) == len(dense["edges_set"])), 0.0, keep=False)
    from zsk.data.graphs import ancestor_groups
    ours = ancestor_groups(data.graph.num_nodes, data.graph.edges)
    same = len(ours) == len(dense["edges_set"]) and all(a.tolist() == b for a, b in zip(ours, dense["edges_set"],
                                                                                          strict=True))
    rep.compare("make-graph: dense groups == make_dense_grouped_graph.py (pair for pair)", float(not same), 0.0,
                keep=False)
    split_file = official / "materials" / "imagenet-split.json"
    from zsk.tasks.gzsl.data import read_split, read_testsets
    sp = read_split(split_file)
    off_split = json.loads(split_file.read_text())
    ok = sp.train == off_split["train"] and sp.test == off_split["test"]
    ts = read_testsets(official / "materials" / "imagenet-testsets.json")
    ok = ok and ts == json.loads((official / "materials" / "imagenet-testsets.json").read_text())
    rep.compare("reader: imagenet-split.json / imagenet-testsets.json (DGP's own)", float(not ok), 0.0, keep=False)


def wordnet_graph(rep: common.Report, official: Path, wordnet: Path | None) -> dict:
    """make_induced_graph.py (its functions, without the GloVe step) against zsk's induction on WordNet 3.0."""
    if wordnet is None or not (wordnet / "data.noun").is_file():
        rep.note("make-graph on WordNet 3.0 (make_induced_graph.py)", "not run: no WordNet 3.0 (--wordnet DIR)")
        return {}
    import nltk

    from zsk.data.graphs import induce_wordnet_graph

    nltk_dir = gzsl_shims.write_nltk_wordnet(Path(tempfile.mkdtemp()), wordnet)
    nltk.data.path.insert(0, str(nltk_dir))
    gzsl_shims.stub_glove()
    mig = __import__("make_induced_graph")
    mat = official / "materials"
    xml_wnids = json.loads((mat / "imagenet-xml-wnids.json").read_text())
    js = json.loads((mat / "imagenet-split.json").read_text())
    t0 = time.time()
    with gzsl_shims.sorted_hypernyms():
        xml_nodes = list(map(mig.getnode, xml_wnids))
        s = list(map(mig.getnode, js["train"] + js["test"]))
        mig.induce_parents(s, set(xml_nodes))
        s_set = set(s)
        s += [u for u in xml_nodes if u not in s_set]
        off_wnids = list(map(mig.getwnid, s))
        off_edges = [list(e) for e in mig.getedges(s)]
    t1 = time.time()
    graph, _ = induce_wordnet_graph(js["train"], js["test"], xml_wnids, nltk_dir)
    t2 = time.time()
    ours_edges = graph.edges.tolist()
    figures = {"official_nodes": len(off_wnids), "official_edges": len(off_edges), "zsk_nodes": graph.num_nodes,
               "zsk_edges": len(ours_edges), "nodes_equal_in_order": graph.wnids == off_wnids,
               "edges_equal_in_order": ours_edges == off_edges, "official_s": round(t1 - t0, 1),
               "zsk_s": round(t2 - t1, 1)}
    rep.compare(f"make-graph WordNet 3.0: nodes ({graph.num_nodes} vs official {len(off_wnids)}), in order",
                float(graph.wnids != off_wnids), 0.0, keep=False)
    rep.compare(f"make-graph WordNet 3.0: edges ({len(ours_edges)} vs official {len(off_edges)}), in order",
                float(ours_edges != off_edges), 0.0, keep=False)
    return {"wordnet_graph": figures}


def main() -> None:
    p = common.parser(__doc__.splitlines()[1])
    p.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"),
                   help="WordNet 3.0 database folder (data.noun, ...) for the make-graph comparison.")
    args = p.parse_args()
    root = common.add_official(args.official, "materials")
    common.cpu_shims()
    gzsl_shims.torch_shims()
    torch.manual_seed(args.seed)
    rep = common.Report("gzsl", common.official_commit(root))
    models(rep, args.seed)
    schedule(rep)
    metrics(rep, args.seed)
    readers(rep, root, args.seed)
    transforms(rep, args.seed)
    glove_lookup(rep, root)
    bf16_autocast(rep, args.seed)
    rep.note("finetune augmentation (RandomResizedCrop 224, flip)", "not compared: random; zsk draws its own crops "
             "(same distribution, different RNG stream)")
    rep.note("--keep-ratio subset", "not compared: the official random.shuffle stream; the count max(1, round(n r)) "
             "is the same")
    extra = wordnet_graph(rep, root, args.wordnet if args.wordnet.exists() else None)
    rep.print()
    rep.save(args.save, extra={"n_in": N_IN, "n_hidden": N_HID, "n_out": N_OUT, **extra})
    sys.exit(0 if rep.ok else 1)


GLOVE_TEXT = """the 0.1 0.2 0.3 0.4
dog 1 0 0 0.5
Dog -1 2 0 0
cat 0 1 0 0
persian 0.3 0.3 0.3 0
hot 1 1 0 0
hot_dog 0 0 1 0
ice 0 0.5 0 2
cream 2 0 1 0
sea 0 0 0 1
Lion -0.5 0.5 1 1
tiger 0.25 -1 0 3
"""
GLOVE_LEMMAS = [["dog"], ["Dog", "domestic_dog"], ["Persian_cat"], ["hot_dog", "red_hot"], ["ice-cream"],
                ["sea-lion", "Lion"], ["tiger_cat", "Bengal-tiger"], ["missing", "Unknown_word"],
                ["hot__dog"], ["cat", "cat-"]]


def glove_lookup(rep: common.Report, official: Path) -> None:
    """materials/glove.py (its GloVe class, imported from the checkout) against zsk's node vectors on a
    synthetic GloVe file: mixed-case words, whole multi-word lemmas, '-' sub-words, missing words."""
    import importlib.util

    from zsk.data.embeddings import embed_synsets, read_glove
    from zsk.tasks.gzsl.word_vectors import embed_lemmas

    spec = importlib.util.spec_from_file_location("dgp_official_glove", official / "materials" / "glove.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "glove.synthetic.4d.txt"
        path.write_text(GLOVE_TEXT)
        glove = mod.GloVe(str(path))
        wv = read_glove(path)
    off = torch.stack([glove[lemmas] for lemmas in GLOVE_LEMMAS])
    rep.keep("glove/text", np.asarray(GLOVE_TEXT))
    rep.keep("glove/lemmas", np.asarray(["|".join(lemmas) for lemmas in GLOVE_LEMMAS]))
    rep.compare("GloVe lookup of lemma lists (materials/glove.py, case kept)",
                embed_lemmas(wv, GLOVE_LEMMAS, normalize=False), off)
    lower = common.max_abs_diff(embed_lemmas(wv, GLOVE_LEMMAS, case="lower", normalize=False), off)
    old = common.max_abs_diff(embed_synsets(wv, GLOVE_LEMMAS, normalize=False), off)
    rep.rows.append(("GloVe lookup, model.lemma_case: lower (zsk option)", lower,
                     f"measured: differs on mixed-case lemmas (before issue 11 the default: {old:.3g})"))


def bf16_autocast(rep: common.Report, seed: int) -> None:
    """DGP (zsk's model, train mode without dropout) under CPU bf16 autocast against fp32: the forward, the
    l2 loss (utils.l2_loss's formula) and the gradients; relative = max abs diff / max abs fp32 value."""
    from zsk.data.graphs import ancestor_groups
    from zsk.tasks.gzsl.config import Config, ModelConfig
    from zsk.tasks.gzsl.losses import classifier_l2_loss
    from zsk.tasks.gzsl.train import build_gnn, operators_for

    n, edges, seen = small_graph(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = F.normalize(torch.randn(n, N_IN, generator=gen))
    target = F.normalize(torch.randn(seen, N_OUT, generator=gen))
    cfg = Config(model=ModelConfig(name="dgp", hidden=[N_HID], dropout=0.0))
    torch.manual_seed(seed)
    model = build_gnn(cfg, N_IN, N_OUT)
    ops = operators_for(cfg, n, edges, ancestor_groups(n, edges))
    model.train()

    def run(dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = model(x, ops)
            loss = classifier_l2_loss(out[:seen], target)
        loss.backward()
        return out.float().detach(), loss.float().detach(), [p.grad.clone() for p in model.parameters()]

    out32, loss32, g32 = run(None)
    out16, loss16, g16 = run(torch.bfloat16)

    def row(name: str, a, b) -> None:
        d = common.max_abs_diff(a, b)
        scale = float(np.max(np.abs(np.asarray(b.detach().numpy() if isinstance(b, torch.Tensor) else b))))
        rep.rows.append((name, d, f"measured: relative {d / max(scale, 1e-30):.2g} (bf16 unit roundoff 2^-8 = 3.9e-3)"))

    row("DGP forward, bf16 autocast vs fp32 (CPU)", out16, out32)
    row("DGP loss l2, bf16 autocast vs fp32 (CPU)", loss16, loss32)
    rel = max(common.max_abs_diff(a, b) / max(float(b.abs().max()), 1e-30) for a, b in zip(g16, g32, strict=True))
    d = max(common.max_abs_diff(a, b) for a, b in zip(g16, g32, strict=True))
    rep.rows.append(("DGP grads, bf16 autocast vs fp32 (CPU)", d,
                     f"measured: relative {rel:.2g} (worst parameter)"))


def transforms(rep: common.Report, seed: int) -> None:
    """The evaluation preprocessing of datasets/imagenet.py and image_folder.py (stage 'test')."""
    import torchvision.transforms as T
    from PIL import Image

    from zsk.tasks.gzsl.data import eval_transform

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (300, 370, 3), dtype=np.uint8))
    off = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])(img)
    rep.keep("transform/image", np.asarray(img))
    rep.compare("eval transform (Resize 256, CenterCrop 224, normalise)", eval_transform(256, 224)(img), off)


if __name__ == "__main__":
    main()
