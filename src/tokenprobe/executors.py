"""Where chunks of a data-set run are computed: here (the default) or on a Ray cluster.

`RayExecutor` keeps one model replica per worker (a Ray actor that builds its state once,
from a picklable factory: load the model by name or path, build the classifier), feeds the
workers the runner's chunks, and yields each finished chunk as it arrives, so the runner
writes it to the checkpoint at once and `--resume` works as in a local run. A worker whose
process dies is restarted by Ray and its chunk rerun (`max_restarts`, `max_task_retries`);
chunks are keyed by their number, so the result does not depend on which worker ran what.
Warnings a worker raises (building its state, running a chunk) come back with the chunk's
result and are shown here, at their own file and line, so a Ray run says what a local one does.
Ray Core actors rather than Ray Data: the runner already cuts the work into chunks and
checkpoints them, and an actor per worker is the simplest way to load a model once per worker.
Ray is imported only here, and only when a Ray run is asked for.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CaughtWarning, TokenprobeError, caught_warnings, warn_again

if TYPE_CHECKING:
    from .model import LoadedModel


def worker_load_args(lm: LoadedModel) -> dict[str, Any]:
    """How each Ray worker loads its replica of `lm` (by name or path, as `lm` was loaded),
    or one error: a model wrapped in memory cannot be loaded again elsewhere."""
    if lm.load_args is None:
        raise TokenprobeError(
            "a Ray run loads the model on each worker by name or path: load it with "
            "tokenprobe.load, not LoadedModel.wrap"
        )
    return dict(lm.load_args)


INSTALL = "pip install 'tokenprobe[ray]' (or pip install ray)"


class _Worker:
    """One model replica: its state is built once, then every chunk runs against it. Each
    chunk's result goes back with the warnings raised since the last (the first chunk's with
    those of building the state)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        with caught_warnings() as self.caught:
            self.state = factory()

    def run(self, fn: Callable[[Any, Any], Any], payload: Any) -> tuple[Any, list[CaughtWarning]]:
        with caught_warnings() as caught:
            out = fn(self.state, payload)
        earlier, self.caught = self.caught, []
        return out, earlier + caught


@dataclass
class RayExecutor:
    """Chunks on a Ray cluster: `RAY_ADDRESS` (or `address`) when set, else a local one."""

    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    address: str | None = None
    in_flight: int = 2  # chunks queued per worker, so none waits for the driver

    def _ray(self) -> Any:
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        loaded = sys.modules.get("ray")
        if address is not None and not (loaded is not None and loaded.is_initialized()):
            _check_reachable(address)
            _send_token()  # before Ray is imported: it reads RAY_AUTH_MODE then
        try:
            import ray
        except ImportError as exc:
            raise TokenprobeError(f"`ray` needs Ray installed: {INSTALL}") from exc
        if not ray.is_initialized():
            if address is None:
                _require_token()
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else max(1, int(self.workers * self.cpus_per_worker)),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    ignore_reinit_error=True,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                raise TokenprobeError(
                    f"cannot connect to {where} ({str(exc).splitlines()[0]}): check RAY_ADDRESS "
                    "(`ray start --head` prints it), or unset it for a local cluster"
                ) from exc
        return ray

    def _check_resources(self, ray: Any) -> None:
        have = ray.cluster_resources()
        for name, per in (("GPU", self.gpus_per_worker), ("CPU", self.cpus_per_worker)):
            need = per * self.workers
            if need > have.get(name, 0):
                raise TokenprobeError(
                    f"{self.workers} workers x {per:g} {name}s need {need:g} {name}s, and the Ray "
                    f"cluster has {have.get(name, 0):g}: lower `workers` or the {name}s per worker"
                )

    def map(
        self, factory: Callable[[], Any], fn: Callable[[Any, Any], Any], payloads: dict[int, Any]
    ) -> Iterator[tuple[int, Any]]:
        """Yield (chunk number, fn(state, payload)) as chunks finish, on any worker."""
        if not payloads:
            return
        ray = self._ray()
        self._check_resources(ray)
        remote = ray.remote(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=-1,
            max_task_retries=-1,
        )(_Worker)
        actors = [remote.remote(factory) for _ in range(min(self.workers, len(payloads)))]
        queue = sorted(payloads)
        running: dict[Any, tuple[int, int]] = {}  # ref -> (chunk, actor)
        load = [0] * len(actors)

        def submit() -> None:
            while queue and min(load) < self.in_flight:
                actor = load.index(min(load))
                k = queue.pop(0)
                running[actors[actor].run.remote(fn, payloads[k])] = (k, actor)
                load[actor] += 1

        try:
            submit()
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                k, actor = running.pop(done[0])
                load[actor] -= 1
                part, caught = self._get(ray, done[0])
                warn_again(caught)
                yield k, part
                submit()
        finally:
            for actor in actors:
                ray.kill(actor)

    @staticmethod
    def _get(ray: Any, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise _one_line(exc) from exc


def _require_token() -> None:
    """A local cluster's GCS server, raylets and workers listen on every interface, and Ray
    runs whatever anyone who reaches them sends: Ray 2.59 and later (the lower bound of the
    `ray` extra) start a local cluster with token authentication unless RAY_AUTH_MODE says
    otherwise. A user who turned it off is warned, once."""
    from .errors import warn

    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        warn(
            f"RAY_AUTH_MODE={mode}: the local Ray cluster accepts work from anyone who can reach "
            "this machine's ports; unset it (Ray then starts the cluster with a token)"
        )


def _send_token() -> None:
    """A cluster from `ray start --head` (Ray 2.59 and later) refuses a client without its
    token, and a client that connects by address sends the token only under
    RAY_AUTH_MODE=token: where RAY_AUTH_MODE is unset and a token is at hand (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), it is set, so `export RAY_ADDRESS` connects."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A cluster address (HOST:PORT or ray://HOST:PORT) that nothing answers at is one line
    now, instead of after Ray's own connection retries (a minute or more)."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # a form Ray knows and this check does not: let Ray judge it
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TokenprobeError(
            f"nothing answers at the Ray cluster address {address} ({exc.strerror or exc}): check "
            "RAY_ADDRESS (`ray start --head` prints it), or unset it for a local cluster"
        ) from exc


def _one_line(exc: BaseException) -> TokenprobeError:
    """A worker's failure as one line: its own TokenprobeError as it is, anything else named
    with the finished chunks kept. Ray wraps the worker's exception (and for a failed
    constructor, only its traceback text), so the last `...Error: message` line is the cause."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TokenprobeError):
        return cause
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.findall(r"^\s*([\w.]+(?:Error|Exception|Exit)): (.+)$", text, re.MULTILINE)
    name, message = found[-1] if found else (type(exc).__name__, text.strip().splitlines()[0])
    if name.endswith("TokenprobeError"):
        return TokenprobeError(f"on a Ray worker: {message}")
    return TokenprobeError(
        f"a Ray worker failed ({name.rsplit('.', 1)[-1]}: {message}); the finished chunks are "
        "kept: run the same command with `resume` to go on"
    )
