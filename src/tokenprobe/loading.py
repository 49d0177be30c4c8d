"""Reading a saved result folder back, whatever its kind: meta.json names the kind (its class
found in the registry) and whether it is one analysis over a data file's rows (a `RowSet`).
It sits above both `results` and `rowset`, so that neither has to know the other."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from . import registry
from .errors import TokenprobeError
from .journal import SAVE_JOURNAL, complete_save
from .results import Result
from .rowset import RowSet


def load_result(path: str | os.PathLike[str]) -> Result:
    """Any saved result from its folder (or its meta.json): a save that was interrupted after
    it committed is finished first; a damaged folder is one error saying so."""
    folder = Path(path)
    if folder.name == "meta.json":
        folder = folder.parent
    meta = read_meta(folder)
    kind = meta.get("kind")
    try:
        cls = registry.by_kind(kind).result
    except TokenprobeError as exc:
        raise TokenprobeError(
            f"{folder / 'meta.json'} names an unknown result kind {kind!r}"
        ) from exc
    table = folder / f"{kind}.parquet"
    if not table.exists():
        raise TokenprobeError(f"{folder} lacks {table.name}: re-run the analysis")
    try:
        frame = pd.read_parquet(table)
        if RowSet.is_saved(meta):  # one analysis over a data file's rows
            rows = RowSet.read(cls, frame, meta, folder)
            rows.result(0)  # each row reads its part of the table when asked: read one now
            result: Result = rows
        else:
            result = cls.from_folder(folder, frame, meta)
    except TokenprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged table or meta.json, whatever it breaks
        lines = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise TokenprobeError(
            f"{folder} cannot be read as a {kind} result ({why[:200]}): it is damaged or from "
            "another version; re-run the analysis"
        ) from exc
    result.meta.pop("files", None)  # what the folder holds, not part of the result
    return result


def read_meta(folder: Path) -> dict[str, Any]:
    """A result folder's meta.json (after finishing a committed save), or one clear error."""
    if (folder / SAVE_JOURNAL).is_file():  # a save was killed after it committed: finish it
        try:
            complete_save(folder)
        except OSError as exc:
            raise TokenprobeError(
                f"{folder} holds a save that was interrupted and cannot be completed here "
                f"({exc.strerror or exc}): run the analysis again"
            ) from exc
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise TokenprobeError(
            f"{folder} holds no tokenprobe result (no meta.json): pass a folder written by save()"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenprobeError(
            f"{meta_path} is not readable JSON ({exc}): re-run the analysis"
        ) from exc
    if not isinstance(meta, dict):
        raise TokenprobeError(
            f"{meta_path} is not a result's meta.json (not an object): re-run the analysis"
        )
    return meta
