"""Read text data sets: CSV, JSONL or Parquet files, a folder of Parquet files (as Ray and
Spark write them), a Hugging Face `datasets` folder (`save_to_disk`), a hub data set
(`hf:NAME[:CONFIG][:SPLIT]`, through the `datasets` library), or a sample shipped with the
package (`sample:NAME`)."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import pandas as pd

from .errors import TokenprobeError

SAMPLE_PREFIX = "sample:"
HUB_PREFIX = "hf:"
READERS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def read_table(path: str) -> pd.DataFrame:
    """A data file as a DataFrame, or one clear error naming what is wrong with it."""
    if path.startswith(SAMPLE_PREFIX):
        name = path[len(SAMPLE_PREFIX) :]
        ref = resources.files("tokenprobe").joinpath(f"data/{name}.csv")
        if not ref.is_file():
            raise TokenprobeError(f"no sample data set {name!r} ships with tokenprobe")
        with resources.as_file(ref) as local:
            return read_table(str(local))
    if path.startswith(HUB_PREFIX):
        return _non_empty(read_hub(path), path)
    file = Path(path).expanduser()
    if file.is_dir():
        return _non_empty(read_folder(file, path), path)
    if not file.is_file():
        raise TokenprobeError(f"--data {path}: no such file or folder")
    kind = READERS.get(file.suffix.lower())
    if kind is None:
        raise TokenprobeError(
            f"--data {path}: unknown file type {file.suffix!r}; use .csv, .jsonl or .parquet"
        )
    if file.stat().st_size == 0:
        raise TokenprobeError(f"--data {path} is empty: give a file with a header and rows")
    try:
        if kind == "csv":
            _check_header(file, path)
            # every cell as the text it is (" 35" stays " 35"); empty cells are missing
            frame = pd.read_csv(file, encoding="utf-8", dtype=str)
        elif kind == "jsonl":
            frame = _read_json(file, path)
        else:
            frame = pd.read_parquet(file)
    except UnicodeDecodeError as exc:
        raise TokenprobeError(f"--data {path} is not UTF-8 text: save it as UTF-8") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise TokenprobeError(
            f"--data {path} cannot be read as {kind}: {str(exc).splitlines()[0]}"
        ) from exc
    return _non_empty(frame, path)


def _check_header(file: Path, path: str) -> None:
    """A CSV header naming a column twice: pandas would rename the second (`prompt.1`) and
    read the first without a word."""
    with open(file, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise TokenprobeError(
            f"--data {path} names the column {twice[0]!r} {header.count(twice[0])} times in its header: "
            "rename or remove the others"
        )


def _read_json(file: Path, path: str) -> pd.DataFrame:
    """JSON Lines (one object per line), or a `.json` file holding one array of objects;
    values as JSON gives them (pandas' reader drops lone surrogates and guesses types)."""
    text = file.read_text(encoding="utf-8")
    array = file.suffix.lower() == ".json" and text.lstrip().startswith("[")
    lines = (
        [(1, text)]
        if array
        else [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    )
    try:
        parsed = [json.loads(line) for _, line in lines]
    except json.JSONDecodeError as exc:
        n = next(n for n, line in lines if _fails(line))
        raise TokenprobeError(
            f"--data {path} is not JSON Lines (one object per line) or a JSON array of objects: "
            f"line {n + exc.lineno - 1}: {exc.msg}"
        ) from exc
    records = parsed[0] if array else parsed
    if not isinstance(records, list):
        records = [records]
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise TokenprobeError(
                f"--data {path}: row {i} is {type(record).__name__}, not an object with named "
                'columns (e.g. {"prompt": "..."})'
            )
        _check_text(record, path, i)
    return pd.DataFrame.from_records(records)


def _text(value: object) -> str | None:
    """A cell as text: strings as they are, numbers as text (a JSON prompt `42` is "42"; CSV
    cells are read as text already); None for a missing cell."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _fails(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return True
    return False


def _check_text(record: dict, path: str, row: int) -> None:
    """Refuse a lone surrogate (JSON's `\\ud800`): it is no character, and the table would drop
    or replace it without a word."""
    for column, value in record.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise TokenprobeError(
                    f"--data {path}: row {row} of column {column!r} holds a lone surrogate "
                    f"(\\u{ord(value[exc.start]):04x}), which is not text: fix the file"
                ) from None


def _non_empty(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    if frame.empty:
        raise TokenprobeError(f"--data {path} has no rows")
    return frame


def read_folder(folder: Path, path: str) -> pd.DataFrame:
    """A `datasets.save_to_disk` folder (one split; of a DatasetDict, the only split or
    `train`) or a folder of Parquet files (read recursively, `_SUCCESS` and hidden files left
    out)."""
    check_saved_dataset(folder, path)
    splits_file = folder / "dataset_dict.json"
    if splits_file.is_file():
        splits = json.loads(splits_file.read_text(encoding="utf-8")).get("splits", [])
        if len(splits) != 1 and "train" not in splits:
            raise TokenprobeError(
                f"--data {path} holds the splits {', '.join(splits)}: give one, e.g. --data {folder / splits[0]}"
            )
        return read_folder(folder / (splits[0] if len(splits) == 1 else "train"), path)
    state = folder / "state.json"
    if state.is_file():
        files = [
            f["filename"] for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        ]
        import pyarrow as pa

        tables = []
        try:
            for name in files:
                with pa.memory_map(str(folder / name)) as source:
                    tables.append(pa.ipc.open_stream(source).read_all())
            return pa.concat_tables(tables).to_pandas()
        except Exception as exc:  # a damaged Arrow file: pyarrow raises many types
            lines = str(exc).strip().splitlines()
            why = f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__
            raise TokenprobeError(
                f"`data` {path}: its data files cannot be read ({why}): the folder is damaged; "
                "save the data set again (save_to_disk), or give another `data`"
            ) from exc
    if next(folder.rglob("*.parquet"), None) is not None:
        try:
            return pd.read_parquet(folder)
        except (ValueError, OSError) as exc:
            raise TokenprobeError(
                f"--data {path}: its Parquet files cannot be read as one table: {str(exc).splitlines()[0]}"
            ) from exc
    raise TokenprobeError(
        f"--data {path} is a folder without Parquet files or a saved `datasets` data set "
        "(state.json): give a file, a folder of .parquet files, or a save_to_disk folder"
    )


def _unusable(data: str, file: Path, problem: str) -> TokenprobeError:
    return TokenprobeError(
        f"`data` {data}: {file} {problem}: the saved data set is damaged; save it again "
        "(save_to_disk), or give another `data`"
    )


def _json_object(file: Path, data: str) -> dict:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise _unusable(data, file, f"is not readable JSON ({type(exc).__name__})") from exc
    if not isinstance(value, dict):
        raise _unusable(data, file, f"holds a JSON {type(value).__name__}, not an object")
    return value


def check_saved_dataset(folder: Path, data: str) -> None:
    """A `datasets.save_to_disk` folder (of a Dataset, or of a DatasetDict: its only split or
    `train`, the one `--data` reads) whose index files are damaged or whose Arrow files are
    missing: one error naming the file, before reading. Other folders are left to `read_texts`."""
    splits_file = folder / "dataset_dict.json"
    if splits_file.is_file():
        splits = _json_object(splits_file, data).get("splits")
        if (
            not isinstance(splits, list)
            or not splits
            or not all(isinstance(x, str) for x in splits)
        ):
            raise _unusable(data, splits_file, "lists no splits (`splits`: a list of names)")
        if len(splits) > 1 and "train" not in splits:
            return  # read_texts says which split to give
        folder = folder / (splits[0] if len(splits) == 1 else "train")
        if not (folder / "state.json").is_file():
            raise _unusable(data, folder / "state.json", "is missing")
    state = folder / "state.json"
    if not state.is_file():
        return
    files = _json_object(state, data).get("_data_files")
    entries = (
        [f.get("filename") if isinstance(f, dict) else None for f in files]
        if isinstance(files, list)
        else []
    )
    names = [n for n in entries if isinstance(n, str) and n and Path(n).name == n]
    if not entries or len(names) != len(entries):
        raise _unusable(data, state, "lists no data files (`_data_files`, each with a file name)")
    for name in names:
        if not (folder / name).is_file():
            raise _unusable(data, folder / name, "is missing")


def read_hub(path: str) -> pd.DataFrame:
    """`hf:NAME[:CONFIG][:SPLIT]` through the `datasets` library (downloaded into its cache
    unless HF_HUB_OFFLINE=1); the split defaults to `train`."""
    name, config, split = (path[len(HUB_PREFIX) :].split(":") + [None, None])[:3]
    if not name:
        raise TokenprobeError("--data hf: needs a data set name: --data hf:NAME[:CONFIG][:SPLIT]")
    try:
        import datasets
    except ImportError as exc:
        raise TokenprobeError(
            "--data hf:... reads hub data sets through the `datasets` library: pip install "
            "'tokenprobe[hub]' (or pip install datasets)"
        ) from exc
    try:
        data = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as exc:  # datasets raises many types: one line naming the data set
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TokenprobeError(
            f"--data {path} cannot be loaded ({type(exc).__name__}: {first}): check the name, "
            "config and split, and the network (or HF_HUB_OFFLINE=1 with a cached copy)"
        ) from exc
    return data.to_pandas()


def require_column(frame: pd.DataFrame, path: str, column: str, flag: str) -> None:
    """One clear error naming the missing column, the columns there are, and the flag to fix it."""
    if column not in frame.columns:
        raise TokenprobeError(
            f"--data {path} has no column {column!r}; its columns are: {', '.join(map(str, frame.columns))} "
            f"(choose one with {flag})"
        )


def read_texts(path: str, text_column: str = "text") -> list[str]:
    """The texts of a data set's `text_column`, missing values dropped."""
    frame = read_table(path)
    require_column(frame, path, text_column, "--text-column")
    texts = [t for t in (_text(v) for v in frame[text_column].tolist()) if t is not None]
    if not texts:
        raise TokenprobeError(f"--data {path}: column {text_column!r} holds no text")
    return texts


def read_prompts(
    path: str, prompt_column: str = "prompt", target_column: str | None = None
) -> list[dict[str, str | None]]:
    """One {"prompt", "target"} per row of a data set of prompts, in the file's order (a row's
    number is its place in the file, so a row without a prompt is an error, not dropped).
    A `.txt` file holds one prompt per line (blank lines skipped), without targets."""
    if path.lower().endswith(".txt"):
        return _text_lines(path, target_column)
    frame = read_table(path)
    require_column(frame, path, prompt_column, "--prompt-column")
    if target_column is not None:
        require_column(frame, path, target_column, "--target-column")
    rows: list[dict[str, str | None]] = []
    for i, cell in enumerate(frame[prompt_column].tolist()):
        prompt = _text(cell)
        if prompt is None or not prompt.strip():
            raise TokenprobeError(
                f"--data {path}: row {i} has no prompt in column {prompt_column!r}: fill it in or "
                "remove the row"
            )
        target = None
        if target_column is not None:
            value = _text(frame[target_column].iloc[i])
            if value is None or not value:
                raise TokenprobeError(
                    f"--data {path}: row {i} has no target in column {target_column!r}: fill it "
                    "in or remove the row"
                )
            target = value
        rows.append({"prompt": prompt, "target": target})
    return rows


def row_lines(path: str) -> list[int] | None:
    """The line (from 1) where each data row of `path` starts, for a message naming a row;
    None where rows have no lines (Parquet, a JSON array, a folder, the hub) or the file
    cannot be read again. Only read when a row fails."""
    if path.startswith(SAMPLE_PREFIX):
        ref = resources.files("tokenprobe").joinpath(f"data/{path[len(SAMPLE_PREFIX) :]}.csv")
        if not ref.is_file():
            return None
        with resources.as_file(ref) as local:
            return row_lines(str(local))
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    try:
        if not file.is_file() or suffix not in (".csv", ".txt", ".jsonl", ".json"):
            return None
        if suffix == ".csv":
            return _csv_lines(file)
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if suffix == ".json" and text.lstrip().startswith("["):
        return None  # one array: its rows are not lines
    return [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _csv_lines(file: Path) -> list[int]:
    """Where each record after the header starts (a quoted cell may span lines; pandas skips
    blank lines)."""
    with open(file, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        starts, start = [], reader.line_num + 1
        for record in reader:
            if record:
                starts.append(start)
            start = reader.line_num + 1
    return starts


def _text_lines(path: str, target_column: str | None) -> list[dict[str, str | None]]:
    """The prompts of a `.txt` file, one per non-blank line."""
    if target_column is not None:
        raise TokenprobeError(
            f"--data {path} is a text file, one prompt per line, without columns: give a CSV, "
            "JSONL or Parquet file for --target-column"
        )
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TokenprobeError(f"--data {path}: no such file or folder") from None
    except UnicodeDecodeError as exc:
        raise TokenprobeError(f"--data {path} is not UTF-8 text: save it as UTF-8") from exc
    rows: list[dict[str, str | None]] = [
        {"prompt": line, "target": None} for line in lines if line.strip()
    ]
    if not rows:
        raise TokenprobeError(f"--data {path} has no prompts: write one prompt per line")
    return rows
