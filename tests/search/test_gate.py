"""The per-node timing gate, without Ray, on real processes: a timer stops the builds that share the
node and lets them go on when it is done; where it cannot stop one of them it stops none and waits,
keeping new builds out; a holder whose process died (or whose pid was reused) is dropped; and no
way a timer ends (it dies, gives up waiting, holds too long, the search is cancelled) leaves the
builds stopped."""
from __future__ import annotations

import asyncio
import os
import signal
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


def _now(pid: int) -> str:
    """R/S running or sleeping, T stopped."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _state(pid: int, patience: float = 2.0) -> str:
    """The state once a signal sent has had `patience` seconds to land (returns at once if stopped)."""
    deadline = time.monotonic() + patience
    while _now(pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.02)
    return _now(pid)


def _running(pid: int) -> bool:
    deadline = time.monotonic() + 2
    while _now(pid) == "T" and time.monotonic() < deadline:
        time.sleep(0.02)
    return _now(pid) != "T"


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_timer_stops_the_builds_and_lets_them_go_on(processes):
    build, other_build, timer = processes(), processes(), processes()

    async def scenario():
        gate = _Gate(preempt=True)
        assert None is not await gate.acquire("shared", build)
        assert None is not await gate.acquire("shared", other_build)
        assert None is not await asyncio.wait_for(gate.acquire("exclusive", timer), 2)  # no waiting for the builds
        assert _state(build) == "T" and _state(other_build) == "T" and _state(timer, 0.3) != "T"
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
        assert None is not await gate.acquire("shared", build)
        assert None is not await gate.acquire("exclusive", timer.pid)
        assert _state(build) == "T"
        timer.wait()
        await asyncio.sleep(2.5)  # the watchdog looks once a second
        assert _running(build)
    _run(scenario())


def test_without_stopping_a_timer_waits_for_builds_and_keeps_new_builds_out(processes):
    build, timer, late_build = processes(), processes(), processes()

    async def scenario():
        gate = _Gate(preempt=False)
        assert None is not await gate.acquire("shared", build)
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


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_the_search_driver_is_waited_for_never_stopped(processes):
    build, driver, timer = processes(), processes(), processes()

    async def scenario():
        gate = _Gate(preempt=True)
        assert [] == await gate.acquire("shared", build)
        assert [] == await gate.acquire("shared", driver, stoppable=False)  # sampling the next trial
        waiting = asyncio.create_task(gate.acquire("exclusive", timer))
        await asyncio.sleep(0.3)
        # nobody is stopped while the driver works (all or none), and the timer waits for it
        assert not waiting.done() and _now(build) != "T" and _now(driver) != "T"
        again = asyncio.create_task(gate.acquire("shared", driver, stoppable=False))
        gate.release("shared", driver)
        assert [build] == await asyncio.wait_for(waiting, 2)  # then it stops the builds alone
        await asyncio.sleep(0.1)
        assert not again.done() and _now(driver) != "T"  # the driver's next work waits for the timing
        gate.release("exclusive", timer)
        assert [] == await asyncio.wait_for(again, 2) and _running(build)
    _run(scenario())


def test_the_driver_works_unheld_when_its_gate_cannot_be_had():
    from onnxopt.search.cluster import driver_work
    with driver_work(None):
        pass
    calls = _FakeGateCalls(RuntimeError("the gate actor died"))
    with driver_work(_handle(calls)):
        pass
    assert calls.calls == [("acquire", "shared"), ("withdraw", "shared")]  # and no release of a hold it never had
    calls = _FakeGateCalls([], release_fails=True)
    with pytest.raises(KeyboardInterrupt):  # a failing release never hides the loop's own exception
        with driver_work(_handle(calls)):
            raise KeyboardInterrupt
    assert calls.calls == [("acquire", "shared"), ("release", "shared")]


def test_a_dead_holder_is_dropped(processes):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    alive = processes()

    async def scenario():
        gate = _Gate()
        assert None is not await gate.acquire("exclusive", holder.pid)
        holder.wait()  # it dies holding the gate, and a process that is gone holds nothing
        assert None is not await asyncio.wait_for(gate.acquire("exclusive", alive), 2)
        assert await gate.acquire("shared", holder.pid) is None  # nor can it ask for anything
    _run(scenario())


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_timer_that_gives_up_waiting_is_never_granted(processes):
    build, holder, timer = processes(), processes(), processes()

    async def scenario():
        gate = _Gate(preempt=True)
        assert [] == await gate.acquire("shared", build)
        assert None is not await gate.acquire("exclusive", holder)
        waiting = asyncio.create_task(gate.acquire("exclusive", timer))
        await asyncio.sleep(0.1)
        gate.release("exclusive", timer)  # its caller was interrupted while it waited
        gate.release("exclusive", holder)
        assert await asyncio.wait_for(waiting, 2) is None
        assert gate.exclusive is None and _running(build)
    _run(scenario())


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_request_withdrawn_before_it_reaches_the_gate_is_never_granted(processes):
    build, timer = processes(), processes()

    async def scenario():
        gate = _Gate(preempt=True)
        assert [] == await gate.acquire("shared", build, token="b1")
        gate.withdraw("exclusive", timer, "t1")  # Ray ran the withdrawal before the acquire it names
        assert await asyncio.wait_for(gate.acquire("exclusive", timer, token="t1"), 2) is None
        assert gate.exclusive is None and _now(build) != "T" and not gate.early
        # a later request of the same process is granted as usual
        assert [build] == await asyncio.wait_for(gate.acquire("exclusive", timer, token="t2"), 2)
        gate.release("exclusive", timer)
        assert _running(build) and not gate.granted.get("t2")
    _run(scenario())


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_request_withdrawn_after_its_grant_lets_the_builds_go_on(processes):
    build, timer = processes(), processes()

    async def scenario():
        gate = _Gate(preempt=True)
        assert [] == await gate.acquire("shared", build)
        assert [build] == await gate.acquire("exclusive", timer, token="t1")
        assert _state(build) == "T"
        gate.withdraw("exclusive", timer, "t1")  # the answer never reached the interrupted caller
        assert gate.exclusive is None and _running(build) and not gate.granted
    _run(scenario())


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_timer_holding_too_long_is_let_go(processes):
    build, timer, next_timer = processes(), processes(), processes()

    async def scenario():
        gate = _Gate(preempt=True, max_hold=0.5)
        assert [] == await gate.acquire("shared", build)
        assert [build] == await gate.acquire("exclusive", timer)
        assert _state(build) == "T"
        await asyncio.sleep(2.5)  # the watchdog looks once a second
        assert gate.exclusive is None and _running(build)
        assert [build] == await asyncio.wait_for(gate.acquire("exclusive", next_timer), 2)
        gate.release("exclusive", next_timer)
        assert _running(build)
    _run(scenario())


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_build_that_cannot_be_stopped_means_none_is_stopped(processes, monkeypatch):
    import onnxopt.search.cluster as cluster
    build, timer = processes(), processes()
    unstoppable = os.getpid()  # the gate's own process: never stopped
    sent = []
    real_kill = os.kill

    def kill(pid, sig):
        sent.append((pid, sig))
        real_kill(pid, sig)
    monkeypatch.setattr(cluster.os, "kill", kill)

    async def scenario():
        gate = _Gate(preempt=True)
        assert [] == await gate.acquire("shared", build)
        assert [] == await gate.acquire("shared", unstoppable)
        waiting = asyncio.create_task(gate.acquire("exclusive", timer, "search-a"))
        await asyncio.sleep(1.5)  # it looks again once a second
        assert not waiting.done() and (build, signal.SIGSTOP) not in sent  # no stop/continue churn meanwhile
        gate.release("shared", unstoppable)
        assert [build] == await asyncio.wait_for(waiting, 2)
        assert _state(build) == "T"
        assert gate.resume_all("search-b") == [] and _state(build) == "T"  # another search's timer keeps it
        assert gate.resume_all("search-a") == [build]  # its own search, cancelled, lets the build go on
        assert gate.exclusive is None and _running(build)
    _run(scenario())


@pytest.mark.skipif(not STOPPABLE, reason="reads process start times from /proc")
def test_a_reused_pid_is_not_the_holder_it_was(processes):
    build, timer = processes(), processes()

    async def scenario():
        gate = _Gate(preempt=True)
        assert [] == await gate.acquire("shared", build)
        gate.born[build] = "0"  # as if `build` had died and the kernel gave its pid to a new process
        assert [] == await asyncio.wait_for(gate.acquire("exclusive", timer), 2)
        assert _state(build, 0.3) != "T" and build not in gate.shared
    _run(scenario())


class _FakeGateCalls:
    """GateHandle's calls to its actor, scripted: what acquire answers or raises, whether release fails."""

    def __init__(self, acquire, release_fails=False):
        self.acquire, self.release_fails, self.calls, self.tokens = acquire, release_fails, [], []

    def __call__(self, method, kind, token=None, stoppable=True):
        self.calls.append((method, kind))
        if method in ("acquire", "withdraw"):
            self.tokens.append(token)
        if method == "acquire":
            if isinstance(self.acquire, BaseException):
                raise self.acquire
            return self.acquire
        if self.release_fails:
            raise RuntimeError("the gate actor died")


def _handle(calls):
    from onnxopt.search.cluster import GateHandle
    handle = GateHandle(actor=None)
    handle._call = calls
    return handle


def test_a_holder_interrupted_while_it_waits_tells_the_gate_it_gave_up():
    calls = _FakeGateCalls(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        with _handle(calls).quiet():
            pass
    # it withdraws the very request it made (the gate may see the withdrawal first)
    assert calls.calls == [("acquire", "exclusive"), ("withdraw", "exclusive")]
    assert calls.tokens[0] is not None and calls.tokens[0] == calls.tokens[1]


@pytest.mark.skipif(not STOPPABLE, reason="reads process states from /proc")
def test_a_timer_whose_gate_is_gone_lets_the_builds_it_stopped_go_on(processes):
    build = processes()
    os.kill(build, signal.SIGSTOP)  # as the gate stopped it for this timer
    assert _state(build) == "T"
    calls = _FakeGateCalls([build], release_fails=True)
    with pytest.raises(RuntimeError, match="actor died"):
        with _handle(calls).quiet():
            pass
    assert _running(build)


def test_a_timing_longer_than_the_gate_holds_is_counted_as_cut():
    handle = _handle(_FakeGateCalls([]))
    handle.max_hold = 0.05
    with handle.quiet():
        pass
    assert handle.cut == 0
    with handle.quiet():
        time.sleep(0.1)  # the gate's watchdog would have let the stopped builds go on by now
    assert handle.cut == 1 and handle.timing >= 0.1
