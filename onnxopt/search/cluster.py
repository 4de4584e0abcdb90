"""Trials on Ray: a local Ray instance by default, an existing cluster with --ray ADDRESS.

Each trial is a Ray task (one CPU; Ray retries it elsewhere when its worker dies). Timing must not
share a machine with other work: a ratio measured beside a neighbour's build lies. So every node
has a gate, a small actor living on that node: a trial holds it shared while it works and alone
while it times (every interleave() of the trial, its passes' included), and a waiting timer keeps
new trials out (writer preference). A holder whose process died releases
nothing, so the gate drops holders whose pid is gone before it decides."""
from __future__ import annotations

import contextlib
import os
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
    """Readers-writer lock of one node (see the module docstring)."""

    def __init__(self) -> None:
        self.shared: dict[int, int] = {}   # pid -> holds
        self.exclusive: int | None = None
        self.waiting_exclusive: set[int] = set()
        self.changed = None  # an asyncio.Event of the actor's loop: set whenever a hold ends

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
        if self.exclusive is not None and not self._alive(self.exclusive):
            self.exclusive = None
        self.waiting_exclusive = {p for p in self.waiting_exclusive if self._alive(p)}

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
                if kind == "exclusive" and self.exclusive is None and not self.shared:
                    self.exclusive = pid
                    return True
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

    def _notify(self) -> None:
        if self.changed is not None:
            self.changed.set()

    def release(self, kind: str, pid: int) -> None:
        if kind == "exclusive" and self.exclusive == pid:
            self.exclusive = None
        elif kind == "shared" and pid in self.shared:
            self.shared[pid] -= 1
            if not self.shared[pid]:
                del self.shared[pid]
        self._notify()


class GateHandle:
    """The gate of the node this process runs on, as context managers: `shared()` around a trial's
    work, `quiet()` around each timing in it (it lets go of the shared hold while it waits, so two
    trials that both want to time cannot wait for each other)."""

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

    def control(self) -> dict:
        return self.ray.get(self.ray.remote(num_cpus=1)(_control_on_node).remote(self.payload))

    def submit(self, number: int, spec: str) -> None:
        self.pending[self.task.remote(self.payload, spec, number)] = number

    def next(self, timeout: float | None = None) -> tuple[int, dict] | None:
        """The next finished trial (number, result); a task Ray gave up on is a failed result."""
        if not self.pending:
            return None
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        number = self.pending.pop(ref)
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
        return numbers
