"""--data where researchers keep their data: a `datasets.save_to_disk` folder, a folder of
Parquet files as Ray and Spark write them, and a hub data set through `datasets`."""

from __future__ import annotations

import re
import sys

import pandas as pd
import pytest
from test_cli import model_dir, run  # noqa: F401  (the tiny model folder fixture)

from tokenprobe import TokenprobeError
from tokenprobe.data import read_table, read_texts

datasets = pytest.importorskip("datasets")

ROWS = {
    "text": ["a _PAUSE_ b c _PAUSE_", "d e _PAUSE_ f _PAUSE_", "g _PAUSE_ h _PAUSE_"],
    "label": ["x", "y", "x"],
}


def test_a_save_to_disk_folder_reads_as_its_table(tmp_path):
    datasets.Dataset.from_dict(ROWS).save_to_disk(tmp_path / "one")
    pd.testing.assert_frame_equal(read_table(str(tmp_path / "one")), pd.DataFrame(ROWS))


def test_a_dataset_dict_folder_gives_train_or_asks_for_a_split(tmp_path):
    train, test = (
        datasets.Dataset.from_dict(ROWS),
        datasets.Dataset.from_dict({"text": ["z"], "label": ["y"]}),
    )
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dd")
    assert read_table(str(tmp_path / "dd"))["text"].tolist() == ROWS["text"]
    assert read_table(str(tmp_path / "dd" / "test"))["text"].tolist() == ["z"]
    datasets.DatasetDict({"dev": train, "test": test}).save_to_disk(tmp_path / "two")
    with pytest.raises(TokenprobeError, match="holds the splits dev, test: give one"):
        read_table(str(tmp_path / "two"))


def test_a_folder_of_parquet_parts_reads_as_one_table(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    frame = pd.DataFrame(ROWS)
    frame.iloc[:2].to_parquet(folder / "part-00000.parquet", index=False)
    frame.iloc[2:].to_parquet(folder / "part-00001.parquet", index=False)
    (folder / "_SUCCESS").write_text("")  # Spark's marker is not data
    back = read_table(str(folder)).sort_values("text", ignore_index=True)
    pd.testing.assert_frame_equal(back, frame.sort_values("text", ignore_index=True))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenprobeError, match="folder without Parquet files"):
        read_table(str(empty))


def test_a_hub_data_set_goes_through_datasets(monkeypatch):
    seen = {}

    def load_dataset(name, config=None, split=None):
        seen.update(name=name, config=config, split=split)
        return datasets.Dataset.from_dict(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert read_texts("hf:some-org/emotions:raw:validation") == ROWS["text"]
    assert seen == {"name": "some-org/emotions", "config": "raw", "split": "validation"}
    read_table("hf:some-org/emotions")
    assert seen == {"name": "some-org/emotions", "config": None, "split": "train"}

    def fails(*a, **k):
        raise FileNotFoundError("Couldn't find a dataset script or data files\nmore")

    monkeypatch.setattr(datasets, "load_dataset", fails)
    with pytest.raises(
        TokenprobeError, match=r"^--data hf:nope cannot be loaded \(FileNotFoundError"
    ):
        read_table("hf:nope")
    with pytest.raises(TokenprobeError, match=r"needs a data set name: --data hf:NAME"):
        read_table("hf:")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(TokenprobeError, match=r"pip install 'tokenprobe\[hub\]'"):
        read_table("hf:some-org/emotions")


def test_commands_read_a_saved_data_set(model_dir, tmp_path, capsys):
    datasets.Dataset.from_dict(ROWS).save_to_disk(tmp_path / "data")
    out = tmp_path / "sim"
    code, printed, err = run(
        capsys,
        "similarity",
        "--model",
        str(model_dir),
        "--data",
        str(tmp_path / "data"),
        "--occurrence",
        "2",
        "--window",
        "3",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "over 3 text(s)" in printed and (out / "similarity.parquet").exists()


def test_cells_are_read_as_the_text_they_hold(tmp_path):
    """A numeric-looking CSV target keeps its leading space, a JSON number is a prompt, a
    `.json` array reads as rows; a header naming a column twice, a lone surrogate and a
    non-object row are one line each (they were silently wrong)."""
    from tokenprobe.data import read_prompts, read_texts

    csv = tmp_path / "p.csv"
    csv.write_text(
        'prompt,answer\n"Two plus two is"," 4"\nSeven times five is, 35\n', encoding="utf-8"
    )
    assert read_prompts(str(csv), target_column="answer") == [
        {"prompt": "Two plus two is", "target": " 4"},
        {"prompt": "Seven times five is", "target": " 35"},
    ]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": 42}\n{"prompt": "caf\\u00e9"}\n', encoding="utf-8")
    assert [r["prompt"] for r in read_prompts(str(jsonl))] == ["42", "café"]
    array = tmp_path / "p.json"
    array.write_text('[{"text": "a b"}, {"text": "c"}]', encoding="utf-8")
    assert read_texts(str(array)) == ["a b", "c"]
    cases = {
        "twice.csv": ("prompt,prompt\nfirst,second\n", "names the column 'prompt' 2 times"),
        "lone.jsonl": (
            '{"prompt": "bad \\ud800 text"}\n',
            "row 0 of column 'prompt' holds a lone surrogate",
        ),
        "list.jsonl": ('["a", "b"]\n', "row 0 is list, not an object"),
        "broken.jsonl": ('{"prompt": "a"}\n{"prompt": \n', "line 2"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(TokenprobeError, match=re.escape(message)):
            read_prompts(str(tmp_path / name))
