"""One heatmap spec, drawn by matplotlib (the saved figures) and by the HTML viewer (the report).

Every figure of every analysis is a `Heatmap`: values, labels, colour map and limits, cell
text, tooltips and a frame. `Heatmap.figure()` draws it with matplotlib and
`Heatmap.section()` hands the same numbers to the page's viewer (`report/viewer.js`), so a
saved figure and the report can no longer disagree about colours or limits.

Figures grow with the data so labels never overlap: the analysis sizes the figure, and tick
labels past what fits are thinned instead of shrunk.
"""

from __future__ import annotations

import html
import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from .errors import TokenprobeError

# Token text can hold any script; a missing glyph shows as a box, which is no reason to warn.
warnings.filterwarnings("ignore", message=r"Glyph .* missing from font", category=UserWarning)

MAX_FIGURE_WIDTH_IN = 60.0
FRAME_COLOUR = "#1b9e3e"  # green: outlined columns, e.g. the lens's dummy tokens
BOX_COLOUR = "#7b1fa2"  # purple: on an overview, the region drawn in detail below it
MASKED_COLOUR = "#d9d9d9"


@dataclass
class Heatmap:
    """A (rows x columns) grid of values and everything needed to draw it the same way twice.

    Rows are listed in reading order of `values`; `origin="lower"` draws row 0 at the bottom
    (layers grow upwards), `"upper"` at the top. NaN cells take the `bad` colour.
    """

    values: np.ndarray  # (rows, cols) float, NaN = no value
    rows: list[str]  # row labels
    cols: list[str]  # column labels
    cmap: str
    vmin: float
    vmax: float
    title: str
    colorbar: str
    xlabel: str
    ylabel: str
    origin: str = "upper"
    bad: str = MASKED_COLOUR
    cell_text: np.ndarray | None = None  # (rows, cols) str written in the cells
    annotate: bool = False  # write cell_text in the saved figure
    cell_fontsize: float = 7.0
    frame: tuple[int, int] | None = None  # columns [start, end) outlined (FRAME_COLOUR)
    box: tuple[int, int] | None = None  # columns [start, end) boxed (BOX_COLOUR): `detail`'s
    detail: Heatmap | None = None  # drawn under this one in the same figure (a composite)
    tips: Callable[[], list[list[str]]] | None = None  # hover text per cell (the page only)
    about: list[str] = field(default_factory=list)  # lines above the page's section
    empty: str | None = None  # drawn instead of the grid when there are no rows
    # layout of the saved figure
    size: tuple[float, float] = (7.0, 4.5)
    col_offset: float = 0.0  # x coordinate of column 0 (its label and tick)
    col_numbers: tuple[int, str] | None = None  # (first number, label): numbered top axis
    xticks_top: bool = False
    xtick_rotation: float = 90.0
    xtick_fontsize: float = 7.0
    ytick_fontsize: float = 7.0
    ytick_step: int = 1
    gridlines: float = 0.0
    colorbar_fraction: float = 0.04
    extend: str = "neither"  # colour bar arrows for values past vmin/vmax: min, max, both
    colorbar_pad: float = 0.01
    title_fontsize: float | None = None
    figure_title: bool = False  # the title above the whole figure rather than the axes
    text_min_px: int = 34  # the page writes cell text in cells at least this wide

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.values.shape[0]), int(self.values.shape[1])

    # ------------------------------------------------------------------ matplotlib
    def figure(self) -> Any:
        """The saved figure (a matplotlib Figure); with a `detail`, both in one figure."""
        import matplotlib

        matplotlib.use("Agg")  # figures are written to files; no display needed
        import matplotlib.pyplot as plt

        if self.empty is not None and self.values.size == 0:
            fig, ax = plt.subplots(figsize=(6, 2), layout="constrained")
            ax.axis("off")
            ax.text(0.5, 0.5, self.empty, ha="center", va="center")
            return fig
        if self.detail is not None:
            return self._stacked_figure()
        fig, ax = plt.subplots(figsize=self.size, layout="constrained")
        mesh = self._draw(ax, self.size[0])
        cbar = fig.colorbar(
            mesh, ax=ax, fraction=self.colorbar_fraction, pad=self.colorbar_pad, extend=self.extend
        )
        cbar.set_label(self.colorbar)
        if self.figure_title:
            fig.suptitle(self.title, fontsize=self.title_fontsize or 11)
        else:
            size: dict[str, Any] = {"fontsize": self.title_fontsize} if self.title_fontsize else {}
            ax.set_title(self.title, **size)
        return fig

    def _stacked_figure(self) -> Any:
        """This heatmap (an overview, `box` marking the detail's region) above `detail`, one
        colour bar for both (give them the same limits); this title heads the figure. The
        detail's axes come first in `fig.axes`, as they would without the overview."""
        import matplotlib.pyplot as plt

        detail = self.detail
        assert detail is not None
        width = max(self.size[0], detail.size[0])
        heights = [self.size[1], detail.size[1]]
        fig = plt.figure(figsize=(width, sum(heights)), layout="constrained")
        grid = fig.add_gridspec(2, 1, height_ratios=heights)
        ax_detail = fig.add_subplot(grid[1])
        ax_over = fig.add_subplot(grid[0])
        mesh = detail._draw(ax_detail, width)
        self._draw(ax_over, width)
        fraction = min(0.035, 0.4 / width)  # a bar about 0.4 inch wide, as tall as both parts
        aspect = 0.9 * sum(heights) / (fraction * width)
        cbar = fig.colorbar(
            mesh,
            ax=[ax_over, ax_detail],
            fraction=fraction,
            aspect=aspect,
            pad=detail.colorbar_pad,
            extend=_wider(self.extend, detail.extend),
        )
        cbar.set_label(detail.colorbar)
        fig.suptitle(self.title, fontsize=self.title_fontsize or 12)
        ax_detail.set_title(detail.title, fontsize=detail.title_fontsize or 10)
        return fig

    def _draw(self, ax: Any, fig_w: float) -> Any:
        """The grid, cell text, ticks, frame and box on `ax` (of a figure `fig_w` inches
        wide); returns the mesh for a colour bar."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import Normalize

        n_rows, n_cols = self.shape
        norm = Normalize(vmin=self.vmin, vmax=self.vmax)
        colormap = plt.get_cmap(self.cmap).with_extremes(bad=self.bad)
        x0 = self.col_offset - 0.5
        mesh = ax.pcolormesh(
            np.arange(n_cols + 1) + x0,
            np.arange(n_rows + 1) - 0.5,
            np.ma.masked_invalid(self.values),
            cmap=colormap,
            norm=norm,
            edgecolors="white" if self.gridlines else "face",
            linewidth=self.gridlines,
        )
        ax.set_xlim(x0, n_cols + x0)
        ax.set_ylim(*((-0.5, n_rows - 0.5) if self.origin == "lower" else (n_rows - 0.5, -0.5)))
        if self.annotate and self.cell_text is not None:
            self._write_cells(ax, text_colours(self.values, colormap, norm))
        self._ticks(ax, fig_w)
        if self.frame is not None:
            self._outline(ax, self.frame, FRAME_COLOUR, 2.6)
        if self.box is not None:  # just outside its columns, so that a frame inside shows
            self._outline(ax, self.box, BOX_COLOUR, 2.2, zorder=6, margin=(0.2, 0.45))
        return mesh

    def _write_cells(self, ax: Any, colours: np.ndarray) -> None:
        assert self.cell_text is not None
        for r in range(self.cell_text.shape[0]):
            for c in range(self.cell_text.shape[1]):
                ax.text(
                    c + self.col_offset,
                    r,
                    self.cell_text[r, c],
                    ha="center",
                    va="center",
                    fontsize=self.cell_fontsize,
                    color=colours[r, c],
                    clip_on=True,
                )

    def _ticks(self, ax: Any, fig_w: float) -> None:
        n_rows, n_cols = self.shape
        step = max(1, math.ceil(n_cols * 0.11 / max(1.0, fig_w - 3.0)))
        ticks = np.arange(0, n_cols, step)
        if self.xticks_top:
            ax.xaxis.tick_top()
            ax.xaxis.set_label_position("top")
        ax.set_xticks(ticks + self.col_offset)
        ax.set_xticklabels(
            [self.cols[i] for i in ticks],
            rotation=self.xtick_rotation,
            ha="center" if self.xtick_rotation in (0, 90) else "left",
            fontsize=self.xtick_fontsize,
        )
        if self.col_numbers is not None and (self.col_numbers[0] or step > 1):
            first, label = self.col_numbers
            secondary = ax.secondary_xaxis("top")
            pos_step = max(step, 5 if n_cols > 20 else 1)
            secondary.set_xticks(np.arange(0, n_cols, pos_step) + self.col_offset)
            secondary.set_xticklabels(
                [str(first + i) for i in range(0, n_cols, pos_step)], fontsize=6
            )
            secondary.set_xlabel(label, fontsize=8)
        yticks = np.arange(0, n_rows, self.ytick_step)
        ax.set_yticks(yticks)
        ax.set_yticklabels([self.rows[i] for i in yticks], fontsize=self.ytick_fontsize)
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel(self.ylabel)

    def _outline(
        self,
        ax: Any,
        span: tuple[int, int],
        colour: str,
        width: float,
        zorder: int = 5,
        margin: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """Columns [start, end) outlined over every row (`margin`: cells outside it, across
        and up/down), with a white halo to stand out on any cell colour."""
        import matplotlib.patheffects as pe
        from matplotlib.patches import Rectangle

        f0, f1 = span
        mx, my = margin
        rect = Rectangle(
            (f0 + self.col_offset - 0.5 - mx, -0.5 - my),
            f1 - f0 + 2 * mx,
            self.shape[0] + 2 * my,
            fill=False,
            edgecolor=colour,
            linewidth=width,
            clip_on=False,
            zorder=zorder,
        )
        rect.set_path_effects([pe.Stroke(linewidth=width + 1.9, foreground="white"), pe.Normal()])
        ax.add_patch(rect)

    # ------------------------------------------------------------------ the page
    def section(self) -> dict[str, Any]:
        """The same heatmap for the page's viewer: rows listed top to bottom as drawn."""
        order = list(range(self.shape[0]))
        if self.origin == "lower":
            order = order[::-1]
        tips = self.tips() if self.tips is not None else None
        return {
            "title": self.title,
            "about": list(self.about),
            "rows": [self.rows[r] for r in order],
            "cols": list(self.cols),
            "values": [[_num(v) for v in self.values[r]] for r in order],
            "text": None
            if self.cell_text is None
            else [[str(t) for t in self.cell_text[r]] for r in order],
            "tips": None if tips is None else [tips[r] for r in order],
            "cmap": self.cmap,
            "bad": self.bad,
            "vmin": float(self.vmin),
            "vmax": float(self.vmax),
            "colorbar": self.colorbar,
            "xlabel": self.xlabel,
            "ylabel": self.ylabel,
            "frame": list(self.frame) if self.frame else None,
            "frame_colour": FRAME_COLOUR,
            "box": list(self.box) if self.box else None,
            "box_colour": BOX_COLOUR,
            "text_min_px": self.text_min_px,
        }

    def sections(self) -> list[dict[str, Any]]:
        """The page's sections: this heatmap, then its `detail` if it has one."""
        return [self.section()] + (self.detail.sections() if self.detail is not None else [])


def _wider(a: str, b: str) -> str:
    """The colour bar arrows that cover both `extend`s."""
    low = a in ("min", "both") or b in ("min", "both")
    high = a in ("max", "both") or b in ("max", "both")
    return "both" if low and high else "min" if low else "max" if high else "neither"


def text_colours(values: np.ndarray, cmap: Any, norm: Any) -> np.ndarray:
    """Black on light cells, white on dark ones (relative luminance of the cell colour)."""
    rgba = cmap(norm(values))
    lum = 0.2126 * rgba[..., 0] + 0.7152 * rgba[..., 1] + 0.0722 * rgba[..., 2]
    return np.where(lum > 0.45, "black", "white")


def _num(x: float, digits: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _luts(names: Sequence[str]) -> dict[str, list[str]]:
    """256-colour tables of the colour maps the sections use, as matplotlib draws them."""
    import matplotlib
    from matplotlib.colors import to_hex

    out = {}
    for name in dict.fromkeys(names):
        cmap = matplotlib.colormaps[name]
        out[name] = [to_hex(cmap(i / 255)) for i in range(256)]
    return out


def _package_text(name: str) -> str:
    return resources.files("tokenprobe").joinpath(f"report/{name}").read_text(encoding="utf-8")


def page(sections: Sequence[dict[str, Any]], title: str) -> str:
    """One self-contained HTML page of heatmap sections (see report/page.html)."""
    luts = _luts([s["cmap"] for s in sections])
    payload = json.dumps(
        {"sections": list(sections), "luts": luts}, separators=(",", ":"), allow_nan=False
    )
    # the data travels in a non-executable script element: no "<" may close it early
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    fill = {
        "__TITLE__": html.escape(title),
        "__SCRIPT__": _package_text("viewer.js"),
        "__DATA__": payload,
    }
    # one pass, so that a title or a token holding a placeholder's name stays as it is
    return re.sub("__(TITLE|SCRIPT|DATA)__", lambda m: fill[m.group(0)], _package_text("page.html"))


# ---------------------------------------------------------------------- ranges (zoom, frame)


def parse_range(spec: str | tuple[int, int] | None, name: str) -> tuple[int, int] | None:
    """`START:END` (end exclusive, either side may be empty) to a tuple; None stays None.
    `name` is the parameter it came from, named in the error."""
    if spec is None or isinstance(spec, tuple):
        return spec
    try:
        start_s, end_s = str(spec).split(":")
        start = int(start_s) if start_s.strip() else 0
        end = int(end_s) if end_s.strip() else -1
    except ValueError as exc:
        raise TokenprobeError(f"`{name}` {spec!r} is not START:END (e.g. `{name}` 10:30)") from exc
    return start, end


def clip_range(rng: tuple[int, int], n: int, name: str) -> tuple[int, int]:
    """A parsed range checked against `n` positions, negative ends counted from the end."""
    start, end = rng
    end = n if end == -1 else end
    if start < 0:
        start += n
    if end < 0:
        end += n
    if not (0 <= start < end <= n):
        raise TokenprobeError(
            f"`{name}` {rng[0]}:{rng[1]} is outside the {n} positions (use START:END with 0 <= START < END <= {n})"
        )
    return start, end
