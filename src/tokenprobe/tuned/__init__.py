"""The tuned lens, shared by the commands that train, evaluate and use it: affine translators
per layer (`lens`), their files in tokenprobe's and the tuned-lens package's formats
(`files`), training (`train`) and the text both read (`corpus`)."""

from __future__ import annotations

from .corpus import pack, read_corpus
from .files import FORMATS, lens_digest, lens_files, lens_format, load_lens, save_lens
from .lens import TunedDecoder, TunedLens, residual_width
from .train import Hyper, Training, train_lens

__all__ = [
    "FORMATS",
    "Hyper",
    "Training",
    "TunedDecoder",
    "TunedLens",
    "lens_digest",
    "lens_files",
    "lens_format",
    "load_lens",
    "pack",
    "read_corpus",
    "residual_width",
    "save_lens",
    "train_lens",
]
