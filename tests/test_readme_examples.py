"""Every `tokenprobe ...` example in README.md runs as written and gives a plausible result
(issue 24).

The examples are read from README.md's fenced shell blocks when the tests are collected (a `\\`
at the end of a line continues it; `#` starts a comment), so an example added there is tested
without touching this file. A shell line that is neither a `tokenprobe` command nor one of the
set-up lines in NOT_EXAMPLES fails `test_the_readme_has_an_example_of_every_command`.

Each example runs through the installed `tokenprobe` executable in a subprocess whose working
directory is a workspace folder: the README's relative `--out` folders land there, the input
files it names (cot.txt, corpus.txt, ...) are written there under those names (see INPUTS), and
the examples run in README order in the one workspace, as a reader would type them one after
the other (so two examples that write into the same `--out` fail: every command refuses to
replace results without `--overwrite`). An example that reads what an earlier one wrote (`lens
--lens lenses/smollm2` after `tune-lens --out lenses/smollm2`, `report out/`) runs after it,
also when it is selected alone.

Two tiers:

- fast: on tiny random models, each example must exit 0 and write its table (non-empty, the
  numbers finite), its figures and meta.json. Substitutions: `--model smollm2`, or no
  `--model` (whose default is smollm2), becomes a tiny Llama folder whose tokenizer was trained
  on the README's own strings (so that "Australia" and "Austria" are one token each, as in
  SmolLM2, and `--corrupted` has the prompt's length); the placeholder classifiers become a
  tiny BERT sequence classifier (see VALUES).
- slow (`-m slow`): the examples on the built-in SmolLM2, checked for a plausible result
  (PLAUSIBLE below): e.g. the traced or attributed target is among the model's likely next
  tokens, the lens's output row is the model's own prediction, a few-shot prompt gets the
  answer the README quotes. Substitutions there: only the placeholder classifier (the built-in
  model as a prompted classifier instead) and a few sizes, for time (TIME below).

Examples that need Ray run on a local cluster that the command starts itself (`ray start` and
`export RAY_ADDRESS` are left out: without RAY_ADDRESS `--ray` starts a local one), with one
worker and no GPU. Nothing here needs a network: no example names a hub id or an `hf:` data
set (VALUES would have to map it; the run is offline, so it would fail, not download).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TOKENPROBE = Path(sys.executable).with_name("tokenprobe")
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}  # a fence's info string
# a shell line's first word that is not an example, and why it is not run
NOT_EXAMPLES = {
    "make": "the Makefile's targets build virtualenvs and run whole suites",
    "pip": "installs packages",
    "ray": "starts a Ray cluster by hand; without RAY_ADDRESS, --ray starts a local one",
    "export": "points --ray at a cluster (RAY_ADDRESS); the tests use a local one",
}
COMMANDS = {
    "lens",
    "similarity",
    "attribute",
    "logit-attribution",
    "flips",
    "trace",
    "attention",
    "features",
    "train-sae",
    "tune-lens",
    "lens-eval",
    "report",
}
TIMEOUT = {"fast": 300, "slow": 900}  # seconds per example


# ------------------------------------------------------------------------------ the README


@dataclass(frozen=True)
class Example:
    line: int  # where it starts in README.md
    text: str  # as written (continuations joined)
    argv: tuple[str, ...]  # after `tokenprobe`

    @property
    def command(self) -> str:
        return self.argv[0]

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.command}"


def read_examples(text: str) -> tuple[list[Example], list[str]]:
    """The `tokenprobe` commands of the fenced shell blocks, and what could not be read."""
    examples: list[Example] = []
    problems: list[str] = []
    info: str | None = None  # inside a block: its info string
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if info is None:
                info = stripped[3:].strip().lower()
            else:
                if pending:
                    problems.append(f"line {start}: a `\\` continuation runs into the block's end")
                info, pending = None, ""
            continue
        if info not in SHELL_BLOCKS:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical, pending = pending + line, ""
        try:
            words = shlex.split(logical, comments=True)
        except ValueError as exc:
            problems.append(f"line {start}: {exc}: {logical.strip()}")
            continue
        if not words:
            continue
        if words[0] == "tokenprobe":
            examples.append(Example(start, " ".join(logical.split()), tuple(words[1:])))
        elif words[0] not in NOT_EXAMPLES:
            problems.append(
                f"line {start}: a shell line that is neither a tokenprobe example nor a known "
                f"set-up line ({', '.join(NOT_EXAMPLES)}): {logical.strip()}"
            )
    return examples, problems


EXAMPLES, PROBLEMS = read_examples(README.read_text(encoding="utf-8"))


def parse(argv: list[str] | tuple[str, ...]) -> Any:
    """The command line's own parser on argv; a bad flag raises with the parser's message."""
    import contextlib
    import io

    from tokenprobe.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(list(argv))
    except SystemExit as exc:
        raise AssertionError(f"tokenprobe {shlex.join(argv)}\n{err.getvalue().strip()}") from exc


def out_of(argv: list[str] | tuple[str, ...]) -> PurePosixPath:
    """Where a command writes: --out (or its default), or report's --html."""
    args = parse(argv)
    if args.command == "report":
        return PurePosixPath(args.html or f"{args.folder.rstrip('/')}/report.html")
    return PurePosixPath(args.out)


def inputs_of(argv: tuple[str, ...]) -> list[PurePosixPath]:
    """The values of an example that could name a path (not its --out / --html)."""
    values, skip = [], False
    for word in argv[1:]:
        if skip:
            skip = False
        elif word in ("--out", "--html"):
            skip = True
        elif not word.startswith("-") and "\n" not in word:
            values.append(PurePosixPath(word.rstrip("/") or "/"))
    return values


def depends_on(example: Example, earlier: Example) -> bool:
    """Whether `example` reads what `earlier` writes (its --out, or a folder holding it). An
    example that does not parse depends on nothing (its own test says what is wrong)."""
    try:
        written = out_of(earlier.argv)
    except AssertionError:
        return False
    if earlier.command == "report":
        return False
    return any(
        value == written or value in written.parents or written in value.parents
        for value in inputs_of(example.argv)
    )


# ------------------------------------------------------------------------------ substitutions

# What runs in place of a README value, per tier, and why. `CLASSIFIER` and `TINY` are the
# workspace's tiny model folders; `None`: as written.
TINY = "tiny-llama"
CLASSIFIER = "path/to/seq-classifier"
VALUES: dict[str, tuple[dict[str, str | None], str]] = {
    "smollm2": (
        {"fast": TINY, "slow": None},
        "fast tier: the built-in model takes minutes per command on 2 cores",
    ),
    "path/to/seq-classifier": (
        {"fast": None, "slow": "smollm2"},
        "a placeholder: a tiny BERT classifier is saved at that path in the workspace (fast); "
        "the built-in model as a prompted classifier of tweets.csv's labels (slow)",
    ),
    "/shared/models/my-classifier": (
        {"fast": CLASSIFIER, "slow": "smollm2"},
        "a cluster's shared folder: the workspace's classifier (fast), the built-in model (slow)",
    ),
    "path/to/saelens-folder": (
        {"fast": "saes/tiny-saelens", "slow": "saes/smollm2-saelens"},
        "a placeholder: a random SAELens folder (sae-lens 6's cfg.json and tensor names) for the "
        "tier's model, written in the workspace (no dictionary for SmolLM2 can be downloaded here)",
    ),
    "builtin": (
        {"fast": "saes/tiny-saelens", "slow": None},
        "--sae builtin fits only the built-in model: the tiny model's random SAELens folder (fast)",
    ),
    "path/to/sparsify-run": (
        {"fast": "saes/tiny-sparsify", "slow": "saes/smollm2-sparsify"},
        "a placeholder: a random sparsify run folder (hookpoints layers.1 and layers.14) for the "
        "tier's model, written in the workspace",
    ),
    "15": (
        {"fast": "1", "slow": None},
        "train-sae --layer 15: the tiny Llama has 2 blocks (its residual layers are 0 to 2)",
    ),
    "/shared/data/tweets.parquet": (
        {"fast": "tweets.parquet", "slow": "tweets.parquet"},
        "a cluster's shared folder: the workspace's tweets.parquet",
    ),
}
# the README's encoder-decoder folders -> tiny random ones of the family written in the fast
# tier's workspace; the slow tier leaves them out (no real encoder-decoder can be downloaded
# here, and a random one's answers are not worth checking for plausibility)
SEQ2SEQ = {
    "./t5-small": "t5",
    "./flan-t5-small": "t5",
    "./opus-mt-en-de": "marian",
    "./bart-large-cnn": "bart",
}
for _name, _arch in SEQ2SEQ.items():
    VALUES[_name] = (
        {"fast": f"seq2seq/{_arch}", "slow": None},
        f"a tiny random {_arch} folder written in the workspace (no real encoder-decoder can be "
        "downloaded here)",
    )
SLOW_SKIPS = {
    name: "an encoder-decoder example: the fast tier runs it on a tiny random one of its family"
    for name in SEQ2SEQ
}
# Sizes changed for time (both tiers), as (command, flag, README value) -> replacement flags.
TIME: dict[tuple[str, str, str], tuple[list[str], str]] = {
    ("train-sae", "--k", "32"): (
        [
            "--k",
            "32",
            "--tokens",
            "4096",
            "--seq-len",
            "64",
            "--batch",
            "4",
            "--eval-tokens",
            "512",
        ],
        "the default 1M tokens take about 20 minutes on 2 CPU cores (SmolLM2): 16 steps of "
        "4 x 64 tokens, 512 held-out tokens",
    ),
    ("tune-lens", "--tokens", "2000000"): (
        ["--tokens", "512", "--seq-len", "64", "--batch", "4"],
        "2M tokens take days on 2 CPU cores (147k took 40 minutes): 2 steps of 4 x 64 tokens",
    ),
    ("lens-eval", "--data", "heldout.txt"): (
        ["--data", "heldout.txt", "--tokens", "512"],
        "heldout.txt fills 2 sequences of 512 tokens (the default --tokens 8192 allows 16), 50 s "
        "on one core (SmolLM2: 30 layers x 2 lenses x a 49k-token vocabulary per position): one "
        "(29 s; the logit lens's KL at the embeddings and the tuned lens's mean as with two)",
    ),
    ("trace", "--corrupt", "noise"): (
        ["--corrupt", "noise", "--samples", "3"],
        "10 noise draws (the default) take 30 s per trace on one core (SmolLM2): 3, as "
        "tests/analyses/trace/test_trace.py's trace of the same prompt draws",
    ),
    ("flips", "--data", "sample:emotion"): (
        ["--data", "sample:emotion", "--limit", "60"],
        "all 440 texts take 5 minutes on 2 cores (SmolLM2), 2 on a busy machine (tiny): the first 60",
    ),
}
# Not run in the fast tier, and why (their flags are still checked: test_example_parses_as_written).
FAST_SKIPS = {
    "--ray": "a local Ray cluster takes a minute to start on 2 cores: the slow tier runs it "
    "(and tests/test_ray.py runs --ray in process)",
}
RAY = {
    "--workers": ("1", "one Ray worker: a local cluster on this machine"),
    "--gpus-per-worker": ("0", "no GPU here"),
}


@dataclass
class Plan:
    argv: list[str]
    notes: list[str] = field(default_factory=list)


def plan(example: Example, tier: str) -> Plan:
    """The command line that runs for `example` in `tier`, and the substitutions made."""
    argv: list[str] = []
    notes: list[str] = []
    words = list(example.argv)
    i = 0
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else None
        key = (example.command, word, value)
        if key in TIME:
            new, why = TIME[key]
            argv += new
            notes.append(f"{word} {value} -> {' '.join(new)}: {why}")
            i += 2
            continue
        if word in RAY and "--ray" in words and value is not None:
            new_value, why = RAY[word]
            if word == "--gpus-per-worker" and _cuda():
                new_value = value
            if new_value != value:
                notes.append(f"{word} {value} -> {new_value}: {why}")
            argv += [word, new_value]
            i += 2
            continue
        if word in VALUES and (i > 0 and words[i - 1] in ("--model", "--data", "--sae", "--layer")):
            new_value, why = VALUES[word][0][tier], VALUES[word][1]
            if new_value is not None:
                notes.append(f"{word} -> {new_value}: {why}")
                word = new_value
        argv.append(word)
        i += 1
    if example.command != "report" and "--model" not in words and tier == "fast":
        argv += ["--model", TINY]
        notes.append(f"no --model (default smollm2) -> --model {TINY}: {VALUES['smollm2'][1]}")
    return Plan(argv, notes)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------ the workspace


def emotion() -> pd.DataFrame:
    with resources.as_file(resources.files("tokenprobe").joinpath("data/emotion.csv")) as path:
        return pd.read_csv(path)


TEXTS = [
    "Tools: hammer, wrench, level, pliers. Fruits: orange, peach, banana, plum. Colours: red, blue.",
    "The cat sat on the mat. The dog slept by the door. The bird sang in the tree.",
    "Paris is in France. Rome is in Italy. Canberra is in Australia.",
    "I bought bread. Then I bought milk. Finally I went home and made tea.",
    "Water boils at one hundred degrees. Ice melts at zero. Steam rises.",
    "She read the letter twice. Then she smiled. Nobody knew why.",
]
QUESTIONS = pd.DataFrame(
    {
        "question": [
            "What is the capital of Australia?",
            "What is the capital of France?",
            "What is the capital of Japan?",
        ],
        "answer": [" Canberra", " Paris", " Tokyo"],
    }
)


def write_inputs(root: Path) -> dict[str, str]:
    """The README's input files under the names it gives them; returns their texts."""
    with resources.as_file(resources.files("tokenprobe").joinpath("data/cot.txt")) as path:
        cot = path.read_text(encoding="utf-8")
    (root / "cot.txt").write_text(cot, encoding="utf-8")  # the demo's few-shot prompt
    samples = emotion()
    (root / "corpus.txt").write_text("\n".join(samples.text[:200]), encoding="utf-8")
    (root / "heldout.txt").write_text("\n".join(samples.text[200:270]), encoding="utf-8")
    pd.DataFrame({"text": TEXTS}).to_csv(root / "texts.csv", index=False)
    tweets = samples[samples.label.isin(["anger", "joy", "sadness"])].head(24)
    tweets.to_csv(root / "tweets.csv", index=False)
    tweets.to_parquet(root / "tweets.parquet", index=False)
    QUESTIONS.to_csv(root / "questions.csv", index=False)
    return {"cot": cot, "samples": "\n".join(samples.text[:300])}


def sae_folders(root: Path, name: str, width: int, blocks: int) -> None:
    """Random dictionaries for a model of `width` and `blocks` blocks, in the layouts sae-lens 6
    and sparsify write: `saes/<name>-saelens` (a ReLU SAE on the residual stream after the
    middle block) and `saes/<name>-sparsify` (a TopK run with hookpoints layers.1 and
    layers.14, or the last block where the model has fewer)."""
    import torch
    from safetensors.torch import save_file

    fixtures = Path(__file__).resolve().parent / "data" / "sae"
    g = torch.Generator().manual_seed(0)
    latents = 256

    def weights(transposed: bool) -> dict[str, torch.Tensor]:
        w_enc = torch.randn(width, latents, generator=g) / width**0.5
        w_dec = torch.randn(latents, width, generator=g) * (3.0 / width**0.5)
        if transposed:
            return {"encoder.weight": w_enc.T.contiguous(), "encoder.bias": torch.zeros(latents),
                    "W_dec": w_dec, "b_dec": torch.zeros(width)}  # fmt: skip
        return {"W_enc": w_enc, "b_enc": -0.5 * torch.ones(latents), "W_dec": w_dec,
                "b_dec": torch.zeros(width)}  # fmt: skip

    saelens = root / "saes" / f"{name}-saelens"
    saelens.mkdir(parents=True)
    cfg = json.loads((fixtures / "saelens-standard" / "cfg.json").read_text())
    cfg.update(d_in=width, d_sae=latents)
    cfg["metadata"]["hook_name"] = f"blocks.{blocks // 2}.hook_resid_post"
    (saelens / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights(False), str(saelens / "sae_weights.safetensors"))
    run = fixtures / "sparsify-topk"
    for hookpoint in dict.fromkeys(["layers.1", f"layers.{min(14, blocks - 1)}"]):
        folder = root / "saes" / f"{name}-sparsify" / hookpoint
        folder.mkdir(parents=True)
        cfg = json.loads((run / "layers.1" / "cfg.json").read_text())
        cfg.update(d_in=width, num_latents=latents, k=16)
        (folder / "cfg.json").write_text(json.dumps(cfg))
        save_file(weights(True), str(folder / "sae.safetensors"))


def tiny_models(root: Path, texts: list[str]) -> None:
    """A tiny Llama at TINY, its byte-level BPE trained on `texts` with a vocabulary large
    enough that every word is one token; a tiny BERT classifier (anger, joy, sadness) at
    CLASSIFIER."""
    import zoo
    from conftest import make_tokenizer

    tok = make_tokenizer(6000, texts)
    lm = zoo.make_causal("llama", tok)
    lm.model.config.max_position_embeddings = 2048  # lens-eval's default 512-token sequences
    lm.model.save_pretrained(root / TINY)
    lm.tokenizer.save_pretrained(root / TINY)
    config = lm.model.config
    sae_folders(root, "tiny", int(config.hidden_size), int(config.num_hidden_layers))
    for arch in sorted(set(SEQ2SEQ.values())):
        made = zoo.make_seq2seq(arch, tok)
        made.model.save_pretrained(root / "seq2seq" / arch)
        made.tokenizer.save_pretrained(root / "seq2seq" / arch)
    classifier = zoo.make_classifier("bert", zoo.wordpiece_tokenizer(root, texts))
    classifier.model.save_pretrained(root / CLASSIFIER)
    classifier.tokenizer.save_pretrained(root / CLASSIFIER)


def readme_strings() -> list[str]:
    """Every value in the README's examples (prompts, targets, spans)."""
    return [w for ex in EXAMPLES for w in ex.argv if not w.startswith("--")]


@dataclass
class Run:
    example: Example
    argv: list[str]
    notes: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    out: Path
    root: Path  # the workspace (the working directory)
    after: list[str]
    skips: dict[str, str]  # the words whose examples this run's tier leaves out

    def describe(self) -> str:
        subs = "".join(f"\n  substituted: {n}" for n in self.notes)
        deps = f"\n  after: {', '.join(self.after)}" if self.after else ""
        return (
            f"README.md line {self.example.line}: {self.example.text}\n  ran: tokenprobe "
            f"{shlex.join(self.argv)}{subs}{deps}\n  exit {self.returncode} after "
            f"{self.seconds:.0f} s; stderr:\n{self.stderr[-3000:]}"
        )


class Runner:
    """Runs examples in a workspace, each after the earlier examples it reads from, a few at a
    time; `result` waits for one."""

    def __init__(
        self, tier: str, root: Path, env: dict[str, str], workers: int, skips: dict[str, str]
    ) -> None:
        self.tier, self.root, self.env, self.skips = tier, root, env, skips
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.futures: dict[Example, Future] = {}
        self.lock = threading.RLock()

    def submit(self, example: Example) -> Future:
        with self.lock:
            if example not in self.futures:
                index = EXAMPLES.index(example)
                before = [
                    e for e in EXAMPLES[:index] if depends_on(example, e) and not self.skipped(e)
                ]
                waits = [self.submit(e) for e in before]  # earlier in the queue: no deadlock
                self.futures[example] = self.pool.submit(self._run, example, waits)
            return self.futures[example]

    def skipped(self, example: Example) -> bool:
        """Whether this tier leaves `example` out (then it runs for no later example either)."""
        return any(word in self.skips for word in example.argv)

    def result(self, example: Example) -> Run:
        return self.submit(example).result()

    def _run(self, example: Example, waits: list[Future]) -> Run:
        after = [w.result() for w in waits]
        p = plan(example, self.tier)
        try:
            out = self.root / out_of(p.argv)
        except AssertionError:  # a bad flag: the command will say so too
            out = self.root
        started = time.monotonic()
        proc = subprocess.run(
            [str(TOKENPROBE), *p.argv],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT[self.tier],
        )
        return Run(
            example,
            p.argv,
            p.notes,
            proc.returncode,
            proc.stdout,
            proc.stderr,
            time.monotonic() - started,
            out,
            self.root,
            [f"{r.example.id} (exit {r.returncode})" for r in after],
            self.skips,
        )

    def close(self) -> None:
        """Stop, and print each run's own time (shown with -s)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        print(f"\nREADME examples, {self.tier} tier (seconds each, exit status):")
        for example, future in self.futures.items():
            if future.done() and future.exception() is None:
                run = future.result()
                print(
                    f"  {run.seconds:6.1f} s  exit {run.returncode}  {example.id}: {example.text}"
                )


def environment() -> dict[str, str]:
    drop = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "RAY_", "TOKENPROBE_DEBUG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if "HF_HOME" in os.environ:
        env["HF_HOME"] = os.environ["HF_HOME"]
    return env


def selected(request, tier_test: str) -> list[Example]:
    """The examples of this module's `tier_test` that the session runs, in README order."""
    chosen = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module.__name__ == __name__ and item.originalname == tier_test:
            chosen.append(params["example"])
    return [e for e in EXAMPLES if e in chosen]


@pytest.fixture(scope="module")
def fast_runs(request, tmp_path_factory):
    if not TOKENPROBE.is_file():
        pytest.skip(f"no tokenprobe executable beside {sys.executable}: pip install -e .")
    root = tmp_path_factory.mktemp("readme-fast")
    texts = write_inputs(root)
    from conftest import CORPUS

    corpus = [*CORPUS, *readme_strings(), *TEXTS, texts["cot"], *texts["samples"].splitlines()]
    corpus += [*QUESTIONS.question, *QUESTIONS.answer]
    tiny_models(root, corpus)
    env = {**environment(), "OMP_NUM_THREADS": "1"}  # two runs side by side, one core each
    runner = Runner("fast", root, env, workers=2, skips=FAST_SKIPS)
    for example in selected(request, "test_example_runs_on_a_tiny_model"):
        if not runner.skipped(example):
            runner.submit(example)  # all at once, so that two run side by side
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def slow_runs(request, tmp_path_factory):
    if not TOKENPROBE.is_file():
        pytest.skip(f"no tokenprobe executable beside {sys.executable}: pip install -e .")
    root = tmp_path_factory.mktemp("readme-slow")
    write_inputs(root)
    sae_folders(root, "smollm2", 576, 30)
    # two SmolLM2 runs side by side, one thread each: each run spends seconds importing and
    # loading on one core, and two threads in each of two runs would contend for the 2 cores
    env = {**environment(), "OMP_NUM_THREADS": "1"}
    runner = Runner("slow", root, env, workers=2, skips=SLOW_SKIPS)
    for example in selected(request, "test_example_is_plausible_on_the_builtin_model"):
        if not runner.skipped(example):
            runner.submit(example)
    yield runner
    runner.close()


# ------------------------------------------------------------------------------ what is written


def figures(stem: str, args: Any) -> list[str]:
    return [f"{stem}.{fmt}" for fmt in args.format]


def expected_files(args: Any) -> list[str]:
    """The files the README says each command writes into --out."""
    data = getattr(args, "data", None)
    match args.command:
        case "lens" | "attribute":
            stem = "lens" if args.command == "lens" else "attribute"
            if data:
                return [
                    f"{stem}.parquet",
                    f"{stem}_rows.parquet",
                    "meta.json",
                    *figures(f"{stem}_row0", args),
                ]
            return [f"{stem}.parquet", "meta.json", *figures(stem, args)]
        case "similarity":
            return ["similarity.parquet", "meta.json", *figures("similarity", args)]
        case "flips":
            return ["flips.parquet", "rates.parquet", "meta.json"]  # figures: one per class
        case "trace":
            if str(args.model).startswith("seq2seq/"):  # one figure per grid
                grids = {"resid": ["encoder", "decoder"], "cross": ["cross"]}
                names = [f"trace_{g}" for c in args.component or grids for g in grids[c]]
            else:
                names = [f"trace_{c}" for c in args.component or ["resid"]]
            return ["trace.parquet", "meta.json", *(f for n in names for f in figures(n, args))]
        case "tune-lens":
            lens = ["tuned-lens.json", "tuned-lens.safetensors", "config.json", "params.pt"]
            return [*lens, "tuned_lens.parquet", "meta.json", *figures("tuned_lens", args)]
        case "lens-eval":
            return ["lens_eval.parquet", "meta.json", *figures("lens_eval", args)]
        case "logit-attribution":
            stems = ("logit_attribution", "logit_attribution_heads", "logit_attribution_positions")
            return [
                "logit_attribution.parquet",
                "meta.json",
                *(f for s in stems for f in figures(s, args)),
            ]
        case "attention":
            files = ["attention.parquet", "meta.json", *figures("attention_layer", args)]
            if args.head is not None:
                files += figures("attention_head", args)
            if args.to:
                files += ["attention_to.parquet", *figures("attention_to", args)]
            return files
        case "train-sae":
            sae = ["cfg.json", "sae_weights.safetensors"]
            return [*sae, "train_sae.parquet", "meta.json", *figures("train_sae", args)]
        case "features" if data:
            return [
                "feature_contexts.parquet",
                "feature_contexts_top.parquet",
                "meta.json",
                *figures("feature_contexts", args),
                *figures("feature_contexts_tokens", args),
            ]
        case "features":
            stems = ("features", "features_error") + (("features_effects",) if args.target else ())
            return [
                "features.parquet",
                "features_positions.parquet",
                "meta.json",
                *(f for s in stems for f in figures(s, args)),
            ]
    raise AssertionError(f"no expectations for `tokenprobe {args.command}`: add them here")


# the columns that must be finite in each command's table (similarity's padded cells are NaN
# by design, so its cosines are checked apart)
FINITE = {
    "lens": ["entropy", "top1_prob"],
    "attribute": ["score", "target_score"],
    "trace": ["score"],
    "tune-lens": None,  # every float column
    "lens-eval": None,
    "logit-attribution": ["value"],
    "attention": ["weight"],
    "features": ["activation"],
    "train-sae": ["fve", "l0"],
}
TABLE = {
    "lens": "lens.parquet",
    "attribute": "attribute.parquet",
    "similarity": "similarity.parquet",
    "flips": "rates.parquet",
    "trace": "trace.parquet",
    "tune-lens": "tuned_lens.parquet",
    "lens-eval": "lens_eval.parquet",
    "logit-attribution": "logit_attribution.parquet",
    "attention": "attention.parquet",
    "features": "features.parquet",
    "train-sae": "train_sae.parquet",
}


def check_written(run: Run) -> tuple[Any, pd.DataFrame | None, dict[str, Any]]:
    """Exit 0, the files the README promises, a non-empty table of finite numbers; returns
    the parsed flags, the table and meta.json."""
    assert run.returncode == 0, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    args = parse(run.argv)
    if args.command == "report":
        page = run.out.read_text(encoding="utf-8")
        assert run.out.stat().st_size > 10_000 and "<html" in page.lower(), run.describe()
        check_report(run, args)
        return args, None, {}
    for name in expected_files(args):
        path = run.out / name
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing\n{run.describe()}"
    meta = json.loads((run.out / "meta.json").read_text(encoding="utf-8"))
    dashboard = args.command == "features" and getattr(args, "data", None)
    name = "feature_contexts.parquet" if dashboard else TABLE[args.command]
    table = pd.read_parquet(run.out / name)
    assert len(table) > 0, f"{name} is empty\n{run.describe()}"
    columns = ["frequency", "count"] if dashboard else FINITE.get(args.command, [])
    if columns is None:
        columns = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]
    if args.command == "lens":
        columns = columns + [c for c in table.columns if c.startswith(("prob[", "logit_diff"))]
    for column in columns:
        values = table[column].to_numpy(dtype=float)
        assert np.isfinite(values).all(), f"{column} has non-finite values\n{run.describe()}"
    if args.command == "similarity":
        cosine = table["cosine"].to_numpy(dtype=float)
        finite = cosine[np.isfinite(cosine)]
        assert finite.size > 0 and np.all(np.abs(finite) <= 1 + 1e-4), run.describe()
    if args.command == "flips":
        assert ((table["rate"] >= 0) & (table["rate"] <= 1)).all(), run.describe()
        classes = sorted(run.out.glob(f"flips_*.{args.format[0]}"))
        assert classes, f"no flips_<class>.{args.format[0]} in {run.out}\n{run.describe()}"
        assert len(pd.read_parquet(run.out / "flips.parquet")) > 0, run.describe()
    return args, table, meta


# ------------------------------------------------------------------------------ the tests


def test_the_readme_has_an_example_of_every_command():
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert {e.command for e in EXAMPLES} == COMMANDS, sorted({e.command for e in EXAMPLES})


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_parses_as_written(example):
    """Every flag of every example as written (Ray's too) is one the command has."""
    parse(example.argv)


def test_the_examples_write_into_different_folders():
    """Run one after another as the README lists them, no example may write where an earlier
    one did: the second would refuse to replace the first's results."""
    seen: dict[PurePosixPath, Example] = {}
    for example in EXAMPLES:
        out = out_of(example.argv)
        assert out not in seen, f"{example.id} and {seen[out].id} both write into {out}"
        seen[out] = example


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_runs_on_a_tiny_model(example, fast_runs):
    for flag, why in FAST_SKIPS.items():
        if flag in example.argv:
            pytest.skip(why)
    check_written(fast_runs.result(example))


# ------------------------------------------------------------------------------ the slow tier


@pytest.fixture(scope="module")
def smol():
    import tokenprobe

    return tokenprobe.load("smollm2", device="cpu")


def next_token(smol: Any, ids: list[int]) -> Any:
    """The model's next-token probabilities after every position of ids (float32)."""
    import torch

    with torch.no_grad():
        logits = smol.model(torch.tensor([ids])).logits[0].float()
    return logits.softmax(-1)


def standing(smol: Any, prompt: str, chat: bool, token: str) -> tuple[float, int]:
    """The probability and rank (1 = the most likely) of `token`'s first token as the next
    token after the prompt (rendered with the chat template when `chat`)."""
    import tokenprobe

    ids = tokenprobe.prepare(smol, prompt, chat=chat).input_ids
    probs = next_token(smol, ids)[-1]
    tid = smol.tokenizer.encode(token, add_special_tokens=False)[0]
    return float(probs[tid]), int((probs > probs[tid]).sum()) + 1


PLAUSIBLE_RANK = 10  # a target or foil the model ranks below this is not worth tracing


def prompt_of(args: Any, root: Path) -> str:
    if args.prompt_file:
        return (root / args.prompt_file).read_text(encoding="utf-8")
    return args.prompt[0] if isinstance(args.prompt, list) else args.prompt


def assert_plausible_target(smol: Any, prompt: str, chat: bool, token: str, run: Run) -> None:
    prob, rank = standing(smol, prompt, chat, token)
    assert rank <= PLAUSIBLE_RANK, (
        f"{token!r} is implausible after the prompt (probability {prob:.2g}, rank {rank}): "
        f"the example follows an answer the model does not give\n{run.describe()}"
    )


def row_metas(run: Run, stem: str) -> list[dict[str, Any]]:
    """Each row's own meta (prompt, token ids, target) of a --data run."""
    rows = pd.read_parquet(run.out / f"{stem}_rows.parquet").sort_values("row")
    return [json.loads(m) for m in rows["meta"]]


def check_lens(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """The output row's top-1 is the model's own prediction at every position (before the
    dummies: the model without them has no marker token); for one prompt, every --target is
    among the model's likely next tokens at the last position before the dummies."""
    if args.data:
        parts = [
            (table[table["row"] == i], m["token_ids"]) for i, m in enumerate(row_metas(run, "lens"))
        ]
        assert len(parts) == len(pd.read_csv(run.root / args.data)), run.describe()
    else:
        parts = [(table, meta["token_ids"])]
    for part, ids in parts:
        end = meta["marked"][0] if (not args.data and args.dummy) else len(ids)
        predicted = next_token(smol, ids[:end]).argmax(-1).numpy()
        output = part[part["layer_label"] == "output"].sort_values("position")
        assert len(output) == len(ids), run.describe()
        np.testing.assert_array_equal(
            output["top1_id"].to_numpy()[:end], predicted, err_msg=run.describe()
        )
    if args.lens:
        assert meta["lens"]["path"] == args.lens and meta["analysis"] == "tuned lens", meta["lens"]
    if not args.data and not args.dummy_after and not args.dummy_before:
        for target in args.target or []:
            assert_plausible_target(smol, prompt_of(args, run.root), args.chat, target, run)


def check_trace(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """The target is a likely next token of the clean prompt (a foil: of the corrupted one);
    the clean run favours the target more than the corrupted run does, and restoring the last
    layer's residual state at the last position gives the clean score back."""
    assert_plausible_target(smol, prompt_of(args, run.root), args.chat, args.target, run)
    if args.foil and args.corrupted:
        assert_plausible_target(smol, args.corrupted, args.chat, args.foil, run)
    if meta["metric"] == "diff":
        assert meta["clean_score"] > 0, f"the clean run prefers the foil\n{run.describe()}"
    assert meta["clean_score"] > meta["corrupted_score"], run.describe()
    resid = table[table["component"] == "resid"]
    if len(resid):
        last = resid[
            (resid["layer"] == resid["layer"].max())
            & (resid["position"] == resid["position"].max())
        ]
        np.testing.assert_allclose(last["score"], meta["clean_score"], rtol=1e-3, atol=1e-4)


def check_attribute(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """A given target (and foil) is a likely next token; a generated one is the model's greedy
    continuation; integrated gradients are complete (the gap within 10% of what they explain);
    spans are the features. On the few-shot prompt, the README's finding: SmolLM2 answers
    "7 x 5 = 35", and its " x" is copied from the multiplication examples."""
    import torch

    if args.data:
        metas = row_metas(run, "attribute")
        assert len(metas) == len(pd.read_csv(run.root / args.data)), run.describe()
    else:
        metas = [meta]
        prompt = prompt_of(args, run.root)
        if args.target:
            assert_plausible_target(smol, prompt, args.chat, args.target, run)
        if args.foil:
            assert_plausible_target(smol, prompt, args.chat, args.foil, run)
        if args.generate:
            ids = torch.tensor([meta["prompt_ids"]])
            with torch.no_grad():
                greedy = smol.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.generate,
                    do_sample=False,
                )
            assert meta["target_ids"] == greedy[0, ids.shape[1] :].tolist(), run.describe()
        if args.span:
            assert sorted(set(table["feature_text"])) == sorted(args.span), run.describe()
    if args.prompt_file == "cot.txt" and args.generate:
        assert meta["target"].startswith(" 7 x 5 = 35"), meta["target"]
        x = table[table["target"] == " x"].set_index("feature_text")["score"]
        times = [f for f in x.index if " x " in f]
        minus = [f for f in x.index if " - " in f]
        assert times and minus and x[times].min() > x[minus].max(), x
    gaps = []  # integrated gradients that miss f(x) - f(baseline) by more than 10%
    for m in metas:
        details = m["method_details"]
        if "completeness_gap" in details:
            for gap, explained in zip(
                details["completeness_gap"], details["score_difference"], strict=True
            ):
                if abs(gap) > IG_GAP * abs(explained) + 1e-3:
                    gaps.append(f"{gap:.3g} of {explained:.3g}")
    if gaps:
        assert "integrated gradients have not converged" in run.stderr, (
            f"gaps of {gaps} without the warning the README promises\n{run.describe()}"
        )
        # Known (found with issue 24): on SmolLM2, integrated gradients from the unk token do
        # not converge in the default 32 steps, nor reliably in more (README's France example:
        # gaps 10.5, 5.8, 44 and 6.2 of 16.7 at 32, 128, 256 and 1024 steps). tokenprobe
        # equals captum there (bench/attribution.py), and the command warns as the README
        # says. When the examples or the method converge, this passes instead.
        pytest.xfail(f"integrated gradients not converged on SmolLM2: gaps {gaps}")


IG_GAP = 0.1  # the README: a warning when the gap is more than 10% of |f(x) - f(baseline)|


def check_similarity(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """One text: where an earlier marker is in the window, it is the past token most like the
    marker at most layers. A data set: every text has the marker; centring removes the shared
    direction, so the cosines are no longer all near 1."""
    if args.data:
        assert meta["texts_used"] == meta["texts"] > 0 and table["count"].max() == meta["texts"], (
            meta
        )
    else:
        marker = table[table["token"].str.strip() == args.marker]
        if len(marker):
            best = table.loc[table.groupby("layer")["cosine"].idxmax()]
            share = (best["token"].str.strip() == args.marker).mean()
            assert share >= 0.5, f"the earlier marker is the closest at {share:.0%} of layers"
    cosine = table["cosine"].dropna().abs()
    if args.centre:
        assert cosine.median() < 0.9, f"centred cosines near 1 (median {cosine.median():.2f})"


def check_flips(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """Better than chance where there are gold labels; some word flips a prediction."""
    labels = meta["labels"]
    if meta.get("accuracy") is not None:
        assert meta["accuracy"] > 1 / len(labels) + 0.1, f"accuracy {meta['accuracy']} ({labels})"
    assert pd.read_parquet(run.out / "flips.parquet")["flipped"].any(), run.describe()


def check_tune_lens(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """Training lowers the KL: the last step's mean below the first step's."""
    by_step = table.groupby("step")["kl"].mean()
    assert by_step.iloc[-1] < by_step.iloc[0], by_step.to_dict()
    assert (table["kl"] >= 0).all(), run.describe()


def check_lens_eval(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """The logit lens reads the embeddings far worse than a middle layer (the README's
    table: 103.7 against 16.8 nats), and the tuned lens is no worse than it on average."""
    inner = table[table["label"] != "output"]
    logit = inner[inner["lens"] == "logit"].set_index("layer")["kl"]
    tuned = inner[inner["lens"] != "logit"].set_index("layer")["kl"]
    assert logit.iloc[0] > 2 * logit.iloc[len(logit) // 2], logit.to_dict()
    assert tuned.mean() <= logit.mean() * 1.01, (tuned.mean(), logit.mean())
    assert (inner["ce"] > 0).all(), run.describe()


def check_logit_attribution(
    run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any
) -> None:
    """The target (and foil) are likely next tokens; the parts add up to the model's own logit
    (difference) at every position, which favours the target over the foil at the last one; the
    heads add up to their block's attention."""
    prompt = prompt_of(args, run.root)
    assert_plausible_target(smol, prompt, args.chat, args.target, run)
    exact = meta["exactness"]
    assert exact["max_abs_error"] <= exact["tolerance"], exact
    last = table[table["position"] == table["position"].max()]
    whole = last[last["component"].isin(["embed", "attn", "mlp", "mixer", "bias"])]["value"].sum()
    assert whole > 0, f"the model does not favour the target at the last position\n{run.describe()}"
    heads = last[last["component"].isin(["head", "attn_bias"])].groupby("layer")["value"].sum()
    attn = last[last["component"] == "attn"].set_index("layer")["value"]
    np.testing.assert_allclose(heads.sort_index(), attn.loc[heads.index].sort_index(), atol=1e-3)


def check_attention(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """Softmax weights: every stored query row of every head sums to 1 and looks only back; the
    eager implementation agreed on the first layer; --to's weights are within [0, 1]."""
    assert table["weight"].between(0, 1 + 1e-6).all() and (table["key"] <= table["query"]).all()
    sums = table.groupby(["layer", "head", "query"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-4)
    check = meta["eager_check"]
    assert check.get("passed", True), check
    if args.to:
        to = pd.read_parquet(run.out / "attention_to.parquet")
        assert to["weight"].between(0, 1 + 1e-6).all() and to["weight"].max() > 0.05, run.describe()


def check_features(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """The dictionary read where its files say (the sparsify hookpoint, the SAELens hook); kept
    features active, ranked, at most --top per position by activation; with --target every
    kept feature's exact effect computed, and activation x gradient tracking it."""
    d = meta["dictionary"]
    if args.data:  # a dashboard: every latent tallied, top contexts of the live ones
        top = pd.read_parquet(run.out / "feature_contexts_top.parquet")
        assert len(table) == d["latents"] and table["frequency"].between(0, 1).all()
        live = table[table["count"] > 0]
        assert len(live) > d["latents"] // 2 and set(top["feature"]) == set(live["feature"])
        assert (top.groupby("feature").size() <= args.top_examples).all()
        assert (top["activation"] > 0).all() and (top["token"] != "").all(), run.describe()
        return
    if args.hookpoint:
        assert d["hook"] == args.hookpoint and d["reads"] == f"resid {int(args.hookpoint[7:]) + 1}"
    assert (table["activation"] > 0).all() and (table["rank"] >= 1).all(), run.describe()
    positions = pd.read_parquet(run.out / "features_positions.parquet")
    kept = table[table["top"]]
    skip = int(meta.get("skip_first") or 0)  # left out: positions it was not trained on
    assert positions["l0"][:skip].isna().all() and positions["l0"][skip:].notna().all()
    assert (table["position"] >= skip).all(), run.describe()
    for p, l0 in zip(positions["position"][skip:], positions["l0"][skip:], strict=True):
        # the position's most active features are all kept, ranked 1.. without a gap
        ranks = set(kept.loc[kept["position"] == p, "rank"])
        assert set(range(1, min(args.top, int(l0)) + 1)) <= ranks, (p, sorted(ranks))
    assert np.isfinite(positions["error_ratio"][skip:]).all() and (positions["kl"] >= 0).all()
    if args.target:
        top = table[table["top"]]
        assert np.isfinite(top["ablation"]).all() and np.isfinite(top["attribution"]).all()
        assert meta["correlation"] is not None and meta["correlation"] > 0.3, meta["correlation"]


def check_train_sae(run: Run, args: Any, table: pd.DataFrame, meta: dict, smol: Any) -> None:
    """The SAE learned something in the few steps it had: the held-out reconstruction explains
    some variance and splicing it in recovers part of the loss zero-ablation loses; L0 is k;
    the folder loads as the dictionary of the layer asked for."""
    from tokenprobe.sae import load_sae

    quality = meta["quality"]
    assert quality["fve"] > 0.0 and quality["l0"] == pytest.approx(args.k, abs=0.5), quality
    assert 0.0 < quality["ce_recovered"] <= 1.05, quality
    sae = load_sae(run.out)
    assert sae.activation == "topk" and sae.k == args.k and str(sae.site) == f"resid {args.layer}"


def check_report(run: Run, args: Any, *_: Any) -> None:
    """Every result written under the folder before it is in the page; none skipped."""
    assert "warning" not in run.stderr, run.describe()
    folder = PurePosixPath(args.folder.rstrip("/"))
    results = [e for e in EXAMPLES if e.command != "report" and folder in out_of(e.argv).parents]
    results = [e for e in results if not any(w in run.skips for w in e.argv)]  # tier's left-outs
    earlier = [e for e in results if EXAMPLES.index(e) < EXAMPLES.index(run.example)]
    assert f"report of {len(earlier)} result(s)" in run.stdout, (len(earlier), run.stdout)


PLAUSIBLE = {
    "lens": check_lens,
    "trace": check_trace,
    "attribute": check_attribute,
    "similarity": check_similarity,
    "flips": check_flips,
    "tune-lens": check_tune_lens,
    "lens-eval": check_lens_eval,
    "logit-attribution": check_logit_attribution,
    "attention": check_attention,
    "features": check_features,
    "train-sae": check_train_sae,
    "report": check_report,
}


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_is_plausible_on_the_builtin_model(example, slow_runs, smol):
    if "--ray" in example.argv:
        pytest.importorskip("ray")
    for word in example.argv:
        if word in SLOW_SKIPS:
            pytest.skip(SLOW_SKIPS[word])
    run = slow_runs.result(example)
    args, table, meta = check_written(run)
    PLAUSIBLE[args.command](run, args, table, meta, smol)
