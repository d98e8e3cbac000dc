"""One model forward over a tokens split: the loop every stage that runs a model shares.

Two levels:

- :func:`token_batches` walks the requested sequences of a tokens array in batches and yields
  each batch's sequence indices and input ids, with the control variant's noise seeded for
  exactly those sequences while the caller holds the batch. The caller runs the model in the
  loop body however it needs to (the metrics stage runs its split forward: prefix once, then
  clean / SAE / zero branches, see :mod:`randsae.metrics.splice`).
- :func:`hidden_batches` is that loop with a forward stopped after the deepest hooked layer,
  yielding the captured hidden states (the activations and latents stages).

Hookpoint: the hidden state a block module returns (``model.gpt_neox.layers[i]``,
``model.model.layers[i]``, ...; see :mod:`randsae.models.arch`). Layers count from 0. The
pass stops by raising :class:`StopForward` from the deepest block's hook, so no later block,
final norm or LM head runs.

Sequences: a ``range`` (what the stages pass, one chunk at a time) or any explicit order of
row indices (e.g. a shuffled numpy array, for a streaming trainer); batches are consecutive
slices of that order. Control noise: row ``r`` of the tokens array gets noise seeded from
(artifact seed, ``r``) (:func:`randsae.models.variants.control_row_seeds`), so a sequence's
noise, and every artifact computed from it, is the same whatever the batch size, the batch
it shares or the order it is visited in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from randsae import zarr_io
from randsae.models.arch import block_output, get_blocks
from randsae.models.variants import control_row_seeds, control_seed

if TYPE_CHECKING:
    import zarr

    from randsae.models.artifact import LoadedModel

TOKENS_FILE = "tokens.zarr"

#: What may name the sequences to run: a range of rows, or explicit row indices in run order.
Sequences: TypeAlias = "range | np.ndarray | Sequence[int]"
#: A tokens artifact directory (holding tokens.zarr), a tokens.zarr path, or an open array.
TokenSource: TypeAlias = "zarr.Array | np.ndarray | str | Path"
#: A progress label (a bar is made and closed here), a bar shared across calls, or None.
Progress: TypeAlias = "str | tqdm | None"


class Batch(NamedTuple):
    """One batch of a tokens split."""

    sequences: np.ndarray  # int64 [B]: rows of the tokens array, in the order run
    input_ids: torch.Tensor  # int64 [B, T], on the requested device


class HiddenBatch(NamedTuple):
    """One batch with the hidden states of the hooked layers."""

    sequences: np.ndarray  # int64 [B]
    input_ids: torch.Tensor  # int64 [B, T]
    hidden: dict[int, torch.Tensor]  # layer -> block output [B, T, d_model]


class StopForward(Exception):
    """Raised inside the forward pass once every requested layer has been captured."""


# --------------------------------------------------------------------------- hooks


@contextlib.contextmanager
def capture_layers(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks that store block outputs into the yielded dict (and stop the pass after
    the deepest layer). Use with :func:`run_to_layers`."""
    blocks = get_blocks(model)
    if not layers:
        raise ValueError("no layers to capture")
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    last = max(layers)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(layer: int):
        def hook(module: nn.Module, args: object, output: object) -> None:
            captured[layer] = block_output(output).detach()
            if layer == last:
                raise StopForward

        return hook

    for layer in set(layers):
        handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def run_to_layers(model: nn.Module, input_ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """{layer: hidden state [batch, seq, d_model]} for the requested layers, in one pass."""
    with capture_layers(model, layers) as captured, contextlib.suppress(StopForward):
        model(input_ids=input_ids, use_cache=False)
    missing = set(layers) - set(captured)
    if missing:
        raise RuntimeError(f"the forward pass never reached layers {sorted(missing)}")
    return captured


# --------------------------------------------------------------------------- tokens


def open_tokens(tokens: TokenSource) -> zarr.Array | np.ndarray:
    """The [n_seq, ctx_len] token array of a tokens artifact dir, a tokens.zarr path, or the
    array itself."""
    if isinstance(tokens, str | Path):
        path = Path(tokens)
        if path.name != TOKENS_FILE:
            path = path / TOKENS_FILE
        if not path.exists():
            raise FileNotFoundError(f"no {TOKENS_FILE} at {path.parent}: not a tokens artifact")
        return zarr_io.open_array(path)
    if len(tokens.shape) != 2:
        raise ValueError(f"tokens must be [n_seq, ctx_len], got shape {tuple(tokens.shape)}")
    return tokens


def sequence_array(sequences: Sequences, n_seq: int) -> np.ndarray:
    """``sequences`` as int64 row indices, checked against the array's ``n_seq`` rows."""
    seq = np.asarray(sequences, dtype=np.int64).reshape(-1) if not isinstance(sequences, range) else \
        np.arange(sequences.start, sequences.stop, sequences.step, dtype=np.int64)
    if seq.size and (seq.min() < 0 or seq.max() >= n_seq):
        bad = seq[(seq < 0) | (seq >= n_seq)]
        raise IndexError(f"sequence indices {bad[:5].tolist()} out of range: the tokens array has {n_seq} sequences")
    return seq


def _contiguous(seq: np.ndarray) -> bool:
    return bool(seq.size) and int(seq[-1]) - int(seq[0]) == seq.size - 1 and bool((np.diff(seq) == 1).all())


def read_sequences(tokens: zarr.Array | np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Rows ``seq`` of ``tokens``, in that order. An ascending run is read as one slice; any
    other order reads each distinct row once (sorted, as Zarr's orthogonal indexing wants)."""
    if _contiguous(seq):
        return np.asarray(tokens[int(seq[0]) : int(seq[-1]) + 1])
    rows, inverse = np.unique(seq, return_inverse=True)
    got = tokens[rows] if isinstance(tokens, np.ndarray) else tokens.oindex[rows, :]
    return np.asarray(got)[inverse]


def row_seeds(artifact_seed: int, seq: np.ndarray) -> list[int]:
    """The control noise seed of each row in ``seq`` (same rule as
    :func:`randsae.models.variants.control_row_seeds`, for any order of rows)."""
    if _contiguous(seq):
        return control_row_seeds(artifact_seed, int(seq[0]), seq.size)
    return [s for row in seq.tolist() for s in control_row_seeds(artifact_seed, row, 1)]


def progress_bar(label: str, total_tokens: int, initial_tokens: int = 0) -> tqdm:
    """The stages' token progress bar."""
    return tqdm(total=total_tokens, initial=initial_tokens, unit="tok", unit_scale=True, desc=label)


# --------------------------------------------------------------------------- the loop


def token_batches(
    loaded: LoadedModel,
    tokens: TokenSource,
    sequences: Sequences,
    batch_size: int,
    device: torch.device | str,
    progress: Progress = None,
) -> Iterator[Batch]:
    """Batches of ``batch_size`` sequences (the last may be shorter), in the order given.

    While the caller holds a batch (the body of its ``for`` loop) the control noise of
    ``loaded.model`` is seeded with those sequences' own seeds, so every model call in the
    body sees the same noise as any other stage's forward of those sequences; for other
    variants it is a no-op. Leaving the loop early (``break``, an exception) restores the
    previous noise state when the generator is closed, as a ``for`` loop does.

    ``progress``: a label makes a token bar closed at the end; pass a bar from
    :func:`progress_bar` to share one across several calls (e.g. one per resumable chunk).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    arr = open_tokens(tokens)
    n_seq, ctx_len = arr.shape
    seq = sequence_array(sequences, n_seq)
    seed = int(loaded.info.get("seed") or 0)
    bar = progress_bar(progress, seq.size * ctx_len) if isinstance(progress, str) else progress
    try:
        for b0 in range(0, seq.size, batch_size):
            rows = seq[b0 : b0 + batch_size]
            ids = torch.from_numpy(read_sequences(arr, rows)).long().to(device)
            with control_seed(loaded.model, row_seeds(seed, rows)):
                yield Batch(rows, ids)
            if bar is not None:
                bar.update(ids.numel())
    finally:
        if isinstance(progress, str) and bar is not None:
            bar.close()


def hidden_batches(
    loaded: LoadedModel,
    tokens: TokenSource,
    sequences: Sequences,
    layers: Sequence[int],
    batch_size: int,
    device: torch.device | str,
    progress: Progress = None,
) -> Iterator[HiddenBatch]:
    """:func:`token_batches` with one forward per batch that stops after the deepest of
    ``layers``; yields each hooked layer's block output (inference tensors, on ``device``)."""
    for batch in token_batches(loaded, tokens, sequences, batch_size, device, progress):
        yield HiddenBatch(batch.sequences, batch.input_ids, run_to_layers(loaded.model, batch.input_ids, layers))
