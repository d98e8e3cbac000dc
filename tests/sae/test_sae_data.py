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
    kw = dict(batch_size=64, shuffle_buffer_tokens=300, data_seed=0)
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
