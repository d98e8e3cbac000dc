"""SAE metrics: reconstruction/sparsity statistics, spliced CE/KL, and the output row.

Definitions: docs/metrics.md. Modules: ``coder`` (the SparseCoder protocol), ``stats``
(fp64 sufficient statistics), ``splice`` (prefix-once spliced forwards), ``downstream``
(CE/KL), ``schema`` (the typed row and its Parquet writer).
"""

from randsae.metrics.coder import SparseCoder
from randsae.metrics.downstream import (
    DownstreamResult,
    DownstreamStats,
    SaeEval,
    evaluate_batch,
    evaluate_batch_group,
    prediction_mask,
)
from randsae.metrics.schema import (
    COLUMN_DOCS,
    SAEBENCH_NAMES,
    SaeMetricsRow,
    build_row,
    write_firing_counts,
    write_row,
)
from randsae.metrics.splice import Prefix, clean_forward, spliced_logits
from randsae.metrics.stats import (
    ReconstructionResult,
    ReconstructionStats,
    dead_fraction,
)

__all__ = [
    "COLUMN_DOCS",
    "SAEBENCH_NAMES",
    "DownstreamResult",
    "DownstreamStats",
    "Prefix",
    "ReconstructionResult",
    "ReconstructionStats",
    "SaeEval",
    "SaeMetricsRow",
    "SparseCoder",
    "build_row",
    "clean_forward",
    "dead_fraction",
    "evaluate_batch",
    "evaluate_batch_group",
    "prediction_mask",
    "spliced_logits",
    "write_firing_counts",
    "write_row",
]
