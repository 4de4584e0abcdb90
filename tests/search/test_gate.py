"""The per-node timing gate, without Ray: builds share it, timing holds it alone, a waiting timer
keeps new builds out, and a holder whose process died is dropped."""
from __future__ import annotations

import asyncio
import subprocess
import sys

from onnxopt.search.cluster import _Gate


def _run(coro):
    return asyncio.run(coro)


def test_timing_waits_for_builds_and_keeps_new_builds_out():
    async def scenario():
        gate, me = _Gate(), 1  # pid 1 is alive on every Linux
        assert await gate.acquire("shared", me)
        timer = asyncio.create_task(gate.acquire("exclusive", me))
        await asyncio.sleep(0.1)
        assert not timer.done()  # a build is running
        late_build = asyncio.create_task(gate.acquire("shared", me))
        await asyncio.sleep(0.1)
        assert not late_build.done()  # writer preference: the timer goes first
        gate.release("shared", me)
        await asyncio.wait_for(timer, 2)
        assert gate.exclusive == me and not late_build.done()
        gate.release("exclusive", me)
        await asyncio.wait_for(late_build, 2)
        assert gate.shared == {me: 1}
    _run(scenario())


def test_a_dead_holder_is_dropped():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    async def scenario():
        gate = _Gate()
        assert await gate.acquire("exclusive", dead.pid)  # its process is gone: it can hold nothing
        assert await asyncio.wait_for(gate.acquire("exclusive", 1), 2)
    _run(scenario())
