"""How many devices an sae job uses and which device trains which SAE (``execution.sae.devices``).

Pure Python, no torch: the workflow imports it while it writes the rules (the launch command and
the GPUs a job requests; the device count is the sae stage's ``devices``,
:func:`randsae.stages.sae.planned_devices`), and
:mod:`randsae.sae.distributed` uses the same split at run time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from randsae.errors import RandsaeError

#: Device memory ``devices: auto`` plans for: the 80 GiB of the A100 and H100 the estimates name.
AUTO_DEVICE_BYTES = 80 * 1024**3


class DistributedError(RandsaeError, ValueError):
    """The job's processes do not match what the settings ask for, or the group cannot be split."""


# -- ownership ----------------------------------------------------------------------------------


def assign(costs: Sequence[int], world_size: int, base: Sequence[int] | None = None) -> list[int]:
    """The rank of each SAE: largest first to the least-loaded rank (load = ``base`` of the rank,
    e.g. rank 0's model and windows, plus its SAEs' ``costs``); ties to the rank with fewer SAEs,
    then the lower rank. Every rank but 0 gets at least one SAE; rank 0 always has work (it
    reads or streams the activations and serves them), so it may train none, which is what lets
    a group whose model and windows leave no room for an SAE beside them still be spread.
    Deterministic: a function of the arguments only."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if len(costs) < max(1, world_size - 1):
        raise DistributedError(f"{world_size} devices for {len(costs)} SAEs: every device but the first needs at "
                               f"least one SAE; set execution.sae.devices to at most {len(costs) + 1}")
    load = list(base) if base is not None else [0] * world_size
    if len(load) != world_size:
        raise ValueError(f"base has {len(load)} entries for {world_size} ranks")
    count = [0] * world_size
    out = [0] * len(costs)
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    for left, i in enumerate(order):
        remaining = len(costs) - left
        empty = [r for r in range(1, world_size) if count[r] == 0]
        # the last SAEs go to the ranks (but 0) still without one, so that each trains something
        ranks = empty if len(empty) >= remaining else range(world_size)
        r = min(ranks, key=lambda r: (load[r], count[r], r))
        out[i] = r
        load[r] += costs[i]
        count[r] += 1
    return out


def rank_loads(costs: Sequence[int], owners: Sequence[int], base: Sequence[int]) -> list[int]:
    loads = list(base)
    for c, r in zip(costs, owners):
        loads[r] += c
    return loads


def fewest_devices(costs: Sequence[int], base0: int, device_bytes: int) -> int | None:
    """The fewest devices on which :func:`assign` puts every rank's share under ``device_bytes``
    (rank 0 also holds ``base0``: the model and windows when streaming), or None if no count
    up to one device per SAE plus rank 0 does."""
    for n in range(1, len(costs) + 2):
        base = [base0] + [0] * (n - 1)
        if max(rank_loads(costs, assign(costs, n, base), base)) <= device_bytes:
            return n
    return None


def launch_command(build: str, devices: int) -> str:
    """The rule's command: ``python -m randsae build ...`` as is for one device, else under
    torchrun (``python -m torch.distributed.run``) with one process per device on this node."""
    if devices <= 1:
        return build
    python, rest = build.split(" -m randsae build ", 1)
    return f"{python} -m torch.distributed.run --standalone --nproc-per-node {devices} -m randsae build {rest}"


def gpu_resources(resources: dict[str, Any], devices: int) -> dict[str, Any]:
    """The resources of a rule launching ``devices`` processes: the GPUs the profile requests for
    one (``gres: gpu[:type]:1`` or the SLURM plugin's ``gpu``) times ``devices`` on one node, and
    ``tasks_per_gpu: 0`` so that the plugin starts one task (torchrun), not one per GPU."""
    if devices <= 1:
        return resources
    out = dict(resources)
    if out.get("gres"):
        out["gres"] = re.sub(r"\d+$", str(devices), str(out["gres"]))
    elif out.get("gpu"):
        out["gpu"] = devices
    else:
        return out  # the profile asks for no GPU (CPU processes with gloo)
    out["tasks_per_gpu"] = 0
    out["nodes"] = 1
    return out
