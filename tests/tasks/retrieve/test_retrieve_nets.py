"""VSRN, SGR, SAF and the SGRAF ensemble: formulas against independent implementations written here, the
blocked pair scoring, caption labels on a hand-worked case, end to end through the CLI (train -> eval --json
-> eval --ensemble -> predict) and a learning test of the pairwise network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsk.metrics.retrieval import retrieval_metrics
from zsk.tasks.retrieve.cli import app
from zsk.tasks.retrieve.config import Config, ModelConfig
from zsk.tasks.retrieve.data import write_sample
from zsk.tasks.retrieve.losses import LossConfig
from zsk.tasks.retrieve.model import RankingLoss
from zsk.tasks.retrieve.model_sgraf import (
    AttentionFiltration,
    LocalCaptions,
    SimilarityNetwork,
    scan_attention,
    score_blocks,
)
from zsk.tasks.retrieve.model_vsrn import RsGCN, caption_targets
from zsk.tasks.retrieve.train import build_model, make_step_fn

runner = CliRunner()
TINY = ["--set", "model.embed_size=16", "--set", "model.word_dim=8", "--set", "model.sim_dim=8",
        "--set", "model.caption_hidden=8", "--set", "model.caption_word_dim=6", "--set", "model.caption_max_len=10",
        "--set", "train.batch_size=20", "--set", "eval.shard=7", "--set", "train.lr_update=0"]


def run(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}"
    return result


def tiny_cfg(base: str) -> Config:
    return Config(model=ModelConfig(base=base, img_dim=12, num_regions=4, embed_size=16, word_dim=8, sim_dim=8,
                                    caption_hidden=8, caption_word_dim=6, caption_max_len=6))


# ----------------------------------------------------------------------------- formulas


def test_rs_gcn_matches_a_written_out_graph_convolution() -> None:
    torch.manual_seed(0)
    gcn = RsGCN(6, 6).eval()
    torch.nn.init.normal_(gcn.W[1].weight)  # the zero-initialised BatchNorm would hide the graph term
    v = torch.randn(2, 6, 5)
    w = {k: p.detach() for k, p in gcn.named_parameters()}

    def conv(name: str, x: torch.Tensor) -> torch.Tensor:  # 1x1 convolution = a linear map per region
        return torch.einsum("oc,bcn->bon", w[f"{name}.weight"].squeeze(-1), x) + w[f"{name}.bias"][None, :, None]

    g, th, ph = conv("g", v), conv("theta", v), conv("phi", v)
    r = torch.einsum("bci,bcj->bij", th, ph) / 5  # affinity between regions i and j, divided by N
    y = torch.einsum("bij,bcj->bci", r, g)
    wy = conv("W.0", y)
    bn = gcn.W[1]
    wy = (wy - bn.running_mean[None, :, None]) / torch.sqrt(bn.running_var[None, :, None] + bn.eps)
    wy = wy * w["W.1.weight"][None, :, None] + w["W.1.bias"][None, :, None]
    torch.testing.assert_close(gcn(v), wy + v)


def test_rs_gcn_starts_as_identity() -> None:
    v = torch.randn(3, 8, 4)
    torch.testing.assert_close(RsGCN(8, 8).eval()(v), v)  # BatchNorm of W initialised to zero


def test_caption_targets_hand_worked() -> None:
    # <start>=1 a=7 b=8 c=9 <end>=2; max_len 4: the 5-token caption is cut to 4 with <end> last
    tokens = torch.tensor([[1, 7, 8, 9, 2], [1, 7, 2, 0, 0]])
    labels, masks = caption_targets(tokens, torch.tensor([5, 3]), max_len=4, end_id=2)
    assert labels.tolist() == [[1, 7, 8, 2, 0], [1, 7, 2, 0, 0]]
    assert masks.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]  # the tokens and the first padding position


def test_scan_attention_against_loops() -> None:
    torch.manual_seed(1)
    words, regions = torch.randn(2, 3, 5), torch.randn(2, 4, 5)
    out = scan_attention(words, regions, smooth=9.0)
    for b in range(2):
        raw = torch.tensor([[max(0.1 * float(regions[b, r] @ words[b, w]), float(regions[b, r] @ words[b, w]))
                             for w in range(3)] for r in range(4)])
        raw = raw / (raw.norm(dim=1, keepdim=True) + 1e-8)  # normalised over the words, per region
        for w in range(3):
            a = torch.softmax(9.0 * raw[:, w], dim=0)
            ctx = (a[:, None] * regions[b]).sum(0)
            torch.testing.assert_close(out[b, w], ctx / (ctx.norm() + 1e-8), rtol=1e-5, atol=1e-6)


def test_saf_gate_weights_sum_to_one() -> None:
    saf = AttentionFiltration(6).eval()
    s = torch.randn(3, 5, 6)
    gate = torch.sigmoid(saf.bn(saf.attn_sim_w(s).permute(0, 2, 1)))
    weights = gate / gate.sum(-1, keepdim=True)
    expect = torch.nn.functional.normalize((weights @ s).squeeze(1), dim=-1)
    torch.testing.assert_close(saf(s), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_pair_scores_do_not_depend_on_the_gallery_in_eval(module: str) -> None:
    torch.manual_seed(2)
    net = SimilarityNetwork(8, 6, module, num_regions=4).eval()
    img = torch.nn.functional.normalize(torch.randn(5, 4, 8), dim=-1)
    cap = torch.nn.functional.normalize(torch.randn(3, 6, 8), dim=-1)
    full = net(img, cap, [6, 4, 2])
    assert full.shape == (5, 3) and ((full > 0) & (full < 1)).all()  # sigmoid scores
    torch.testing.assert_close(net(img[2:4], cap[1:2], [4]), full[2:4, 1:2])


def test_score_blocks_assembles_bounded_blocks() -> None:
    torch.manual_seed(3)
    net = SimilarityNetwork(8, 6, "SGR", num_regions=4).eval()
    img = torch.nn.functional.normalize(torch.randn(7, 4, 8), dim=-1)
    words = [torch.nn.functional.normalize(torch.randn(n, 8), dim=-1) for n in (5, 2, 4, 3, 1, 6, 2, 3, 4)]
    seen = []

    class Spy:
        def similarity(self, a, b, lens):
            seen.append((a.shape[0], b.shape[0]))
            return net(a, b, lens)

    got = score_blocks(Spy(), img, LocalCaptions(words), shard=3)  # type: ignore[arg-type]
    cap, lens = LocalCaptions(words).padded(0, 9)
    torch.testing.assert_close(got, net(img, cap, lens))
    assert max(a for a, _ in seen) <= 3 and max(b for _, b in seen) <= 3 and len(seen) == 9


def test_local_captions_padding() -> None:
    caps = LocalCaptions([torch.ones(2, 3), 2 * torch.ones(4, 3)])
    x, lens = caps.padded(0, 2)
    assert lens == [2, 4] and x.shape == (2, 4, 3) and float(x[0, 2:].abs().sum()) == 0.0
    assert len(caps.subset(1, 2)) == 1


@pytest.mark.parametrize("base", ["vsrn", "sgr", "saf"])
def test_training_step_backpropagates_through_the_shared_loss(base: str) -> None:
    cfg = tiny_cfg(base)
    model = build_model(cfg, 30).train()
    g = torch.Generator().manual_seed(4)
    batch = {"image": torch.rand(6, 4, 12, generator=g), "img_lengths": torch.full((6,), 4),
             "tokens": torch.randint(4, 30, (6, 9), generator=g), "cap_lengths": torch.tensor([9, 8, 7, 5, 3, 9]),
             "img_index": torch.arange(6) // 2, "index": torch.arange(6), "lsa": torch.randn(6, 5, generator=g)}
    out = make_step_fn(RankingLoss(LossConfig(kind="lseh")), 10)(model, batch, 0)
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing  # every part (encoders, captioner, similarity network) is trained by the one loss
    if base == "vsrn":  # ranking loss + caption loss (official weight 1)
        assert float(out["loss"].detach()) == pytest.approx(float(out["rank_loss"] + out["caption_loss"]), rel=1e-6)
        assert float(out["caption_loss"]) > 0


def test_ensemble_averages_member_scores(tmp_path: Path) -> None:
    from zsk.data.captions import read_precomp
    from zsk.tasks.retrieve.data import Vocabulary
    from zsk.tasks.retrieve.evaluate import encode_split, score_split, similarity_matrix

    folder = write_sample(tmp_path / "d", regions=4, dim=12, sizes={"train": 4, "dev": 4, "test": 6, "testall": 4})
    split = read_precomp(folder, "test", 5)
    vocab = Vocabulary.build(split.captions, 1)
    members = []
    for k, base in enumerate(("sgr", "saf", "vsepp")):
        torch.manual_seed(k)
        cfg = tiny_cfg(base)
        cfg.model.num_regions = 4
        members.append((build_model(cfg, len(vocab)).eval(), vocab, cfg))
    dev = torch.device("cpu")
    mats = [similarity_matrix(m, *encode_split(m, split, v, c, dev), c, dev) for m, v, c in members]
    got = score_split(members[0][0], split, vocab, members[0][2], dev, ensemble=tuple(members[1:]))
    want = retrieval_metrics(sum(mats) / 3, 5)
    assert got["rsum"] == pytest.approx(want["rsum"]) and got["i2t"] == pytest.approx(want["i2t"])
    alone = score_split(members[0][0], split, vocab, members[0][2], dev)
    assert alone["rsum"] == pytest.approx(retrieval_metrics(mats[0], 5)["rsum"])


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name, base, epochs, lr_update, batch", [
    ("f30k_vsrn_lseh", "vsrn", 30, 5, 128), ("coco_vsrn_lseh", "vsrn", 30, 6, 128),
    ("iapr_vsrn_lseh", "vsrn", 30, 20, 128), ("f30k_sgr_lseh", "sgr", 40, 30, 84),
    ("f30k_saf_lseh", "saf", 30, 20, 84), ("coco_sgr_lseh", "sgr", 20, 10, 84), ("coco_saf_lseh", "saf", 20, 10, 84),
    ("iapr_sgr_lseh", "sgr", 40, 20, 128), ("iapr_saf_lseh", "saf", 40, 20, 128)])
def test_paper_recipes_carry_the_fork_settings(name: str, base: str, epochs: int, lr_update: int, batch: int) -> None:
    from zsk.core.run import load_config

    cfg, _ = load_config("retrieve", Config, f"retrieve/{name}", None)
    assert (cfg.model.base, cfg.train.epochs, cfg.train.lr_update, cfg.train.batch_size) == (base, epochs, lr_update, batch)
    assert cfg.train.loss.kind == "lseh" and cfg.train.loss.lseh.alpha == 0.185 and cfg.train.loss.lseh.lam == 0.025
    assert cfg.train.clip_grad_norm == 2.0 and cfg.train.optimizer == "adam"
    if base == "vsrn":
        assert cfg.model.embed_size == 2048 and cfg.model.caption_max_len == 60
        assert cfg.model.vsrn_bn == name.startswith("f30k") and cfg.train.best_metric == "r1r5_sum"
        assert cfg.train.lr == (5e-4 if name.startswith("iapr") else 4e-4)
        assert cfg.train.captioner_params == "once"  # the fix; "twice" is the official optimizer list
    else:
        assert cfg.model.embed_size == 1024 and cfg.model.sim_dim == 256 and cfg.eval.shard == 100
    assert cfg.data.captions_per_image == (1 if name.startswith("iapr") else 5)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("nets") / "data", sizes={"train": 40, "dev": 10, "test": 10,
                                                                          "testall": 10})


def test_sgr_saf_ensemble_and_vsrn_end_to_end(small_data: Path, tmp_path: Path) -> None:
    runs = {}
    for base in ("sgr", "saf", "vsrn"):
        runs[base] = tmp_path / base
        res = run("train", "--recipe", "retrieve/demo", "--set", f"data.root={small_data}", "--set",
                  f"model.base={base}", "--set", "train.epochs=1", *TINY, "--out", str(runs[base]), "--quiet", "--json")
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["rsum"] > 0 and "r1r5_sum" in summary
    out = json.loads(run("eval", "-c", str(runs["sgr"] / "best.pt"), "--json").stdout)
    assert out["base"] == "sgr" and out["images"] == 10 and out["captions"] == 50
    ens = json.loads(run("eval", "-c", str(runs["sgr"] / "best.pt"), "--ensemble", str(runs["saf"] / "best.pt"),
                         "--json").stdout)
    assert ens["ensemble"] == [str(runs["sgr"] / "best.pt"), str(runs["saf"] / "best.pt")]
    assert 0 <= ens["rsum"] <= 600
    vs = json.loads(run("eval", "-c", str(runs["vsrn"] / "best.pt"), "--json").stdout)
    assert vs["base"] == "vsrn"
    # predict: caption -> images through the pair network, and .npy image features -> captions
    rows = [json.loads(line) for line in run("predict", "-c", str(runs["saf"] / "best.pt"), "a dog on the beach",
                                             "--out", str(tmp_path / "p"), "-k", "3", "--json").stdout.splitlines()]
    assert rows[0]["direction"] == "t2i" and len(rows[0]["matches"]) == 3
    scores = [m["score"] for m in rows[0]["matches"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    q = tmp_path / "q.npy"
    np.save(q, np.load(small_data / "test_ims.npy")[:2])
    rows = [json.loads(line) for line in run("predict", "-c", str(runs["sgr"] / "best.pt"), str(q), "--out",
                                             str(tmp_path / "p2"), "-k", "5", "--json").stdout.splitlines()]
    assert [r["direction"] for r in rows] == ["i2t", "i2t"] and all(len(r["matches"]) == 5 for r in rows)
    info = json.loads(run("info", "--recipe", "retrieve/f30k_saf_lseh", "--json").stdout)
    assert set(info["params"]) >= {"image_encoder", "text_encoder", "sim_encoder"}
    info = json.loads(run("info", "--recipe", "retrieve/coco_vsrn_lseh", "--json").stdout)
    assert "captioner" in info["params"]


def test_saf_learns_well_above_its_initialisation(tmp_path: Path) -> None:
    data = write_sample(tmp_path / "data", sizes={"train": 60, "dev": 20, "test": 20, "testall": 10})
    common = ["--recipe", "retrieve/demo", "--set", f"data.root={data}", "--set", "model.base=saf", *TINY,
              "--set", "train.lr=5e-3", "--quiet", "--json"]
    before = json.loads(run("train", *common, "--set", "train.steps=1", "--set", "train.lr=1e-9", "--out",
                            str(tmp_path / "r0")).stdout.strip().splitlines()[-1])
    after = json.loads(run("train", *common, "--set", "train.epochs=6", "--out",
                           str(tmp_path / "r1")).stdout.strip().splitlines()[-1])
    chance = 2 * 100 * (1 + 5 + 10) / 20  # rsum of random scores, roughly (i2t better with five targets)
    assert after["rsum"] > before["rsum"] + 100 and after["rsum"] > 1.5 * chance, (before["rsum"], after["rsum"])


def test_pairwise_models_have_no_embedding_index(small_data: Path, tmp_path: Path, one_error_line) -> None:
    run_dir = tmp_path / "r"
    run("train", "--recipe", "retrieve/demo", "--set", f"data.root={small_data}", "--set", "model.base=sgr",
        "--set", "train.steps=1", *TINY, "--out", str(run_dir), "--quiet")
    res = runner.invoke(app, ["index", "-c", str(run_dir / "last.pt"), "--captions", str(small_data / "test_caps.txt"),
                              "--out", str(tmp_path / "idx")])
    one_error_line(res, ["model.base=sgr", "predict"])
    assert not (tmp_path / "idx").exists()
    res = runner.invoke(app, ["eval", "-c", str(run_dir / "last.pt"), "--ensemble", str(tmp_path / "none.pt")])
    one_error_line(res, ["--ensemble", "none.pt"])


# ----------------------------------------------------------------------------- bad inputs of the new networks

BAD = [
    ("text_encoder_with_sgr", ["model.base=sgr", "model.text_encoder=bert"], ["model.text_encoder", "sgr"]),
    ("pool_with_vsrn", ["model.base=vsrn", "model.image_pool=gpo"], ["model.image_pool", "vsrn"]),
    ("cnn_with_saf", ["model.base=saf", "model.image_encoder=cnn"], ["model.image_encoder", "saf"]),
    ("unknown_base", ["model.base=gsmn"], ["model.base"]),
    ("caption_max_len", ["model.base=vsrn", "model.caption_max_len=2"], ["model.caption_max_len"]),
    ("dropout_one", ["model.base=sgr", "model.text_dropout=1.0"], ["model.text_dropout"]),
    ("shard_zero", ["model.base=sgr", "eval.shard=0"], ["eval.shard"]),
    ("regions_mismatch", ["model.base=sgr", "model.num_regions=36"], ["train_ims.npy", "model.num_regions"]),
    ("captioner_twice_without_vsrn", ["model.base=sgr", "train.captioner_params=twice"],
     ["train.captioner_params", "model.base=vsrn"]),
    ("captioner_params_value", ["model.base=vsrn", "train.captioner_params=thrice"], ["train.captioner_params"]),
]


@pytest.mark.parametrize("sets, fragments", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_network_settings_exit_2(small_data: Path, tmp_path: Path, one_error_line, sets, fragments) -> None:
    args = ["train", "--recipe", "retrieve/demo", "--set", f"data.root={small_data}", "--out", str(tmp_path / "r")]
    res = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    one_error_line(res, fragments)
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_pairwise_predict_refuses_features_of_another_shape(small_data: Path, tmp_path: Path, one_error_line) -> None:
    run_dir = tmp_path / "r"
    run("train", "--recipe", "retrieve/demo", "--set", f"data.root={small_data}", "--set", "model.base=saf",
        "--set", "train.steps=1", *TINY, "--out", str(run_dir), "--quiet")
    q = tmp_path / "q.npy"
    np.save(q, np.zeros((2, 5, 32), np.float32))  # 5 regions where SAF was built for 4
    res = runner.invoke(app, ["predict", "-c", str(run_dir / "last.pt"), str(q), "--out", str(tmp_path / "p")])
    one_error_line(res, ["q.npy", "model.num_regions"])
    assert not (tmp_path / "p" / "predictions.jsonl").exists()


def test_bench_times_the_blocked_pair_scoring() -> None:
    from zsk.tasks.retrieve.hooks import bench_spec

    cfg = tiny_cfg("saf")
    cfg.eval.shard = 4
    spec = bench_spec(cfg, torch.device("cpu"), 6)
    out = spec.step_fn(spec.model, spec.batch, 0)
    assert torch.isfinite(out["loss"])
    extra = spec.extra()
    assert extra["eval_images"] == 4 and extra["eval_captions"] == 500 and extra["eval_pairs_per_s"] > 0
    # F30K test (1K x 5K) and COCO 5K (5K x 25K) extrapolated from the measured pair rate: 25 x apart
    assert extra["coco_5k_test_s_extrapolated"] == pytest.approx(25 * extra["f30k_1k_test_s_extrapolated"])
    assert spec.model.training  # the timing leaves the model in training mode for the timed train steps


@pytest.mark.parametrize("name", ["f30k_vsrn_lmh", "f30k_sgr_lmh"])
def test_lmh_baselines_share_the_network_settings(name: str) -> None:
    from zsk.core.run import load_config

    cfg, _ = load_config("retrieve", Config, f"retrieve/{name}", None)
    lseh, _ = load_config("retrieve", Config, f"retrieve/{name.replace('lmh', 'lseh')}", None)
    assert cfg.train.loss.kind == "lmh" and cfg.train.loss.margin == 0.2
    assert cfg.model == lseh.model and (cfg.train.epochs, cfg.train.lr_update) == (lseh.train.epochs, lseh.train.lr_update)


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_eval_groups_equal_the_per_caption_loop(module: str, monkeypatch) -> None:
    import zsk.tasks.retrieve.model_sgraf as sg

    torch.manual_seed(5)
    net = SimilarityNetwork(8, 6, module, num_regions=4).eval()
    img = torch.nn.functional.normalize(torch.randn(5, 4, 8), dim=-1)
    cap = torch.nn.functional.normalize(torch.randn(6, 7, 8), dim=-1)
    lens = [7, 3, 7, 5, 3, 7]
    glo = net.v_global_w(img, img.mean(1))
    loop = torch.stack([net.pair_scores(img, glo, cap[i : i + 1, :n]) for i, n in enumerate(lens)], dim=1)
    monkeypatch.setattr(sg, "EVAL_PAIRS_PER_CALL", 10)  # two captions per call: groups split across calls
    torch.testing.assert_close(net(img, cap, lens), loop, rtol=1e-5, atol=1e-6)


def test_vsrn_official_captioner_list_steps_the_captioner_twice(small_data: Path, tmp_path: Path) -> None:
    """train.captioner_params: twice (the official VSRN_LSEH optimizer list, which holds the caption generator
    twice): the captioner's parameters form a group with repeat 2, so Adam's step count of each of them advances
    twice per iteration, the encoders' once; the default keeps one entry per parameter."""
    from zsk.core.checkpoint import load_checkpoint
    from zsk.tasks.retrieve.train import param_groups

    for mode, cap_steps in (("twice", 6), ("once", 3)):
        out = tmp_path / mode
        run("train", "--recipe", "retrieve/demo", "--set", f"data.root={small_data}", "--set", "model.base=vsrn",
            "--set", "train.steps=3", "--set", "train.clip_grad_norm=2.0", "--set", f"train.captioner_params={mode}",
            *TINY, "--out", str(out), "--quiet")
        state = load_checkpoint(out / "last.pt")["optimizer"]
        groups = state["param_groups"]
        steps = {i: int(s["step"]) for i, s in state["state"].items()}
        if mode == "twice":
            assert [g.get("repeat", 1) for g in groups] == [1, 2]
            assert {steps[i] for i in groups[0]["params"]} == {3} and {steps[i] for i in groups[1]["params"]} == {cap_steps}
        else:
            assert len(groups) == 1 and set(steps.values()) == {cap_steps}
    cfg = tiny_cfg("vsrn")
    cfg.train.captioner_params = "twice"
    model = build_model(cfg, 30)
    groups = param_groups(model, cfg)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.captioner.parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
