"""A reward module that imports in the caller but fails to import in a worker process."""

import multiprocessing

if multiprocessing.parent_process() is not None:
    raise ImportError("this module refuses to load in a worker process")


def reward(completion: str, **_: object) -> float:
    return 0.0
