"""`features`: a sparse dictionary's latents on one prompt. One forward pass records the state
the dictionary reads (and, for a transcoder, the one it writes); the latents, the reconstruction
error per position and, with a target, each kept feature's activation x gradient come from it;
the reconstruction's effect on the model and each kept feature's exact removal are forward
passes of their own (`effects`)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import TokenprobeError, warn
from ...model import LoadedModel, weight_of
from ...provenance import provenance
from ...sae import Dictionary, SaeSite, load_sae
from ...sae.formats import BUILTIN, builtin_folder
from ...sae.hooks import at_site, check_fits, site_module
from ...sae.readers import read_json
from ...text import PreparedInput, first_token, prepare
from ...tuned.lens import unembed_hash
from ..settings import with_options
from .effects import Scorer, ablations, run_edits, splice_kl, splices
from .options import FeaturesOptions
from .result import FeaturesResult, Kept


@with_options(FeaturesOptions)
def features(
    lm: LoadedModel,
    prompt: str | PreparedInput,
    *,
    options: FeaturesOptions,
    dictionary: Dictionary | None = None,
    offline: bool = False,
) -> FeaturesResult:
    """The dictionary's active features at every position of `prompt` (the `top` most active
    kept, and with `target` those with the largest activation x gradient), the reconstruction
    error per position and, with `target`, each kept feature's effect on the target's
    log-probability (or target - foil). `dictionary`: one already loaded (else `options.sae` is
    loaded). `options` (or its settings as keyword arguments): see `FeaturesOptions`."""
    o = options
    adapter = lm.require_adapter()
    sae = dictionary if dictionary is not None else _load(o, offline, lm)
    check_fits(adapter, sae)
    sae = sae.to(lm.device)
    given = prompt if isinstance(prompt, PreparedInput) else prepare(lm, prompt, **o.prompting)
    ids = torch.tensor([given.input_ids], device=lm.device)
    scorer = _scorer(lm, o)
    x_in, x_out, grad, logits = _record(lm, sae, ids, scorer)
    skip = skip_first(o, sae, ids.shape[1])
    acts, recon = _encoded(sae, x_in, x_out, skip)
    attribution = None
    if grad is not None:  # d score / d activation = the decoder row . d score / d state
        attribution = acts * ((grad / sae.input_scale) @ sae.w_dec.T)
    kept = _keep(acts, attribution, o.top)
    kl, spliced = splice_kl(lm, sae, ids, recon, logits, scorer)
    per_position = {"l0": (acts > 0).sum(-1).double().cpu().numpy(), **_errors(x_out, recon)}
    per_position["kl"], ablation, base = kl, None, None
    if scorer is not None:
        base, per_position["splice_effect"], ablation = _effects(
            lm, sae, ids, (acts, kept, x_in, x_out, recon), scorer, o, skip
        )
    for name in ("l0", "error_ratio", "splice_effect"):  # not read at the skipped positions
        per_position.get(name, np.empty(0))[:skip] = np.nan
    meta = {
        "analysis": "sparse features",
        **provenance(lm, o).meta(),
        "prompt": given.prompt,
        "text": given.text,
        "tokens": given.tokens,
        "input_ids": given.input_ids,
        "dictionary": _describe(adapter, sae),
        "score": None if scorer is None else scorer.describe(),
        "base_score": base,
        "spliced": spliced,
        "skip_first": skip,
        "rows": ROWS,
    }
    return FeaturesResult(
        tokens=given.tokens,
        kept=Kept.build(kept, acts, attribution, ablation),
        positions=per_position,
        meta=meta,
    )


ROWS = (
    "features.parquet: one row per (position, kept feature) where it is active: activation, "
    "rank (1 = the position's most active), top (among the position's kept), attribution "
    "(activation x gradient of the score), ablation (score - score with the feature removed at "
    "that position; NaN where not run); features_positions.parquet: per position l0, state "
    "norm, error_ratio (|state - reconstruction| / |state|), kl (next-token KL when every "
    "position is reconstructed) and splice_effect (score change when only that position is); "
    "the first skip_first positions (meta.json) are left out: no features, NaN l0, error_ratio "
    "and splice_effect"
)


def _effects(
    lm: LoadedModel,
    sae: Dictionary,
    ids: torch.Tensor,
    found: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    scorer: Scorer,
    o: FeaturesOptions,
    skip: int,
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """The unedited score (through the same batched path as the edits), each position's
    splice effect (from position `skip` on), and each kept feature's ablation effect (None with
    `ablate` off)."""
    acts, kept, inputs, states, recon = found
    nothing = [(0, torch.zeros_like(states[0]))]
    base = float(run_edits(lm, sae, ids, nothing, scorer, o.batch_tokens)[0])
    splice = splices(lm, sae, ids, states, recon, scorer, base, o.batch_tokens, skip)
    ablation = None
    if o.ablate:
        ablation = ablations(lm, sae, ids, (acts, kept, inputs), scorer, base, o.batch_tokens)
    return base, splice, ablation


def _encoded(
    sae: Dictionary, x_in: torch.Tensor, x_out: torch.Tensor, skip: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latents and the reconstruction; the first `skip` positions (not trained on) have
    no latents and keep their own state as the reconstruction."""
    with torch.no_grad():
        acts = sae.encode(x_in)
        recon = sae.decode(acts, x_in)
        acts[:skip] = 0
        recon[:skip] = x_out[:skip]
    return acts, recon


def skip_first(o: FeaturesOptions, sae: Dictionary, n: int | None = None) -> int:
    """The leading positions left out: `o.skip_first`, else the dictionary's own (as trained);
    at most `n - 1` for one text of `n` tokens, so that its last position is read."""
    skip = o.skip_first if o.skip_first is not None else sae.trained_skip_first
    return skip if n is None else min(skip, max(n - 1, 0))


def _errors(states: torch.Tensor, recon: torch.Tensor) -> dict[str, np.ndarray]:
    """Per position, the state's norm and |state - reconstruction| / |state|."""
    norm = states.norm(dim=-1)
    error = (states - recon).norm(dim=-1) / norm.clamp_min(1e-30)
    return {"norm": norm.double().cpu().numpy(), "error_ratio": error.double().cpu().numpy()}


def _load(o: FeaturesOptions, offline: bool, lm: LoadedModel) -> Dictionary:
    if o.sae is None:
        raise TokenprobeError(
            "`sae` is required: give --sae DIR (a SAELens, sparsify or Gemma Scope folder) or a "
            "hub id"
        )
    site = SaeSite.parse(o.sae_site) if o.sae_site is not None else None
    sae = load_sae(o.sae, hookpoint=o.hookpoint, site=site, offline=offline)
    if o.sae == BUILTIN and not Path(BUILTIN).exists():
        _check_builtin(lm)
    return sae


def _check_builtin(lm: LoadedModel) -> None:
    """The built-in dictionary on another model than the one it was trained on: refused where
    the vocabulary differs, a warning where only the weights do (the same model's original
    float weights instead of the built-in model's 4-bit ones still fit)."""
    cfg = read_json(builtin_folder() / "cfg.json")
    trained = cfg.get("tokenprobe_training", {})
    vocab = lm.loaded_vocab or int(weight_of(lm.require_adapter().unembed).shape[0])
    if trained.get("vocab_size") not in (None, vocab):
        raise TokenprobeError(
            f"--sae builtin was trained on the built-in model ({cfg.get('model_name', 'smollm2')}), "
            f"not on {lm.name} (vocabulary {vocab}, not {trained['vocab_size']}): pass "
            "--sae DIR with a dictionary trained on this model (train-sae makes one)"
        )
    saved = trained.get("unembed_hash")
    if saved and saved != unembed_hash(lm.require_adapter(), lm.loaded_vocab):
        warn(
            f"--sae builtin was trained on the built-in model's weights, and {lm.name}'s "
            "unembedding differs (same shape): its features may mislead"
        )


def _scorer(lm: LoadedModel, o: FeaturesOptions) -> Scorer | None:
    if o.target is None:
        return None
    target = first_token(lm.tokenizer, o.target, "target", "features scores")
    foil = None if o.foil is None else first_token(lm.tokenizer, o.foil, "foil", "features scores")
    return Scorer(target, foil, o.target, o.foil)


def _record(
    lm: LoadedModel, sae: Dictionary, ids: torch.Tensor, scorer: Scorer | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One forward pass: the state the dictionary reads and the one it writes (the same for an
    autoencoder), the score's gradient with respect to the written state (with a scorer), and
    every position's logits (positions, vocabulary) in float32."""
    adapter = lm.require_adapter()
    store: dict[str, torch.Tensor] = {}
    n = ids.shape[1]

    def read(x: torch.Tensor) -> torch.Tensor:
        store["in"] = x.detach()[0].float()
        return x

    def write(x: torch.Tensor) -> torch.Tensor:
        if not sae.transcoder:
            store["in"] = x.detach()[0].float()
        store["out"] = x.detach()[0].float()
        if scorer is None:
            return x
        leaf = x.detach().requires_grad_(True)
        store["leaf"] = leaf
        return leaf

    with torch.enable_grad() if scorer is not None else torch.no_grad():
        with _hooks(adapter, sae, read, write, n):
            out = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        logits = out.logits[0].float()
        grad = None
        if scorer is not None:
            score = scorer.score(logits[None, -1])[0]
            (g,) = torch.autograd.grad(score, store["leaf"])
            grad = g[0].float()
    return store["in"], store["out"], grad, logits.detach()


def _hooks(adapter: Any, sae: Dictionary, read: Any, write: Any, n: int) -> ExitStack:
    """The write site's hook, and for a transcoder the read site's too."""
    stack = ExitStack()
    if sae.transcoder:
        stack.enter_context(at_site(adapter, sae.site, read, n))
    stack.enter_context(at_site(adapter, sae.writes, write, n))
    return stack


def _keep(acts: torch.Tensor, attribution: torch.Tensor | None, top: int) -> torch.Tensor:
    """(positions, d_sae) mask of the kept features: the `top` most active at each position,
    and the `top` with the largest |activation x gradient| (active ones only)."""
    k = min(top, acts.shape[-1])
    mask = torch.zeros_like(acts, dtype=torch.bool)
    mask.scatter_(-1, acts.topk(k, dim=-1).indices, True)
    if attribution is not None:
        mask.scatter_(-1, attribution.abs().topk(k, dim=-1).indices, True)
    return mask & (acts > 0)


def _describe(adapter: Any, sae: Dictionary) -> dict[str, Any]:
    """For meta.json: what the dictionary is and where it reads and writes in this model."""
    return {
        "format": sae.format,
        "path": sae.path,
        "hook": sae.hook,
        "kind": "transcoder" if sae.transcoder else "sparse autoencoder",
        "activation": sae.activation,
        "k": sae.k,
        "d_in": sae.d_in,
        "latents": sae.d_sae,
        "reads": str(sae.site),
        "reads_module": site_module(adapter, sae.site)[1],
        "writes": str(sae.writes),
        "writes_module": site_module(adapter, sae.writes)[1],
    }
