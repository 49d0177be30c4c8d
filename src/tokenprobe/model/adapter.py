"""Where a model keeps its residual stream and how it turns it into logits, found from the
model's own Hugging Face conventions (embedding accessors, the block list, the norm beside it,
the config's soft-cap) rather than from a table of model classes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TokenprobeError


def text_config(config: Any) -> Any:
    """The language-model part of a (possibly multimodal) config."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _block_output(output: Any) -> torch.Tensor:
    """A block's residual-stream output (older blocks return a tuple with it first)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class Adapter:
    """Where the residual stream lives in a model and how the model turns it into logits.

    The residual stream is read with hooks on the blocks themselves (the input of the first
    block, then each block's output), not from `output_hidden_states`, whose layout differs
    between families: Mamba's has no embedding entry, and its last entry is usually normed.
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

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def logits(self, hidden: torch.Tensor, *, apply_norm: bool = True) -> torch.Tensor:
        """Decode residual-stream states the way the model decodes its last one; float32 out.

        `apply_norm=False` is for states the model has already normed. The projection applies
        to states of the blocks' width only, so a state the model already projected is not
        projected twice.
        """
        h = self.final_norm(hidden) if apply_norm else hidden
        if self.projection is not None and h.shape[-1] == self.projection.in_features:
            h = self.projection(h)
        logits = self.unembed(h).float()
        if self.logit_multiplier != 1.0:
            logits = logits * self.logit_multiplier
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @contextmanager
    def record(self, last_only: bool = False) -> Iterator[list[torch.Tensor]]:
        """Collect the residual stream of the forward passes run inside the block: layer 0 =
        the input of the first block (embeddings, with whatever the model adds or scales),
        layer i = the output of block i. `last_only` keeps only the last block's output."""
        states: list[torch.Tensor] = []

        device = self.embed.weight.device  # where states of a model spread over devices meet

        def first_input(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            states.append((args[0] if args else kwargs["hidden_states"]).to(device))

        def output(_m: nn.Module, _args: tuple, out: Any) -> None:
            states.append(_block_output(out).to(device))

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
        blocks_path, blocks = min(matches, key=lambda pm: pm[0].count("."))
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

        softcap = getattr(config, "final_logit_softcapping", None)
        multiplier = 1.0
        if getattr(config, "logit_scale", None) is not None:  # Cohere multiplies its logits
            multiplier *= float(config.logit_scale)
            notes.append(f"logits multiplied by config.logit_scale={config.logit_scale}")
        if getattr(config, "logits_scaling", None) not in (None, 1, 1.0):  # Granite divides
            multiplier /= float(config.logits_scaling)
            notes.append(f"logits divided by config.logits_scaling={config.logits_scaling}")
        return cls(
            embed=embed,
            blocks=blocks,
            blocks_path=blocks_path,
            final_norm=final_norm,
            final_norm_path=norm_path,
            unembed=unembed,
            softcap=float(softcap) if softcap else None,
            logit_multiplier=multiplier,
            projection=projection,
            projection_path=proj_path,
            notes=notes,
        )


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
    """The residual stream's width: the widest of the blocks' norms (per-head query/key norms
    are narrower), else the input width of their first linear map."""
    widths = [
        int(m.weight.shape[0])
        for m in blocks[0].modules()
        if _is_norm(m)
        and isinstance(getattr(m, "weight", None), torch.Tensor)
        and m.weight.dim() == 1
    ]
    if widths:
        return max(widths)
    for module in blocks[0].modules():
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    return None
