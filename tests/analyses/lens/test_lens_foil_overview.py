"""The lens's contrastive score (`foil`: logit(target) - logit(foil) per cell, `colour="diff"`)
and the overview + detail composite figure (`overview`: the whole prompt above, the zoom boxed, the zoom
in detail below)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import QuadMesh
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle
from test_lens import PROMPT, by_hand
from test_plots import synthetic

import tokenprobe
from tokenprobe import LensResult, TokenprobeError, logit_lens
from tokenprobe.heatmap import BOX_COLOUR, FRAME_COLOUR
from tokenprobe.report import render

TARGETS = [" Canberra", " Sydney"]


def _token(lm, text: str) -> int:
    return lm.tokenizer.encode(text, add_special_tokens=False)[0]


# ---------------------------------------------------------------------- the numbers


def test_logit_diff_matches_by_hand_on_every_family(tiny):
    """Every row (layers through the final norm and head, soft-capped where the model caps;
    "output" = the model's own logits) against the model's own outputs, by hand."""
    res = logit_lens(tiny, PROMPT, targets=TARGETS, foil=" the")
    logits = by_hand(tiny.model, res.token_ids, 3, [0])[-1]  # (L+1, T, V)
    expected = logits[..., _token(tiny, " Canberra")] - logits[..., _token(tiny, " the")]
    assert res.logit_diff is not None and res.logit_diff.shape == res.entropy.shape
    np.testing.assert_allclose(res.logit_diff, expected.numpy(), atol=1e-4, rtol=1e-5)
    assert res.foil == " the" and res.meta["foil_id"] == _token(tiny, " the")
    assert res.meta["foil_token"] == " the"


def test_output_row_is_the_model_logits_difference(llama):
    res = logit_lens(llama, PROMPT, targets=TARGETS, foil=" Sydney")
    with torch.no_grad():
        logits = llama.model(torch.tensor([res.token_ids])).logits[0]
    diff = logits[:, _token(llama, " Canberra")] - logits[:, _token(llama, " Sydney")]
    np.testing.assert_allclose(res.logit_diff[-1], diff.numpy(), atol=1e-5, rtol=1e-6)
    # the foil may be the second target: the difference uses the first
    assert res.targets == TARGETS and res.target_probs.shape[-1] == 2


class ScaledDecoder:
    """A per-layer decoder (as a tuned lens is): layer i's logits times (i + 1)."""

    shared = False

    def __init__(self, adapter) -> None:
        self.adapter = adapter

    def decode(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor:
        assert layer is not None
        return self.adapter.logits(hidden) * (layer + 1)


def test_logit_diff_comes_from_the_decoded_logits(llama):
    plain = logit_lens(llama, PROMPT, targets=TARGETS, foil=" the")
    scaled = logit_lens(
        llama, PROMPT, targets=TARGETS, foil=" the", decoder=ScaledDecoder(llama.adapter)
    )
    factors = np.arange(1, plain.n_rows)[:, None]
    np.testing.assert_allclose(
        scaled.logit_diff[:-1], plain.logit_diff[:-1] * factors, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(scaled.logit_diff[-1], plain.logit_diff[-1], rtol=1e-6, atol=1e-6)


def test_batched_and_chunked_give_the_same_difference(llama):
    prompts = ["Hello world!", PROMPT]
    together = logit_lens(llama, prompts, targets=TARGETS, foil=" the", memory_mb=0.01)
    for prompt, res in zip(prompts, together, strict=True):
        alone = logit_lens(llama, prompt, targets=TARGETS, foil=" the")
        np.testing.assert_allclose(res.logit_diff, alone.logit_diff, atol=2e-5)


def test_foil_errors_are_one_line_and_a_long_foil_warns(llama):
    with pytest.raises(TokenprobeError, match=r"foil ' Canberra' is the same token") as info:
        logit_lens(llama, PROMPT, targets=TARGETS, foil=" Canberra")
    assert "\n" not in str(info.value)
    with pytest.raises(TokenprobeError, match="foil needs a target to compare with"):
        logit_lens(llama, PROMPT, foil=" Sydney")
    with pytest.raises(TokenprobeError, match="foil is empty"):
        logit_lens(llama, PROMPT, targets=TARGETS, foil="")
    # a foil whose first token is the target's is the same token too
    with pytest.raises(TokenprobeError, match="same token"), pytest.warns(UserWarning):
        logit_lens(llama, PROMPT, targets=TARGETS, foil=" Canberra-Queanbeyan")
    with pytest.warns(UserWarning, match="compares its first token"):
        res = logit_lens(llama, PROMPT, targets=TARGETS, foil=" Sydney-Queanbeyan")
    assert res.meta["foil_id"] == _token(llama, " Sydney-Queanbeyan")


def test_save_load_keeps_the_difference_and_old_results_still_load(llama, tmp_path):
    res = logit_lens(llama, PROMPT, chat=True, dummy=2, targets=TARGETS, foil=" the")
    res.save(tmp_path / "foil", formats=[])
    back = tokenprobe.load_result(tmp_path / "foil")
    assert isinstance(back, LensResult) and back.foil == " the"
    np.testing.assert_array_equal(back.logit_diff, res.logit_diff)
    assert "logit_diff" in back.to_frame().columns
    # a result saved before the foil existed: no column, no foil in meta.json
    table = tmp_path / "foil" / "lens.parquet"
    pd.read_parquet(table).drop(columns=["logit_diff"]).to_parquet(table, index=False)
    meta_path = tmp_path / "foil" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for key in ("foil", "foil_id", "foil_token"):
        meta.pop(key)
    meta_path.write_text(json.dumps(meta))
    old = tokenprobe.load_result(tmp_path / "foil")
    assert old.foil is None and old.logit_diff is None
    np.testing.assert_array_equal(old.entropy, res.entropy)
    assert "logit_diff" not in old.to_frame().columns
    plt.close(old.plot())


# ---------------------------------------------------------------------- --colour diff


def with_diff(res: LensResult) -> LensResult:
    rng = np.random.default_rng(1)
    res.targets, res.foil = [" Canberra"], " Sydney"
    res.target_probs = np.zeros((*res.entropy.shape, 1), dtype=np.float32)
    res.target_ranks = np.ones((*res.entropy.shape, 1), dtype=np.int64)
    res.logit_diff = rng.normal(0, 3, res.entropy.shape).astype(np.float32)
    res.meta.update(
        targets=[" Canberra"],
        target_ids=[7],
        target_tokens=[" Canberra"],
        foil=" Sydney",
        foil_token=" Sydney",
        marked=list(res.marked) if res.marked else None,
    )
    return res


def test_colour_diff_draws_the_difference_diverging_around_zero():
    res = with_diff(synthetic(12))
    ((_, view),) = res.views(colour="diff")
    np.testing.assert_array_equal(view.values, res.logit_diff)
    assert view.cmap == "RdBu_r" and view.vmin == -view.vmax
    assert view.vmax >= np.abs(res.logit_diff).max()
    assert view.colorbar == "logit(' Canberra') - logit(' Sydney')"
    fig = res.plot(colour="diff")
    assert fig.axes[-1].get_ylabel() == view.colorbar  # the colour bar names the difference
    assert "Sydney" in view.tips()[0][0]
    plt.close(fig)
    # the default is still entropy
    ((_, entropy),) = res.views()
    np.testing.assert_array_equal(entropy.values, res.entropy)


def test_colour_diff_without_a_foil_is_a_clear_error():
    with pytest.raises(
        TokenprobeError, match="colour diff draws logit.*compute the lens with a foil"
    ):
        synthetic(8).plot(colour="diff")
    with pytest.raises(TokenprobeError, match="colour must be one of entropy, diff"):
        synthetic(8).plot(colour="probability")


# ---------------------------------------------------------------------- --overview


def _meshes(ax) -> list[QuadMesh]:
    return [c for c in ax.collections if isinstance(c, QuadMesh)]


def _outlines(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]


def test_zoom_on_a_longer_prompt_gives_the_composite():
    res = synthetic(50, marked=(44, 50))
    fig = res.plot(zoom="30:50")
    detail, whole, bar = fig.axes  # the detail first, as without the overview
    assert _meshes(detail)[0].get_array().size == 20 * 7
    assert _meshes(whole)[0].get_array().size == 50 * 7
    # the overview has no cell text; the detail has the top-1 token in every cell
    assert len(whole.texts) == 0 and len(detail.texts) == 20 * 7
    # the overview: a purple box around the zoom (just outside it) and the green dummies
    by_colour = {to_hex(r.get_edgecolor()): r for r in _outlines(whole)}
    box, dummies = by_colour[BOX_COLOUR], by_colour[FRAME_COLOUR]
    assert box.get_x() < 29.5 and box.get_x() + box.get_width() > 49.5
    assert box.get_x() > 28.5 and box.get_x() + box.get_width() < 50.5
    assert dummies.get_x() == pytest.approx(43.5) and dummies.get_width() == 6
    # the detail: the dummies framed in green, in its own columns
    (frame,) = _outlines(detail)
    assert to_hex(frame.get_edgecolor()) == FRAME_COLOUR
    assert frame.get_x() == pytest.approx(13.5) and frame.get_width() == 6
    # one colour scale for both parts
    assert _meshes(detail)[0].norm.vmax == _meshes(whole)[0].norm.vmax
    assert detail.get_xticklabels()[0].get_text() == "▁tok30"
    assert (
        "Positions 30–49" in detail.get_title() and "green: the dummy tokens" in detail.get_title()
    )
    assert fig.get_suptitle().endswith("whole prompt (50 positions)")
    plt.close(fig)


def test_overview_can_be_turned_off_or_asked_for():
    res = synthetic(50, marked=(44, 50))
    single = res.plot(zoom="30:50", overview=False)
    assert len(single.axes) == 2  # the heatmap and its colour bar: today's zoomed figure
    # a zoom covering the whole prompt: one figure, unless the overview is asked for
    assert len(res.plot(zoom="0:50").axes) == 2
    assert len(res.plot(zoom="0:50", overview=True).axes) == 3
    with pytest.raises(TokenprobeError, match="overview boxes the zoom region"):
        res.plot(overview=True)
    plt.close("all")


def test_composite_layout_has_no_overlaps():
    """The parts' tick labels, titles and the colour bar do not overlap one another."""
    fig = synthetic(120, n_rows=31, marked=(110, 120)).plot(zoom="100:120")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    detail, whole, bar = fig.axes
    over_labels = [t.get_window_extent(renderer) for t in whole.get_xticklabels() if t.get_text()]
    for a, b in zip(over_labels, over_labels[1:], strict=False):
        assert a.x1 <= b.x0 + 0.5, "overview x labels overlap"
    lowest_label = min(b.y0 for b in over_labels)
    title = detail.title.get_window_extent(renderer)
    assert title.y1 <= lowest_label, "the detail's title runs into the overview's labels"
    assert bar.get_window_extent(renderer).x0 >= detail.get_window_extent(renderer).x1
    plt.close(fig)


def test_the_page_shows_both_parts_with_box_and_frames(tmp_path):
    res = with_diff(synthetic(40, marked=(34, 40)))
    res.save(tmp_path / "c", formats=["png"], plot_options={"zoom": "24:40", "colour": "diff"})
    back = tokenprobe.load_result(tmp_path / "c")
    whole, detail = back.sections()
    assert len(whole["cols"]) == 40 and whole["box"] == [24, 40] and whole["frame"] == [34, 40]
    assert len(detail["cols"]) == 16 and detail["box"] is None and detail["frame"] == [10, 16]
    assert whole["box_colour"] == BOX_COLOUR and detail["frame_colour"] == FRAME_COLOUR
    assert whole["cmap"] == detail["cmap"] == "RdBu_r" and whole["vmax"] == detail["vmax"]
    assert "Sydney" in whole["colorbar"]
    assert all(s["kind"] == "lens" for s in (whole, detail))
    html = render([back])
    assert html.count('"box_colour"') == 2
    # without a zoom: one section, as before
    assert len(res.sections()) == 1


# ---------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import make_model, make_tokenizer

    lm = make_model("llama", make_tokenizer())
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_cli_foil_colour_and_overview(model_dir, tmp_path, capsys):
    from tokenprobe.cli import main

    out = tmp_path / "lens"
    base = [
        "lens",
        "--model",
        str(model_dir),
        "--chat",
        "--prompt",
        "What is the capital of Australia?",
    ]
    code = main(
        [
            *base,
            "--dummy",
            "3",
            "--target",
            " Canberra",
            "--foil",
            " Sydney",
            "--zoom=-8:",
            "--colour",
            "diff",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    res = tokenprobe.load_result(out)
    assert res.foil == " Sydney" and res.logit_diff is not None
    assert res.meta["plot_options"]["colour"] == "diff"
    assert [s["box"] for s in res.sections()] == [[res.n_positions - 8, res.n_positions], None]
    assert (out / "lens.png").stat().st_size > 0
    main([*base, "--zoom=-8:", "--no-overview", "--out", str(tmp_path / "single")])
    assert len(tokenprobe.load_result(tmp_path / "single").sections()) == 1
    capsys.readouterr()
    for argv, message in [
        (
            ["--colour", "diff"],
            "--colour diff draws logit(target) - logit(foil): give --target and --foil",
        ),
        (
            ["--overview", "--no-overview", "--zoom", "1:3"],
            "--overview and --no-overview contradict",
        ),
        (["--overview"], "--overview boxes the --zoom region"),
        (["--target", " Canberra", "--foil", " Canberra"], "--foil ' Canberra' is the same token"),
        (["--foil", " Sydney"], "--foil needs a target to compare with: give --target too"),
    ]:
        code = main([*base, "--out", str(tmp_path / "bad"), *argv])
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("tokenprobe: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)


def test_a_demo_entry_may_give_a_foil_and_figure_options(model_dir, tmp_path, monkeypatch, capsys):
    """demo.json's lens entries may say "foil", "zoom", "colour" and "overview"."""
    import tokenprobe.cli
    from tokenprobe.cli import main

    entry = {
        "name": "lens_composite",
        "prompt": "What is the capital of Australia?",
        "chat": True,
        "dummy": 3,
        "targets": [" Canberra", " Sydney"],
        "foil": " Sydney",
        "zoom": "-8:",
        "colour": "diff",
    }
    monkeypatch.setattr(tokenprobe.cli.demo, "demo_specs", lambda: {"lens": [entry]})
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model_dir), "--out", str(out)]) == 0, (
        capsys.readouterr().err
    )
    res = tokenprobe.load_result(out / "lens_composite")
    assert res.foil == " Sydney" and res.meta["plot_options"] == {"zoom": "-8:", "colour": "diff"}
    assert len(res.sections()) == 2 and (out / "report.html").is_file()
