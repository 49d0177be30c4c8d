"""The command line matrix: every command, run through the installed `tokenprobe` executable in
a subprocess, on every kind of model it accepts (the built-in model, a causal-LM folder, a
.gguf file, a cached hub id with --offline, T5 and Marian folders for the commands whose
registration takes an encoder-decoder, and for flips sequence classifiers of each tokenizer
family), exits 0 and writes the tables the library gives in-process for the same inputs on the
same files. A classifier given to a command that needs a causal LM, or an encoder-decoder to
one that does not take it, is one line and exit status 2.

The runs start together in a few parallel subprocesses (each spends seconds importing torch and
transformers, which is most of the matrix's time); each test waits for its own run, so that a
failure names the command and the model kind.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import zoo
from conftest import CHATML, CORPUS, make_tokenizer

import tokenprobe
from tokenprobe import PromptedClassifier, SequenceClassifier, TunedLens, save_lens
from tokenprobe.analyses import ANALYSES

TOKENPROBE = Path(sys.executable).with_name("tokenprobe")
HUB_ID = "tokenprobe-test/tiny-gpt2"
PROMPT = "The quick brown fox jumps over the lazy dog."
MARKED = "Tools: hammer _PAUSE_ wrench, level _PAUSE_ pliers"
TEMPLATE = "Text: {text}\nAnswer:"
FLIPS = pd.DataFrame(
    {
        "text": ["Tools: hammer, wrench", "The quick brown fox jumps", "Hello world!"],
        "label": ["joy", "anger", "joy"],
    }
)
WORDS = "the capital of australia is canberra not sydney tools hammer wrench level pliers".split()


# ------------------------------------------------------------------------------ the model kinds


def save(lm: Any, folder: Path) -> Path:
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def write_gguf(lm: Any, path: Path) -> Path:
    """A tiny Qwen2 (tied embeddings, as the built-in SmolLM2) as an F32 .gguf file, written
    with the `gguf` package under llama.cpp's tensor names; its byte-level BPE tokenizer as
    tokens, merges and special tokens."""
    import gguf

    model, tok, cfg = lm.model, lm.tokenizer, lm.model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    special = set(tok.all_special_tokens)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_unk_token_id(tok.unk_token_id)
    writer.add_chat_template(CHATML)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for key, value in model.state_dict().items():
        if key != "lm_head.weight":  # tied: the file has none, as llama.cpp writes it
            gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            writer.add_tensor(gguf_name, value.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_lens(lm: Any, folder: Path) -> Path:
    """A tuned lens with random translators for `lm`, saved for lens-eval's --lens."""
    lens = TunedLens(lm.n_blocks, lm.model.config.hidden_size)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    save_lens(lens, folder)
    return folder


@dataclass
class Kind:
    model: str  # what --model gets
    library: str  # what tokenprobe.load gets in-process: the same files
    env: dict[str, str]  # beside the common environment
    flags: tuple[str, ...] = ()
    classifier: bool = False
    lens: str = ""  # a tuned lens for lens-eval (causal LMs)
    sae: str = ""  # a SAELens folder for features (causal LMs)
    seq2seq: bool = False  # an encoder-decoder: SEQ2SEQ_COMMANDS


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Any]:
    """Every kind's model files, the data files, and the common environment of the runs."""
    root = tmp_path_factory.mktemp("matrix")
    bpe = make_tokenizer()
    hf_home, tp_cache = root / "hf", root / "tokenprobe-cache"
    # a hub cache holding a tiny GPT-2 as a download leaves it
    repo = hf_home / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0123456789abcdef" * 3)[:40]
    save(zoo.make_causal("gpt2", bpe), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    gguf_path = write_gguf(zoo.make_causal("qwen2", bpe), root / "tiny-qwen2.gguf")
    with pytest.MonkeyPatch.context() as mp:  # converted once here, read by every run
        mp.setenv("TOKENPROBE_CACHE", str(tp_cache))
        gguf_lm = tokenprobe.load(str(gguf_path), device="cpu")
    folder = save(zoo.make_causal("llama", bpe), root / "causal-llama")
    kinds = {
        "causal-folder": Kind(str(folder), str(folder), {}),
        "gguf": Kind(str(gguf_path), str(gguf_path), {"TOKENPROBE_CACHE": str(tp_cache)}),
        "hub-offline": Kind(HUB_ID, str(snapshot), {}, flags=("--offline",)),
        "builtin": Kind("smollm2", "smollm2", {}),
    }
    for name, lm in (("causal-folder", None), ("gguf", gguf_lm), ("hub-offline", None)):
        lm = lm or tokenprobe.load(kinds[name].library, device="cpu")
        kinds[name].lens = str(random_lens(lm, root / f"lens-{name}"))
        kinds[name].sae = str(random_sae(lm, root / f"sae-{name}"))
    kinds["builtin"].sae = "builtin"
    tokenizers = {
        "wordpiece": lambda: zoo.wordpiece_tokenizer(root, CORPUS),
        "roberta": lambda: zoo.roberta_tokenizer(bpe),
        "bpe": lambda: copy.deepcopy(bpe),
    }
    for arch in SEQ2SEQ_KINDS:  # encoder-decoders: the commands that take one, and refusals
        path = str(save(zoo.make_seq2seq(arch, bpe), root / f"{arch}-seq2seq"))
        kinds[f"{arch}-seq2seq"] = Kind(path, path, {}, seq2seq=True)
    for arch in ("bert", "roberta", "llama"):  # WordPiece, byte-level BPE RoBERTa, a decoder
        lm = zoo.make_classifier(arch, tokenizers[zoo.CLASSIFIERS[arch][1]]())
        path = str(save(lm, root / f"{arch}-classifier"))
        kinds[f"{arch}-classifier"] = Kind(path, path, {}, classifier=True)
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(40)]
    (root / "train.txt").write_text("\n".join(sentences), encoding="utf-8")
    FLIPS.to_csv(root / "flips.csv", index=False)
    drop = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    # one thread each: the runs go side by side on a few cores, and tiny models gain nothing
    # from a second thread that contends with the other runs
    env.update(HF_HOME=str(hf_home), OMP_NUM_THREADS="1")
    return {"root": root, "kinds": kinds, "env": env, "tp_cache": tp_cache}


def random_sae(lm: Any, folder: Path) -> Path:
    """A random TopK autoencoder of the residual stream after block 1 (SAELens hook
    `blocks.0.hook_resid_post`), saved as a SAELens folder as train-sae writes one."""
    from tokenprobe.sae import Dictionary, SaeSite
    from tokenprobe.sae.saving import save_saelens

    width, latents = lm.require_adapter().width, 48
    g = torch.Generator().manual_seed(0)
    dictionary = Dictionary(
        w_enc=torch.randn(width, latents, generator=g) / width**0.5,
        b_enc=-0.2 * torch.rand(latents, generator=g),
        w_dec=torch.nn.functional.normalize(torch.randn(latents, width, generator=g), dim=1),
        b_dec=0.1 * torch.randn(width, generator=g),
        activation="topk",
        site=SaeSite("resid", 1),
        k=6,
    )
    save_saelens(dictionary, folder)
    return folder


# ------------------------------------------------------------------------------ the commands


@dataclass
class Command:
    argv: Callable[[dict[str, Any], Kind], list[str]]  # the flags after --model/--out
    library: Callable[[Any, dict[str, Any], Kind], Any]  # the same run in-process
    task: str = "causal-lm"


def _flips_prompted(lm: Any, f: dict[str, Any], kind: Kind) -> Any:
    classifier = PromptedClassifier(lm, ["joy", "anger"], [" the", " of"], template=TEMPLATE)
    return tokenprobe.flip_rates(classifier, list(FLIPS["text"]), list(FLIPS["label"]), buckets=2)


def _flips_classifier(lm: Any, f: dict[str, Any], kind: Kind) -> Any:
    classifier = SequenceClassifier(lm)
    return tokenprobe.flip_rates(classifier, list(FLIPS["text"]), list(FLIPS["label"]), buckets=2)


COMMANDS: dict[str, Command] = {
    "lens": Command(
        lambda f, k: ["lens", "--prompt", PROMPT, "--target", " dog", "--top-k", "3"],
        lambda lm, f, k: tokenprobe.logit_lens(lm, PROMPT, targets=[" dog"], top_k=3),
    ),
    "trace": Command(
        lambda f, k: (
            ["trace", "--prompt", PROMPT, "--target", " dog", "--subject", "quick brown"]
            + ["--samples", "2"]
        ),
        lambda lm, f, k: tokenprobe.causal_trace(
            lm, PROMPT, target=" dog", subject="quick brown", samples=2
        ),
    ),
    "trace heads": Command(
        lambda f, k: (
            ["trace", "--prompt", PROMPT, "--target", " dog", "--subject", "quick brown"]
            + ["--samples", "2", "--component", "head", "--positions", "all"]
        ),
        lambda lm, f, k: tokenprobe.causal_trace(
            lm,
            PROMPT,
            target=" dog",
            subject="quick brown",
            samples=2,
            components=["head"],
            positions="all",
        ),
    ),
    "logit-attribution": Command(
        lambda f, k: ["logit-attribution", "--prompt", PROMPT, "--target", " dog"],
        lambda lm, f, k: tokenprobe.logit_attribution(lm, PROMPT, target=" dog"),
    ),
    "attention": Command(
        lambda f, k: ["attention", "--prompt", PROMPT, "--to", " fox"],
        lambda lm, f, k: tokenprobe.attention(lm, PROMPT, to=" fox"),
    ),
    "attribute": Command(
        lambda f, k: (
            ["attribute", "--prompt", PROMPT, "--target", " dog"]
            + ["--span", "quick brown", "--span", "lazy"]
        ),
        lambda lm, f, k: tokenprobe.attribute(
            lm, PROMPT, target=" dog", features=["quick brown", "lazy"]
        ),
    ),
    "similarity": Command(
        lambda f, k: ["similarity", "--text", MARKED, "--window", "3"],
        lambda lm, f, k: tokenprobe.past_similarity(lm, MARKED, window=3),
    ),
    "tune-lens": Command(
        lambda f, k: (
            ["tune-lens", "--data", str(f["root"] / "train.txt"), "--tokens", "256"]
            + ["--seq-len", "16", "--batch", "4"]
        ),
        lambda lm, f, k: tokenprobe.tune_lens(
            lm, str(f["root"] / "train.txt"), tokens=256, seq_len=16, batch_size=4
        ),
    ),
    "lens-eval": Command(
        lambda f, k: (
            ["lens-eval", "--lens", k.lens, "--data", str(f["root"] / "train.txt")]
            + ["--tokens", "64", "--seq-len", "16"]
        ),
        lambda lm, f, k: tokenprobe.lens_eval(
            lm, k.lens, str(f["root"] / "train.txt"), tokens=64, seq_len=16
        ),
    ),
    "features": Command(
        lambda f, k: ["features", "--sae", k.sae, "--prompt", PROMPT, "--target", " dog"],
        lambda lm, f, k: tokenprobe.features(lm, PROMPT, sae=k.sae, target=" dog"),
    ),
    "train-sae": Command(
        lambda f, k: (
            ["train-sae", "--data", str(f["root"] / "train.txt"), "--layer", "1"]
            + ["--latents", "32", "--k", "4", "--tokens", "512", "--seq-len", "16"]
            + ["--batch", "8", "--eval-tokens", "64"]
        ),
        lambda lm, f, k: tokenprobe.train_sae(
            lm,
            str(f["root"] / "train.txt"),
            layer=1,
            latents=32,
            k=4,
            tokens=512,
            seq_len=16,
            batch_size=8,
            eval_tokens=64,
            progress=False,
        ),  # fmt: skip
    ),
    "flips": Command(
        lambda f, k: (
            ["flips", "--data", str(f["root"] / "flips.csv"), "--buckets", "2"]
            + ["--labels", "joy= the", "anger= of", "--template", TEMPLATE]
        ),
        _flips_prompted,
    ),
    "flips on a classifier": Command(
        lambda f, k: ["flips", "--data", str(f["root"] / "flips.csv"), "--buckets", "2"],
        _flips_classifier,
        task="sequence-classification",
    ),
    "flips --ray": Command(
        lambda f, k: (
            ["flips", "--data", str(f["root"] / "flips.csv"), "--buckets", "2"]
            + ["--ray", "--workers", "1"]
        ),
        _flips_classifier,
        task="sequence-classification",
    ),
}
# an encoder-decoder's runs: the source, then the decoder's start token and DECODER_TEXT
DECODER_TEXT = "The quick brown"
SEQ2SEQ_COMMANDS: dict[str, Command] = {
    "lens": Command(
        lambda f, k: (
            ["lens", "--prompt", PROMPT, "--decoder-text", DECODER_TEXT]
            + ["--target", " fox", "--top-k", "3"]
        ),
        lambda lm, f, k: tokenprobe.logit_lens(
            lm, PROMPT, decoder_text=DECODER_TEXT, targets=[" fox"], top_k=3
        ),
    ),
    "trace": Command(
        lambda f, k: (
            ["trace", "--prompt", PROMPT, "--decoder-text", DECODER_TEXT]
            + ["--target", " fox", "--subject", "quick brown", "--samples", "2"]
        ),
        lambda lm, f, k: tokenprobe.causal_trace(
            lm, PROMPT, decoder_text=DECODER_TEXT, target=" fox", subject="quick brown", samples=2
        ),
    ),
    "similarity": COMMANDS["similarity"],
    "flips": COMMANDS["flips"],
    "attribute": Command(  # the source's tokens and the target's prefix
        lambda f, k: (
            ["attribute", "--prompt", PROMPT, "--target", "The quick brown fox"]
            + ["--span", "quick brown"]
        ),
        lambda lm, f, k: tokenprobe.attribute(
            lm, PROMPT, target="The quick brown fox", features=["quick brown"]
        ),
    ),
    "attention": Command(  # cross-attention: decoder positions x source tokens
        lambda f, k: (
            ["attention", "--prompt", PROMPT, "--decoder-text", DECODER_TEXT] + ["--to", " fox"]
        ),
        lambda lm, f, k: tokenprobe.attention(lm, PROMPT, decoder_text=DECODER_TEXT, to=" fox"),
    ),
}
SEQ2SEQ_KINDS = ("t5", "marian")
# the commands whose registration declares they take an encoder-decoder, and the rest
TAKE_SEQ2SEQ = [a.command for a in ANALYSES.values() if a.seq2seq]
REFUSE_SEQ2SEQ = [a.command for a in ANALYSES.values() if not a.seq2seq]
CAUSAL_ONLY = ["lens", "trace", "attribute", "similarity", "tune-lens", "lens-eval"]
CAUSAL_ONLY += ["trace heads", "logit-attribution", "attention", "features", "train-sae"]
CAUSAL_KINDS = ["causal-folder", "gguf", "hub-offline"]
CLASSIFIER_KINDS = ["bert-classifier", "roberta-classifier", "llama-classifier"]

# (command, kind): every command on every kind it accepts. The fast ones: every command on a
# causal-LM folder; lens on the .gguf file and the cached hub id, similarity (which adds a
# marker token) on the tied .gguf model, flips (which reads the config itself) on the hub id;
# flips on each classifier. The rest is marked slow (each run costs seconds of imports): the
# other commands on the .gguf file and the hub id, the built-in model, a Ray run.
FAST = [(c, "causal-folder") for c in [*CAUSAL_ONLY, "flips"]]
FAST += [("lens", "gguf"), ("similarity", "gguf")]
FAST += [("lens", "hub-offline"), ("flips", "hub-offline")]
FAST += [("flips", k) for k in CLASSIFIER_KINDS]
RUNS = FAST + [(c, k) for k in CAUSAL_KINDS for c in [*CAUSAL_ONLY, "flips"] if (c, k) not in FAST]
RUNS += [("lens", "builtin"), ("features", "builtin"), ("flips --ray", "roberta-classifier")]
# a classifier given to each command that needs a causal LM, the tokenizer families in turn
REFUSALS = [(c, CLASSIFIER_KINDS[i % len(CLASSIFIER_KINDS)]) for i, c in enumerate(CAUSAL_ONLY)]
FAST_REFUSALS = [("lens", "bert-classifier"), ("lens-eval", "llama-classifier")]
SEQ2SEQ_RUNS = [(c, f"{a}-seq2seq") for a in SEQ2SEQ_KINDS for c in TAKE_SEQ2SEQ]
SEQ2SEQ_REFUSALS = [(c, f"{SEQ2SEQ_KINDS[0]}-seq2seq") for c in REFUSE_SEQ2SEQ]
RUNS += SEQ2SEQ_RUNS
FAST += [(c, k) for c, k in SEQ2SEQ_RUNS if k.startswith(SEQ2SEQ_KINDS[0])]


def case_id(case: tuple[str, str]) -> str:
    return f"{case[0]} on {case[1]}"


def cases(runs: list[tuple[str, str]], fast: list[tuple[str, str]]) -> list[Any]:
    slow = [pytest.mark.slow]
    return [pytest.param(c, id=case_id(c), marks=() if c in fast else slow) for c in runs]


def command_of(case: tuple[str, str], files: dict[str, Any]) -> Command:
    """flips runs a classifier as one (SequenceClassifier), a causal LM as a prompted one."""
    command, kind_name = case
    if files["kinds"][kind_name].seq2seq and command in SEQ2SEQ_COMMANDS:
        return SEQ2SEQ_COMMANDS[command]
    if command == "flips" and files["kinds"][kind_name].classifier:
        return COMMANDS["flips on a classifier"]
    return COMMANDS[command]


def argv_of(case: tuple[str, str], files: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    kind = files["kinds"][case[1]]
    runner = command_of(case, files)
    lens_kind = files["kinds"]["causal-folder"]  # lens-eval of a classifier: a lens that exists
    args = runner.argv(files, lens_kind if kind.classifier or kind.seq2seq else kind)
    out = files["root"] / "out" / case_id(case).replace(" ", "_").replace("/", "_")
    argv = [*args, "--model", kind.model, "--device", "cpu", "--out", str(out), *kind.flags]
    env = {**files["env"], **kind.env}
    if case[1] == "builtin":  # as the library runs it here: SmolLM2's sums depend on threads
        env.pop("OMP_NUM_THREADS")
    if "--offline" not in kind.flags:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # nothing connects
    return argv, env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOKENPROBE), *argv], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def launched(request, files):
    """Every selected run of this module, started at once in a few parallel subprocesses."""
    if not TOKENPROBE.is_file():
        pytest.skip(f"no tokenprobe executable beside {sys.executable}: pip install -e .")
    selected = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module.__name__ == __name__ and "case" in params:
            selected.append(params["case"])
    workers = max(2, min(4, (os.cpu_count() or 2) + 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    futures: dict[tuple[str, str], Future] = {}
    ray = importlib.util.find_spec("ray") is not None
    for case in dict.fromkeys(selected):
        if ray or "--ray" not in case[0]:
            futures[case] = pool.submit(_run, *argv_of(case, files))
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def library_result(case: tuple[str, str], files: dict[str, Any], monkeypatch) -> Any:
    kind, runner = files["kinds"][case[1]], command_of(case, files)
    for key, value in kind.env.items():  # the run's cache of converted models
        monkeypatch.setenv(key, value)
    lm = tokenprobe.load(kind.library, device="cpu", task=runner.task)  # fresh: markers change it
    return runner.library(lm, files, kind)


def assert_tables_equal(out: Path, expected: Any) -> None:
    for name, frame in expected.tables().items():
        path = out / f"{name}.parquet"
        assert path.is_file(), f"{path} was not written"
        written = pd.read_parquet(path)
        staged = out.parent / f".{out.name}-{name}.expected.parquet"  # through Parquet as well
        frame.to_parquet(staged, index=False)
        pd.testing.assert_frame_equal(
            written, pd.read_parquet(staged), check_exact=False, rtol=1e-5, atol=1e-6
        )


@pytest.mark.filterwarnings("ignore:the clean and corrupted scores are close")  # tiny models
@pytest.mark.filterwarnings("ignore:marker '_PAUSE_' was not in the tokenizer")
@pytest.mark.filterwarnings("ignore:the target ' fox' is implausible")  # random encoder-decoders
@pytest.mark.parametrize("case", cases(RUNS, FAST))
def test_the_command_on_the_model_kind_equals_the_library(case, files, launched, monkeypatch):
    if "--ray" in case[0]:
        pytest.importorskip("ray")
    proc = launched[case].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    argv, _ = argv_of(case, files)
    out = Path(argv[argv.index("--out") + 1])
    assert (out / "meta.json").is_file()
    assert_tables_equal(out, library_result(case, files, monkeypatch))


@pytest.mark.parametrize("case", cases(REFUSALS, FAST_REFUSALS))
def test_a_classifier_given_to_a_causal_lm_command_is_one_line(case, files, launched):
    proc = launched[case].result()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("tokenprobe: error: "), proc.stderr[-3000:]
    kind = files["kinds"][case[1]]
    assert f"{kind.model} is a sequence classifier (" in lines[0]
    assert "not a causal language model" in lines[0] and "tokenprobe flips" in lines[0]


def test_every_command_that_takes_an_encoder_decoder_has_a_run_here():
    missing = [c for c in TAKE_SEQ2SEQ if c not in SEQ2SEQ_COMMANDS]
    assert not missing, f"add {missing} to SEQ2SEQ_COMMANDS: their registrations take seq2seq"


@pytest.mark.parametrize("case", cases(SEQ2SEQ_REFUSALS, SEQ2SEQ_REFUSALS[:1]))
def test_an_encoder_decoder_given_to_a_command_that_does_not_take_one_is_one_line(
    case, files, launched
):
    proc = launched[case].result()
    lines = [x for x in proc.stderr.strip().splitlines() if "memory:" not in x]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("tokenprobe: error: "), proc.stderr[-3000:]
    kind = files["kinds"][case[1]]
    assert f"{kind.model} is an encoder-decoder model (" in lines[0]
    assert "does not support encoder-decoder models yet" in lines[0]
