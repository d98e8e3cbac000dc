"""The training log: per-step statistics averaged over ``log_every_steps`` steps, written as Parquet.

Sums are kept as float64 tensors and read out only when a row is emitted, so logging costs no
device synchronisation per step, and the accumulator state is part of every checkpoint (a resumed
run writes exactly the rows an uninterrupted one would).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

LOG_FILE = "train_log.parquet"

SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("tokens", pa.int64()),
        ("loss", pa.float64()),
        ("fvu", pa.float64()),
        ("auxk_loss", pa.float64()),
        ("dead_fraction", pa.float64()),
        ("l0", pa.float64()),
        ("lr", pa.float64()),
    ]
)

_SUMMED = ("loss", "fvu", "auxk_loss", "l0")


class LogAccumulator:
    """Running sums since the last emitted row, plus the rows emitted so far."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(len(_SUMMED), dtype=torch.float64, device=device)
        self.count = 0
        self.rows: list[dict[str, Any]] = []

    def add(
        self, loss: torch.Tensor, fvu: torch.Tensor, auxk: torch.Tensor, l0: torch.Tensor
    ) -> None:
        self.sums += torch.stack([loss.detach(), fvu.detach(), auxk.detach(), l0.detach()]).to(
            torch.float64
        )
        self.count += 1

    def emit(
        self, step: int, tokens: int, dead_fraction: float, lr: float
    ) -> dict[str, Any] | None:
        """Close the current interval as one row (None if no step was added since the last row)."""
        if self.count == 0:
            return None
        means = (self.sums / self.count).tolist()
        row: dict[str, Any] = {"step": step, "tokens": tokens}
        row.update(dict(zip(_SUMMED, means)))
        row.update({"dead_fraction": float(dead_fraction), "lr": float(lr)})
        self.rows.append(row)
        self.sums.zero_()
        self.count = 0
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.sums.cpu().clone(),
            "count": self.count,
            "rows": [dict(r) for r in self.rows],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = state["sums"].to(self.sums.device)
        self.count = int(state["count"])
        self.rows = [dict(r) for r in state["rows"]]


def write_log(
    path: str | Path, rows: list[dict[str, Any]], metadata: dict[str, str] | None = None
) -> None:
    """Write the rows as Parquet (temp file + rename); ``metadata`` goes into the schema."""
    p = Path(path)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    tmp = p.with_name(f".{p.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, p)
