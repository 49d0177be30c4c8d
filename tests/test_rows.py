"""The lens and attribution over a data file of prompts (`--data`): one table with a `row`
column whose rows equal one-prompt-at-a-time runs, figures for the first few rows, save/load,
the report, resume after an interrupted run, and one-line errors."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from test_cli import assert_one_line_errors, model_dir, run  # noqa: F401  (fixture)

import tokenprobe
from tokenprobe.analyses.attribute import rows as attr_rows
from tokenprobe.analyses.lens import rows as lens_rows_module
from tokenprobe.report import collect, render

PROMPTS = [f"the cat number {i} sat on the" for i in range(7)]
TARGETS = [" mat", " dog", " rug", " mat", " dog", " cat", " mat"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    pd.DataFrame({"prompt": PROMPTS, "answer": TARGETS}).to_csv(path, index=False)
    return path


def _row(frame: pd.DataFrame, i: int) -> pd.DataFrame:
    return frame[frame["row"] == i].drop(columns=["row"]).reset_index(drop=True)


def test_lens_over_data_equals_one_prompt_at_a_time(model_dir, prompts_file, tmp_path, capsys):
    code, out, err = run(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--data",
        str(prompts_file),
        "--target-column",
        "answer",
        "--target",
        " the",
        "--out",
        str(tmp_path / "all"),
    )
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "all" / "lens.parquet")
    assert sorted(table["row"].unique()) == list(range(len(PROMPTS)))
    lm = tokenprobe.load(str(model_dir))
    for i, (prompt, target) in enumerate(zip(PROMPTS, TARGETS, strict=True)):
        alone = tokenprobe.logit_lens(lm, prompt, targets=[" the", target]).to_frame()
        alone = alone.rename(
            columns={f"prob[{target}]": "target_prob", f"rank[{target}]": "target_rank"}
        )
        mine = _row(table, i)
        assert (mine["target"] == target).all()
        mine = mine.drop(columns=["target"])
        pd.testing.assert_frame_equal(
            mine[alone.columns], alone, check_dtype=False, rtol=1e-5, atol=1e-6
        )
    # figures for the first three rows (the default), and the saved set loads back
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == [
        f"lens_row{i}.png" for i in range(3)
    ]
    assert table["prob[ the]"].notna().all()  # tracked in every row
    loaded = tokenprobe.load_result(tmp_path / "all")
    assert len(loaded) == len(PROMPTS)
    back = loaded.result(4)
    assert back.targets == [" the", TARGETS[4]] and back.meta["prompt"] == PROMPTS[4]
    pd.testing.assert_frame_equal(loaded.to_frame(), table)
    # damaged copies of the folder: one line each, never a short set or a raw KeyError
    import shutil

    cases = {
        "short": (
            lambda d: table[table["row"] < 3].to_parquet(d / "lens.parquet", index=False),
            f"meta.json says {len(PROMPTS)} data rows, lens_rows.parquet holds {len(PROMPTS)} and lens.parquet 3",
        ),
        "columns": (
            lambda d: table.drop(columns=["entropy"]).to_parquet(d / "lens.parquet", index=False),
            "cannot be read as a lens result (KeyError",
        ),
        "table": (
            lambda d: (d / "lens.parquet").write_bytes(b"PAR1 not parquet"),
            "cannot be read as a lens result",
        ),
        "meta": (lambda d: (d / "meta.json").write_text("[1, 2]"), "not a result's meta.json"),
    }
    for name, (damage, message) in cases.items():
        copy = tmp_path / name
        shutil.copytree(tmp_path / "all", copy)
        damage(copy)
        with pytest.raises(tokenprobe.TokenprobeError, match=re.escape(message)):
            tokenprobe.load_result(copy)


def test_attribution_over_data_equals_one_prompt_at_a_time(
    model_dir,
    prompts_file,
    tmp_path,
    capsys,
):
    code, _, err = run(
        capsys,
        "attribute",
        "--model",
        str(model_dir),
        "--data",
        str(prompts_file),
        "--target-column",
        "answer",
        "--method",
        "ablation",
        "--figures",
        "2",
        "--out",
        str(tmp_path / "all"),
    )
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "all" / "attribute.parquet")
    lm = tokenprobe.load(str(model_dir))
    for i, (prompt, target) in enumerate(zip(PROMPTS, TARGETS, strict=True)):
        alone = tokenprobe.attribute(lm, prompt, target=target, method="ablation").to_frame()
        mine = _row(table, i).rename(columns={"target_row": "row"})
        pd.testing.assert_frame_equal(
            mine[alone.columns], alone, check_dtype=False, rtol=1e-6, atol=1e-9
        )
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == [
        "attribute_row0.png",
        "attribute_row1.png",
    ]
    page = render([result for _, result in collect(tmp_path / "all")])
    assert "row 0:" in page and "row 1:" in page


def test_generate_for_every_row_and_one_target_for_all(model_dir, prompts_file, tmp_path):
    lm = tokenprobe.load(str(model_dir))
    rows = attr_rows.attribute_rows(lm, PROMPTS[:3], generate=2, method="ablation", progress=False)
    assert list(rows.frame["row"].unique()) == [0, 1, 2]
    assert rows.frame.groupby("row")["target_row"].nunique().tolist() == [2, 2, 2]
    one = attr_rows.attribute_rows(
        lm, PROMPTS[:2], target=" mat", method="ablation", progress=False
    )
    assert set(one.frame["target"]) == {" mat"} or one.frame["target"].str.len().max() <= len(
        " mat"
    )


@pytest.mark.parametrize("command", ["lens", "attribute"])
def test_an_interrupted_data_run_resumes_to_the_same_table(
    model_dir,
    prompts_file,
    tmp_path,
    capsys,
    monkeypatch,
    command,
):
    module = lens_rows_module if command == "lens" else attr_rows
    name = "_lens_chunk" if command == "lens" else "_attribute_chunk"
    kind = "lens" if command == "lens" else "attribute"
    extra = ["--target-column", "answer"] + (
        ["--method", "ablation"] if command == "attribute" else []
    )
    argv = [command, "--model", str(model_dir), "--data", str(prompts_file), *extra]
    assert run(capsys, *argv, "--out", str(tmp_path / "whole"))[0] == 0
    real = getattr(module, name)
    calls = []

    def stops_at_the_third_chunk(lm, rows, options):
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(lm, rows, options)

    monkeypatch.setattr(module, name, stops_at_the_third_chunk)
    monkeypatch.setattr(module, "DEFAULT_CHUNK_ROWS", 2, raising=False)
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "cut"))
    assert code == 130, err
    assert "--resume" in err and "rows" in err
    calls.clear()
    monkeypatch.setattr(module, name, real)
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "cut"), "--resume")
    assert code == 0, err
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "cut" / f"{kind}.parquet"),
        pd.read_parquet(tmp_path / "whole" / f"{kind}.parquet"),
    )
    assert not list((tmp_path / "cut").glob("*.partial"))


def test_bad_data_runs_are_one_line(model_dir, prompts_file, tmp_path, capsys):
    empty_row = tmp_path / "holes.csv"
    pd.DataFrame({"prompt": ["a cat", None], "answer": [" x", " y"]}).to_csv(empty_row, index=False)
    data = ["--data", str(prompts_file)]
    assert_one_line_errors(
        capsys,
        "lens",
        str(model_dir),
        tmp_path / "o",
        [
            ([*data, "--prompt-column", "question"], "has no column 'question'"),
            ([*data, "--target-column", "label"], "(choose one with --target-column)"),
            (["--data", str(empty_row)], "row 1 has no prompt in column 'prompt'"),
            ([*data, "--prompt", "hi"], "not both"),
            (["--prompt", "hi", "--ray"], "--ray goes with a --data file"),
            (["--prompt", "hi", "--resume"], "--resume goes with a --data file"),
            (
                ["--prompt", "hi", "--target-column", "answer"],
                "--target-column goes with a --data file",
            ),
            (
                ["--prompt", "hi", "--prompt-column", "question"],
                "--prompt-column goes with a --data file",
            ),
            # row 5's target is the foil: said before any row runs, naming the row
            (
                [*data, "--target-column", "answer", "--foil", " cat"],
                "(line 7): --foil ' cat' is the same token (' c') as the target ' cat'",
            ),
        ],
    )
    assert_one_line_errors(
        capsys,
        "attribute",
        str(model_dir),
        tmp_path / "o",
        [
            (data, "give --target-column NAME"),
            (
                [*data, "--target-column", "answer", "--generate", "2"],
                "leave out --target and --generate",
            ),
            (["--prompt", "hi", "--target", " x", "--ray"], "--ray goes with a --data file"),
            (
                ["--prompt", "hi", "--target", " x", "--target-column", "answer"],
                "--target-column goes with",
            ),
        ],
    )


def test_a_row_target_also_tracked_everywhere_keeps_its_column(model_dir):
    lm = tokenprobe.load(str(model_dir))
    rows = tokenprobe.lens_rows(
        lm, PROMPTS[:3], [" dog", " the", " dog"], targets=[" the"], progress=False
    )
    frame = rows.to_frame()
    assert frame["prob[ the]"].notna().all() and frame["target_prob"].notna().all()
    one = frame[frame["row"] == 1]
    assert (one["target_prob"] == one["prob[ the]"]).all()
    alone = tokenprobe.logit_lens(lm, PROMPTS[1], targets=[" the"]).to_frame()
    pd.testing.assert_frame_equal(
        rows.result(1).to_frame(), alone, check_dtype=False, rtol=1e-5, atol=1e-6
    )


def test_a_text_file_holds_one_prompt_per_line(model_dir, tmp_path, capsys):
    lines = tmp_path / "prompts.txt"
    lines.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n{PROMPTS[2]}\n", encoding="utf-8")
    code, _, err = run(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--data",
        str(lines),
        "--out",
        str(tmp_path / "out"),
        "--figures",
        "0",
    )
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "out" / "lens.parquet")
    assert sorted(table["row"].unique()) == [0, 1, 2] and not list((tmp_path / "out").glob("*.png"))
    alone = tokenprobe.logit_lens(tokenprobe.load(str(model_dir)), PROMPTS[2]).to_frame()
    pd.testing.assert_frame_equal(_row(table, 2), alone, check_dtype=False, rtol=1e-5, atol=1e-6)
    assert_one_line_errors(
        capsys,
        "lens",
        str(model_dir),
        tmp_path / "o",
        [
            (
                ["--data", str(lines), "--target-column", "answer"],
                "is a text file, one prompt per line",
            ),
        ],
    )
