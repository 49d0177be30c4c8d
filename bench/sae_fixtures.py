"""Writes the tiny sparse dictionaries in tests/data/sae/ with the packages' own classes and save
methods (SAELens, EleutherAI sparsify; Gemma Scope's params.npz with numpy as its tutorial does),
and next to each `expected.safetensors`: an input x and the package's own encode(x) and
decode(encode(x)) (a transcoder's forward output), which tests/test_sae_formats.py compares
tokenprobe's `Dictionary` against.

Run in the reference virtualenv: `make .venv-sae/.installed && .venv-sae/bin/python
bench/sae_fixtures.py`. Seeds are fixed; the weights are scaled so each activation fires on
some latents and not on others.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "sae"
D_IN, D_SAE, ROWS = 16, 48, 5


def inputs(seed: int) -> torch.Tensor:
    """An input batch (ROWS, D_IN) with an offset, so that subtracting b_dec matters."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(ROWS, D_IN, generator=g) + 0.5


def fill(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random, at a scale where pre-activations straddle zero and the
    thresholds: weights ~ N(0, 1/d_in) * 2, biases ~ N(0, 0.5), thresholds in (0.2, 0.8)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.6 + 0.2)
            elif name == "r_mag":
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 2 / D_IN**0.5)


def expect(folder: Path, x: torch.Tensor, acts: torch.Tensor, out: torch.Tensor) -> None:
    fired = (acts != 0).float().mean().item()
    assert 0.05 < fired < 0.95, f"{folder.name}: {fired:.2f} of the activations fire"
    save_file(
        {"x": x.contiguous(), "acts": acts.detach().contiguous(), "out": out.detach().contiguous()},
        str(folder / "expected.safetensors"),
    )
    print(f"{folder.name}: {fired:.2f} of the activations fire")


def fresh(name: str) -> Path:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def saelens() -> None:
    """SAELens 6: the inference classes, `save_model` (cfg.json + sae_weights.safetensors)."""
    import sae_lens as sl
    from sae_lens.saes.sae import SAEMetadata

    def meta(hook: str, **extra: object) -> SAEMetadata:
        return SAEMetadata(model_name="tiny", hook_name=hook, **extra)

    common = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu"}
    saes = {
        "saelens-standard": sl.StandardSAE(
            sl.StandardSAEConfig(**common, metadata=meta("blocks.2.hook_resid_pre"))
        ),
        "saelens-topk": sl.TopKSAE(
            sl.TopKSAEConfig(
                **common,
                k=8,
                rescale_acts_by_decoder_norm=True,
                metadata=meta("blocks.2.hook_resid_post"),
            )
        ),
        "saelens-jumprelu": sl.JumpReLUSAE(
            sl.JumpReLUSAEConfig(
                **common, apply_b_dec_to_input=False, metadata=meta("blocks.1.hook_mlp_out")
            )
        ),
        "saelens-gated": sl.GatedSAE(
            sl.GatedSAEConfig(**common, metadata=meta("blocks.0.hook_attn_out"))
        ),
        "saelens-layernorm": sl.StandardSAE(
            sl.StandardSAEConfig(
                **common,
                normalize_activations="layer_norm",
                metadata=meta("blocks.3.hook_resid_post"),
            )
        ),
    }
    for i, (name, sae) in enumerate(saes.items()):
        folder = fresh(name)
        fill(sae, 100 + i)
        sae.save_model(folder)
        x = inputs(200 + i)
        with torch.no_grad():
            acts = sae.encode(x)
            expect(folder, x, acts, sae.decode(acts))

    transcoders = {
        "saelens-transcoder": sl.Transcoder(
            sl.TranscoderConfig(
                **common,
                d_out=D_IN,
                apply_b_dec_to_input=False,
                metadata=meta(
                    "blocks.3.ln2.hook_normalized", hook_name_out="blocks.3.hook_mlp_out"
                ),
            )
        ),
        "saelens-skip-transcoder": sl.JumpReLUSkipTranscoder(
            sl.JumpReLUSkipTranscoderConfig(
                **common,
                d_out=D_IN,
                apply_b_dec_to_input=False,
                metadata=meta("blocks.1.mlp.hook_in", hook_name_out="blocks.1.hook_mlp_out"),
            )
        ),
    }
    for i, (name, tc) in enumerate(transcoders.items()):
        folder = fresh(name)
        fill(tc, 300 + i)
        tc.save_model(folder)
        x = inputs(400 + i)
        with torch.no_grad():
            expect(folder, x, tc.encode(x), tc(x))


def sparsify() -> None:
    """EleutherAI sparsify: `SparseCoder.save_to_disk` into <run>/<hookpoint>/."""
    from sparsify import SparseCoder, SparseCoderConfig

    run = fresh("sparsify-topk")
    coders = {
        "layers.1": SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=8)),
        "layers.2.mlp": SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=6)),
    }
    transcoder = fresh("sparsify-transcoder")
    skip = SparseCoderConfig(num_latents=D_SAE, k=8, transcode=True, skip_connection=True)
    places = [(run / h, c) for h, c in coders.items()]
    places.append((transcoder / "layers.3.mlp", SparseCoder(D_IN, skip)))
    for i, (folder, coder) in enumerate(places):
        fill(coder, 500 + i)
        coder.save_to_disk(folder)
        x = inputs(600 + i)
        with torch.no_grad():
            top_acts, top_indices, _ = coder.encode(x)
            acts = torch.zeros(ROWS, D_SAE).scatter_(-1, top_indices, top_acts)
            expect(folder, x, acts, coder(x).sae_out)


def gemmascope() -> None:
    """Gemma Scope: params.npz in <repo>-res/layer_N/width_W/, encoded as its tutorial's JumpReLU
    (`mask = pre > threshold; acts = mask * relu(pre)`), decoded as `acts @ W_dec + b_dec`."""
    root = fresh("gemmascope-jumprelu")
    folder = root / "gemma-scope-tiny-pt-res" / "layer_3" / "width_48"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(700)
    params = {
        "W_enc": rng.normal(size=(D_IN, D_SAE)) * 2 / D_IN**0.5,
        "W_dec": rng.normal(size=(D_SAE, D_IN)) * 2 / D_IN**0.5,
        "b_enc": rng.normal(size=D_SAE) * 0.5,
        "b_dec": rng.normal(size=D_IN) * 0.5,
        "threshold": rng.uniform(0.2, 0.8, size=D_SAE),
    }
    params = {k: v.astype(np.float32) for k, v in params.items()}
    np.savez(folder / "params.npz", **params)
    x = inputs(701).numpy()
    pre = x @ params["W_enc"] + params["b_enc"]
    acts = (pre > params["threshold"]) * np.maximum(pre, 0)
    out = acts @ params["W_dec"] + params["b_dec"]
    expect(root, torch.from_numpy(x), torch.from_numpy(acts), torch.from_numpy(out))


def main() -> None:
    torch.manual_seed(0)
    saelens()
    sparsify()
    gemmascope()
    from importlib.metadata import version

    versions = {p: version(p) for p in ("sae-lens", "eai-sparsify", "torch", "numpy")}
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(versions)


if __name__ == "__main__":
    main()
