"""What an analysis's command-line glue gets: the parsed flags as library parameters, the
model (loaded once), checks before long work, and saving with a printed summary."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import model as model_module
from ..analyses.base import Analysis
from ..analyses.settings import Settings
from ..model.memory import check_fits
from ..model.placement import placement_kwargs
from ..results import check_writable
from .flags import check_can_write, read_text_file

log = logging.getLogger("tokenprobe")
S = TypeVar("S", bound=Settings)

if TYPE_CHECKING:
    from ..model import LoadedModel
    from ..results import Result


class Session:
    """One command's run: `spec` is the analysis (None for demo and report)."""

    def __init__(self, args: argparse.Namespace, spec: Analysis | None = None) -> None:
        self.args = args
        self.spec = spec
        self._models: dict[tuple[str, str], LoadedModel] = {}

    def options(self, cls: type[S]) -> S:
        """The analysis's settings of class `cls` (run or figure ones) from the parsed flags,
        checked once: a refused value is one line naming its flag."""
        assert self.spec is not None
        names = {f.name for f in fields(cls)}
        values = {
            o.param: o.value_from(self.args)
            for o in self.spec.options
            if o.param in names and o.role == cls.role
        }
        if "batch_tokens" in names and self.spec.batch_tokens:
            values["batch_tokens"] = self.args.batch_tokens
        return cls.build(None, values)

    def load(self, *, task: str = "causal-lm", dtype: str | None = None) -> LoadedModel:
        """The model of --model/--device/--dtype/--device-map (the analysis's reading of
        --dtype auto)."""
        placement_kwargs(self.args.device_map, self.args.max_memory, None)  # one line if bad
        if dtype is None:
            dtype = self.spec.dtype(self.args.dtype) if self.spec else self.args.dtype
        if (task, dtype) not in self._models:
            # looked up at call time, so that tests can stand in for the loader
            lm = model_module.load(
                self.args.model,
                device=self.args.device,
                dtype=dtype,
                task=task,
                offline=self.offline,
                trust_remote_code=self.args.trust_remote_code,
                device_map=self.args.device_map,
                max_memory=self.args.max_memory,
            )
            self._models[(task, dtype)] = lm
            # what `auto` loaded serves a later call that asks for that dtype by name
            self._models.setdefault((task, str(lm.dtype).removeprefix("torch.")), lm)
            self._check_memory(lm)
        return self._models[(task, dtype)]

    def _check_memory(self, lm: LoadedModel) -> None:
        """Say what the largest batch needs against what the device has; refuse (one line
        naming --batch-tokens) when it cannot fit."""
        batch_tokens = getattr(self.args, "batch_tokens", None)
        if batch_tokens is None:
            return
        gradients = bool(self.spec and self.spec.gradients(self.args))
        est = check_fits(lm, batch_tokens, gradients)
        log.info(est.line(batch_tokens))

    @property
    def offline(self) -> bool:
        """--offline, or the environment's HF_HUB_OFFLINE."""
        return model_module.offline_wanted(getattr(self.args, "offline", False) or None)

    def read_text_file(self, path: str, flag: str) -> str:
        return read_text_file(path, flag)

    def check_out(self, out: Path, names: Sequence[str]) -> None:
        """Before long work: --resume with an unfinished run in `out` goes on; anything else
        must not replace finished outputs unless --overwrite (so --resume never reruns over
        them)."""
        resume = getattr(self.args, "resume", False)
        partial = f"{self.spec.result.kind}.partial" if self.spec else None
        if not (resume and partial and (out / partial).is_dir()):
            check_writable(out, names, self.args.overwrite)
        check_can_write(out, "--out")

    def executor(self) -> Any:
        """A Ray executor from --ray, --workers, --cpus-per-worker, --gpus-per-worker (None
        without --ray: the run stays here and Ray is not imported)."""
        if not getattr(self.args, "ray", False):
            return None
        from ..executors import RayExecutor

        return RayExecutor(
            workers=self.args.workers,
            cpus_per_worker=self.args.cpus_per_worker,
            gpus_per_worker=self.args.gpus_per_worker,
        )

    def save(
        self, result: Result, out: Path, plot_options: dict[str, Any] | Settings | None = None
    ) -> None:
        """Save in the --format formats, print the summary and the files. A --resume run
        replaces the outputs of the run it finishes. `plot_options`: the figure settings (a
        `Settings`: those not at their defaults are kept in meta.json for the report)."""
        if isinstance(plot_options, Settings):
            plot_options = plot_options.changed()
        overwrite = self.args.overwrite or getattr(self.args, "resume", False)
        written = result.save(
            out, formats=self.args.format, overwrite=overwrite, plot_options=plot_options
        )
        print(result.summary())
        for what, path in written.items():
            print(f"  {what:>5}: {path}")
