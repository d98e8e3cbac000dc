"""ActivationStream: coverage, seeding, exact resume from the cursor, bad input."""

from __future__ import annotations

import pytest
import torch

from randsae import zarr_io
from randsae.sae import ActivationDataError, ActivationStream


def _ids(n: int, d: int = 4) -> torch.Tensor:
    """Row i holds the value i in every column, so batches reveal which rows they contain."""
    return torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, d)


def _stream(path, **over) -> ActivationStream:
    # arrays without a rows_per_seq attribute count one row per sequence: blocks of 100 rows
    kw = dict(batch_size=64, shuffle_buffer_tokens=300, shuffle_block_sequences=100, data_seed=0)
    kw.update(over)
    return ActivationStream(path, **kw)


def test_one_pass_yields_every_row_once_shuffled(make_acts):
    path = make_acts(_ids(1000), chunk=100)
    with _stream(path) as s:
        batches = list(s)
    assert len(batches) == 1000 // 64 and all(b.shape == (64, 4) for b in batches)
    rows = torch.cat(batches)[:, 0].long()
    assert rows.unique().numel() == rows.numel()  # no repeats
    assert not torch.equal(rows, torch.arange(rows.numel()))  # shuffled
    # a window mixes several chunks: the first batch spans more than one chunk of 100 rows
    assert (batches[0][:, 0] // 100).unique().numel() > 1


def test_seeded_and_max_tokens_spans_passes(make_acts):
    path = make_acts(_ids(500), chunk=100)
    with _stream(path, max_tokens=1280) as a, _stream(path, max_tokens=1280) as b:
        xa, xb = torch.cat(list(a)), torch.cat(list(b))
    assert torch.equal(xa, xb) and xa.shape[0] == 1280
    counts = torch.bincount(xa[:, 0].long(), minlength=500)
    assert counts.min() >= 2  # every row seen in both full passes
    with _stream(path, max_tokens=1280, data_seed=1) as c:
        assert not torch.equal(torch.cat(list(c)), xa)


@pytest.mark.parametrize("stop_after", [0, 3, 7, 15])
def test_resume_from_cursor_gives_the_same_batches(make_acts, stop_after):
    path = make_acts(_ids(1000), chunk=100)
    with _stream(path, max_tokens=1600) as s:
        full = list(s)
    with _stream(path, max_tokens=1600) as s:
        head = [s.next_batch() for _ in range(stop_after)]
        cursor = s.state_dict()
    with _stream(path, max_tokens=1600) as s:
        s.load_state_dict(cursor)
        tail = list(s)
    assert len(head) + len(tail) == len(full)
    for got, want in zip(head + tail, full):
        assert torch.equal(got, want)


def test_nonfinite_rows_are_skipped_and_counted(make_acts):
    x = _ids(600)
    x[5, 1] = float("nan")
    x[77, 0] = float("inf")
    x[300, 3] = -float("inf")
    path = make_acts(x, chunk=100, logical="float16")  # ids exact up to 2048
    with _stream(path) as s:
        rows = torch.cat(list(s))
        assert s.counters()["nonfinite_rows"] == 3
        assert s.counters()["rows_read"] == 600
    assert torch.isfinite(rows).all()
    assert not set(rows[:, 0].float().tolist()) & {5.0, 77.0, 300.0}


def test_nonfinite_count_survives_resume(make_acts):
    x = _ids(600)
    x[::50, 0] = float("nan")  # 12 bad rows spread over all windows
    path = make_acts(x, chunk=100)
    with _stream(path) as s:
        s.next_batch()
        cursor = s.state_dict()
    with _stream(path) as s:
        s.load_state_dict(cursor)
        list(s)
        assert s.counters()["nonfinite_rows"] == 12


def test_all_rows_bad_is_an_error(make_acts):
    path = make_acts(torch.full((300, 4), float("nan")), chunk=100)
    with _stream(path) as s, pytest.raises(ActivationDataError, match="no finite rows"):
        s.next_batch()


def test_wrong_width_names_path_and_widths(make_acts):
    path = make_acts(_ids(200, d=6))
    with pytest.raises(ActivationDataError) as e:
        _stream(path, expected_d_model=8)
    assert str(path) in str(e.value) and "6" in str(e.value) and "8" in str(e.value)
    bad_attr = make_acts(_ids(200, d=6), name="attr", attrs={"d_model": 7})
    with pytest.raises(ActivationDataError, match="d_model = 7"):
        _stream(bad_attr)


def test_bad_arrays_are_rejected(tmp_path, make_acts):
    three_d = tmp_path / "3d"
    arr = zarr_io.create_array(three_d, (10, 2, 2), (5, 2, 2), "float32")
    zarr_io.write_rows(arr, 0, torch.zeros(10, 2, 2))
    with pytest.raises(ActivationDataError, match="3d"):
        _stream(three_d)
    ints = make_acts(torch.zeros(10, 4, dtype=torch.int32), name="ints", logical="int32")
    with pytest.raises(ActivationDataError, match="int32"):
        _stream(ints)
    with pytest.raises(ActivationDataError, match="no activation array"):
        _stream(tmp_path / "missing")


def test_cursor_rejects_other_settings(make_acts):
    path = make_acts(_ids(500), chunk=100)
    with _stream(path) as s:
        cursor = s.state_dict()
    with _stream(path, data_seed=3) as s, pytest.raises(ValueError, match="different"):
        s.load_state_dict(cursor)


# -- the data order depends on keyed parameters only, never on the storage chunking -------------

SEQ = 15  # rows per sequence
N_SEQ = 100


def _layouts(make_seq_acts, x, logical="float32"):
    """The same rows in three storage layouts: 3 and 5 sequences per chunk, and 6-sequence shards
    of 1-sequence chunks. None is a multiple of the 4-sequence blocks used below."""
    return [
        make_seq_acts(x, SEQ, 3, "c3", logical=logical),
        make_seq_acts(x, SEQ, 5, "c5", logical=logical),
        make_seq_acts(x, SEQ, 1, "sh6", seqs_per_shard=6, logical=logical),
    ]


def _seq_stream(path, **over) -> ActivationStream:
    kw = dict(
        batch_size=64, shuffle_buffer_tokens=200, shuffle_block_sequences=4, data_seed=0,
        max_tokens=4000,  # 2.7 passes: epoch boundaries too
    )
    kw.update(over)
    return ActivationStream(path, **kw)


def test_batches_do_not_depend_on_chunking(make_seq_acts):
    paths = _layouts(make_seq_acts, _ids(SEQ * N_SEQ))
    runs = []
    for path in paths:
        with _seq_stream(path) as s:
            assert (s.rows_per_seq, s.block_rows, s.blocks_per_window) == (SEQ, 60, 3)
            runs.append(list(s))
    assert len(runs[0]) == 4000 // 64
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))
    # ...while the keyed block length does change the order (so the equality above is not trivial;
    # before, the block was the chunk, and the two chunkings gave different batches like these)
    with _seq_stream(paths[0], shuffle_block_sequences=5) as s:
        assert not torch.equal(torch.cat(list(s)), torch.cat(runs[0]))


def test_a_block_is_whole_consecutive_sequences(make_seq_acts):
    # one block per window and one block per batch: each batch is exactly one block's rows
    path = make_seq_acts(_ids(SEQ * N_SEQ), SEQ, 3, "c3")
    with _seq_stream(path, batch_size=2 * SEQ, shuffle_buffer_tokens=1, shuffle_block_sequences=2,
                     max_tokens=None) as s:
        batches = list(s)
    assert len(batches) == N_SEQ // 2
    starts = set()
    for b in batches:
        rows = b[:, 0].long().sort().values
        first = int(rows[0])
        assert first % (2 * SEQ) == 0  # starts at a sequence boundary, at an even sequence
        assert torch.equal(rows, torch.arange(first, first + 2 * SEQ))
        starts.add(first)
    assert len(starts) == N_SEQ // 2  # every block once


def test_cursor_resumes_on_a_rechunked_copy(make_seq_acts):
    c3, c5, _ = _layouts(make_seq_acts, _ids(SEQ * N_SEQ))
    with _seq_stream(c3) as s:
        full = list(s)
    with _seq_stream(c3) as s:
        head = [s.next_batch() for _ in range(20)]
        cursor = s.state_dict()
    assert "chunks" not in str(cursor["identity"])
    with _seq_stream(c5) as s:
        s.load_state_dict(cursor)
        tail = list(s)
    assert len(head) + len(tail) == len(full)
    assert all(torch.equal(got, want) for got, want in zip(head + tail, full))


def test_arrays_without_rows_per_seq_count_one_row_per_sequence(make_acts):
    a, b = make_acts(_ids(1000), name="a", chunk=100), make_acts(_ids(1000), name="b", chunk=37)
    with _stream(a, shuffle_block_sequences=50) as sa, _stream(b, shuffle_block_sequences=50) as sb:
        assert (sa.rows_per_seq, sa.block_rows) == (1, 50)
        assert all(torch.equal(x, y) for x, y in zip(sa, sb))


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"rows_per_seq": 0}, "rows_per_seq = 0"),
        ({"rows_per_seq": "15"}, "rows_per_seq = '15'"),
        ({"rows_per_seq": 7}, "not whole sequences"),  # 300 rows
        ({"rows_per_seq": 15, "n_seq": 21}, "n_seq = 21"),
    ],
)
def test_bad_rows_per_seq_attribute_is_an_error(make_acts, attrs, match):
    path = make_acts(_ids(300), attrs=attrs)
    with pytest.raises(ActivationDataError, match=match) as e:
        _stream(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_block_length_must_be_a_positive_int(make_acts, bad):
    with pytest.raises(ValueError, match="shuffle_block_sequences"):
        _stream(make_acts(_ids(100)), shuffle_block_sequences=bad)
