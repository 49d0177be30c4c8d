"""Damaged files are checked when read (issue 24): a tuned lens folder in either format, a
saved `datasets` folder, a lens in memory that does not fit the model and a non-finite float
are each one error naming the problem and the fix (exit 2 on the command line, never a
traceback); `report` skips a folder it cannot read or draw with a warning and writes the rest."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_cli
import torch
from conftest import make_model, randomised, texts
from test_bad_input import assert_one_error, run_any
from test_report import synthetic_lens

import tokenprobe
from tokenprobe import (
    TokenprobeError,
    TunedLens,
    lens_eval,
    load_lens,
    logit_lens,
    save_lens,
    tune_lens,
)
from tokenprobe.report import gather, render, sections_of

model_dir = test_cli.model_dir  # the tiny llama (3 blocks of width 32) the commands run on
PROMPT = "the capital of australia is"


@pytest.fixture(scope="module")
def lm(tokenizer):
    return make_model("llama", copy.deepcopy(tokenizer))


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("heldout") / "heldout.txt"
    path.write_text("\n".join(texts(1, 30)), encoding="utf-8")
    return path


# ------------------------------------------------------------------------ damaged lens folders


def _translators(n: int, width: int, bias: int | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(n):
        out[f"{i}.weight"] = torch.randn(width, width) * 0.1
        out[f"{i}.bias"] = torch.randn(bias if bias is not None and i == 1 else width) * 0.1
    return out


def _ours(state: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    from safetensors.torch import save_file

    return lambda d: save_file(
        {f"translators.{k}": v for k, v in state.items()}, str(d / "tuned-lens.safetensors")
    )


def _theirs(state: object) -> Callable[[Path], None]:
    return lambda d: torch.save(state, d / "params.pt")


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 3])

    return damage


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text, encoding="utf-8")


def _nan_weight(d: Path) -> None:
    state = _translators(3, 32)
    state["2.weight"][4, 5] = float("nan")
    _ours(state)(d)


# (format saved, damage, what the one error line says)
LENS_DAMAGE = {
    "ours: weights of another width": (
        "tokenprobe",
        _ours(_translators(3, 16)),
        "says width 32, but the weights are translators 16 wide",
    ),
    "ours: a translator too many": (
        "tokenprobe",
        _ours(_translators(4, 32)),
        "says n_blocks 3, but the weights are 4 translators",
    ),
    "ours: a bias of the wrong shape": (
        "tokenprobe",
        _ours(_translators(3, 32, bias=31)),
        "holds 1.bias of shape 31, not 32",
    ),
    "ours: truncated safetensors": (
        "tokenprobe",
        _truncate("tuned-lens.safetensors"),
        "tuned-lens.safetensors cannot be read",
    ),
    "ours: empty safetensors": (
        "tokenprobe",
        _write("tuned-lens.safetensors", ""),
        "tuned-lens.safetensors cannot be read",
    ),
    "ours: json that is not JSON": (
        "tokenprobe",
        _write("tuned-lens.json", "{n_blocks: 3"),
        "tuned-lens.json is not readable JSON",
    ),
    "ours: json holding a list": (
        "tokenprobe",
        _write("tuned-lens.json", "[3, 32]"),
        "tuned-lens.json holds a JSON list, not an object",
    ),
    "ours: a NaN weight": (
        "tokenprobe",
        _nan_weight,
        "not finite (inf or NaN) in the translators of layers 2",
    ),
    "theirs: params.pt holding a list": (
        "tuned-lens",
        _theirs([torch.zeros(32)]),
        "params.pt holds a list, not a dict of translator tensors",
    ),
    "theirs: params.pt holding a tensor": (
        "tuned-lens",
        _theirs(torch.zeros(3, 32)),
        "params.pt holds a Tensor, not a dict",
    ),
    "theirs: params.pt of whole numbers": (
        "tuned-lens",
        _theirs({k: v.long() for k, v in _translators(3, 32).items()}),
        "not floating point",
    ),
    "theirs: weights of another width": (
        "tuned-lens",
        _theirs(_translators(3, 16)),
        "says d_model 32, but the weights are translators 16 wide",
    ),
    "theirs: a translator too few": (
        "tuned-lens",
        _theirs(_translators(2, 32)),
        "says num_hidden_layers 3, but the weights are 2 translators",
    ),
    "theirs: truncated params.pt": (
        "tuned-lens",
        _truncate("params.pt"),
        "params.pt cannot be read",
    ),
    "theirs: config.json that is not JSON": (
        "tuned-lens",
        _write("config.json", "d_model = 32"),
        "config.json is not readable JSON",
    ),
    "theirs: config.json without its keys": (
        "tuned-lens",
        _write("config.json", '{"bias": true}'),
        "config.json is not a tuned-lens config",
    ),
}


@pytest.fixture(scope="module")
def damaged_lenses(tmp_path_factory) -> dict[str, Path]:
    """Each damaged lens folder, saved for the tiny llama (3 blocks of width 32) and then broken."""
    root = tmp_path_factory.mktemp("lenses")
    out = {}
    for i, (name, (fmt, damage, _)) in enumerate(LENS_DAMAGE.items()):
        folder = root / f"lens{i}"
        save_lens(randomised(TunedLens(3, 32), seed=i), folder, formats=[fmt])
        damage(folder)
        out[name] = folder
    return out


def _lens_argv(command: str, folder: Path, model_dir: Path, heldout: Path, out: Path) -> list[str]:
    if command == "lens":
        return [
            "lens",
            "--model",
            str(model_dir),
            "--prompt",
            PROMPT,
            "--lens",
            str(folder),
            "--out",
            str(out),
        ]
    return [
        "lens-eval",
        "--model",
        str(model_dir),
        "--lens",
        str(folder),
        "--data",
        str(heldout),
        "--seq-len",
        "16",
        "--tokens",
        "64",
        "--out",
        str(out),
    ]


@pytest.mark.parametrize("command", ["lens", "lens-eval"])
@pytest.mark.parametrize("damage", LENS_DAMAGE)
def test_a_damaged_lens_is_one_line_on_the_command_line(
    damage, command, damaged_lenses, model_dir, heldout, tmp_path, capsys
):
    folder = damaged_lenses[damage]
    code, _, err = run_any(
        capsys, *_lens_argv(command, folder, model_dir, heldout, tmp_path / "out")
    )
    line = assert_one_error(code, err, LENS_DAMAGE[damage][2])
    assert f"--lens {folder}" in line and ("tune-lens" in line or "train it again" in line), line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("damage", LENS_DAMAGE)
def test_a_damaged_lens_is_a_tokenprobe_error_in_python(damage, damaged_lenses, lm):
    folder = damaged_lenses[damage]
    message = LENS_DAMAGE[damage][2]
    for read in (
        lambda: load_lens(folder, lm),
        lambda: load_lens(folder),
        lambda: logit_lens(lm, PROMPT, lens=folder),
    ):
        with pytest.raises(TokenprobeError) as caught:
            read()
        assert message in str(caught.value) and str(folder) in str(caught.value)


def test_the_undamaged_lens_of_each_format_still_loads(lm, tmp_path):
    for fmt in ("tokenprobe", "tuned-lens"):
        lens = randomised(TunedLens(3, 32))
        save_lens(lens, tmp_path / fmt, formats=[fmt])
        back = load_lens(tmp_path / fmt, lm)
        assert all(
            torch.equal(a, b) for a, b in zip(lens.parameters(), back.parameters(), strict=True)
        )


def test_a_lens_folder_that_is_a_file_or_not_a_path(lm, tmp_path):
    save_lens(TunedLens(3, 32), tmp_path / "lens")
    with pytest.raises(TokenprobeError, match="is a file: give the folder that holds the lens"):
        load_lens(tmp_path / "lens" / "params.pt", lm)
    for call in (
        lambda: logit_lens(lm, PROMPT, lens=3),
        lambda: lens_eval(lm, 3, texts(1), tokens=64, seq_len=16),
    ):
        with pytest.raises(TokenprobeError, match="lens is of type int: give a tuned lens folder"):
            call()


# ---------------------------------------------------------------------- a lens in memory


def _short(lens: TunedLens) -> TunedLens:
    lens.translators = lens.translators[:2]  # n_blocks still says 3
    return lens


MEMORY_LENSES = {
    "another model's layer count": (
        lambda: TunedLens(5, 32),
        "trained for a model with 5 blocks; tiny-llama has 3",
    ),
    "another model's width": (
        lambda: TunedLens(3, 16),
        "trained for a model of hidden size 16; tiny-llama's is 32",
    ),
    "fewer translators than n_blocks": (
        lambda: _short(TunedLens(3, 32)),
        "holds 2 translators for n_blocks 3 of width 32",
    ),
}


@pytest.mark.parametrize("case", MEMORY_LENSES)
def test_a_lens_in_memory_that_does_not_fit_is_refused_by_the_lens_and_lens_eval_alike(case, lm):
    """One shared check (`tuned.lens.check_lens`): the logit lens no longer decodes with a lens
    of the wrong translator count and calls it a tuned lens."""
    build, message = MEMORY_LENSES[case]
    errors = []
    for run in (
        lambda: logit_lens(lm, PROMPT, lens=build()),
        lambda: lens_eval(lm, build(), texts(1), tokens=64, seq_len=16, progress=False),
    ):
        with pytest.raises(TokenprobeError, match=message) as caught:
            run()
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def test_a_fitting_lens_in_memory_still_decodes(lm):
    result = logit_lens(lm, PROMPT, lens=randomised(TunedLens(3, 32)))
    assert result.meta["analysis"] == "tuned lens" and np.isfinite(result.entropy).all()


# ------------------------------------------------------------------------ non-finite floats


NON_FINITE = {
    "logit_lens memory_mb": lambda lm, v: logit_lens(lm, PROMPT, memory_mb=v),
    "lens_eval memory_mb": lambda lm, v: lens_eval(
        lm, TunedLens(3, 32), texts(1), tokens=64, seq_len=16, memory_mb=v
    ),
    "tune_lens memory_mb": lambda lm, v: tune_lens(
        lm, texts(0), tokens=64, seq_len=16, batch_size=2, memory_mb=v
    ),
    "tune_lens lr": lambda lm, v: tune_lens(
        lm, texts(0), tokens=64, seq_len=16, batch_size=2, lr=v
    ),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("call", NON_FINITE)
def test_a_non_finite_float_parameter_is_one_error(call, value, lm):
    param = call.split()[1]
    with pytest.raises(TokenprobeError, match=f"{param} must be a finite number, not {value}"):
        NON_FINITE[call](lm, value)


def test_a_nan_batch_budget_is_one_error(lm):
    with pytest.raises(TokenprobeError, match="batch_tokens must be a whole number, not nan"):
        logit_lens(lm, PROMPT, batch_tokens=float("nan"))


# ------------------------------------------------------------------ damaged `datasets` folders


def _arrow(d: Path) -> Path:
    return next(d.glob("*.arrow"))


DATASET_DAMAGE = {
    "a missing arrow file": (lambda d: _arrow(d).unlink(), ".arrow is missing"),
    "a truncated arrow file": (
        lambda d: _arrow(d).write_bytes(_arrow(d).read_bytes()[:200]),
        "its data files cannot be read (ArrowInvalid",
    ),
    "an empty arrow file": (lambda d: _arrow(d).write_bytes(b""), "its data files cannot be read"),
    "state.json that is not JSON": (
        lambda d: (d / "state.json").write_text("{_data_files"),
        "state.json is not readable JSON",
    ),
    "state.json holding a list": (
        lambda d: (d / "state.json").write_text("[]"),
        "state.json holds a JSON list",
    ),
    "state.json without data files": (
        lambda d: (d / "state.json").write_text("{}"),
        "state.json lists no data files",
    ),
    "state.json naming a file elsewhere": (
        lambda d: (d / "state.json").write_text(
            json.dumps({"_data_files": [{"filename": "../x.arrow"}]})
        ),
        "state.json lists no data files",
    ),
}
DICT_DAMAGE = {
    "dataset_dict.json that is not JSON": (
        lambda d: (d / "dataset_dict.json").write_text("{splits"),
        "dataset_dict.json is not readable JSON",
    ),
    "dataset_dict.json without splits": (
        lambda d: (d / "dataset_dict.json").write_text("{}"),
        "dataset_dict.json lists no splits",
    ),
    "a split folder removed": (lambda d: shutil.rmtree(d / "train"), "train/state.json is missing"),
}


@pytest.fixture(scope="module")
def damaged_datasets(tmp_path_factory) -> dict[str, Path]:
    """Each damage to a saved Dataset, and to the `train` split of a saved DatasetDict."""
    datasets = pytest.importorskip(
        "datasets", reason="saved data-set folders need the datasets library"
    )
    root = tmp_path_factory.mktemp("datasets")
    data = datasets.Dataset.from_dict({"text": texts(0, 60)})
    out = {}
    for i, (name, (damage, _)) in enumerate({**DATASET_DAMAGE, **DICT_DAMAGE}.items()):
        for whole in (False, True) if name in DATASET_DAMAGE else (True,):
            folder = root / f"data{i}{'-dict' if whole else ''}"
            (datasets.DatasetDict({"train": data}) if whole else data).save_to_disk(str(folder))
            damage(folder / "train" if whole and name in DATASET_DAMAGE else folder)
            out[f"{name}{' (DatasetDict)' if whole else ''}"] = folder
    return out


DATASET_CASES = [
    *DATASET_DAMAGE,
    *(f"{n} (DatasetDict)" for n in DATASET_DAMAGE),
    *(f"{n} (DatasetDict)" for n in DICT_DAMAGE),
]


def _message(case: str) -> str:
    return {**DATASET_DAMAGE, **DICT_DAMAGE}[case.removesuffix(" (DatasetDict)")][1]


@pytest.mark.parametrize("command", ["tune-lens", "lens-eval", "similarity"])
@pytest.mark.parametrize("case", DATASET_CASES)
def test_a_damaged_datasets_folder_is_one_line(
    case, command, damaged_datasets, model_dir, tmp_path, capsys
):
    folder = damaged_datasets[case]
    save_lens(TunedLens(3, 32), tmp_path / "lens")
    argv = {
        "tune-lens": ["tune-lens", "--tokens", "128", "--batch", "2", "--seq-len", "16"],
        "lens-eval": [
            "lens-eval",
            "--lens",
            str(tmp_path / "lens"),
            "--tokens",
            "64",
            "--seq-len",
            "16",
        ],
        "similarity": ["similarity"],  # any --data reads a saved folder the same way (data.py)
    }[command]
    code, _, err = run_any(
        capsys,
        *argv,
        "--model",
        str(model_dir),
        "--data",
        str(folder),
        "--out",
        str(tmp_path / "out"),
    )
    line = assert_one_error(code, err, _message(case))
    assert f"--data {folder}" in line and "save_to_disk" in line, line


def test_a_saved_dataset_with_a_damaged_info_file_still_reads(damaged_datasets, tmp_path):
    """dataset_info.json (features, description) is not needed to read the texts: not read."""
    from tokenprobe.tuned import read_corpus

    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["one text", "another"]}).save_to_disk(str(tmp_path / "d"))
    (tmp_path / "d" / "dataset_info.json").write_text("{broken")
    assert read_corpus(str(tmp_path / "d")) == ["one text", "another"]


# --------------------------------------------------------------- report: skip what cannot be drawn


@pytest.fixture(scope="module")
def report_folders(lm, tmp_path_factory) -> Path:
    """Two good results, a trace whose meta.json lost its scores and a lens-eval table of NaN."""
    root = tmp_path_factory.mktemp("report")
    synthetic_lens(5).save(root / "a_good", formats=[])
    trace = tokenprobe.causal_trace(
        lm,
        "Tools: hammer, wrench. Fruits: orange",
        target=" the",
        corrupt="noise",
        subject="hammer",
        samples=2,
    )
    trace.save(root / "b_trace", formats=[])
    meta = json.loads((root / "b_trace" / "meta.json").read_text())
    for key in ("clean_score", "corrupted_score"):
        del meta[key]
    (root / "b_trace" / "meta.json").write_text(json.dumps(meta))
    lens_eval(lm, TunedLens(3, 32), texts(1), tokens=64, seq_len=16, progress=False).save(
        root / "c_eval", formats=[]
    )
    table = pd.read_parquet(root / "c_eval" / "lens_eval.parquet")
    table[["kl", "ce"]] = np.nan
    table.to_parquet(root / "c_eval" / "lens_eval.parquet")
    synthetic_lens(4).save(root / "d_good", formats=[])
    return root


def test_report_skips_folders_it_cannot_draw_and_writes_the_rest(report_folders, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(report_folders, results)
    code, out, err = run_any(capsys, "report", str(results))
    assert code == 0, err
    assert "report of 2 result(s)" in out and (results / "report.html").stat().st_size > 1000
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("tokenprobe: warning: skipped") for ln in lines), (
        err
    )
    trace, table = (
        next(ln for ln in lines if f"skipped {results / name}: " in ln)
        for name in ("b_trace", "c_eval")
    )
    assert len(trace) > len(f"tokenprobe: warning: skipped {results / 'b_trace'}: ") + 20, (
        err
    )  # and why
    assert "not finite" in table, err
    assert "Traceback" not in err


def test_gather_gives_the_drawable_results_and_warns_of_the_others(report_folders):
    with pytest.warns(UserWarning) as caught:
        drawn = gather(report_folders)
    assert [folder.name for folder, _ in drawn] == ["a_good", "d_good"]
    assert sorted(
        Path(str(w.message).split(":")[0].removeprefix("skipped ")).name for w in caught
    ) == ["b_trace", "c_eval"]


def test_a_lens_eval_result_with_some_nan_draws(lm):
    """A NaN cell is drawn blank (the page's JSON has no NaN); the colour limit stays a number."""
    result = lens_eval(lm, TunedLens(3, 32), texts(1), tokens=64, seq_len=16, progress=False)
    result.kl[1, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        render([result])
        sections = sections_of(result)
        figure = result.plot()  # the line plot too
    assert sections[0]["values"][1][0] is None and np.isfinite(sections[0]["vmax"])
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_render_leaves_out_a_result_it_cannot_draw(lm):
    good = synthetic_lens(3)
    broken = synthetic_lens(3)
    broken.meta["plot_options"] = {"no_such_option": 1}
    with pytest.warns(UserWarning, match="skipped result 2: cannot be drawn"):
        page = render([good, broken])
    assert "synthetic" in page
    with pytest.raises(TokenprobeError, match="none of the 1 result"), pytest.warns(UserWarning):
        render([broken])
