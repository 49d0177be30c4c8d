"""Read text data sets (CSV, JSONL, Parquet, or a sample shipped with the package)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from .errors import TokenprobeError

SAMPLE_PREFIX = "sample:"
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
    file = Path(path).expanduser()
    if not file.is_file():
        raise TokenprobeError(f"--data {path}: no such file")
    kind = READERS.get(file.suffix.lower())
    if kind is None:
        raise TokenprobeError(
            f"--data {path}: unknown file type {file.suffix!r}; use .csv, .jsonl or .parquet"
        )
    if file.stat().st_size == 0:
        raise TokenprobeError(f"--data {path} is empty: give a file with a header and rows")
    try:
        if kind == "csv":
            frame = pd.read_csv(file, encoding="utf-8")
        elif kind == "jsonl":
            frame = pd.read_json(file, lines=True, encoding="utf-8")
        else:
            frame = pd.read_parquet(file)
    except UnicodeDecodeError as exc:
        raise TokenprobeError(f"--data {path} is not UTF-8 text: save it as UTF-8") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise TokenprobeError(
            f"--data {path} cannot be read as {kind}: {str(exc).splitlines()[0]}"
        ) from exc
    if frame.empty:
        raise TokenprobeError(f"--data {path} has no rows")
    return frame


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
    texts = [str(t) for t in frame[text_column].dropna().tolist()]
    if not texts:
        raise TokenprobeError(f"--data {path}: column {text_column!r} holds no text")
    return texts
