"""Encoder-decoder (sequence-to-sequence) models: where their two residual streams live, how
the model turns the decoder's into logits, and which analyses take such a model.

Each family decodes its last decoder state in its own way, all read here from the model itself:

- the decoder's final norm is the norm the decoder stack runs after its last block, found by
  running the model once (T5: `decoder.final_layer_norm`; mBART, M2M100/NLLB, Pegasus,
  Blenderbot: `decoder.layer_norm`; BigBird-Pegasus: `decoder.layernorm_embedding`, which it
  runs last; T5Gemma: `decoder.norm`; BART, Marian, PLBART, MVP, LED, Blenderbot-small and FSMT
  have none: their blocks norm their own outputs);
- the head is `lm_head`, or FSMT's `decoder.output_projection`, which the decoder runs itself;
- T5, UMT5 and LongT5 multiply the decoder output by `d_model ** -0.5` before the head where
  the config's `scale_decoder_outputs` says (a tied head), Switch Transformers where its head
  is tied; mT5 never does;
- BART, mBART, Marian, PLBART, MVP, LED, Pegasus, Blenderbot(-small) and BigBird-Pegasus add
  the `final_logits_bias` buffer to the logits; T5Gemma soft-caps them
  (`decoder.final_logit_softcapping`).

`output_hidden_states` does not give the residual stream the same way in every family (its
last decoder entry is after the final norm in T5 and T5Gemma, before it in the BART-like ones):
the states here are read with hooks on the blocks, as `Adapter.record` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TokenprobeError
from .adapter import weight_of
from .heads import post_process


def refusal(
    name: str, cls: str, analysis: str | None = None, supported: Sequence[str] = ()
) -> TokenprobeError:
    """The one line for an encoder-decoder model given to an analysis that cannot take one;
    `supported` names the analyses that can (each declares `Analysis.seq2seq`)."""
    who = f"the {analysis} analysis" if analysis else "this analysis"
    those = ", ".join(supported) or "none yet"
    return TokenprobeError(
        f"{name} is an encoder-decoder model ({cls}): {who} does not support encoder-decoder "
        f"models yet (those that do: {those}); pass a decoder-only causal LM (a ...ForCausalLM "
        "model)"
    )


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class Streams:
    """The residual streams recorded in a forward pass: each a list of (batch, positions,
    width) states, layer 0 the first block's input, layer i block i's output."""

    encoder: list[torch.Tensor] = field(default_factory=list)
    decoder: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Stack:
    """One side of the model: its block list and the norm it runs after its last block."""

    module: nn.Module
    blocks: nn.ModuleList
    blocks_path: str
    final_norm: nn.Module  # nn.Identity() where there is none
    final_norm_path: str


@dataclass
class Seq2SeqAdapter:
    """Where an encoder-decoder model keeps its encoder and decoder residual streams and how it
    decodes the decoder's: final norm, `output_scale`, head, `logits_bias`, `softcap`."""

    encoder: Stack
    decoder: Stack
    unembed: nn.Module
    unembed_path: str
    output_scale: float = 1.0
    logits_bias: torch.Tensor | None = None
    softcap: float | None = None
    embed_scale: float = 1.0  # what the decoder multiplies its token embeddings by
    time_major: bool = False  # FSMT's blocks pass (positions, batch, width) states
    width: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n_blocks(self) -> int:
        """The decoder's block count."""
        return len(self.decoder.blocks)

    @property
    def n_encoder_blocks(self) -> int:
        return len(self.encoder.blocks)

    def decoded(self, state: torch.Tensor) -> torch.Tensor:
        """The decoder state the model would decode from a block's input or output (as
        `Adapter.decoded`): the state itself."""
        return state

    def logits(self, hidden: torch.Tensor, *, apply_norm: bool = True) -> torch.Tensor:
        """Decode decoder states as the model decodes its last one; float32 out.
        `apply_norm=False` is for states the decoder has already normed."""
        h = self.decoder.final_norm(hidden) if apply_norm else hidden
        raw = self.unembed(h * self.output_scale if self.output_scale != 1.0 else h)
        if self.logits_bias is not None:
            raw = raw + self.logits_bias.to(raw.device)
        return post_process(raw.float(), 1.0, self.softcap)

    def _state(self, state: torch.Tensor) -> torch.Tensor:
        return state.transpose(0, 1) if self.time_major else state

    @contextmanager
    def record(self, last_only: bool = False) -> Iterator[Streams]:
        """Collect both residual streams of the forward passes run inside the block (a
        decoder step of generation appends its own states to `decoder`); `last_only` keeps
        only each stack's last block output. Encoder states keep the source's positions only
        (LED and Pegasus-X pad the source to a multiple of their attention block inside)."""
        streams = Streams()
        source: list[int] = []

        def encoder_input(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            given = kwargs.get("input_ids", args[0] if args else None)
            given = given if given is not None else kwargs.get("inputs_embeds")
            source[:] = [int(given.shape[1])] if given is not None else []

        handles = [self.encoder.module.register_forward_pre_hook(encoder_input, with_kwargs=True)]
        handles += self._hooks(self.encoder.blocks, streams.encoder, last_only, source)
        handles += self._hooks(self.decoder.blocks, streams.decoder, last_only, [])
        try:
            yield streams
        finally:
            for handle in handles:
                handle.remove()

    def _hooks(
        self, blocks: nn.ModuleList, states: list[torch.Tensor], last_only: bool, length: list[int]
    ) -> list[Any]:
        """Hooks appending `blocks`' input and outputs to `states` (cut to `length[0]`
        positions where given)."""

        def keep(state: torch.Tensor) -> torch.Tensor:
            state = self._state(state)
            return state[:, : length[0]] if length else state

        def first_input(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            states.append(keep(args[0] if args else kwargs["hidden_states"]))

        def output(_m: nn.Module, _args: tuple, out: Any) -> None:
            states.append(keep(_block_output(out)))

        chosen = list(blocks)[-1:] if last_only else list(blocks)
        handles = [b.register_forward_hook(output) for b in chosen]
        if not last_only:
            handles.append(blocks[0].register_forward_pre_hook(first_input, with_kwargs=True))
        return handles

    @classmethod
    def from_model(cls, model: nn.Module) -> Seq2SeqAdapter:
        """Find both stacks, the decoder's head and each family's output scaling, then check
        that they rebuild the model's own logits from its last decoder block's output."""
        name = type(model).__name__
        config = model.config
        encoder, decoder = _stack(model, "encoder", name), _stack(model, "decoder", name)
        probe = _probe(model, encoder, decoder)
        encoder.final_norm_path, encoder.final_norm = _after_last(encoder, probe, _is_norm)
        decoder.final_norm_path, decoder.final_norm = _after_last(decoder, probe, _is_norm)
        projection_path, projection = _after_last(decoder, probe, _is_linear)
        head = getattr(model, "lm_head", None)
        if projection_path:  # FSMT: the decoder runs its own head
            unembed, unembed_path = projection, projection_path
        elif isinstance(head, nn.Module):
            unembed, unembed_path = head, "lm_head"
        else:
            raise TokenprobeError(f"cannot find the LM head of {name}: it has no lm_head")
        bias = getattr(model, "final_logits_bias", None)
        decoder_config = getattr(config, "decoder", None)
        softcap = getattr(decoder_config, "final_logit_softcapping", None)
        adapter = cls(
            encoder=encoder,
            decoder=decoder,
            unembed=unembed,
            unembed_path=unembed_path,
            output_scale=_output_scale(config),
            logits_bias=bias if isinstance(bias, torch.Tensor) else None,
            softcap=float(softcap) if softcap else None,
            embed_scale=_embed_scale(decoder.module, config),
            time_major=probe.time_major,
            width=probe.width,
        )
        adapter.notes = _notes(adapter)
        _check_head(adapter, probe, name)
        return adapter


# ----------------------------------------------------------------------------- finding the parts


def _stack(model: nn.Module, side: str, name: str) -> Stack:
    """The encoder or decoder (`get_encoder()` / `get_decoder()`) and its block list: the
    module list among its children (the longest, were there several)."""
    getter = getattr(model, f"get_{side}", None)
    module = getter() if callable(getter) else None
    if not isinstance(module, nn.Module):
        raise TokenprobeError(f"cannot find the {side} of {name}: it has no get_{side}()")
    lists = [(n, m) for n, m in module.named_children() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise TokenprobeError(f"cannot find the {side} blocks of {name}: no module list in it")
    child, blocks = max(lists, key=lambda nm: len(nm[1]))
    path = next(p for p, m in model.named_modules() if m is module)
    return Stack(module, blocks, f"{path}.{child}", nn.Identity(), "")


@dataclass
class _Probe:
    """What one small forward pass showed: the order the stacks' children ran in, the last
    decoder block's output and the model's logits."""

    order: list[nn.Module]
    last: torch.Tensor
    logits: torch.Tensor
    time_major: bool
    width: int


def _probe(model: nn.Module, encoder: Stack, decoder: Stack) -> _Probe:
    """Run 3 source tokens and 2 decoder tokens through the model, noting which of the
    stacks' children ran after their last block (the final norm, FSMT's head)."""
    order: list[nn.Module] = []
    outs: list[torch.Tensor] = []
    watched = [c for s in (encoder, decoder) for c in s.module.children() if c is not s.blocks]
    handles = [c.register_forward_hook(lambda m, _a, _o: order.append(m)) for c in watched]
    for stack in (encoder, decoder):
        block = stack.blocks[-1]
        handles.append(block.register_forward_hook(lambda m, _a, _o: order.append(m)))
    handles.append(
        decoder.blocks[-1].register_forward_hook(lambda _m, _a, o: outs.append(_block_output(o)))
    )
    weight = weight_of(model.get_input_embeddings())  # type: ignore[operator]
    device, vocab = weight.device, int(weight.shape[0])
    ids = torch.tensor([[min(4, vocab - 1), min(5, vocab - 1), min(6, vocab - 1)]], device=device)
    start = torch.tensor([[0, min(7, vocab - 1)]], device=device)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=start, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    final = outs[-1]
    time_major = tuple(final.shape[:2]) == (2, 1)
    return _Probe(order, final, logits, time_major, int(final.shape[-1]))


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def _after_last(stack: Stack, probe: _Probe, test: Callable[[nn.Module], bool]) -> tuple[str, Any]:
    """The first child of `stack` passing `test` that ran after its last block;
    ("", nn.Identity()) where none did."""
    last = stack.blocks[-1]
    at = max(i for i, m in enumerate(probe.order) if m is last)
    names = {id(m): n for n, m in stack.module.named_children()}
    for module in probe.order[at + 1 :]:
        if id(module) in names and test(module):
            return f"{stack.blocks_path.rpartition('.')[0]}.{names[id(module)]}", module
    return "", nn.Identity()


def _output_scale(config: Any) -> float:
    """`d_model ** -0.5` where the model scales its decoder output before a tied head (T5,
    UMT5, LongT5: `scale_decoder_outputs`; Switch Transformers: `tie_word_embeddings`)."""
    scale = getattr(config, "scale_decoder_outputs", None)
    if scale is None and getattr(config, "model_type", "") == "switch_transformers":
        scale = getattr(config, "tie_word_embeddings", False)
    return float(config.d_model) ** -0.5 if scale else 1.0


def _embed_scale(decoder: nn.Module, config: Any) -> float:
    """What the decoder multiplies token embeddings by: its `embed_scale` (Marian, FSMT), its
    embedding's (BART-like scaled embeddings), T5Gemma's sqrt(hidden size); else 1."""
    for owner in (decoder, getattr(decoder, "embed_tokens", None)):
        scale = getattr(owner, "embed_scale", None)
        if isinstance(scale, (int, float, torch.Tensor)):
            return float(scale)
    if getattr(config, "model_type", "") == "t5gemma":
        return float(config.decoder.hidden_size) ** 0.5
    return 1.0


def _notes(adapter: Seq2SeqAdapter) -> list[str]:
    notes = []
    if not adapter.decoder.final_norm_path:
        notes.append("no decoder final norm: the blocks norm their own outputs (post-norm)")
    if adapter.output_scale != 1.0:
        notes.append(f"decoder output x {adapter.output_scale:.6g} before the head (tied head)")
    if adapter.logits_bias is not None:
        notes.append("final_logits_bias added to the logits")
    if adapter.time_major:
        notes.append("blocks pass (positions, batch, width) states, read transposed")
    return notes


def _check_head(adapter: Seq2SeqAdapter, probe: _Probe, name: str) -> None:
    """The head as found must rebuild the probe's logits from the last decoder block's output;
    otherwise inner layers would be decoded wrongly: one line."""
    with torch.no_grad():
        rebuilt = adapter.logits(adapter._state(probe.last))
    ref = probe.logits.float()
    error = float((rebuilt - ref).abs().max())
    tol = 1e-3 if probe.last.dtype == torch.float32 else 3e-2
    limit = tol * max(1.0, float(ref.abs().max()))
    if not error <= limit:
        parts = (adapter.decoder.final_norm_path or "no final norm", adapter.unembed_path)
        raise TokenprobeError(
            f"{name}: its decoder head as found ({' -> '.join(parts)}, x {adapter.output_scale:g}"
            f") does not rebuild the model's own logits from its last decoder block (largest "
            f"error {error:.3g}, tolerance {limit:.2g}): its decoder layers cannot be decoded"
        )


# ----------------------------------------------------------------------------- cross-attention

# the names each family gives a decoder block's cross-attention module: T5, mT5, UMT5, LongT5,
# Switch (`layer.1.EncDecAttention`), the BART-like ones and FSMT (`encoder_attn`), NLLB-MoE
# (`cross_attention`), T5Gemma (`cross_attn`)
CROSS_NAMES = ("encdecattention", "encoder_attn", "cross_attention", "cross_attn", "crossattention")


def cross_attention(block: nn.Module) -> tuple[str, nn.Module] | None:
    """The cross-attention module of one decoder block: the outermost child whose own name is
    one of `CROSS_NAMES` and that holds parameters (not its norm or dropout); None if none."""
    found = [
        (path, module)
        for path, module in block.named_modules()
        if path
        and path.rpartition(".")[2].lower() in CROSS_NAMES
        and any(True for _ in module.parameters())
    ]
    return min(found, key=lambda pm: pm[0].count("."), default=None)


def cross_attentions(adapter: Seq2SeqAdapter) -> list[tuple[str, nn.Module]]:
    """Each decoder block's cross-attention module with its path from the model; one line
    when a block has none (its output is what the trace's `cross` rows restore)."""
    out = []
    for b, block in enumerate(adapter.decoder.blocks):
        found = cross_attention(block)
        if found is None:
            children = ", ".join(n for n, _ in block.named_children())
            raise TokenprobeError(
                f"cannot find the cross-attention of decoder block {b} ({type(block).__name__}: "
                f"{children}): no child named {' or '.join(CROSS_NAMES)}"
            )
        out.append((f"{adapter.decoder.blocks_path}.{b}.{found[0]}", found[1]))
    return out
