"""`lens --lens DIR` / `logit_lens(..., lens=...)`: every inner layer is decoded through its
translator, checked by hand against the model's own hidden states, final norm and head; the
table, figure and meta.json say which lens was used; bad lens folders are one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from test_cli import assert_one_line_errors, model_dir, run  # noqa: F401  (fixture)

import tokenprobe
from tokenprobe.tuned import TunedLens, residual_width, save_lens

PROMPT = "the cat sat on the mat"


def _random_lens(lm, seed: int = 0) -> TunedLens:
    lens = TunedLens(lm.n_blocks, residual_width(lm))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in lens.translators:  # large enough that a skipped translator changes every row
            t.weight.copy_(torch.randn(t.weight.shape, generator=gen) * 0.3)
            t.bias.copy_(torch.randn(t.bias.shape, generator=gen))
    return lens


def test_every_inner_row_is_decoded_through_its_translator(model_dir, tmp_path):
    lm = tokenprobe.load(str(model_dir))
    lens = _random_lens(lm)
    save_lens(lens, tmp_path / "lens", formats=["tuned-lens"])
    result = tokenprobe.logit_lens(lm, PROMPT, lens=tmp_path / "lens", targets=[" the"])
    ids = torch.tensor([result.token_ids])
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
        body, head = lm.model.model, lm.model.lm_head
        for layer in range(lm.n_blocks):
            h = out.hidden_states[layer][0]
            t = lens.translators[layer]
            logits = head(body.norm(h + h @ t.weight.T + t.bias)).double()
            logp = torch.log_softmax(logits, dim=-1)
            entropy = -(logp.exp() * logp).sum(-1).numpy()
            np.testing.assert_allclose(result.entropy[layer], entropy, rtol=1e-4, atol=1e-4)
            top = torch.topk(logits, 5).indices.numpy()
            assert (result.top_ids[layer, :, 0] == top[:, 0]).all()
        own = torch.log_softmax(out.logits[0].double(), dim=-1)
    np.testing.assert_allclose(
        result.top_probs[-1, :, 0], own.exp().max(-1).values.numpy(), rtol=1e-5
    )
    plain = tokenprobe.logit_lens(lm, PROMPT, targets=[" the"])
    assert not np.allclose(plain.entropy[:-1], result.entropy[:-1], atol=1e-3)
    assert result.meta["lens"]["format"] == "tuned-lens" and result.meta["analysis"] == "tuned lens"


def test_the_command_line_says_which_lens(model_dir, tmp_path, capsys):
    lm = tokenprobe.load(str(model_dir))
    save_lens(_random_lens(lm), tmp_path / "lens")
    code, _, err = run(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--prompt",
        PROMPT,
        "--lens",
        str(tmp_path / "lens"),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["lens"]["path"] == str(tmp_path / "lens") and meta["analysis"] == "tuned lens"
    loaded = tokenprobe.load_result(tmp_path / "out")
    assert "tuned lens" in loaded.views()[0][1].title
    direct = tokenprobe.logit_lens(lm, PROMPT, lens=tmp_path / "lens").to_frame()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "lens.parquet"), direct)


def test_bad_lens_folders_are_one_line(model_dir, tmp_path, capsys):
    other = TunedLens(7, 16)
    save_lens(other, tmp_path / "other")
    (tmp_path / "empty").mkdir()
    assert_one_line_errors(
        capsys,
        "lens",
        str(model_dir),
        tmp_path / "o",
        [
            (["--prompt", PROMPT, "--lens", str(tmp_path / "other")], "blocks"),
            (["--prompt", PROMPT, "--lens", str(tmp_path / "empty")], "is not a tuned lens"),
            (["--prompt", PROMPT, "--lens", str(tmp_path / "missing")], "no such folder"),
        ],
    )
    # the lens shipped for the built-in model does not fit the tiny one: said as such
    assert_one_line_errors(
        capsys,
        "lens",
        str(model_dir),
        tmp_path / "o",
        [
            (
                ["--prompt", PROMPT, "--lens", "builtin"],
                "builtin (the built-in model's lens) was trained for a model with 30 blocks",
            ),
        ],
    )


def test_resuming_a_data_run_after_the_lens_was_trained_again_starts_over(model_dir, tmp_path):
    """A data-file run's checkpoint records the lens's weights, not only its folder."""
    from tokenprobe.analyses.lens import rows as lens_rows_module

    lm = tokenprobe.load(str(model_dir))
    save_lens(_random_lens(lm, seed=0), tmp_path / "lens")
    prompts = ["the cat sat", "a dog ran", "the mat is red"]
    real = lens_rows_module._lens_chunk
    calls: list[int] = []

    def stops_at_the_second_chunk(lm, rows, options):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(lm, rows, options)

    lens_rows_module._lens_chunk = stops_at_the_second_chunk
    try:
        kw = dict(
            lens=str(tmp_path / "lens"), chunk_rows=1, checkpoint=tmp_path / "out", progress=False
        )
        try:
            tokenprobe.lens_rows(lm, prompts, **kw)
        except KeyboardInterrupt:
            pass
    finally:
        lens_rows_module._lens_chunk = real
    save_lens(_random_lens(lm, seed=1), tmp_path / "lens")  # trained again, same folder
    try:
        tokenprobe.lens_rows(lm, prompts, resume=True, **kw)
    except tokenprobe.TokenprobeError as exc:
        assert "other settings (different fingerprints)" in str(exc)
    else:
        raise AssertionError("the resume mixed two lenses")
