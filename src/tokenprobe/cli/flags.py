"""The command line's shared pieces: the parser class, the flags every analysis has, and
checks made before long work (so a bad --out fails before the model runs, not after)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from ..analyses.base import Analysis, positive_int
from ..errors import TokenprobeError
from ..model import BUILTIN_MODELS, DEFAULT_MODEL
from ..model.placement import DEVICE_MAPS
from ..results import FIGURE_FORMATS

DEBUG_ENV = "TOKENPROBE_DEBUG"
DEBUG_HELP = f"on an error, print the Python traceback as well as the one-line message (or set {DEBUG_ENV}=1)"
COMMON_FLAGS = {
    "batch_tokens": "--batch-tokens",
    "device": "--device",
    "dtype": "--dtype",
    "out": "--out",
    "overwrite": "--overwrite",
    "formats": "--format",
    "out_dir": "--out",
    "prompt": "--prompt",
    "name": "--model",
    "offline": "--offline",
    "trust_remote_code": "--trust-remote-code",
    "device_map": "--device-map",
    "max_memory": "--max-memory",
    "resume": "--resume",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `tokenprobe: error: ...` and exit status 2, like every
    other bad input (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tokenprobe: error: {message} (see {self.prog} --help)\n")


def add_common(
    parser: argparse.ArgumentParser,
    *,
    default_out: str,
    batch_tokens: int | None = 4096,
    dtype_auto: str = "bfloat16 on a GPU, float32 on CPU",
) -> None:
    """Model, device, output and (where `batch_tokens` is given) batching flags, the same for
    every command; `dtype_auto` says what --dtype auto means for this one."""
    g = parser.add_argument_group("model and output")
    _add_model_flags(g)
    _add_placement_flags(g, dtype_auto)
    if batch_tokens is not None:
        g.add_argument(
            "--batch-tokens",
            type=positive_int,
            default=batch_tokens,
            help=f"padded tokens per forward pass (default {batch_tokens})",
        )
    _add_output_flags(g, default_out)


def _add_model_flags(g: argparse._ArgumentGroup) -> None:
    """Which model to load and from where (--model, --offline, --trust-remote-code)."""
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in name ({', '.join(BUILTIN_MODELS)}), a local Hugging Face folder, a .gguf file, "
        f"or a hub id already in the local cache (default: {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--offline",
        action="store_true",
        help="use only models (and data sets) already in the Hugging Face cache; without it a hub "
        "id that is not cached is downloaded there (also HF_HUB_OFFLINE=1)",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code a hub model ships with (only for models you trust)",
    )


def _add_placement_flags(g: argparse._ArgumentGroup, dtype_auto: str) -> None:
    """Where the model runs and in what dtype (--device, --device-map, --max-memory, --dtype);
    `dtype_auto` says what --dtype auto means for this command."""
    g.add_argument(
        "--device", default="auto", help="auto (GPU if any, else CPU), cpu, cuda, cuda:N or mps"
    )
    g.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        help="split a model too large for one device across the GPUs and the CPU (accelerate's "
        "device map; --device is then where it starts)",
    )
    g.add_argument(
        "--max-memory",
        metavar="SPEC",
        help="with --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB (GPU N or "
        "cuda:N); a GPU the machine lacks is an error",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help=f"model weights' dtype; auto = {dtype_auto}. Statistics are always float32",
    )


def _add_output_flags(g: argparse._ArgumentGroup, default_out: str) -> None:
    """Where results go and in which figure formats (--out, --overwrite, --format)."""
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


def add_analysis(sub: Any, spec: Analysis) -> argparse.ArgumentParser:
    """The subcommand of one analysis: the shared flags, then its options group by group."""
    parser = sub.add_parser(spec.command, help=spec.help, description=spec.description)
    add_common(
        parser,
        default_out=spec.default_out,
        batch_tokens=spec.default("batch_tokens") if spec.batch_tokens else None,
        dtype_auto=spec.dtype_auto,
    )
    for title in spec.groups:
        group = parser.add_argument_group(title)
        for option in spec.options:
            if option.group == title:
                option.add_to(group)
    return parser


def check_utf8(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every text or path a flag gave is UTF-8: bytes that are not (a shell passes them on,
    Python keeps them as lone surrogates) are one line naming the flag, not a tokenizer's
    TypeError or a file name that cannot be written into a table."""
    for action in _actions_of(parser, args):
        values = getattr(args, action.dest, None)
        for value in values if isinstance(values, list) else [values]:
            for text in value if isinstance(value, list) else [value]:  # append + nargs
                if isinstance(text, str) and not _is_utf8(text):
                    name = "/".join(action.option_strings) or (action.metavar or action.dest)
                    raise TokenprobeError(
                        f"{name} {_as_bytes(text)} is not valid UTF-8 text: give it in UTF-8 "
                        "(check the encoding of the terminal, script or file it came from)"
                    )


def _actions_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[argparse.Action]:
    """The parser's arguments and those of the command `args.command` chose."""
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            actions += action.choices[args.command]._actions
    return actions


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_bytes(text: str, limit: int = 60) -> str:
    """The bytes the shell passed (Python keeps each undecodable one as a lone surrogate)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte stands for (from a Python caller)
        raw = text.encode("utf-8", "backslashreplace")
    shown = repr(raw)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def read_text_file(path: str, flag: str) -> str:
    """A UTF-8 file's text, byte for byte (a \\r stays a \\r: no newline translation), or one
    clear error naming the flag."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise TokenprobeError(f"{flag} {path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise TokenprobeError(f"{flag} {path} is not UTF-8 text: save it as UTF-8") from exc
    except OSError as exc:
        raise TokenprobeError(f"{flag} {path}: cannot read it ({exc.strerror})") from exc


def check_can_write(path: Path, flag: str) -> None:
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
