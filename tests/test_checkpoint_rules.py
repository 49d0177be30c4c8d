"""Checkpoint rules: on the command line a run refused before its first finished part leaves
nothing in --out (the corrected command starts afresh, no --resume asked for), and a second
run into an --out where a run is live is told to wait, never to delete it; and the message of
an interrupted run names the finished work from what each part says it holds, whatever the
analysis (made-up units here: checkpoint.py knows no analysis)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pandas as pd
import pytest
import test_cli
from test_cli import run

from tokenprobe import checkpoint
from tokenprobe.checkpoint import LOCK, Checkpoint, _kept_work, interrupted_note, npz_writer
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


# ----------------------------------------------------------------------------- what is kept, in words


def _store(tmp_path) -> Checkpoint:
    return Checkpoint(tmp_path / "kiln.partial", {"glaze": "blue"}, resume=False)


def _part(store: Checkpoint, k: int, suffix: str = ".npz", **about) -> None:
    store.write(k, suffix, npz_writer(x=[k]), **about)


def test_counts_add_up_per_unit_in_the_order_first_written(tmp_path):
    store = _store(tmp_path)
    assert _kept_work(store.folder) == ""
    _part(store, 0, unit="sifted pebble", count=1)
    assert _kept_work(store.folder) == "1 sifted pebble"
    _part(store, 1, ".b.npz", unit="fired pot", count=0)
    _part(store, 2, unit="sifted pebble", count=3)
    assert _kept_work(store.folder) == "4 sifted pebbles, 0 fired pots"


def test_a_total_says_how_many_of_how_many_even_before_the_first(tmp_path):
    store = _store(tmp_path)
    store.expect("polished gem", 9)
    assert _kept_work(store.folder) == ""  # no finished part: nothing is kept
    _part(store, 0, unit="sifted pebble", count=2)
    assert _kept_work(store.folder) == "2 sifted pebbles, 0 of 9 polished gems"
    _part(store, 1, ".gems.npz", unit="polished gem", count=4, total=9)
    assert _kept_work(store.folder) == "2 sifted pebbles, 4 of 9 polished gems"
    store2 = Checkpoint(tmp_path / "one.partial", {}, resume=False)
    _part(store2, 0, unit="polished gem", count=0, total=1)
    assert _kept_work(store2.folder) == "0 of 1 polished gem"


def test_the_latest_state_stands_and_replaces_the_earlier(tmp_path):
    store = _store(tmp_path)
    _part(store, 3, ".kiln.pt", unit="kiln state", count=3, latest=True)
    _part(store, 5, ".kiln.pt", unit="kiln state", count=5, latest=True)
    assert _kept_work(store.folder) == "the kiln state after step 5"
    assert sorted(p.name for p in store.folder.glob("*05*")) == [
        "about-00005.kiln.pt.json",
        "part-00005.kiln.pt",
    ]
    assert not list(store.folder.glob("*00003*")), "the earlier state and its description stay"
    assert store.read(".kiln.pt").keys() == {5}


def test_an_uncounted_part_is_the_whole_and_an_undescribed_one_a_finished_part(tmp_path):
    store = _store(tmp_path)
    _part(store, 0, ".glaze.npz", unit="glaze")
    assert _kept_work(store.folder) == "the glazes"
    _part(store, 1)  # no description (as an older version wrote its parts)
    store.append(".npz", npz_writer(x=[2]))
    assert _kept_work(store.folder) == "the glazes, 2 finished parts"
    (store.folder / "about-00000.glaze.npz.json").write_text("{damaged")
    assert _kept_work(store.folder) == "3 finished parts"


def test_appended_parts_carry_their_description_into_the_interrupted_note(tmp_path):
    store = _store(tmp_path)
    store.append(".a.npz", npz_writer(x=[0]), unit="sifted pebble", count=2)
    store.append(".a.npz", npz_writer(x=[1]), unit="sifted pebble", count=5)
    assert sorted(store.read(".a.npz")) == [0, 1]
    note = interrupted_note(tmp_path)
    assert f"finished work is kept in {store.folder} (7 sifted pebbles)" in note


def test_a_checkpoint_with_only_its_settings_and_totals_is_removed_as_unstarted(tmp_path):
    store = _store(tmp_path)
    store.expect("polished gem", 9)
    store._unlock()  # the run is gone
    assert interrupted_note(tmp_path) == ": nothing was finished yet, so nothing is kept"
    assert not store.folder.exists()


def test_the_checkpoint_module_knows_no_analysis():
    source = inspect.getsource(checkpoint)
    for name in (".scores.npz", ".cells.npz", ".state.pt", ".rows.parquet", "integrated"):
        assert name not in source, name
    for unit in ("traced cell", "scored input", "training state", "integration step"):
        assert unit not in source, unit
