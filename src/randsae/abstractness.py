"""Abstractness of a latent: how much of its behaviour the current token alone explains.

Three measures (definitions in docs/latents.md):

token_entropy
    The paper's token-distribution entropy, over the latent's explainer examples: every token of
    every explainer window contributes its activation to the mass of its token id,
    ``p(t) = mass(t) / total mass`` and ``H = -sum_t p(t) ln p(t)`` (nats). 0 for a latent that
    only fires on one token id; ln(m) for activation spread evenly over m ids.

token_lookup_share
    R^2 of the token-lookup baseline over the whole cache: predict the latent's activation at
    every eligible position (0 where it does not fire) by the mean activation of the current
    token id. With ``N`` positions, ``n_t`` positions holding token ``t``, ``S_t`` the latent's
    activation summed over them, ``S = sum_t S_t`` and ``Q`` the sum of squared activations::

        SS_tot = Q - S^2 / N
        SS_exp = sum_t S_t^2 / n_t - S^2 / N
        share  = SS_exp / SS_tot

    1 when the activation is a function of the token id, near 0 when the token id says nothing.
    Undefined (NaN) for a latent with no variance (never fires).

single_token
    The top token id carries at least ``SINGLE_TOKEN_SHARE`` (0.9) of the latent's activation
    mass over the whole cache.

Everything is accumulated in float64 so that chunking changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SINGLE_TOKEN_SHARE = 0.9


def token_mass(token_ids: np.ndarray, activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, activation mass per id) over the positions with positive activation."""
    ids = np.asarray(token_ids).reshape(-1)
    acts = np.asarray(activations, dtype=np.float64).reshape(-1)
    keep = acts > 0
    uniq, inv = np.unique(ids[keep], return_inverse=True)
    return uniq, np.bincount(inv, weights=acts[keep], minlength=uniq.shape[0])


def token_entropy(token_ids: np.ndarray, activations: np.ndarray) -> float:
    """Entropy (nats) of the activation mass over token ids; NaN if there is no mass."""
    _, mass = token_mass(token_ids, activations)
    total = mass.sum()
    if total <= 0:
        return float("nan")
    p = mass / total
    return float(-(p * np.log(p)).sum())


def token_lookup_share(
    explained: np.ndarray | float, total: np.ndarray | float, total_sq: np.ndarray | float, n: int
) -> np.ndarray:
    """R^2 of the per-token-id mean predictor from its sufficient statistics.

    ``explained`` = sum_t S_t^2 / n_t, ``total`` = S, ``total_sq`` = Q, ``n`` = N (positions).
    Clipped to [0, 1] against rounding; NaN where the activation has no variance.
    """
    explained, total, total_sq = (np.asarray(a, dtype=np.float64) for a in (explained, total, total_sq))
    mean_term = total * total / max(n, 1)
    ss_tot = total_sq - mean_term
    ss_exp = explained - mean_term
    ok = ss_tot > 1e-12 * np.maximum(total_sq, 1e-300)
    share = np.divide(ss_exp, ss_tot, out=np.full(ss_tot.shape, np.nan), where=ok)
    return np.where(ok, np.clip(share, 0.0, 1.0), np.nan)


@dataclass
class TokenTerms:
    """Per-latent token statistics of a range of latents (arrays of length n_latents)."""

    explained: np.ndarray  # sum_t S_t^2 / n_t
    top_token: np.ndarray  # token id with the largest mass, -1 if none
    top_mass: np.ndarray  # its mass S_t
    total: np.ndarray  # S


def token_terms(
    latent: np.ndarray, token_ids: np.ndarray, values: np.ndarray, token_counts: np.ndarray, n_latents: int
) -> TokenTerms:
    """Token statistics of many latents at once from their activations.

    ``latent`` (0..n_latents-1), ``token_ids`` and ``values`` are flat per activation;
    ``token_counts[t]`` is how many eligible positions of the whole cache hold token ``t``.
    """
    latent = np.asarray(latent, dtype=np.int64)
    token_ids = np.asarray(token_ids, dtype=np.int64)
    vocab = max(int(token_counts.shape[0]), int(token_ids.max(initial=-1)) + 1)
    pair, inv = np.unique(latent * vocab + token_ids, return_inverse=True)
    s_pair = np.bincount(inv, weights=np.asarray(values, dtype=np.float64), minlength=pair.shape[0])
    pair_latent, pair_token = pair // vocab, pair % vocab
    n_t = token_counts[pair_token].astype(np.float64)
    explained = np.bincount(pair_latent, weights=s_pair * s_pair / n_t, minlength=n_latents)
    total = np.bincount(pair_latent, weights=s_pair, minlength=n_latents)
    top_token = np.full(n_latents, -1, np.int64)
    top_mass = np.zeros(n_latents, np.float64)
    if pair.shape[0]:
        order = np.lexsort((-s_pair, pair_latent))  # by latent, largest mass first (ties: lowest id)
        first = order[np.r_[True, pair_latent[order][1:] != pair_latent[order][:-1]]]
        top_token[pair_latent[first]] = pair_token[first]
        top_mass[pair_latent[first]] = s_pair[first]
    return TokenTerms(explained, top_token, top_mass, total)


def top_token_share(terms: TokenTerms) -> np.ndarray:
    """Share of the activation mass carried by the top token id (NaN where no mass)."""
    return np.divide(terms.top_mass, terms.total, out=np.full(terms.total.shape, np.nan), where=terms.total > 0)


def single_token(top_share: np.ndarray, threshold: float = SINGLE_TOKEN_SHARE) -> np.ndarray:
    """True where the top token id carries at least ``threshold`` of the mass."""
    return np.nan_to_num(np.asarray(top_share, dtype=np.float64), nan=0.0) >= threshold
