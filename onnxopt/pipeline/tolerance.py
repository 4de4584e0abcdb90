"""What an exact pass's outputs may move by: rtol, or a multiple of the model's own float noise.

An exact rewrite reorders float arithmetic much as onnxruntime's basic optimizations do (constant
folding, Conv+BN fusion). On a sensitive model (a text detector whose sigmoid head amplifies every
ulp) those alone move the outputs by 1e-2, so a fixed 1e-4 rolled back every correct fold there. The
noise floor is measured on the model the pass starts from (after fold-bn there is no Conv+BN left
for onnxruntime to fuse, so the next pass's floor is lower), on floating outputs only (an ArgMax
that flips is not float noise), and only when a pass first exceeds rtol on that model (most models
never need it: a session less). A floor above CEILING says the outputs cannot show exactness at all:
rtol is kept, and the report says so. Wrong rewrites (a flipped sign, a dropped bias) move outputs by
1e-2 to 1e4 on every model tested, far above FLOOR_MULTIPLE x the floors seen.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from ..errors import one_line
from ..runtime.fidelity import compare
from ..runtime.sessions import Feed, run_model

DEFAULT_RTOL = 1e-4
FLOOR_MULTIPLE = 4.0
CEILING = 0.05


@dataclasses.dataclass
class Floor:
    value: float | None        # max rel error under onnxruntime's basic optimizations, float outputs
    capped: bool = False       # above CEILING: not used
    error: str | None = None   # why it could not be measured


class Tolerance:
    """One run's tolerances. `rtol` given: that, always (the --rtol override)."""

    def __init__(self, rtol: float | None, feeds: list[Feed], threads: int = 1) -> None:
        self.rtol, self.feeds, self.threads = rtol, feeds, threads
        self.floors: list[Floor] = []

    def floor(self, model: onnx.ModelProto | bytes, reference: list[Feed]) -> Floor:
        try:
            moved = compare(reference, run_model(model, self.feeds, optimization="basic", threads=self.threads))
            floats = [name for name, value in (reference[0].items() if reference else ())
                      if np.issubdtype(np.asarray(value).dtype, np.floating)]
            value = max((moved.outputs[n].max_rel for n in floats), default=0.0)
            found = Floor(value, capped=not value <= CEILING)
        except Exception as exc:  # noqa: BLE001 - no floor: rtol holds
            found = Floor(None, error=one_line(exc, 160))
        self.floors.append(found)
        return found

    def of(self, outputs: list[Feed], floor: Floor | None = None) -> float:
        """The tolerance for outputs like these: never below 8 ulp of their dtype (a float16 model
        cannot reproduce itself to 1e-5 after any arithmetic change)."""
        dtypes = [np.asarray(v).dtype for v in (outputs[0].values() if outputs else ())]
        ulps = max((8 * float(np.finfo(d).eps) for d in dtypes if np.issubdtype(d, np.floating)), default=0.0)
        if self.rtol is not None:
            return max(self.rtol, ulps)
        usable = floor is not None and floor.value is not None and not floor.capped
        return max(DEFAULT_RTOL, FLOOR_MULTIPLE * floor.value if usable else 0.0, ulps)

    def as_dict(self) -> dict:
        measured = [f.value for f in self.floors if f.value is not None]
        return {"rtol": self.rtol if self.rtol is not None else DEFAULT_RTOL, "rtol_given": self.rtol is not None,
                "noise_floor": max(measured) if measured else None, "floor_measured": bool(measured),
                "floor_multiple": FLOOR_MULTIPLE, "floor_ceiling": CEILING,
                "floors_capped": [f.value for f in self.floors if f.capped],
                "floor_errors": [f.error for f in self.floors if f.error]}
