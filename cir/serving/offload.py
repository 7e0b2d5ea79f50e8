"""Long CPU-bound calls of the server (explanations) on dedicated OS threads at a lower CPU priority.

Under gunicorn's gevent workers every request of a worker shares one OS thread: a 30-300 ms Grad-CAM run
inline holds every other request of that worker until it ends, whatever locks say. Run on a real thread
instead (gevent's own thread pool when the standard library is patched, a plain executor otherwise), the
call releases the GIL inside torch, ONNX Runtime and PIL, so the worker keeps answering searches meanwhile.
Those threads are also niced (Linux keeps a nice value per thread): when the cores are contended, the
scheduler gives the searches the CPU first and the explanations what is left.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


def gevent_patched() -> bool:
    """True in a worker whose `threading` gevent has monkey-patched (threads there are greenlets)."""
    monkey = sys.modules.get("gevent.monkey")   # only a process that patched has it imported
    return monkey is not None and bool(monkey.is_module_patched("threading"))


class Offload:
    """Run calls on `threads` OS threads of their own, `nice` steps below the creating thread's priority."""

    def __init__(self, threads: int, nice: int = 10, name: str = "offload"):
        self.priority = None
        if nice:
            with contextlib.suppress(OSError, AttributeError):   # off Linux: the normal priority
                self.priority = min(19, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)
        if gevent_patched():
            from gevent.threadpool import ThreadPool
            pool = ThreadPool(max(1, threads))
            self._run: Callable = lambda fn: pool.apply(fn)   # waits cooperatively; fn runs on a real thread
        else:
            executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=name)
            self._run = lambda fn: executor.submit(fn).result()

    def __call__(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) on one of the pool's threads; its result, or its exception re-raised here."""
        return self._run(lambda: self._lowered(fn, *args))

    def _lowered(self, fn: Callable[..., T], *args) -> T:
        if self.priority is not None:
            # Only this pool thread: os.setpriority on a Linux thread id leaves the rest of the process alone.
            # Raising one's own nice value needs no privilege; repeating it costs one system call.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.priority)
        return fn(*args)
