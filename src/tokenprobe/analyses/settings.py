"""One declaration per setting: an analysis's options are a frozen dataclass (a `Settings`)
whose fields carry their flag, help, limits and choices (`setting`, after inseq's `cli_arg`).

The same class is what the library function takes (`with_options` keeps keyword arguments for
Python callers, built from the fields), what the command line's flags are made from
(`Settings.options`) and the one place every value is checked: its declared type (a whole
number for an `int` field, a finite number for a `float` one), its choices and limits, and the
rules between settings (`Settings.check`), for Python callers and the command line alike.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from ..errors import TokenprobeError
from ..model.seq2seq import refusal
from ..registry import ANALYSES
from .option import INT_MAX, INT_MIN, SEED_PARAMS, Option, Whole, finite_float

S = TypeVar("S", bound="Settings")
R = TypeVar("R")

_KINDS = {int: "a whole number", float: "a number", bool: "True or False", str: "text"}


def setting(
    default: Any,
    help: str = "",
    *,
    cli: bool = True,
    **option: Any,
) -> Any:
    """A field of a `Settings` class: its default, its limits and choices (`minimum`,
    `maximum`, `choices`: checked for every setting) and, unless `cli` is False (a setting only
    Python callers give), its command-line flag: `help`, `flag`, `group`, `metavar`, `action`,
    ... (see `option.Option`)."""
    return field(default=default, metadata={"option": Option(None, help, **option), "cli": cli})


def _kind(hint: Any) -> type | None:
    """The plain type an annotation asks for (`int` for `int | None`), or None when it is
    not one plain type (a union of several, a sequence, Any)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0] if len(args) == 1 else None
    return hint if hint in _KINDS else None


def _optional(hint: Any) -> bool:
    """Whether an annotation allows None (`int | None`)."""
    return type(None) in typing.get_args(hint)


def _type_error(name: str, kind: type, value: Any) -> str | None:
    """Why `value` is not of the plain type `kind` (None when it is)."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    return None if ok else f"`{name}` must be {_KINDS[kind]}, not {value!r}"


@dataclass(frozen=True)
class Settings:
    """Base of every analysis's options (and figure options: `role = "figure"`). Built, it
    has been checked: a value of the wrong type, outside its choices or limits, or breaking a
    rule between settings raises one `TokenprobeError` naming the parameter."""

    role: ClassVar[str] = "run"

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _kind(hints.get(f.name))
            if value is None and kind is not None and not _optional(hints.get(f.name)):
                raise TokenprobeError(f"`{f.name}` must be {_KINDS[kind]}, not None")
            if value is None:
                continue
            if kind is not None and (why := _type_error(f.name, kind, value)):
                raise TokenprobeError(why)
            if kind is float and not math.isfinite(value):
                raise TokenprobeError(f"`{f.name}` must be a finite number, not {value}")
            about = f.metadata.get("option") or Option(None, "")
            limits = replace(about, param=f.name, type=kind)
            several = about.action in ("append", "extend") or about.nargs not in (None, "?")
            for item in value if several and isinstance(value, (list, tuple)) else [value]:
                limits.check(item)  # each of a repeatable flag's values
        self.check()

    def check(self) -> None:
        """Rules between settings (a subclass's own); one `TokenprobeError` naming them."""

    @classmethod
    def options(cls, *names: str) -> list[Option]:
        """The command-line options of these fields (default: every field with a flag), in
        the order of the class (or of `names`), with their defaults and argparse types."""
        by_name = {f.name: f for f in fields(cls)}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"{cls.__name__} has no setting {unknown[0]!r}")
        hints = _hints(cls)
        chosen = [by_name[n] for n in names] if names else list(by_name.values())
        return [_option(f, hints.get(f.name), cls.role) for f in chosen if f.metadata.get("cli")]

    @classmethod
    def build(cls: type[S], given: S | None = None, values: Mapping[str, Any] | None = None) -> S:
        """`given` (default: the defaults) with `values` replacing its settings, checked. A
        name that is no setting of this class is a TypeError, as for any keyword argument."""
        values = dict(values or {})
        names = {f.name for f in fields(cls)}
        for name in values:
            if name not in names:
                raise TypeError(
                    f"unexpected keyword argument {name!r} ({cls.__name__} has no such setting)"
                )
        if given is not None and not isinstance(given, cls):
            raise TokenprobeError(f"`options` must be {cls.__name__}, not {type(given).__name__}")
        if given is not None and not values:
            return given  # built, so checked already
        return replace(given, **values) if given is not None else cls(**values)

    def values(self) -> dict[str, Any]:
        """Every setting by name (a shallow dict, unlike `dataclasses.asdict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def changed(self) -> dict[str, Any]:
        """The settings that differ from their defaults (what meta.json records of figures)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.default is NO_DEFAULT or getattr(self, f.name) != f.default
        }


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A settings class's resolved annotations (read once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _option(f: Field[Any], hint: Any, role: str) -> Option:
    """A field's command-line option: its name, default and role filled in; an `int` field
    read as a whole number within its limits, a `float` one as a finite number."""
    about: Option = f.metadata["option"]
    kind = _kind(hint)
    argtype = about.type
    if argtype is None and kind is int and about.action is None:
        low = INT_MIN if about.minimum is None else max(int(about.minimum), INT_MIN)
        low = max(low, 0) if f.name in SEED_PARAMS else low
        high = INT_MAX if about.maximum is None else min(int(about.maximum), INT_MAX)
        argtype = Whole(low, high)
    elif argtype is None and kind is float and about.action is None:
        argtype = finite_float
    default = None if f.default is NO_DEFAULT else f.default
    if isinstance(default, tuple) and about.action in ("append", "extend"):
        default = list(default)
    return replace(about, param=f.name, role=role, default=default, type=argtype)


def with_options(
    cls: type[Settings], analysis: str | None = None
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a library function whose `options` parameter is a `cls`: callers may give
    `options=cls(...)`, the settings as keyword arguments, or both (keywords win); the
    function gets one checked `cls`. Its signature shows every setting with its default.
    The wrapper is one more frame: a warning's `stacklevel` counts it. `analysis`: the
    registry name whose `seq2seq` declaration gates a function that is not a registered run
    (`lens_rows` runs the lens), or a name that no registration has, which refuses an
    encoder-decoder under that name; by default the registration that runs this function."""

    def wrap(func: Callable[..., R]) -> Callable[..., R]:
        own = inspect.signature(func)
        if "options" not in own.parameters:
            raise TypeError(f"{func.__name__} takes no `options` parameter")
        passed = [p for p in own.parameters.values() if p.name != "options"]
        shared = {f.name for f in fields(cls)} & set(own.parameters)
        if shared:
            raise TypeError(f"{func.__name__}: {sorted(shared)} are settings of {cls.__name__}")

        first = passed[0].name if passed else None

        @functools.wraps(func)
        def call(*args: Any, options: Any = None, **kwargs: Any) -> R:
            mine = {k: kwargs.pop(k) for k in list(kwargs) if k in own.parameters}
            _refuse_seq2seq(call, args[0] if args else mine.get(first or ""), analysis)
            return func(*args, options=cls.build(options, kwargs), **mine)

        hints = _hints(cls)
        settings = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if f.default is NO_DEFAULT else f.default,
                annotation=hints.get(f.name, inspect.Parameter.empty),
            )
            for f in fields(cls)
        ]
        given = inspect.Parameter(
            "options",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=f"{cls.__name__} | None",
        )
        positional = [p for p in passed if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keywords = [p for p in passed if p.kind is inspect.Parameter.KEYWORD_ONLY]
        call.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[*positional, given, *settings, *keywords]
        )
        call.settings = cls  # type: ignore[attr-defined]
        return call

    return wrap


def _refuse_seq2seq(call: Callable[..., Any], model: Any, analysis: str | None = None) -> None:
    """The gate every analysis passes: an encoder-decoder model (the model, or a classifier's
    `.lm`) given to an analysis whose registration does not declare `seq2seq=True` is one
    line, naming the analysis and those that take one."""
    lm = getattr(model, "lm", model)
    if getattr(lm, "is_seq2seq", False) is not True:
        return
    spec = ANALYSES.get(analysis) if analysis else None
    spec = spec or next((a for a in ANALYSES.values() if a.run is call), None)
    if spec is not None and spec.seq2seq:
        return
    supported = [a.name for a in ANALYSES.values() if a.seq2seq]
    name = spec.name if spec is not None else analysis or call.__name__
    raise refusal(getattr(lm, "name", "the model"), type(lm.model).__name__, name, supported)


@dataclass(frozen=True)
class PromptSettings(Settings):
    """The settings of every analysis that renders a prompt: --chat and --system."""

    chat: bool = setting(
        False,
        "wrap the prompt as a user turn in the model's chat template",
        group="input",
        action="store_true",
    )
    system: str | None = setting(
        None, "system message for --chat (default: the template's own)", group="input"
    )

    @property
    def prompting(self) -> dict[str, Any]:
        """--chat and --system as `text.prepare` takes them."""
        return {"chat": self.chat, "system": self.system}


@dataclass(frozen=True)
class TargetLangSettings(Settings):
    """The setting of every analysis that takes an encoder-decoder model: --target-lang, the
    language code the decoder is forced to begin with (mBART-50, M2M100, NLLB)."""

    target_lang: str | None = setting(
        None,
        "encoder-decoder models: the target language code the decoder begins with, as "
        "generate's forced_bos_token_id (de_DE for mBART-50, de for M2M100, deu_Latn for "
        "NLLB; default: the model's own forced token, if any)",
        metavar="CODE",
        group="encoder-decoder",
    )


@dataclass(frozen=True)
class DecoderTextSettings(TargetLangSettings):
    """--target-lang and --decoder-text: the target-side text an encoder-decoder's decoder has
    already written, read after its start and forced tokens (the positions analysed)."""

    decoder_text: str | None = setting(
        None,
        "encoder-decoder models: the target-side text the decoder has already written, after "
        "its start token (e.g. the translation so far); the analysis reads the decoder at "
        "these positions (default: only the start and forced tokens)",
        metavar="TEXT",
        group="encoder-decoder",
    )
