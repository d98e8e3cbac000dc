"""Every kernels test starts and ends with the default backend request ('auto').

The request is process-wide (dispatch.set_backend), so a test that forces a backend must not
leak it into the next one; this fixture puts the default back whatever the test did.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from randsae.kernels import dispatch


@pytest.fixture(autouse=True)
def default_kernel_backend() -> Iterator[None]:
    dispatch.set_backend("auto")
    yield
    dispatch.set_backend("auto")
