"""The lens's heatmaps: x = input tokens, y = layers with "output" on top, the top-1 token in
each cell, colour = entropy (or the logit difference target - foil); hovering on the page gives
the top-k and the targets. With a zoom on a longer prompt, one composite figure (overview + detail):
the whole prompt above, a purple box marking the zoom, the zoom in detail below."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...errors import TokenprobeError
from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap, clip_range, parse_range
from ...text import display_token

if TYPE_CHECKING:
    from .options import LensFigure
    from .result import LensResult

MAX_ANNOTATED_POSITIONS = 80
MAX_COMPOSITE_WIDTH_IN = 12.0  # an overview alone does not widen a composite past this


@dataclass
class _Colouring:
    """What the colour shows: the values, the colour map, the colour bar's name, the title."""

    values: np.ndarray  # (rows, positions)
    cmap: str
    colorbar: str
    title: str
    diverging: bool  # limits symmetric around 0


def lens_view(result: LensResult, figure: LensFigure) -> Heatmap:
    """Heatmap of positions `zoom` (START:END, default all), outlining positions `frame`
    (default: the inserted dummy tokens; False for none). `colour` "entropy" runs from 0 to
    `vmax` nats (default: the largest entropy drawn, rounded up to half a nat); "diff" draws
    logit(first target) - logit(foil) from -`vmax` to `vmax` around 0. `overview` (default:
    when `zoom` is shorter than the prompt) gives the composite: the whole prompt above with
    the zoom boxed, the zoom below with the top-1 tokens, one colour scale for both."""
    zoom, frame, overview, vmax = figure.zoom, figure.frame, figure.overview, figure.vmax
    annotate, label_chars = figure.annotate, figure.label_chars
    n_pos = result.n_positions
    paint = _colouring(result, figure.colour, figure.cmap, figure.title)
    asked = parse_range(zoom, "zoom")
    start, end = clip_range(asked or (0, n_pos), n_pos, "zoom")
    framed = _frame_span(result, frame)
    if overview is None:
        overview = asked is not None and end - start < n_pos
    if not overview:
        limits = _limits(paint, paint.values[:, start:end], vmax)
        return _heatmap(result, paint, (start, end), limits, framed, annotate, label_chars)
    if asked is None:
        raise TokenprobeError(
            "`overview` boxes the `zoom` region on the whole prompt: give `zoom` START:END too"
        )
    limits = _limits(paint, paint.values, vmax)  # one colour scale for both parts
    detail = _heatmap(result, paint, (start, end), limits, framed, annotate, label_chars)
    whole = _heatmap(result, paint, (0, n_pos), limits, framed, False, label_chars)
    width = max(detail.size[0], min(whole.size[0], MAX_COMPOSITE_WIDTH_IN))
    detail.size = (width, detail.size[1])
    detail.title = f"Positions {start}–{end - 1} (the purple box above): top-1 token in each cell"
    if framed is not None and framed[0] < end and framed[1] > start:
        what = (
            "the dummy tokens"
            if framed == result.marked
            else f"positions {framed[0]}–{framed[1] - 1}"
        )
        detail.title += f"; green: {what}"
    whole.size = (width, 0.1 * result.n_rows + 1.9)
    whole.box, whole.detail = (start, end), detail
    whole.title = f"{paint.title}: whole prompt ({n_pos} positions)"
    whole.col_numbers = (0, "position")
    whole.gridlines = 0.0
    whole.ytick_fontsize = 6.0
    return whole


def _colouring(result: LensResult, colour: str, cmap: str | None, title: str | None) -> _Colouring:
    """Entropy (sequential, 0 = certain) or the logit difference (diverging around 0)."""
    model = (result.meta.get("model") or {}).get("name", "")
    by = f" — {model}" if model else ""
    which = "tuned lens" if result.meta.get("lens") else "logit lens"
    which += f", {result.side} layers" if result.side else ""
    if colour == "entropy":
        heading = title or f"Entropy of token predictions ({which}){by}"
        return _Colouring(result.entropy, cmap or "RdYlBu_r", "Entropy (nats)", heading, False)
    if result.logit_diff is None:
        raise TokenprobeError(
            "`colour` diff draws logit(target) - logit(foil): compute the lens with a `foil` "
            "(and `targets`)"
        )
    name = _diff_name(result)
    heading = title or f"Logit difference {name} ({which}){by}"
    return _Colouring(result.logit_diff, cmap or "RdBu_r", name, heading, True)


def _diff_name(result: LensResult) -> str:
    """logit('A') - logit('B'), with the tokens the difference compares (of a multi-token
    target or foil, its first)."""
    targets = result.meta.get("target_tokens") or result.targets
    foil = result.meta.get("foil_token") or result.foil or ""
    return f"logit({str(targets[0]) if targets else '?'!r}) - logit({str(foil)!r})"


def _limits(paint: _Colouring, shown: np.ndarray, vmax: float | None) -> tuple[float, float]:
    """Colour limits: the data's own range (more contrast than 0..ln V; pass `vmax` to compare
    figures), rounded up to half a unit. A difference is symmetric around 0 and scaled by the
    rows above the embeddings (layer 0, the decoded input embeddings, reaches several times
    the differences of every other row and would wash them out); cells beyond saturate."""
    if paint.diverging and shown.shape[0] > 1:
        shown = shown[1:]
    finite = shown[np.isfinite(shown)]
    largest = float(np.abs(finite).max(initial=0.0))
    top = vmax if vmax is not None else max(0.5, math.ceil(2 * largest) / 2)
    return (-top, top) if paint.diverging else (0.0, top)


def _frame_span(
    result: LensResult, frame: str | tuple[int, int] | bool | None
) -> tuple[int, int] | None:
    """The outlined positions: `frame`, else the dummy tokens; None for none."""
    if frame is False:
        return None
    span = result.marked if frame is None or frame is True else parse_range(frame, "frame")
    return None if span is None else clip_range(span, result.n_positions, "frame")


def _heatmap(
    result: LensResult,
    paint: _Colouring,
    span: tuple[int, int],
    limits: tuple[float, float],
    framed: tuple[int, int] | None,
    annotate: bool | None,
    label_chars: int,
) -> Heatmap:
    """Positions `span` of the lens as a Heatmap, sized for its own figure."""
    start, end = span
    n_rows = result.n_rows
    width = end - start
    annotate = width <= MAX_ANNOTATED_POSITIONS if annotate is None else annotate
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(7.0, (0.52 if annotate else 0.14) * width + 3.0))
    shown = None
    if framed is not None:
        f0, f1 = max(framed[0], start), min(framed[1], end)
        shown = (f0 - start, f1 - start) if f0 < f1 else None
    labels = np.vectorize(lambda t: display_token(str(t), label_chars), otypes=[object])
    about = [
        f"{'source' if result.side else 'prompt'}: {result.meta.get('prompt', '')}",
        f"targets: {', '.join(result.targets) or 'none'}",
    ]
    if result.side:
        about.append("positions: the decoder's; rows: its layers (encoder layers left out)")
    if result.logit_diff is not None:
        about.append(f"foil: {result.foil!r}, logit difference: {_diff_name(result)}")
    return Heatmap(
        values=paint.values[:, start:end],
        rows=list(result.layer_labels),
        cols=[display_token(t, 10) for t in result.tokens[start:end]],
        cmap=paint.cmap,
        vmin=limits[0],
        vmax=limits[1],
        title=paint.title,
        colorbar=paint.colorbar,
        xlabel=f"{result.side} token" if result.side else "input token",
        ylabel=f"{result.side} layer" if result.side else "layer",
        origin="lower",
        cell_text=labels(result.top1[:, start:end]),
        annotate=annotate,
        cell_fontsize=6.5 if label_chars <= 7 else 5.5,
        frame=shown,
        tips=lambda: _tips(result, start, end),
        about=about,
        size=(fig_w, max(4.5, 0.27 * n_rows + 2.6)),
        col_numbers=(start, "position"),
        gridlines=0.25 if annotate else 0.0,
        colorbar_fraction=0.025 if fig_w > 12 else 0.05,
        extend=_extend(paint.values[:, start:end], limits),
    )


def _extend(values: np.ndarray, limits: tuple[float, float]) -> str:
    """The colour bar's arrows: which ends some drawn cells go past."""
    low = bool(np.nanmin(values) < limits[0]) if values.size else False
    high = bool(np.nanmax(values) > limits[1]) if values.size else False
    return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (low, high), "both"
    )


def _tips(res: LensResult, start: int, end: int) -> list[list[str]]:
    """Hover text of each cell: the position, the layer, entropy, top-k, the targets and the
    logit difference."""
    diff = _diff_name(res) if res.logit_diff is not None else None
    tips = []
    for r in range(res.n_rows):
        line = []
        for c in range(start, end):
            tops = ", ".join(
                f"{display_token(str(res.top_tokens[r, c, j]), 16)} {res.top_probs[r, c, j]:.3f}"
                for j in range(res.top_k)
            )
            text = (
                f"position {c}: {display_token(res.tokens[c], 24)}\nlayer {res.layer_labels[r]}\n"
                f"entropy {res.entropy[r, c]:.3f} nats\ntop-{res.top_k}: {tops}"
            )
            for t, name in enumerate(res.targets):
                assert res.target_probs is not None and res.target_ranks is not None
                text += f"\n{display_token(name, 16)}: p={res.target_probs[r, c, t]:.4f} rank {res.target_ranks[r, c, t]}"
            if diff is not None:
                assert res.logit_diff is not None
                text += f"\n{diff} = {res.logit_diff[r, c]:.3f}"
            line.append(text)
        tips.append(line)
    return tips
