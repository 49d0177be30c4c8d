"""Data-set runs on a local Ray cluster (started by these tests, 2 CPUs) give the tables of a
local run; a killed worker's chunk is rerun; an interrupted driver resumes.

Flip predictions are compared exactly. Cosines may differ by float32 rounding (a worker runs
its matrix products on one thread, which sums in another order), so they are compared to 1e-6.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cli import model_dir, run  # noqa: F401  (the tiny model folder fixture)

import tokenprobe
from tokenprobe.runner import Remote, run_chunks

ray = pytest.importorskip("ray")
from tokenprobe.executors import RayExecutor  # noqa: E402

# the workers cannot import this test module: its functions travel by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TEXTS = [f"the cat number {i} sat on the mat and looked at the dog" for i in range(24)]
MARKED = [f"tools {i}: hammer _PAUSE_ wrench level _PAUSE_ pliers and nails" for i in range(20)]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ray-data")
    flips = folder / "flips.csv"
    pd.DataFrame({"text": TEXTS, "label": ["a", "b"] * 12}).to_csv(flips, index=False)
    marked = folder / "marked.csv"
    pd.DataFrame({"text": MARKED}).to_csv(marked, index=False)
    prompts = folder / "prompts.csv"
    pd.DataFrame(
        {"prompt": [f"the cat {i} sat on the" for i in range(10)], "answer": [" mat", " dog"] * 5}
    ).to_csv(prompts, index=False)
    return {"flips": flips, "marked": marked, "prompts": prompts}


def test_flips_on_ray_equal_the_local_run(model_dir, data, tmp_path, capsys):
    argv = [
        "flips",
        "--model",
        str(model_dir),
        "--data",
        str(data["flips"]),
        "--labels",
        "a= the",
        "b= of",
    ]
    assert run(capsys, *argv, "--out", str(tmp_path / "here"))[0] == 0
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "ray"), "--ray", "--workers", "2")
    assert code == 0, err
    for table in ("flips.parquet", "rates.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "ray" / table), pd.read_parquet(tmp_path / "here" / table)
        )


def test_similarity_over_data_on_ray_equals_the_local_run(model_dir, data, tmp_path, capsys):
    argv = [
        "similarity",
        "--model",
        str(model_dir),
        "--data",
        str(data["marked"]),
        "--occurrence",
        "2",
    ]
    argv += ["--window", "4"]
    assert run(capsys, *argv, "--out", str(tmp_path / "here"))[0] == 0
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "ray"), "--ray")
    assert code == 0, err
    here, there = (pd.read_parquet(tmp_path / d / "similarity.parquet") for d in ("here", "ray"))
    assert here["count"].equals(there["count"])
    np.testing.assert_allclose(there["cosine"], here["cosine"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("command", ["lens", "attribute"])
def test_prompts_over_data_on_ray_equal_the_local_run(model_dir, data, tmp_path, capsys, command):
    argv = [
        command,
        "--model",
        str(model_dir),
        "--data",
        str(data["prompts"]),
        "--target-column",
        "answer",
    ]
    if command == "attribute":
        argv += ["--method", "ablation"]
    kind = "lens" if command == "lens" else "attribute"
    assert run(capsys, *argv, "--out", str(tmp_path / "here"))[0] == 0
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "ray"), "--ray", "--workers", "2")
    assert code == 0, err
    here, there = (pd.read_parquet(tmp_path / d / f"{kind}.parquet") for d in ("here", "ray"))
    # float32 sums in another order on a one-thread worker: an ablation score is a difference of
    # log-probabilities near -6, so a few float32 steps of those (~5e-7 each) apart
    pd.testing.assert_frame_equal(there, here, rtol=1e-6, atol=1e-5)
    assert (tmp_path / "ray" / f"{kind}_row0.png").is_file()


def test_the_workers_warnings_are_shown_as_a_local_run_shows_them(
    model_dir,
    data,
    tmp_path,
    capsys,
):
    """A row target of several tokens warns in the chunk's own code (the lens tracks its first
    token), which runs on a worker with --ray: the driver shows what the local run shows."""
    import warnings

    argv = [
        "lens",
        "--model",
        str(model_dir),
        "--data",
        str(data["prompts"]),
        "--target-column",
        "answer",
        "--figures",
        "0",
    ]
    shown = {}
    for where, extra in (("here", []), ("ray", ["--ray", "--workers", "2"])):
        with warnings.catch_warnings():  # each run starts with nothing shown yet, as a new process
            code, _, err = run(capsys, *argv, "--out", str(tmp_path / where), *extra)
        assert code == 0, err
        shown[where] = sorted(
            ln for ln in err.splitlines() if ln.startswith("tokenprobe: warning:")
        )
    assert any(
        "target ' mat' is 4 tokens; the lens tracks its first token" in ln for ln in shown["here"]
    )
    assert shown["ray"] == shown["here"]


def _square_or_die(marker: str, payload: list[int]) -> list[int]:
    """Squares; the first time it sees 7 its worker process dies (as if killed)."""
    if 7 in payload and not os.path.exists(marker):
        Path(marker).write_text("killed once")
        os._exit(1)
    return [x * x for x in payload]


def test_a_killed_worker_is_replaced_and_its_chunk_rerun(tmp_path):
    marker = str(tmp_path / "killed")
    chunks = [list(range(i, i + 3)) for i in range(0, 15, 3)]
    remote = Remote(dict, lambda state, payload: _square_or_die(marker, payload), list)
    parts = run_chunks(
        chunks,
        None,
        store=None,
        suffix="",
        write=None,
        executor=RayExecutor(workers=2),
        remote=remote,
    )
    assert Path(marker).exists()  # a worker did die
    assert [parts[k] for k in range(len(chunks))] == [[x * x for x in c] for c in chunks]


def test_an_interrupted_driver_resumes_on_ray(model_dir, tmp_path):
    lm = tokenprobe.load(str(model_dir))
    clf = tokenprobe.PromptedClassifier(lm, ["a", "b"], [" the", " of"])
    local = tokenprobe.flip_rates(clf, TEXTS, chunk_texts=4)

    def stop(k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenprobe.flip_rates(
            clf,
            TEXTS,
            chunk_texts=4,
            checkpoint=tmp_path,
            executor=RayExecutor(),
            _after_chunk=stop,
        )
    kept = list((tmp_path / "flips.partial").glob("part-*.parquet"))
    assert len(kept) == 1
    again = tokenprobe.flip_rates(
        clf, TEXTS, chunk_texts=4, checkpoint=tmp_path, resume=True, executor=RayExecutor()
    )
    pd.testing.assert_frame_equal(again.occurrences, local.occurrences)


def _cannot_load() -> None:
    raise tokenprobe.TokenprobeError("no model at /nowhere on this node")


def test_bad_situations_are_one_line(tmp_path):
    remote = Remote(_cannot_load, lambda state, payload: payload, list)
    with pytest.raises(tokenprobe.TokenprobeError, match="no model at /nowhere"):
        run_chunks(
            [[1]], None, store=None, suffix="", write=None, executor=RayExecutor(), remote=remote
        )
    greedy = RayExecutor(workers=2, gpus_per_worker=1)
    with pytest.raises(tokenprobe.TokenprobeError, match=r"need 2 GPUs, and the Ray cluster has 0"):
        list(greedy.map(dict, lambda s, p: p, {0: 1}))
    wrapped = tokenprobe.LoadedModel.wrap(*_tiny())
    clf = tokenprobe.PromptedClassifier(wrapped, ["a", "b"], [" the", " of"])
    with pytest.raises(tokenprobe.TokenprobeError, match="load it with tokenprobe.load"):
        tokenprobe.flip_rates(clf, TEXTS[:2], executor=RayExecutor())


def _tiny():
    from conftest import make_model, make_tokenizer

    lm = make_model("llama", make_tokenizer())
    return lm.model, lm.tokenizer


def test_without_ray_installed_the_line_says_how_to_install(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(tokenprobe.TokenprobeError, match=r"pip install 'tokenprobe\[ray\]'"):
        RayExecutor()._ray()


def test_the_local_path_does_not_import_ray():
    import subprocess

    code = "import sys, tokenprobe, tokenprobe.cli; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_an_unreachable_cluster_address_is_one_line_at_once(
    model_dir,
    data,
    tmp_path,
    capsys,
    monkeypatch,
):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    argv = [
        "flips",
        "--model",
        str(model_dir),
        "--data",
        str(data["flips"]),
        "--labels",
        "a= the",
        "b= of",
    ]
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "o"), "--ray")
    assert code == 2 and "nothing answers at the Ray cluster address 127.0.0.1:1" in err


def test_worker_shares_below_zero_are_one_line(model_dir, data, tmp_path, capsys):
    argv = ["flips", "--model", str(model_dir), "--data", str(data["flips"]), "--labels", "a", "b"]
    for flag, value, message in [
        ("--cpus-per-worker", "0", "must be above 0, not 0"),
        ("--gpus-per-worker", "-1", "must be at least 0, not -1"),
        ("--workers", "0", "must be at least 1, not 0"),
    ]:
        with pytest.raises(SystemExit) as done:
            run(capsys, *argv, "--out", str(tmp_path / "o"), "--ray", flag, value)
        err = capsys.readouterr().err
        assert done.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_local_cluster_refuses_a_client_without_its_token(tmp_path):
    """--ray without RAY_ADDRESS starts a local cluster whose servers listen on every
    interface: a client without Ray's token is refused (one with it connects)."""
    import subprocess

    ray_module = RayExecutor(workers=1)._ray()
    assert os.environ.get("RAY_AUTH_MODE", "token") == "token"
    gcs = ray_module.get_runtime_context().gcs_address
    code = f"import ray; ray.init(address={gcs!r}, log_to_driver=False); print('connected')"

    def connects(**env: str) -> bool:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
        return "connected" in proc.stdout

    assert not connects(RAY_AUTH_MODE="disabled", HOME=str(tmp_path))  # no token sent
    assert connects()  # the token Ray generated for this machine's user


def test_a_cluster_without_authentication_is_warned_about(monkeypatch):
    from tokenprobe.executors import _require_token

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.warns(tokenprobe.TokenprobeWarning, match="accepts work from anyone"):
        _require_token()


def test_a_cluster_address_is_sent_the_token_at_hand(tmp_path, monkeypatch):
    """`ray start --head` then `export RAY_ADDRESS` (the README's recipe): a client sends the
    cluster's token only under RAY_AUTH_MODE=token, which is set where a token is at hand and
    the user did not choose a mode (checked by hand against a real head node: refused with
    InvalidAuthToken without it, connected with it)."""
    from types import SimpleNamespace

    from tokenprobe import executors

    seen: list[str | None] = []
    fake = SimpleNamespace(
        is_initialized=lambda: False,
        init=lambda **_: seen.append(os.environ.get("RAY_AUTH_MODE")),
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(executors, "_check_reachable", lambda address: None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    RayExecutor()._ray()  # no token anywhere: left to Ray
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    RayExecutor()._ray()  # ~/.ray/auth_token, as `ray start --head` writes it
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    RayExecutor()._ray()  # the user's own choice stands
    assert seen == [None, "token", "disabled"]
