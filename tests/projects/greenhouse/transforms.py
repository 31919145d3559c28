"""A transformation of the project's own: log(1 + x), with the training split's count kept as its state."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import Transform, register_transform


@register_transform
class Log1p(Transform):
    """log(1 + x) for non-negative numbers; a negative value is refused by name."""

    def _partial(self, column: pa.Array) -> dict:
        return {"count": int(len(column) - column.null_count)}

    def _check_state(self, state) -> dict:
        if not isinstance(state, dict) or not isinstance(state.get("count"), int) or state["count"] < 0:
            raise self._state_error(f"expected {{'count': a non-negative integer}}, got {state!r}")
        return {"count": state["count"]}

    def _merge(self, a: dict, b: dict) -> dict:
        return {"count": a["count"] + b["count"]}

    def _learn(self, state: dict) -> None:
        self.n_samples_ = state["count"]

    def _apply(self, column: pa.Array) -> list[tuple[str, pa.Array]]:
        values = pc.cast(column, pa.float64())
        if pc.any(pc.less(values, 0)).as_py():
            raise ValueError(f"{self!r}: column {self.column!r} has a negative value")
        return [(self.column, pa.array(np.log1p(values.to_numpy(zero_copy_only=False)), pa.float64(),
                                       mask=pc.is_null(values).to_numpy(zero_copy_only=False)))]
