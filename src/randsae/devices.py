"""The compute device of a job, from the config's ``execution.device`` (the one channel for it).

``auto`` is the first CUDA device when torch sees one, else the CPU. An explicit ``cuda`` on a
machine without CUDA is an error that names the setting, not a crash deep inside torch.
"""

from __future__ import annotations

import re

import torch

from randsae.errors import RandsaeError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


class DeviceError(RandsaeError, ValueError):
    """``execution.device`` names a device this machine does not have."""


def resolve_device(setting: str = "auto") -> torch.device:
    if not DEVICE_PATTERN.match(setting):
        raise DeviceError(f"execution.device: {setting!r} is not one of auto, cpu, cuda, cuda:N")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(setting)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"execution.device: {setting!r} but torch sees no CUDA device on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"execution.device: {setting!r} but this machine has {torch.cuda.device_count()} CUDA devices")
    return dev
