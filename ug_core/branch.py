"""Branch-parallel upsample guidance: the low-resolution call on a second process (and device).

UG's low-resolution call depends only on ``D[x_t]``, not on the high-resolution call of the same
step, so two processes can make them at the same time, as the two halves of CFG could. Both run
the same sampling loop in lockstep; per guided call (ranks of the two-process ``group``):

1. rank ``high`` computes ``x_low = c·D[x_t]`` and broadcasts it, then makes the high call;
2. rank ``low`` makes the low call on it and broadcasts the prediction ``pred_low``;
3. rank ``high`` combines them (Eq. 10) and broadcasts the guided prediction, which both return.

Unguided calls (w = 0) only share the prediction. UG's added latency is then the exchange of the
small tensors and the full-size result, not the low call. Built on ``torch.distributed``
broadcasts, so any backend (gloo on the CPU, NCCL on GPUs) and any launcher (``torchrun``,
``accelerate launch``) works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BranchParallel", "Local", "ROLES"]

#: The two roles: the process that makes the high-resolution call, and the low-resolution one.
ROLES = ("high", "low")

_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.bool,
)  # fmt: skip
_HEADER = 10  # code, ndim, up to 8 sizes


class Local:
    """The low call made in this process: :class:`BranchParallel`'s exchange, with no peer."""

    role = None

    def low_input(self, x_low: torch.Tensor) -> torch.Tensor:
        """The low-resolution input, as it is."""
        return x_low

    def high_call(self, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The high-resolution call, made here."""
        return call()

    def low_prediction(self, call: Callable[[], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """The low-resolution call, made here."""
        return call()

    def share(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The guided prediction, as it is."""
        return tensor


class BranchParallel:
    """The exchange between the two processes of a branch-parallel guided call.

    ``group`` is a ``torch.distributed`` process group of exactly two processes (None: the
    default group, which must then have two); ``high_rank`` is the rank, in ``group``, that makes
    the high-resolution call (the other makes the low one). ``torch.distributed`` must be
    initialised first.
    """

    def __init__(self, group: Any = None, high_rank: int = 0) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "branch_parallel needs torch.distributed initialised first "
                "(torch.distributed.init_process_group, or a torchrun/accelerate launch)"
            )
        size = dist.get_world_size(group)
        if size != 2:
            raise ValueError(f"branch_parallel needs a group of exactly 2 processes, got {size}")
        if high_rank not in (0, 1):
            raise ValueError(f"high_rank must be 0 or 1 (a rank in the group), got {high_rank!r}")
        self.group = group
        self.rank = dist.get_rank(group)
        self.role = "high" if self.rank == high_rank else "low"
        self._global = {
            "high": dist.get_global_rank(group, high_rank) if group is not None else high_rank,
            "low": dist.get_global_rank(group, 1 - high_rank)
            if group is not None
            else 1 - high_rank,
        }

    def __repr__(self) -> str:
        return f"BranchParallel(role={self.role!r}, rank={self.rank})"

    def _broadcast(self, tensor: torch.Tensor, src: str) -> torch.Tensor:
        """Broadcast ``tensor`` (in place) from the ``src`` role's process."""
        import torch.distributed as dist

        dist.broadcast(tensor, src=self._global[src], group=self.group)
        return tensor

    def low_input(self, x_low: torch.Tensor) -> torch.Tensor:
        """Step 1: the high process sends ``x_low``; the low one receives it (into ``x_low``)."""
        return self._broadcast(x_low.contiguous(), "high")

    def high_call(self, call: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """The high-resolution call: made on the high process; None on the low one."""
        return call() if self.role == "high" else None

    def low_prediction(self, call: Callable[[], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Step 2: the low process makes the low call and sends it; the high one receives it."""
        if self.role == "low":
            return self._broadcast(call().contiguous(), "low")
        return self._broadcast(torch.empty_like(like), "low")

    def share(self, tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Step 3: the high process sends ``tensor`` (any shape); the low one gets a copy.

        The low process passes None; a header with the shape and dtype goes first.
        """
        header = torch.zeros(_HEADER, dtype=torch.int64, device=device)
        if self.role == "high":
            if tensor is None or tensor.ndim > _HEADER - 2 or tensor.dtype not in _DTYPES:
                raise ValueError(f"cannot share {getattr(tensor, 'shape', tensor)!r}")
            header[0] = _DTYPES.index(tensor.dtype)
            header[1] = tensor.ndim
            header[2 : 2 + tensor.ndim] = torch.tensor(tensor.shape)
            self._broadcast(header, "high")
            return self._broadcast(tensor.contiguous(), "high")
        self._broadcast(header, "high")
        code, ndim, *sizes = header.tolist()
        out = torch.empty(sizes[:ndim], dtype=_DTYPES[code], device=device)
        return self._broadcast(out, "high")
