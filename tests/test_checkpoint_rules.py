"""Two checkpoint rules on the command line: a run refused before its first finished part
leaves nothing in --out (the corrected command starts afresh, no --resume asked for), and a
second run into an --out where a run is live is told to wait, never to delete it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import test_cli
from test_cli import run

from tokenprobe.checkpoint import LOCK
from tokenprobe.errors import TokenprobeError
from tokenprobe.files import host

model_dir = test_cli.model_dir


@pytest.fixture
def texts(tmp_path):
    data = tmp_path / "texts.csv"
    pd.DataFrame({"text": [f"{w} a _PAUSE_ b" for w in ("one", "two", "three")]}).to_csv(
        data, index=False
    )
    return data


def test_a_run_refused_before_its_first_part_leaves_no_checkpoint(
    model_dir, texts, tmp_path, capsys, monkeypatch
):
    argv = ["similarity", "--model", str(model_dir), "--data", str(texts), "--window", "3"]
    out = tmp_path / "sim"

    def refuse(*a, **kw):
        raise TokenprobeError("refused for the test")

    with monkeypatch.context() as m:
        m.setattr("tokenprobe.analyses.similarity.cosines.map_batches", refuse)
        code, _, err = run(capsys, *argv, "--out", str(out))
    assert code == 2 and "refused for the test" in err
    assert not (out / "similarity.partial").exists(), "a settings-only checkpoint was left"
    code, _, err = run(capsys, *argv, "--out", str(out))  # the corrected command, no --resume
    assert code == 0, err


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_run_into_a_live_out_is_told_to_wait(model_dir, texts, tmp_path, capsys, resume):
    out = tmp_path / "sim"
    partial = out / "similarity.partial"
    partial.mkdir(parents=True)
    (partial / "settings.json").write_text(json.dumps({"model": "x"}))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (partial / LOCK).write_text(f"{host()} {live.pid}\n")
        argv = ["similarity", "--model", str(model_dir), "--data", str(texts), "--out", str(out)]
        code, _, err = run(capsys, *argv, *(["--resume"] if resume else []))
        lines = [ln for ln in err.splitlines() if ln.startswith("tokenprobe: error:")]
        assert code == 2 and len(lines) == 1, err
        assert "another tokenprobe run" in lines[0] and "delete it" not in lines[0], err
        assert sorted(p.name for p in partial.iterdir()) == [LOCK, "settings.json"]
    finally:
        live.kill()
        live.wait()
