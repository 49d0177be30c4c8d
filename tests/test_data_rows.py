"""An error about one row of a `--data` run names the row (issue 24): "row 5 of data.csv (line
7): ...", said once by the row runner (`rowset.run_rows`), whatever raised it. Rows count from
0, as the `row` column does; the line is the file's. Each row's cheap preparation runs for every
row before any model work, so a bad last row fails before the first row runs."""

from __future__ import annotations

import pandas as pd
import pytest
from test_cli import model_dir, run  # noqa: F401  (the tiny model folder fixture)

import tokenprobe
from tokenprobe.analyses.attribute import rows as attr_rows
from tokenprobe.analyses.lens import rows as lens_rows_module
from tokenprobe.data import row_lines

ERROR = "tokenprobe: error:"
PROMPTS = [f"the cat number {i} sat on the" for i in range(6)]
ANSWERS = [" mat", " dog", " rug", " mat", " dog", " the"]
LONG = "the cat sat on the mat " * 30  # 451 tokens; the tiny model's context is 128


def _csv(tmp_path, prompts=PROMPTS, answers=ANSWERS, name="data.csv"):
    path = tmp_path / name
    pd.DataFrame({"prompt": prompts, "answer": answers}).to_csv(path, index=False)
    return path


def _one_error(capsys, *argv: str) -> str:
    """The one error line of a command that must fail with status 2, without a traceback."""
    code, _, err = run(capsys, *argv)
    errors = [ln for ln in err.strip().splitlines() if ln.startswith(ERROR)]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def no_chunk_runs(monkeypatch):
    """Running any chunk fails the test: the bad row must be found before the model runs."""

    def refuse(*a, **kw):
        raise AssertionError("a chunk ran before the bad row was found")

    monkeypatch.setattr(lens_rows_module, "_lens_chunk", refuse)
    monkeypatch.setattr(attr_rows, "_attribute_chunk", refuse)


def test_a_bad_row_is_named_before_any_row_runs(model_dir, tmp_path, capsys, no_chunk_runs):
    long = _csv(tmp_path, [*PROMPTS[:4], LONG, PROMPTS[5]], name="long.csv")
    common = ["--model", str(model_dir), "--out", str(tmp_path / "o")]
    line = _one_error(capsys, "lens", *common, "--data", str(long))
    assert line.startswith(
        f"{ERROR} row 4 of {long} (line 6): the prompt is 451 tokens, longer than "
        "the model's context of 128"
    ), line
    line = _one_error(
        capsys, "attribute", *common, "--data", str(long), "--target-column", "answer"
    )
    assert f"row 4 of {long} (line 6): prompt (451 tokens) plus target" in line
    data = _csv(tmp_path)
    # the foil is row 1's (and row 4's) target: the lens compares it with that row's target
    line = _one_error(
        capsys, "lens", *common, "--data", str(data), "--target-column", "answer", "--foil", " dog"
    )
    assert f"row 1 of {data} (line 3): --foil ' dog' is the same token" in line
    assert "(and 1 more bad row: 4)" in line
    line = _one_error(
        capsys,
        "attribute",
        *common,
        "--data",
        str(data),
        "--target-column",
        "answer",
        "--foil",
        " rug",
    )
    assert f"row 2 of {data} (line 4): the foil ' rug' is the target" in line
    # --dummy-after (lens) and --span (attribution) text missing from some rows' prompts
    odd = _csv(
        tmp_path,
        [p.replace("sat", "lay") if i in (2, 3, 5) else p for i, p in enumerate(PROMPTS)],
        name="odd.csv",
    )
    line = _one_error(
        capsys, "lens", *common, "--data", str(odd), "--dummy", "2", "--dummy-after", "sat"
    )
    assert f"row 2 of {odd} (line 4): --dummy-after 'sat' is not in the prompt" in line
    assert "(and 2 more bad rows: 3 and 5)" in line
    line = _one_error(
        capsys,
        "attribute",
        *common,
        "--data",
        str(odd),
        "--target-column",
        "answer",
        "--span",
        "sat",
    )
    assert f"row 2 of {odd} (line 4): --span 'sat' is not in the prompt" in line
    # every row fails alike: said once, for all of them
    line = _one_error(
        capsys, "lens", *common, "--data", str(data), "--dummy", "2", "--dummy-after", "dog"
    )
    assert f"all 6 rows of {data}: --dummy-after 'dog' is not in the prompt" in line


def test_an_error_while_a_chunk_runs_names_its_row(model_dir, tmp_path, capsys, monkeypatch):
    real = lens_rows_module.logit_lens

    def fails_on_row_5(lm, prompts, **options):
        if PROMPTS[5] in prompts:
            raise tokenprobe.TokenprobeError("`top_k` is odd here")
        return real(lm, prompts, **options)

    monkeypatch.setattr(lens_rows_module, "logit_lens", fails_on_row_5)
    data = _csv(tmp_path)
    line = _one_error(
        capsys, "lens", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o")
    )
    # one batched call held every row of the chunk: those rows are named
    assert line == f"{ERROR} rows 0 to 5 of {data}: --top-k is odd here"
    line = _one_error(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--target-column",
        "answer",
        "--out",
        str(tmp_path / "o2"),
    )
    assert line == f"{ERROR} row 5 of {data} (line 7): --top-k is odd here"  # alone with its target


def test_the_python_api_names_the_row(model_dir, tmp_path, monkeypatch):
    lm = tokenprobe.load(str(model_dir))
    with pytest.raises(tokenprobe.TokenprobeError, match=r"^row 2: the prompt is 451 tokens"):
        tokenprobe.lens_rows(lm, [PROMPTS[0], PROMPTS[1], LONG], progress=False)
    with pytest.raises(tokenprobe.TokenprobeError, match=r"^row 1: foil ' dog' is the same token"):
        tokenprobe.lens_rows(lm, PROMPTS[:3], ANSWERS[:3], foil=" dog", progress=False)
    with pytest.raises(
        tokenprobe.TokenprobeError, match=r"^row 2 of d\.csv: prompt \(451 tokens\) plus"
    ):
        tokenprobe.attribute_rows(
            lm,
            [PROMPTS[0], PROMPTS[1], LONG],
            ANSWERS[:3],
            data="d.csv",
            method="ablation",
            progress=False,
        )
    with pytest.raises(
        tokenprobe.TokenprobeError, match=r"^row 1: features 'dog' is not in the prompt"
    ):
        tokenprobe.attribute_rows(
            lm, ["the dog sat on the", PROMPTS[1]], target=" mat", features=["dog"], progress=False
        )
    real = attr_rows.attribute

    def fails_on_row_5(lm, prompt, **options):
        if prompt == PROMPTS[5]:
            raise tokenprobe.TokenprobeError("no luck")
        return real(lm, prompt, **options)

    monkeypatch.setattr(attr_rows, "attribute", fails_on_row_5)
    with pytest.raises(tokenprobe.TokenprobeError, match=r"^row 5: no luck$"):  # the second chunk's
        tokenprobe.attribute_rows(lm, PROMPTS, ANSWERS, method="ablation", progress=False)


def test_row_lines_follow_the_file(tmp_path):
    csv = tmp_path / "multi.csv"
    csv.write_text('prompt,answer\n"two\nlines",x\n\nplain,y\n', encoding="utf-8")
    assert row_lines(str(csv)) == [2, 5]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    assert row_lines(str(jsonl)) == [1, 3]
    array = tmp_path / "rows.json"
    array.write_text('[{"prompt": "a"},\n {"prompt": "b"}]', encoding="utf-8")
    assert row_lines(str(array)) is None
    pd.DataFrame({"prompt": ["a"]}).to_parquet(tmp_path / "rows.parquet")
    assert row_lines(str(tmp_path / "rows.parquet")) is None
    assert row_lines(str(tmp_path / "missing.csv")) is None
