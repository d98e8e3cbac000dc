"""The output row: documented columns, SAEBench mapping, Parquet round trip."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from randsae.metrics.downstream import DownstreamStats
from randsae.metrics.schema import (
    COLUMN_DOCS,
    SAEBENCH_NAMES,
    SaeMetricsRow,
    arrow_schema,
    build_row,
    read_rows,
    write_firing_counts,
    write_row,
)
from randsae.metrics.stats import ReconstructionStats

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
COLUMNS = [f.name for f in dataclasses.fields(SaeMetricsRow)]


def _recon():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    values, indices = torch.rand(50, 16, generator=g).topk(3, dim=-1)
    s = ReconstructionStats()
    s.update(x, x * 0.9, values, indices, 16)
    return s.result()


def test_every_column_is_documented_here_and_in_docs() -> None:
    assert set(COLUMN_DOCS) == set(COLUMNS)
    text = DOCS.read_text()
    missing = [c for c in COLUMNS if f"`{c}`" not in text]
    assert not missing, f"docs/metrics.md does not mention {missing}"
    for ours, theirs in SAEBENCH_NAMES.items():
        assert ours in COLUMNS
        assert f"`{theirs}`" in text, theirs


def test_row_round_trip(tmp_path: Path) -> None:
    recon = _recon()
    down = DownstreamStats(10, 30.0, 35.0, 80.0, 2.0, 40.0).result("trained")
    row = build_row("trained", 3, recon, down, frac_dead_train=0.25, dead_window_tokens=10_000_000)
    path = tmp_path / "sub" / "metrics.parquet"
    write_row(row, path, extra={"model": "tiny", "seed": 1})
    table = pq.read_table(path)
    assert table.schema.equals(arrow_schema({"model": "tiny", "seed": 1}))
    assert table.column_names[:2] == ["model", "seed"]
    (got,) = read_rows(path)
    assert got["model"] == "tiny" and got["seed"] == 1
    for name in COLUMNS:
        want = getattr(row, name)
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(got[name])
        else:
            assert got[name] == want, name
    assert got["ce_loss_score"] == pytest.approx(0.9)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.parquet"]  # no temp left over


def test_row_without_downstream_keeps_types(tmp_path: Path) -> None:
    row = build_row("control", 0, _recon())
    assert row.ce_sae is None and row.frac_dead_train is None and not row.ce_score_meaningful
    write_row(row, tmp_path / "a.parquet")
    write_row(build_row("trained", 0, _recon(), DownstreamStats(10, 1, 2, 3, 0, 1).result("trained")),
              tmp_path / "b.parquet")  # fmt: skip
    a, b = pq.read_schema(tmp_path / "a.parquet"), pq.read_schema(tmp_path / "b.parquet")
    assert a.equals(b)  # the same schema whether or not values are missing


def test_extra_columns_may_not_shadow_metrics(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clash"):
        write_row(build_row("trained", 0, _recon()), tmp_path / "x.parquet", extra={"fvu": 1.0})


def test_firing_counts_file(tmp_path: Path) -> None:
    recon = _recon()
    write_firing_counts(recon.firing_counts, tmp_path / "counts.parquet")
    t = pq.read_table(tmp_path / "counts.parquet").to_pydict()
    assert t["latent"] == list(range(16))
    assert t["firing_count"] == recon.firing_counts.tolist()
    assert sum(t["firing_count"]) == 150  # 50 tokens x k=3, all values > 0
