"""An interrupted causal trace keeps its finished batches: resumed, it runs only the missing
cells and gives the numbers of an uninterrupted run; a resume with other settings is refused;
and on the command line a real Ctrl-C (SIGINT) says what is kept and `--resume` finishes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_cli
import zoo
from conftest import TEST_DEVICE
from test_cli import run

from tokenprobe import TokenprobeError, causal_trace
from tokenprobe.analyses.trace import Tracer
from tokenprobe.checkpoint import _read_npz, interrupted_note, is_finished, kept_until_saved

CLEAN = "What is the capital of Australia? The capital is"
CORRUPTED = "What is the capital of orange? The capital is"  # the same 10 tokens but one
TARGET, FOIL = " Canberra", " Sydney"
model_dir = test_cli.model_dir  # the tiny model folder the command runs on
SCRIPT = Path(sys.executable).with_name("tokenprobe")  # the installed command
TOKENPROBE = (
    [str(SCRIPT)]
    if SCRIPT.is_file()
    else [sys.executable, "-c", "import sys; from tokenprobe.cli import main; sys.exit(main())"]
)

CASES = {
    # every component, the logit difference, method both (the estimate beside the cells)
    "prompt": dict(
        corrupted=CORRUPTED, foil=FOIL, components=["resid", "attn", "mlp"], method="both"
    ),
    # noise samples split across batches, a window of three layers, corrupted into clean
    "noise": dict(
        corrupt="noise",
        subject="capital of Australia",
        samples=3,
        seed=4,
        noise=2.0,
        window=3,
        components=["mlp", "resid"],
        direction="corrupt",
        metric="logprob",
    ),
    # key heads of a grouped-query model, a cell per position
    "heads": dict(corrupted=CORRUPTED, components=["head-k"], metric="logprob"),
    # query and value heads and attention outputs, every position at once, with the estimate
    "heads-all": dict(
        corrupted=CORRUPTED,
        components=["head", "head-v", "attn"],
        positions="all",
        method="both",
        metric="logprob",
    ),
}


@pytest.fixture(scope="module")
def lm():
    from conftest import make_tokenizer

    return zoo.make_causal("llama", make_tokenizer(), device=TEST_DEVICE, layers=3)


class Counter:
    """Counts the patched runs (`Tracer._patched`'s rows and calls); raises KeyboardInterrupt
    on call number `stop_at` (its batch is then not finished)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_at: int | None = None) -> None:
        self.calls, self.rows, self.stop_at = 0, 0, stop_at
        original = Tracer._patched

        def patched(tracer, picked, *args):
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt
            self.rows += len(picked)
            return original(tracer, picked, *args)

        monkeypatch.setattr(Tracer, "_patched", patched)


def _rows_in(partial: Path) -> int:
    """Patched runs held by a trace's checkpoint."""
    return sum(len(_read_npz(p)["rows"]) for p in partial.glob("part-*.cells.npz"))


def _interrupted(lm, kw: dict, out: Path, monkeypatch, stop_at: int) -> None:
    """A trace stopped by Ctrl-C in batch `stop_at`, its checkpoint left in `out`."""
    with monkeypatch.context() as m:
        Counter(m, stop_at)
        with pytest.raises(KeyboardInterrupt):
            causal_trace(lm, CLEAN, checkpoint=out, **kw)


@pytest.mark.filterwarnings("ignore:the target")  # a random model's target is implausible
@pytest.mark.filterwarnings("ignore:the clean and corrupted scores are close")
@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_trace_equals_an_uninterrupted_one_and_runs_only_the_missing_cells(
    case, lm, tmp_path, monkeypatch
):
    kw = dict(target=TARGET, batch_tokens=24, progress=False, **CASES[case])
    with monkeypatch.context() as m:
        whole_count = Counter(m)
        whole = causal_trace(lm, CLEAN, **kw)
    assert whole_count.calls > 10  # enough batches to stop in the middle

    _interrupted(lm, kw, tmp_path, monkeypatch, stop_at=6)
    partial = tmp_path / "trace.partial"
    kept = _rows_in(partial)
    assert len(list(partial.glob("part-*.cells.npz"))) == 5  # each finished batch, at once
    note = interrupted_note(tmp_path)
    assert "finished work is kept in" in note and "traced cell" in note and "--resume" in note

    starts: list[int] = []  # where the progress bar stands when the cells start
    score_cells = Tracer.score_cells

    def spy(self, cells, batch_tokens, bar=None, *args):
        starts.append(bar.n)
        return score_cells(self, cells, batch_tokens, bar, *args)

    with monkeypatch.context() as m:
        m.setattr(Tracer, "score_cells", spy)
        count = Counter(m)
        shown = {**kw, "progress": True}  # a disabled bar counts nothing
        resumed = causal_trace(lm, CLEAN, checkpoint=tmp_path, resume=True, **shown)
    assert starts[0] == kept
    assert count.rows == whole_count.rows - kept and count.calls == whole_count.calls - 5
    assert not partial.exists()  # a Python caller's checkpoint goes when the run returns
    for c in whole.components:
        assert np.nanstd(whole.scores[c]) > 1e-2, c  # cells that differ: a mix-up would show
        np.testing.assert_array_equal(resumed.scores[c], whole.scores[c], err_msg=c)
        if whole.estimates is not None:
            np.testing.assert_array_equal(resumed.estimates[c], whole.estimates[c], err_msg=c)
    skip = ("created", "versions")
    assert {k: v for k, v in resumed.meta.items() if k not in skip} == {
        k: v for k, v in whole.meta.items() if k not in skip
    }


@pytest.mark.filterwarnings("ignore:the target")
@pytest.mark.filterwarnings("ignore:the clean and corrupted scores are close")
def test_a_resume_with_other_settings_is_refused(lm, tmp_path, monkeypatch):
    kw = dict(target=TARGET, batch_tokens=24, progress=False, **CASES["noise"])
    _interrupted(lm, kw, tmp_path, monkeypatch, stop_at=3)
    partial = tmp_path / "trace.partial"
    parts = sorted(p.name for p in partial.iterdir())
    others = {
        "seed": dict(seed=5),
        "samples": dict(samples=2),
        "noise": dict(noise=3.0),
        "window": dict(window=1),
        "components": dict(components=["mlp"]),
        "direction": dict(direction="restore"),
        "metric": dict(metric="prob"),
        "target_id": dict(target=" Sydney"),
        "subject_positions": dict(subject="Australia"),
        "method": dict(method="both"),
        "positions": dict(positions="all"),
    }
    for differ, change in others.items():
        with pytest.raises(TokenprobeError, match=f"other settings \\(different {differ}\\)"):
            causal_trace(lm, CLEAN, checkpoint=tmp_path, resume=True, **{**kw, **change})
    with pytest.raises(
        TokenprobeError, match="other settings .*different clean_ids, corrupted_ids"
    ):
        causal_trace(lm, CLEAN + " the", checkpoint=tmp_path, resume=True, **kw)
    with pytest.raises(TokenprobeError, match="holds an unfinished run: pass resume"):
        causal_trace(lm, CLEAN, checkpoint=tmp_path, **kw)
    assert sorted(p.name for p in partial.iterdir()) == parts  # refusals leave it as it was
    # the batch size changes the speed, not the numbers: it may differ on resume
    resumed = causal_trace(
        lm, CLEAN, checkpoint=tmp_path, resume=True, **{**kw, "batch_tokens": 200}
    )
    whole = causal_trace(lm, CLEAN, **kw)
    for c in whole.components:
        np.testing.assert_allclose(resumed.scores[c], whole.scores[c], rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:the target")
def test_a_finished_run_whose_outputs_were_not_saved_resumes_without_running_a_cell(
    lm, tmp_path, monkeypatch
):
    """As the command line runs: the checkpoint stays until the result is saved, and a resume
    in between builds the result from it alone."""
    kw = dict(target=TARGET, batch_tokens=24, progress=False, **CASES["prompt"])
    partial = tmp_path / "trace.partial"
    with kept_until_saved():
        first = causal_trace(lm, CLEAN, checkpoint=tmp_path, **kw)
    assert is_finished(partial) and first.checkpoint == partial.absolute()
    with pytest.raises(TokenprobeError, match="finished run .* pass resume"):
        causal_trace(lm, CLEAN, checkpoint=tmp_path, **kw)
    with monkeypatch.context() as m, kept_until_saved():
        count = Counter(m)
        again = causal_trace(lm, CLEAN, checkpoint=tmp_path, resume=True, **kw)
    assert count.calls == 0
    for c in first.components:
        np.testing.assert_array_equal(again.scores[c], first.scores[c], err_msg=c)
        np.testing.assert_array_equal(again.estimates[c], first.estimates[c], err_msg=c)
    again.save(tmp_path / "saved", formats=["png"])
    assert not partial.exists() and (tmp_path / "saved" / "trace.parquet").is_file()


# ----------------------------------------------------------------------------- Ctrl-C


def _wait_for_part(proc: subprocess.Popen, partial: Path, timeout: float = 240.0) -> None:
    """Until the first finished part is in `partial` (or the process has ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(partial.glob("part-*.cells.npz")):
            return
        time.sleep(0.01)
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"no part appeared in {partial} (exit {proc.returncode}): {err[-3000:]}")


def test_a_real_ctrl_c_keeps_the_finished_cells_and_resume_finishes(
    model_dir, tmp_path, capsys, monkeypatch
):
    argv = ["trace", "--model", str(model_dir), "--prompt", CLEAN, "--target", TARGET]
    argv += ["--corrupt", "noise", "--subject", "capital of Australia", "--samples", "3"]
    argv += ["--window", "2", "--component", "resid", "mlp", "--batch-tokens", "40"]
    argv += ["--device", "cpu", "--format", "png"]
    out = tmp_path / "out"
    partial = out / "trace.partial"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [*TOKENPROBE, *argv, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_part(proc, partial)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tokenprobe: interrupted: finished work is kept in {partial} ("), last
    assert "traced cell" in last and "run the same command with --resume to go on from it" in last
    assert not (out / "trace.parquet").exists() and not (out / "meta.json").exists()
    kept = _rows_in(partial)
    assert kept > 0

    code, _, err = run(capsys, *argv, "--out", str(out))  # not without --resume
    assert code == 2 and "holds an unfinished run: pass --resume" in err, err
    count = Counter(monkeypatch)
    code, _, err = run(capsys, *argv, "--out", str(out), "--resume")
    assert code == 0, err
    assert not partial.exists()
    monkeypatch.undo()
    count_whole = Counter(monkeypatch)
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "whole"))
    assert code == 0, err
    assert count.rows == count_whole.rows - kept  # only the missing cells were run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "whole").iterdir()
    )
    resumed = pd.read_parquet(out / "trace.parquet")
    whole = pd.read_parquet(tmp_path / "whole" / "trace.parquet")
    assert len(whole) == (4 + 3) * 10  # resid and mlp rows of three blocks, ten positions
    # another process (its thread count may differ): equal to float error, not bit for bit
    pd.testing.assert_frame_equal(resumed, whole, check_exact=False, rtol=1e-6, atol=1e-9)
