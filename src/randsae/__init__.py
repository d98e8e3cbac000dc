"""randsae: randomized baselines for sparse-autoencoder metrics.

Pipeline: model and randomized variants -> activations -> TopK SAEs -> metrics ->
latent examples -> LLM explanations and scores -> DuckDB tables and figures.
"""

__version__ = "0.1.0"
