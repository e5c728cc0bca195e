"""One function over many inputs as Ray tasks: the driver the memory build and the index
build share (``--engine ray``)."""

from __future__ import annotations

from typing import Callable, Iterable

MAX_RETRIES = 3  # a task whose worker dies is rerun this many times before the job fails


def run_tasks(fn: Callable, jobs: Iterable[tuple], done: Callable, *, address: str | None = None,
              num_cpus: int = 1) -> None:
    """Runs ``fn(*job)`` as one Ray task per job and calls ``done(result)`` on this process
    in the order the tasks finish.

    Joins the cluster at ``address`` (None: ``$RAY_ADDRESS``, else a local one) unless this
    process is connected already, and leaves it again at the end. A task's own exception is
    raised as itself, not wrapped; after a failure or an interrupt the tasks still running
    are cancelled, so none goes on writing into the output.
    """
    import ray

    own = not ray.is_initialized()
    if own:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=num_cpus, max_retries=MAX_RETRIES)(fn)
    refs = [task.remote(*job) for job in jobs]
    try:
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:  # the task's own error, unwrapped
                raise (e.cause if isinstance(e.cause, Exception) else e) from None
            done(result)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if own:
            ray.shutdown()
