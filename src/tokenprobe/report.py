"""One self-contained interactive HTML page for any mix of results.

No library and no network: a small hand-written canvas view (hover for the numbers behind a
cell, mouse wheel to zoom the long axis, drag to pan, double-click to reset). Every piece of
token text travels as JSON inside a non-executable script element (with `<` escaped) and is
put on the page with `textContent` only, so a token such as `<script>` shows as text. A
Content-Security-Policy forbids every network request.
"""

from __future__ import annotations

import html
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import FINISHED
from .errors import TokenprobeError
from .results import (
    SAVE_JOURNAL,
    AttributionResult,
    FlipResult,
    LensResult,
    Result,
    SimilarityResult,
    complete_save,
)
from .text import display_token

CMAPS = ("viridis", "RdYlBu_r", "RdYlGn")


def _luts() -> dict[str, list[str]]:
    """256-colour tables of the colour maps the static figures use, so both look the same."""
    import matplotlib
    from matplotlib.colors import to_hex

    out = {}
    for name in CMAPS:
        cmap = matplotlib.colormaps[name]
        out[name] = [to_hex(cmap(i / 255)) for i in range(256)]
    return out


def _num(x: float, digits: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _grid(values: np.ndarray, digits: int = 4) -> list[list[float | None]]:
    return [[_num(v, digits) for v in row] for row in values]


def _lens_section(res: LensResult) -> dict[str, Any]:
    rows = list(range(res.n_rows))[::-1]  # "output" on top
    tips = []
    for r in rows:
        line = []
        for c in range(res.n_positions):
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
            line.append(text)
        tips.append(line)
    return {
        "title": "Logit lens — entropy of token predictions",
        "about": [
            f"prompt: {res.meta.get('prompt', '')}",
            f"targets: {', '.join(res.targets) or 'none'}",
        ],
        "rows": [res.layer_labels[r] for r in rows],
        "cols": [display_token(t, 12) for t in res.tokens],
        "values": _grid(res.entropy[rows]),
        "text": [
            [display_token(str(res.top1[r, c]), 7) for c in range(res.n_positions)] for r in rows
        ],
        "tips": tips,
        "cmap": "RdYlBu_r",
        "vmin": 0.0,
        "vmax": float(np.nanmax(res.entropy)),
        "colorbar": "Entropy (nats)",
        "xlabel": "input token",
        "ylabel": "layer",
        "frame": list(res.marked) if res.marked else None,
    }


def _similarity_section(res: SimilarityResult) -> dict[str, Any]:
    layers = list(range(len(res.layer_labels)))[::-1]
    top = float(np.nanmax(np.abs(res.cosine))) if np.isfinite(res.cosine).any() else 1.0
    cols = [
        display_token(t, 12) if t is not None else f"d={d + 1}" for d, t in enumerate(res.tokens)
    ]
    tips = [
        [
            f"layer {res.layer_labels[layer]}, distance {d + 1}"
            + (f": {display_token(res.tokens[d], 24)}" if res.tokens[d] is not None else "")
            + (
                f"\ncosine {res.cosine[layer, d]:.4f}"
                if np.isfinite(res.cosine[layer, d])
                else "\npadded (no token there)"
            )
            + f"\ncount {int(res.count[d])} text(s)"
            for d in range(res.window)
        ]
        for layer in layers
    ]
    return {
        "title": f"{res.marker} #{res.occurrence} • {res.direction.capitalize()} Cosine-Sim"
        + (" (centred)" if res.centre else ""),
        "about": [
            f"texts: {res.meta.get('texts_used', 1)}",
            f"text: {res.meta.get('text') or res.meta.get('data', '')}",
        ],
        "rows": [res.layer_labels[layer] for layer in layers],
        "cols": cols,
        "values": _grid(res.cosine[layers]),
        "text": None,
        "tips": tips,
        "cmap": "viridis",
        "vmin": -top,
        "vmax": top,
        "colorbar": "cosine similarity",
        "xlabel": f"token {res.direction} of {res.marker} #{res.occurrence} (distance 1 on the left)",
        "ylabel": "Layer",
        "frame": None,
    }


def _attribution_section(res: AttributionResult) -> dict[str, Any]:
    top = float(np.abs(res.scores).max()) or 1.0
    feats = [f["text"] for f in res.features]
    tips = [
        [
            f"feature: {display_token(feats[c], 40, show_spaces=False)} (chars {res.features[c]['start']}-{res.features[c]['end']})"
            f"\ntarget: {display_token(res.rows[r], 24)}\nattribution {res.scores[r, c]:.4f}"
            + (f" ± {res.stderr[r, c]:.4f}" if res.stderr is not None else "")
            for c in range(len(feats))
        ]
        for r in range(len(res.rows))
    ]
    return {
        "title": f"Token Attribution ({res.method.replace('_', ' ')})",
        "about": [
            f"prompt: {res.meta.get('prompt', '')[:300]}",
            f"target: {res.meta.get('target', '')}",
        ],
        "rows": [display_token(t, 14) for t in res.rows],
        "cols": [display_token(f, 14, show_spaces=False) for f in feats],
        "values": _grid(res.scores),
        "text": [[f"{v:.4f}" for v in row] for row in res.scores],
        "tips": tips,
        "cmap": "RdYlGn",
        "vmin": -top,
        "vmax": top,
        "colorbar": "Token Attribution",
        "xlabel": "input feature",
        "ylabel": "target",
        "frame": None,
    }


def _flip_sections(res: FlipResult) -> list[dict[str, Any]]:
    """One section per class, with the words, ranking and masking its saved figures used."""
    from .plots import top_words

    options = res.meta.get("plot_options") or {}
    top, rank = int(options.get("top", 40)), str(options.get("rank", "support"))
    min_count = int(options.get("min_count", 3))
    sections = []
    for label in res.classes():
        rates = res.rates[res.rates["class"] == label]
        words = top_words(rates, top, rank, min_count)
        values = np.full((len(words), res.buckets), np.nan)
        tips = [[f"{w}, bucket {b}\nno occurrences" for b in range(res.buckets)] for w in words]
        index = {w: i for i, w in enumerate(words)}
        for row in rates.itertuples():
            i = index.get(row.word)
            if i is None:
                continue
            b = int(row.bucket)
            if row.occurrences >= min_count:
                values[i, b] = row.rate
            tips[i][b] = (
                f"{row.word}, bucket {b}\nflips {row.flips} / {row.occurrences} occurrences"
                f"\nrate {row.rate:.3f} (95% Wilson {row.wilson_low:.3f}-{row.wilson_high:.3f})"
                + (
                    ""
                    if row.occurrences >= min_count
                    else f"\nmasked: fewer than {min_count} occurrences"
                )
            )
        sections.append(
            {
                "title": f"Token Flip Rate by Position Bucket — {label}",
                "about": [
                    f"data: {res.meta.get('data', '')}",
                    f"accuracy: {res.meta.get('accuracy')}",
                    *(
                        []
                        if words
                        else [
                            f"nothing to draw: no word has a bucket with {min_count}+ occurrences"
                        ]
                    ),
                ],
                "rows": words,
                "cols": [str(b) for b in range(res.buckets)],
                "values": _grid(values),
                "text": None,
                "tips": tips,
                "cmap": "viridis",
                "vmin": 0.0,
                "vmax": 1.0,
                "colorbar": "flip rate",
                "xlabel": "position bucket",
                "ylabel": "token",
                "frame": None,
            }
        )
    return sections


def sections_of(result: Result) -> list[dict[str, Any]]:
    """The heatmap sections one result contributes to a page."""
    if isinstance(result, LensResult):
        section = [_lens_section(result)]
    elif isinstance(result, SimilarityResult):
        section = [_similarity_section(result)]
    elif isinstance(result, AttributionResult):
        section = [_attribution_section(result)]
    elif isinstance(result, FlipResult):
        section = _flip_sections(result)
    else:  # pragma: no cover - every kind is listed above
        raise TokenprobeError(f"no HTML view for {type(result).__name__}")
    model = (result.meta.get("model") or {}).get("name", "")
    options = json.dumps(result.meta.get("options", {}), default=str)
    for s in section:
        s["kind"] = result.kind
        s["about"] = [f"model: {model}", *s["about"], f"options: {options}"]
    return section


def render(results: Sequence[Result], title: str = "tokenprobe report") -> str:
    """The whole page as one string."""
    sections = [s for r in results for s in sections_of(r)]
    payload = json.dumps(
        {"sections": sections, "luts": _luts()}, separators=(",", ":"), allow_nan=False
    )
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)


def collect(root: str | Path) -> list[tuple[Path, Result]]:
    """Every saved result under `root` (folders holding a meta.json), sorted by path."""
    base = Path(root)
    if not base.is_dir():
        raise TokenprobeError(
            f"{root} is not a folder: pass the folder the results were written to"
        )
    for journal in sorted(base.rglob(SAVE_JOURNAL)):  # a save killed after it committed
        try:
            complete_save(journal.parent)
        except (TokenprobeError, OSError) as exc:  # e.g. a folder that cannot be written
            warnings.warn(f"skipped {journal.parent}: {exc}", UserWarning, stacklevel=2)
    for finished in sorted(base.rglob(f"*.partial/{FINISHED}")):
        warnings.warn(
            f"{finished.parent.parent} holds a finished run whose outputs were not written: run "
            "its command again with --resume to write them",
            UserWarning,
            stacklevel=2,
        )
    found = []
    skipped = 0
    for meta in sorted(base.rglob("meta.json")):
        try:
            found.append((meta.parent, Result.load(meta.parent)))
        except Exception as exc:  # a damaged folder must not stop the report of the others
            skipped += 1
            warnings.warn(f"skipped {meta.parent}: {_damage(exc)}", UserWarning, stacklevel=2)
    if not found:
        if skipped:
            raise TokenprobeError(
                f"none of the {skipped} result folder(s) under {root} could be read (see the "
                "warnings above): re-run the analyses"
            )
        raise TokenprobeError(
            f"no tokenprobe results under {root}: run an analysis with --out there first"
        )
    return found


def _damage(exc: Exception) -> str:
    """One line saying why a saved result could not be read."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, TokenprobeError):
        return " ".join(lines)
    why = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return f"its table or meta.json is damaged or not written by this version ({why}); re-run the analysis"


def check_page_path(out: Path, overwrite: bool) -> None:
    """The page is a file to write: not a folder, and not an existing page unless `overwrite`."""
    if out.is_dir():
        raise TokenprobeError(
            f"{out} is a folder: give the .html file to write, e.g. {out / 'report.html'}"
        )
    if out.exists() and not overwrite:
        raise TokenprobeError(f"{out} exists: choose another --html or pass --overwrite")


def write_report(
    results: Iterable[Result],
    path: str | Path,
    *,
    title: str = "tokenprobe report",
    overwrite: bool = False,
) -> Path:
    """Write the page; refuse to replace an existing file unless asked."""
    out = Path(path)
    check_page_path(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(list(results), title), encoding="utf-8")
    return out


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px;color:#222;background:#fafafa}
h1{font-size:20px} h2{font-size:16px;margin:0 0 4px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:0 0 20px}
.about{color:#555;font-size:12px;white-space:pre-wrap;word-break:break-word;margin:0 0 6px}
.hint{color:#888;font-size:11px}
canvas{display:block;cursor:crosshair}
#tip{position:fixed;pointer-events:none;background:rgba(20,20,20,.92);color:#fff;font:12px/1.35 ui-monospace,monospace;
white-space:pre;padding:6px 8px;border-radius:4px;display:none;z-index:10;max-width:60ch}
</style></head><body>
<h1>__TITLE__</h1>
<div class="hint">Hover a cell for its numbers · wheel: zoom the horizontal axis · drag: pan · double-click: reset</div>
<div id="report"></div><div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
(function(){
const data=JSON.parse(document.getElementById("data").textContent);
const tip=document.getElementById("tip");
const root=document.getElementById("report");
function colour(lut,v,lo,hi){if(v===null)return "#d9d9d9";let t=(v-lo)/((hi-lo)||1);t=Math.max(0,Math.min(1,t));return lut[Math.round(t*255)];}
function lum(hex){const n=parseInt(hex.slice(1),16);return (0.2126*(n>>16&255)+0.7152*(n>>8&255)+0.0722*(n&255))/255;}
data.sections.forEach(function(s,k){
  const sec=document.createElement("section");sec.className="heatmap";sec.dataset.kind=s.kind;
  const h=document.createElement("h2");h.textContent=s.title;sec.appendChild(h);
  const about=document.createElement("div");about.className="about";about.textContent=s.about.join("\n");sec.appendChild(about);
  const canvas=document.createElement("canvas");sec.appendChild(canvas);root.appendChild(sec);
  const lut=data.luts[s.cmap];const nr=s.rows.length,nc=s.cols.length;
  const left=90,topM=20,bottom=90,barW=70,rowH=Math.max(12,Math.min(22,Math.floor(620/Math.max(nr,1))));
  let c0=0,c1=nc;const view={c0:0,c1:nc};
  function size(){const w=Math.max(400,sec.clientWidth-24);canvas.width=w*devicePixelRatio;canvas.height=(topM+nr*rowH+bottom)*devicePixelRatio;
    canvas.style.width=w+"px";canvas.style.height=(topM+nr*rowH+bottom)+"px";}
  function draw(){
    const ctx=canvas.getContext("2d");ctx.setTransform(devicePixelRatio,0,0,devicePixelRatio,0,0);
    const W=canvas.width/devicePixelRatio,H=canvas.height/devicePixelRatio;ctx.clearRect(0,0,W,H);
    const plotW=W-left-barW,cw=plotW/(view.c1-view.c0);
    for(let r=0;r<nr;r++)for(let c=view.c0;c<view.c1;c++){
      const v=s.values[r][c],fill=colour(lut,v,s.vmin,s.vmax),x=left+(c-view.c0)*cw,y=topM+r*rowH;
      ctx.fillStyle=fill;ctx.fillRect(x,y,Math.ceil(cw),rowH);
      if(s.text&&cw>=(s.kind==="attr"?44:34)){ctx.fillStyle=lum(fill)>0.45?"#000":"#fff";ctx.font="10px sans-serif";ctx.textAlign="center";ctx.textBaseline="middle";
        ctx.fillText(s.text[r][c],x+cw/2,y+rowH/2,cw-2);}
    }
    if(s.frame){const a=Math.max(s.frame[0],view.c0),b=Math.min(s.frame[1],view.c1);if(a<b){ctx.strokeStyle="#7b1fa2";ctx.lineWidth=2.5;
      ctx.strokeRect(left+(a-view.c0)*cw,topM,(b-a)*cw,nr*rowH);}}
    ctx.fillStyle="#222";ctx.font="11px sans-serif";ctx.textAlign="right";ctx.textBaseline="middle";
    const ystep=Math.ceil(12/rowH);for(let r=0;r<nr;r+=ystep)ctx.fillText(s.rows[r],left-4,topM+r*rowH+rowH/2,left-8);
    const xstep=Math.max(1,Math.ceil(13/cw));ctx.textAlign="right";
    for(let c=view.c0;c<view.c1;c+=xstep){ctx.save();ctx.translate(left+(c-view.c0+0.5)*cw,topM+nr*rowH+4);ctx.rotate(-Math.PI/2);
      ctx.fillText(s.cols[c],0,0,bottom-20);ctx.restore();}
    ctx.textAlign="center";ctx.fillText(s.xlabel,left+plotW/2,H-6);
    const bx=W-barW+12,bh=nr*rowH;for(let i=0;i<bh;i++){ctx.fillStyle=lut[Math.round(255*(1-i/bh))];ctx.fillRect(bx,topM+i,12,1);}
    ctx.fillStyle="#222";ctx.textAlign="left";ctx.fillText(s.vmax.toFixed(2),bx+15,topM+5);ctx.fillText(s.vmin.toFixed(2),bx+15,topM+bh-5);
    ctx.save();ctx.translate(bx+48,topM+bh/2);ctx.rotate(-Math.PI/2);ctx.textAlign="center";ctx.fillText(s.colorbar,0,0);ctx.restore();
  }
  function cellAt(ev){const rect=canvas.getBoundingClientRect(),x=ev.clientX-rect.left,y=ev.clientY-rect.top;
    const plotW=rect.width-left-barW,cw=plotW/(view.c1-view.c0);const c=Math.floor((x-left)/cw)+view.c0,r=Math.floor((y-topM)/rowH);
    return (x<left||c<view.c0||c>=view.c1||r<0||r>=nr)?null:{r:r,c:c,x:x,cw:cw};}
  let drag=null;
  canvas.addEventListener("mousemove",function(ev){
    if(drag){const cell=(ev.clientX-drag.x)/drag.cw;const shift=Math.round(-cell);const span=view.c1-view.c0;
      let a=Math.max(0,Math.min(nc-span,drag.c0+shift));view.c0=a;view.c1=a+span;draw();return;}
    const cell=cellAt(ev);if(!cell){tip.style.display="none";return;}
    tip.textContent=s.tips[cell.r][cell.c];tip.style.display="block";
    tip.style.left=Math.min(ev.clientX+14,innerWidth-tip.offsetWidth-8)+"px";tip.style.top=(ev.clientY+14)+"px";});
  canvas.addEventListener("mouseleave",function(){tip.style.display="none";drag=null;});
  canvas.addEventListener("mousedown",function(ev){const cell=cellAt(ev);drag={x:ev.clientX,c0:view.c0,cw:cell?cell.cw:1};});
  addEventListener("mouseup",function(){drag=null;});
  canvas.addEventListener("wheel",function(ev){const cell=cellAt(ev);if(!cell)return;ev.preventDefault();
    const span=view.c1-view.c0,ns=Math.max(4,Math.min(nc,Math.round(span*(ev.deltaY>0?1.25:0.8))));
    const f=(cell.c-view.c0)/span;let a=Math.round(cell.c-f*ns);a=Math.max(0,Math.min(nc-ns,a));view.c0=a;view.c1=a+ns;draw();},{passive:false});
  canvas.addEventListener("dblclick",function(){view.c0=0;view.c1=nc;draw();});
  addEventListener("resize",function(){size();draw();});
  size();draw();sec.dataset.rendered="1";
});
document.body.dataset.ready="1";
})();
</script></body></html>
"""
