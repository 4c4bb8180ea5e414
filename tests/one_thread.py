"""Autouse fixture for quantizer tests: import `one_torch_thread` into a test module to run it on one thread."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The quantizer is many small ops: on a shared 2-core box one thread is several times faster."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
