"""attention's pictures: one head's pattern (queries down, keys across, the lower triangle),
every head of a layer as small multiples, and the layer x head `to` table. Patterns are
images: past MAX_PIXELS tokens a pixel is the largest weight of its block of cells, and the
report gets the same figure as one PNG tile (never a node per cell)."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...heatmap import Heatmap
from ...text import display_token

if TYPE_CHECKING:
    from .result import AttentionResult

MAX_PIXELS = 1024  # a pattern wider than this is drawn block-max pooled
MAX_TICK_TOKENS = 200  # longer prompts get numbered ticks instead of token labels
MAX_GRID_TOKENS = 40  # small multiples get token labels up to this length
CMAP = "viridis"
REPORT_DPI = 80


def pooled(weights: np.ndarray, most: int = MAX_PIXELS) -> tuple[np.ndarray, int]:
    """`weights` (n, m) shrunk to at most `most` pixels a side, each the largest weight of its
    block (NaN only where the whole block is), and the block size."""
    n, k = weights.shape
    step = max(1, math.ceil(max(n, k) / most))
    if step == 1:
        return weights, 1
    rows, cols = math.ceil(n / step), math.ceil(k / step)
    padded = np.full((rows * step, cols * step), np.nan, dtype=np.float32)
    padded[:n, :k] = weights
    blocks = padded.reshape(rows, step, cols, step)
    empty = np.isnan(blocks).all(axis=(1, 3))
    out = np.nanmax(np.where(np.isnan(blocks), -np.inf, blocks), axis=(1, 3))
    out[empty] = np.nan
    return out.astype(np.float32), step


def _ticks(
    ax: Any, tokens: list[str], step: int, size: float, labels: bool, keys: list[str] | None = None
) -> None:
    """Token labels on both axes for short prompts (`keys` across where they are not the
    queries' tokens); numbered positions otherwise."""
    across = tokens if keys is None else keys
    n = max(len(tokens), len(across))
    if labels and n <= MAX_TICK_TOKENS and step == 1:
        font = max(3.0, min(8.0, 600 / max(n, 1)))
        ax.set_xticks(
            range(len(across)), [display_token(t, 10) for t in across], rotation=90, fontsize=font
        )
        ax.set_yticks(range(len(tokens)), [display_token(t, 10) for t in tokens], fontsize=font)
        return
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        axis.set_major_formatter(FuncFormatter(lambda v, _p: f"{int(v * step)}"))
        axis.set_tick_params(labelsize=size)


class ImageView:
    """A figure drawn once by matplotlib; the report gets it as one PNG data URI."""

    title: str
    about: list[str]

    def figure(self) -> Any:
        raise NotImplementedError

    def sections(self) -> list[dict[str, Any]]:
        import matplotlib.pyplot as plt

        fig = self.figure()
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=REPORT_DPI, bbox_inches="tight")
        finally:
            plt.close(fig)
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        return [{"title": self.title, "about": list(self.about), "image": uri, "cmap": CMAP}]


@dataclass
class HeadView(ImageView):
    """One head's pattern: queries down, keys across, colour = weight."""

    weights: np.ndarray  # (queries, keys), NaN above the diagonal of a causal pattern
    tokens: list[str]
    title: str
    about: list[str]
    keys: list[str] | None = None  # the keys' tokens where they are not `tokens`
    xlabel: str = "key (attended to)"
    ylabel: str = "query (attending)"

    def figure(self) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        image, step = pooled(self.weights)
        side = 7.0 if max(self.weights.shape) <= 60 else 9.0
        fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
        cmap = matplotlib.colormaps[CMAP].with_extremes(bad="#eeeeee")
        shown = ax.imshow(image, cmap=cmap, vmin=0.0, vmax=_top(image), interpolation="nearest")
        _ticks(ax, self.tokens, step, 7.0, labels=True, keys=self.keys)
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel(self.ylabel)
        ax.set_title(self.title, fontsize=10)
        bar = fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.01)
        bar.set_label("attention weight" + (f" (max of {step}x{step} blocks)" if step > 1 else ""))
        return fig


@dataclass
class LayerView(ImageView):
    """Every kept head of one layer as small multiples, one colour scale (0 to the largest)."""

    weights: list[tuple[int, np.ndarray]]  # (head, (queries, keys))
    tokens: list[str]
    title: str
    about: list[str]
    keys: list[str] | None = None  # the keys' tokens where they are not `tokens`

    def figure(self) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = len(self.weights)
        cols = max(1, math.ceil(math.sqrt(k)))
        rows = math.ceil(k / cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(2.6 * cols + 1.0, 2.6 * rows + 0.6), layout="constrained",
            squeeze=False,
        )  # fmt: skip
        cmap = matplotlib.colormaps[CMAP].with_extremes(bad="#eeeeee")
        images = [(h, *pooled(w, 256)) for h, w in self.weights]
        top = max(_top(image) for _, image, _ in images)
        shown = None
        labels = max(len(self.tokens), len(self.keys or ())) <= MAX_GRID_TOKENS
        for ax, (head, image, step) in zip(axes.flat, images, strict=False):
            shown = ax.imshow(image, cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest")
            ax.set_title(f"head {head}", fontsize=8)
            _ticks(ax, self.tokens, step, 5.0, labels=labels, keys=self.keys)
        for ax in list(axes.flat)[k:]:
            ax.axis("off")
        fig.suptitle(self.title, fontsize=10)
        if shown is not None:
            fig.colorbar(shown, ax=axes, fraction=0.03, pad=0.01).set_label("attention weight")
        return fig


def _top(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def views(result: AttentionResult) -> list[tuple[str, Any]]:
    """What `AttentionResult.views` draws (see there)."""
    meta, tokens, n = result.meta, result.tokens, len(result.tokens)
    options = meta.get("options") or {}
    model = (meta.get("model") or {}).get("name", "")
    prompt = str(meta.get("prompt", ""))  # the report adds the model's name itself
    shown = prompt if len(prompt) <= 200 else prompt[:200] + "..."
    about = [f"prompt: {shown}", f"kept: {meta.get('stored', '')}", f"{n} tokens"]
    keys = result.key_tokens
    m = len(result.keys)
    what, axes = _stack_words(result.stack)
    if result.stack is not None:
        about[-1] = f"{what}: {n} queries x {m} keys"
    kept = [b for b in result.layers if result.pattern.full(b, n)]
    out: list[tuple[str, Any]] = []
    layer = options.get("layer")
    layer = layer if layer in kept else (kept[-1] if kept else None)
    if layer is not None:
        heads = result.pattern.heads_of(layer)
        head = options.get("head")
        if head in heads or len(heads) == 1:
            head = head if head in heads else heads[0]
            title = f"{what} of layer {layer} head {head}{f' ({model})' if model else ''}"
            dense = result.pattern.dense(layer, head, n, m)
            out.append(("attention_head", HeadView(dense, tokens, title, about, keys, *axes)))
        grid = [(h, result.pattern.dense(layer, h, n, m)) for h in heads]
        title = f"{what} of every head of layer {layer}{f' ({model})' if model else ''}"
        out.append(("attention_layer", LayerView(grid, tokens, title, about, keys)))
    if result.to_table is not None:
        out.append(("attention_to", _to_view(result, model)))
    return out


def _stack_words(stack: str | None) -> tuple[str, tuple[str, str]]:
    """The figures' name for an encoder-decoder's `stack` and their (x, y) axis labels."""
    if stack == "cross":
        return "cross-attention", ("source token (key)", "decoder position (query)")
    if stack in ("encoder", "decoder"):
        side = "source" if stack == "encoder" else "decoder"
        return f"{stack} self-attention", (f"{side} token (key)", f"{side} token (query)")
    return "attention", ("key (attended to)", "query (attending)")


def _to_view(result: AttentionResult, model: str) -> Heatmap:
    """The layer x head table of attention from the query to the `to` text's tokens."""
    assert result.to_table is not None
    meta = result.meta
    values = result.to_table.astype(np.float64)
    query, keys = int(meta["from"]), list(meta["to_keys"])
    to = (meta.get("options") or {}).get("to")
    shown = "".join(result.keys[k] for k in keys)
    n_layers, n_heads = values.shape
    what, _ = _stack_words(result.stack)
    side = {"encoder": "source ", None: ""}.get(result.stack, "decoder ")
    return Heatmap(
        values=values,
        rows=[str(b) for b in result.layers],
        cols=[str(h) for h in range(n_heads)],
        cmap="magma_r",
        vmin=0.0,
        vmax=_top(values),
        title=f"{what} from {side}position {query} ({display_token(result.tokens[query], 12)}) to "
        f"{to!r}{f' ({model})' if model else ''}",
        colorbar="attention weight (summed over the text's tokens)",
        xlabel="head",
        ylabel="layer",
        origin="lower",
        cell_text=np.vectorize(lambda v: f"{v:.2f}")(values),
        annotate=n_heads <= 16 and n_layers <= 40,
        about=[f"key positions {keys} ({shown!r}), query position {query}"],
        size=(max(4.0, 0.45 * n_heads + 2.0), max(3.0, 0.3 * n_layers + 1.5)),
    )
