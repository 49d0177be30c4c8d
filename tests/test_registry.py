"""An analysis defined in this file alone gets everything the seven built-in ones have: a
command with --help, a run from the command line, save and load, a PNG and a report section,
its place in `report --help` and (with a demo) `demo --help`, its own out-of-memory advice,
and its checkpoint parts named in the message of an interrupted run.

The toy analysis is hidden-state norms: ||h|| of every layer (0 = embeddings, i = block i's
output) at every position, checked against the model's own `output_hidden_states`; the layers
are computed in checkpointed chunks of "toy layers" (a unit no built-in analysis uses).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import model_dir, run  # noqa: F401  (the tiny model folder fixture)

import tokenprobe
import tokenprobe.cli
from tokenprobe.analyses import Analysis, Option, register, unregister
from tokenprobe.analyses.base import Session
from tokenprobe.analyses.settings import Settings, setting, with_options
from tokenprobe.checkpoint import model_settings, npz_writer
from tokenprobe.cli import error_line
from tokenprobe.heatmap import Heatmap
from tokenprobe.loading import load_result
from tokenprobe.results import Result
from tokenprobe.runner import open_checkpoint, run_chunks

# ----------------------------------------------------------------------------- the toy analysis


@dataclass
class NormResult(Result):
    """||hidden state|| per (layer, position)."""

    kind: ClassVar[str] = "norms"

    tokens: list[str]
    norms: np.ndarray  # (layers, positions)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        layers, positions = self.norms.shape
        return pd.DataFrame(
            {
                "layer": np.repeat(np.arange(layers), positions),
                "position": np.tile(np.arange(positions), layers),
                "token": self.tokens * layers,
                "norm": self.norms.reshape(-1),
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> NormResult:
        frame = frame.sort_values(["layer", "position"])
        layers, positions = frame["layer"].max() + 1, frame["position"].max() + 1
        return cls(
            tokens=list(frame["token"][:positions]),
            norms=frame["norm"].to_numpy().reshape(layers, positions),
            meta=meta,
        )

    def views(self, figure: NormFigure | None = None, **settings: Any) -> list[tuple[str, Heatmap]]:
        cmap = NormFigure.build(figure, settings).cmap
        view = Heatmap(
            values=self.norms,
            rows=[str(i) for i in range(self.norms.shape[0])],
            cols=list(self.tokens),
            cmap=cmap,
            vmin=0.0,
            vmax=float(self.norms.max()),
            title="Hidden-state norms",
            colorbar="norm",
            xlabel="token",
            ylabel="layer",
            origin="lower",
            tips=lambda: [[f"{v:.3f}" for v in row] for row in self.norms],
            about=[f"prompt: {self.meta.get('prompt')}"],
        )
        return [(self.kind, view)]


def layer_norms(hidden: list[torch.Tensor], layers: Any) -> np.ndarray:
    """(len(layers), positions) norms; looked up at call time (tests stop a run here)."""
    return torch.stack([hidden[i][0].float().norm(dim=-1) for i in layers]).numpy()


@dataclass(frozen=True)
class NormOptions(Settings):
    """The toy's settings, declared once: flags, limits and the library's keywords."""

    scale: float = setting(1.0, "multiply every norm (default {default})", minimum=0, group="norms")
    chunk_layers: int = setting(2, "layers per checkpointed chunk", minimum=1, group="norms")
    batch_tokens: int = setting(512, cli=False, minimum=1)


@dataclass(frozen=True)
class NormFigure(Settings):
    role = "figure"
    cmap: str = setting("viridis", "colour map", choices=("viridis", "magma"), group="figure")


@with_options(NormOptions)
def hidden_norms(
    lm: tokenprobe.LoadedModel,
    prompt: str,
    *,
    options: NormOptions,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> NormResult:
    """`scale` x the norm of every layer's hidden state at every position of `prompt`, in
    chunks of `chunk_layers` layers, each kept in `checkpoint`/norms.partial when given."""
    scale, chunk_layers = options.scale, options.chunk_layers
    inp = tokenprobe.prepare(lm, prompt)
    ids = torch.tensor([inp.input_ids])
    with torch.inference_mode(), lm.require_adapter().record() as hidden:
        lm.model(input_ids=ids)
    layers = range(len(hidden))
    chunks = [layers[i : i + chunk_layers] for i in range(0, len(layers), chunk_layers)]
    settings = {"model": model_settings(lm), "prompt": prompt, "chunk_layers": chunk_layers}
    store = open_checkpoint(checkpoint, "norms.partial", settings, resume)
    parts = run_chunks(
        chunks,
        lambda chunk: {"norms": layer_norms(hidden, chunk)},  # looked up at call time
        store=store,
        suffix=".norms.npz",
        unit="toy layer",
        write=lambda part: npz_writer(**part),
    )
    norms = np.concatenate([parts[k]["norms"] for k in range(len(chunks))]) * scale
    result = NormResult(
        tokens=inp.tokens, norms=norms, meta={"prompt": prompt, "options": {"scale": scale}}
    )
    if store is not None:
        store.finish(result)
    return result


def command(session: Session) -> None:
    out = Path(session.args.out)
    session.check_out(out, NormResult.files(session.args.format))
    options = session.options(NormOptions)
    result = hidden_norms(
        session.load(),
        session.args.prompt,
        options=options,
        checkpoint=out,
        resume=session.args.resume,
    )
    session.save(result, out, session.options(NormFigure))


OPTIONS = [
    Option(None, "prompt text", flag="--prompt", role="input", required=True, group="input"),
    *NormOptions.options(),
    Option(
        None,
        "continue an interrupted run in --out",
        flag="--resume",
        role="input",
        action="store_true",
        group="norms",
    ),
    *NormFigure.options(),
]
SPEC = Analysis(
    name="norms",
    command="norms",
    run=hidden_norms,
    result=NormResult,
    help="toy: hidden-state norms per layer and position",
    description="The norm of every layer's hidden state at every position.",
    options=OPTIONS,
    cli=command,
    oom_advice="lower --chunk-layers",
)


@pytest.fixture
def norms():
    register(SPEC)
    yield SPEC
    unregister(SPEC.name)


# ----------------------------------------------------------------------------- the tests


def test_the_toy_gets_a_command_with_help(norms, capsys):
    with pytest.raises(SystemExit) as done:
        tokenprobe.cli.main(["--help"])
    assert done.value.code == 0
    assert "norms" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tokenprobe.cli.main(["norms", "--help"])
    text = capsys.readouterr().out
    # the shared flags, then its own groups, defaults from the run function's signature
    for piece in (
        "--model",
        "--batch-tokens",
        "(default 512)",
        "--scale",
        "(default 1.0)",
        "--cmap {viridis,magma}",
        "norms:",
        "figure:",
    ):
        assert piece in text, piece


def test_the_toy_runs_saves_loads_draws_and_reports(norms, model_dir, tmp_path, capsys):
    out = tmp_path / "norms"
    code, printed, err = run(
        capsys,
        "norms",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--prompt",
        "The cat sat on the mat",
        "--scale",
        "2",
        "--cmap",
        "magma",
    )
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"norms.parquet", "meta.json", "norms.png"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "norms" and meta["plot_options"] == {"cmap": "magma"}

    # against the model's own hidden states (embeddings, then each block; the last is normed
    # there, so it is left out)
    lm = tokenprobe.load(str(model_dir))
    ids = torch.tensor([tokenprobe.prepare(lm, "The cat sat on the mat").input_ids])
    with torch.inference_mode():
        states = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    expected = 2 * torch.stack([h[0].norm(dim=-1) for h in states[:-1]]).numpy()
    back = load_result(out)
    assert isinstance(back, NormResult)
    np.testing.assert_allclose(back.norms[:-1], expected, rtol=1e-5)

    code, _, err = run(capsys, "report", str(tmp_path))
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    assert '"kind":"norms"' in page and '"cmap":"magma"' in page and "Hidden-state norms" in page


def test_the_toy_errors_name_the_parameter_or_the_flag(norms, model_dir, tmp_path, capsys):
    lm = tokenprobe.load(str(model_dir))
    with pytest.raises(tokenprobe.TokenprobeError, match="^scale must be at least 0, not -1"):
        hidden_norms(lm, "The cat", scale=-1)
    code, _, err = run(
        capsys,
        "norms",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "x"),
        "--prompt",
        "The cat",
        "--scale",
        "-1",
    )
    assert code == 2 and "--scale must be at least 0, not -1" in err


def test_a_taken_name_is_refused(norms):
    from dataclasses import replace

    with pytest.raises(ValueError, match="command is taken"):
        register(replace(SPEC, name="norms2"))


def _help_of(capsys, *argv: str) -> str:
    """A --help text on one line (a wide terminal: no wrapping inside a command's name)."""
    with pytest.raises(SystemExit):
        tokenprobe.cli.main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_the_toy_is_in_report_help_and_in_demo_help_only_with_a_demo(norms, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    listed = (
        "lens, similarity, attribute, logit-attribution, flips, tune-lens, lens-eval, trace, "
        "attention, features, train-sae and norms)"
    )
    assert f"(any mix of {listed} into one HTML file" in _help_of(capsys, "report")
    demo = _help_of(capsys, "demo")
    assert (
        "norms" not in demo
        and "200 sample texts) and report.html in --out, on the built-in" in demo
    )
    unregister(SPEC.name)  # the same toy with a demo entry (the fixture removes it again)
    register(replace(SPEC, demo=lambda session, entry, out: None, demo_help="toy norms (a cat)"))
    assert "200 sample texts), toy norms (a cat) and report.html in --out" in _help_of(
        capsys, "demo"
    )
    unregister(SPEC.name)  # a demo without its own phrase: its help up to the colon
    register(replace(SPEC, demo=lambda session, entry, out: None))
    assert "200 sample texts), toy and report.html in --out" in _help_of(capsys, "demo")


def test_the_toy_gets_its_own_out_of_memory_advice(norms, model_dir, tmp_path, capsys, monkeypatch):
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    line, status = error_line(oom, {}, "norms")
    assert status == 2 and "lower --batch-tokens, lower --chunk-layers, use --dtype" in line
    assert "--chunk-layers" not in error_line(oom, {}, "lens")[0]
    assert "--memory-mb" in error_line(oom, {}, "lens")[0]
    assert "norms: lower --chunk-layers" in error_line(oom)[0]  # no command: every analysis's

    def out_of_memory(*a: Any) -> np.ndarray:
        raise oom

    monkeypatch.setattr(sys.modules[__name__], "layer_norms", out_of_memory)
    argv = ["norms", "--model", str(model_dir), "--out", str(tmp_path / "n"), "--prompt", "A b"]
    code, _, err = run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.startswith("tokenprobe: error:")]
    assert code == 2 and len(lines) == 1 and "out of memory" in lines[0], err
    assert "lower --chunk-layers" in lines[0] and "--memory-mb" not in lines[0], err


def test_the_toy_checkpoint_parts_are_named_when_interrupted(
    norms, model_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "norms"
    argv = ["norms", "--model", str(model_dir), "--out", str(out), "--prompt", "The cat sat"]
    argv += ["--chunk-layers", "1"]
    calls: list[int] = []
    real = layer_norms

    def stop_at_the_third_chunk(hidden: list[torch.Tensor], layers: Any) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(hidden, layers)

    with monkeypatch.context() as m:
        m.setattr(sys.modules[__name__], "layer_norms", stop_at_the_third_chunk)
        code, _, err = run(capsys, *argv)
    partial = out / "norms.partial"
    assert code == 130 and f"finished work is kept in {partial} (2 toy layers)" in err, err
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 0 and not partial.exists(), err
    whole = tmp_path / "whole"
    code, _, err = run(capsys, *argv[:4], str(whole), *argv[5:])
    assert code == 0, err
    got, want = load_result(out), load_result(whole)
    assert isinstance(got, NormResult) and isinstance(want, NormResult)
    np.testing.assert_array_equal(got.norms, want.norms)
