"""The opt-in report of every surgery function: one record per changed or skipped layer.

Surgery returns the model, as ``torch.nn.utils.fusion.fuse_conv_bn_eval`` does; what it did
is told only when asked: pass ``report=[]`` and one :class:`SurgeryRecord` per layer is
appended to that list.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SurgeryRecord", "ACTIONS", "note"]

#: the values of :attr:`SurgeryRecord.action`.
ACTIONS = ("replaced", "removed", "folded", "inserted", "skipped")


class SurgeryRecord(NamedTuple):
    """One layer a surgery function changed or left in place.

    Attributes:
        name: qualified name of the layer in the model it was given.
        old: class name of the layer before (``""`` for an insertion).
        new: class name of what stands there now (``"A+B"`` for ``nn.Sequential(A, B)``).
        action: one of :data:`ACTIONS`.
        detail: for ``replaced``, the state keys carried over (comma-separated); for
            ``folded``, the weight layer it was folded into; for ``inserted``, the weight
            layer it follows; for ``skipped``, the reason.
    """

    name: str
    old: str
    new: str
    action: str
    detail: str = ""


def note(report: list | None, *args: str) -> None:
    """Append ``SurgeryRecord(*args)`` to ``report`` when a list was passed.

    Raises:
        TypeError: ``report`` is neither None nor a list.
    """
    if report is None:
        return
    if not isinstance(report, list):
        raise TypeError(f"report must be None or a list, got {type(report).__name__}")
    report.append(SurgeryRecord(*args))
