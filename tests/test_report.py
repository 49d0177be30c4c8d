"""The HTML report: self-contained, escaped, and checked in a real headless Chromium."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tokenprobe
from tokenprobe.cli import main
from tokenprobe.report import collect, render, write_report

EVIL = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "&amp; </script> <!--"]
ARTEFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"


def synthetic_lens(n_pos: int, tokens: list[str] | None = None) -> tokenprobe.LensResult:
    rng = np.random.default_rng(0)
    rows, k = 31, 5
    tokens = tokens or [f" t{i}" for i in range(n_pos)]
    top_tokens = np.array(
        [
            [[tokens[(r + c + j) % len(tokens)] for j in range(k)] for c in range(n_pos)]
            for r in range(rows)
        ],
        dtype=object,
    )
    return tokenprobe.LensResult(
        tokens=tokens,
        token_ids=list(range(n_pos)),
        layer_labels=[str(i) for i in range(rows - 1)] + ["output"],
        entropy=rng.uniform(0, 9, (rows, n_pos)).astype(np.float32),
        top_ids=rng.integers(0, 1000, (rows, n_pos, k)),
        top_tokens=top_tokens,
        top_probs=rng.uniform(0, 1, (rows, n_pos, k)).astype(np.float32),
        targets=[" Canberra"],
        target_ids=[7],
        target_probs=rng.uniform(0, 1, (rows, n_pos, 1)).astype(np.float32),
        target_ranks=rng.integers(1, 100, (rows, n_pos, 1)),
        meta={"model": {"name": "synthetic"}, "prompt": "<b>not bold</b>"},
    )


@pytest.fixture(scope="module")
def all_kinds(tmp_path_factory):
    """A folder with one saved result of every kind, from a tiny model."""
    import copy

    from conftest import make_model, make_tokenizer

    tok = make_tokenizer()
    lm = make_model("llama", copy.deepcopy(tok))
    folder = tmp_path_factory.mktemp("results")
    prompt = "Tools: hammer, wrench. Fruits: orange"
    tokenprobe.logit_lens(lm, prompt, targets=[" the"], dummy=2).save(folder / "lens")
    tokenprobe.past_similarity(lm, "a b _PAUSE_ c _PAUSE_", occurrence=2, window=6).save(
        folder / "sim"
    )
    tokenprobe.attribute(lm, prompt, target=", peach", features=["hammer", "wrench"]).save(
        folder / "attr"
    )
    clf = tokenprobe.PromptedClassifier(
        lm, ["joy", "anger"], [" the", " of"], template="Text: {text}\nAnswer:"
    )
    texts = [
        "Tools: hammer, wrench",
        "The quick brown fox",
        "Hello world",
        "Fruits: orange, peach",
    ] * 3
    tokenprobe.flip_rates(clf, texts).save(folder / "flips")
    synthetic_lens(6, tokens=[*EVIL, " ok", " fine", " end"][:6]).save(folder / "evil")
    return folder


def test_page_is_self_contained_and_token_text_is_inert(all_kinds):
    page = render([r for _, r in collect(all_kinds)])
    assert page.count("<script") == 2  # the JSON data and the viewer, nothing from the tokens
    assert "<img" not in page and "<b>" not in page and "<!--" not in page
    assert (
        "http://" not in page and "https://" not in page and "src=" not in page.split("<script")[0]
    )
    assert "default-src 'none'" in page


def test_report_command_prints_path_and_size(all_kinds, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(all_kinds), "--html", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "MB" in printed and "report of 5 result(s)" in printed
    assert main(["report", str(all_kinds), "--html", str(out)]) == 2  # no silent overwrite
    assert main(["report", str(tmp_path / "empty-nothing")]) == 2


def test_results_render_themselves_in_notebooks(all_kinds):
    res = tokenprobe.load_result(all_kinds / "attr")
    html = res._repr_html_()
    assert html.startswith("<!DOCTYPE html>") and "Token Attribution" in html


# ----------------------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    exe = _chromium()
    if exe is None:
        pytest.skip(
            "no Chromium on this machine (make test installs Debian's chromium where it can)"
        )
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=exe,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    requests, dialogs = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    start = time.perf_counter()
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return page, requests, dialogs, time.perf_counter() - start


def _hover(page, section, dx: float = 95, dy: float = 25) -> str:
    canvas = section.query_selector("canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + dx, box["y"] + dy)
    return page.eval_on_selector("#tip", "e => e.style.display === 'block' ? e.textContent : ''")


def test_every_section_renders_and_hovers_in_chromium(browser, all_kinds, tmp_path):
    html = write_report([r for _, r in collect(all_kinds)], tmp_path / "report.html")
    page, requests, dialogs, _ = _open(browser, html)
    sections = page.query_selector_all("section.heatmap")
    kinds = [s.get_attribute("data-kind") for s in sections]
    assert {"lens", "similarity", "attribute", "flips"} <= set(kinds)
    for s in sections:
        assert s.get_attribute("data-rendered") == "1"
        box = s.query_selector("canvas").bounding_box()
        assert box["width"] > 300 and box["height"] > 100
    expected = {
        "lens": "entropy",
        "similarity": "layer",
        "attribute": "attribution",
        "flips": "bucket",
    }
    seen = set()
    for s, kind in zip(sections, kinds, strict=True):
        if kind in seen:
            continue
        text = _hover(page, s)
        assert expected[kind] in text, (kind, text)
        seen.add(kind)
    # a flip-rate tooltip carries the counts and the interval behind the cell
    flips = sections[kinds.index("flips")]
    width = flips.query_selector("canvas").bounding_box()["width"]
    tips = [_hover(page, flips, x, 25) for x in range(95, int(width) - 80, 40)]
    with_counts = [t for t in tips if "Wilson" in t]
    assert with_counts and "occurrences" in with_counts[0] and "flips" in with_counts[0]
    assert [u for u in requests if not u.startswith("file://")] == []
    assert dialogs == []
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "report.png"), full_page=True)
    page.close()


def test_token_markup_stays_text_in_the_browser(browser, tmp_path):
    html = write_report(
        [synthetic_lens(6, tokens=[*EVIL, " a", " b", " c"])], tmp_path / "evil.html"
    )
    page, requests, dialogs, _ = _open(browser, html)
    assert dialogs == []  # no alert ran
    assert page.query_selector_all("img") == []
    assert page.eval_on_selector_all("script", "s => s.length") == 2
    section = page.query_selector("section.heatmap")
    assert "<b>not bold</b>" in section.query_selector(".about").text_content()
    # the first column's token is the script tag: the tooltip shows it as text
    assert "position 0: <script>alert(1)</scrip" in _hover(page, section)
    assert [u for u in requests if not u.startswith("file://")] == []
    page.close()


def test_a_1000_position_lens_stays_responsive(browser, tmp_path):
    html = write_report([synthetic_lens(1000)], tmp_path / "long.html")
    page, _, _, seconds = _open(browser, html)
    section = page.query_selector("section.heatmap")
    start = time.perf_counter()
    box = section.query_selector("canvas").bounding_box()
    page.mouse.move(box["x"] + 400, box["y"] + 100)
    for _ in range(5):
        page.mouse.wheel(0, -300)  # zoom in
    text = _hover(page, section, 400, 100)
    interact = time.perf_counter() - start
    size = html.stat().st_size / 2**20
    print(
        f"\n1,000-position lens: {size:.1f} MB, loaded and drawn in {seconds:.2f} s, zoom + hover {interact:.2f} s"
    )
    assert "entropy" in text
    assert seconds < 30  # generous: a benchmark, not a speed test
    page.close()


def test_a_4096_token_attention_pattern_renders_in_chromium(browser, tmp_path):
    """The attention view at 4,096 tokens: one image per section, drawn and decoded quickly
    (bertviz draws one element per cell and stalls past ~512 tokens)."""
    import torch

    from tokenprobe.analyses.attention import AttentionResult
    from tokenprobe.analyses.attention.result import Pattern

    n = 4096
    scores = torch.randn(1, n, n, generator=torch.Generator().manual_seed(0))
    weights = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -torch.inf)
    tokens = [f" t{i}" for i in range(n)]
    meta = {"tokens": tokens, "attention_layers": [0], "stored": "asked", "options": {"head": 0}}
    result = AttentionResult(
        tokens, [0], 1, Pattern.from_dense({0: weights.softmax(-1)}, [0]), meta=meta
    )
    html = write_report([result], tmp_path / "attention.html")
    page, requests, dialogs, seconds = _open(browser, html)
    sections = page.query_selector_all("section.heatmap")
    assert sections and all(s.get_attribute("data-rendered") == "1" for s in sections)
    for s in sections:
        img = s.query_selector("img")
        img.scroll_into_view_if_needed()
        page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=img, timeout=30_000)
        box = img.bounding_box()
        assert box["width"] > 200 and box["height"] > 200
        assert s.query_selector_all("canvas, td, rect") == []  # no element per cell
    assert page.eval_on_selector_all("body *", "e => e.length") < 200
    assert [u for u in requests if not u.startswith("file://")] == [] and dialogs == []
    print(
        f"\n4,096-token attention: {html.stat().st_size / 2**20:.1f} MB, drawn in {seconds:.2f} s"
    )
    assert seconds < 30  # generous: a benchmark, not a speed test
    page.close()


def test_flip_rates_page_has_one_section_per_class(all_kinds):
    res = tokenprobe.load_result(all_kinds / "flips")
    page = render([res])
    classes = pd.unique(res.rates["class"])
    assert page.count("Token Flip Rate by Position Bucket") == len(classes)


def test_flip_sections_mask_cells_as_the_saved_figures_did(all_kinds, tmp_path):
    from tokenprobe.report import sections_of

    res = tokenprobe.load_result(all_kinds / "flips")

    # every word occurs 3 times: drawn with the default min_count 3, hidden with min_count 4
    assert all(s["rows"] for s in sections_of(res))
    res.save(tmp_path / "flips", plot_options={"min_count": 4})
    saved = tokenprobe.load_result(tmp_path / "flips")
    assert saved.meta["plot_options"] == {"min_count": 4}
    assert not any(s["rows"] for s in sections_of(saved))
    assert all(any("nothing to draw" in a for a in s["about"]) for s in sections_of(saved))


@pytest.mark.slow
def test_the_demo_report_in_chromium(browser, tmp_path, capsys):
    """The main job end to end: `tokenprobe demo` (about 3 minutes), then its report in a browser."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    page, requests, dialogs, seconds = _open(browser, out / "report.html")
    sections = page.query_selector_all("section.heatmap")
    kinds = [s.get_attribute("data-kind") for s in sections]
    assert (
        sorted(set(kinds))
        == [
            "attention",
            "attribute",
            "feature_contexts",
            "features",
            "flips",
            "lens",
            "logit_attribution",
            "similarity",
            "trace",
        ]  # fmt: skip
        and kinds.count("flips") == 4
        and kinds.count("features") == 3  # activations, effects, error per position
        and kinds.count("feature_contexts") == 2  # features x top contexts, token by token
        and kinds.count("trace") == 3  # the residual stream, the MLPs, and the heads
        and kinds.count("logit_attribution") == 3  # components, heads, positions
    )
    for s in sections:
        if s.get_attribute("data-kind") == "attention" and s.query_selector("img"):
            assert page.evaluate("i => i.naturalWidth", s.query_selector("img")) > 0
    # the Australia prompt's composite (two parts) through the logit lens and through the
    # shipped tuned lens, and the Eiffel one
    assert kinds.count("lens") == 5
    words = {
        "lens": "entropy",
        "similarity": "cosine",
        "attribute": "attribution",
        "flips": "bucket",
        "trace": "normalised",
    }
    for kind, word in words.items():
        assert word in _hover(page, sections[kinds.index(kind)], 300, 30), kind
    assert [u for u in requests if not u.startswith("file://")] == [] and dialogs == []
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "demo-report.png"), full_page=True)
    page.close()
