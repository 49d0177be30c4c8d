"""Nothing lost and nothing reached: kills during the final write, --overwrite leftovers, stale
conversion folders, the Ctrl-C message, and no network connection with a hub id."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import test_cli
from test_cli import FLIPS_DATA, run

import tokenprobe
from tokenprobe import FlipResult, TokenprobeError
from tokenprobe.checkpoint import FINISHED, kept_until_saved
from tokenprobe.cli import main
from tokenprobe.heatmap import Heatmap
from tokenprobe.journal import SAVE_JOURNAL
from tokenprobe.loading import load_result
from tokenprobe.model import COMPLETE_MARKER, cached_build, remove_stale_builds

model_dir = test_cli.model_dir  # the tiny model folder test_cli's commands run on

TESTS = Path(__file__).parent


# ----------------------------------------------------------------------------- the final write

# runs the command line in a fresh process that SIGKILLs itself at one step of the final write
KILLER = """
import os, signal, sys
import tokenprobe.journal as journal
stage, argv = sys.argv[1], sys.argv[2:]

def step(name):
    if name == stage:
        os.kill(os.getpid(), signal.SIGKILL)

journal.step = step
from tokenprobe.cli import main
sys.exit(main(argv))
"""


def killed_at(stage: str, argv: list[str], tmp_path: Path) -> None:
    """Run `tokenprobe argv` in a subprocess killed (SIGKILL) at `stage` of its final write."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src")}
    proc = subprocess.run(
        [sys.executable, str(script), stage, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def meta_of(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    meta.pop("created")
    return meta


@pytest.fixture(scope="module")
def flips_run(model_dir, tmp_path_factory):
    """The flips command's arguments (without --out) and the folder of an uninterrupted run."""
    base = tmp_path_factory.mktemp("flips")
    data = base / "t.jsonl"
    FLIPS_DATA.to_json(data, orient="records", lines=True)
    argv = ["flips", "--model", str(model_dir), "--data", str(data), "--text-column", "body"]
    argv += ["--labels", "joy= the", "anger= of", "--template", "Text: {text}\nAnswer:"]
    argv += ["--buckets", "4", "--format", "png", "svg"]
    whole = base / "whole"
    assert main([*argv, "--out", str(whole)]) == 0
    return argv, whole


STAGES = ["staging", "committed", "moving", "moved", "checkpoint removed"]


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_at_each_stage_of_the_final_write_then_resume(
    stage, flips_run, tmp_path, capsys, monkeypatch
):
    argv, whole = flips_run
    out = tmp_path / "out"
    killed_at(stage, [*argv, "--out", str(out)], tmp_path)
    partial = out / "flips.partial"
    if stage in ("staging", "committed"):  # nothing in place yet, the finished work is kept
        assert not (out / "meta.json").exists() and not (out / "flips.parquet").exists()
    if stage != "checkpoint removed":
        assert (partial / FINISHED).exists()
    assert (out / SAVE_JOURNAL).exists() == (stage != "staging")

    def recompute(*a, **kw):
        raise AssertionError("a finished chunk was computed again")

    monkeypatch.setattr("tokenprobe.analyses.flips.compute._run_chunk", recompute)
    code, _, err = run(capsys, *argv, "--out", str(out), "--resume")
    if stage == "checkpoint removed":  # the outputs were complete: the check finished the save
        assert code == 2 and "pass --overwrite" in err
    else:
        assert code == 0, err
    assert files_in(out) == files_in(whole)  # no hidden leftovers, no checkpoint, no journal
    for table in ("flips.parquet", "rates.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / table), pd.read_parquet(whole / table))
    assert meta_of(out) == meta_of(whole)


def test_a_committed_save_is_completed_by_the_next_load(flips_run, tmp_path):
    argv, whole = flips_run
    out = tmp_path / "out"
    killed_at("moving", [*argv, "--out", str(out)], tmp_path)  # one file is in place, not the rest
    back = load_result(out)  # as `report` would: finishes the save first, then reads it
    assert isinstance(back, FlipResult)
    assert files_in(out) == files_in(whole)  # the finished checkpoint went with the journal
    pd.testing.assert_frame_equal(back.rates, pd.read_parquet(whole / "rates.parquet"))


def test_similarity_killed_before_meta_json_resumes_without_recomputing(
    model_dir, tmp_path, capsys, monkeypatch
):
    data = tmp_path / "texts.csv"
    pd.DataFrame({"text": [f"{w} a _PAUSE_ b" for w in ("one", "two", "three")]}).to_csv(
        data, index=False
    )
    argv = ["similarity", "--model", str(model_dir), "--data", str(data), "--window", "3"]
    out = tmp_path / "sim"
    killed_at("staging", [*argv, "--out", str(out)], tmp_path)  # the table written, not meta.json
    assert not (out / "similarity.parquet").exists()  # no table without its meta.json
    assert (out / "similarity.partial" / FINISHED).exists()
    code, _, err = run(capsys, *argv, "--out", str(out))
    assert code == 2 and "finished run" in err and "--resume" in err

    def recompute(*a, **kw):
        raise AssertionError("texts were run through the model again")

    with monkeypatch.context() as m:
        m.setattr("tokenprobe.analyses.similarity.cosines.map_batches", recompute)
        code, _, err = run(capsys, *argv, "--out", str(out), "--resume")
    assert code == 0, err
    assert run(capsys, *argv, "--out", str(tmp_path / "whole"))[0] == 0
    assert files_in(out) == files_in(tmp_path / "whole")
    resumed = pd.read_parquet(out / "similarity.parquet")
    whole = pd.read_parquet(tmp_path / "whole" / "similarity.parquet")
    assert resumed["count"].tolist() == whole["count"].tolist()
    assert abs(resumed["cosine"] - whole["cosine"]).max() < 1e-6


def test_attribution_killed_after_commit_resumes_without_recomputing(model_dir, tmp_path, capsys):
    argv = ["attribute", "--model", str(model_dir), "--prompt", "Tools: hammer, wrench, level"]
    argv += ["--target", ", peach", "--method", "shapley", "--samples", "6"]
    out = tmp_path / "attr"
    killed_at("committed", [*argv, "--out", str(out)], tmp_path)
    assert not (out / "attribute.parquet").exists() and (out / SAVE_JOURNAL).exists()
    code, _, err = run(capsys, *argv, "--out", str(out), "--resume")
    assert code == 0, err
    assert json.loads((out / "meta.json").read_text())["forward_passes"] == 0  # all from disk
    assert run(capsys, *argv, "--out", str(tmp_path / "whole"))[0] == 0
    assert files_in(out) == files_in(tmp_path / "whole")
    resumed = pd.read_parquet(out / "attribute.parquet")
    whole = pd.read_parquet(tmp_path / "whole" / "attribute.parquet")
    assert abs(resumed["score"] - whole["score"]).max() < 1e-5


def test_python_callers_keep_the_checkpoint_only_inside_kept_until_saved(model_dir, tmp_path):
    lm = tokenprobe.load(str(model_dir))
    texts = ["one a _PAUSE_ b", "two a _PAUSE_ b"]
    tokenprobe.past_similarity(lm, texts, window=3, checkpoint=tmp_path)
    assert not (tmp_path / "similarity.partial").exists()  # removed on return, as before

    with kept_until_saved():
        res = tokenprobe.past_similarity(lm, texts, window=3, checkpoint=tmp_path)
    partial = tmp_path / "similarity.partial"
    assert (partial / FINISHED).exists() and res.checkpoint == partial.absolute()
    with pytest.raises(TokenprobeError, match="finished run .* pass resume"):
        tokenprobe.past_similarity(lm, texts, window=3, checkpoint=tmp_path)

    def broken(self):
        raise RuntimeError("the figure failed")

    # a save that fails (after its tables are staged) leaves the folder as it was and keeps
    # the checkpoint
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Heatmap, "figure", broken)
        with pytest.raises(RuntimeError):
            res.save(tmp_path / "sim")
    assert partial.exists() and not [p for p in (tmp_path / "sim").iterdir()]
    res.save(tmp_path / "sim")
    assert not partial.exists() and res.checkpoint is None
    assert files_in(tmp_path / "sim") == {"similarity.parquet", "meta.json", "similarity.png"}


def test_uncommitted_files_of_a_dead_save_are_removed_by_the_next_save(tmp_path):
    res = _flip_result(["a", "b"])
    out = tmp_path / "f"
    out.mkdir()
    from tokenprobe.files import host as _host

    dead = out / f".meta.json.999999999@{_host()}-0123abcd.tokenprobe-new"  # no such process
    dead.write_text("{")
    # another machine writing into a shared folder: its PID means nothing here
    elsewhere = out / ".meta.json.999999999@other.host-0123abcd.tokenprobe-new"
    elsewhere.write_text("{")
    mine = out / "notes.txt"
    mine.write_text("mine")
    res.save(out)
    assert not dead.exists() and mine.exists() and elsewhere.exists()
    assert json.loads((out / "meta.json").read_text())["files"] == [
        "flips.parquet",
        "rates.parquet",
        "meta.json",
        "flips_a.png",
        "flips_b.png",
    ]


# ----------------------------------------------------------------------------- --overwrite


def _flip_result(classes: list[str]) -> FlipResult:
    from tokenprobe.analyses.flips import rates_table

    rows = [
        {
            "text_id": t,
            "word": w,
            "word_index": i,
            "n_words": 2,
            "bucket": i,
            "original": c,
            "gold": c,
            "perturbed": c,
            "flipped": bool(i),
        }
        for t, c in enumerate(classes)
        for i, w in enumerate(["hello", "world"])
    ]
    occurrences = pd.DataFrame(rows)
    rates = rates_table(occurrences, classes, "predicted")
    return FlipResult(occurrences, rates, labels=classes, buckets=2, meta={"texts": len(classes)})


@pytest.mark.parametrize("listed", [True, False], ids=["meta-lists-files", "older-meta"])
def test_overwrite_removes_the_previous_results_files_only(tmp_path, listed):
    out = tmp_path / "flips"
    _flip_result(["joy", "anger"]).save(out, formats=["png", "svg"])
    if not listed:  # as saved before meta.json listed its files
        meta = json.loads((out / "meta.json").read_text())
        del meta["files"]
        (out / "meta.json").write_text(json.dumps(meta))
    user = ["notes.txt", "flips_notes.png", "lens.png", ".hidden"]
    for name in user:
        (out / name).write_text("the user's")
    (out / "sub").mkdir()
    with pytest.raises(TokenprobeError, match="pass overwrite"):
        _flip_result(["joy"]).save(out)
    _flip_result(["joy"]).save(out, overwrite=True)  # no anger any more, and only png
    expected = {"flips.parquet", "rates.parquet", "meta.json", "flips_joy.png", "sub", *user}
    assert files_in(out) == expected


def test_overwrite_with_another_kind_or_fewer_formats(model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    lens = ["lens", "--model", str(model_dir), "--prompt", "Hello world", "--out", str(out)]
    assert run(capsys, *lens, "--format", "png", "svg")[0] == 0
    (out / "keep.csv").write_text("x")
    assert run(capsys, *lens, "--format", "pdf", "--overwrite")[0] == 0
    assert files_in(out) == {"lens.parquet", "meta.json", "lens.pdf", "keep.csv"}
    sim = ["similarity", "--model", str(model_dir), "--text", "a b _PAUSE_ c", "--out", str(out)]
    assert run(capsys, *sim, "--window", "2", "--overwrite")[0] == 0
    assert files_in(out) == {"similarity.parquet", "meta.json", "similarity.png", "keep.csv"}


# ----------------------------------------------------------------------------- GGUF conversions


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_conversion_folders_are_removed_at_the_next_build(tmp_path):
    from tokenprobe.files import host as _host

    models = tmp_path / "models"
    target = models / "SmolLM2-135M-Instruct.Q4_1-0123456789ab"
    two_days_ago = time.time() - 2 * 86400

    def folder(name: str, *, old: bool = False) -> Path:
        path = models / name
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"x" * 1000)
        if old:
            for p in (path / "model.safetensors", path):
                os.utime(p, (two_days_ago, two_days_ago))
        return path

    dead = folder(f".{target.name}.tmp-{_dead_pid()}-0123abcd")  # the old naming, no host
    dead_here = folder(f".{target.name}.tmp-{_host()}-{_dead_pid()}-0123abcd")
    old_elsewhere = folder(f".{target.name}.tmp-other-host-1-0123abcd", old=True)
    running = folder(f".{target.name}.tmp-{_host()}-{os.getpid()}-0123abcd")
    elsewhere = folder(f".{target.name}.tmp-other-host-{_dead_pid()}-0123abcd")
    unrelated = [folder(".my.tmp-notes"), folder("my-model", old=True)]

    def build(path: Path) -> None:
        path.mkdir()
        (path / "model.safetensors").write_text("fresh")

    cached_build(target, build)
    assert (target / COMPLETE_MARKER).exists()
    for gone in (dead, dead_here, old_elsewhere):
        assert not gone.exists(), gone.name
    for kept in (running, elsewhere, *unrelated):
        assert kept.exists(), kept.name
    again = folder(f".other-model.tmp-{_dead_pid()}-89abcdef")
    cached_build(target, build)  # a complete target is not rebuilt, but the sweep still runs
    assert not again.exists()
    assert remove_stale_builds(tmp_path / "no such folder") == []


# ----------------------------------------------------------------------------- Ctrl-C message


def test_interrupt_message_says_what_is_kept(model_dir, tmp_path, capsys, monkeypatch):
    data = tmp_path / "t.csv"
    pd.DataFrame({"text": ["Tools: hammer", "The quick fox", "Hello world"]}).to_csv(
        data, index=False
    )
    out = tmp_path / "flips"
    argv = ["flips", "--model", str(model_dir), "--data", str(data), "--labels", "a= the"]
    argv += ["b= of", "--out", str(out)]

    def stop(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # stopped in the first chunk: nothing finished
        m.setattr("tokenprobe.analyses.flips.compute._run_chunk", stop)
        code, _, err = run(capsys, *argv)
    assert code == 130 and "nothing was finished yet" in err and "kept in" not in err
    assert not (out / "flips.partial").exists()  # so the same command starts afresh
    with monkeypatch.context() as m:  # stopped while the outputs are written
        m.setattr(Heatmap, "figure", stop)
        code, _, err = run(capsys, *argv)
    assert code == 130 and "the run had finished" in err and "--resume" in err
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 0, err


def test_integrated_gradients_in_one_batch_say_no_step_was_kept(
    model_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "attr"
    argv = ["attribute", "--model", str(model_dir), "--prompt", "Tools: hammer, wrench"]
    argv += ["--target", " level", "--method", "integrated_gradients", "--steps", "8"]
    argv += ["--out", str(out)]

    def stop(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # every step is in the one batch that is interrupted
        m.setattr("tokenprobe.analyses.attribute.gradients._per_row_grads", stop)
        code, _, err = run(capsys, *argv)
    assert code == 130 and "0 of 8 integration steps" in err, err
    with monkeypatch.context() as m:  # two batches of 4 steps, stopped in the second
        calls = []

        def first_only(*a, **kw):
            calls.append(1)
            if len(calls) > 1:
                raise KeyboardInterrupt
            return original(*a, **kw)

        from tokenprobe.analyses.attribute import gradients as attribution

        original = attribution._per_row_grads
        m.setattr(attribution, "_per_row_grads", first_only)
        code, _, err = run(capsys, *argv, "--resume", "--batch-tokens", "40")
    assert code == 130 and "finished work is kept in" in err
    assert re.search(r"\b[1-7] of 8 integration steps", err), err


# ----------------------------------------------------------------------------- network

GUARD = """
import json, os, socket, sys
attempts = []
LOOPBACK = {"127.0.0.1", "::1", "localhost"}

def remote(address):
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and host not in LOOPBACK and not host.startswith("/")

real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
real_getaddrinfo, real_create = socket.getaddrinfo, socket.create_connection

def connect(self, address):
    if remote(address):
        attempts.append(f"connect {address!r}")
        raise OSError("no network in this test")
    return real_connect(self, address)

def connect_ex(self, address):
    if remote(address):
        attempts.append(f"connect_ex {address!r}")
        return 111
    return real_connect_ex(self, address)

def getaddrinfo(host, *a, **k):
    if remote((host,)):
        attempts.append(f"getaddrinfo {host!r}")
        raise socket.gaierror("no network in this test")
    return real_getaddrinfo(host, *a, **k)

def create_connection(address, *a, **k):
    if remote(address):
        attempts.append(f"create_connection {address!r}")
        raise OSError("no network in this test")
    return real_create(address, *a, **k)

socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
socket.getaddrinfo, socket.create_connection = getaddrinfo, create_connection
if sys.argv[4] == "online":  # the hub client backs off between retries: no waiting here
    import time
    time.sleep = lambda seconds: None

if sys.argv[1] == "hub-imported-first":
    import huggingface_hub.constants  # reads the environment before tokenprobe can set it
    import transformers  # noqa: F401
    assert not huggingface_hub.constants.HF_HUB_OFFLINE
import tokenprobe
from tokenprobe.cli import main

how = sys.argv[4]  # offline: offline=True and --offline; online: neither
offline = {"offline": True, "online": None}[how]
flag = ["--offline"] if how == "offline" else []
report = {}
if how == "offline":
    try:
        lm = tokenprobe.load("some-org/cached-model", offline=offline)
        report["cached"] = type(lm.model).__name__
    except Exception as exc:
        report["cached"] = f"{type(exc).__name__}: {exc}"
try:
    tokenprobe.load("some-org/not-in-the-cache", offline=offline)
    report["uncached"] = "loaded?"
except Exception as exc:
    report["uncached"] = type(exc).__name__
report["cli"] = main(["flips", "--model", "some-org/not-in-the-cache", "--data", sys.argv[2],
                      "--labels", "a", "b", "--out", sys.argv[3], *flag])
import huggingface_hub.constants
report["offline_after"] = huggingface_hub.constants.HF_HUB_OFFLINE
report["env_after"] = os.environ.get("HF_HUB_OFFLINE")
report["attempts"] = attempts
print("REPORT " + json.dumps(report))
"""


def _run_guarded(model_dir, tmp_path, order: str, how: str) -> tuple[dict, str]:
    """Run GUARD in a fresh process with a hub cache holding the tiny model; its report and
    stderr."""
    # a hub cache holding the tiny model as a download would leave it
    repo = tmp_path / "hf" / "hub" / "models--some-org--cached-model"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    script = tmp_path / "guard.py"
    script.write_text(textwrap.dedent(GUARD), encoding="utf-8")
    data = tmp_path / "t.csv"
    data.write_text("text\nhello world\n")
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(TESTS.parent / "src"))
    proc = subprocess.run(
        [sys.executable, str(script), order, str(data), str(tmp_path / "out"), how],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT ")), proc.stderr


@pytest.mark.parametrize("order", ["tokenprobe-first", "hub-imported-first"])
def test_offline_a_hub_id_makes_no_connection(model_dir, tmp_path, order):
    report, stderr = _run_guarded(model_dir, tmp_path, order, "offline")
    assert report["attempts"] == []
    assert report["cached"] == "LlamaForCausalLM"
    assert report["uncached"] == "TokenprobeError"
    assert report["cli"] == 2 and "not in the local Hugging Face cache" in stderr
    assert "while downloads are off (--offline" in stderr
    # the caller's own setting is back once loading is done
    assert report["offline_after"] is False and report["env_after"] is None


def test_online_an_uncached_hub_id_is_downloaded_or_one_clear_line(model_dir, tmp_path):
    """Online (the default), an uncached hub id is looked up on the hub as from_pretrained
    does: here the network is cut, so the attempt fails and says so in one line."""
    report, stderr = _run_guarded(model_dir, tmp_path, "tokenprobe-first", "online")
    assert report["attempts"], "no download was attempted"
    assert report["uncached"] == "TokenprobeError"
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("tokenprobe: error:")]
    assert (
        report["cli"] == 2
        and "cannot load 'some-org/not-in-the-cache' from the Hugging Face hub" in line
    )


def test_offline_block_restores_an_earlier_setting(monkeypatch):
    import huggingface_hub.constants as hub

    from tokenprobe.model import offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with offline():
        assert hub.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert hub.HF_HUB_OFFLINE is False and os.environ["HF_HUB_OFFLINE"] == "0"
    assert "TRANSFORMERS_OFFLINE" not in os.environ


# ----------------------------------------------------------------------------- two runs at once


def test_a_second_run_resuming_the_same_checkpoint_is_refused(flips_run, tmp_path, capsys):
    """A live process holding the checkpoint's lock: the second --resume stops in one line;
    once that process is gone, its lock is taken over and the run finishes."""
    from tokenprobe.checkpoint import LOCK
    from tokenprobe.files import host as _host

    argv, whole = flips_run
    out = tmp_path / "out"
    partial = out / "flips.partial"
    partial.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (partial / LOCK).write_text(f"{_host()} {other.pid}\n")
        code, _, err = run(capsys, *argv, "--out", str(out), "--resume")
        assert code == 2 and "another tokenprobe run" in err and str(other.pid) in err
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("tokenprobe: memory:")]
        assert len(lines) == 1 and "Traceback" not in err
    finally:
        other.kill()
        other.wait()
    code, _, err = run(capsys, *argv, "--out", str(out), "--resume")
    assert code == 0, err
    assert not partial.exists()
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "rates.parquet"), pd.read_parquet(whole / "rates.parquet")
    )


def test_report_finishes_a_committed_save_before_collecting(flips_run, tmp_path):
    """Killed right after the save committed, a folder has no meta.json yet: the report must
    not pass it over without a word."""
    from tokenprobe.report import collect

    argv, whole = flips_run
    out = tmp_path / "runs" / "flips"
    killed_at("committed", [*argv, "--out", str(out)], tmp_path)
    assert not (out / "meta.json").exists()
    found = collect(tmp_path / "runs")
    assert [p for p, _ in found] == [out]
    assert files_in(out) == files_in(whole)


def test_overwrite_never_deletes_files_a_foreign_meta_json_lists(tmp_path):
    """A meta.json tokenprobe did not write (or that names files its kind never writes) must
    not get a user's files deleted by --overwrite."""
    res = _flip_result(["joy", "anger"])
    for meta in (
        {"files": ["data.csv", "analysis.ipynb"]},
        {"kind": "flips", "files": ["data.csv", "analysis.ipynb"]},
        {
            "kind": "flips",
            "versions": {"tokenprobe": "0.1.0"},
            "files": ["data.csv", "analysis.ipynb"],
        },
    ):
        (tmp_path / "data.csv").write_text("a,b\n")
        (tmp_path / "analysis.ipynb").write_text("{}")
        (tmp_path / "meta.json").write_text(json.dumps(meta))
        res.save(tmp_path, overwrite=True)
        assert (tmp_path / "data.csv").exists() and (tmp_path / "analysis.ipynb").exists()


def test_an_interrupted_second_run_leaves_a_live_runs_checkpoint_alone(tmp_path):
    """Ctrl-C of a second command in the same --out: the checkpoint whose lock belongs to a
    live process (here holding only its settings, as a run in its first part does) is kept."""
    from tokenprobe.checkpoint import LOCK, interrupted_note
    from tokenprobe.files import host as _host

    partial = tmp_path / "lens.partial"
    partial.mkdir()
    (partial / "settings.json").write_text("{}")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (partial / LOCK).write_text(f"{_host()} {other.pid}\n")
        interrupted_note(tmp_path)
        assert (partial / "settings.json").is_file() and (partial / LOCK).is_file()
    finally:
        other.kill()
        other.wait()
    assert "nothing was finished yet" in interrupted_note(tmp_path)  # its owner is gone now
    assert not partial.exists()
