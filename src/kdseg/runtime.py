"""Process-wide runtime settings: how many CPU threads a job may use.

A Snakemake job that declares ``threads: n`` must use exactly ``n`` cores, or jobs running side
by side oversubscribe the machine (torch's default is one thread per physical core in *every*
process). :func:`limit_threads` caps every thread pool a kdseg stage touches: torch's intra-op
and inter-op pools, the OpenMP/BLAS pools already loaded (through ``threadpoolctl``), and the
environment that libraries loaded later and child processes (DataLoader workers) read.
"""

from __future__ import annotations

import contextlib
import os

THREAD_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
)


def limit_threads(n: int) -> None:
    """Use at most ``n`` threads in this process (and its future children).

    Raises:
        ValueError: ``n`` is not a positive integer.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(n)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # allowed once, before inter-op work started
        torch.set_num_interop_threads(n)
    threadpool_limits(limits=n)


def thread_report() -> dict[str, int]:
    """The thread counts in effect (for run.json and the benchmark's machine description)."""
    import torch
    from threadpoolctl import threadpool_info

    pools = {f"{p['internal_api']}": int(p["num_threads"]) for p in threadpool_info()}
    return {"torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(), **pools}
