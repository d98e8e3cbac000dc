"""Training batches straight from the model's forward pass, in the cached data order.

:class:`ForwardStream` is an :class:`randsae.sae.data.ActivationStream` whose rows come from the
model instead of an ``acts.zarr``: the same blocks, windows, non-finite filter, permutation,
batches and cursor (both subclass :class:`randsae.sae.data.WindowedStream`), so an SAE trained on
either is the same SAE, byte for byte on the CPU.

A window of the data order is a list of blocks of ``shuffle_block_sequences`` whole sequences;
its rows are those blocks' sequences in that order, each sequence's positions in order (position
0 dropped with ``drop_first_position``), i.e. exactly the rows an ``acts.zarr`` holds for them.
:class:`ForwardWindows` computes a window by running :func:`randsae.forward.hidden_batches` over
exactly those sequences, stopped after the deepest hooked layer, and rounds every layer's rows to
the activations dtype as writing and reading the Zarr array would (:func:`randsae.zarr_io.to_storage`
then ``from_storage`` is a plain dtype conversion: round to nearest even). One forward pass serves
every layer: the layers' streams ask for the same windows in turn, and a window's rows wait in a
small cache until each layer has taken its own. Forward batches may group sequences differently
from the activations stage's; on the CPU that changes no bit (docs/store.md, ``batch_size``).

The forward runs on the calling (main) thread, never on a prefetch thread: torch ops on a second
thread share the intra-op pool with the training step and change its rounding.

The data order is keyed (the sae stage's parameters); which source serves it is not, so a
checkpoint's stream cursor resumes on either source.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from randsae import zarr_io
from randsae.sae.data import FLOAT_DTYPES, WindowedStream, WindowKey

if TYPE_CHECKING:
    from randsae.forward import TokenSource
    from randsae.models.artifact import LoadedModel


class ForwardWindows:
    """The rows of any window of sequences, for every hooked layer, from one forward pass.

    ``rows(sequences, layer)`` returns that layer's [len(sequences) * rows_per_seq, d_model]
    rows in ``dtype``. The other layers' rows of the same sequences are kept (at most ``keep``
    windows) until their streams ask, then handed over and dropped; a window asked for again
    after that is recomputed (same bits), so memory stays bounded whatever the streams do.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        tokens: TokenSource,
        layers: Sequence[int],
        *,
        dtype: str,
        drop_first_position: bool,
        forward_batch_size: int,
        device: torch.device | str,
        label: str = "forward",
        keep: int = 2,
    ) -> None:
        from randsae import forward

        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"activations dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
        if not layers:
            raise ValueError("no layers to stream")
        self.loaded = loaded
        self.tokens = forward.open_tokens(tokens)
        self.n_seq, ctx_len = (int(s) for s in self.tokens.shape)
        self.skip = 1 if drop_first_position else 0
        self.rows_per_seq = ctx_len - self.skip
        if self.rows_per_seq < 1:
            raise ValueError(f"{label}: sequences of {ctx_len} tokens leave no row once position 0 is dropped")
        self.layers = sorted(set(layers))
        self.dtype = dtype
        self.forward_batch_size = forward_batch_size
        self.device = torch.device(device)
        self.d_model = int(loaded.model.config.hidden_size)
        self.label = label
        self.keep = keep
        self._cache: OrderedDict[bytes, dict[int, torch.Tensor]] = OrderedDict()
        # facts for the job's meta.json and the benchmarks
        self.forward_sequences = 0
        self.forward_seconds = 0.0

    @property
    def n_rows(self) -> int:
        return self.n_seq * self.rows_per_seq

    def rows(self, sequences: np.ndarray, layer: int) -> torch.Tensor:
        """``layer``'s rows of ``sequences`` (in that order), rounded to the activations dtype."""
        if layer not in self.layers:
            raise ValueError(f"{self.label}: layer {layer} is not streamed (streamed: {self.layers})")
        key = np.ascontiguousarray(sequences, dtype=np.int64).tobytes()
        entry = self._cache.get(key)
        if entry is None or layer not in entry:
            entry = self._compute(sequences)
            self._cache[key] = entry
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        rows = entry.pop(layer)
        if not entry:
            del self._cache[key]
        return rows

    def _compute(self, sequences: np.ndarray) -> dict[int, torch.Tensor]:
        from randsae import forward

        t0 = time.perf_counter()
        dt = zarr_io.torch_dtype(self.dtype)
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        for batch in forward.hidden_batches(self.loaded, self.tokens, sequences, self.layers,
                                            self.forward_batch_size, self.device):
            for layer in self.layers:
                # what the activations stage stores for these sequences, in its dtype
                parts[layer].append(batch.hidden[layer][:, self.skip :].reshape(-1, self.d_model).to(dt))
        # torch.cat outside inference mode: ordinary tensors the trainer may use freely
        out = {layer: torch.cat(p) for layer, p in parts.items()}
        self.forward_sequences += int(np.asarray(sequences).size)
        self.forward_seconds += time.perf_counter() - t0
        return out

    def stream(
        self,
        layer: int,
        *,
        batch_size: int,
        shuffle_buffer_tokens: int,
        shuffle_block_sequences: int,
        data_seed: int,
        max_tokens: int | None = None,
    ) -> ForwardStream:
        """One layer's batches in the data order these parameters define."""
        return ForwardStream(self, layer, batch_size=batch_size, shuffle_buffer_tokens=shuffle_buffer_tokens,
                             shuffle_block_sequences=shuffle_block_sequences, data_seed=data_seed,
                             max_tokens=max_tokens)


class ForwardStream(WindowedStream):
    """One layer's training batches computed by a :class:`ForwardWindows` (module docstring)."""

    def __init__(
        self,
        windows: ForwardWindows,
        layer: int,
        *,
        batch_size: int,
        shuffle_buffer_tokens: int,
        shuffle_block_sequences: int,
        data_seed: int,
        max_tokens: int | None = None,
    ) -> None:
        self.windows = windows
        self.layer = layer
        super().__init__(
            f"{windows.label} layer {layer}",
            n_tokens=windows.n_rows,
            d_model=windows.d_model,
            rows_per_seq=windows.rows_per_seq,
            logical_dtype=windows.dtype,
            batch_size=batch_size,
            shuffle_buffer_tokens=shuffle_buffer_tokens,
            shuffle_block_sequences=shuffle_block_sequences,
            data_seed=data_seed,
            max_tokens=max_tokens,
            prefetch=False,  # the forward runs on the main thread (module docstring)
        )

    def __enter__(self) -> ForwardStream:
        return self

    def window_sequences(self, key: WindowKey) -> np.ndarray:
        """The sequences of window ``key``: each block's, blocks in window order."""
        n = self.shuffle_block_sequences
        return np.concatenate([np.arange(int(b) * n, min((int(b) + 1) * n, self.windows.n_seq), dtype=np.int64)
                               for b in self.window_blocks(key)])

    def _read_window(self, key: WindowKey) -> torch.Tensor:
        return self.windows.rows(self.window_sequences(key), self.layer)

    def _rows_of(self, raw: Any) -> torch.Tensor:
        return raw
