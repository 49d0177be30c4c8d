"""An analysis defined in this file alone gets everything the seven built-in ones have: a
command with --help, a run from the command line, save and load, a PNG and a report section.

The toy analysis is hidden-state norms: ||h|| of every layer (0 = embeddings, i = block i's
output) at every position, checked against the model's own `output_hidden_states`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
from tokenprobe.heatmap import Heatmap
from tokenprobe.results import Result

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

    def views(self, *, cmap: str = "viridis") -> list[tuple[str, Heatmap]]:
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


def hidden_norms(
    lm: tokenprobe.LoadedModel, prompt: str, *, scale: float = 1.0, batch_tokens: int = 512
) -> NormResult:
    """`scale` x the norm of every layer's hidden state at every position of `prompt`."""
    from tokenprobe.analyses.base import check_options

    check_options(OPTIONS, {"scale": scale})
    inp = tokenprobe.prepare(lm, prompt)
    ids = torch.tensor([inp.input_ids])
    with torch.inference_mode(), lm.require_adapter().record() as hidden:
        lm.model(input_ids=ids)
    norms = torch.stack([h[0].float().norm(dim=-1) for h in hidden]).numpy() * scale
    return NormResult(
        tokens=inp.tokens, norms=norms, meta={"prompt": prompt, "options": {"scale": scale}}
    )


def command(session: Session) -> None:
    out = Path(session.args.out)
    session.check_out(out, NormResult.files(session.args.format))
    result = hidden_norms(session.load(), session.args.prompt, **session.params("run"))
    session.save(result, out, session.params("figure"))


OPTIONS = [
    Option(None, "prompt text", flag="--prompt", role="input", required=True, group="input"),
    Option(
        "scale", "multiply every norm (default {default})", type=float, minimum=0, group="norms"
    ),
    Option("cmap", "colour map", role="figure", choices=("viridis", "magma"), group="figure"),
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
    back = Result.load(out)
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
