"""Bad input on the command line and at model load (issue 24): one `tokenprobe: error:` line,
exit status 2 and no traceback; the Python API raises TokenprobeError naming the parameter.
One rule stands behind each class of case: UTF-8 for every flag's text (cli/flags.py), a
range for every whole number (analyses/base.py), the devices of --max-memory checked where
the model is placed (model/placement.py)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import test_bad_input
import test_cli
import torch
from test_bad_input import assert_one_error, run_any

import tokenprobe
from tokenprobe import TokenprobeError
from tokenprobe.analyses.base import INT_MAX
from tokenprobe.cli import error_line
from tokenprobe.cli.flags import read_text_file
from tokenprobe.registry import ANALYSES
from tokenprobe.runner import is_oom

model_dir = test_cli.model_dir  # the tiny model folder test_cli's commands run on
no_model_load = test_bad_input.no_model_load  # loading a model fails the test
COMMAND = Path(sys.executable).parent / "tokenprobe"  # the installed command
SRC = Path(__file__).resolve().parent.parent / "src"
RAY = ["lens", "--prompt", "hi", "--ray"]

# (argv, what the one line says), TMP standing for tmp_path: all refused before the model loads
BEFORE_LOAD = {
    # 2: every flag's text is UTF-8 (a byte the shell passed on is a lone surrogate here)
    "--prompt not UTF-8": (
        ["lens", "--prompt", "ab\udcff"],
        "--prompt b'ab\\xff' is not valid UTF-8",
    ),
    "--target not UTF-8": (
        ["lens", "--prompt", "hi", "--target", "\udcff"],
        "--target b'\\xff' is not valid UTF-8",
    ),
    "--foil not UTF-8": (
        ["lens", "--prompt", "hi", "--target", " a", "--foil", "x\udcc3"],
        "--foil b'x\\xc3'",
    ),
    "--subject not UTF-8": (
        ["trace", "--prompt", "The Eiffel Tower", "--target", " Paris", "--subject", "\udcff"],
        "--subject b'\\xff' is not valid UTF-8",
    ),
    "--dummy-token not UTF-8": (
        ["lens", "--prompt", "hi", "--dummy", "1", "--dummy-token", "\udcfe"],
        "--dummy-token",
    ),
    "--out not UTF-8": (["lens", "--prompt", "hi", "--out", "TMP/o\udcff"], "--out b'"),
    "--prompt-file not UTF-8 text": (
        ["lens", "--prompt-file", "TMP/latin1.txt"],
        "is not UTF-8 text",
    ),
    # 3: every whole number in range as it is read (a seed: 0 to 2**63 - 1)
    "trace --seed 10**23": (
        ["trace", "--prompt", "a b", "--target", " c", "--seed", str(10**23)],
        f"argument --seed: must be at most {INT_MAX}, not {10**23}",
    ),
    "attribute --seed 10**23": (
        [
            "attribute",
            "--prompt",
            "a b",
            "--target",
            " c",
            "--method",
            "shapley",
            "--seed",
            str(10**23),
        ],
        f"argument --seed: must be at most {INT_MAX}",
    ),
    "attribute --seed -1": (
        ["attribute", "--prompt", "a b", "--target", " c", "--method", "shapley", "--seed", "-1"],
        "argument --seed: must be at least 0, not -1",
    ),
    "lens --dummy 10**20": (
        ["lens", "--prompt", "hi", "--dummy", str(10**20)],
        "argument --dummy: must be at most",
    ),
    "similarity --window 10**19": (
        ["similarity", "--text", "a _PAUSE_", "--window", str(10**19)],
        "argument --window: must be at most",
    ),
    "--batch-tokens 10**19": (
        ["lens", "--prompt", "hi", "--batch-tokens", str(10**19)],
        "argument --batch-tokens: must be at most",
    ),
    # 5: the Ray flags are finite numbers, not below 0
    "--cpus-per-worker inf": (
        [*RAY, "--cpus-per-worker", "inf"],
        "argument --cpus-per-worker: must be a finite number",
    ),
    "--gpus-per-worker nan": (
        [*RAY, "--gpus-per-worker", "nan"],
        "argument --gpus-per-worker: must be a finite number",
    ),
    "--gpus-per-worker -1": (
        [*RAY, "--gpus-per-worker", "-1"],
        "argument --gpus-per-worker: must be at least 0",
    ),
    "--cpus-per-worker 0": (
        [*RAY, "--cpus-per-worker", "0"],
        "argument --cpus-per-worker: must be above 0",
    ),
    "--workers 10**19": ([*RAY, "--workers", str(10**19)], "argument --workers: must be at most"),
    # 4: a malformed --max-memory
    "--max-memory cuda:x": (
        ["lens", "--prompt", "hi", "--device-map", "auto", "--max-memory", "cuda:x=1GiB"],
        "each part is DEVICE=SIZE",
    ),
    "--max-memory without a unit": (
        ["lens", "--prompt", "hi", "--device-map", "auto", "--max-memory", "0=10"],
        "each part is DEVICE=SIZE",
    ),
    "--max-memory cpu twice": (
        ["lens", "--prompt", "hi", "--device-map", "auto", "--max-memory", "cpu=1GiB,cpu=2GiB"],
        "gives cpu twice: give it once",
    ),
}

NO_GPU_3 = pytest.mark.skipif(torch.cuda.device_count() > 3, reason="this machine has a GPU 3")
AT_LOAD = {  # 4: checked where the model is placed, before any weight is read
    "--max-memory cuda:3": (
        ["--device-map", "auto", "--max-memory", "cuda:3=10GiB"],
        "--max-memory names GPU 3 (cuda:3)",
    ),
    "--max-memory 3": (
        ["--device-map", "auto", "--max-memory", "3=10GiB,cpu=1GiB"],
        "which this machine does not have",
    ),
}


def _argv(argv: list[str], model_dir: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    out = [a.replace("TMP", str(tmp_path)) for a in argv]
    if "--out" not in out:
        out += ["--out", str(tmp_path / "out")]
    return [*out, "--model", str(model_dir)]


@pytest.mark.parametrize("case", BEFORE_LOAD)
def test_bad_flags_are_one_line_before_the_model_loads(
    case, model_dir, tmp_path, capsys, no_model_load
):
    argv, message = BEFORE_LOAD[case]
    code, _, err = run_any(capsys, *_argv(argv, model_dir, tmp_path))
    assert_one_error(code, err, message)


@NO_GPU_3
@pytest.mark.parametrize("case", AT_LOAD)
def test_max_memory_naming_a_device_this_machine_lacks(case, model_dir, tmp_path, capsys):
    argv, message = AT_LOAD[case]
    code, _, err = run_any(capsys, *_argv(["lens", "--prompt", "hi", *argv], model_dir, tmp_path))
    line = assert_one_error(code, err, message)
    assert "its devices are" in line and "cpu" in line and "Device 3 is not available" not in err


@NO_GPU_3
@pytest.mark.parametrize(
    "max_memory", [{3: "1GiB"}, "cuda:3=1GiB", {"cuda:3": "1GiB", "cpu": "1GiB"}]
)
def test_the_library_names_max_memory(max_memory, model_dir):
    with pytest.raises(TokenprobeError, match=r"^max_memory names GPU 3 \(cuda:3\)"):
        tokenprobe.load(str(model_dir), device_map="auto", max_memory=max_memory)


# ------------------------------------------------------------------- 1, 2: text read exactly


def test_a_prompt_file_is_read_byte_for_byte(model_dir, tmp_path, capsys):
    """A \\r (or \\r\\n) in --prompt-file stays as it is: no newline translation."""
    text = "a\rb\r\nc\n"
    (tmp_path / "p.txt").write_bytes(text.encode("utf-8"))
    assert read_text_file(str(tmp_path / "p.txt"), "--prompt-file") == text
    out = tmp_path / "lens"
    code, _, err = run_any(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--prompt-file",
        str(tmp_path / "p.txt"),
        "--out",
        str(out),
    )
    assert code == 0, err
    assert json.loads((out / "meta.json").read_text(encoding="utf-8"))["prompt"] == text


def test_the_installed_command_with_a_byte_that_is_not_utf8(model_dir, tmp_path):
    """The shell passes bytes on: a real argv byte 0xff is one line naming --prompt."""
    done = subprocess.run(
        [
            str(COMMAND),
            "lens",
            "--model",
            str(model_dir),
            "--prompt",
            b"ab\xff",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    err = done.stderr.decode("utf-8", "replace")
    assert_one_error(done.returncode, err, "--prompt b'ab\\xff' is not valid UTF-8 text")


# ------------------------------------------------------------------- 3: numbers, memory


def test_the_library_range_checks_whole_numbers(model_dir):
    lm = tokenprobe.load(str(model_dir))
    with pytest.raises(TokenprobeError, match=f"^dummy must be at most {INT_MAX}, not {10**20}"):
        tokenprobe.logit_lens(lm, "hi", dummy=10**20)
    seed = next(o for o in ANALYSES["trace"].options if o.param == "seed")
    with pytest.raises(TokenprobeError, match="^seed must be at least 0, not -1"):
        seed.check(-1)
    with pytest.raises(TokenprobeError, match=f"^seed must be at most {INT_MAX}"):
        seed.check(10**23)


CPU_ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 128000000000000 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize(
    "exc",
    [RuntimeError(CPU_ALLOCATOR), MemoryError(), torch.OutOfMemoryError("CUDA out of memory.")],
)
def test_every_out_of_memory_is_recognised(exc):
    assert is_oom(exc)
    line, status = error_line(exc)
    assert status == 2 and line.startswith("tokenprobe: error: out of memory") and "bug" not in line
    assert "--batch-tokens" in line and "--samples" in line


def test_trace_samples_beyond_memory_is_the_out_of_memory_line(model_dir, tmp_path, capsys):
    code, _, err = run_any(
        capsys,
        "trace",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "t"),
        "--prompt",
        "The Eiffel Tower is in",
        "--target",
        " Paris",
        "--subject",
        "Eiffel Tower",
        "--samples",
        str(10**15),
    )
    line = assert_one_error(code, err, "out of memory (")
    assert "GiB asked for" in line and "--samples" in line


# ------------------------------------------------------------------- 6: contradicting flags


def test_generate_and_target_together_say_not_both(model_dir, tmp_path, capsys):
    code, _, err = run_any(
        capsys,
        "attribute",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "a"),
        "--prompt",
        "Tools: hammer",
        "--target",
        " x",
        "--generate",
        "2",
    )
    assert_one_error(code, err, "not both")


# ------------------------------------------------------------------- 8: custom model code


@pytest.fixture
def custom_code_model(model_dir, tmp_path):
    """The tiny model as a folder whose config.json names its own classes in a local .py."""
    folder = tmp_path / "custom"
    folder.mkdir()
    for f in model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "modeling_custom.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="custom_llama",
        architectures=["CustomForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_custom_code_without_trust_names_the_flag(custom_code_model, tmp_path, capsys):
    code, _, err = run_any(
        capsys,
        "lens",
        "--model",
        str(custom_code_model),
        "--prompt",
        "hi",
        "--out",
        str(tmp_path / "o"),
    )
    line = assert_one_error(code, err, "--trust-remote-code")
    assert "ships its own Python code" in line and "runs that code" in line
    with pytest.raises(TokenprobeError, match="pass trust_remote_code only if you trust"):
        tokenprobe.load(str(custom_code_model))


# ------------------------------------------------------------------- 7: Ctrl-C, 9: no network


def _interrupt(proc: subprocess.Popen, delay: float) -> str:
    """SIGINT `proc` after `delay` seconds, again every half second until it ends; its stderr."""
    time.sleep(delay)
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(0.5)
        except subprocess.TimeoutExpired:
            pass
    return proc.communicate(timeout=60)[1].decode("utf-8", "replace")


def _assert_interrupted(proc: subprocess.Popen, err: str) -> None:
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines() == ["tokenprobe: interrupted"], err[
        -3000:
    ]


def test_ctrl_c_while_the_command_imports(model_dir, tmp_path):
    proc = subprocess.Popen(
        [
            str(COMMAND),
            "lens",
            "--model",
            str(model_dir),
            "--prompt",
            "hi",
            "--out",
            str(tmp_path / "o"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    _assert_interrupted(proc, _interrupt(proc, 0.5))


def test_ctrl_c_before_the_run_starts(model_dir, tmp_path):
    """A real SIGINT once the command waits on its --prompt-file (a FIFO no one writes yet)."""
    fifo = tmp_path / "prompt.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [
            str(COMMAND),
            "lens",
            "--model",
            str(model_dir),
            "--prompt-file",
            str(fifo),
            "--out",
            str(tmp_path / "o"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline, writer = time.monotonic() + 240, None
    while writer is None and proc.poll() is None and time.monotonic() < deadline:
        try:  # opens only once the command has the FIFO open for reading
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO, exc
            time.sleep(0.1)
    try:
        assert writer is not None, "the command never opened its --prompt-file"
        _assert_interrupted(proc, _interrupt(proc, 0.2))
    finally:
        if writer is not None:
            os.close(writer)
        proc.kill()


NETWORK_DOWN = """
import sys, time
from tokenprobe.cli import main
start = time.monotonic()
code = main(["lens", "--model", "some-org/not-in-any-cache", "--prompt", "hi", "--out", sys.argv[1]])
print(f"{code} {time.monotonic() - start:.2f}")
"""


def test_a_hub_id_with_the_network_down_fails_fast_in_one_line(tmp_path):
    """Online, the hub unreachable (HF_ENDPOINT at a closed port): one line naming --offline
    within seconds, not a minute of retry warnings."""
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(SRC))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NETWORK_DOWN), str(tmp_path / "o")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    code, seconds = done.stdout.split()
    assert code == "2", done.stderr[-3000:]
    assert float(seconds) < 10, done.stderr[-3000:]
    line = assert_one_error(
        int(code), done.stderr, "cannot load 'some-org/not-in-any-cache' from the Hugging Face hub"
    )
    assert "--offline" in line and "http://127.0.0.1:9" in line
    assert done.stderr.strip().splitlines() == [line], done.stderr
