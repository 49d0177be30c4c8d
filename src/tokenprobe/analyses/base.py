"""What every analysis declares (`Analysis`): its options, its run function, its result type
and its command-line glue. The command line, the report, save/load and the demo are built from
these specs (see `tokenprobe.registry`), so a new analysis is one folder and one `register`
call. Its settings are a dataclass (`settings.Settings`) whose fields are the flags
(`option.Option`); the flags every prompt or data-set analysis shares are made here.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import TokenprobeError
from .option import (
    INT_MAX,
    INT_MIN,
    MISSING,
    ROLES,
    SEED_PARAMS,
    Option,
    Whole,
    bounded_int,
    finite_float,
    nonnegative_int,
    positive_int,
    share,
)

__all__ = [
    "MISSING",
    "ROLES",
    "INT_MAX",
    "INT_MIN",
    "SEED_PARAMS",
    "Whole",
    "positive_int",
    "nonnegative_int",
    "finite_float",
    "share",
    "bounded_int",
    "Option",
    "Analysis",
    "Session",
    "read_prompt",
    "prompt_inputs",
    "prompt_options",
    "ray_options",
    "rows_options",
    "check_rows_flags",
]

if TYPE_CHECKING:
    from ..model import LoadedModel
    from ..results import Result
    from .settings import Settings

S = TypeVar("S", bound="Settings")


def read_prompt(session: Session, or_data: bool = False) -> str:
    """The prompt of --prompt or --prompt-file (exactly one; `or_data`: the command also takes
    --data), or one line saying what to give."""
    args = session.args
    if (args.prompt is None) == (args.prompt_file is None):
        data = ", --prompt-file FILE or --data FILE" if or_data else " or --prompt-file FILE"
        raise TokenprobeError(f"give one of --prompt TEXT{data}")
    prompt = (
        args.prompt
        if args.prompt is not None
        else session.read_text_file(args.prompt_file, "--prompt-file")
    )
    if not prompt.strip():
        raise TokenprobeError("the prompt is empty: give --prompt or --prompt-file")
    return prompt


class Session(Protocol):
    """What an analysis's command-line glue gets from the command line (see `cli/session.py`)."""

    args: argparse.Namespace

    def options(self, cls: type[S]) -> S:
        """The analysis's settings of class `cls` from the parsed flags, checked."""

    @property
    def offline(self) -> bool:
        """--offline or HF_HUB_OFFLINE: no downloads."""

    def load(self, *, task: str = "causal-lm", dtype: str | None = None) -> LoadedModel:
        """The model of --model/--device/--dtype (loaded once, kept for the next call)."""

    def read_text_file(self, path: str, flag: str) -> str:
        """A UTF-8 file's text, or one clear error naming the flag."""

    def check_out(self, out: Path, names: Sequence[str]) -> None:
        """Before long work: the outputs can be written there (or an interrupted run resumed)."""

    def save(
        self, result: Result, out: Path, plot_options: dict[str, Any] | Settings | None = None
    ) -> None:
        """Save in the --format formats and print the summary and the files written."""

    def executor(self) -> Any:
        """A Ray executor from --ray/--workers/..., or None for a run here."""


@dataclass
class Analysis:
    """One analysis: everything the command line, the report and save/load need of it."""

    name: str  # the registry's key and demo.json's
    command: str  # the subcommand
    run: Callable[..., Any]  # the library function
    result: type[Result]
    help: str  # one line in `tokenprobe --help`
    description: str  # `tokenprobe COMMAND --help`
    options: Sequence[Option]
    cli: Callable[[Session], None]  # parsed flags -> results saved
    demo: Callable[[Session, dict[str, Any], Path], None] | None = None  # a demo.json entry
    default_out: str = ""  # default --out (out/<command>)
    batch_tokens: bool = True  # --batch-tokens (default: the run function's)
    dtype_auto: str = "bfloat16 on a GPU, float32 on CPU"  # what --dtype auto means here
    dtype: Callable[[str], str] = field(default=lambda dtype: dtype)  # --dtype -> load dtype
    groups: Sequence[str] = ()  # the order of option groups in --help (default: first use)
    gradients: Callable[[argparse.Namespace], bool] = field(default=lambda args: False)
    oom_advice: str = ""  # out of memory: what else to lower here, e.g. "lower --samples"
    demo_help: str = ""  # what its demo entries run, in `demo --help` ("flip rates (200 texts)")
    # the files a demo.json entry writes, where they differ by entry (default: `result`'s)
    demo_files: Callable[[dict[str, Any], Sequence[str]], list[str]] | None = None
    seq2seq: bool = False  # takes an encoder-decoder model (else the gate refuses one)

    def __post_init__(self) -> None:
        self.default_out = self.default_out or f"out/{self.command}"
        self.options = [self._with_default(o) for o in self.options]
        if not self.groups:
            self.groups = list(dict.fromkeys(o.group for o in self.options))

    def _with_default(self, option: Option) -> Option:
        if option.role not in ROLES:
            raise ValueError(f"option {option.cli_flag}: unknown role {option.role!r}")
        if option.default is not MISSING or option.param is None or option.role == "input":
            return option
        source = self.run if option.role == "run" else self.result.views
        parameter = inspect.signature(source).parameters.get(option.param)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return replace(option, default=None)
        return replace(option, default=parameter.default)

    def default(self, param: str) -> Any:
        """The default of a run parameter, as the run function's signature says."""
        return inspect.signature(self.run).parameters[param].default

    def flags(self) -> dict[str, str]:
        """Library parameter -> the flag that sets it, for error messages on the command line."""
        return {o.param: o.cli_flag for o in self.options if o.param}


def prompt_inputs(*, several: bool, group: str = "input") -> list[Option]:
    """--prompt and --prompt-file, the same for every prompt-taking analysis (read by its
    command-line glue; --chat and --system are settings: `settings.PromptSettings`)."""
    return prompt_options(several=several, group=group)[:2]


def prompt_options(*, several: bool, group: str = "input") -> list[Option]:
    """--prompt, --prompt-file, --chat and --system, the same for every prompt-taking analysis."""
    return [
        Option(
            None,
            "prompt text"
            + (" (repeat for several prompts; each gets a sub-folder)" if several else ""),
            flag="--prompt",
            role="input",
            group=group,
            action="append" if several else None,
        ),
        Option(
            None,
            "read the prompt from this UTF-8 file",
            flag="--prompt-file",
            role="input",
            group=group,
        ),
        Option(
            "chat",
            "wrap the prompt as a user turn in the model's chat template",
            group=group,
            action="store_true",
        ),
        Option("system", "system message for --chat (default: the template's own)", group=group),
    ]


def ray_options(group: str = "Ray (a data set over a cluster)") -> list[Option]:
    """--ray, --workers, --cpus-per-worker and --gpus-per-worker, for every data-set run."""
    return [
        Option(
            None,
            "run the data set on Ray: the cluster at RAY_ADDRESS when set, else a local one "
            "(pip install 'tokenprobe[ray]')",
            flag="--ray",
            role="input",
            action="store_true",
            group=group,
        ),
        Option(
            None,
            "Ray workers, one model replica each (default 2)",
            flag="--workers",
            role="input",
            type=positive_int,
            default=2,
            metavar="N",
            group=group,
        ),
        Option(
            None,
            "CPUs per Ray worker (default 1)",
            flag="--cpus-per-worker",
            role="input",
            type=share(True),
            default=1.0,
            metavar="N",
            group=group,
        ),
        Option(
            None,
            "GPUs per Ray worker (default 0; 1 puts each replica on its own GPU)",
            flag="--gpus-per-worker",
            role="input",
            type=share(False),
            default=0.0,
            metavar="N",
            group=group,
        ),
    ]


def rows_options(group: str = "a data file of prompts (one result row each)") -> list[Option]:
    """--data, --prompt-column, --target-column, --figures and --resume, for every analysis
    that runs once per prompt and can run over a data file's rows (`rowset.run_rows`)."""
    return [
        Option(
            None,
            "run once per row of this CSV, JSONL or Parquet file, a folder of Parquet "
            "files or a saved `datasets` folder, or hf:NAME[:CONFIG][:SPLIT]: one table for "
            "all rows, with a `row` column",
            flag="--data",
            role="input",
            metavar="FILE",
            group=group,
        ),
        Option(
            None,
            "the --data column holding each row's prompt (default prompt)",
            flag="--prompt-column",
            role="input",
            default="prompt",
            metavar="NAME",
            group=group,
        ),
        Option(
            None,
            "the --data column holding each row's target (default: none)",
            flag="--target-column",
            role="input",
            metavar="NAME",
            group=group,
        ),
        Option(
            None,
            "with --data: draw the figures of the first N rows (default 3)",
            flag="--figures",
            role="input",
            type=nonnegative_int,
            default=3,
            metavar="N",
            group=group,
        ),
    ]


def check_rows_flags(args: argparse.Namespace) -> None:
    """Without --data, the data-file flags would be silently ignored: one line instead."""
    if args.data is not None:
        return
    used = [
        flag
        for flag, on in (
            ("--target-column", args.target_column is not None),
            ("--prompt-column", args.prompt_column != "prompt"),
            ("--ray", getattr(args, "ray", False)),
        )
        if on
    ]
    if used:
        raise TokenprobeError(
            f"{used[0]} goes with a --data file of prompts; --prompt runs here at once"
        )
