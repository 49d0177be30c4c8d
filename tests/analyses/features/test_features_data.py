"""`features --data` against references written here: per feature, the count, mean and largest
activation and the top contexts equal a brute-force loop (one text per forward, the state from
the model's own `hidden_states`, the latents by the textbook formula); the heap's merge is exact
and order-independent (ties included); an interrupted run resumed equals an uninterrupted one;
the installed command writes the files and refuses bad input in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_model, make_tokenizer
from test_features import random_dictionary
from test_features_cli import folders  # noqa: F401  (the model and SAELens folders)

import tokenprobe
from tokenprobe.analyses.features import FeatureContextsResult, feature_contexts
from tokenprobe.analyses.features.tally import Tally
from tokenprobe.sae import SaeSite

TOKENPROBE = Path(sys.executable).with_name("tokenprobe")
# shared prefixes: the same activation at the same position of several texts (ties)
TEXTS = [f"the cat number {i} sat on the mat" + " and the dog" * (i % 4) for i in range(11)]


def brute_force(lm, sae, texts: list[str], layer: int, top: int) -> tuple[dict, list]:
    """Per feature: count, total, max and every (activation, text, position) where active,
    from one forward per text; the top `top` by (activation desc, text, position)."""
    d = sae.d_sae
    count, total, peak = np.zeros(d, int), np.zeros(d), np.zeros(d)
    hits: list[list] = [[] for _ in range(d)]
    acts_of = []
    for t, text in enumerate(texts):
        ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            x = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
        pre = (x.float() - sae.b_dec) @ sae.w_enc + sae.b_enc
        if sae.activation == "topk":
            v = pre.topk(sae.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, v.indices, torch.relu(v.values))
        else:
            acts = torch.relu(pre)
        acts_of.append(acts.double().numpy())
        for p, f in zip(*np.nonzero(acts_of[-1] > 0), strict=True):
            hits[f].append((-acts_of[-1][p, f], t, p))
    for f in range(d):
        count[f] = len(hits[f])
        total[f] = -sum(h[0] for h in hits[f])
        peak[f] = -min((h[0] for h in hits[f]), default=0.0)
    tops = [sorted(h)[:top] for h in hits]
    return {"count": count, "total": total, "max": peak, "top": tops}, acts_of


def check_contexts(result: FeatureContextsResult, want: dict, acts_of: list, context: int):
    """Every reported context is real (its activation is the brute force's there, its window
    too) and each feature's top activations equal the brute force's, rank by rank."""
    c = result.contexts
    assert len(c) == sum(len(t) for t in want["top"]) > 0
    for f, group in c.groupby("feature"):
        expect = [-h[0] for h in want["top"][f]]
        np.testing.assert_allclose(group.sort_values("rank")["activation"], expect, rtol=1e-4)
    for row in c.itertuples(index=False):
        acts = acts_of[row.text][:, row.feature]
        assert row.activation == pytest.approx(acts[row.position], rel=1e-4)
        p = row.position
        padded = np.concatenate([np.full(context, np.nan), acts, np.full(context, np.nan)])
        want_window = padded[p : p + 2 * context + 1]  # NaN past the text's ends
        np.testing.assert_allclose(row.window_activations, want_window, rtol=1e-4, atol=1e-6)
        assert [t == "" for t in row.window_tokens] == list(np.isnan(want_window))


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", make_tokenizer())


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_stats_and_top_contexts_equal_brute_force(llama, activation: str) -> None:
    lm, layer = llama, 2
    extra = {"activation": activation, **({"k": 6} if activation == "topk" else {})}
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", layer), **extra)
    res = feature_contexts(
        lm, TEXTS, dictionary=sae, top_examples=4, context=3, batch_tokens=80, chunk_texts=5
    )
    want, acts_of = brute_force(lm, sae, TEXTS, layer, 4)
    s = res.stats
    np.testing.assert_array_equal(s["count"], want["count"])
    n = sum(len(a) for a in acts_of)
    assert res.meta["tokens"] == n and res.meta["texts_used"] == len(TEXTS)
    np.testing.assert_allclose(s["frequency"], want["count"] / n)
    live = want["count"] > 0
    np.testing.assert_allclose(s["mean"][live], want["total"][live] / want["count"][live], 1e-5)
    np.testing.assert_allclose(s["max"], want["max"], rtol=1e-4)
    assert res.meta["dead"] == int((~live).sum())
    assert "checked against one text alone" in res.meta["batching"]
    check_contexts(res, want, acts_of, 3)
    for row in res.contexts.itertuples(index=False):  # the window's text, the token apart
        assert row.token == row.window_tokens[3]
        assert row.left == "".join(row.window_tokens[:3])
        assert row.right == "".join(row.window_tokens[4:])


def test_skipped_positions_are_not_read(llama) -> None:
    """With skip_first, the first positions of every text are neither counted nor a top
    context, and show as NaN (not read) in the windows around later ones."""
    lm, layer, skip = llama, 2, 2
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", layer))
    res = feature_contexts(
        lm, TEXTS, dictionary=sae, top_examples=4, context=3, batch_tokens=80, skip_first=skip
    )
    _, acts_of = brute_force(lm, sae, TEXTS, layer, 4)
    read = [a.copy() for a in acts_of]
    for a in read:
        a[:skip] = np.nan
    count = sum((np.nan_to_num(a) > 0).sum(0) for a in read)
    np.testing.assert_array_equal(res.stats["count"], count)
    assert res.meta["tokens"] == sum(len(a) - skip for a in read)
    c = res.contexts
    assert len(c) and c["position"].min() >= skip
    for row in c.itertuples(index=False):
        acts = read[row.text][:, row.feature]
        padded = np.concatenate([np.full(3, np.nan), acts, np.full(3, np.nan)])
        want = padded[row.position : row.position + 7]
        np.testing.assert_allclose(row.window_activations, want, rtol=1e-4, atol=1e-6)
    full = feature_contexts(lm, TEXTS, dictionary=sae, top_examples=4, context=3)
    assert (full.contexts["position"] < skip).any()  # without it, early positions do win


def test_the_top_contexts_break_ties_by_text_then_position(llama) -> None:
    """Texts with one shared prefix: tied activations keep the lowest text indices."""
    lm = llama
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", 2))
    texts = ["the cat sat on the mat"] * 6
    res = feature_contexts(lm, texts, dictionary=sae, top_examples=3, context=1, batch_tokens=20)
    assert len(res.contexts) > 0
    for _, group in res.contexts.groupby("feature"):
        assert group["text"].tolist() == [0, 1, 2], group  # the same token in texts 0, 1, 2


def _tally(acts: np.ndarray, texts: np.ndarray, top: int) -> Tally:
    tally = Tally.empty(acts.shape[1], top, 1)
    pos = np.concatenate([np.arange((texts == t).sum()) for t in np.unique(texts)])
    tally.add(torch.from_numpy(acts), torch.from_numpy(texts), torch.from_numpy(pos))
    return tally


def test_merging_halves_equals_the_whole_in_either_order() -> None:
    """Rounded activations (many ties, across the halves' boundary too): the heap of the whole
    equals the merge of its halves, whichever comes first."""
    g = np.random.default_rng(0)
    acts = np.maximum(0, np.round(g.normal(size=(60, 9)), 1)).astype(np.float32)
    texts = np.repeat(np.arange(6), 10)
    whole = _tally(acts, texts, 5)
    a, b = _tally(acts[:30], texts[:30], 5), _tally(acts[30:], texts[30:], 5)
    b.pos += 0  # positions restart in each text: the halves hold whole texts
    for first, second in ((a, b), (b, a)):
        merged = Tally.empty(9, 5, 1)
        merged.merge(first)
        merged.merge(second)
        for name in ("count", "peak", "act", "text", "pos"):
            np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name), name)
        np.testing.assert_array_equal(merged.window, whole.window)
        np.testing.assert_allclose(merged.total, whole.total)
    # the heap is the brute force's: sort every active token by (-act, text, pos)
    pos = np.tile(np.arange(10), 6)
    for f in range(9):
        on = np.nonzero(acts[:, f] > 0)[0]
        want = sorted(zip(-acts[on, f], texts[on], pos[on], strict=True))[:5]
        got = list(zip(-whole.act[f], whole.text[f], whole.pos[f], strict=True))[: len(want)]
        assert [(float(x), int(t), int(p)) for x, t, p in got] == [
            (float(x), int(t), int(p)) for x, t, p in want
        ]


def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(llama, tmp_path) -> None:
    lm = llama
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", 2))
    settings = {"dictionary": sae, "top_examples": 4, "context": 2, "chunk_texts": 3}
    whole = feature_contexts(lm, TEXTS, **settings)

    def stop(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        feature_contexts(lm, TEXTS, checkpoint=tmp_path, _after_chunk=stop, **settings)
    assert (tmp_path / "features.partial").is_dir()
    with pytest.raises(tokenprobe.TokenprobeError, match="context"):  # other settings: refused
        feature_contexts(lm, TEXTS, checkpoint=tmp_path, resume=True, **{**settings, "context": 3})
    seen: list[int] = []
    resumed = feature_contexts(
        lm, TEXTS, checkpoint=tmp_path, resume=True, _after_chunk=seen.append, **settings
    )
    assert seen == [2, 3]  # chunks 0 and 1 came from the checkpoint
    pd.testing.assert_frame_equal(resumed.stats, whole.stats)
    pd.testing.assert_frame_equal(resumed.contexts, whole.contexts)


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TOKENPROBE), *argv], capture_output=True, text=True, timeout=300, check=False
    )


def test_the_command_writes_the_tables_and_equals_the_library(folders, tmp_path) -> None:  # noqa: F811
    model, sae = folders
    data = tmp_path / "corpus.csv"
    pd.DataFrame({"body": TEXTS}).to_csv(data, index=False)
    out = tmp_path / "dash"
    done = _run(
        "features", "--model", str(model), "--sae", str(sae), "--data", str(data),
        "--text-column", "body", "--limit", "8", "--top-examples", "3", "--context", "2",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    assert {"feature_contexts.parquet", "feature_contexts_top.parquet", "meta.json"} <= names
    assert {"feature_contexts.png", "feature_contexts_tokens.png"} <= names
    assert not (out / "features.partial").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "feature_contexts" and meta["texts_used"] == 8
    lm = tokenprobe.load(str(model))
    want = feature_contexts(lm, TEXTS[:8], sae=str(sae), top_examples=3, context=2)
    back = tokenprobe.load_result(out)
    assert isinstance(back, FeatureContextsResult)
    pd.testing.assert_frame_equal(back.stats, want.stats, rtol=1e-5)
    got, exp = back.contexts, want.contexts
    assert list(got["feature"]) == list(exp["feature"]) and list(got["text"]) == list(exp["text"])
    np.testing.assert_allclose(got["activation"], exp["activation"], rtol=1e-5)
    report = _run("report", str(out))
    assert report.returncode == 0, report.stderr
    html = (out / "report.html").read_text()
    assert "top contexts, token by token" in html


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--target", " the"], "--target goes with --prompt"),
        (["--prompt", "the cat"], "give one of --prompt TEXT"),
        (["--text-column", "nope"], "nope"),
        (["--top-examples", "0"], "--top-examples"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(folders, tmp_path, extra, says) -> None:  # noqa: F811
    model, sae = folders
    data = tmp_path / "corpus.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(data, index=False)
    argv = ["features", "--model", str(model), "--sae", str(sae), "--data", str(data)]
    done = _run(*argv, *extra, "--out", str(tmp_path / "o"))
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("tokenprobe: error")]
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr


def test_data_settings_without_data_are_refused(folders, tmp_path) -> None:  # noqa: F811
    model, sae = folders
    argv = ["features", "--model", str(model), "--sae", str(sae), "--prompt", "the cat"]
    done = _run(*argv, "--top-examples", "3", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "--top-examples goes with --data FILE" in done.stderr


def test_a_txt_file_is_one_text_per_line(tmp_path) -> None:
    """A corpus file of lines: each non-empty line is a text of its own (contexts never cross
    a line), UTF-8 required."""
    from tokenprobe.analyses.features.dataset import _texts
    from tokenprobe.analyses.features.options import FeaturesOptions

    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\nsecond line\n  \nthird\n", encoding="utf-8")
    assert _texts(str(path), FeaturesOptions()) == ["first line", "second line", "third"]
    assert _texts(str(path), FeaturesOptions(limit=2)) == ["first line", "second line"]
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(tokenprobe.TokenprobeError, match="not UTF-8"):
        _texts(str(path), FeaturesOptions())
