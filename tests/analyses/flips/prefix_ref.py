"""Shared by the prefix-continuation tests: texts long enough that continuing pays, each
text's perturbed copies, and the reference (one full forward of each whole prompt)."""

from __future__ import annotations

import numpy as np
import torch

from tokenprobe import PromptedClassifier
from tokenprobe.analyses.flips.words import perturb, replacement_ids

WORDS = ["good", "bad"]
TEMPLATE = "Review: {text}\nVerdict:"
TEXTS = [
    "the hammer was fine and the saw was sharp, but the drill broke on the first day",
    "a wrench, a saw and pliers came in a box that was too small for all of them",
    "the tape measure works and the level is true; the clamps slip a little",
]


def copies(clf: PromptedClassifier, perturbation: str) -> tuple[list[list[int]], list[int]]:
    """Each text's ids followed by its perturbed copies (each word deleted or replaced), with
    the index of each one's unperturbed text."""
    repl = replacement_ids(clf.lm, perturbation, "___")
    ids: list[list[int]] = []
    bases: list[int] = []
    for text in TEXTS:
        inp = clf.encode(text)
        base = len(ids)
        ids.append(inp.ids)
        ids.extend(perturb(inp, w, perturbation, repl) for w in range(len(inp.words)))
        bases.extend([base] * (len(inp.words) + 1))
    return ids, bases


def whole(clf: PromptedClassifier, ids: list[list[int]]) -> np.ndarray:
    """(texts, labels) verbaliser logits of each whole prompt, one full forward each, no cache."""
    out = []
    for seq in ids:
        full = torch.tensor([clf.prefix_ids + seq + clf.suffix_ids], device=clf.lm.device)
        with torch.no_grad():
            logits = clf.lm.model(input_ids=full, use_cache=False).logits[0, -1].float()
        out.append(logits[clf.verbaliser_ids].cpu().numpy())
    return np.stack(out)
