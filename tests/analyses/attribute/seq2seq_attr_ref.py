"""By-hand references for encoder-decoder attribution, from the model's own forward: one
forward per (feature, target token) cell for ablation, autograd of the model's own
log-probability with respect to each side's embedding output for the gradient methods."""

from __future__ import annotations

import numpy as np
import torch

import tokenprobe

SOURCE = "The quick brown fox jumps over the lazy dog."
TARGET = "The capital is Canberra"


def run(lm, **settings):
    settings.setdefault("target", TARGET)
    return tokenprobe.attribute(lm, settings.pop("source", SOURCE), progress=False, **settings)


def own_logprob(lm, source: list[int], prefix: list[int], token: int) -> float:
    """log p(token | source, decoder prefix), the model's own forward, one input alone."""
    with torch.no_grad():
        logits = lm.model(
            input_ids=torch.tensor([source]),
            decoder_input_ids=torch.tensor([prefix]),
            use_cache=False,
        ).logits
    return float(torch.log_softmax(logits[0, -1].double(), dim=-1)[token])


def ablation_by_hand(lm, res) -> np.ndarray:
    """(rows, features): f(x) - f(x with the feature's one token removed), one forward per
    cell; a row's prefix never sees decoder inputs at or after its own position."""
    meta = res.meta
    source, decoder, f = meta["prompt_ids"], meta["decoder_ids"], meta["forced"]
    out = np.zeros((len(res.rows), len(res.features)))
    for j in range(len(res.rows)):
        token, prefix = decoder[f + j], decoder[: f + j]
        full = own_logprob(lm, source, prefix, token)
        for c, feat in enumerate(res.features):
            (p,) = feat["positions"]
            if feat["side"] == "source":
                src = source[:p] + source[p + 1 :]
                out[j, c] = full - own_logprob(
                    lm, src or [lm.tokenizer.pad_token_id], prefix, token
                )
            elif p < f + j:
                pre = prefix[:p] + prefix[p + 1 :]
                out[j, c] = full - own_logprob(
                    lm, source, pre or [lm.tokenizer.pad_token_id], token
                )
    return out


def side_scale(stack, config) -> float:
    """What the stack multiplies its embedding module's output by (Marian, FSMT: embed_scale;
    T5Gemma: sqrt(width)), as the model's code does."""
    scale = getattr(stack, "embed_scale", None)
    if isinstance(scale, (int, float, torch.Tensor)):
        return float(scale)
    return float(config.encoder.hidden_size) ** 0.5 if config.model_type == "t5gemma" else 1.0


def grads_by_hand(lm, res) -> tuple[np.ndarray, np.ndarray]:
    """(rows, n + L) saliency and input x gradient: autograd of the model's own target
    log-probability (from its logits) with respect to each side's embedding output, kept with
    `retain_grad`; saliency is with respect to what the side embeds (output x its scale)."""
    meta, model = res.meta, lm.model
    source, decoder, f = meta["prompt_ids"], meta["decoder_ids"], meta["forced"]
    n, L = len(source), len(decoder) - 1
    stacks = (model.get_encoder(), model.get_decoder())
    sal, ixg = np.zeros((len(res.rows), n + L)), np.zeros((len(res.rows), n + L))
    for j in range(len(res.rows)):
        seen: dict[int, torch.Tensor] = {}

        def keep(module, _a, out, seen=seen):
            if id(module) not in seen:  # LED embeds its padding to the window after the ids
                out.retain_grad()
                seen[id(module)] = out

        handles = []
        for stack in stacks:
            handles.append(stack.embed_tokens.register_forward_hook(keep))
        try:
            logits = model(
                input_ids=torch.tensor([source]),
                decoder_input_ids=torch.tensor([decoder[:-1]]),
                use_cache=False,
            ).logits
        finally:
            for h in handles:
                h.remove()
        logp = torch.log_softmax(logits[0, f + j - 1].float(), dim=-1)[decoder[f + j]]
        logp.backward()
        outs = [seen[id(stack.embed_tokens)] for stack in stacks]
        for stack, out, lo, width in zip(stacks, outs, (0, n), (n, L), strict=True):
            g, e = out.grad[0, :width].double(), out[0, :width].detach().double()
            s = side_scale(stack, model.config)
            sal[j, lo : lo + width] = (g / s).abs().sum(dim=-1).numpy()
            ixg[j, lo : lo + width] = (g * e).sum(dim=-1).numpy()
        model.zero_grad(set_to_none=True)
    return sal, ixg


def score_with_ids(lm, source: list[int], decoder_in: list[int], res) -> np.ndarray:
    """(rows,) teacher-forced log-probabilities of the result's target tokens read where the
    decoder inputs `decoder_in` (same length as the real ones) predict them."""
    meta = res.meta
    f, decoder = meta["forced"], meta["decoder_ids"]
    with torch.no_grad():
        logits = lm.model(
            input_ids=torch.tensor([source]),
            decoder_input_ids=torch.tensor([decoder_in]),
            use_cache=False,
        ).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return np.array([float(logp[f + j - 1, decoder[f + j]]) for j in range(len(res.rows))])


def score_at_baseline(lm, res, token: int) -> np.ndarray:
    """(rows,) the same scores with every input token's embedding row made `token`'s, on a
    copy of the model: the ids (and what the model computes from them: M2M100's and FSMT's
    positions skip their pad id) stay the real ones, as integrated gradients' baseline."""
    import copy

    model = copy.deepcopy(lm.model)
    meta = res.meta
    with torch.no_grad():
        sides = (
            (model.get_encoder(), meta["prompt_ids"]),
            (model.get_decoder(), meta["decoder_ids"]),
        )
        for stack, ids in sides:
            # a copy of its own: the head (often tied to the embeddings) keeps the real rows
            weight = stack.embed_tokens.weight.detach().clone()
            weight[sorted(set(ids))] = weight[token].clone()
            stack.embed_tokens.weight = torch.nn.Parameter(weight)
    copied = type("Copied", (), {"model": model})()
    return score_with_ids(copied, meta["prompt_ids"], meta["decoder_ids"][:-1], res)
