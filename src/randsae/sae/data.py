"""Stream one layer's activations from Zarr as shuffled batches, in bounded memory, resumably.

Shuffle scheme (a windowed shuffle, chosen because it can resume exactly from a tiny cursor):

* The array is read in blocks of ``shuffle_block_sequences`` whole sequences (contiguous rows;
  ``shuffle_block_sequences * rows_per_seq`` rows, the last block possibly shorter). The block
  length comes from that keyed SAE parameter and the array's ``rows_per_seq`` attribute, never
  from the storage chunking: the data order is a function of the seeds, the block length and the
  array's shape alone, so arrays that differ only in chunk (or shard) length yield identical
  batches. An array without a ``rows_per_seq`` attribute (one not written by the activations
  stage) is read as one row per sequence.
* Each epoch visits the blocks in a random order drawn from ``(data_seed, epoch)``.
* Consecutive blocks of that order form a window of about ``shuffle_buffer_tokens`` rows. A
  window's rows are read, filtered (non-finite rows dropped and counted), and permuted with a
  permutation drawn from ``(data_seed, epoch, window)``; batches are cut from the concatenation
  of the permuted windows.
* A background thread reads and permutes the next window while the current one is consumed, so
  I/O overlaps compute. Memory: the current window plus one prefetched window.

Because every permutation is a pure function of the seeds and the position, the cursor
(:meth:`ActivationStream.state_dict`) is just (epoch, window, offset, batches) plus counters: no
buffer contents and no RNG state need saving, and a restored stream yields exactly the batches the
original would have. The cursor's identity names only what defines the order (shape, block and
window lengths, seed, batch settings), not the chunking, so a cursor also resumes on a rechunked
copy of the array.

Bad input: a non-2-D array, a non-float dtype, a width different from the expected d_model or a
``rows_per_seq`` attribute that does not divide the rows into whole sequences is an error naming
the path; rows containing NaN or +-inf are skipped and counted
(``nonfinite_rows``); an epoch with no finite row at all is an error. Zero-variance batches are the
trainer's business (it skips and counts them).
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from randsae import zarr_io
from randsae.errors import RandsaeError

# 2: blocks are whole sequences (shuffle_block_sequences), no longer the storage chunks.
STREAM_STATE_VERSION = 2
FLOAT_DTYPES = ("float32", "float16", "bfloat16")

WindowKey = tuple[int, int]  # (epoch, window)


class ActivationDataError(RandsaeError, ValueError):
    """The activation array cannot be used for training; the message names the path."""


class WindowedStream:
    """The data order and its cursor, over any source of windows (module docstring).

    A subclass says where a window's rows come from: :meth:`_read_window` gets the raw rows
    of the window's blocks (it may run on the prefetch thread, so it must do no torch ops) and
    :meth:`_rows_of` turns them into one tensor in ``logical_dtype`` on the main thread.
    Filtering non-finite rows, the permutation, batching and the cursor are shared, so every
    source yields the same batches for the same rows. :class:`ActivationStream` reads a Zarr
    array; :class:`randsae.sae.stream.ForwardStream` runs the model.
    """

    def __init__(
        self,
        label: str,
        *,
        n_tokens: int,
        d_model: int,
        rows_per_seq: int,
        logical_dtype: str,
        batch_size: int,
        shuffle_buffer_tokens: int,
        shuffle_block_sequences: int,
        data_seed: int,
        max_tokens: int | None = None,
        prefetch: bool = True,
    ) -> None:
        self.path = label  # what error messages name: the array's path, or the stream's origin
        self.n_tokens, self.d_model = n_tokens, d_model
        self.logical_dtype = logical_dtype
        self.batch_size = batch_size
        self.data_seed = data_seed
        if not _is_positive_int(shuffle_block_sequences):
            raise ValueError(
                f"shuffle_block_sequences must be an int >= 1, got {shuffle_block_sequences!r}"
            )
        self.rows_per_seq = rows_per_seq
        self.shuffle_block_sequences = shuffle_block_sequences
        # Keyed parameters and the array's shape only: the storage chunking must not matter.
        self.block_rows = shuffle_block_sequences * self.rows_per_seq
        self.n_blocks = math.ceil(self.n_tokens / self.block_rows)
        self.blocks_per_window = max(1, shuffle_buffer_tokens // self.block_rows)
        self.n_windows = math.ceil(self.n_blocks / self.blocks_per_window)
        self.max_batches = None if max_tokens is None else max_tokens // batch_size
        self.single_pass = max_tokens is None
        # cursor
        self.epoch = self.window = self.offset = self.batches = 0
        self.nonfinite_rows = 0
        self.rows_read = 0
        self._current: torch.Tensor | None = None
        self._current_counted = False
        self._empty_windows_in_a_row = 0
        self._orders: dict[int, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sae-prefetch") if prefetch else None
        self._pending: tuple[WindowKey, Future] | None = None

    # -- public API -----------------------------------------------------------------------------

    @property
    def expected_batches(self) -> int:
        """Batches the stream will yield (one pass: an upper bound if rows get skipped)."""
        if self.max_batches is not None:
            return self.max_batches
        return self.n_tokens // self.batch_size

    def next_batch(self) -> torch.Tensor | None:
        """The next [batch_size, d_model] batch in the array's logical dtype, or None at the end."""
        if self.max_batches is not None and self.batches >= self.max_batches:
            return None
        parts: list[torch.Tensor] = []
        need = self.batch_size
        while need > 0:
            rows = self._current_window()
            if rows is None:
                return None
            take = rows[self.offset : self.offset + need]
            parts.append(take)
            need -= take.shape[0]
            self.offset += take.shape[0]
            if self.offset >= rows.shape[0]:
                self._advance_window()
        self.batches += 1
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __iter__(self):
        while (batch := self.next_batch()) is not None:
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The cursor: enough to resume exactly (see module docstring)."""
        return {
            "version": STREAM_STATE_VERSION,
            "identity": self._identity(),
            "epoch": self.epoch,
            "window": self.window,
            "offset": self.offset,
            "batches": self.batches,
            "nonfinite_rows": self.nonfinite_rows,
            "rows_read": self.rows_read,
            "current_counted": self._current is not None and self._current_counted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STREAM_STATE_VERSION:
            raise ValueError(
                f"stream cursor version {state.get('version')}, expected {STREAM_STATE_VERSION}"
            )
        if state["identity"] != self._identity():
            raise ValueError(
                f"{self.path}: cursor was saved for a different array or stream settings: "
                f"{state['identity']} != {self._identity()}"
            )
        self._drop_pending()
        self.epoch, self.window = state["epoch"], state["window"]
        self.offset, self.batches = state["offset"], state["batches"]
        self.nonfinite_rows, self.rows_read = state["nonfinite_rows"], state["rows_read"]
        self._current = None
        # The window under the cursor was already counted before the save: reloading it must
        # not count its rows again.
        self._current_counted = bool(state["current_counted"])

    def counters(self) -> dict[str, int]:
        return {"nonfinite_rows": self.nonfinite_rows, "rows_read": self.rows_read}

    def close(self) -> None:
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> WindowedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- windows --------------------------------------------------------------------------------

    def window_blocks(self, key: WindowKey) -> np.ndarray:
        """The blocks of window ``key``, in the order their rows are concatenated."""
        epoch, window = key
        order = self._block_order(epoch)
        return order[window * self.blocks_per_window : (window + 1) * self.blocks_per_window]

    def block_span(self, block: int) -> tuple[int, int]:
        """Rows [start, stop) of ``block``: whole sequences, the last block possibly shorter."""
        return block * self.block_rows, min((block + 1) * self.block_rows, self.n_tokens)

    def _identity(self) -> dict[str, Any]:
        return {
            "n_tokens": self.n_tokens,
            "d_model": self.d_model,
            "rows_per_seq": self.rows_per_seq,
            "block_rows": self.block_rows,
            "blocks_per_window": self.blocks_per_window,
            "data_seed": self.data_seed,
            "batch_size": self.batch_size,
            "max_batches": self.max_batches,
        }

    def _ended(self, key: WindowKey) -> bool:
        return self.single_pass and key[0] >= 1

    def _next_key(self, key: WindowKey) -> WindowKey:
        epoch, window = key
        return (epoch, window + 1) if window + 1 < self.n_windows else (epoch + 1, 0)

    def _current_window(self) -> torch.Tensor | None:
        while self._current is None:
            key = (self.epoch, self.window)
            if self._ended(key):
                return None
            rows, n_bad, n_read = self._fetch(key)
            if not self._current_counted:
                self.nonfinite_rows += n_bad
                self.rows_read += n_read
            self._current_counted = True
            self._prefetch(self._next_key(key))
            if rows.shape[0] == 0:
                self._empty_windows_in_a_row += 1
                if self._empty_windows_in_a_row >= self.n_windows:
                    raise ActivationDataError(
                        f"{self.path}: no finite rows in a whole pass over the array"
                    )
                self._advance_window()
                continue
            self._empty_windows_in_a_row = 0
            self._current = rows
        return self._current

    def _advance_window(self) -> None:
        self.epoch, self.window = self._next_key((self.epoch, self.window))
        self.offset = 0
        self._current = None
        self._current_counted = False

    def _fetch(self, key: WindowKey) -> tuple[torch.Tensor, int, int]:
        if self._pending is not None and self._pending[0] == key:
            fut = self._pending[1]
            self._pending = None
            return self._finish_window(key, fut.result())
        self._drop_pending()
        return self._load_window(key)

    def _prefetch(self, key: WindowKey) -> None:
        if self._pool is None or self._ended(key):
            return
        self._drop_pending()
        self._pending = (key, self._pool.submit(self._read_window, key))

    def _drop_pending(self) -> None:
        if self._pending is not None:
            fut = self._pending[1]
            self._pending = None
            fut.cancel()
            if not fut.cancelled():
                # Wait for the running load; its error (if any) resurfaces if the window is
                # needed again and loaded synchronously.
                with contextlib.suppress(Exception):
                    fut.result()

    def _block_order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:  # called from both threads: compute locally, cache only the latest
            order = np.random.default_rng([self.data_seed, 0, epoch]).permutation(self.n_blocks)
            self._orders = {epoch: order}
        return order

    def _load_window(self, key: WindowKey) -> tuple[torch.Tensor, int, int]:
        """Read, filter and permute one window: (rows, non-finite rows dropped, rows read)."""
        return self._finish_window(key, self._read_window(key))

    def _read_window(self, key: WindowKey) -> Any:
        """The window's rows in whatever raw form :meth:`_rows_of` takes."""
        raise NotImplementedError

    def _rows_of(self, raw: Any) -> torch.Tensor:
        """The window's rows as one [n, d_model] tensor in ``logical_dtype`` (main thread)."""
        raise NotImplementedError

    def _finish_window(self, key: WindowKey, raw: Any) -> tuple[torch.Tensor, int, int]:
        """Main-thread half of loading a window: to tensors, drop non-finite rows, permute."""
        epoch, window = key
        rows = self._rows_of(raw)
        n_read = rows.shape[0]
        finite = torch.isfinite(rows).all(dim=1)
        n_bad = n_read - int(finite.sum())
        if n_bad:
            rows = rows[finite]
        perm = np.random.default_rng([self.data_seed, 1, epoch, window]).permutation(rows.shape[0])
        return rows[torch.from_numpy(perm).to(rows.device)], n_bad, n_read


class ActivationStream(WindowedStream):
    """Seeded, resumable, prefetching batch stream over a [n_tokens, d_model] randsae array.

    ``max_tokens=None`` means one pass (the last partial batch is dropped); otherwise the stream
    yields ``max_tokens // batch_size`` batches, starting a freshly shuffled pass whenever one ends.
    ``shuffle_block_sequences`` is the block length in sequences (see the module docstring); it is
    required, with no default, because it defines the data order.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int,
        shuffle_buffer_tokens: int,
        shuffle_block_sequences: int,
        data_seed: int,
        max_tokens: int | None = None,
        expected_d_model: int | None = None,
        prefetch: bool = True,
    ) -> None:
        self.arr = _open_checked(str(path), expected_d_model)
        n_tokens, d_model = (int(s) for s in self.arr.shape)
        super().__init__(
            str(path),
            n_tokens=n_tokens,
            d_model=d_model,
            rows_per_seq=_rows_per_seq(str(path), self.arr, n_tokens),
            logical_dtype=zarr_io.logical_dtype(self.arr),
            batch_size=batch_size,
            shuffle_buffer_tokens=shuffle_buffer_tokens,
            shuffle_block_sequences=shuffle_block_sequences,
            data_seed=data_seed,
            max_tokens=max_tokens,
            prefetch=prefetch,
        )

    def __enter__(self) -> ActivationStream:
        return self

    def _read_window(self, key: WindowKey) -> list[np.ndarray]:
        """The window's blocks as raw stored arrays. This is all the prefetch thread does:
        only Zarr I/O and decompression, no torch ops, because torch ops running in a second
        thread share the intra-op thread pool with the training step and change how many
        threads its matmuls get, and with that their rounding (runs stop being bitwise
        reproducible)."""
        # Plain row slices: Zarr serves any alignment. I/O is most efficient when the chunk (or
        # shard) length is a multiple of block_rows (each block then decodes only its own
        # chunks); any other chunking only decodes some chunks more than once, which is slower
        # but reads exactly the same rows.
        return [np.asarray(self.arr[slice(*self.block_span(int(b)))]) for b in self.window_blocks(key)]

    def _rows_of(self, raw: list[np.ndarray]) -> torch.Tensor:
        parts = [zarr_io.from_storage(a, self.logical_dtype) for a in raw]
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def _is_positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _rows_per_seq(path: str, arr: Any, n_tokens: int) -> int:
    """Rows per sequence from the array's ``rows_per_seq`` attribute (written by the activations
    stage); 1 when the attribute is absent, i.e. every row is its own sequence."""
    raw = arr.attrs.get("rows_per_seq")
    if raw is None:
        return 1
    if not _is_positive_int(raw):
        raise ActivationDataError(f"{path}: attribute rows_per_seq = {raw!r}, expected an int >= 1")
    if n_tokens % raw:
        raise ActivationDataError(
            f"{path}: {n_tokens} rows are not whole sequences of rows_per_seq = {raw} rows"
        )
    n_seq = arr.attrs.get("n_seq")
    if n_seq is not None and n_seq * raw != n_tokens:
        raise ActivationDataError(
            f"{path}: attributes n_seq = {n_seq} and rows_per_seq = {raw} give {n_seq * raw} rows, "
            f"the array has {n_tokens}"
        )
    return raw


def _open_checked(path: str, expected_d_model: int | None):
    try:
        arr = zarr_io.open_array(path)
    except FileNotFoundError as e:
        raise ActivationDataError(f"{path}: no activation array there") from e
    if len(arr.shape) != 2:
        raise ActivationDataError(
            f"{path}: expected a [n_tokens, d_model] array, got shape {tuple(arr.shape)}"
        )
    dtype = zarr_io.logical_dtype(arr)
    if dtype not in FLOAT_DTYPES:
        raise ActivationDataError(f"{path}: activations must be one of {FLOAT_DTYPES}, got {dtype}")
    n, width = (int(s) for s in arr.shape)
    if expected_d_model is not None and width != expected_d_model:
        raise ActivationDataError(
            f"{path}: activation rows have width {width}, expected d_model = {expected_d_model}"
        )
    attr_width = arr.attrs.get("d_model")
    if attr_width is not None and int(str(attr_width)) != width:
        raise ActivationDataError(
            f"{path}: array attribute d_model = {attr_width} but rows have width {width}"
        )
    if n == 0:
        raise ActivationDataError(f"{path}: the activation array has no rows")
    return arr
