"""The lens's output check: before any inner row is decoded, the adapter's head must turn the
last layer's residual stream into the model's own logits; a head that does not is an error,
not a warning, since every inner row would be decoded otherwise than the model decodes."""

from __future__ import annotations

import torch

from ...model import LoadedModel


def check_output_row(lm: LoadedModel, last_block: torch.Tensor, logits: torch.Tensor) -> str:
    """Do the adapter's final norm, projection, unembedding, multiplier and soft-cap turn the
    last layer's residual stream into the model's own logits (rows of the same positions)?
    "ok", or "ok: ..." where a logit multiplier or soft-cap of the config had to be found by
    trying them; a TokenprobeError where nothing rebuilds them: the other rows would not be
    decoded the way the model decodes."""
    tol = 1e-3 if lm.dtype in (torch.float32, torch.float64) else 5e-2
    return lm.require_adapter().check_head(
        last_block, logits, tol=tol, name=type(lm.model).__name__
    )


# the output check's cells besides every input's last position: a head that decodes otherwise
# than the model differs on every row, and 512 rows cost 3% of the lens of 8 x 64 tokens
CHECK_ROWS = 64


def check_rows(valid: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of the cells the output check compares: every input's last position,
    and evenly spaced others, at most `CHECK_ROWS` (or `chunk`: one decoding chunk's memory)
    in all unless the last positions alone are more."""
    rows, positions = valid.nonzero(as_tuple=True)
    last = torch.ones_like(rows, dtype=torch.bool)
    last[:-1] = rows[1:] != rows[:-1]
    keep = last.clone()
    room = min(chunk, CHECK_ROWS) - int(last.sum())
    if room > 0:
        spread = torch.linspace(0, len(rows) - 1, min(room, len(rows)), device=rows.device)
        keep[spread.long()] = True
    return rows[keep], positions[keep]
