"""serving.offload: calls run on threads of their own at a lower priority, errors come back to the caller, and
under gevent a worker keeps serving its other greenlets while an offloaded call computes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from cir.serving.offload import Offload, gevent_patched


def _where() -> tuple[int, int]:
    return threading.get_ident(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_calls_run_on_a_lower_priority_thread_and_errors_come_back():
    assert not gevent_patched()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ident, nice = Offload(2, nice=5)(_where)
    assert ident != threading.get_ident() and nice == min(19, base + 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base   # the caller is untouched
    with pytest.raises(ZeroDivisionError):
        Offload(1)(lambda: 1 / 0)


def test_under_gevent_other_greenlets_run_meanwhile():
    """An inline 0.4 s computation would hold the worker's only OS thread: the ticker would not tick."""
    code = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all(aggressive=False)
        import time, gevent, numpy as np
        from cir.serving.offload import Offload, gevent_patched
        assert gevent_patched()
        ticks, span = [], []
        def ticker():
            while True:
                ticks.append(time.perf_counter()); gevent.sleep(0.005)
        def busy():   # numpy releases the GIL in its kernels, as torch and ONNX Runtime do
            a = np.random.default_rng(0).random((400, 400)); t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.6:
                a = np.linalg.qr(a)[0]
            span.extend([t0, time.perf_counter()])
        g = gevent.spawn(ticker); gevent.sleep(0)
        Offload(1)(busy)
        g.kill(); print(sum(span[0] < t < span[1] for t in ticks))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 2   # inline, none could run while it computed (on any load)
