"""Which mode this process's Triton runs kernels in (GPU compiler or CPU interpreter).

Triton fixes the mode per process when ``triton.language`` is imported: its own helpers (tl.sum,
tl.max, ...) are ``@triton.jit`` functions, decorated then as either compiled or interpreted
functions, and kernels from the other mode cannot call them. So TRITON_INTERPRET=1 must be in the
environment before anything imports triton (set it in the shell, or start a subprocess); setting
it later has no effect. ``interpreted()`` asks Triton's own helpers which mode they were built in,
which is the mode that actually works, whatever the variable says now.

Autotuning: on a GPU each kernel is tuned over several configs; the interpreter gets exactly one,
because autotuning with several configs fails there (it benchmarks with a GPU timer).
"""

from __future__ import annotations

from collections.abc import Sequence

import triton
import triton.language as tl


def interpreted() -> bool:
    """Whether Triton kernels in this process run in the interpreter (on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.sum, InterpretedFunction)


def configs_for_mode(
    gpu_configs: Sequence[triton.Config], interpreter_config: triton.Config
) -> list[triton.Config]:
    """The autotune config list for the current mode (a single config under the interpreter)."""
    return [interpreter_config] if interpreted() else list(gpu_configs)
