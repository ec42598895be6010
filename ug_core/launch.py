"""``ug sample`` under ``torchrun`` or ``accelerate launch``: the processes share one job's samples.

The samples are cut into batches of consecutive seeds, the same batches for any number of
processes N; process ``r`` samples batches ``r, r + N, …``, and rank 0 gathers every sample in
order and writes the files of one process, byte for byte, through a hidden temporary folder
(docs/design.md, "Many processes"). An error on any process stops them all (:func:`together`).
Without a launcher (no ``WORLD_SIZE``) nothing here starts ``torch.distributed``. Also here: the
checks of where a process runs and writes (``--device``, ``--threads``, ``--out``), made before
anything is sampled.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "UsageError",
    "PeerFailed",
    "Ranks",
    "launch_env",
    "single_process_threads",
    "set_threads",
    "check_device",
    "start_ranks",
    "stop_ranks",
    "end_process",
    "together",
    "share",
    "run_job",
    "out_folder",
    "write_atomically",
]


class UsageError(Exception):
    """A bad command line or launch environment (exit status 2)."""


class PeerFailed(Exception):
    """Another process of the launch failed; this one stops with the same exit status."""

    def __init__(self, rank: int, code: int, message: str) -> None:
        super().__init__(message)
        self.rank, self.code, self.message = rank, code, message


@dataclass(frozen=True)
class Ranks:
    """The rank of this process among the launched ones, and their number (1 without a launch).

    ``owned``: this process started ``torch.distributed``, so it ends it too.
    """

    rank: int = 0
    world: int = 1
    owned: bool = False

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that gathers the samples and writes the files."""
        return self.rank == 0


def launch_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) as torchrun and accelerate launch set them; None without."""
    env = os.environ
    if "WORLD_SIZE" not in env:
        return None
    found = ", ".join(f"{k}={env.get(k)!r}" for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", ""))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise UsageError(
            f"a launch needs integer WORLD_SIZE, RANK and LOCAL_RANK, got {found}"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"a launch needs WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE, got {found}")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if world > 1 and not env.get(k)]
    if missing:
        raise UsageError(
            f"WORLD_SIZE={world} but no {' and no '.join(missing)}: start the processes with "
            "torchrun or accelerate launch"
        )
    return rank, world, local


def single_process_threads() -> int:
    """The CPU threads torch uses in a single process here: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None, launch: tuple[int, int, int] | None) -> None:
    """torch's CPU threads: ``--threads``, or under a launch those of a single process.

    Launchers set OMP_NUM_THREADS=1 per process; CPU kernels round differently with another
    thread count, so use what a single process would, for identical files.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    elif launch is not None and launch[1] > 1:
        torch.set_num_threads(single_process_threads())


def check_device(text: str) -> None:
    """Raise UsageError unless ``--device`` is a torch device that this machine has."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(
            f"--device {text!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
        ) from None
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    found = hasattr(backend, "is_available") and backend.is_available()
    count = backend.device_count() if found else 0
    if not count:
        raise UsageError(f"--device {text}: this machine has no {device.type} device; use cpu")
    if (device.index or 0) >= count:
        last = f"{device.type}:{count - 1}"
        raise UsageError(f"--device {text}: this machine has {device.type}:0 to {last} only")


def start_ranks(launch: tuple[int, int, int] | None, device: str) -> tuple[Ranks, str]:
    """Join the launch's process group; returns (ranks, this process's device).

    The group is gloo on the CPU, and NCCL for CUDA tensors with gloo for the gathered samples
    when ``device`` is a GPU; ``cuda`` becomes ``cuda:(LOCAL_RANK mod GPUs)``. A group that the
    calling program started already is used as it is.
    """
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size()), device
    if launch is None or launch[1] == 1:
        return Ranks(), device
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed: run ug without a launcher")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if device == "cuda":
            device = f"cuda:{launch[2] % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(device))
    # The collectives wait for the slowest process's sampling (hours for a large run); a process
    # that dies closes its connections, and the launcher stops the others.
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(hours=24))
    return Ranks(dist.get_rank(), dist.get_world_size(), owned=True), device


def stop_ranks(ranks: Ranks) -> None:
    """Leave the process group if this process started it, after the others reach this point.

    The barrier keeps a process from leaving while a peer's last message to it is in flight; it
    has a timeout, so a peer that never arrives can't hold this process. The process then ends
    through :func:`end_process`.
    """
    if ranks.owned:
        from datetime import timedelta

        import torch.distributed as dist

        try:
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        except Exception:  # noqa: BLE001 - a missing peer or a non-gloo group: leave anyway
            pass
        dist.destroy_process_group()


def end_process(status: int) -> NoReturn:
    """End a process that started ``torch.distributed``: flush stdout and stderr, ``os._exit``.

    The interpreter's teardown is skipped: with the default group kept alive by a module imported
    after it (diffusers' ``torch.distributed.fsdp``), a gloo thread releasing the last
    collective's tensors then can abort the process (``docs/design.md``, "Leaving").
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing left to say
            pass
    os._exit(status)


def together(ranks: Ranks, step: Callable[[], Any]) -> Any:
    """``step()`` on every process; if it fails on any, every process stops (none waits forever).

    The failing process raises its own error; the others raise :class:`PeerFailed` with its
    exit status (2 for a usage error, 1 otherwise) and message.
    """
    if ranks.world == 1:
        return step()
    import torch.distributed as dist

    value, failure, error = None, None, None
    try:
        value = step()
    except UsageError as err:
        failure, error = (2, str(err)), err
    except Exception as err:
        failure, error = (1, f"{type(err).__name__}: {err}"), err
    failures: list[Any] = [None] * ranks.world
    dist.all_gather_object(failures, failure)
    if error is not None:
        raise error
    for rank, failed in enumerate(failures):
        if failed is not None:
            raise PeerFailed(rank, *failed)
    return value


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Samples ``0 … n-1`` as (start, stop) batches of ``batch_size`` consecutive ones."""
    return [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]


def share(
    ranks: Ranks,
    n: int,
    batch_size: int,
    sample: Callable[[list[tuple[int, int]]], dict[str, Any]],
) -> tuple[str, Callable[[], dict[str, Any] | None]]:
    """How the samples are shared (for the header), and the run that samples and gathers them.

    ``sample(batches)`` returns each column for its batches, samples first ({} for none). The
    run returns every sample's columns in sample order on rank 0, None on the others.
    """
    cut = batches(n, batch_size)
    note = ""
    if ranks.world > 1:
        note = f", {len(cut)} batches over {ranks.world} processes"
        idle = ranks.world - len(cut)
        if idle > 0:
            note += f" ({idle} without a batch: a smaller --batch-size shares the seeds)"
    mine = cut[ranks.rank :: ranks.world]
    return note, lambda: _gather(ranks, mine, together(ranks, lambda: sample(mine)))


def _gather(
    ranks: Ranks, mine: list[tuple[int, int]], columns: dict[str, Any]
) -> dict[str, Any] | None:
    """Rank 0: every process's samples, in sample order; the other ranks: None."""
    if ranks.world == 1:
        return columns
    import torch
    import torch.distributed as dist

    parts: list[Any] | None = [None] * ranks.world if ranks.main else None
    dist.gather_object((mine, columns), parts, dst=0)
    if parts is None:
        return None
    parts = [(c, cols) for c, cols in parts if c]  # a process may have had no batch
    order = [i for c, _ in parts for a, b in c for i in range(a, b)]
    position = torch.tensor(sorted(range(len(order)), key=order.__getitem__))
    return {key: torch.cat([cols[key] for _, cols in parts])[position] for key in parts[0][1]}


def run_job(job: Any, args: Any, ranks: Ranks) -> int:
    """Sample this process's batches; rank 0 gathers every sample and writes the files.

    ``job`` is a :class:`ug_core.demo.report.Job`, ``args`` the options of ``ug sample``.
    """
    progress = ranks.main and not args.no_progress  # rank 0's bars show its share
    note, gather = share(ranks, args.n, args.batch_size, lambda b: job.sample(b, progress))
    if ranks.main:
        print(job.header(args) + note)
    columns = gather()

    def write_on_rank_0() -> None:
        if ranks.main:
            write_atomically(args.out_path, lambda folder: job.write(args, columns, folder))

    together(ranks, write_on_rank_0)
    if ranks.main:
        kind = "frame strips (PNG) and GIFs" if len(job.size) == 3 else "PNGs"
        names = ", ".join(columns)
        print(
            f"\nwrote {args.n * 3} {kind} ({names}), grid.png and metrics.json to {args.out_path}/"
        )
    return 0


def out_folder(given: str | None) -> Path:
    """``--out`` (``given``), or a fresh ``./ug-samples-<timestamp>``; UsageError if unwritable.

    The folder must exist or be possible to make, and be writable: probed by making (and
    removing) a temporary folder in it, or in its nearest existing parent, so that nothing is
    left behind.
    """
    import errno
    import tempfile

    base = Path(f"ug-samples-{time.strftime('%Y%m%d-%H%M%S')}")
    out, i = Path(given or base), 1
    while not given and out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    what = f"--out {str(out)!r}" if given else f"the output folder {str(out)!r}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} exists and is not a folder")
    parent = out.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} cannot be made: {str(parent)!r} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ug-probe-", dir=parent))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if err.errno == errno.ENOENT:  # the folder exists: its file system makes no new entries
            reason = "its file system does not allow new folders"
        raise UsageError(
            f"{what} is not writable: cannot make a folder in {str(parent)!r} ({reason})"
        ) from None
    return out


def write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` into a hidden temporary folder, moved into place once it is complete.

    A new ``out`` is the temporary folder (``.<name>.partial-*`` beside it) renamed: it exists
    complete or not at all. Into an existing ``out`` (from ``.ug.partial-*`` inside it) each file
    replaces the one of the same name, ``metrics.json`` last; other files are left alone. A
    failure removes the temporary folder; a killed process leaves it, hidden and named partial.
    """
    import shutil
    import uuid

    fresh = not out.exists()
    home = out.absolute().parent if fresh else out
    home.mkdir(parents=True, exist_ok=True)
    name = out.absolute().name if fresh else "ug"
    tmp = home / f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        if fresh:
            os.rename(tmp, out)
            return
        files = sorted(tmp.iterdir(), key=lambda p: (p.name == "metrics.json", p.name))
        for path in files:
            os.replace(path, out / path.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
