"""The per-node timing gate, without Ray, on real processes: a timer stops the builds that share the
node and lets them go on when it is done; where it cannot stop them it waits for them and keeps
new builds out; a holder whose process died is dropped, and a timer that dies does not leave the
builds it stopped stopped."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxopt.search.cluster import _Gate

STOPPABLE = Path("/proc/self/stat").exists()  # where a process's run state can be read


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture
def processes():
    made = []

    def spawn() -> int:
        made.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return made[-1].pid
    yield spawn
    for p in made:
        p.kill()
        p.wait()


def _state(pid: int) -> str:
    """R/S running or sleeping, T stopped (waits a moment for a signal to land)."""
    deadline = time.monotonic() + 2
    while True:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T" or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


def _running(pid: int) -> bool:
    deadline = time.monotonic() + 2
    while _state(pid) == "T" and time.monotonic() < deadline:
        time.sleep(0.02)
    return _state(pid) != "T"


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_timer_stops_the_builds_and_lets_them_go_on(processes):
    build, other_build, timer = processes(), processes(), processes()

    async def scenario():
        gate = _Gate(preempt=True)
        assert await gate.acquire("shared", build)
        assert await gate.acquire("shared", other_build)
        assert await asyncio.wait_for(gate.acquire("exclusive", timer), 2)  # no waiting for the builds
        assert _state(build) == "T" and _state(other_build) == "T" and _state(timer) != "T"
        gate.release("shared", other_build)  # sent just before it stopped: it must still go on after
        late = asyncio.create_task(gate.acquire("shared", processes()))
        await asyncio.sleep(0.1)
        assert not late.done()  # no new build starts while the timer times
        gate.release("exclusive", timer)
        assert _running(build) and _running(other_build)
        await asyncio.wait_for(late, 2)
    _run(scenario())


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_timer_that_dies_does_not_leave_the_builds_stopped(processes):
    build = processes()
    timer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])

    async def scenario():
        gate = _Gate(preempt=True)
        assert await gate.acquire("shared", build)
        assert await gate.acquire("exclusive", timer.pid)
        assert _state(build) == "T"
        timer.wait()
        await asyncio.sleep(2.5)  # the watchdog looks once a second
        assert _running(build)
    _run(scenario())


def test_without_stopping_a_timer_waits_for_builds_and_keeps_new_builds_out(processes):
    build, timer, late_build = processes(), processes(), processes()

    async def scenario():
        gate = _Gate(preempt=False)
        assert await gate.acquire("shared", build)
        waiting = asyncio.create_task(gate.acquire("exclusive", timer))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # a build is running
        late = asyncio.create_task(gate.acquire("shared", late_build))
        await asyncio.sleep(0.1)
        assert not late.done()  # writer preference: the timer goes first
        gate.release("shared", build)
        await asyncio.wait_for(waiting, 2)
        assert gate.exclusive == timer and not late.done()
        gate.release("exclusive", timer)
        await asyncio.wait_for(late, 2)
        assert gate.shared == {late_build: 1}
    _run(scenario())


def test_a_dead_holder_is_dropped(processes):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = processes()

    async def scenario():
        gate = _Gate()
        assert await gate.acquire("exclusive", dead.pid)  # its process is gone: it can hold nothing
        assert await asyncio.wait_for(gate.acquire("exclusive", alive), 2)
    _run(scenario())
