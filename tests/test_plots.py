"""The lens figure: size grows with the prompt, labels never overlap, zoom and frame work."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.patches import Rectangle

from tokenprobe import LensResult, TokenprobeError


def synthetic(n_pos: int, n_rows: int = 7, marked=None) -> LensResult:
    rng = np.random.default_rng(0)
    k = 3
    return LensResult(
        tokens=[f" tok{i}" for i in range(n_pos)],
        token_ids=list(range(n_pos)),
        layer_labels=[str(i) for i in range(n_rows - 1)] + ["output"],
        entropy=rng.uniform(0, 8, (n_rows, n_pos)).astype(np.float32),
        top_ids=rng.integers(0, 100, (n_rows, n_pos, k)),
        top_tokens=np.full((n_rows, n_pos, k), " word", dtype=object),
        top_probs=rng.uniform(0, 1, (n_rows, n_pos, k)).astype(np.float32),
        marked=marked,
        meta={"model": {"name": "synthetic", "vocab_size": 100}},
    )


def _mesh_shape(fig) -> tuple[int, int]:
    ax = fig.axes[0]
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    return mesh.get_array().reshape(-1).size, len(ax.get_yticks())


def _frames(fig) -> list[Rectangle]:
    return [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and not p.get_fill()]


def test_figure_grows_with_the_prompt():
    small, large = synthetic(10).plot(), synthetic(60).plot()
    assert large.get_figwidth() > 2 * small.get_figwidth()
    plt.close("all")


def test_cells_are_annotated_with_top1():
    fig = synthetic(12, n_rows=5).plot()
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 12 * 5 and set(texts) == {"▁word"}
    assert fig.axes[0].get_yticklabels()[-1].get_text() == "output"
    plt.close(fig)


@pytest.mark.parametrize("n_pos", [40, 300, 1000])
def test_tick_labels_never_overlap(n_pos):
    fig = synthetic(n_pos).plot()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(boxes) >= min(n_pos, 100)
    for a, b in zip(boxes, boxes[1:], strict=False):
        assert a.x1 <= b.x0 + 0.5, "x labels overlap"
    plt.close(fig)


def test_zoom_keeps_a_position_range():
    fig = synthetic(50).plot(zoom="10:20")
    cells, rows = _mesh_shape(fig)
    assert cells == 10 * 7 and rows == 7
    assert fig.axes[0].get_xticklabels()[0].get_text() == "▁tok10"
    plt.close(fig)


def test_dummies_are_framed_by_default_and_frame_can_be_chosen_or_off():
    res = synthetic(20, marked=(14, 20))
    fig = res.plot()
    (rect,) = _frames(fig)
    assert rect.get_x() == pytest.approx(13.5) and rect.get_width() == 6
    fig2 = res.plot(frame="2:5")
    (rect2,) = _frames(fig2)
    assert rect2.get_x() == pytest.approx(1.5) and rect2.get_width() == 3
    assert _frames(res.plot(frame=False)) == []
    # a frame partly outside the zoom is clipped to it
    (rect3,) = _frames(res.plot(zoom="0:16"))
    assert rect3.get_x() == pytest.approx(13.5) and rect3.get_width() == 2
    plt.close("all")


def test_bad_ranges_are_clear_errors():
    res = synthetic(10)
    with pytest.raises(TokenprobeError, match="zoom 8:3 is outside"):
        res.plot(zoom="8:3")
    with pytest.raises(TokenprobeError, match="not START:END"):
        res.plot(frame="1-3")


def test_text_colour_follows_the_cell_brightness():
    from matplotlib.colors import Normalize

    from tokenprobe.heatmap import text_colours as _text_colours

    colours = _text_colours(np.array([0.0, 5.0, 10.0]), plt.get_cmap("RdYlBu_r"), Normalize(0, 10))
    assert list(colours) == ["white", "black", "white"]
