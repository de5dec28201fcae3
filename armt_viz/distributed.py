"""Run analyses on a dask.distributed cluster: a LocalCluster here, or a scheduler by address (DESIGN.md §7).

Analysis functions build dask graphs over zarr-backed traces; inside `with cluster(): ...` their `.compute()`
runs on the cluster's workers (distributed makes its Client the default scheduler), with worker memory bounded
by `memory_limit`. Process workers re-import `__main__` when spawned (ENV.md §6, D1): call this under
`if __name__ == "__main__":` in scripts.

    from armt_viz.distributed import cluster
    with cluster(n_workers=2) as client:
        mass = av.open_trace(path).armt.stale_mass().compute()
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["cluster"]


@contextlib.contextmanager
def cluster(
    address: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    processes: bool = True,
    memory_limit: str | int | None = "2GiB",
    **cluster_kwargs,
) -> Iterator["distributed.Client"]:  # noqa: F821
    """Context manager yielding a `dask.distributed.Client`; closed (and the LocalCluster shut down) on exit.

    Args:
        address: a scheduler address ("tcp://host:8786") to connect to; None starts a LocalCluster.
        n_workers, threads_per_worker, processes, memory_limit: LocalCluster settings (ignored with an address).
            memory_limit is per worker (dask pauses, then restarts, a worker that exceeds it).
        cluster_kwargs: passed on to LocalCluster. The dashboard is off unless `dashboard_address` is given.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - distributed is a runtime requirement
        raise ImportError("armt_viz.distributed needs dask.distributed: pip install 'dask[distributed]'") from exc
    if address is not None:
        client = Client(address)
        try:
            yield client
        finally:
            client.close()
        return
    cluster_kwargs.setdefault("dashboard_address", None)
    local = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                         memory_limit=memory_limit, **cluster_kwargs)
    try:
        client = Client(local)
        try:
            yield client
        finally:
            client.close()
    finally:
        local.close()
