"""The flip-rate heatmaps: one per class, words (ranked) x position buckets, colour = flip rate
(0..1); cells backed by fewer than `min_count` occurrences are masked (grey)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import TokenprobeError
from ...heatmap import Heatmap
from ...stats import wilson
from .options import FlipFigure

if TYPE_CHECKING:
    import pandas as pd

    from .result import FlipResult


def top_words(rates: Any, top: int, rank: str, min_count: int) -> list[str]:
    """The class's words to show, among those with a cell of at least `min_count` occurrences:
    `support` ranks by the Wilson lower bound of the word's flip rate (a high rate that enough
    occurrences back), `rate` by the flip rate, `frequency` by occurrences. The three are
    checked as `FlipFigure` checks them."""
    figure = FlipFigure(top=top, rank=rank, min_count=min_count)
    return _top_words(rates, figure.top, figure.rank, figure.min_count)


def _top_words(rates: Any, top: int, rank: str, min_count: int) -> list[str]:
    """`top_words` of settings already checked."""
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


def flip_view(
    result: FlipResult, label: str, figure: FlipFigure | None = None, **settings: Any
) -> Heatmap:
    """The `top` words of class `label` ranked by `rank` (see `top_words`) x position buckets;
    a class where no cell reaches `min_count` gets a message instead of a grid. `figure` (or
    its settings as keyword arguments): see `FlipFigure`."""
    figure = FlipFigure.build(figure, settings)
    min_count, title = figure.min_count, figure.title
    rates = result.rates[result.rates["class"] == label]
    if rates.empty:
        raise TokenprobeError(
            f"no texts of class {label!r}: choose one of {', '.join(result.classes())}"
        )
    words = _top_words(rates, figure.top, figure.rank, min_count)
    grid = np.full((len(words), result.buckets), np.nan)
    index = {w: r for r, w in enumerate(words)}
    for row in rates.itertuples():
        r = index.get(row.word)
        if r is not None and row.occurrences >= min_count:
            grid[r, int(row.bucket)] = row.rate
    n_texts = int(
        result.occurrences.loc[result.occurrences["original"] == label, "text_id"].nunique()
    )
    nothing = (
        [] if words else [f"nothing to draw: no word has a bucket with {min_count}+ occurrences"]
    )
    return Heatmap(
        values=grid,
        rows=list(words),
        cols=[str(b) for b in range(result.buckets)],
        cmap=figure.cmap,
        vmin=0.0,
        vmax=1.0,
        title=title
        or f"Token Flip Rate by Position Bucket — {label} ({n_texts} texts; grey: < {min_count} occurrences)",
        colorbar="flip rate",
        xlabel="position bucket",
        ylabel="token",
        origin="upper",  # highest ranked on top
        tips=lambda: _tips(rates, words, result.buckets, min_count),
        about=[
            f"data: {result.meta.get('data', '')}",
            f"accuracy: {result.meta.get('accuracy')}",
            *nothing,
        ],
        # too few texts of this class for any cell to reach min_count
        empty=f"{label}: no word has a bucket with {min_count} or more occurrences\n"
        "(more texts, or a lower --min-count)",
        size=(max(5.5, 0.45 * result.buckets + 3.0), max(3.5, 0.22 * len(words) + 1.8)),
        xtick_rotation=0.0,
        xtick_fontsize=10.0,
        ytick_fontsize=8.0,
        colorbar_fraction=0.05,
        colorbar_pad=0.02,
        title_fontsize=10.0,
    )


def _tips(rates: pd.DataFrame, words: list[str], buckets: int, min_count: int) -> list[list[str]]:
    """Hover text of each cell: the counts and the Wilson interval behind it, and whether it
    is masked."""
    tips = [[f"{w}, bucket {b}\nno occurrences" for b in range(buckets)] for w in words]
    index = {w: i for i, w in enumerate(words)}
    for row in rates.itertuples():
        i = index.get(row.word)
        if i is None:
            continue
        b = int(row.bucket)
        tips[i][b] = (
            f"{row.word}, bucket {b}\nflips {row.flips} / {row.occurrences} occurrences"
            f"\nrate {row.rate:.3f} (95% Wilson {row.wilson_low:.3f}-{row.wilson_high:.3f})"
            + (
                ""
                if row.occurrences >= min_count
                else f"\nmasked: fewer than {min_count} occurrences"
            )
        )
    return tips
