"""Numba's parallel kernels must not change how many threads the rest of the process uses.

Numba's default threading layer is OpenMP, and in one process it shares the OpenMP runtime with torch:
every parallel launch calls ``omp_set_num_threads(numba.get_num_threads())``, which is the number of
cores unless ``NUMBA_NUM_THREADS`` says otherwise. So one validation search after a training run set
torch's intra-op threads from what the user asked (``OMP_NUM_THREADS=1``, or a tuning worker's share)
to every core: later feature extraction in that process differed from a fresh process in the last
float16 bits, and parallel tuning workers oversubscribed the machine. The guard puts torch's count back.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restores torch's intra-op thread count after a Numba parallel launch (torch is never imported
    here: if nothing loaded it, there is nothing to restore)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)
