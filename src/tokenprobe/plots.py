"""Static heatmaps of results (matplotlib), one function per figure kind.

Figures grow with the data so labels never overlap: each position gets a fixed width while
the cell text is shown, and past that the tick labels are thinned instead of shrunk.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display needed
import matplotlib.patheffects as pe  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .errors import TokenprobeError  # noqa: E402
from .text import display_token  # noqa: E402

if TYPE_CHECKING:
    from .results import AttributionResult, FlipResult, LensResult, SimilarityResult

# Token text can hold any script; a missing glyph shows as a box, which is no reason to warn.
warnings.filterwarnings("ignore", message=r"Glyph .* missing from font", category=UserWarning)

MAX_ANNOTATED_POSITIONS = 80
MAX_FIGURE_WIDTH_IN = 60.0


def parse_range(spec: str | tuple[int, int] | None, flag: str) -> tuple[int, int] | None:
    """`START:END` (end exclusive, either side may be empty) to a tuple; None stays None."""
    if spec is None or isinstance(spec, tuple):
        return spec
    try:
        start_s, end_s = spec.split(":")
        start = int(start_s) if start_s.strip() else 0
        end = int(end_s) if end_s.strip() else -1
    except ValueError as exc:
        raise TokenprobeError(f"{flag} {spec!r} is not START:END (e.g. {flag} 10:30)") from exc
    return start, end


def _clip_range(rng: tuple[int, int], n: int, flag: str) -> tuple[int, int]:
    start, end = rng
    end = n if end == -1 else end
    if start < 0:
        start += n
    if end < 0:
        end += n
    if not (0 <= start < end <= n):
        raise TokenprobeError(
            f"{flag} {rng[0]}:{rng[1]} is outside the {n} positions (use START:END with 0 <= START < END <= {n})"
        )
    return start, end


def _text_colours(values: np.ndarray, cmap: Any, norm: Normalize) -> np.ndarray:
    """Black on light cells, white on dark ones (relative luminance of the cell colour)."""
    rgba = cmap(norm(values))
    lum = 0.2126 * rgba[..., 0] + 0.7152 * rgba[..., 1] + 0.0722 * rgba[..., 2]
    return np.where(lum > 0.45, "black", "white")


def _heatmap(
    values: np.ndarray,
    size: tuple[float, float],
    cmap: Any,
    norm: Normalize,
    *,
    x0: float = -0.5,
    gridlines: float = 0.0,
) -> tuple[Any, Any, Any]:
    """Figure, axes and mesh of a (rows x columns) grid with cell centres at integers (x from x0 + 0.5)."""
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    mesh = ax.pcolormesh(
        np.arange(cols + 1) + x0,
        np.arange(rows + 1) - 0.5,
        values,
        cmap=cmap,
        norm=norm,
        edgecolors="white" if gridlines else "face",
        linewidth=gridlines,
    )
    ax.set_xlim(x0, cols + x0)
    return fig, ax, mesh


def _write_cells(ax: Any, texts: np.ndarray, colours: np.ndarray, fontsize: float) -> None:
    """Write one string per cell, centred, in the colour chosen for that cell."""
    for r in range(texts.shape[0]):
        for c in range(texts.shape[1]):
            ax.text(
                c,
                r,
                texts[r, c],
                ha="center",
                va="center",
                fontsize=fontsize,
                color=colours[r, c],
                clip_on=True,
            )


def plot_lens(
    result: LensResult,
    *,
    zoom: str | tuple[int, int] | None = None,
    frame: str | tuple[int, int] | bool | None = None,
    annotate: bool | None = None,
    label_chars: int = 7,
    cmap: str = "RdYlBu_r",
    vmax: float | None = None,
    title: str | None = None,
) -> Any:
    """Entropy heatmap: x = input tokens, y = layers with "output" on top, top-1 token per cell.

    `zoom` keeps positions START:END; `frame` outlines positions START:END (default: the
    inserted dummy tokens; False for none). Colour runs from 0 to `vmax` nats (default: the
    largest entropy drawn, rounded up to half a nat).
    """
    n_rows, n_pos = result.entropy.shape
    start, end = _clip_range(parse_range(zoom, "--zoom") or (0, n_pos), n_pos, "--zoom")
    ent = result.entropy[:, start:end]
    top1 = result.top1[:, start:end]
    tokens = result.tokens[start:end]
    width = end - start
    annotate = width <= MAX_ANNOTATED_POSITIONS if annotate is None else annotate

    # default: the data's own range (more contrast than 0..ln V; pass vmax=ln V to compare figures)
    top = vmax if vmax is not None else max(0.5, math.ceil(2 * float(np.nanmax(ent))) / 2)
    norm = Normalize(vmin=0.0, vmax=top)
    colormap = plt.get_cmap(cmap)

    per_pos = 0.52 if annotate else 0.14
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(7.0, per_pos * width + 3.0))
    fig_h = max(4.5, 0.27 * n_rows + 2.6)
    fig, ax, mesh = _heatmap(
        ent, (fig_w, fig_h), colormap, norm, gridlines=0.25 if annotate else 0.0
    )
    ax.set_ylim(-0.5, n_rows - 0.5)

    if annotate:
        labels = np.vectorize(lambda t: display_token(str(t), label_chars), otypes=[object])(top1)
        _write_cells(
            ax, labels, _text_colours(ent, colormap, norm), 6.5 if label_chars <= 7 else 5.5
        )

    # x labels: every position while they fit, else every k-th one
    usable_in = fig_w - 3.0
    step = max(1, math.ceil(width * 0.11 / usable_in))
    ticks = np.arange(0, width, step)
    ax.set_xticks(ticks)
    ax.set_xticklabels([display_token(tokens[i], 10) for i in ticks], rotation=90, fontsize=7)
    if start or step > 1:
        secondary = ax.secondary_xaxis("top")
        pos_step = max(step, 5 if width > 20 else 1)
        secondary.set_xticks(np.arange(0, width, pos_step))
        secondary.set_xticklabels([str(start + i) for i in range(0, width, pos_step)], fontsize=6)
        secondary.set_xlabel("position", fontsize=8)
    ax.set_yticks(np.arange(n_rows))
    ax.set_yticklabels(result.layer_labels, fontsize=7)
    ax.set_xlabel("input token")
    ax.set_ylabel("layer")

    if frame is not False:
        span = parse_range(frame, "--frame") if frame not in (None, True) else result.marked
        if span is not None:
            f0, f1 = _clip_range(span, n_pos, "--frame")
            f0, f1 = max(f0, start), min(f1, end)
            if f0 < f1:
                rect = Rectangle(
                    (f0 - start - 0.5, -0.5),
                    f1 - f0,
                    n_rows,
                    fill=False,
                    edgecolor="#7b1fa2",
                    linewidth=2.6,
                    clip_on=False,
                    zorder=5,
                )
                rect.set_path_effects([pe.Stroke(linewidth=4.5, foreground="white"), pe.Normal()])
                ax.add_patch(rect)

    cbar = fig.colorbar(mesh, ax=ax, fraction=0.025 if fig_w > 12 else 0.05, pad=0.01)
    cbar.set_label("Entropy (nats)")
    model_name = (result.meta.get("model") or {}).get("name", "")
    ax.set_title(
        title
        or f"Entropy of token predictions (logit lens){' — ' + model_name if model_name else ''}"
    )
    return fig


def plot_similarity(
    result: SimilarityResult,
    *,
    cmap: str = "viridis",
    vmax: float | None = None,
    title: str | None = None,
) -> Any:
    """Layer x distance heatmap of cosine similarity: layer 0 at the bottom, distance 1 on the left,
    a colour range symmetric about 0, padded cells (no text reaches that far) left blank."""
    n_layers, window = result.cosine.shape
    values = np.ma.masked_invalid(result.cosine)
    finite = result.cosine[np.isfinite(result.cosine)]
    top = vmax if vmax is not None else (float(np.abs(finite).max()) if finite.size else 1.0) or 1.0
    colormap = plt.get_cmap(cmap).with_extremes(bad="white")
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(6.5, 0.42 * window + 3.0))
    fig_h = max(4.0, 0.24 * n_layers + 2.4)
    fig, ax, mesh = _heatmap(values, (fig_w, fig_h), colormap, Normalize(-top, top), x0=0.5)
    ax.set_ylim(-0.5, n_layers - 0.5)
    where = "past" if result.direction == "past" else "future"
    name = f"{result.marker} #{result.occurrence}"
    step = max(1, math.ceil(window * 0.11 / max(1.0, fig_w - 3.0)))
    ticks = np.arange(1, window + 1, step)
    ax.set_xticks(ticks)
    if any(t is not None for t in result.tokens):
        ax.set_xticklabels(
            [
                display_token(result.tokens[d - 1], 10) if result.tokens[d - 1] is not None else ""
                for d in ticks
            ],
            rotation=90,
            fontsize=8,
        )
        ax.set_xlabel(f"Token {where} of {name} (at T distance; T = 1 on the left)")
    else:
        ax.set_xticklabels([str(d) for d in ticks], fontsize=8)
        ax.set_xlabel(f"distance from {name} (tokens, {where})")
    ystep = max(1, math.ceil(n_layers / 40))
    ax.set_yticks(np.arange(0, n_layers, ystep))
    ax.set_yticklabels([result.layer_labels[i] for i in range(0, n_layers, ystep)], fontsize=8)
    ax.set_ylabel("Layer")
    cbar = fig.colorbar(mesh, ax=ax, fraction=0.04, pad=0.01)
    cbar.set_label("cosine similarity")
    texts = result.meta.get("texts_used")
    tags = "Padded, centred" if result.centre else "Padded"
    over = f" — mean over {texts} texts" if texts and texts > 1 else ""
    ax.set_title(title or f"{name} • {where.capitalize()} Cosine-Sim ({tags}){over}")
    return fig


MAX_ANNOTATED_CELLS = 1600


def plot_attribution(
    result: AttributionResult,
    *,
    cmap: str = "RdYlGn",
    annotate: bool | None = None,
    title: str | None = None,
) -> Any:
    """Features as columns (labels on top), target rows as rows, each value written with 4
    decimals; RdYlGn centred on 0 with limits at +-max|value|; colourbar "Token Attribution"."""
    scores = result.scores
    n_rows, n_feat = scores.shape
    annotate = (
        n_rows * n_feat <= MAX_ANNOTATED_CELLS and n_feat <= 60 if annotate is None else annotate
    )
    top = float(np.abs(scores).max()) or 1.0
    norm = Normalize(vmin=-top, vmax=top)
    colormap = plt.get_cmap(cmap)
    spans = bool((result.meta.get("options") or {}).get("spans"))
    labels = [display_token(f["text"], 18, show_spaces=not spans) for f in result.features]
    per_col = 0.95 if annotate else 0.18
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(6.0, per_col * n_feat + 3.0))
    fig_h = max(3.5, (0.36 if annotate else 0.16) * n_rows + 2.8)
    fig, ax, mesh = _heatmap(
        scores, (fig_w, fig_h), colormap, norm, gridlines=0.4 if annotate else 0.0
    )
    ax.set_ylim(n_rows - 0.5, -0.5)  # first target row on top
    if annotate:
        values = np.vectorize(lambda v: f"{v:.4f}", otypes=[object])(scores)
        _write_cells(ax, values, _text_colours(scores, colormap, norm), 7)
    xstep = max(1, math.ceil(n_feat * 0.11 / max(1.0, fig_w - 3.0)))
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xticks(np.arange(0, n_feat, xstep))
    ax.set_xticklabels(
        [labels[i] for i in range(0, n_feat, xstep)], rotation=60, ha="left", fontsize=8
    )
    ystep = max(1, math.ceil(n_rows * 0.13 / max(1.0, fig_h - 2.8)))
    ax.set_yticks(np.arange(0, n_rows, ystep))
    row_spans = bool((result.meta.get("options") or {}).get("target_spans"))
    ax.set_yticklabels(
        [
            display_token(result.rows[i], 18, show_spaces=not row_spans)
            for i in range(0, n_rows, ystep)
        ],
        fontsize=8,
    )
    ax.set_xlabel("input feature")
    ax.set_ylabel(
        "target token" if all(len(p) <= 1 for p in result.row_positions) else "target span"
    )
    cbar = fig.colorbar(mesh, ax=ax, fraction=0.04, pad=0.01)
    cbar.set_label("Token Attribution")
    model_name = (result.meta.get("model") or {}).get("name", "")
    fig.suptitle(
        title
        or f"Token Attribution ({result.method.replace('_', ' ')}){' — ' + model_name if model_name else ''}",
        fontsize=11,
    )
    return fig


RANKINGS = ("support", "rate", "frequency")


def top_words(rates: Any, top: int, rank: str, min_count: int) -> list[str]:
    """The class's words to show, among those with a cell of at least `min_count` occurrences:
    `support` ranks by the Wilson lower bound of the word's flip rate (a high rate that enough
    occurrences back), `rate` by the flip rate, `frequency` by occurrences."""
    from .stats import wilson

    if rank not in RANKINGS:
        raise TokenprobeError(f"unknown --rank {rank!r}: use {', '.join(RANKINGS)}")
    if top < 1:
        raise TokenprobeError(f"--top must be at least 1, not {top}")
    if min_count < 1:
        raise TokenprobeError(f"--min-count must be at least 1, not {min_count}")
    # only words with at least one cell that will be drawn (min_count occurrences in a bucket)
    shown = rates.groupby("word")["occurrences"].max()
    rates = rates[rates["word"].isin(shown[shown >= min_count].index)]
    per_word = rates.groupby("word")[["flips", "occurrences"]].sum()
    if rank == "support":
        key = wilson(per_word["flips"].to_numpy(), per_word["occurrences"].to_numpy())[0]
    elif rank == "rate":
        key = (per_word["flips"] / per_word["occurrences"]).to_numpy()
    else:
        key = per_word["occurrences"].to_numpy()
    order = sorted(
        range(len(per_word)),
        key=lambda i: (-key[i], -per_word["occurrences"].iloc[i], per_word.index[i]),
    )
    return [per_word.index[i] for i in order[:top]]


def plot_flips(
    result: FlipResult,
    *,
    label: str,
    top: int = 40,
    rank: str = "support",
    min_count: int = 3,
    cmap: str = "viridis",
    title: str | None = None,
) -> Any:
    """Words x position buckets, colour = flip rate (viridis, 0..1); cells with fewer than
    `min_count` occurrences are masked (grey)."""
    rates = result.rates[result.rates["class"] == label]
    if rates.empty:
        raise TokenprobeError(
            f"no texts of class {label!r}: choose one of {', '.join(result.classes())}"
        )
    words = top_words(rates, top, rank, min_count)
    if not words:  # too few texts of this class for any cell to reach min_count
        fig, ax = plt.subplots(figsize=(6, 2), layout="constrained")
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"{label}: no word has a bucket with {min_count} or more occurrences\n"
            "(more texts, or a lower --min-count)",
            ha="center",
            va="center",
        )
        return fig
    grid = np.full((len(words), result.buckets), np.nan)
    index = {w: r for r, w in enumerate(words)}
    for row in rates.itertuples():
        r = index.get(row.word)
        if r is not None and row.occurrences >= min_count:
            grid[r, int(row.bucket)] = row.rate
    colormap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    fig_h = max(3.5, 0.22 * len(words) + 1.8)
    fig_w = max(5.5, 0.45 * result.buckets + 3.0)
    fig, ax, mesh = _heatmap(np.ma.masked_invalid(grid), (fig_w, fig_h), colormap, Normalize(0, 1))
    ax.set_ylim(len(words) - 0.5, -0.5)  # highest ranked on top
    ax.set_xticks(np.arange(result.buckets))
    ax.set_yticks(np.arange(len(words)))
    ax.set_yticklabels(words, fontsize=8)
    ax.set_xlabel("position bucket")
    ax.set_ylabel("token")
    cbar = fig.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
    cbar.set_label("flip rate")
    n_texts = int(
        result.occurrences.loc[result.occurrences["original"] == label, "text_id"].nunique()
    )
    ax.set_title(
        title
        or f"Token Flip Rate by Position Bucket — {label} ({n_texts} texts; grey: < {min_count} occurrences)",
        fontsize=10,
    )
    return fig
