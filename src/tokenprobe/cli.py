"""The `tokenprobe` command: a thin layer over the public API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .analyses.flips import DEFAULT_TEMPLATE as DEFAULT_FLIP_TEMPLATE
from .analyses.lens import MAX_TOP_K
from .batching import _is_oom
from .checkpoint import interrupted_note, kept_until_saved
from .errors import TokenprobeError
from .model import BUILTIN_MODELS, DEFAULT_MODEL, offline
from .results import FIGURE_FORMATS, LensResult, check_writable
from .text import DEFAULT_MARKER

log = logging.getLogger("tokenprobe")

BUG_REPORT = "report it on the tokenprobe issue tracker with that traceback"
DEBUG_ENV = "TOKENPROBE_DEBUG"
DEBUG_HELP = f"on an error, print the Python traceback as well as the one-line message (or set {DEBUG_ENV}=1)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `tokenprobe: error: ...` and exit status 2, like every
    other bad input (the usage is one --help away)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"tokenprobe: error: {message} (see {self.prog} --help)\n")


def _read_text_file(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TokenprobeError(f"{flag} {path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise TokenprobeError(f"{flag} {path} is not UTF-8 text: save it as UTF-8") from exc
    except OSError as exc:
        raise TokenprobeError(f"{flag} {path}: cannot read it ({exc.strerror})") from exc


def _positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _top_k(text: str) -> int:
    """argparse type for --top-k: 1..MAX_TOP_K (each kept token is three columns per cell)."""
    value = _positive_int(text)
    if value > MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TOP_K}, not {value}")
    return value


def _check_can_write(path: Path, flag: str) -> None:
    """Fail now, not after the model has run, when `path` (a folder or file to be written)
    cannot be created: create and remove a probe file in its nearest existing ancestor."""
    ancestor = path.expanduser().absolute()
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TokenprobeError(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tokenprobe-write-check-", dir=ancestor)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise TokenprobeError(
            f"{flag} {path}: cannot write in {ancestor} ({exc.strerror or exc}): "
            "choose a folder you can write to"
        ) from exc


def _common(
    parser: argparse.ArgumentParser,
    *,
    default_out: str,
    batch_tokens: int | None = 4096,
    dtype_auto: str = "bfloat16 on a GPU, float32 on CPU",
) -> None:
    """Model, device, output and (where `batch_tokens` is given) batching flags, the same for
    every command; `dtype_auto` says what --dtype auto means for this one."""
    g = parser.add_argument_group("model and output")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in name ({', '.join(BUILTIN_MODELS)}), a local Hugging Face folder, a .gguf file, "
        f"or a hub id already in the local cache (default: {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--device", default="auto", help="auto (GPU if any, else CPU), cpu, cuda, cuda:N or mps"
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help=f"model weights' dtype; auto = {dtype_auto}. Statistics are always float32",
    )
    if batch_tokens is not None:
        g.add_argument(
            "--batch-tokens",
            type=_positive_int,
            default=batch_tokens,
            help=f"padded tokens per forward pass (default {batch_tokens})",
        )
    g.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    g.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    g.add_argument(
        "--format",
        nargs="+",
        default=["png"],
        choices=FIGURE_FORMATS,
        metavar="FMT",
        help="figure formats: png svg pdf (default: png)",
    )


def _prompt_flags(group: Any, *, several: bool) -> None:
    """--prompt, --prompt-file, --chat and --system, the same for every prompt-taking command."""
    group.add_argument(
        "--prompt",
        action="append" if several else "store",
        help="prompt text"
        + (" (repeat for several prompts; each gets a sub-folder)" if several else ""),
    )
    group.add_argument("--prompt-file", help="read the prompt from this UTF-8 file")
    group.add_argument(
        "--chat",
        action="store_true",
        help="wrap the prompt as a user turn in the model's chat template",
    )
    group.add_argument("--system", help="system message for --chat (default: the template's own)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tokenprobe",
        description="Token-level analysis of transformer language models. Every command writes a "
        "table (Parquet), figures and meta.json into --out.",
    )
    parser.add_argument("--version", action="version", version=f"tokenprobe {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    lens = sub.add_parser(
        "lens",
        help="logit lens: entropy and top tokens of every layer at every position",
        description="Decode every layer's hidden state at every position through the final norm and "
        "unembedding. Rows: layer 0 = embeddings, layer i = output of block i, 'output' = the model's "
        "own logits. Writes lens.parquet (one row per layer x position), lens.png and meta.json.",
    )
    _common(lens, default_out="out/lens", batch_tokens=2048)
    g = lens.add_argument_group("input")
    _prompt_flags(g, several=True)
    g.add_argument(
        "--dummy", type=int, default=0, metavar="N", help="insert N dummy marker tokens (default 0)"
    )
    g.add_argument(
        "--dummy-token",
        default=DEFAULT_MARKER,
        help=f"the dummy marker (default {DEFAULT_MARKER}); added to the tokenizer if unknown",
    )
    g.add_argument(
        "--dummy-after",
        metavar="TEXT",
        help="insert the dummies after the first TEXT (default: at the end, "
        "i.e. after the generation prompt with --chat)",
    )
    g.add_argument(
        "--dummy-before", metavar="TEXT", help="insert the dummies before the first TEXT"
    )
    g = lens.add_argument_group("lens")
    g.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="TEXT",
        help="track this token's probability and rank everywhere, e.g. --target ' Canberra' (repeatable)",
    )
    g.add_argument(
        "--top-k",
        type=_top_k,
        default=5,
        help=f"top tokens kept per cell, 1 to {MAX_TOP_K} (default 5)",
    )
    g.add_argument(
        "--memory-mb",
        type=_positive_int,
        default=None,
        help="memory for logits decoded at once (default 512 on CPU, 2048 on a GPU)",
    )
    g = lens.add_argument_group("figure")
    g.add_argument("--zoom", metavar="START:END", help="draw only positions START..END-1")
    g.add_argument(
        "--frame",
        metavar="START:END",
        help="outline positions START..END-1 (default: the dummy tokens)",
    )
    g.add_argument("--no-frame", action="store_true", help="outline nothing")

    sim = sub.add_parser(
        "similarity",
        help="past similarity: cosine between a marker token and the tokens before it, per layer",
        description="For the k-th occurrence of a marker token (e.g. _PAUSE_) and every layer (0 = embeddings, "
        "i = output of block i), the cosine similarity between the marker's hidden state and each of the "
        "--window tokens before it (or after it with --direction future); over a data set, the mean over the "
        "texts that have the k-th marker, with the count behind each cell. A marker the tokenizer lacks is "
        "added as one token (untrained embedding); a marker of several tokens (--no-add-marker) is "
        "represented by its last token. Writes similarity.parquet, similarity.png and meta.json.",
    )
    _common(sim, default_out="out/similarity")
    g = sim.add_argument_group("input")
    g.add_argument("--text", help="one text containing the marker")
    g.add_argument("--data", help="a data set (.csv, .jsonl, .parquet); averages over its texts")
    g.add_argument(
        "--text-column", default="text", help="column of --data holding the texts (default: text)"
    )
    g.add_argument(
        "--marker", default=DEFAULT_MARKER, help=f"the marker token (default {DEFAULT_MARKER})"
    )
    g.add_argument(
        "--no-add-marker",
        action="store_true",
        help="do not add the marker to the tokenizer; match its ordinary tokens and use the last one",
    )
    g.add_argument(
        "--insert-every",
        type=int,
        metavar="N",
        help="write a marker after every N tokens of each text (for texts without markers)",
    )
    g.add_argument(
        "--insert-after", metavar="TEXT", help="write a marker after each occurrence of TEXT"
    )
    g = sim.add_argument_group("similarity")
    g.add_argument(
        "--occurrence",
        type=int,
        default=1,
        metavar="K",
        help="use the K-th marker of each text (default 1)",
    )
    g.add_argument(
        "--window",
        type=int,
        default=16,
        metavar="T",
        help="how many tokens before the marker (default 16)",
    )
    g.add_argument(
        "--direction",
        choices=["past", "future"],
        default="past",
        help="compare with the tokens before (past, default) or after (future) the marker",
    )
    g.add_argument(
        "--centre",
        action="store_true",
        help="subtract each layer's mean hidden state over the text's positions before the cosine: "
        "raw residual streams are highly anisotropic (one large shared direction makes every cosine "
        "close to 1), and centring shows what a token has in common beyond that. The mean leaves out "
        "the first position, whose attention-sink activations can be 100x larger than the rest",
    )
    g.add_argument(
        "--centre-include-first",
        action="store_true",
        help="with --centre, include the first position in the mean",
    )
    _resume_flag(
        g, "continue an interrupted --data run in --out (its finished texts are kept there)"
    )

    att = sub.add_parser(
        "attribute",
        help="attribution: which input tokens or spans drive each output token",
        description="Attributes each target row's score (its log-probability under teacher forcing) to input "
        "features: the prompt's tokens, or the --span substrings. The target is --target (given) or the "
        "model's greedy continuation (--generate N). Methods: ablation and occlusion give f(x) - f(x without "
        "the feature); shapley averages marginal contributions over sampled permutations (antithetic pairs; "
        "exact enumeration when --samples >= features!); saliency, input_x_gradient and integrated_gradients "
        "act on the prompt's embedding-layer output and are summed over a feature's tokens. Writes "
        "attr.parquet, attr.png and meta.json.",
    )
    _common(
        att,
        default_out="out/attr",
        dtype_auto="float32 everywhere (bfloat16 rounding is a sizeable part of small attributions)",
    )
    g = att.add_argument_group("input")
    _prompt_flags(g, several=False)
    g.add_argument("--target", help="the continuation to attribute (scored by teacher forcing)")
    g.add_argument(
        "--generate",
        type=int,
        metavar="N",
        help="attribute the model's greedy continuation of N tokens",
    )
    g.add_argument(
        "--span",
        action="append",
        metavar="TEXT",
        help="a substring of the prompt to use as one feature (repeatable; default: every prompt token)",
    )
    g.add_argument(
        "--target-span",
        action="append",
        metavar="TEXT",
        help="a substring of the target to use as one row (repeatable; default: every target token)",
    )
    g = att.add_argument_group("method")
    g.add_argument(
        "--method",
        default="ablation",
        metavar="NAME",
        help="ablation (default), shapley, occlusion, saliency, input_x_gradient, integrated_gradients",
    )
    g.add_argument(
        "--baseline",
        default="remove",
        help="what replaces an ablated feature: remove (default), pad, unk, mask, or any text",
    )
    g.add_argument(
        "--samples", type=int, default=64, help="shapley: permutations sampled (default 64)"
    )
    g.add_argument("--seed", type=int, default=0, help="shapley: random seed (default 0)")
    g.add_argument("--window", type=int, default=3, help="occlusion: window in tokens (default 3)")
    g.add_argument("--stride", type=int, default=1, help="occlusion: stride in tokens (default 1)")
    g.add_argument(
        "--steps",
        type=int,
        default=32,
        help="integrated_gradients: Gauss-Legendre steps (default 32)",
    )
    g.add_argument(
        "--ig-baseline",
        default="unk",
        choices=["unk", "pad", "zero"],
        help="integrated_gradients: embedding the path starts from (default unk; zero rarely converges "
        "in RMSNorm models)",
    )
    g.add_argument(
        "--score",
        default="logprob",
        choices=["logprob", "prob"],
        help="a row's score: log-probability (default) or probability",
    )
    _resume_flag(
        g, "continue an interrupted run in --out (its scored inputs and steps are kept there)"
    )

    flips = sub.add_parser(
        "flips",
        help="flip rates: which words, at which relative position, flip a classifier's prediction",
        description="For every word occurrence of every text: perturb it (delete by default), re-classify, and "
        "record whether the predicted label changed. Rates per (class, word, position bucket), bucket = "
        "floor(B * i / n) for the i-th of n words, with Wilson 95% intervals. The classifier is a sequence "
        "classifier (a model with a classification head) or a causal LM used as a prompted classifier: the "
        "template with the text in it, and one verbaliser per label; the prediction is the argmax of the "
        "verbalisers' next-token scores, each verbaliser counting by its first token. Writes flips.parquet "
        "(one row per word occurrence), rates.parquet, flips_<class>.png per class and meta.json.",
    )
    _common(flips, default_out="out/flips")
    g = flips.add_argument_group("data")
    g.add_argument(
        "--data", required=True, help="a data set (.csv, .jsonl, .parquet) or sample:emotion"
    )
    g.add_argument("--text-column", default="text", help="column holding the texts (default: text)")
    g.add_argument(
        "--label-column", help="column holding gold labels (default: label, when present)"
    )
    g.add_argument(
        "--limit", type=_positive_int, metavar="N", help="use only the first N texts (at least 1)"
    )
    g = flips.add_argument_group("classifier")
    g.add_argument(
        "--labels",
        nargs="+",
        metavar="LABEL",
        help="at least two label names, or label=verbaliser pairs for a prompted classifier (default: "
        "the model's labels, or the labels found in --label-column)",
    )
    g.add_argument(
        "--template",
        default=None,
        help="prompted classifier template with {text} once (and optionally {labels}); default: "
        + repr(DEFAULT_FLIP_TEMPLATE),
    )
    g.add_argument(
        "--chat",
        action="store_true",
        help="render the template as a user turn of the chat template",
    )
    g.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="run the whole prompt for every input instead of reusing the cached prefix (slower; same result)",
    )
    g = flips.add_argument_group("perturbation and figure")
    g.add_argument(
        "--perturb",
        nargs="+",
        default=["delete"],
        metavar="KIND",
        help="delete (default), mask (the mask or unk token), or filler WORD",
    )
    g.add_argument(
        "--buckets",
        type=_positive_int,
        default=10,
        help="relative position buckets, at least 1 (default 10)",
    )
    g.add_argument(
        "--group",
        choices=["predicted", "gold"],
        default="predicted",
        help="group texts by the prediction on the unperturbed text (default) or by gold label",
    )
    g.add_argument(
        "--top", type=_positive_int, default=40, help="words per heatmap, at least 1 (default 40)"
    )
    g.add_argument(
        "--rank",
        choices=["support", "rate", "frequency"],
        default="support",
        help="support: Wilson lower bound of the word's flip rate (default); rate: flip rate of words with "
        "at least --min-count occurrences; frequency: occurrences",
    )
    g.add_argument(
        "--min-count",
        type=_positive_int,
        default=3,
        help="cells with fewer occurrences are masked; at least 1 (default 3)",
    )
    _resume_flag(g, "continue an interrupted run in --out (its finished texts are kept there)")

    rep = sub.add_parser(
        "report",
        help="one self-contained interactive HTML page of every result under a folder",
        description="Collects every saved result under FOLDER (any mix of lens, similarity, attribute and flips) "
        "into one HTML file that opens offline: hover a cell for its numbers, wheel to zoom the long axis, "
        "drag to pan. Prints the file's path and size.",
    )
    rep.add_argument("folder", help="folder holding results (searched recursively)")
    rep.add_argument("--html", help="the page to write (default: FOLDER/report.html)")
    rep.add_argument("--title", default="tokenprobe report", help="page title")
    rep.add_argument("--overwrite", action="store_true", help="replace an existing page")

    demo = sub.add_parser(
        "demo",
        help="run every analysis on the built-in model with the demo inputs, then write the HTML report",
        description="Logit lens (two prompts), past similarity (raw and centred), attribution (a few-shot arithmetic "
        "prompt), flip rates (200 sample texts) and report.html in --out, on the built-in model: about 3 minutes on 2 cores.",
    )
    _common(demo, default_out="out/demo", batch_tokens=None)
    for command in sub.choices.values():  # --debug after the command too (SUPPRESS: no override)
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


def _configure_output() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("tokenprobe: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    warnings.showwarning = lambda message, category, *a, **k: print(
        f"tokenprobe: warning: {message}", file=sys.stderr
    )
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _plot_options(args: argparse.Namespace) -> dict[str, Any]:
    frame: Any = False if args.no_frame else args.frame
    return {"zoom": args.zoom, "frame": frame}


def cmd_lens(args: argparse.Namespace) -> int:
    from .analyses.lens import logit_lens
    from .model import load
    from .plots import _clip_range, parse_range

    prompts = list(args.prompt or [])
    if args.prompt_file:
        prompts.append(_read_text_file(args.prompt_file, "--prompt-file"))
    if not prompts:
        raise TokenprobeError("no prompt: give --prompt TEXT or --prompt-file FILE")
    for flag, value in (("--zoom", args.zoom), ("--frame", args.frame)):
        parse_range(value, flag)  # fail on a malformed range before loading the model
    outs = (
        [Path(args.out)]
        if len(prompts) == 1
        else [Path(args.out) / f"prompt_{i + 1:02d}" for i in range(len(prompts))]
    )
    for out in outs:  # before the model runs, not after
        check_writable(out, LensResult.files(args.format), args.overwrite)
        _check_can_write(out, "--out")
    lm = load(args.model, device=args.device, dtype=args.dtype)
    results = logit_lens(
        lm,
        prompts,
        chat=args.chat,
        system=args.system,
        dummy=args.dummy,
        dummy_token=args.dummy_token,
        dummy_after=args.dummy_after,
        dummy_before=args.dummy_before,
        targets=args.target,
        top_k=args.top_k,
        batch_tokens=args.batch_tokens,
        memory_mb=args.memory_mb,
    )
    assert isinstance(results, list)
    for out, result in zip(outs, results, strict=True):
        for flag, value in (("--zoom", args.zoom), ("--frame", args.frame)):
            if value:
                _clip_range(parse_range(value, flag), result.n_positions, flag)
        _save_and_report(result, out, args, plot_options=_plot_options(args))
    return 0


def _resume_flag(group: Any, help_text: str) -> None:
    """--resume, for the commands that keep their finished work in OUT/*.partial as they go."""
    group.add_argument("--resume", action="store_true", help=help_text)


def check_unfinished_or_writable(
    out: Path, partial: str, names: Iterable[str], args: argparse.Namespace
) -> None:
    """Before long work: --resume with an unfinished run in `out` goes on; anything else must
    not replace finished outputs unless --overwrite (so --resume never reruns over them)."""
    if not (args.resume and (out / partial).is_dir()):
        check_writable(out, names, args.overwrite)
    _check_can_write(out, "--out")


def _save_and_report(result: Any, out: Path, args: argparse.Namespace, **save_options: Any) -> None:
    """Save `result` in the --format formats and print its summary and files. A --resume run
    replaces the outputs of the run it finishes."""
    overwrite = args.overwrite or getattr(args, "resume", False)
    written = result.save(out, formats=args.format, overwrite=overwrite, **save_options)
    print(result.summary())
    for what, path in written.items():
        print(f"  {what:>5}: {path}")


def cmd_similarity(args: argparse.Namespace) -> int:
    from .analyses.similarity import PARTIAL, past_similarity
    from .data import read_texts
    from .model import load
    from .results import SimilarityResult

    if (args.text is None) == (args.data is None):
        raise TokenprobeError("give one of --text TEXT or --data FILE")
    if args.resume and args.data is None:
        raise TokenprobeError(
            "--resume continues a --data run; a single --text is not checkpointed"
        )
    texts: str | list[str] = (
        args.text if args.text is not None else read_texts(args.data, args.text_column)
    )
    out = Path(args.out)
    check_unfinished_or_writable(out, PARTIAL, SimilarityResult.files(args.format), args)
    lm = load(args.model, device=args.device, dtype=args.dtype)
    result = past_similarity(
        lm,
        texts,
        marker=args.marker,
        occurrence=args.occurrence,
        window=args.window,
        centre=args.centre,
        centre_skip_first=not args.centre_include_first,
        direction=args.direction,
        insert_every=args.insert_every,
        insert_after=args.insert_after,
        add_marker=not args.no_add_marker,
        batch_tokens=args.batch_tokens,
        checkpoint=out if args.data is not None else None,
        resume=args.resume,
    )
    if args.data:
        result.meta["data"] = args.data
    _save_and_report(result, out, args)
    return 0


def _attribution_dtype(dtype: str) -> str:
    """--dtype for attribution: scores are differences of log-probabilities, which bfloat16
    rounds by about as much as a small attribution, so auto means float32, on a GPU too."""
    return "float32" if dtype == "auto" else dtype


def cmd_attribute(args: argparse.Namespace) -> int:
    from .analyses.attribution import METHODS, PARTIAL, attribute
    from .model import load
    from .results import AttributionResult

    if args.method not in METHODS:
        raise TokenprobeError(f"unknown method {args.method!r}: use one of {', '.join(METHODS)}")
    if (args.prompt is None) == (args.prompt_file is None):
        raise TokenprobeError("give one of --prompt TEXT or --prompt-file FILE")
    prompt = (
        args.prompt
        if args.prompt is not None
        else _read_text_file(args.prompt_file, "--prompt-file")
    )
    out = Path(args.out)
    check_unfinished_or_writable(out, PARTIAL, AttributionResult.files(args.format), args)
    lm = load(args.model, device=args.device, dtype=_attribution_dtype(args.dtype))
    result = attribute(
        lm,
        prompt,
        target=args.target,
        generate=args.generate,
        features=args.span,
        target_spans=args.target_span,
        method=args.method,
        baseline=args.baseline,
        samples=args.samples,
        seed=args.seed,
        window=args.window,
        stride=args.stride,
        steps=args.steps,
        ig_baseline=args.ig_baseline,
        score=args.score,
        chat=args.chat,
        system=args.system,
        batch_tokens=args.batch_tokens,
        checkpoint=out,
        resume=args.resume,
    )
    _save_and_report(result, out, args)
    return 0


def _is_sequence_classifier(name: str) -> bool:
    """Does `name` (a folder or cached hub id) hold a model with a classification head?"""
    from .model import BUILTIN_MODELS

    if name in BUILTIN_MODELS or name.lower().endswith(".gguf"):
        return False
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return False  # load() will say what is wrong with the name
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def build_classifier(args: argparse.Namespace, gold: list[str] | None) -> Any:
    """A sequence classifier or a prompted classifier, from the command's flags."""
    from .analyses.flips import PromptedClassifier, SequenceClassifier
    from .model import load

    pairs = [
        label.split("=", 1) if "=" in label else [label, None] for label in (args.labels or [])
    ]
    names = [p[0] for p in pairs]
    if names and len(set(names)) < 2:
        raise TokenprobeError(
            f"--labels names {len(set(names))} label: a classifier needs at least two labels to "
            "flip between (e.g. --labels joy sadness)"
        )
    if _is_sequence_classifier(args.model):
        lm = load(args.model, device=args.device, dtype=args.dtype, task="sequence-classification")
        return SequenceClassifier(lm, names or None)
    if not names:
        if gold is None:
            raise TokenprobeError(
                "give the labels with --labels (e.g. --labels anger joy optimism sadness)"
            )
        names = sorted(set(gold))
        if len(names) < 2:
            raise TokenprobeError(
                f"every text used from --data is labelled {names[0]!r}: a one-class classifier can never "
                "flip; pass --labels with at least two labels (e.g. --labels joy sadness)"
            )
        pairs = [[n, None] for n in names]
    verbalisers = [v if v is not None else f" {n}" for n, v in pairs]
    lm = load(args.model, device=args.device, dtype=args.dtype)
    return PromptedClassifier(
        lm,
        names,
        verbalisers,
        template=args.template or DEFAULT_FLIP_TEMPLATE,
        chat=args.chat,
        reuse_prefix=not args.no_prefix_cache,
    )


def cmd_flips(args: argparse.Namespace) -> int:
    from .analyses.flips import PARTIAL, check_template, flip_rates
    from .data import read_table, require_column
    from .results import FlipResult

    how, *rest = args.perturb
    if len(rest) > 1 or (how != "filler" and rest) or (how == "filler" and not rest):
        raise TokenprobeError("--perturb takes delete, mask, or filler WORD")
    if args.template is not None:  # before the model loads
        check_template(args.template)
    frame = read_table(args.data)
    require_column(frame, args.data, args.text_column, "--text-column")
    label_column = args.label_column or ("label" if "label" in frame.columns else None)
    if label_column is not None:
        require_column(frame, args.data, label_column, "--label-column")
    frame = frame[frame[args.text_column].notna()]
    if args.limit is not None:
        frame = frame.head(args.limit)
    if frame.empty:
        raise TokenprobeError(f"--data {args.data} has no texts in column {args.text_column!r}")
    texts = [str(t) for t in frame[args.text_column]]
    gold = [str(g) for g in frame[label_column]] if label_column is not None else None
    out = Path(args.out)
    check_unfinished_or_writable(out, PARTIAL, FlipResult.files(args.format), args)
    classifier = build_classifier(args, gold)
    result = flip_rates(
        classifier,
        texts,
        gold,
        perturbation=how,
        filler=rest[0] if rest else None,
        buckets=args.buckets,
        group=args.group,
        batch_tokens=args.batch_tokens,
        checkpoint=out,
        resume=args.resume,
    )
    result.meta["data"] = args.data
    plot_options = {"top": args.top, "rank": args.rank, "min_count": args.min_count}
    _save_and_report(result, out, args, plot_options=plot_options)
    return 0


def _check_report_path(html_path: Path, overwrite: bool, flag: str) -> None:
    """Before collecting (or running) anything: the page can be written where it is asked for."""
    from .report import check_page_path

    check_page_path(html_path, overwrite)
    _check_can_write(html_path, flag)


def _write_report(folder: Path, html_path: Path, title: str, overwrite: bool) -> Path:
    from .report import collect, write_report

    found = collect(folder)
    path = write_report([r for _, r in found], html_path, title=title, overwrite=overwrite)
    size = path.stat().st_size
    print(f"report of {len(found)} result(s): {path} ({size / 2**20:.1f} MB)")
    return path


def cmd_report(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    html_path = Path(args.html) if args.html else folder / "report.html"
    if folder.is_dir():  # else collect() says what is wrong with FOLDER
        _check_report_path(html_path, args.overwrite, "--html")
    _write_report(folder, html_path, args.title, args.overwrite)
    return 0


def demo_specs() -> dict[str, list[dict[str, Any]]]:
    """The demo's inputs per analysis, shipped in the package."""
    path = resources.files("tokenprobe").joinpath("data/demo.json")
    return json.loads(path.read_text(encoding="utf-8"))


def cmd_demo(args: argparse.Namespace) -> int:
    from .analyses.attribution import attribute
    from .analyses.flips import PromptedClassifier, flip_rates
    from .analyses.lens import logit_lens
    from .analyses.similarity import past_similarity
    from .data import read_table
    from .model import load
    from .results import AttributionResult, FlipResult, LensResult, SimilarityResult

    out = Path(args.out)
    specs = demo_specs()
    if out.exists() and not out.is_dir():
        raise TokenprobeError(f"--out {out} is a file, not a folder: choose another --out")
    kinds = {
        "lens": LensResult,
        "similarity": SimilarityResult,
        "attribution": AttributionResult,
        "flips": FlipResult,
    }
    for kind, cls in kinds.items():  # before the model runs, not after
        for spec in specs[kind]:
            check_writable(out / spec["name"], cls.files(args.format), args.overwrite)
    _check_report_path(out / "report.html", args.overwrite, "--out")
    lm = load(args.model, device=args.device, dtype=args.dtype)
    for spec in specs["lens"]:
        result = logit_lens(
            lm,
            spec["prompt"],
            chat=spec.get("chat", False),
            dummy=spec.get("dummy", 0),
            targets=spec.get("targets", []),
        )
        assert not isinstance(result, list)
        _save_and_report(result, out / spec["name"], args)
    for spec in specs["similarity"]:
        sim = past_similarity(
            lm,
            spec["text"],
            marker=spec["marker"],
            occurrence=spec["occurrence"],
            window=spec["window"],
            centre=spec["centre"],
        )
        _save_and_report(sim, out / spec["name"], args)
    # on a GPU auto loads bfloat16: attribution gets a float32 copy, as `attribute` would
    att_lm = lm
    if specs["attribution"] and args.dtype == "auto" and str(lm.dtype) != "torch.float32":
        att_lm = load(args.model, device=args.device, dtype=_attribution_dtype(args.dtype))
    for spec in specs["attribution"]:
        prompt = (
            resources.files("tokenprobe").joinpath(spec["prompt_file"]).read_text(encoding="utf-8")
        )
        att = attribute(
            att_lm,
            prompt,
            generate=spec["generate"],
            features=spec["spans"],
            method=spec["method"],
            samples=spec["samples"],
        )
        _save_and_report(att, out / spec["name"], args)
    for spec in specs["flips"]:
        frame = read_table(spec["data"]).head(spec["limit"])
        classifier = PromptedClassifier(lm, spec["labels"])
        flips = flip_rates(
            classifier, frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()
        )
        flips.meta["data"] = f"{spec['data']} (first {spec['limit']} rows)"
        # 200 texts leave ~50 per class: cells backed by 2 occurrences are drawn too
        _save_and_report(flips, out / spec["name"], args, plot_options={"min_count": 2})
    _write_report(out, out / "report.html", "tokenprobe demo", args.overwrite)
    print(f"demo outputs are in {out}/; open {out / 'report.html'} in a browser")
    return 0


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip()


def _error_line(exc: BaseException) -> tuple[str, int]:
    """The one line a failure ends in, and the exit status: 2 for bad input (a TokenprobeError,
    a file that cannot be read or written), 1 for anything else, which is tokenprobe's fault."""
    if isinstance(exc, TokenprobeError):
        return f"tokenprobe: error: {_one_line(str(exc))}", 2
    if isinstance(exc, OSError) and exc.filename is not None:
        paths = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        why = exc.strerror or type(exc).__name__
        return f"tokenprobe: error: {paths}: {why} (check the path and its permissions)", 2
    lines = str(exc).strip().splitlines()
    first = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    if _is_oom(exc):  # one input too large for the device even alone: the user's setting
        return (
            f"tokenprobe: error: out of memory ({first}): lower --batch-tokens (and --memory-mb for "
            "the lens), use --dtype bfloat16, shorter inputs, or --device cpu",
            2,
        )
    return (
        f"tokenprobe: error: {first} (this looks like a bug in tokenprobe or an input it does not "
        f"handle; rerun with --debug for the traceback and {BUG_REPORT})",
        1,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Every failure ends in one line on stderr: exit status 2 for bad input, 1 for
    an internal error (--debug or TOKENPROBE_DEBUG=1 print the traceback too), 130 on Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_output()
    handlers = {
        "lens": cmd_lens,
        "similarity": cmd_similarity,
        "attribute": cmd_attribute,
        "flips": cmd_flips,
        "report": cmd_report,
        "demo": cmd_demo,
    }
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        # offline: no connection, even where a hub id is only looked up; kept_until_saved: a
        # checkpoint goes only once the outputs are all written
        with offline(), kept_until_saved():
            return handlers[args.command](args)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        line, status = _error_line(exc)
        print(line, file=sys.stderr)
        return status
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "resume", None) is not None:  # the commands that checkpoint
            hint = interrupted_note(Path(args.out))  # what is kept, only if something is
        print(f"tokenprobe: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
