"""Listing on Ray: the folder/glob/tar listing tasks (`resize_pipeline.sources.folder.list_prefixes`,
`resize_pipeline.sources.tars.list_tar_group`) as Ray tasks, one per group of sub-prefixes or tars,
spread over the cluster. They write their sorted runs into ``DEST/_listing/`` and return small
summaries; the driver merges the runs in order (`resize_pipeline.sources.runs`). A task on a node that
is lost is run again by Ray (its runs have fixed names and are written atomically)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

#: CPUs a listing task reserves: it mostly waits on the filesystem or the object store
LISTING_CPUS = 0.25


def ray_runner(config: Any) -> Callable[[Callable, list[tuple]], list]:
    """A `folder.run_tasks` runner that runs each call as a Ray task; results in call order."""

    def run(fn: Callable, args: list[tuple]) -> list:
        remote = ray.remote(num_cpus=LISTING_CPUS, max_retries=3)(fn)
        return ray.get([remote.remote(*a) for a in args])

    return run
