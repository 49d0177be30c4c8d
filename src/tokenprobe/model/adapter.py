"""Where a model keeps its residual stream and how it turns it into logits, found from the
model's own Hugging Face conventions (embedding accessors, the block list, the norm beside it,
the config's logit multiplier and soft-cap) rather than from a table of model classes, and
checked against the model's own logits (`Adapter.check_head`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from ..errors import TokenprobeError
from .heads import head_candidates, logit_post, post_process


def text_config(config: Any) -> Any:
    """The language-model part of a (possibly multimodal) config."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def weight_of(module: nn.Module) -> torch.Tensor:
    """The `weight` of an embedding, linear map or norm: `nn.Module` types any attribute it
    does not declare as `Tensor | Module`, and these modules' weights are parameters."""
    return cast(torch.Tensor, module.weight)


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _block_output(output: Any) -> torch.Tensor:
    """A block's residual-stream output (older blocks return a tuple with it first)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class StreamMerge:
    """The state a model decodes, from blocks that carry several streams: Gemma 3n's AltUp
    blocks pass (streams, batch, positions, width) on, and the model turns the last block's
    streams into one state before its final norm: stream 0 as it is, each other stream i
    through `altup_unembed_projections[i - 1]`, rescaled to stream 0's root-mean-square
    magnitude at each position, then the mean of all of them (Gemma3nTextModel.forward, the
    same operations in the same order, so the last block's merge is bitwise the model's)."""

    def __init__(self, projections: nn.ModuleList, path: str) -> None:
        self.projections, self.path = projections, path
        self.streams = len(projections) + 1

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        first = state[0]
        target = torch.mean(first**2, dim=-1, keepdim=True) ** 0.5
        parts = [first]
        for i, projection in enumerate(self.projections, start=1):
            x = projection(state[i]).to(dtype=first.dtype, device=target.device)
            magnitude = torch.sqrt(torch.mean(x**2, dim=-1, keepdim=True).clamp(min=1e-5))
            parts.append(x * target / magnitude)
        return torch.mean(torch.stack(parts), dim=0)


@dataclass
class Adapter:
    """Where the residual stream lives in a model and how the model turns it into logits.

    The residual stream is read with hooks on the blocks themselves (the input of the first
    block, then each block's output), not from `output_hidden_states`, whose layout differs
    between families: Mamba's has no embedding entry, and its last entry is usually normed.

    The residual stream of a layer is the state the model's own decoding path would turn into
    logits: the block's output itself in most families; for blocks that carry several streams
    (Gemma 3n's AltUp, (4, batch, positions, width)), their merge as the model merges the last
    block's streams before its final norm (`merge`, a `StreamMerge`). So every layer's state is
    (batch, positions, width) and `logits` of the last one is the model's own logits.
    """

    embed: nn.Module
    blocks: nn.ModuleList
    blocks_path: str
    final_norm: nn.Module  # nn.Identity() for models without one (OPT-350m's post-norm blocks)
    final_norm_path: str
    unembed: nn.Module
    softcap: float | None = None
    logit_multiplier: float = 1.0
    projection: nn.Module | None = None  # applied after the final norm (OPT's project_out)
    projection_path: str | None = None
    notes: list[str] = field(default_factory=list)
    merge: StreamMerge | None = None  # blocks with several streams: the state the model decodes
    config: Any = field(default=None, repr=False)  # the text config, for `check_head`

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        """The residual stream's width (the blocks' width; the embedding's where none says)."""
        return _state_width(self.blocks) or int(weight_of(self.embed).shape[-1])

    @property
    def streams(self) -> int:
        """How many streams the blocks carry (1 but for Gemma 3n's AltUp blocks)."""
        return self.merge.streams if self.merge is not None else 1

    def decoded(self, state: torch.Tensor) -> torch.Tensor:
        """The residual stream the model would decode from a block's input or output `state`:
        the state itself, or the merge of a multi-stream state."""
        return self.merge(state) if self.merge is not None else state

    def raw_logits(self, hidden: torch.Tensor, *, apply_norm: bool = True) -> torch.Tensor:
        """Final norm, projection and unembedding of `hidden`, before any multiplier or
        soft-cap; float32 out."""
        h = self.final_norm(hidden) if apply_norm else hidden
        if self.projection is not None and h.shape[-1] == self.projection.in_features:
            h = self.projection(h)
        return self.unembed(h).float()

    def logits(self, hidden: torch.Tensor, *, apply_norm: bool = True) -> torch.Tensor:
        """Decode residual-stream states the way the model decodes its last one; float32 out.

        `apply_norm=False` is for states the model has already normed. The projection applies
        to states of the blocks' width only, so a state the model already projected is not
        projected twice.
        """
        raw = self.raw_logits(hidden, apply_norm=apply_norm)
        return post_process(raw, self.logit_multiplier, self.softcap)

    def check_head(
        self, hidden: torch.Tensor, logits: torch.Tensor, *, tol: float, name: str = "the model"
    ) -> str:
        """Does this head rebuild the model's own `logits` from `hidden` (the last layer's
        residual stream at the same positions)? "ok" if it does as found; else the config's
        logit multipliers and soft-caps are tried, and the one that rebuilds them (largest
        error at most `tol` x max(1, largest logit)) is kept here and named ("ok: ..."). Where
        none does, a TokenprobeError: inner layers decoded by this head would be wrong."""
        ref = logits.float().to(hidden.device)
        limit = tol * max(1.0, float(ref.abs().max()))
        with torch.no_grad():
            raw = self.raw_logits(hidden.detach())

            def error(mult: float, cap: float | None) -> float:
                return float((post_process(raw, mult, cap) - ref).abs().max())

            first = error(self.logit_multiplier, self.softcap)
            if first <= limit:
                return "ok"
            tried = head_candidates(self.config)
            errors = [error(m, c) for m, c, _ in tried]
            best = min(range(len(tried)), key=errors.__getitem__)
            if errors[best] <= limit:
                self.logit_multiplier, self.softcap, what = tried[best]
                self.notes.append(f"{what} (found by rebuilding the model's logits)")
                return f"ok: {what} (found by rebuilding the model's logits)"
            scale = float((raw * ref).sum() / (raw * raw).sum().clamp_min(1e-30))
            fits = math.isfinite(scale) and error(scale, None) <= limit
        hint = f"; the model's logits are {scale:.6g} x the rebuilt ones" if fits else ""
        parts = (self.final_norm_path or "no final norm", self.projection_path, "unembedding")
        raise TokenprobeError(
            f"{name}: its head as found ({' -> '.join(p for p in parts if p)}, x "
            f"{self.logit_multiplier:g}, soft-cap {self.softcap or 'none'}) does not rebuild the "
            f"model's own logits from its last layer (largest error {first:.3g}, tolerance "
            f"{limit:.2g}), nor does any logit multiplier or soft-cap in its config (best "
            f"{errors[best]:.3g}){hint}: inner layers cannot be decoded as the model decodes"
        )

    @contextmanager
    def record(self, last_only: bool = False) -> Iterator[list[torch.Tensor]]:
        """Collect the residual stream of the forward passes run inside the block: layer 0 =
        the input of the first block (embeddings, with whatever the model adds or scales),
        layer i = the output of block i; a multi-stream state merged as the model decodes it
        (`decoded`). `last_only` keeps only the last block's output."""
        states: list[torch.Tensor] = []

        device = weight_of(self.embed).device  # where states of a model spread over devices meet

        def first_input(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            states.append(self.decoded(args[0] if args else kwargs["hidden_states"]).to(device))

        def output(_m: nn.Module, _args: tuple, out: Any) -> None:
            states.append(self.decoded(_block_output(out)).to(device))

        blocks = list(self.blocks)
        handles = [b.register_forward_hook(output) for b in (blocks[-1:] if last_only else blocks)]
        if not last_only:
            handles.append(blocks[0].register_forward_pre_hook(first_input, with_kwargs=True))
        try:
            yield states
        finally:
            for h in handles:
                h.remove()

    @classmethod
    def from_model(cls, model: nn.Module) -> Adapter:
        """Find embeddings, blocks, final norm, output projection, unembedding and logit
        post-processing."""
        name = type(model).__name__
        config = text_config(getattr(model, "config", None))
        embed, unembed = _embeddings(model, name)
        blocks_path, blocks = _find_blocks(model, config, name)
        notes = []
        norm_path, final_norm = _final_norm(model, blocks_path, blocks, embed)
        if final_norm is None:
            if getattr(config, "do_layer_norm_before", True) is not False:
                raise TokenprobeError(
                    f"cannot find the final norm of {name}: no norm module after its blocks ({blocks_path})"
                )
            final_norm, norm_path = nn.Identity(), ""
            notes.append("no final norm: the blocks norm their own outputs (post-norm)")
        proj_path, projection = _output_projection(model, blocks_path, blocks, unembed)
        if projection is not None:
            notes.append(f"states projected by {proj_path} before the unembedding")

        softcap, multiplier = logit_post(config, notes)
        merge = _stream_merge(model, blocks_path, config)
        if merge is not None:
            notes.append(
                f"blocks carry {merge.streams} streams; each layer's state is their merge as the "
                f"model decodes its last one ({merge.path})"
            )
        return cls(
            embed=embed,
            blocks=blocks,
            blocks_path=blocks_path,
            final_norm=final_norm,
            final_norm_path=norm_path,
            unembed=unembed,
            softcap=softcap,
            logit_multiplier=multiplier,
            projection=projection,
            projection_path=proj_path,
            notes=notes,
            merge=merge,
            config=config,
        )


def _embeddings(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """The input embeddings and the output embedding (LM head), from the model's own
    accessors; a model without either is one clear error."""
    get_in = getattr(model, "get_input_embeddings", None)
    embed = get_in() if callable(get_in) else None
    if embed is None:
        raise TokenprobeError(
            f"cannot find the input embeddings of {name}: it has no get_input_embeddings()"
        )
    get_out = getattr(model, "get_output_embeddings", None)
    unembed = get_out() if callable(get_out) else None
    if unembed is None:
        raise TokenprobeError(
            f"{name} has no output embedding (LM head): the logit lens needs a causal language "
            "model, load it as AutoModelForCausalLM"
        )
    return embed, unembed


def _find_blocks(model: nn.Module, config: Any, name: str) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the shallowest module list of `num_hidden_layers` modules (without
    that config entry, of one module type, the longest of equally shallow ones)."""
    n_layers = getattr(config, "num_hidden_layers", None)
    lists = [
        (p, m) for p, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0
    ]
    if n_layers is not None:
        matches = [(p, m) for p, m in lists if len(m) == n_layers]
    else:
        matches = [(p, m) for p, m in lists if len({type(c) for c in m}) == 1]
        matches.sort(key=lambda pm: -len(pm[1]))
    if not matches:
        raise TokenprobeError(
            f"cannot find the transformer blocks of {name}: no module list with "
            f"{n_layers if n_layers is not None else 'uniform'} blocks"
        )
    return min(matches, key=lambda pm: pm[0].count("."))


def _stream_merge(model: nn.Module, blocks_path: str, config: Any) -> StreamMerge | None:
    """Gemma 3n's merge of its blocks' streams: `altup_unembed_projections` beside the blocks,
    one per stream but the first (`config.altup_num_inputs` streams)."""
    parent_path = blocks_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    projections = getattr(parent, "altup_unembed_projections", None)
    streams = getattr(config, "altup_num_inputs", None)
    if not isinstance(projections, nn.ModuleList) or streams != len(projections) + 1:
        return None
    path = (
        f"{parent_path}.altup_unembed_projections" if parent_path else "altup_unembed_projections"
    )
    return StreamMerge(projections, path)


def _final_norm(
    model: nn.Module, blocks_path: str, blocks: nn.ModuleList, embed: nn.Module
) -> tuple[str, nn.Module | None]:
    """The norm module beside the blocks and registered after them, else the last norm outside
    the blocks; None when the model has none."""
    parent_path = blocks_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    seen_blocks = False
    after: list[tuple[str, nn.Module]] = []
    for child_name, child in parent.named_children():
        if child is blocks:
            seen_blocks = True
        elif seen_blocks and _is_norm(child):
            after.append((child_name, child))
    if not after:
        outside = [
            (p, m)
            for p, m in model.named_modules()
            if _is_norm(m) and not p.startswith(blocks_path + ".") and m is not embed
        ]
        after = outside[-1:]
        parent_path = ""
    if not after:
        return "", None
    norm_name, final_norm = after[0]
    return (f"{parent_path}.{norm_name}" if parent_path else norm_name), final_norm


def _output_projection(
    model: nn.Module, blocks_path: str, blocks: nn.ModuleList, unembed: nn.Module
) -> tuple[str | None, nn.Module | None]:
    """A linear map outside the blocks from their width to the unembedding's narrower width
    (OPT's `project_out` when `word_embed_proj_dim` differs from the hidden size)."""
    width = _state_width(blocks)
    unembed_in = getattr(unembed, "in_features", None)
    if width is None or unembed_in is None or unembed_in == width:
        return None, None
    for path, module in model.named_modules():
        if (
            isinstance(module, nn.Linear)
            and module is not unembed
            and not path.startswith(blocks_path + ".")
            and module.in_features == width
            and module.out_features == unembed_in
        ):
            return path, module
    return None, None


def _state_width(blocks: nn.ModuleList) -> int | None:
    """The residual stream's width: the widest of the block's own norms (its direct children;
    a norm inside a mixer can be wider: Mamba 2's gated norm), else of the norms inside it
    (per-head query/key norms are narrower), else the input width of its first linear map."""
    for found in (blocks[0].children(), blocks[0].modules()):
        widths = [
            int(weight.shape[0])
            for m in found
            if _is_norm(m)
            and isinstance(weight := getattr(m, "weight", None), torch.Tensor)
            and weight.dim() == 1
        ]
        if widths:
            return max(widths)
    for module in blocks[0].modules():
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    return None
