"""What a curvature fit will cost, said before it starts: modules, parameters, factor memory, and a time
estimate from a short probe (one batch of the first pass, timed)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from actindex.core.encode import Encoded
from actindex.query.curvature.kinds import CurvatureKind
from actindex.query.curvature.passes import batches, capture


@dataclass
class FitCost:
    """The size of a fit: per kind its modules, their parameters and factor floats; the passes over the rows."""

    modules: dict[str, int]
    parameters: int
    factor_floats: int
    rows: int
    passes: int
    batches: int
    batch_seconds: float

    @property
    def seconds(self) -> float:
        """The estimated time of the passes (the eigendecompositions come on top, small beside them)."""
        return self.batch_seconds * self.batches * self.passes

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} on {n} modules" for kind, n in self.modules.items())
        stored, fitting = 4 * self.factor_floats, 8 * self.factor_floats
        return (f"fit-curvature: {kinds}, {self.parameters / 1e6:.1f}M parameters; factors {_size(stored)} stored "
                f"(float32), {_size(fitting)} while fitting (float64); {self.rows} rows x {self.passes} pass(es): "
                f"about {_duration(self.seconds)} (probe: one batch in {self.batch_seconds:.1f} s)")


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.2f} GiB"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def module_shape(model: nn.Module, name: str) -> tuple[int, int]:
    """``(O, I)`` of a tracked module's weight gradient: a linear map's weight (Conv1D stores it transposed),
    or for a sublayer (LinFAC) its width ``(d, d)``."""
    module = dict(model.named_modules())[name]
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        return tuple(weight.shape)  # type: ignore[return-value]
    if weight is not None and weight.ndim == 2 and type(module).__name__ == "Conv1D":
        return weight.shape[1], weight.shape[0]
    width = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    return width, width


def estimate(model: nn.Module, plan: dict[str, Sequence[str]], encoded: Sequence[Encoded], pad_id: int,
             batch_size: int) -> FitCost:
    """The cost of fitting ``plan`` (``{kind: modules}``) on ``encoded``, timing one batch of the first pass."""
    kinds = {kind: CurvatureKind.get(kind) for kind in plan}
    parameters = floats = 0
    for kind, names in plan.items():
        for name in names:
            shape = module_shape(model, name)
            parameters += shape[0] * shape[1] if kind != "linfac" else 0
            floats += kinds[kind].factor_floats(shape)
    names = list(dict.fromkeys(name for modules in plan.values() for name in modules))
    device = next(model.parameters()).device
    started = time.perf_counter()
    for _, batch in batches(encoded[:batch_size], batch_size, pad_id, device):
        capture(model, batch, names)
    probe = time.perf_counter() - started
    passes = max(kinds[kind].fit(names, None).passes for kind in plan) if plan else 0
    return FitCost(modules={kind: len(names) for kind, names in plan.items()}, parameters=parameters,
                   factor_floats=floats, rows=len(encoded), passes=passes,
                   batches=math.ceil(len(encoded) / batch_size), batch_seconds=probe)
