"""The row schema of the examples stage's latents.parquet (one row per latent of the SAE).

Kept apart from :mod:`randsae.examples`, which computes the rows, because that module needs
torch and Zarr and the results database, which loads these files, should not: it imports only
this declaration (:mod:`randsae.results.schemas`). docs/latents.md shows the columns; a test
keeps its table equal to :func:`randsae.rows.markdown_table` of :class:`LatentRow`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from randsae.rows import column

TABLE_FILE = "latents.parquet"


@dataclass(frozen=True)
class LatentRow:
    """One latent of the SAE: a row of latents.parquet (the results database's ``latents``)."""

    latent: int = column(pa.int32(), "latent id")
    n_fires: int = column(pa.int64(), "activations in the cache (eligible positions)")
    frequency: float = column(pa.float64(), "`n_fires` / eligible positions")
    max_activation: float = column(pa.float32(), "largest activation")
    n_windows: int = column(pa.int64(), "activating windows")
    token_entropy: float = column(pa.float64(), "the paper's abstractness measure; sampled latents only (NaN elsewhere)")
    token_lookup_share: float = column(pa.float64(), "R^2 of the token-lookup baseline; NaN for a latent that never fires")
    top_token_id: int = column(pa.int32(), "token id with the largest activation mass (-1 if none)")
    top_token_share: float = column(pa.float64(), "its share of the mass")
    single_token: bool = column(pa.bool_(), "`top_token_share >= 0.9`")
    eligible: bool = column(pa.bool_(), "`n_windows >= min_activations`")
    sampled: bool = column(pa.bool_(), "in examples.json")
