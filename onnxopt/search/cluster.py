"""Trials on Ray: a local Ray instance by default, an existing cluster with --ray ADDRESS.

Each trial is a Ray task (one CPU; Ray retries it elsewhere when its worker dies). Timing must not
share a machine with other work: a ratio measured beside a neighbour's build lies. So every node
has a gate, a small actor living on that node: a trial holds it shared while it works and alone
while it times (every interleave() of the trial, its passes' included). A timer does not wait for
the other trials' builds to end: the gate stops their processes (SIGSTOP) for the seconds it times
and lets them go on after (SIGCONT), so builds overlap on all cores and every timing has the node
to itself. Where processes cannot be stopped (no SIGSTOP, another user's process) the timer waits
for those builds instead, and a waiting timer keeps new builds out (writer preference). A holder
whose process died holds nothing: the gate drops it before it decides, and a watchdog lets the
stopped builds go on if the timer that stopped them dies."""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

from ..errors import UsageError

GATE_PREFIX = "onnxopt-timing-gate-"
NAMESPACE = "onnxopt"


def connect(address: str | None, workers: int) -> dict:
    """Join the cluster at `address`, or start a local instance with `workers` CPUs. Returns a
    summary (nodes, CPUs) for the report."""
    import ray
    if address:
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"--ray {address}: cannot join the cluster: {str(exc).splitlines()[0][:200]}") from None
    else:
        ray.init(num_cpus=workers, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"address": address or "local", "nodes": len(nodes),
            "cpus": int(sum(n.get("Resources", {}).get("CPU", 0) for n in nodes))}


def shutdown() -> None:
    """Stop the local instance, or leave the cluster (it keeps running for others)."""
    import ray
    if ray.is_initialized():
        ray.shutdown()


class _Gate:
    """Readers-writer lock of one node that stops its readers while the writer holds it (see the
    module docstring)."""

    def __init__(self, preempt: bool | None = None) -> None:
        self.shared: dict[int, int] = {}   # pid -> holds
        self.exclusive: int | None = None
        self.waiting_exclusive: set[int] = set()
        self.paused: set[int] = set()      # shared holders stopped while the exclusive holder times
        self.preempt = hasattr(signal, "SIGSTOP") if preempt is None else preempt
        self.changed = None  # an asyncio.Event of the actor's loop: set whenever a hold ends
        self.watchdog = None

    def _alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _purge(self) -> None:
        self.shared = {p: n for p, n in self.shared.items() if self._alive(p)}
        # a stopped process stays in `paused` even if it let go of its hold just before it stopped
        # (the message arrived after): it is let go on with the others when the timer is done
        self.paused = {p for p in self.paused if self._alive(p)}
        if self.exclusive is not None and not self._alive(self.exclusive):
            self.exclusive = None
            self._resume()
        self.waiting_exclusive = {p for p in self.waiting_exclusive if self._alive(p)}

    def _pause(self, pid: int) -> bool:
        if pid in self.paused:
            return True
        if not self.preempt:
            return False
        try:
            os.kill(pid, signal.SIGSTOP)
        except OSError:  # another user's process, or gone: wait for it to let go instead
            return False
        self.paused.add(pid)
        return True

    def _resume(self) -> None:
        for pid in self.paused:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self.paused.clear()

    async def acquire(self, kind: str, pid: int) -> bool:
        # waiters sleep until a hold ends (no polling while someone times: that would be the noise
        # the gate is there to keep out), and look for dead holders once a second
        import asyncio
        if self.changed is None:
            self.changed = asyncio.Event()
        if kind == "exclusive":
            self.waiting_exclusive.add(pid)
        try:
            while True:
                self.changed.clear()
                self._purge()
                if kind == "exclusive" and self.exclusive is None:
                    builds = [p for p in self.shared if p != pid]
                    stopped = [self._pause(p) for p in builds]  # every one tried: stop all or wait
                    if all(stopped):
                        self.exclusive = pid
                        if self.paused and self.watchdog is None:
                            self.watchdog = asyncio.ensure_future(self._watch())
                        return True
                    self._resume()
                if kind == "shared" and self.exclusive is None and not self.waiting_exclusive:
                    self.shared[pid] = self.shared.get(pid, 0) + 1
                    return True
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.waiting_exclusive.discard(pid)
            self._notify()

    async def _watch(self) -> None:
        """While builds are stopped: a timer that died must not leave them stopped for good."""
        import asyncio
        try:
            while self.paused:
                await asyncio.sleep(1.0)
                self._purge()
        finally:
            self.watchdog = None

    def _notify(self) -> None:
        if self.changed is not None:
            self.changed.set()

    def release(self, kind: str, pid: int) -> None:
        if kind == "exclusive" and self.exclusive == pid:
            self.exclusive = None
            self._resume()
        elif kind == "shared" and pid in self.shared:
            self.shared[pid] -= 1
            if not self.shared[pid]:
                del self.shared[pid]
        self._notify()


class GateHandle:
    """The gate of the node this process runs on, as context managers: `shared()` around a trial's
    work, `quiet()` around each timing in it (it lets go of the shared hold first: a trial about to
    time must not be stopped by another's timing, nor two timers wait for each other)."""

    def __init__(self, actor: Any) -> None:
        self.actor, self.pid, self.held = actor, os.getpid(), 0

    def _call(self, method: str, kind: str) -> None:
        import ray
        ray.get(getattr(self.actor, method).remote(kind, self.pid))

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self._call("acquire", "shared")
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            self._call("release", "shared")

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        held = self.held
        for _ in range(held):
            self._call("release", "shared")
        self._call("acquire", "exclusive")
        try:
            yield
        finally:
            self._call("release", "exclusive")
            for _ in range(held):
                self._call("acquire", "shared")


def node_gate() -> GateHandle:
    """This node's gate, created on first use, pinned to this node (it checks pids here)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = ray.get_runtime_context().get_node_id()
    actor_class = ray.remote(num_cpus=0, max_concurrency=64)(_Gate)
    actor = actor_class.options(name=GATE_PREFIX + node, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    return GateHandle(actor)


def _trial_on_node(payload: Any, spec: str, number: int) -> dict:
    import ray

    from .trial import run_trial
    result = run_trial(payload, spec, node_gate())
    result["node"] = ray.get_runtime_context().get_node_id()[:12]
    result["number"] = number
    return result


def _control_on_node(payload: Any) -> dict:
    """The original timed against itself under this node's gate: the A/A noise of a trial ratio."""
    import onnx

    from ..measure.timing import quiet_machine
    from .trial import latency_ratio
    with quiet_machine(node_gate().quiet):
        return latency_ratio(payload, onnx.load_from_string(payload.model), with_control=True)


class Runner:
    """Submits trials as Ray tasks and hands back finished ones."""

    def __init__(self, payload: Any) -> None:
        import ray
        self.ray = ray
        self.payload = ray.put(payload)
        self.task = ray.remote(num_cpus=1, max_retries=2)(_trial_on_node)
        self.pending: dict[Any, int] = {}
        self.placed: dict[Any, str] = {}  # pending task -> the node it was sent to

    def _least_loaded_node(self) -> str | None:
        """The alive node with the fewest of our pending trials per CPU. Ray alone would not spread
        them: a trial waiting on its gate (in ray.get) gives its CPU back, so a second trial fits
        on the same node while another node idles."""
        load: dict[str, float] = {}
        for node in self.ray.nodes():
            cpus = node.get("Resources", {}).get("CPU", 0)
            if node.get("Alive") and cpus >= 1:
                load[node["NodeID"]] = sum(1 for n in self.placed.values() if n == node["NodeID"]) / cpus
        return min(load, key=load.get) if load else None

    def submit(self, number: int, spec: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        node = self._least_loaded_node()
        task = self.task
        if node is not None:  # soft: if that node is lost, Ray's retry runs the trial elsewhere
            task = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True))
        ref = task.remote(self.payload, spec, number)
        self.pending[ref] = number
        if node is not None:
            self.placed[ref] = node

    def control(self) -> dict:
        return self.ray.get(self.ray.remote(num_cpus=1)(_control_on_node).remote(self.payload))

    def next(self, timeout: float | None = None) -> tuple[int, dict] | None:
        """The next finished trial (number, result); a task Ray gave up on is a failed result."""
        if not self.pending:
            return None
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        number = self.pending.pop(ref)
        self.placed.pop(ref, None)
        try:
            return number, self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a worker lost for good: the trial failed
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return number, {"error": f"{type(exc).__name__}: {text[:300]}", "seconds": 0.0}

    def cancel(self) -> list[int]:
        numbers = list(self.pending.values())
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        self.placed.clear()
        return numbers
