"""The logit post-processing of a model's head, read from its config: soft-caps, multipliers
and divisors under the names families give them, and every candidate `Adapter.check_head`
tries where the plain decoding does not rebuild the model's logits."""

from __future__ import annotations

import math
import re
from itertools import product
from typing import Any

import torch

# Logit post-processing the config names: soft-caps tanh(x / c) * c (Gemma 2, 3 and 3n,
# RecurrentGemma, xLSTM), multipliers (Cohere, Falcon-H1) and divisors (Granite) of the logits.
# `Adapter.check_head` also tries other config values whose name looks like one of these.
SOFTCAP_NAMES = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")
MULTIPLIER_NAMES = ("logit_scale", "lm_head_multiplier")
DIVISOR_NAMES = ("logits_scaling",)


def _config_numbers(config: Any) -> dict[str, float]:
    """The config's finite, non-zero real numbers by name (no strings, booleans or None)."""
    known = (*SOFTCAP_NAMES, *MULTIPLIER_NAMES, *DIVISOR_NAMES)  # also as class defaults
    names = dict.fromkeys([*getattr(config, "__dict__", {}), *known])
    items = [(k, _attribute(config, k)) for k in names]
    real = [(k, float(v)) for k, v in items if isinstance(v, (int, float)) and v is not True]
    return {k: v for k, v in real if math.isfinite(v) and v != 0.0}


def _attribute(config: Any, name: str) -> Any:
    """A config attribute, or None where reading it raises (Gemma 4's per-layer attributes)."""
    try:
        return getattr(config, name, None)
    except Exception:  # noqa: BLE001 - a config may refuse any attribute it cannot give one value for
        return None


def head_candidates(config: Any) -> list[tuple[float, float | None, str]]:
    """(multiplier, soft-cap, what it is) to try: the named ones, then config values whose name
    looks like one (a logit or LM-head scale or multiplier, tried both ways; a soft-cap of the
    logits, not of attention, gates or routers), alone and together."""
    mults: list[tuple[float, str]] = [(1.0, "")]
    caps: list[tuple[float | None, str]] = [(None, "")]
    for name, v in _config_numbers(config).items():
        low = name.lower()
        scale = re.search(r"logit|lm_head", low) and re.search(r"scal|mult", low)
        if name in MULTIPLIER_NAMES or (scale and name not in DIVISOR_NAMES):
            mults.append((v, f"logits multiplied by config.{name}={v:g}"))
        if name in DIVISOR_NAMES or (scale and name not in MULTIPLIER_NAMES):
            mults.append((1.0 / v, f"logits divided by config.{name}={v:g}"))
        cap = re.search(r"soft_?cap|logit_cap", low) and not re.search(r"att|gate|rout", low)
        if v > 0 and (name in SOFTCAP_NAMES or cap):
            caps.append((v, f"logits soft-capped by config.{name}={v:g}"))
    return [
        (m, c, " and ".join(w for w in (mw, cw) if w) or "no logit multiplier or soft-cap")
        for (m, mw), (c, cw) in product(mults, caps)
    ]


def logit_post(config: Any, notes: list[str]) -> tuple[float | None, float]:
    """The soft-cap and the logit multiplier under the names the adapter knows (noted)."""
    numbers = _config_numbers(config)
    softcap = next((numbers[n] for n in SOFTCAP_NAMES if numbers.get(n, 0.0) > 0), None)
    notes += [f"logits soft-capped at {softcap:g}"] if softcap is not None else []
    multiplier = 1.0
    for n in [n for n in MULTIPLIER_NAMES if n in numbers]:
        multiplier *= numbers[n]
        notes.append(f"logits multiplied by config.{n}={numbers[n]:g}")
    for n in [n for n in DIVISOR_NAMES if numbers.get(n, 1.0) != 1.0]:
        multiplier /= numbers[n]
        notes.append(f"logits divided by config.{n}={numbers[n]:g}")
    return softcap, multiplier


def post_process(logits: torch.Tensor, multiplier: float, softcap: float | None) -> torch.Tensor:
    """The logit multiplier, then the soft-cap tanh(x / c) * c."""
    if multiplier != 1.0:
        logits = logits * multiplier
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
