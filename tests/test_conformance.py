"""The conformance matrix: every analysis on tiny random models of every architecture family
(tests/zoo.py), each against a reference written here from the model's own outputs — never
from tokenprobe's code — and batched runs against one input at a time.

The reference for each family names its final norm and output projection by their Hugging
Face module paths (a table kept here, independent of the adapter's discovery).
"""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zoo
from conftest import TEST_DEVICE

import tokenprobe
from tokenprobe import PromptedClassifier, SequenceClassifier, TokenprobeError

PROMPTS = [
    "What is the capital of Australia?",
    "Tools: hammer, wrench, level, pliers. Fruits: orange",
    "Hello world",
]
TEXTS = [
    "I couldn't believe the capital of Australia is Canberra, not Sydney!",
    "Tools: hammer, wrench, level, pliers.",
    "The quick brown fox jumps over the lazy dog",
    "Hello world",
]
LABELS = zoo.CLASS_LABELS
# labels of the prompted classifier: one token each in the test tokenizer
WORDS = ["capital", "hammer", "orange"]

# arch -> (blocks, final norm or None, projection after it or None), by HF module path
_LLAMA_LIKE = ("model.layers", "model.norm", None)
_GPT_LIKE = ("transformer.h", "transformer.ln_f", None)
HEADS = {
    **{arch: _LLAMA_LIKE for arch in zoo.CAUSAL},
    **{a: _GPT_LIKE for a in ("gpt2", "gpt_neo", "gptj", "gpt_bigcode", "codegen", "bloom")},
    **{a: _GPT_LIKE for a in ("falcon", "falcon-alibi")},
    "phi": ("model.layers", "model.final_layernorm", None),
    "jamba": ("model.layers", "model.final_layernorm", None),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm", None),
    "opt": ("model.decoder.layers", "model.decoder.final_layer_norm", None),
    "opt-project": (
        "model.decoder.layers",
        "model.decoder.final_layer_norm",
        "model.decoder.project_out",
    ),
    "opt-350m": ("model.decoder.layers", None, "model.decoder.project_out"),
    "mpt": ("transformer.blocks", "transformer.norm_f", None),
    "mamba": ("backbone.layers", "backbone.norm_f", None),
    "mamba2": ("backbone.layers", "backbone.norm_f", None),
}
ARCHS = list(zoo.CAUSAL)


@pytest.fixture(scope="module")
def bpe():
    from conftest import make_tokenizer

    return make_tokenizer()


@pytest.fixture(params=ARCHS)
def lm(request, bpe):
    return zoo.make_causal(request.param, bpe, device=TEST_DEVICE)


def _arch(lm) -> str:
    return lm.name.removeprefix("tiny-")


def _ref_decode(lm, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, projection, unembedding, logit scale and soft-cap, as the family defines them."""
    model, config = lm.model, lm.model.config
    _, norm, proj = HEADS[_arch(lm)]
    h = model.get_submodule(norm)(hidden) if norm else hidden
    h = model.get_submodule(proj)(h) if proj else h
    logits = model.get_output_embeddings()(h).float()
    logits = logits * float(getattr(config, "logit_scale", None) or 1.0)
    logits = logits / float(getattr(config, "logits_scaling", None) or 1.0)
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _entropy(logits: torch.Tensor) -> np.ndarray:
    logp = torch.log_softmax(logits.float(), -1)
    return (-(logp.exp() * logp).sum(-1)).cpu().numpy()


def _ids(lm, text: str) -> torch.Tensor:
    return torch.tensor([lm.tokenizer(text)["input_ids"]], device=lm.device)


# ----------------------------------------------------------------------------- logit lens


def test_lens_equals_final_norm_and_unembedding_of_hidden_states(lm):
    res = tokenprobe.logit_lens(lm, PROMPTS[0], top_k=3)
    assert res.meta["output_check"].startswith("ok"), res.meta["output_check"]
    ids = _ids(lm, PROMPTS[0])
    states = _residual_stream(lm, ids)
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0]
        ref = [_ref_decode(lm, states[i]) for i in range(len(states) - 1)] + [logits]
        # the model's own logits are its last block's output decoded the same way
        torch.testing.assert_close(
            _ref_decode(lm, states[-1]), logits.float(), atol=1e-4, rtol=1e-4
        )
    ref_entropy = np.stack([_entropy(x) for x in ref])
    assert res.entropy.shape == ref_entropy.shape
    np.testing.assert_allclose(res.entropy, ref_entropy, atol=2e-4, rtol=1e-4)
    ref_top1 = np.stack([x.argmax(-1).cpu().numpy() for x in ref])
    agree = (res.top_ids[..., 0] == ref_top1).mean()
    assert agree > 0.97  # ties in float32 may pick another token, rarely
    assert float(ref_entropy.std()) > 0.05  # the model is not flat: wrong decoding would show


def test_lens_batched_equals_alone(lm):
    alone = [tokenprobe.logit_lens(lm, p, top_k=2) for p in PROMPTS]
    for budget in (4096, 1):
        together = tokenprobe.logit_lens(lm, PROMPTS, top_k=2, batch_tokens=budget)
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(a.entropy, b.entropy, atol=2e-4)


# ----------------------------------------------------------------------------- similarity


def _residual_stream(lm, ids: torch.Tensor) -> torch.Tensor:
    """(layers, T, D): the first block's input, then each block's output, by hooks on the
    family's blocks; where `output_hidden_states` starts with the embeddings (all but Mamba),
    its entries 0..L-1 must be the same states."""
    blocks = lm.model.get_submodule(HEADS[_arch(lm)][0])
    grabbed: list[torch.Tensor] = []

    def pre(_m, args, kwargs):
        grabbed.append(args[0] if args else kwargs["hidden_states"])

    def hook(_m, _i, out):
        grabbed.append(out[0] if isinstance(out, tuple) else out)

    handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [b.register_forward_hook(hook) for b in blocks]
    try:
        with torch.no_grad():
            hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    states = torch.stack([g[0] for g in grabbed])
    if _arch(lm) not in ("mamba", "mamba2"):  # Mamba's hidden_states leave out the embeddings
        torch.testing.assert_close(torch.stack([h[0] for h in hidden[:-1]]), states[:-1])
    return states


def test_similarity_equals_brute_force_cosine(lm):
    text = "Tools: hammer, wrench _PAUSE_ Fruits: orange, peach _PAUSE_ more"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tokenprobe.past_similarity(lm, text, marker="_PAUSE_", occurrence=2, window=6)
    ids = _ids(lm, text)
    marker = lm.tokenizer.convert_tokens_to_ids("_PAUSE_")
    p = [i for i, t in enumerate(ids[0].tolist()) if t == marker][1]
    states = _residual_stream(lm, ids).float()
    ref = np.array(
        [
            [F.cosine_similarity(states[k, p], states[k, p - d], dim=0).item() for d in range(1, 7)]
            for k in range(states.shape[0])
        ]
    )
    np.testing.assert_allclose(res.cosine, ref, atol=1e-4)


def test_similarity_batched_equals_alone(lm):
    texts = [
        "a b _PAUSE_ c d e f _PAUSE_",
        "Tools: hammer, wrench, level, pliers. _PAUSE_ Fruits _PAUSE_ orange",
        "Hello _PAUSE_ world _PAUSE_",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = [
            tokenprobe.past_similarity(lm, t, occurrence=2, window=5, centre=True) for t in texts
        ]
        for budget in (4096, 1):
            together = tokenprobe.past_similarity(
                lm, texts, occurrence=2, window=5, centre=True, batch_tokens=budget
            )
            stacked = np.stack([a.cosine for a in alone])
            np.testing.assert_allclose(together.cosine, np.nanmean(stacked, axis=0), atol=1e-4)
            np.testing.assert_array_equal(together.count, (~np.isnan(stacked[:, 0])).sum(0))


# ----------------------------------------------------------------------------- attribution

PROMPT, TARGET = "The capital of Australia is", " Canberra, not Sydney"


def _target_logprobs(lm, prompt_ids: list[int], target_ids: list[int]) -> np.ndarray:
    """Teacher-forced log-probabilities of the target, one unpadded input."""
    ids = torch.tensor([prompt_ids + target_ids], device=lm.device)
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    n = len(prompt_ids)
    return np.array([logp[n - 1 + j, t].item() for j, t in enumerate(target_ids)])


def test_ablation_equals_leave_one_out_one_input_at_a_time(lm):
    res = tokenprobe.attribute(lm, PROMPT, target=TARGET, method="ablation")
    prompt_ids, target_ids = res.meta["prompt_ids"], res.meta["target_ids"]
    full = _target_logprobs(lm, prompt_ids, target_ids)
    np.testing.assert_allclose(res.target_scores, full, atol=1e-4)
    ref = np.stack(
        [
            full - _target_logprobs(lm, prompt_ids[:i] + prompt_ids[i + 1 :], target_ids)
            for i in range(len(prompt_ids))
        ],
        axis=1,
    )
    np.testing.assert_allclose(res.scores, ref, atol=2e-4)
    tiny = tokenprobe.attribute(lm, PROMPT, target=TARGET, method="ablation", batch_tokens=1)
    np.testing.assert_allclose(tiny.scores, res.scores, atol=2e-4)


def test_integrated_gradients_equal_a_plain_loop(lm):
    steps = 3
    res = tokenprobe.attribute(
        lm, PROMPT, target=TARGET, method="integrated_gradients", steps=steps
    )
    prompt_ids, target_ids = res.meta["prompt_ids"], res.meta["target_ids"]
    n = len(prompt_ids)
    emb = lm.model.get_input_embeddings()
    ids = torch.tensor(prompt_ids + target_ids, device=lm.device)
    with torch.no_grad():
        x1 = emb(ids)
        x0 = emb(torch.full((n,), lm.tokenizer.unk_token_id, device=lm.device))
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    ref = np.zeros((len(target_ids), n))
    for a, w in zip((nodes + 1) / 2, weights / 2, strict=True):
        for r, t in enumerate(target_ids):
            prompt = (x0 + float(a) * (x1[:n] - x0)).detach().requires_grad_(True)
            x = torch.cat([prompt, x1[n:]])[None]
            logits = lm.model(inputs_embeds=x).logits[0].float()
            logp = torch.log_softmax(logits[n - 1 + r], -1)[t]
            (grad,) = torch.autograd.grad(logp, prompt)
            ref[r] += w * (grad * (x1[:n] - x0)).sum(-1).detach().cpu().numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(res.scores, ref, atol=1e-3 * scale)


# ----------------------------------------------------------------------------- flip rates


def _words(tokenizer, text: str, add_special: bool) -> tuple[list[int], list[list[int]]]:
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    groups = []
    for m in re.finditer(r"\w+", text):
        s, e = m.span()
        toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
        if toks:
            groups.append(toks)
    return list(enc["input_ids"]), groups


def _prompted_reference(clf, lm) -> list[list[np.ndarray]]:
    """Verbaliser logits of each text and each word deleted, one input at a time, no cache."""
    tok = lm.tokenizer
    out = []
    for text in TEXTS:
        ids, groups = _words(tok, text, add_special=False)
        variants = [ids] + [[t for i, t in enumerate(ids) if i not in g] for g in groups]
        rows = []
        for v in variants:
            full = torch.tensor([clf.prefix_ids + v + clf.suffix_ids], device=lm.device)
            with torch.no_grad():
                logits = lm.model(input_ids=full).logits[0, -1].float()
            rows.append(logits[clf.verbaliser_ids].cpu().numpy())
        out.append(rows)
    return out


def _prompted_scores(clf, batch_tokens: int) -> list[list[np.ndarray]]:
    from tokenprobe.analyses.flips import perturb, tokenize_words

    out = []
    for text in TEXTS:
        inp = tokenize_words(clf.lm.tokenizer, text)
        variants = [inp.ids] + [perturb(inp, w, "delete", []) for w in range(len(inp.words))]
        out.append(list(clf.scores(variants, batch_tokens)))
    return out


@pytest.mark.parametrize("reuse_prefix", [True, False], ids=["prefix-cache", "no-cache"])
def test_prompted_classifier_equals_one_input_at_a_time(lm, reuse_prefix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = PromptedClassifier(lm, WORDS, reuse_prefix=reuse_prefix)
        ref = _prompted_reference(clf, lm)
        for budget in (4096, 1):
            got = _prompted_scores(clf, budget)
            for r_text, g_text in zip(ref, got, strict=True):
                np.testing.assert_allclose(np.stack(g_text), np.stack(r_text), atol=2e-4)


def test_flip_rates_equal_one_perturbation_at_a_time(lm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = PromptedClassifier(lm, WORDS)
        res = tokenprobe.flip_rates(clf, TEXTS, batch_tokens=64)
    ref = _prompted_reference(clf, lm)
    occ = res.occurrences
    for t, rows in enumerate(ref):
        base = int(np.argmax(rows[0]))
        mine = occ[occ["text_id"] == t].sort_values("word_index")
        assert (mine["original"] == WORDS[base]).all()
        assert mine["perturbed"].tolist() == [WORDS[int(np.argmax(r))] for r in rows[1:]]


# ----------------------------------------------------------------------------- classifiers


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    from conftest import CORPUS

    return zoo.wordpiece_tokenizer(tmp_path_factory.mktemp("wp"), CORPUS + TEXTS)


def _classifier(arch: str, bpe, wordpiece):
    kind = zoo.CLASSIFIERS[arch][1]
    tok = {"wordpiece": wordpiece, "roberta": zoo.roberta_tokenizer(bpe), "bpe": bpe}[kind]
    return zoo.make_classifier(arch, copy.deepcopy(tok), device=TEST_DEVICE)


def _own_logits(lm, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return (
            lm.model(input_ids=torch.tensor([ids], device=lm.device))
            .logits[0]
            .float()
            .cpu()
            .numpy()
        )


@pytest.mark.parametrize("arch", list(zoo.CLASSIFIERS))
def test_sequence_classifier_equals_its_own_tokenizer_call(arch, bpe, wordpiece):
    lm = _classifier(arch, bpe, wordpiece)
    clf = SequenceClassifier(lm)
    res = tokenprobe.flip_rates(clf, TEXTS, batch_tokens=64)
    occ = res.occurrences
    for t, text in enumerate(TEXTS):
        ids, groups = _words(lm.tokenizer, text, add_special=True)
        variants = [ids] + [[x for i, x in enumerate(ids) if i not in g] for g in groups]
        ref = np.stack([_own_logits(lm, v) for v in variants])
        inp = clf.encode(text)
        assert inp.ids == ids  # the tokenizer's special tokens are kept
        from tokenprobe.analyses.flips import perturb

        mine = [inp.ids] + [perturb(inp, w, "delete", []) for w in range(len(inp.words))]
        assert mine == variants
        for budget in (4096, 1):
            np.testing.assert_allclose(clf.scores(mine, budget), ref, atol=2e-4)
        rows = occ[occ["text_id"] == t].sort_values("word_index")
        assert (rows["original"] == LABELS[int(ref[0].argmax())]).all(), (arch, text)
        assert rows["perturbed"].tolist() == [LABELS[int(r.argmax())] for r in ref[1:]]
    # the logits move with the input, so a wrong input (a lost [CLS], a shifted word) shows
    assert float(ref.std(axis=0).max()) > 1e-2


def test_classifier_without_pad_token_in_its_config(bpe):
    """GPT-2's hub config has no pad_token_id: batches are padded with the tokenizer's and
    every text still gets the logits it gets alone, unpadded."""
    lm = zoo.make_classifier("gpt2", copy.deepcopy(bpe), device=TEST_DEVICE)
    lm.model.config.pad_token_id = None
    with pytest.warns(UserWarning, match="no pad_token_id"):
        clf = SequenceClassifier(lm)
    ids = [clf.encode(t).ids for t in TEXTS]
    ref = np.stack([_own_logits(lm, x) for x in ids])
    np.testing.assert_allclose(clf.scores(ids, 4096), ref, atol=2e-4)


# ----------------------------------------------------------------------------- context length


def test_context_length_is_known(lm):
    arch = _arch(lm)
    if arch in ("bloom", "mamba", "mamba2"):
        assert lm.context_length is None  # no position table, no declared limit
    else:
        assert lm.context_length == zoo.CTX


def test_every_analysis_refuses_over_long_inputs(lm):
    limit = lm.context_length
    if limit is None:
        pytest.skip("no context limit")
    long_text = "hello world " * limit
    with pytest.raises(TokenprobeError, match="context"):
        tokenprobe.logit_lens(lm, long_text)
    with pytest.raises(TokenprobeError, match="context"):
        tokenprobe.attribute(lm, long_text, target=" x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TokenprobeError, match="context"):
            tokenprobe.past_similarity(lm, long_text + " _PAUSE_", window=2)
        clf = PromptedClassifier(lm, WORDS)
        with pytest.raises(TokenprobeError, match=r"text 2 .*context"):
            tokenprobe.flip_rates(clf, ["short one", long_text])


def test_readme_lists_every_architecture_of_the_matrix():
    """The README's table is written by scripts/supported_models.py: rerun it after changing
    the zoo."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- supported-models:start -->")[1].split(
        "<!-- supported-models:end -->"
    )[0]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    expected = set(zoo.CAUSAL) | {f"{a} (sequence classifier)" for a in zoo.CLASSIFIERS}
    assert expected <= rows, sorted(expected - rows)
    assert "**fails**" not in table
    table = readme.split("<!-- seq2seq-models:start -->")[1].split("<!-- seq2seq-models:end -->")[0]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    assert set(zoo.SEQ2SEQ) <= rows, sorted(set(zoo.SEQ2SEQ) - rows)
    assert "**fails**" not in table and "| — |" not in table


@pytest.mark.parametrize("arch", ["roberta", "bert", "gpt2"])
def test_flips_context_boundary_for_classifiers(arch, bpe, wordpiece):
    """A text of exactly the model's usable context runs; one token more is refused (RoBERTa
    counts positions after its padding index: 2 fewer than max_position_embeddings)."""
    lm = _classifier(arch, bpe, wordpiece)
    clf = SequenceClassifier(lm)
    limit = lm.context_length
    if arch == "roberta":
        assert limit == zoo.CTX - 2
    words = ["hello"]
    while len(clf.encode(" ".join(words)).ids) <= limit:
        words.append("hello")
    fits = " ".join(words[:-1])
    assert len(clf.encode(fits).ids) <= limit
    tokenprobe.flip_rates(clf, [fits], batch_tokens=4096)  # runs
    with pytest.raises(TokenprobeError, match="text 1 .*context"):
        tokenprobe.flip_rates(clf, [" ".join(words)])


def test_prompted_classifier_with_the_text_first(lm):
    """A template that starts with {text} has no prefix to cache (and, without a BOS token,
    no prefix at all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = PromptedClassifier(lm, WORDS, template="{text}\nAnswer:")
        got = clf.scores([clf.encode(t).ids for t in TEXTS], 4096)
    ref = np.stack(
        [
            _own_logits(lm, clf.prefix_ids + clf.encode(t).ids + clf.suffix_ids)[-1][
                clf.verbaliser_ids
            ]
            for t in TEXTS
        ]
    )
    np.testing.assert_allclose(got, ref, atol=2e-4)
