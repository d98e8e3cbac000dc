"""aggregate(): database, figures and report; missing data gives "no data" panels, not errors."""

from __future__ import annotations

import re

import duckdb
from results_synth import build_synthetic_store, synth_config

from randsae.results import aggregate, expected_outputs, summary_table
from randsae.results.figures import discriminability_figure, metrics_figure, roc_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path, min_kb: float = 5) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > min_kb * 1024


def test_aggregate_writes_every_output(synth, tmp_path, capsys):
    out = aggregate(synth["cfg"], synth["store"], tmp_path / "results", n_boot=100, n_perm=100)
    assert out == expected_outputs(synth["cfg"], tmp_path / "results")
    assert set(out) == {"db", "report", "fig_roc_tiny_detection", "fig_roc_tiny_fuzzing", "fig_metrics", "fig_discriminability",
                        "fig_training"}
    assert out["fig_training"].name == "fig_training.png" and out["fig_training"].parent.name == "figures"
    figures = {k: p for k, p in out.items() if k.startswith("fig_")}
    for name, p in figures.items():
        assert _is_png(p, min_kb=20), name
    html = out["report"].read_text()
    for p in figures.values():  # every figure embedded, named by its file
        assert f'data-file="{p.name}"' in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) == len(figures)
    for heading in ("Training", "Per-SAE metrics by variant", "Discriminability", "LLM usage and cost"):
        assert heading in html
    assert 'class="separated"' in html and "token_entropy" in html
    printed = capsys.readouterr().out
    assert "Discriminability: 4 of" in printed and "token_entropy vs" in printed and "LLM usage: 648 calls" in printed
    assert "Training: 11 of 12 SAEs converged" in printed
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["figures", "report.html", "results.duckdb"]


def test_aggregate_on_an_empty_store_says_no_data(tmp_path, capsys):
    cfg = synth_config(tmp_path)
    out = aggregate(cfg, cfg["store"], tmp_path / "results", n_boot=10, n_perm=10)
    for name, p in out.items():
        if name.startswith("fig_"):
            assert _is_png(p, min_kb=2), name
    assert "no rows yet" in out["report"].read_text() and "No training logs yet." in out["report"].read_text()
    printed = capsys.readouterr().out
    assert "no SAE metrics yet" in printed and "no comparisons yet" in printed and "Training: No training logs yet." in printed


def test_figures_with_partial_data(tmp_path):
    """Metrics but no scores: ROC panels and AUROC rows say no data, the rest is drawn."""
    cfg = synth_config(tmp_path)
    build_synthetic_store(cfg, stages=("sae_metrics", "examples"))
    out = aggregate(cfg, cfg["store"], tmp_path / "results", n_boot=10, n_perm=10, echo=False)
    with duckdb.connect(str(out["db"]), read_only=True) as con:
        roc = roc_figure(con, tmp_path / "roc.png", "tiny", "detection")
        unknown = roc_figure(con, tmp_path / "roc-none.png", "no-such-model", "detection")
        grid = metrics_figure(con, tmp_path / "grid.png", setting=(99, 99))  # a setting with no SAEs
        heat = discriminability_figure(con, tmp_path / "heat.png")
    for p in (roc, unknown, grid, heat):
        assert _is_png(p, min_kb=2), p
    assert _is_png(out["fig_metrics"], min_kb=20)


def test_summary_table_from_a_path(synth):
    text = summary_table(synth["db"])
    assert text.startswith("SAE metrics (mean over seeds)")
    assert "trained" in text and "rerandomized" in text and "AUROC det" in text
    assert len(text.splitlines()) < 60
