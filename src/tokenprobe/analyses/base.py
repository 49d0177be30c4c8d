"""What every analysis declares: its options, its run function, its result type and its
command-line glue. The command line, the report, save/load and the demo are built from these
specs (see `tokenprobe.registry`), so a new analysis is one folder and one `register` call.

An `Option` is the one source of a setting: the library parameter it sets, its default (read
from the run function's signature, or from the result's `views` for figure options), its
choices and limits (checked for Python callers and on the command line alike), and the flag
and help text the command line shows.
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import TokenprobeError

if TYPE_CHECKING:
    from ..model import LoadedModel
    from ..results import Result

MISSING: Any = object()  # an option's default not given: taken from the run function
ROLES = ("run", "figure", "input")  # what an option's value goes to


INT_MAX = 2**63 - 1  # the largest whole number a setting takes: an int64, what torch and numpy hold
INT_MIN = -(2**63)
SEED_PARAMS = ("seed",)  # random seeds: 0 to INT_MAX, what numpy's and torch's generators both take


class Whole:
    """argparse type for whole numbers from `minimum` to `maximum` (default: what an int64
    holds), so a huge value is refused as the flag is read, not overflowing deep in torch."""

    def __init__(self, minimum: int = INT_MIN, maximum: int = INT_MAX) -> None:
        self.minimum, self.maximum = minimum, maximum

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < self.minimum:
            raise argparse.ArgumentTypeError(f"must be at least {self.minimum}, not {value}")
        if value > self.maximum:
            raise argparse.ArgumentTypeError(f"must be at most {self.maximum}, not {value}")
        return value


positive_int = Whole(1)  # counts that must be at least 1
nonnegative_int = Whole(0)  # counts that may be 0


class _ExtendGiven(argparse.Action):
    """`extend` that starts from what is given, not from the default: `--component attn
    --component mlp` is [attn, mlp], and the default only stands when the flag is absent."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        seen = f"_{self.dest}_given"
        before = list(getattr(namespace, self.dest) or []) if getattr(namespace, seen, False) else []
        setattr(namespace, self.dest, before + list(values))
        setattr(namespace, seen, True)


def finite_float(text: str) -> float:
    """argparse type for every number a flag reads: a finite one (inf and nan are refused
    here, once, for every float flag; an option's `minimum`/`maximum` are checked after)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def share(minimum_exclusive: bool) -> Callable[[str], float]:
    """argparse type for a worker's CPUs (above 0) or GPUs (0 or more)."""

    def parse(text: str) -> float:
        value = finite_float(text)
        if value < 0 or (minimum_exclusive and value == 0):
            raise argparse.ArgumentTypeError(
                f"must be {'above' if minimum_exclusive else 'at least'} 0, not {value:g}"
            )
        return value

    return parse


def _shown(limit: float) -> str:
    """A limit as a message shows it: a whole number in full (2**63 - 1 is not 9.22e+18)."""
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"


def bounded_int(maximum: int) -> Whole:
    """argparse type for counts from 1 to `maximum`."""
    return Whole(1, maximum)


@dataclass(frozen=True)
class Option:
    """One setting of an analysis, for the library and the command line.

    `param` is the library's name (None: a command-line input the analysis's glue reads, such
    as --prompt-file); `role` says where the value goes: `run` (the run function), `figure`
    (the result's `views`, and so the saved figures and the report) or `input` (read by the
    analysis's command-line glue). `invert` makes a `--no-...` switch that sets the parameter
    False. `help` may say {default}, {choices}, {minimum} and {maximum}.
    """

    param: str | None
    help: str
    flag: str | None = None  # default: --param-with-dashes
    role: str = "run"
    group: str = "options"
    default: Any = MISSING
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    metavar: str | None = None
    action: str | None = None  # argparse action: store_true, append, extend (a repeat adds)
    nargs: str | int | None = None
    required: bool = False
    invert: bool = False
    dest: str | None = None  # the argparse name, when two options share a flag's spelling

    @property
    def cli_flag(self) -> str:
        if self.flag:
            return self.flag
        assert self.param is not None, "an option without a parameter needs a flag"
        return "--" + self.param.replace("_", "-")

    @property
    def cli_dest(self) -> str:
        return self.dest or self.cli_flag.lstrip("-").replace("-", "_")

    def help_text(self) -> str:
        default = self.default
        if isinstance(default, (list, tuple)) and not default:
            default = "none"
        fill = {
            "{default}": str(default),
            "{choices}": ", ".join(map(str, self.choices or ())),
            "{minimum}": _shown(self.minimum) if self.minimum is not None else "",
            "{maximum}": _shown(self.maximum) if self.maximum is not None else "",
        }
        text = self.help
        for key, value in fill.items():  # not str.format: help may show "{text}" literally
            text = text.replace(key, value)
        return text

    @property
    def whole_range(self) -> tuple[int, int] | None:
        """For a whole-number option, the range any value must be in besides its declared
        limits: what an int64 holds (a seed: 0 and up); None for other options."""
        if self.type is int or isinstance(self.type, Whole):
            return (0 if self.param in SEED_PARAMS else INT_MIN, INT_MAX)
        return None

    def check(self, value: Any) -> None:
        """Refuse a value outside the option's choices or limits, naming the parameter."""
        if value is None or self.param is None:
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise TokenprobeError(f"`{self.param}` must be a finite number, not {value}")
        if self.choices is not None and value not in self.choices:
            raise TokenprobeError(
                f"`{self.param}` must be one of {', '.join(map(str, self.choices))}, not {value!r}"
            )
        limits = [(self.minimum, self.maximum)]
        if isinstance(value, int) and not isinstance(value, bool) and self.whole_range:
            limits.append(self.whole_range)
        for low, high in limits:
            if low is not None and value < low:
                raise TokenprobeError(f"`{self.param}` must be at least {_shown(low)}, not {value}")
            if high is not None and value > high:
                raise TokenprobeError(f"`{self.param}` must be at most {_shown(high)}, not {value}")

    def add_to(self, group: Any) -> None:
        """Add this option's flag to an argparse group."""
        kwargs: dict[str, Any] = {"help": self.help_text(), "dest": self.cli_dest}
        if self.action in ("store_true", "store_false"):
            kwargs["action"] = self.action
        else:
            if self.action:
                kwargs["action"] = _ExtendGiven if self.action == "extend" else self.action
            default = self.default
            if self.action == "append" and default not in (None, MISSING):
                default = list(default)  # argparse appends to its default's copy
            kwargs["default"] = None if default is MISSING else default
            for key in ("type", "choices", "metavar", "nargs"):
                if getattr(self, key) is not None:
                    kwargs[key] = getattr(self, key)
            if self.type is float:
                kwargs["type"] = finite_float
            elif self.type is int:  # every whole-number flag in range as it is read
                kwargs["type"] = Whole(*(self.whole_range or ()))
            if self.required:
                kwargs["required"] = True
        group.add_argument(self.cli_flag, **kwargs)

    def value_from(self, args: argparse.Namespace) -> Any:
        """The parameter's value from parsed arguments."""
        value = getattr(args, self.cli_dest)
        return (not value) if self.invert else value


def check_options(options: Sequence[Option], values: Mapping[str, Any]) -> None:
    """Check each given parameter against its option's choices and limits."""
    for option in options:
        if option.param is not None and option.param in values:
            option.check(values[option.param])


def read_prompt(session: Session, or_data: bool = False) -> str:
    """The prompt of --prompt or --prompt-file (exactly one; `or_data`: the command also takes
    --data), or one line saying what to give."""
    args = session.args
    if (args.prompt is None) == (args.prompt_file is None):
        data = ", --prompt-file FILE or --data FILE" if or_data else " or --prompt-file FILE"
        raise TokenprobeError(f"give one of --prompt TEXT{data}")
    prompt = args.prompt if args.prompt is not None else session.read_text_file(args.prompt_file, "--prompt-file")
    if not prompt.strip():
        raise TokenprobeError("the prompt is empty: give --prompt or --prompt-file")
    return prompt


class Session(Protocol):
    """What an analysis's command-line glue gets from the command line (see `cli/session.py`)."""

    args: argparse.Namespace

    def params(self, role: str = "run") -> dict[str, Any]:
        """The parameters of the options with this role, from the parsed flags."""

    @property
    def offline(self) -> bool:
        """--offline or HF_HUB_OFFLINE: no downloads."""

    def load(self, *, task: str = "causal-lm", dtype: str | None = None) -> LoadedModel:
        """The model of --model/--device/--dtype (loaded once, kept for the next call)."""

    def read_text_file(self, path: str, flag: str) -> str:
        """A UTF-8 file's text, or one clear error naming the flag."""

    def check_out(self, out: Path, names: Sequence[str]) -> None:
        """Before long work: the outputs can be written there (or an interrupted run resumed)."""

    def save(self, result: Result, out: Path, plot_options: dict[str, Any] | None = None) -> None:
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


def prompt_options(*, several: bool, group: str = "input") -> list[Option]:
    """--prompt, --prompt-file, --chat and --system, the same for every prompt-taking analysis."""
    return [
        Option(
            None,
            "prompt text" + (" (repeat for several prompts; each gets a sub-folder)" if several else ""),
            flag="--prompt",
            role="input",
            group=group,
            action="append" if several else None,
        ),
        Option(
            None, "read the prompt from this UTF-8 file", flag="--prompt-file", role="input", group=group
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
        Option(None, "Ray workers, one model replica each (default 2)", flag="--workers", role="input",
               type=positive_int, default=2, metavar="N", group=group),
        Option(None, "CPUs per Ray worker (default 1)", flag="--cpus-per-worker", role="input",
               type=share(True), default=1.0, metavar="N", group=group),
        Option(None, "GPUs per Ray worker (default 0; 1 puts each replica on its own GPU)",
               flag="--gpus-per-worker", role="input", type=share(False), default=0.0, metavar="N",
               group=group),
    ]


def rows_options(group: str = "a data file of prompts (one result row each)") -> list[Option]:
    """--data, --prompt-column, --target-column, --figures and --resume, for every analysis
    that runs once per prompt and can run over a data file's rows (`rowset.run_rows`)."""
    return [
        Option(None, "run once per row of this CSV, JSONL or Parquet file, a folder of Parquet "
               "files or a saved `datasets` folder, or hf:NAME[:CONFIG][:SPLIT]: one table for "
               "all rows, with a `row` column", flag="--data", role="input", metavar="FILE",
               group=group),
        Option(None, "the --data column holding each row's prompt (default prompt)",
               flag="--prompt-column", role="input", default="prompt", metavar="NAME", group=group),
        Option(None, "the --data column holding each row's target (default: none)",
               flag="--target-column", role="input", metavar="NAME", group=group),
        Option(None, "with --data: draw the figures of the first N rows (default 3)",
               flag="--figures", role="input", type=nonnegative_int, default=3, metavar="N",
               group=group),
    ]


def check_rows_flags(args: argparse.Namespace) -> None:
    """Without --data, the data-file flags would be silently ignored: one line instead."""
    if args.data is not None:
        return
    used = [flag for flag, on in (
        ("--target-column", args.target_column is not None),
        ("--prompt-column", args.prompt_column != "prompt"),
        ("--ray", getattr(args, "ray", False)),
    ) if on]
    if used:
        raise TokenprobeError(f"{used[0]} goes with a --data file of prompts; --prompt runs here at once")
