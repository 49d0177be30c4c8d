"""A prompted classifier's template and verbalisers: the template holds `{text}` once, and
each label's verbaliser counts by its first token, which must differ between labels."""

from __future__ import annotations

import warnings
from typing import Any

from ...errors import TokenprobeError
from ...text import token_texts


def check_template(template: str) -> None:
    """A prompted classifier's template holds `{text}` exactly once (checked before a model is
    loaded, too)."""
    if template.count("{text}") != 1:
        raise TokenprobeError(
            "the template must hold the {text} placeholder exactly once: put one {text} where the text goes"
        )


def verbaliser_ids(tok: Any, labels: list[str], verbalisers: list[str]) -> list[int]:
    """The first token of each verbaliser (warning where a verbaliser is several); they must
    differ, or two labels could never be told apart."""
    first = []
    for label, verb in zip(labels, verbalisers, strict=True):
        ids = tok.encode(verb, add_special_tokens=False)
        if not ids:
            raise TokenprobeError(f"the verbaliser {verb!r} for {label!r} gives no tokens")
        if len(ids) > 1:
            pieces = token_texts(tok, ids)
            warnings.warn(
                f"verbaliser {verb!r} is split into {len(ids)} tokens {pieces}; its first token {pieces[0]!r} "
                "stands for it",
                UserWarning,
                stacklevel=3,
            )
        first.append(int(ids[0]))
    dupes = {t for t in first if first.count(t) > 1}
    if dupes:
        clash = [v for v, t in zip(verbalisers, first, strict=True) if t in dupes]
        raise TokenprobeError(
            f"verbalisers {clash} begin with the same token: choose words whose first tokens differ (label=word)"
        )
    return first
