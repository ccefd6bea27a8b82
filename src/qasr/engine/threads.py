"""Which threads run torch: the model worker only, for long.

Every thread that runs a multi-threaded torch op keeps its own OpenMP worker team alive for as long
as the thread lives. Once there are more OpenMP threads than cores, libgomp stops spinning between
parallel regions, and each of the thousands of small regions in a decoding step pays a wake-up.
Measured on 2 cores: a model run from a worker thread is slower once another live thread (the main
thread, a pool thread) has run torch ops (bench/README.md). So loading and warm-up, which run torch
before the worker starts, happen in a thread that ends (`in_passing_thread`), and the scheduler's
preparation thread stays torch-free (`qasr.engine.features`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_passing_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a new thread that ends when it returns; return its result or raise its error."""
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=target, name="qasr-passing")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]
