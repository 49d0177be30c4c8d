"""One command-line option of an analysis (`Option`) and the argparse types every flag
reads with: whole numbers within an int64 (`Whole`), finite numbers, Ray worker shares.

An `Option` is the one source of a flag: the library parameter it sets, its default, its
choices and limits, and the flag and help text the command line shows. Analyses declare theirs
as the fields of a settings dataclass (`settings.setting`); command-line-only inputs (such as
--prompt-file) as `Option`s with no parameter.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TokenprobeError

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
        before = (
            list(getattr(namespace, self.dest) or []) if getattr(namespace, seen, False) else []
        )
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
