"""Bad input and internal failures end in one line, never a traceback (issue 13's sweep).

Bad input exits with status 2 and one `tokenprobe: error:` line; an internal error with status
1 and one line saying how to report it; damaged result folders are skipped by `report`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import test_cli
from test_cli import run
from test_report import synthetic_lens

import tokenprobe
import tokenprobe.cli
import tokenprobe.model
from tokenprobe.cli import main
from tokenprobe.registry import ANALYSES

model_dir = test_cli.model_dir  # the tiny model folder test_cli's commands run on
ERROR = "tokenprobe: error:"


def run_any(capsys, *argv: str) -> tuple[int, str, str]:
    """`run`, also for argument errors (argparse ends those with SystemExit)."""
    try:
        return run(capsys, *argv)
    except SystemExit as exc:
        captured = capsys.readouterr()
        return int(exc.code or 0), captured.out, captured.err


def assert_one_error(code: int, err: str, message: str, status: int = 2) -> str:
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith(ERROR)]
    assert code == status, err
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and not [ln for ln in lines if ln.startswith("usage:")], err
    return errors[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: the error must come before the model runs."""

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(tokenprobe.model, "load", refuse)


# ------------------------------------------------------------------- report on damaged folders


def _truncate(folder: Path) -> None:
    path = folder / "lens.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(folder: Path) -> None:
    (folder / "lens.parquet").write_bytes(b"this is not a parquet file\n" * 20)


def _wrong_columns(folder: Path) -> None:
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(folder / "lens.parquet")


def _meta_list(folder: Path) -> None:
    (folder / "meta.json").write_text(json.dumps([1, 2, 3]))


DAMAGE = {
    "truncated parquet": _truncate,
    "garbage parquet": _garbage,
    "parquet with wrong columns": _wrong_columns,
    "meta.json holding a list": _meta_list,
}


@pytest.fixture(scope="module")
def saved_lens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "lens"
    synthetic_lens(5).save(folder, formats=[])
    return folder


@pytest.mark.parametrize("damage", DAMAGE)
def test_report_skips_a_damaged_result_with_one_warning(damage, saved_lens, tmp_path, capsys):
    for name in ("a_good", "b_damaged", "c_good"):
        shutil.copytree(saved_lens, tmp_path / "results" / name)
    DAMAGE[damage](tmp_path / "results" / "b_damaged")
    code, out, err = run_any(capsys, "report", str(tmp_path / "results"))
    assert code == 0, err
    assert "report of 2 result(s)" in out and (tmp_path / "results" / "report.html").exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenprobe: warning: skipped"), err
    assert str(tmp_path / "results" / "b_damaged") in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("damage", DAMAGE)
def test_report_of_nothing_but_damaged_results_is_one_error(damage, saved_lens, tmp_path, capsys):
    shutil.copytree(saved_lens, tmp_path / "results" / "only")
    DAMAGE[damage](tmp_path / "results" / "only")
    code, _, err = run_any(capsys, "report", str(tmp_path / "results"))
    assert_one_error(code, err, "could be read")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_report_html_that_is_a_folder(overwrite, saved_lens, tmp_path, capsys):
    (tmp_path / "page").mkdir()
    code, _, err = run_any(
        capsys, "report", str(saved_lens), "--html", str(tmp_path / "page"), *overwrite
    )
    assert_one_error(code, err, "is a folder: give the .html file to write")


# ------------------------------------------------------------------- before the model runs


def test_demo_out_that_is_a_file(tmp_path, capsys, no_model_load):
    (tmp_path / "a-file").write_text("x")
    code, _, err = run_any(capsys, "demo", "--out", str(tmp_path / "a-file"))
    assert_one_error(code, err, "is a file, not a folder")


@contextmanager
def immutable(folder: Path):
    """`folder` cannot be written, for root too (chmod 555 does not stop root)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i failed here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _unwritable_cases(model: str, data: Path, out: str) -> dict[str, list[str]]:
    m = ["--model", model]
    return {
        "lens": ["lens", *m, "--prompt", "hi", "--out", out],
        "lens, two prompts": ["lens", *m, "--prompt", "hi", "--prompt", "ho", "--out", out],
        "similarity": ["similarity", *m, "--text", "a _PAUSE_", "--out", out],
        "similarity --data": ["similarity", *m, "--data", str(data), "--out", out],
        "attribute": ["attribute", *m, "--prompt", "Tools", "--target", " x", "--out", out],
        "flips": ["flips", *m, "--data", str(data), "--labels", "joy", "fear", "--out", out],
        "demo": ["demo", *m, "--out", out],
        "report --html": ["report", "RESULTS", "--html", f"{out}/page.html"],
    }


@pytest.mark.parametrize(
    "case",
    [
        "lens",
        "lens, two prompts",
        "similarity",
        "similarity --data",
        "attribute",
        "flips",
        "demo",
        "report --html",
    ],
)
def test_unwritable_out_is_found_before_the_model_runs(
    case, model_dir, saved_lens, tmp_path, capsys, no_model_load
):
    data = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a _PAUSE_ b", "c d"], "label": ["joy", "fear"]}).to_csv(
        data, index=False
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    argv = _unwritable_cases(str(model_dir), data, str(locked / "sub" / "out"))[case]
    argv = [str(saved_lens) if a == "RESULTS" else a for a in argv]
    with immutable(locked):
        code, _, err = run_any(capsys, *argv)
    line = assert_one_error(code, err, f"cannot write in {locked}")
    assert "--html" in line if case == "report --html" else "--out" in line


def test_unwritable_existing_out_folder(model_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    out.mkdir()
    with immutable(out):
        code, _, err = run_any(
            capsys, "lens", "--model", str(model_dir), "--prompt", "hi", "--out", str(out)
        )
    assert_one_error(code, err, f"cannot write in {out}")


# ------------------------------------------------------------------- flips options and labels


@pytest.fixture
def flips_data(tmp_path):
    data = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a b", "c d", "e f"], "label": ["joy", "fear", "joy"]}).to_csv(
        data, index=False
    )
    return data


FLIP_CASES = {
    "template with {text} twice": (
        ["--template", "A {text} B {text}", "--labels", "joy", "fear"],
        "{text} placeholder exactly once",
    ),
    "template without {text}": (
        ["--template", "A B", "--labels", "joy", "fear"],
        "{text} placeholder exactly once",
    ),
    "--limit -1": (["--limit", "-1"], "argument --limit: must be at least 1, not -1"),
    "--limit 0": (["--limit", "0"], "argument --limit: must be at least 1, not 0"),
    "--top -5": (["--top", "-5"], "argument --top: must be at least 1, not -5"),
    "--top 0": (["--top", "0"], "argument --top: must be at least 1, not 0"),
    "--min-count -1": (["--min-count", "-1"], "argument --min-count: must be at least 1"),
    "--min-count 0": (["--min-count", "0"], "argument --min-count: must be at least 1"),
    "--buckets 0": (["--buckets", "0"], "argument --buckets: must be at least 1, not 0"),
    "one label in --labels": (["--labels", "joy"], "at least two labels"),
    "one label twice in --labels": (["--labels", "joy", "joy"], "at least two labels"),
    "one label in the data": (["--limit", "1"], "a one-class classifier can never flip"),
}


@pytest.mark.parametrize("case", FLIP_CASES)
def test_flips_bad_options(case, model_dir, flips_data, tmp_path, capsys):
    argv, message = FLIP_CASES[case]
    code, _, err = run_any(
        capsys,
        "flips",
        "--model",
        str(model_dir),
        "--data",
        str(flips_data),
        "--out",
        str(tmp_path / "o"),
        *argv,
    )
    assert_one_error(code, err, message)


def test_plots_refuse_top_and_min_count_below_one():
    from tokenprobe.analyses.flips import top_words

    rates = pd.DataFrame({"word": ["a"], "flips": [1], "occurrences": [3]})
    for top, min_count, message in [(0, 3, "top must be"), (5, 0, "min_count must be")]:
        with pytest.raises(tokenprobe.TokenprobeError, match=message):
            top_words(rates, top, "support", min_count)


# ------------------------------------------------------------------- similarity, lens


SIMILARITY_CASES = {
    "marker first, past": (["--text", "_PAUSE_ a b c"], "has no tokens before it"),
    "marker last, future": (
        ["--text", "a b c _PAUSE_", "--direction", "future"],
        "has no tokens after it",
    ),
}


@pytest.mark.parametrize("case", SIMILARITY_CASES)
def test_similarity_marker_with_nothing_to_compare(case, model_dir, tmp_path, capsys):
    argv, message = SIMILARITY_CASES[case]
    code, _, err = run_any(
        capsys, "similarity", "--model", str(model_dir), "--out", str(tmp_path / "o"), *argv
    )
    line = assert_one_error(code, err, message)
    assert "--direction" in line and "--occurrence" in line
    assert not (tmp_path / "o" / "similarity.parquet").exists()


def test_similarity_data_set_where_some_markers_have_nothing_before_them(model_dir, tmp_path):
    lm = tokenprobe.load(str(model_dir))
    res = tokenprobe.past_similarity(lm, ["_PAUSE_ a b", "a b _PAUSE_"], window=2)
    assert res.count.tolist() == [1, 1]  # the first text adds nothing, the table is not NaN
    with pytest.raises(tokenprobe.TokenprobeError, match="each of the 2 texts"):
        tokenprobe.past_similarity(lm, ["_PAUSE_ a b", "_PAUSE_ c"], window=2)


LENS_CASES = {
    "--dummy-after without --dummy": (
        ["--dummy-after", "capital"],
        "--dummy-after has no effect without --dummy N",
    ),
    "--dummy-before without --dummy": (
        ["--dummy-before", "capital"],
        "--dummy-before has no effect without --dummy N",
    ),
    "--top-k 100000": (["--top-k", "100000"], "argument --top-k: must be at most 100"),
    "--top-k 0": (["--top-k", "0"], "argument --top-k: must be at least 1"),
}


@pytest.mark.parametrize("case", LENS_CASES)
def test_lens_bad_options(case, model_dir, tmp_path, capsys):
    argv, message = LENS_CASES[case]
    code, _, err = run_any(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--prompt",
        "What is the capital of Australia?",
        "--out",
        str(tmp_path / "o"),
        *argv,
    )
    assert_one_error(code, err, message)


def test_lens_library_refuses_a_huge_top_k(model_dir):
    lm = tokenprobe.load(str(model_dir))
    with pytest.raises(tokenprobe.TokenprobeError, match="top_k must be at most 100"):
        tokenprobe.logit_lens(lm, "hi", top_k=100_000)


def test_top_k_maximum_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["lens", "--help"])
    assert "1 to 100" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------- model folders


@pytest.mark.parametrize(
    "keep, message",
    [
        (["config.json"], "holds config.json but no tokenizer files"),
        (["config.json", "model.safetensors"], "holds config.json but no tokenizer files"),
        (
            ["config.json", "tokenizer.json", "tokenizer_config.json"],
            "holds config.json but no weights",
        ),
    ],
)
def test_incomplete_model_folder(keep, message, model_dir, tmp_path, capsys):
    folder = tmp_path / "incomplete"
    folder.mkdir()
    for name in keep:
        shutil.copy(model_dir / name, folder / name)
    code, _, err = run_any(
        capsys, "lens", "--model", str(folder), "--prompt", "hi", "--out", str(tmp_path / "o")
    )
    line = assert_one_error(code, err, message)
    assert str(folder) in line and "save_pretrained" in line
    if keep == ["config.json"]:
        assert "and no weights" in line


# ------------------------------------------------------------------- integrated gradients


def test_integrated_gradients_far_from_complete_warn_in_one_line(llama):
    with pytest.warns(UserWarning, match="have not converged") as caught:
        res = tokenprobe.attribute(
            llama,
            "Tools: hammer, wrench. Fruits:",
            target=" orange",
            method="integrated_gradients",
            steps=1,
        )
    details = res.meta["method_details"]
    assert max(abs(g) for g in details["completeness_gap"]) > 0.1 * min(
        abs(d) for d in details["score_difference"]
    )
    (warning,) = [w for w in caught if "have not converged" in str(w.message)]
    assert "\n" not in str(warning.message) and "more steps than" in str(warning.message)


def test_the_command_line_warning_names_the_flags(model_dir, tmp_path, capsys):
    """The same warning on the command line says --steps and --ig-baseline, not steps."""
    code, _, err = run(
        capsys,
        "attribute",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "ig"),
        "--prompt",
        "Tools: hammer, wrench. Fruits:",
        "--target",
        " orange",
        "--method",
        "integrated_gradients",
        "--steps",
        "1",
        "--ig-baseline",
        "zero",
    )
    assert code == 0, err
    (line,) = [ln for ln in err.splitlines() if "have not converged" in ln]
    assert "rerun with more --steps than 1 or with --ig-baseline unk" in line


# ------------------------------------------------------------------- the one line itself


def _fail_with(monkeypatch, exc: BaseException) -> None:
    def fail(args):
        raise exc

    monkeypatch.setattr(ANALYSES["lens"], "cli", fail)


def test_an_internal_error_is_one_line_with_status_1(monkeypatch, capsys):
    monkeypatch.delenv("TOKENPROBE_DEBUG", raising=False)
    _fail_with(monkeypatch, RuntimeError("shape mismatch in layer 3\nmore detail\nand more"))
    code, _, err = run_any(capsys, "lens", "--prompt", "hi")
    line = assert_one_error(code, err, "RuntimeError: shape mismatch in layer 3 (", status=1)
    assert "more detail" not in err and "--debug" in line
    assert "issue tracker" in line
    assert len(err.strip().splitlines()) == 1


def test_out_of_memory_is_bad_input_with_what_to_lower(monkeypatch, capsys):
    import torch

    monkeypatch.delenv("TOKENPROBE_DEBUG", raising=False)
    _fail_with(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    code, _, err = run_any(capsys, "lens", "--prompt", "hi")
    line = assert_one_error(code, err, "out of memory", status=2)
    assert "--batch-tokens" in line and "bug" not in line


@pytest.mark.parametrize("how", ["--debug first", "--debug last", "TOKENPROBE_DEBUG=1"])
def test_debug_prints_the_traceback(how, monkeypatch, capsys):
    monkeypatch.delenv("TOKENPROBE_DEBUG", raising=False)
    _fail_with(monkeypatch, ValueError("boom"))
    argv = ["lens", "--prompt", "hi"]
    if how == "--debug first":
        argv = ["--debug", *argv]
    elif how == "--debug last":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("TOKENPROBE_DEBUG", "1")
    code, _, err = run_any(capsys, *argv)
    assert code == 1 and "Traceback" in err and "ValueError: boom" in err
    assert err.strip().splitlines()[-1].startswith("tokenprobe: error: ValueError: boom")


def test_a_file_that_cannot_be_written_is_bad_input_naming_the_path(monkeypatch, capsys):
    monkeypatch.delenv("TOKENPROBE_DEBUG", raising=False)
    _fail_with(monkeypatch, PermissionError(13, "Permission denied", "/data/out/lens.parquet"))
    code, _, err = run_any(capsys, "lens", "--prompt", "hi")
    line = assert_one_error(code, err, "/data/out/lens.parquet: Permission denied")
    assert "bug" not in line


def test_argument_errors_are_one_line(capsys):
    code, _, err = run_any(capsys, "lens", "--no-such-flag")
    assert_one_error(code, err, "unrecognized arguments: --no-such-flag")


def test_python_callers_giving_one_string_for_a_list_are_told(model_dir):
    """One string where a list of texts is meant would be iterated into one-character texts
    (targets " ", "C", "a", ...): refused, naming the parameter and what to write."""
    from tokenprobe import attribute, attribute_rows, lens_rows, logit_lens

    lm = tokenprobe.load(str(model_dir))
    cases = [
        (
            lambda: logit_lens(lm, "the cat sat", targets=" Canberra"),
            "`targets` takes a list of texts",
        ),
        (
            lambda: lens_rows(lm, "abc"),
            "`prompts` takes a list of texts, not one string: write ['abc']",
        ),
        (lambda: lens_rows(lm, ["a b", "c d"], row_targets=" x"), "`row_targets` takes a list"),
        (
            lambda: attribute_rows(lm, "ab", target=" x", method="ablation"),
            "`prompts` takes a list",
        ),
        (
            lambda: attribute(lm, "the cat sat", target=" on", features="cat"),
            "`features` takes a list",
        ),
    ]
    for call, message in cases:
        with pytest.raises(tokenprobe.TokenprobeError, match=re.escape(message.replace("`", ""))):
            call()
