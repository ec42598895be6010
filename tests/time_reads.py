"""A time tensor that records every read of its values on the host (and of tensors made from it).

``TimeTensor`` is a torch.Tensor subclass: every op on it returns a ``TimeTensor`` too (torch's
default ``__torch_function__``), so anything computed from the time is tracked. Reading any of
them on the host (``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``, ``.to("cpu")``,
``bool()``, ``float()``, ``int()``, indexing a Python sequence with it) is recorded in
``TimeTensor.reads``. On a GPU each of these is a device-to-host synchronisation; on the CPU they
cost nothing, so this is how the CPU test suite proves that a path makes none.
"""

from __future__ import annotations

import torch


class TimeTensor(torch.Tensor):
    """A tensor whose host reads (and those of tensors derived from it) are recorded."""

    reads: list[str] = []

    @staticmethod
    def wrap(t: torch.Tensor) -> TimeTensor:
        """``t`` as a TimeTensor (same values, dtype and device)."""
        return t.as_subclass(TimeTensor)

    def _record(self, what: str) -> None:
        TimeTensor.reads.append(what)

    def item(self):  # noqa: D102
        self._record("item")
        return super().item()

    def tolist(self):  # noqa: D102
        self._record("tolist")
        return super().tolist()

    def numpy(self, *args, **kwargs):  # noqa: D102
        self._record("numpy")
        return super().numpy(*args, **kwargs)

    def cpu(self, *args, **kwargs):  # noqa: D102
        self._record("cpu")
        return super().cpu(*args, **kwargs)

    def to(self, *args, **kwargs):  # noqa: D102
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
            self._record("to(cpu)")
        return super().to(*args, **kwargs)

    def __bool__(self):
        self._record("bool")
        return super().__bool__()

    def __float__(self):
        self._record("float")
        return super().__float__()

    def __int__(self):
        self._record("int")
        return super().__int__()

    def __index__(self):
        self._record("index")
        return super().__index__()


def reads() -> list[str]:
    """The reads recorded so far (and clear the record)."""
    out, TimeTensor.reads[:] = list(TimeTensor.reads), []
    return out
