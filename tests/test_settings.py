"""The settings mechanism (`analyses.settings`): one declaration per setting, checked once for
Python callers and the command line alike, with the library's keyword arguments built from it."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import FrozenInstanceError, dataclass

import pytest

from tokenprobe.analyses.option import Whole
from tokenprobe.analyses.settings import PromptSettings, Settings, setting, with_options
from tokenprobe.errors import TokenprobeError


@dataclass(frozen=True)
class _Toy(PromptSettings):
    """A made-up analysis's settings: one of each kind the checks tell apart."""

    count: int = setting(3, "how many (default {default})", minimum=1, maximum=10)
    scale: float | None = setting(None, "a scale", minimum=0)
    mode: str = setting("a", "the mode", choices=("a", "b"))
    parts: tuple[str, ...] = setting(
        ("x",), "parts", action="extend", nargs="+", choices=("x", "y")
    )
    seed: int = setting(0, "random seed")
    secret: object = setting(None, cli=False)

    def check(self) -> None:
        if self.mode == "b" and self.scale is None:
            raise TokenprobeError("`mode` b needs a `scale`")


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"count": 2.5}, "`count` must be a whole number, not 2.5"),
        ({"count": True}, "`count` must be a whole number, not True"),
        ({"count": "3"}, "`count` must be a whole number, not '3'"),
        ({"count": 0}, "`count` must be at least 1, not 0"),
        ({"count": 11}, "`count` must be at most 10, not 11"),
        ({"scale": float("nan")}, "`scale` must be a finite number, not nan"),
        ({"scale": float("inf")}, "`scale` must be a finite number, not inf"),
        ({"scale": -1.0}, "`scale` must be at least 0, not -1.0"),
        ({"scale": False}, "`scale` must be a number, not False"),
        ({"mode": "c"}, "`mode` must be one of a, b, not 'c'"),
        ({"parts": ("x", "z")}, "`parts` must be one of x, y, not 'z'"),
        ({"chat": 1}, "`chat` must be True or False, not 1"),
        ({"system": 3}, "`system` must be text, not 3"),
        ({"seed": -1}, "`seed` must be at least 0, not -1"),
        ({"seed": 2**63}, "`seed` must be at most 9223372036854775807"),
        ({"mode": "b"}, "`mode` b needs a `scale`"),
        ({"count": None}, "`count` must be a whole number, not None"),
        ({"mode": None}, "`mode` must be text, not None"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_setting(values, words):
    with pytest.raises(TokenprobeError) as caught:
        _Toy(**values)
    assert words.replace("`", "") in str(caught.value)


def test_good_values_pass_and_settings_are_frozen():
    toy = _Toy(count=10, scale=2, mode="b", parts=("x", "y"), seed=2**63 - 1)
    assert toy.scale == 2 and toy.changed() == {
        "count": 10,
        "scale": 2,
        "mode": "b",
        "parts": ("x", "y"),
        "seed": 2**63 - 1,
    }
    with pytest.raises(FrozenInstanceError):
        toy.count = 4  # type: ignore[misc]


def test_the_flags_come_from_the_fields():
    options = {o.param: o for o in _Toy.options()}
    assert "secret" not in options  # a library-only setting has no flag
    assert options["count"].cli_flag == "--count" and options["count"].default == 3
    assert options["count"].help_text() == "how many (default 3)"
    assert isinstance(options["count"].type, Whole)
    assert (options["count"].type.minimum, options["count"].type.maximum) == (1, 10)
    assert options["seed"].type.minimum == 0  # a seed is never negative
    parser = argparse.ArgumentParser(exit_on_error=False)
    for option in options.values():
        option.add_to(parser)
    args = parser.parse_args(["--count", "4", "--scale", "0.5", "--parts", "y"])
    assert (args.count, args.scale, args.parts, args.chat) == (4, 0.5, ["y"], False)
    for bad in (["--count", "2.5"], ["--count", "11"], ["--scale", "nan"]):
        with pytest.raises(argparse.ArgumentError):
            parser.parse_args(bad)
    assert [o.param for o in _Toy.options("mode", "count")] == ["mode", "count"]
    with pytest.raises(ValueError, match="no setting 'nope'"):
        _Toy.options("nope")


@with_options(_Toy)
def _toy_run(x: int, *, options: _Toy, progress: bool = False) -> tuple[int, _Toy, bool]:
    return x, options, progress


def test_with_options_accepts_the_object_the_keywords_or_both():
    assert _toy_run(1)[1] == _Toy()
    assert _toy_run(1, count=4)[1] == _toy_run(1, options=_Toy(count=4))[1]
    both = _toy_run(1, options=_Toy(count=4, mode="b", scale=1.0), mode="a", progress=True)
    assert both == (1, _Toy(count=4, mode="a", scale=1.0), True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'cont'"):
        _toy_run(1, cont=4)
    with pytest.raises(TokenprobeError, match="count must be a whole number"):
        _toy_run(1, count=float("nan"))
    with pytest.raises(TokenprobeError, match="options must be _Toy"):
        _toy_run(1, options={"count": 4})


def test_the_signature_shows_every_setting_with_its_default():
    parameters = inspect.signature(_toy_run).parameters
    assert list(parameters)[:3] == ["x", "options", "chat"]
    assert parameters["count"].default == 3 and parameters["mode"].default == "a"
    assert parameters["progress"].default is False
    assert _toy_run.settings is _Toy  # type: ignore[attr-defined]


def test_a_setting_named_twice_is_refused_at_import():
    with pytest.raises(TypeError, match="settings of _Toy"):

        @with_options(_Toy)
        def twice(*, options: _Toy, count: int = 3) -> None: ...


def test_every_analysis_declares_its_flags_once():
    """No two options of an analysis set the same parameter or spell the same flag."""
    from tokenprobe.analyses import ANALYSES

    for spec in ANALYSES.values():
        params = [o.param for o in spec.options if o.param]
        flags = [o.cli_flag for o in spec.options]
        assert len(params) == len(set(params)), spec.name
        assert len(flags) == len(set(flags)), spec.name


def test_settings_are_a_base_for_figures_too():
    @dataclass(frozen=True)
    class Figure(Settings):
        role = "figure"
        vmax: float | None = setting(None, cli=False, minimum=0)

    assert Figure.options() == []
    with pytest.raises(TokenprobeError, match="vmax must be at least 0"):
        Figure(vmax=-1.0)  # a library-only setting's limits are checked too
    with pytest.raises(TokenprobeError, match="vmax must be a finite number"):
        Figure(vmax=float("nan"))
