"""Write the README's "Supported models" tables from the conformance matrix.

Runs tests/test_conformance.py (causal LMs and classifiers) and the encoder-decoder zoo tests
(SEQ2SEQ_FILES), reads which test passed for which architecture, and replaces the tables
between the README's `supported-models` and `seq2seq-models` markers. Run it after changing
the zoo or the matrix: `.venv/bin/python scripts/supported_models.py` (a few minutes;
`--seq2seq-only` writes the encoder-decoder table alone).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "tests"))  # the zoo and the test tokenizer live with the tests
START, END = "<!-- supported-models:start -->", "<!-- supported-models:end -->"
S2S_START, S2S_END = "<!-- seq2seq-models:start -->", "<!-- seq2seq-models:end -->"
# column -> the encoder-decoder test files whose every case of a family must pass for it
SEQ2SEQ_FILES = {
    "logit lens": ("analyses/lens/test_lens_seq2seq.py", "analyses/lens/test_lens_seq2seq_zoo.py"),
    "past similarity": (
        "analyses/similarity/test_similarity_seq2seq.py",
        "analyses/similarity/test_similarity_seq2seq_zoo.py",
    ),
    "attribution": (
        "analyses/attribute/test_seq2seq_attribution.py",
        "analyses/attribute/test_seq2seq_attribution_zoo.py",
    ),
    "causal trace": (
        "analyses/trace/test_trace_seq2seq.py",
        "analyses/trace/test_trace_seq2seq_zoo.py",
    ),
    "attention": (
        "analyses/attention/test_attention_seq2seq.py",
        "analyses/attention/test_attention_seq2seq_zoo.py",
    ),
    "flip rates": (
        "analyses/flips/test_flips_seq2seq.py",
        "analyses/flips/test_flips_seq2seq_zoo.py",
    ),
}
# column -> the test functions whose every case must pass for that architecture
COLUMNS = {
    "logit lens": ("test_lens_",),
    "past similarity": ("test_similarity_",),
    "attribution": ("test_ablation_", "test_integrated_gradients_"),
    "flip rates": ("test_prompted_classifier_", "test_flip_rates_", "test_sequence_classifier_"),
    "context check": ("test_context_length_", "test_every_analysis_refuses_"),
}


def _outcomes() -> dict[tuple[str, str], list[str]]:
    """(column, architecture) -> the outcome of each of its tests."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "matrix.xml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/test_conformance.py",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
            ],
            cwd=ROOT,
            check=False,
        )
        tree = ET.parse(xml)
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for case in tree.iter("testcase"):
        name = case.get("name", "")
        if "[" not in name:
            continue
        func, param = name[:-1].split("[", 1)
        arch = param.removesuffix("-prefix-cache").removesuffix("-no-cache")
        outcome = "pass"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "FAIL"
        elif case.find("skipped") is not None:
            outcome = "skip"
        for column, prefixes in COLUMNS.items():
            if func.startswith(prefixes):
                found[(column, arch)].append(outcome)
    return found


def _seq2seq_outcomes() -> dict[tuple[str, str], list[str]]:
    """(column, family) -> the outcome of each of its encoder-decoder tests (a case belongs to
    the family its parameter names: the longest family name it is or begins with)."""
    import zoo

    families = sorted(zoo.SEQ2SEQ, key=len, reverse=True)
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for column, files in SEQ2SEQ_FILES.items():
        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / "seq2seq.xml"
            subprocess.run(
                [sys.executable, "-m", "pytest", *(f"tests/{f}" for f in files), "-q",
                 "-p", "no:cacheprovider", f"--junitxml={xml}"],
                cwd=ROOT,
                check=False,
            )  # fmt: skip
            tree = ET.parse(xml)
        for case in tree.iter("testcase"):
            name = case.get("name", "")
            param = name[:-1].split("[", 1)[1] if "[" in name else ""
            arch = next((a for a in families if param == a or param.startswith(f"{a}-")), None)
            if arch is None:
                continue
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            found[(column, arch)].append("FAIL" if failed else "skip" if skipped else "pass")
    return found


def seq2seq_table() -> str:
    """One row per encoder-decoder family of the zoo: which analyses pass on it."""
    import zoo

    found = _seq2seq_outcomes()
    head = "| encoder-decoder | what is special | " + " | ".join(SEQ2SEQ_FILES) + " |"
    lines = [head, "|" + " --- |" * (len(SEQ2SEQ_FILES) + 2)]
    for arch, (_, special) in zoo.SEQ2SEQ.items():
        cells = [_cell(found[(c, arch)]) for c in SEQ2SEQ_FILES]
        cells = ["yes (some options refused)" if c == "no limit" else c for c in cells]
        lines.append(f"| {arch} | {special} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cache_kept() -> dict[str, bool]:
    """Does the prompted classifier keep its prefix cache on each causal architecture?"""
    import zoo
    from conftest import make_tokenizer

    from tokenprobe import PromptedClassifier

    tok = make_tokenizer()
    kept = {}
    for arch in zoo.CAUSAL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = PromptedClassifier(zoo.make_causal(arch, tok), ["capital", "hammer"])
            clf.scores([tok.encode("hello world")], 4096)
        kept[arch] = clf.reuse_prefix
    return kept


def _cell(outcomes: list[str]) -> str:
    if not outcomes:
        return "—"
    if "FAIL" in outcomes:
        return "**fails**"
    return "no limit" if "skip" in outcomes else "yes"  # only the context check skips


def table() -> str:
    import zoo

    found = _outcomes()
    kept = _cache_kept()
    head = "| architecture | what is special | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 2)]
    for arch, (_, special) in zoo.CAUSAL.items():
        cells = [_cell(found[(c, arch)]) for c in COLUMNS]
        if cells[3] == "yes" and not kept[arch]:
            cells[3] = "yes (no prefix cache)"
        lines.append(f"| {arch} | {special} | " + " | ".join(cells) + " |")
    for arch, (_, tokenizer) in zoo.CLASSIFIERS.items():
        cells = [_cell(found[(c, arch)]) if c == "flip rates" else "—" for c in COLUMNS]
        lines.append(
            f"| {arch} (sequence classifier) | {tokenizer} tokenizer | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main() -> int:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} markers", file=sys.stderr)
        return 2
    if "--seq2seq-only" not in sys.argv:  # the encoder-decoder table alone: a few minutes
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = f"{before}{START}\n{table()}\n{END}{after}"
    if S2S_START in text and S2S_END in text:
        before, rest = text.split(S2S_START, 1)
        _, after = rest.split(S2S_END, 1)
        text = f"{before}{S2S_START}\n{seq2seq_table()}\n{S2S_END}{after}"
    README.write_text(text, encoding="utf-8")
    print("README.md: supported-models tables written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
