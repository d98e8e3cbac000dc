"""One pass's SAEs spread over several devices with torch.distributed (``execution.sae.devices``).

A group's SAEs that do not fit on one device are split between ranks (one process per device,
started by ``torchrun``; NCCL on GPUs, gloo on CPUs). Each rank owns a subset of the SAEs
(:func:`assign`: greedy balance of the predicted device memory; any device count up to the
number of SAEs, no divisibility between devices and layers required) and trains them with the
unchanged :func:`randsae.sae.trainer.train_parts`. There is no data parallelism: every SAE sees
every batch of its layer, exactly as in one process.

Rank 0 owns the data: the cached :class:`~randsae.sae.data.ActivationStream` of each cached
layer and the model's forward pass for the streamed ones (:class:`Server`). Each round it takes
the next batch of every part (layer) and sends it to the ranks that own SAEs of that part, or
an end-of-stream item when the part's stream has ended. Every rank's trainer, rank 0's too,
reads its parts through a :class:`RemoteStream`: a stand-in with the stream interface the
trainer uses, whose cursor is the count of items taken. Each item also carries whether the
round trained some SAE anywhere (a batch with variance > 0 in some part), so every rank counts
the run's rounds (``run.step``: checkpoint times, checkpoint names) as the single process does;
and the stream counters (non-finite rows, rows read), which end up in each SAE's summary.

**Why the bytes equal one process's.** An SAE's computation reads only its own state and its
layer's batches; the batches are the same bytes (sent as raw bytes) in the same order, the
learning-rate schedule and log rows follow the part's own step counter, and the b_dec
initialisation uses the part's first batch. So on the CPU with the same thread count each SAE
is bitwise the one a single process trains (tests/workflow/test_distributed_train.py).

**Checkpoints and resume.** Each rank writes its own checkpoints (its SAEs and its stand-ins'
cursors) into ``checkpoints/w<world>-<ownership hash>/rank-<r>``, rank 0 also the real streams'
cursors into ``.../server`` at the same steps. The world size and the ownership are in the
directory name, so a restart with another device count or another split finds nothing of the
old run: rank 0 removes the other runs' checkpoints with a warning and the pass starts afresh.
A restart with the same split resumes from the newest step that every rank and the server
checkpointed consistently (the same step, and every stand-in's cursor equal to the count the
server sent): ranks run at most about one round apart, so with ``checkpoint_every_steps`` of 3
or more the newest two checkpoints always hold such a step; otherwise everything is discarded
with a warning. Never a mixed state.

Only rank 0 locks and publishes (:func:`randsae.stages.build_group`): the other ranks write
their SAEs into the partial directories rank 0 publishes, on the same node's filesystem.
Settings: ``execution.sae.devices`` (docs/sae.md, "Several devices"). torchrun's ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` are how a process learns its place, nothing else.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from randsae.sae import checkpoint as ckpt
from randsae.sae.data import WindowedStream
from randsae.sae_devices import DistributedError, assign, fewest_devices

__all__ = ["DistributedError", "assign", "fewest_devices"]  # the split lives in randsae.sae_devices

log = logging.getLogger("randsae")

#: How long a rank waits for another (a long checkpoint write, rank 0 checking its inputs).
TIMEOUT = datetime.timedelta(hours=1)
REMOTE_STATE_VERSION = 1
_HEADER = 6  # part, round, rows (-1: end of stream), round trained, nonfinite_rows, rows_read


class World(NamedTuple):
    """This process's place in a job: torchrun's RANK, LOCAL_RANK and WORLD_SIZE."""

    rank: int
    local_rank: int
    size: int
    device: torch.device  # this rank's device (cuda:<local rank>, or the CPU)


# -- the job's processes ------------------------------------------------------------------------


def join(settings: dict[str, Any]) -> World | None:
    """This process's :class:`World` when the job trains on several devices (the process group
    initialised), None for a one-process job. Refuses a world size other than the one
    ``execution.sae.devices`` asks for, naming both (``auto``: whatever torchrun started)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's
    want = settings.get("devices", 1)
    if want == "auto":
        want = size
    if not isinstance(want, int) or isinstance(want, bool) or want < 1:
        raise DistributedError(f"execution.sae.devices must be an integer >= 1 or auto, got {want!r}")
    if size != want:
        how = ("it was started as one process; launch it with torchrun --nproc-per-node "
               f"{want} (the rules do)" if size == 1 else f"torchrun started {size} processes")
        raise DistributedError(f"execution.sae.devices is {want} but {how}; set execution.sae.devices: {size} "
                               f"or start {want} processes")
    if size == 1:
        return None
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    setting = str(settings.get("device", "auto"))
    if setting.startswith("cuda:"):
        raise DistributedError(f"execution.device is {setting!r}: with execution.sae.devices > 1 each process "
                               "uses the CUDA device of its local rank; set execution.device: cuda (or auto)")
    cuda = setting != "cpu" and torch.cuda.is_available()
    if setting == "cuda" and not cuda:
        raise DistributedError("execution.device is cuda but this machine has no CUDA device")
    if cuda:
        if torch.cuda.device_count() <= local:
            raise DistributedError(f"execution.sae.devices is {size} but this node has {torch.cuda.device_count()} "
                                   "CUDA devices; request as many GPUs (the SLURM profile's gres) or lower the setting")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    log.info("rank %d of %d on %s (%s)", rank, size, device, dist.get_backend())
    return World(rank, local, size, device)


def current() -> World | None:
    """The World of a process that :func:`join` put in a group, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local) if dist.get_backend() == "nccl" else torch.device("cpu")
    return World(rank, local, dist.get_world_size(), device)


def leave() -> None:
    """Wait for every rank (rank 0 has published), then end the process group."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (JSON-like values)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# -- the data: rank 0 serves, every rank's trainer reads a stand-in -----------------------------


class Item(NamedTuple):
    """One part's share of one round: its batch (None: the stream ended)."""

    round: int
    batch: torch.Tensor | None
    stepped: bool  # whether the round trained some SAE of the run, on any rank
    counters: dict[str, int]


def stream_facts(stream: WindowedStream) -> dict[str, Any]:
    """What a :class:`RemoteStream` needs of the real stream (plain values, for broadcasting)."""
    return {"path": stream.path, "n_tokens": stream.n_tokens, "d_model": stream.d_model,
            "rows_per_seq": stream.rows_per_seq, "logical_dtype": stream.logical_dtype}


class Rounds:
    """Whether each round trained some SAE anywhere, as the items of this rank said: the
    trainer's ``round_sync`` (rounds are counted as in one process)."""

    def __init__(self) -> None:
        self.latest = 0
        self.stepped: dict[int, bool] = {}

    def note(self, round_: int, stepped: bool) -> None:
        self.stepped[round_] = stepped
        self.latest = max(self.latest, round_)
        self.stepped.pop(round_ - 2, None)

    def sync(self, here: bool) -> bool:
        anywhere = self.stepped.get(self.latest, False)
        if here and not anywhere:
            raise RuntimeError(f"round {self.latest}: this rank trained but rank 0 says no part did")
        return anywhere


class RemoteStream(WindowedStream):
    """One part's batches as rank 0 serves them (``source(k)``: the part's k-th item). The data
    order's geometry is the real stream's (same ``expected_batches``); the cursor is the count of
    items taken, plus the counters the last item carried."""

    def __init__(self, facts: dict[str, Any], order: dict[str, Any], source: Callable[[int], Item],
                 rounds: Rounds) -> None:
        super().__init__(facts["path"], n_tokens=facts["n_tokens"], d_model=facts["d_model"],
                         rows_per_seq=facts["rows_per_seq"], logical_dtype=facts["logical_dtype"],
                         prefetch=False, **order)
        self._source = source
        self._rounds = rounds
        self.received = 0
        self.ended = False

    def __enter__(self) -> RemoteStream:
        return self

    def next_batch(self) -> torch.Tensor | None:
        if self.ended:
            return None
        item = self._source(self.received + 1)
        self.received += 1
        self.nonfinite_rows, self.rows_read = item.counters["nonfinite_rows"], item.counters["rows_read"]
        self._rounds.note(item.round, item.stepped)
        if item.batch is None:
            self.ended = True
        return item.batch

    def state_dict(self) -> dict[str, Any]:
        return {"version": REMOTE_STATE_VERSION, "identity": self._identity(), "received": self.received,
                "ended": self.ended, "nonfinite_rows": self.nonfinite_rows, "rows_read": self.rows_read}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != REMOTE_STATE_VERSION or state.get("identity") != self._identity():
            raise ValueError(f"{self.path}: the checkpoint's cursor is not a distributed run's of this stream")
        self.received, self.ended = int(state["received"]), bool(state["ended"])
        self.nonfinite_rows, self.rows_read = int(state["nonfinite_rows"]), int(state["rows_read"])


def _flags(batches: Sequence[torch.Tensor], device: torch.device) -> bool:
    """Whether some batch trains: the trainer's own test, on the trainer's device."""
    from randsae.sae.trainer import batch_variance

    return any(bool(batch_variance(b.to(device, non_blocking=True))[1] > 0) for b in batches)


class Server:
    """Rank 0: every part's real stream, advanced one round at a time for all ranks."""

    def __init__(self, streams: Sequence[WindowedStream], owners: Sequence[Sequence[int]], device: torch.device,
                 every: int, state_dir: Path) -> None:
        self.streams = list(streams)
        self.owners = [sorted(set(o)) for o in owners]
        self.device = device
        self.every = every
        self.state_dir = state_dir
        self.round = self.step = 0
        self.sent = [0] * len(streams)
        self.ended = [False] * len(streams)
        self._local: dict[tuple[int, int], Item] = {}
        self._pending: list[Any] = []  # (work, tensor) of sends in flight

    def source(self, part: int) -> Callable[[int], Item]:
        def item(k: int) -> Item:
            while self.round < k:
                self._fetch()
            return self._local.pop((part, k))
        return item

    def drain(self) -> None:
        """Serve the rounds left once rank 0's own parts have ended."""
        while not all(self.ended):
            self._fetch()
        self._wait()

    def _wait(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending = []

    def _fetch(self) -> None:
        import torch.distributed as dist

        # the previous round's sends done: their tensors may go, and no rank lags more than a round
        self._wait()
        t = self.round + 1
        got = {p: s.next_batch() for p, s in enumerate(self.streams) if not self.ended[p]}
        stepped = _flags([b for b in got.values() if b is not None], self.device)
        self.step += int(stepped)
        for p, b in got.items():
            counters = self.streams[p].counters()
            if b is None:
                self.ended[p] = True
            head = torch.tensor([p, t, -1 if b is None else b.shape[0], int(stepped), counters["nonfinite_rows"],
                                 counters["rows_read"]], dtype=torch.int64, device=self.device)
            payload = None if b is None else b.to(self.device).contiguous().view(torch.uint8)
            for r in self.owners[p]:
                if r == 0:
                    self._local[(p, t)] = Item(t, b, stepped, counters)
                    continue
                self._pending.append((dist.isend(head, r), head))
                if payload is not None:
                    self._pending.append((dist.isend(payload, r), payload))
            self.sent[p] += 1
        self.round = t
        if (stepped and self.step % self.every == 0) or all(self.ended):
            self.save()

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "step": self.step, "sent": list(self.sent), "ended": list(self.ended),
                "streams": [s.state_dict() for s in self.streams]}

    def save(self) -> None:
        ckpt.save_checkpoint(self.state_dir, self.step, self.state_dict(), keep=3)

    def load(self, state: dict[str, Any]) -> None:
        for s, st in zip(self.streams, state["streams"]):
            s.load_state_dict(st)
        self.round, self.step = int(state["round"]), int(state["step"])
        self.sent, self.ended = [int(v) for v in state["sent"]], [bool(v) for v in state["ended"]]


class Receiver:
    """A rank other than 0: the items rank 0 sends it, in the order its trainer asks for them."""

    def __init__(self, world: World, d_model: dict[int, int], dtypes: dict[int, torch.dtype]) -> None:
        self.world = world
        self.d_model = d_model
        self.dtypes = dtypes

    def source(self, part: int) -> Callable[[int], Item]:
        def item(k: int) -> Item:
            import torch.distributed as dist

            head = torch.empty(_HEADER, dtype=torch.int64, device=self.world.device)
            dist.recv(head, 0)
            p, t, rows, stepped, nonfinite, read = (int(v) for v in head.tolist())
            if (p, t) != (part, k):
                raise RuntimeError(f"rank {self.world.rank}: expected item {k} of part {part} from rank 0, "
                                   f"got item {t} of part {p} (the ranks are out of step)")
            batch = None
            if rows >= 0:
                dt = self.dtypes[part]
                raw = torch.empty((rows, self.d_model[part] * dt.itemsize), dtype=torch.uint8, device=self.world.device)
                dist.recv(raw, 0)
                batch = raw.view(dt)
            return Item(t, batch, bool(stepped), {"nonfinite_rows": nonfinite, "rows_read": read})
        return item


# -- checkpoints ---------------------------------------------------------------------------------


def run_dir(ckdir: Path, world_size: int, owners: dict[str, int]) -> Path:
    """Where this split of the pass keeps its checkpoints: world size and ownership in the name."""
    ident = hashlib.sha256(json.dumps(sorted(owners.items())).encode()).hexdigest()[:12]
    return ckdir / f"w{world_size}-{ident}"


def discard_others(ckdir: Path, keep: Path | None, name: str) -> None:
    """Remove checkpoints of other splits (or of a one-device run, ``keep`` None: subfolders)
    from ``ckdir``, with a warning: they cannot resume this run."""
    if not ckdir.is_dir():
        return
    for p in sorted(ckdir.iterdir()):
        if keep is not None and p == keep:
            continue
        if keep is None and not p.is_dir():
            continue  # a one-device run's own step files
        log.warning("%s: discarding checkpoints of a run on another number of devices or another split (%s)",
                    name, p.name)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _summaries(rank_dir: Path, signature: dict[str, Any], parts: Sequence[int]) -> dict[int, Any]:
    """step -> {part: (received, ended)} of this rank's checkpoints that match ``signature``."""
    out: dict[int, Any] = {}
    for step, path in ckpt.list_checkpoints(rank_dir):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # a damaged file: not a candidate
            log.warning("%s: unreadable checkpoint (%s)", path, e)
            continue
        if state.get("signature") != signature:
            continue
        out[step] = {p: [int(ps["stream"]["received"]), bool(ps["stream"]["ended"])]
                     for p, ps in zip(parts, state["parts"])}
    return out


def agree_on_checkpoint(world: World, rank_dir: Path, signature: dict[str, Any], parts: Sequence[int],
                        server_dir: Path | None, name: str) -> dict[str, Any] | None:
    """Leave in ``rank_dir`` only checkpoints up to the newest step every rank and the server
    hold consistently; returns the server's state at that step on rank 0 (None: start afresh)."""
    # a rank training no SAE (rank 0 serving only) has no checkpoints of its own to agree on
    mine: dict[str, Any] = {"ranks": _summaries(rank_dir, signature, parts), "trains": bool(parts)}
    server_states: dict[int, Path] = {}
    if server_dir is not None:
        server_states = dict(ckpt.list_checkpoints(server_dir))
        mine["server"] = {}
        for step, path in server_states.items():
            st = ckpt.load_checkpoint(path)
            mine["server"][step] = {"sent": st["sent"], "ended": st["ended"]}
    every = all_gather(mine)
    server = every[0]["server"]
    chosen = None
    for step in sorted(server, reverse=True):
        sent, ended = server[step]["sent"], server[step]["ended"]
        if all(not r["trains"] or (step in r["ranks"] and all(cur == [sent[p], ended[p]]
                                                              for p, cur in r["ranks"][step].items()))
               for r in every):
            chosen = step
            break
    had = any(r["ranks"] for r in every) or bool(server)
    if chosen is None and had and world.rank == 0:
        log.warning("%s: discarding the checkpoints of the ranks: no step that every rank checkpointed "
                    "consistently (the pass starts afresh)", name)
    for step, path in ckpt.list_checkpoints(rank_dir):
        if chosen is None or step > chosen:
            path.unlink(missing_ok=True)
    if server_dir is None:
        return None
    for step, path in server_states.items():
        if chosen is None or step > chosen:
            path.unlink(missing_ok=True)
    if chosen is not None:
        log.info("%s: resuming every rank from step %d", name, chosen)
        return ckpt.load_checkpoint(server_states[chosen])
    return None
