"""Logit lens: decode every layer's residual stream at every position through the final norm
and unembedding, keeping only entropy, top-k and target statistics.

One forward pass per batch gives all hidden states; the intermediate rows are unembedded in
chunks sized by a memory budget, so a (layers x positions x vocabulary) array never exists.
The last row is the model's own logits (its last hidden state is already normed: norming it
again would be wrong). Before any inner row is decoded, the adapter's head must rebuild those
logits from the last block's output (`Adapter.check_head`), else the lens stops with an error.
An encoder-decoder's lens is its decoder's (`seq2seq.Seq2SeqLens`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from ...errors import TokenprobeError, text_list
from ...model import LoadedModel
from ...runner import map_batches, progress_disabled, token_budget_batches
from ...text import PreparedInput, Seq2SeqInput, prepare, token_texts
from ...tuned.lens import TunedLens, check_lens
from ..settings import with_options
from .decoders import Decoder, tuned_decoder
from .options import LensOptions
from .result import LensResult
from .run import DEFAULT_MEMORY_MB, CausalLens
from .seq2seq import Seq2SeqLens, check_options, prepare_source, target_side_ids

__all__ = ["DEFAULT_MEMORY_MB", "logit_lens"]


def _first_token(lm: LoadedModel, text: str, what: str, param: str, does: str) -> int:
    """The id of `text`'s first token; a warning when it has several (`does`: what the lens
    does with that first token)."""
    enc = (
        target_side_ids(lm, text)
        if lm.is_seq2seq
        else lm.tokenizer.encode(text, add_special_tokens=False)
    )
    if not enc:
        raise TokenprobeError(f"the {what} {text!r} (`{param}`) gives no token")
    if len(enc) > 1:
        first = token_texts(lm.tokenizer, enc[:1])[0]
        warnings.warn(
            f"{what} {text!r} is {len(enc)} tokens; the lens {does} its first token {first!r}",
            UserWarning,
            stacklevel=4,
        )
    return int(enc[0])


def _target_ids(lm: LoadedModel, targets: Sequence[str]) -> list[int]:
    ids = []
    for target in targets:
        if not target:
            raise TokenprobeError(
                "a target in `targets` is empty: give the token text, e.g. ' Canberra'"
            )
        ids.append(_first_token(lm, target, "target", "targets", "tracks"))
    return ids


def _foil_id(
    lm: LoadedModel, foil: str | None, targets: Sequence[str], tids: list[int]
) -> int | None:
    """The foil's token id, checked against the first target it is compared with."""
    if foil is None:
        return None
    if not foil:
        raise TokenprobeError("`foil` is empty: give the token text, e.g. ' Sydney'")
    if not targets:
        raise TokenprobeError(
            "`foil` needs a target to compare with: give `targets` too (the difference is "
            "logit(first target) - logit(foil))"
        )
    fid = _first_token(lm, foil, "foil", "foil", "compares")
    if fid == tids[0]:
        same = token_texts(lm.tokenizer, [fid])[0]
        raise TokenprobeError(
            f"`foil` {foil!r} is the same token ({same!r}) as the target {targets[0]!r} it is "
            "compared with: give a different foil"
        )
    return fid


@with_options(LensOptions)
def logit_lens(
    lm: LoadedModel,
    prompts: str | PreparedInput | Seq2SeqInput | Sequence[str | PreparedInput | Seq2SeqInput],
    *,
    options: LensOptions,
    progress: bool | None = None,
    decoder: Decoder | None = None,
) -> LensResult | list[LensResult]:
    """Logit lens of one prompt (returns a result) or many (returns a list, batched).

    `options` (or its settings as keyword arguments: see `LensOptions`): `memory_mb` bounds
    the float32 logits decoded at once (default 512 on the CPU, 2048 on a GPU, where fewer and
    larger kernels pay); `batch_tokens` bounds the padded tokens of one forward pass. `foil`
    adds the logit difference logit(first target) - logit(foil) of every cell, taken from the
    decoded logits (the "output" row: the model's own). `lens`: a tuned lens (a `tune-lens` or
    tuned-lens package folder, or a `TunedLens`) decodes every inner layer. `decoder` turns
    each layer's states into logits (default: the model's own final norm and unembedding, the
    logit lens proper; a tuned lens is another decoder).

    An encoder-decoder model: each prompt is the source its encoder reads; the decoder reads
    its start token, the token forced after it (`target_lang`) and `decoder_text`, and every
    decoder layer at every decoder position is decoded through the decoder's head (the rows
    and positions are the decoder's; encoder layers predict no next token and are left out).
    It takes no tuned `lens`, `chat` or `dummy` (one line says so).
    """
    o = options
    single = isinstance(prompts, (str, PreparedInput, Seq2SeqInput))
    items: list[Any] = [prompts] if single else list(prompts)  # type: ignore[arg-type]
    if not items:
        raise TokenprobeError("no prompts given")
    check_options(lm, o)
    targets = text_list(o.targets, "targets") or []
    inputs = [_input(lm, p, o) for p in items]
    about = None
    if o.lens is not None:
        decoder, about = tuned_decoder(lm, o.lens, decoder)
        if isinstance(o.lens, TunedLens):  # a folder's lens was checked as it was read
            check_lens(o.lens, lm, "`lens` (in memory)")
    tids = _target_ids(lm, targets)
    ids = (tids, _foil_id(lm, o.foil, targets, tids))
    run: CausalLens | Seq2SeqLens = (
        Seq2SeqLens(lm, inputs, ids, o.top_k, o.memory_mb, decoder)
        if lm.is_seq2seq
        else CausalLens(lm, inputs, ids, o.top_k, o.memory_mb, decoder)
    )
    out = _decode_all(run, inputs, targets, o, progress)
    for r in out:
        r.meta["output_check"] = run.check
        if about is not None:
            r.meta["analysis"], r.meta["lens"] = "tuned lens", about
    return out[0] if single else out


def _input(lm: LoadedModel, given: Any, o: LensOptions) -> Any:
    """A prompt as the lens reads it (an encoder-decoder's: the source, and the decoder ids);
    an input prepared already for the model's kind passes as it is."""
    kind = Seq2SeqInput if lm.is_seq2seq else PreparedInput
    if isinstance(given, kind):
        return given
    if isinstance(given, (PreparedInput, Seq2SeqInput)):
        ours = "an encoder-decoder" if lm.is_seq2seq else "a causal LM"
        raise TokenprobeError(
            f"a {type(given).__name__} is not an input of {ours} ({lm.name}): give the prompt "
            f"as text, or a {kind.__name__}"
        )
    return prepare_source(lm, given, o) if lm.is_seq2seq else _prepare(lm, given, o)


def _prepare(lm: LoadedModel, prompt: str, o: LensOptions) -> PreparedInput:
    """A prompt as the lens reads it: rendered (chat), tokenised, its dummies inserted."""
    return prepare(
        lm,
        prompt,
        chat=o.chat,
        system=o.system,
        dummy=o.dummy,
        dummy_token=o.dummy_token,
        dummy_after=o.dummy_after,
        dummy_before=o.dummy_before,
    )


def _decode_all(
    run: CausalLens | Seq2SeqLens,
    inputs: list[Any],
    targets: list[str],
    o: LensOptions,
    progress: bool | None,
) -> list[LensResult]:
    """Every input's result, in token-budget batches; the progress bar is forced on/off, or by
    default shown on a terminal when there is more than one batch."""
    out: list[LensResult | None] = [None] * len(inputs)
    lengths = [run.length(x) for x in inputs]
    disable = progress_disabled(progress, len(token_budget_batches(lengths, o.batch_tokens)))
    kept = {"top_k": run.top_k, "batch_tokens": o.batch_tokens}
    with tqdm(total=len(inputs), desc="logit lens", unit="prompt", disable=disable) as bar:
        for sub, stats_list in map_batches(lengths, o.batch_tokens, run.run):
            for i, st in zip(sub, stats_list, strict=True):
                out[i] = run.result(inputs[i], st, list(targets), o.foil, kept)
            bar.update(len(sub))
    return [r for r in out if r is not None]
