"""Trials on Ray: a local Ray instance by default, an existing cluster with --ray ADDRESS.

Each trial is a Ray task (one CPU; Ray retries it elsewhere when its worker dies). Timing must not
share a machine with other work: a ratio measured beside a neighbour's build lies. So every node
has a gate, a small actor living on that node: a trial holds it shared while it works and alone
while it times (every interleave() of the trial, its passes' included). A timer does not wait for
the other trials' builds to end: the gate stops their processes (SIGSTOP) for the seconds it times
and lets them go on after (SIGCONT), so builds overlap on all cores and every timing has the node
to itself. Where processes cannot be stopped (no SIGSTOP, another user's process) the timer waits
for those builds instead, and a waiting timer keeps new builds out (writer preference). A holder
whose process died holds nothing: the gate drops it before it decides, and no way a timer ends
leaves builds stopped: a watchdog lets them go on if it dies or holds longer than MAX_HOLD, a timer
interrupted while it waits is never granted (nor one interrupted before its request even reached the
gate: Ray keeps no order between calls to an async actor, so each request carries a token its
withdrawal names), and one whose gate is gone continues them itself."""
from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import UsageError, first_line, one_line

GATE_PREFIX = "onnxopt-timing-gate-v3-"  # v3: requests carry tokens, withdraw(); v2: acquire() answers with the stopped pids
NAMESPACE = "onnxopt"


def connect(address: str | None, workers: int) -> dict:
    """Join the cluster at `address`, or start a local instance with `workers` CPUs. Returns a
    summary (nodes, CPUs) for the report."""
    import ray
    if address:
        _reachable(address)
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"--ray {address}: cannot join the cluster: {first_line(exc, 200)}") from None
    else:
        # "local": a new instance even where `ray start` left one on this machine (or RAY_ADDRESS names
        # one), which a plain init would join, without the CPUs asked for; --ray is for joining
        ray.init(address="local", num_cpus=workers, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"address": address or "local", "nodes": len(nodes),
            "cpus": int(sum(n.get("Resources", {}).get("CPU", 0) for n in nodes))}


ASK_NODE_SECONDS = 120.0  # how long a joined cluster's node may take to say what it times on


def timed_on(joined: bool) -> str:
    """The machine every trial's latency ratio will be timed on (measure.timing.timed_on). A local
    instance is this machine; each node of a joined cluster is asked (a zero-CPU task pinned to it),
    and nodes that differ are a one-line error: a front of ratios from two CPUs would rank a model
    faster for where it happened to be timed."""
    from ..measure.timing import timed_on as here
    if not joined:
        return here()
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    ask = ray.remote(num_cpus=0, max_retries=1)(_node_timed_on)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
    if not nodes:
        raise UsageError("the cluster has no node with a CPU to run trials on")
    asked = [ask.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
    try:
        answers = ray.get(asked, timeout=ASK_NODE_SECONDS)
    except Exception as exc:  # noqa: BLE001 - a node lost or stuck: no search can trust it
        raise UsageError(f"cannot ask the cluster's nodes what CPU they time on: {first_line(exc, 200)}") from None
    return one_machine(answers)


def _node_timed_on() -> str:
    """measure.timing.timed_on() on the node that runs this (Ray takes functions, not its cached one)."""
    from ..measure.timing import timed_on
    return timed_on()


def one_machine(answers: list[str]) -> str:
    """The one machine all nodes time on, or a one-line error naming how many nodes have which."""
    kinds = sorted(set(answers), key=answers.index)
    if len(kinds) > 1:
        counts = "; ".join(f"{answers.count(k)} node(s) {k}" for k in kinds)
        raise UsageError(f"the cluster's nodes time on different machines ({counts}): a search compares latency "
                         "ratios of one machine; join nodes of one kind, the one the model will run on")
    return kinds[0]


PROBE_SECONDS = 5.0  # how long a cluster's address may take to answer a TCP connect


# HTTP/2's client preface and an empty SETTINGS frame (length 0, type 4, no flags, stream 0)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _reachable(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) where nothing answers, or something that does not speak
    gRPC as a Ray head does (a web server, the dashboard's port), is a one-line error in seconds:
    Ray itself retries for minutes, logging as it goes. A gRPC server answers HTTP/2's client
    preface with a SETTINGS frame (RFC 9113, 3.4). Other forms (`auto`) are left to Ray, and so is
    the protocol under TLS (RAY_USE_TLS)."""
    where = address.split("://", 1)[-1].rstrip("/")
    host, _, port = where.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        return
    if not 0 < int(port) < 65536:
        raise UsageError(f"--ray {address}: port {port} is out of range")
    host = host.strip("[]")
    hosts = [host]
    if not address.startswith("ray://"):
        # Ray dials this node's own address for a loopback one: either answering will do
        with contextlib.suppress(Exception):
            from ray._private.services import resolve_ip_for_localhost
            hosts.append(resolve_ip_for_localhost(host))
    failures = []
    for candidate in dict.fromkeys(hosts):
        answer = _first_frame(candidate, int(port))
        if isinstance(answer, bytes):
            if len(answer) == 9 and answer[3] == 0x04:
                return
            raise UsageError(f"--ray {address}: something answers there, but not as a Ray head does (no gRPC); "
                             "give the head's GCS port (6379 by default, not the dashboard's 8265)")
        if answer is None:  # TLS: the connection is all that can be checked
            return
        failures.append(answer)
    raise UsageError(f"--ray {address}: nothing answers there ({failures[0]}); is a Ray head running "
                     "(`ray start --head`)?")


def _first_frame(host: str, port: int) -> bytes | str | None:
    """The first 9 bytes the server at host:port answers HTTP/2's preface with (fewer if it says
    less); None under TLS once connected; the reason as a string where no connection is made."""
    import socket
    try:
        conn = socket.create_connection((host, port), timeout=PROBE_SECONDS)
    except (OSError, UnicodeError) as exc:
        return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return None
        head = b""
        with contextlib.suppress(OSError):  # a server that resets or never answers: no frame
            conn.sendall(HTTP2_PREFACE)
            while len(head) < 9 and (chunk := conn.recv(9 - len(head))):
                head += chunk
        return head


def shutdown() -> None:
    """Stop the local instance, or leave the cluster (it keeps running for others)."""
    import ray
    if ray.is_initialized():
        _stop_local_monitor()
        ray.shutdown()


def _stop_local_monitor() -> None:
    """A local instance has an autoscaler monitor that has nothing to do: its CPUs are fixed. Ray
    stops the GCS first and the monitor after it. The monitor's SIGTERM handler then tries to
    report to the GCS, which is gone, until Ray kills it a second later. That second was 1.0 of
    ray.shutdown()'s 1.3 s (Ray 2.60, x86-vnni): 3% of a digits search's wall time, on 1 worker and
    on 2 alike. Killed first (SIGKILL, by Ray's own Node.kill_monitor), the monitor ends at once.
    Best effort, as Node is Ray's internal: a cluster joined with --ray ADDRESS is not this
    process's to stop (its node is not a head started here), and nothing is killed there."""
    with contextlib.suppress(Exception):
        from ray._private import worker as ray_worker
        node = ray_worker._global_node
        if node is not None and node.head:
            node.kill_monitor(check_alive=False)


MAX_HOLD = 300.0  # seconds: a timer holding the gate longer is let go (its builds go on) whatever it does


def _started(pid: int) -> str | None:
    """When the process `pid` started (clock ticks since boot; None where /proc is absent): a pid
    the kernel reused for another process is not the holder it was."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class _Gate:
    """Readers-writer lock of one node that stops its readers while the writer holds it (see the
    module docstring)."""

    def __init__(self, preempt: bool | None = None, max_hold: float = MAX_HOLD) -> None:
        self.shared: dict[int, int] = {}   # pid -> holds
        self.exclusive: int | None = None
        self.exclusive_since = 0.0
        self.waiting_exclusive: set[int] = set()
        self.waiting_shared: set[int] = set()
        self.withdrawn: set[int] = set()   # waiters whose caller gave up (its release came first)
        self.paused: set[int] = set()      # shared holders stopped while the exclusive holder times
        self.born: dict[int, str | None] = {}
        self.job_of: dict[int, str | None] = {}  # pid -> the Ray job (search) it works for
        # requests by token (see withdraw): acquire running, hold granted and not let go, withdrawn
        # before their acquire arrived
        self.arrived: dict[str, int] = {}
        self.granted: dict[str, tuple[str, int]] = {}
        self.early: dict[str, int] = {}
        self.unstoppable: set[int] = set()  # holders that asked not to be stopped (the search's driver)
        self.preempt = hasattr(signal, "SIGSTOP") if preempt is None else preempt
        self.max_hold = max_hold
        self.changed = None  # an asyncio.Event of the actor's loop: set whenever a hold ends
        self.watchdog = None

    def _alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return pid not in self.born or self.born[pid] == _started(pid)

    def _know(self, pid: int) -> None:
        if pid not in self.born:
            self.born[pid] = _started(pid)

    def _purge(self) -> None:
        self.shared = {p: n for p, n in self.shared.items() if self._alive(p)}
        # a stopped process stays in `paused` even if it let go of its hold just before it stopped
        # (the message arrived after): it is let go on with the others when the timer is done
        self.paused = {p for p in self.paused if self._alive(p)}
        if self.exclusive is not None and (not self._alive(self.exclusive)
                                           or time.monotonic() - self.exclusive_since > self.max_hold):
            self.exclusive = None
            self._resume()
            self._notify()
        self.waiting_exclusive = {p for p in self.waiting_exclusive if self._alive(p)}
        self.waiting_shared = {p for p in self.waiting_shared if self._alive(p)}
        self.withdrawn &= self.waiting_exclusive | self.waiting_shared
        self.early = {t: p for t, p in self.early.items() if self._alive(p)}
        self.granted = {t: h for t, h in self.granted.items() if self._alive(h[1])}
        self.unstoppable = {p for p in self.unstoppable if self._alive(p)}
        holders = (set(self.shared) | self.paused | self.waiting_exclusive | self.waiting_shared | {self.exclusive}
                   | self.unstoppable)
        self.born = {p: b for p, b in self.born.items() if p in holders}
        self.job_of = {p: j for p, j in self.job_of.items() if p in holders}

    def _stoppable(self, pid: int) -> bool:
        if not self.preempt or pid == os.getpid() or pid in self.unstoppable:
            return False
        try:
            os.kill(pid, 0)
        except OSError:  # another user's process, or gone: wait for it to let go instead
            return False
        return True

    def _pause(self, pids: list[int]) -> bool:
        """Stop every one of `pids`, or none of them when one cannot be stopped (the timer waits
        for that one then: stopping the others meanwhile would only churn)."""
        todo = [p for p in pids if p not in self.paused]
        if not all(self._stoppable(p) for p in todo):
            return False
        for pid in todo:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                self._resume()
                return False
            self.paused.add(pid)
        return True

    def _resume(self) -> list[int]:
        resumed = sorted(self.paused)
        for pid in resumed:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self.paused.clear()
        return resumed

    async def acquire(self, kind: str, pid: int, job: str | None = None, token: str | None = None,
                      stoppable: bool = True) -> list[int] | None:
        """Hold the gate: the processes it stopped for this hold (the holder lets them go on itself
        if this actor is gone by then), or None when the caller gave up or died waiting. A holder
        that is not `stoppable` is waited for by a timer, as one that cannot be stopped."""
        # waiters sleep until a hold ends (no polling while someone times: that would be the noise
        # the gate is there to keep out), and look for dead holders once a second
        import asyncio
        if self.changed is None:
            self.changed = asyncio.Event()
        if token is not None:
            if self.early.pop(token, None) is not None:  # withdrawn before it arrived
                return None
            self.arrived[token] = pid
        self._know(pid)
        self.job_of[pid] = job
        if not stoppable:
            self.unstoppable.add(pid)
        (self.waiting_exclusive if kind == "exclusive" else self.waiting_shared).add(pid)
        try:
            while True:
                self.changed.clear()
                self._purge()
                if pid in self.withdrawn or not self._alive(pid):
                    self.withdrawn.discard(pid)
                    return None
                if kind == "exclusive" and self.exclusive is None:
                    if self._pause([p for p in self.shared if p != pid]):
                        self.exclusive, self.exclusive_since = pid, time.monotonic()
                        if self.paused and self.watchdog is None:
                            self.watchdog = asyncio.ensure_future(self._watch())
                        self._granted(token, kind, pid)
                        return sorted(self.paused)
                if kind == "shared" and self.exclusive is None and not self.waiting_exclusive:
                    self.shared[pid] = self.shared.get(pid, 0) + 1
                    self._granted(token, kind, pid)
                    return []
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            (self.waiting_exclusive if kind == "exclusive" else self.waiting_shared).discard(pid)
            if token is not None:
                self.arrived.pop(token, None)
            self._notify()

    def _granted(self, token: str | None, kind: str, pid: int) -> None:
        if token is not None:
            self.granted[token] = (kind, pid)

    async def _watch(self) -> None:
        """While builds are stopped: a timer that died (or holds too long) must not leave them
        stopped for good."""
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
        for token, hold in self.granted.items():  # one hold of this kind ends: its token is spent
            if hold == (kind, pid):
                del self.granted[token]
                break
        if kind == "exclusive" and self.exclusive == pid:
            self.exclusive = None
            self._resume()
        elif kind == "shared" and pid in self.shared:
            self.shared[pid] -= 1
            if not self.shared[pid]:
                del self.shared[pid]
        elif pid in (self.waiting_exclusive if kind == "exclusive" else self.waiting_shared):
            self.withdrawn.add(pid)  # it gave up waiting (interrupted): it must not be granted later
        self._notify()

    def withdraw(self, kind: str, pid: int, token: str) -> None:
        """The caller gave up on request `token` (interrupted waiting, or before the answer reached
        it): whatever point the request had reached, it ends holding nothing. Ray may run this
        before the acquire it names: that acquire then answers None at once."""
        if token in self.granted:
            self.release(*self.granted[token])
        elif token in self.arrived:
            self.withdrawn.add(pid)
            self._notify()
        else:
            self.early[token] = pid

    def resume_all(self, job: str | None = None) -> list[int]:
        """A search was cancelled: if its timer holds the gate, drop it and let the builds go on
        (another search's timer keeps its hold: searches may share a cluster's gates)."""
        if self.exclusive is None or (job is not None and self.job_of.get(self.exclusive) != job):
            return []
        self.exclusive = None
        resumed = self._resume()
        self._notify()
        return resumed


class GateHandle:
    """The gate of the node this process runs on, as context managers: `shared()` around a trial's
    work, `quiet()` around each timing in it (it lets go of the shared hold first: a trial about to
    time must not be stopped by another's timing, nor two timers wait for each other)."""

    def __init__(self, actor: Any, max_hold: float = MAX_HOLD) -> None:
        self.actor, self.pid, self.held = actor, os.getpid(), 0
        self.timing = 0.0  # seconds this process held the node alone
        self.waited = 0.0  # seconds it waited for the gate
        # timings longer than the gate's MAX_HOLD: its watchdog let the stopped builds go on before
        # they ended, so their ends were measured beside that work
        self.max_hold, self.cut = max_hold, 0

    def _call(self, method: str, kind: str, token: str | None = None, stoppable: bool = True) -> Any:
        import ray
        if method == "acquire":
            return ray.get(self.actor.acquire.remote(kind, self.pid, ray.get_runtime_context().get_job_id(), token,
                                                     stoppable))
        if method == "withdraw":
            return ray.get(self.actor.withdraw.remote(kind, self.pid, token))
        return ray.get(getattr(self.actor, method).remote(kind, self.pid))

    def _hold(self, kind: str, stoppable: bool = True) -> list[int]:
        """Acquire; if this process is interrupted before the answer, the gate is told it gave up
        on that request (a grant arriving after would otherwise hold the node's builds stopped)."""
        asked = time.perf_counter()
        token = uuid.uuid4().hex
        try:
            stopped = self._call("acquire", kind, token, stoppable)
            self.waited += time.perf_counter() - asked
        except BaseException:
            with contextlib.suppress(Exception):
                self._call("withdraw", kind, token)
            raise
        if stopped is None:
            raise RuntimeError("the node's timing gate dropped this trial's request")
        return stopped

    def _let_go(self, kind: str, stopped: list[int]) -> None:
        try:
            self._call("release", kind)
        except Exception:  # noqa: BLE001 - the gate is gone: let the builds it stopped for us go on
            for pid in stopped:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
            raise

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self._hold("shared")
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            self._let_go("shared", [])

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        held = self.held
        for _ in range(held):
            self._call("release", "shared")
        stopped = self._hold("exclusive")
        alone = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - alone
            self.timing += took
            self.cut += took > self.max_hold
            self._let_go("exclusive", stopped)
            for _ in range(held):
                self._hold("shared")


def node_gate() -> GateHandle:
    """This node's gate, created on first use, pinned to this node (it checks pids here)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = ray.get_runtime_context().get_node_id()
    actor_class = ray.remote(num_cpus=0, max_concurrency=1000)(_Gate)
    actor = actor_class.options(name=GATE_PREFIX + node, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    return GateHandle(actor)


@contextlib.contextmanager
def driver_work(gate: GateHandle | None) -> Iterator[None]:
    """The search loop's own work (sampling, the study's database, the progress line) under its
    node's gate like a build, so no trial on that node times beside it; but never stopped (it may
    be a terminal's foreground job, and a stopped one hands the terminal back to the shell): a
    timer waits for it to let go, and it waits for a timer. Best effort: without a gate it works
    unheld."""
    held = False
    if gate is not None:
        try:
            gate._hold("shared", stoppable=False)
            held = True
        except Exception:  # noqa: BLE001 - the gate is gone or dropped the request: work unheld
            pass
    try:
        yield
    finally:
        if held:
            with contextlib.suppress(Exception):  # never hide the loop's own exception
                gate._call("release", "shared")


def driver_gate() -> GateHandle | None:
    """The gate of the node the search's driver runs on (None where it cannot be had)."""
    try:
        return node_gate()
    except Exception:  # noqa: BLE001 - e.g. a Ray client connection: no local node
        return None


def _trial_on_node(payload: Any, spec: str, number: int, control: bool = False) -> dict:
    import ray

    from .trial import run_trial
    gate = node_gate()
    result = run_trial(payload, spec, gate, control)
    result.update(node=ray.get_runtime_context().get_node_id()[:12], number=number, timing_seconds=gate.timing,
                  gate_wait_seconds=gate.waited, timings_cut=gate.cut)
    return result


def _job_on_node(payload: Any, fn: Callable[..., dict], *args: Any) -> dict:
    """Other work of the search (the sensitivity scan; the A/A control where its trial failed; the
    race): under the node's gate like a trial, so a timing never overlaps it. Its result names the
    node, as a trial's does: a job that timed on another machine has its node avoided too."""
    import ray

    from ..measure.timing import quiet_machine
    gate = node_gate()
    with gate.shared(), quiet_machine(gate.quiet):
        result = fn(payload, *args)
    return result | {"node": ray.get_runtime_context().get_node_id()[:12]}


class Runner:
    """Submits trials and the search's other jobs as Ray tasks and hands back finished ones."""

    def __init__(self, payload: Any, timed_on: str | None = None) -> None:
        """`timed_on`: the machine the search times on (timed_on()); a result a timing function
        stamped with another is a failure (see _timed_here). None: no check."""
        import ray
        self.ray = ray
        self.payload = ray.put(payload)
        self.task = ray.remote(num_cpus=1, max_retries=2)(_trial_on_node)
        self.job = ray.remote(num_cpus=1, max_retries=2)(_job_on_node)
        self.pending: dict[Any, int] = {}  # trial task -> trial number
        self.jobs: dict[Any, str] = {}     # job task -> its name
        self.placed: dict[Any, str] = {}   # pending task -> the node it was sent to
        self.avoided: set[str] = set()     # node ids (their first 12 characters, as trials report them)
        self.timed_on = timed_on

    def _least_loaded_node(self) -> str | None:
        """The alive node with the fewest of our pending tasks per CPU. Ray alone would not spread
        them: a trial waiting on its gate (in ray.get) gives its CPU back, so a second trial fits
        on the same node while another node idles. Nodes avoided (avoid()) get none."""
        load: dict[str, float] = {}
        for node in self.ray.nodes():
            cpus = node.get("Resources", {}).get("CPU", 0)
            if node.get("Alive") and cpus >= 1 and node["NodeID"][:12] not in self.avoided:
                load[node["NodeID"]] = sum(1 for n in self.placed.values() if n == node["NodeID"]) / cpus
        return min(load, key=load.get) if load else None

    def _submit(self, task: Any, *args: Any) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        node = self._least_loaded_node()
        if node is not None:  # soft: if that node is lost, Ray's retry runs the task elsewhere,
            # and if it is busy with others' work, one that is free
            task = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True,
                                                                                   _spill_on_unavailable=True))
        ref = task.remote(self.payload, *args)
        if node is not None:
            self.placed[ref] = node
        return ref

    def submit(self, number: int, spec: str, control: bool = False) -> None:
        """Run trial `number`; `control`: it times the original against itself too (see run_trial)."""
        self.pending[self._submit(self.task, spec, number, control)] = number

    def start(self, name: str, fn: Callable[..., dict], *args: Any) -> None:
        """Run `fn(payload, *args)` beside the trials; next() hands back its result as a job's."""
        self.jobs[self._submit(self.job, fn, *args)] = name

    def next(self, timeout: float | None = None) -> tuple[str, int | str, dict] | None:
        """The next finished task: ("trial", number, result) or ("job", name, result); a task Ray
        gave up on is a result with an `error`."""
        if not self.pending and not self.jobs:
            return None
        ready, _ = self.ray.wait([*self.pending, *self.jobs], num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        self.placed.pop(ref, None)
        kind, key = ("trial", self.pending.pop(ref)) if ref in self.pending else ("job", self.jobs.pop(ref))
        try:
            return kind, key, self._timed_here(self.ray.get(ref))
        except Exception as exc:  # noqa: BLE001 - a worker lost for good: the task failed
            cause = getattr(exc, "cause", None) or exc  # a task's own exception, not Ray's wrapper of it
            return kind, key, {"error": one_line(cause), "seconds": 0.0}

    def _timed_here(self, result: dict) -> dict:
        """A task's result as the search takes it: failed, with the reason, where a timing in it was
        stamped with another machine than the search's (a node of another CPU that joined the
        cluster since the search asked its nodes); its A/A control goes with it, and its node, as
        the task reports it, gets no more tasks."""
        there = result.get("timed_on")
        if self.timed_on is None or there in (None, self.timed_on) or "error" in result:
            return result
        if result.get("node"):
            self.avoided.add(result["node"][:12])
        kept = {k: v for k, v in result.items() if k != "control_ratio"}
        return kept | {"error": f"timed on {there}, where the search times on {self.timed_on}: latency ratios of "
                                "two machines do not compare"}

    def cancel(self) -> list[int]:
        """Stop the pending tasks; no build is left stopped by a timer that was cancelled. Returns
        the numbers of the trials cut off."""
        numbers = list(self.pending.values())
        for ref in [*self.pending, *self.jobs]:
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        self.jobs.clear()
        self.placed.clear()
        resume_all_gates()
        return numbers


def resume_all_gates() -> None:
    """Every node's gate drops this search's timer, if it holds the gate, and lets the builds it
    stopped go on (best effort: the watchdog does the same within a second of the timer's death)."""
    import ray
    job = ray.get_runtime_context().get_job_id()
    calls = []
    for node in ray.nodes():
        if node.get("Alive"):
            with contextlib.suppress(Exception):
                gate = ray.get_actor(GATE_PREFIX + node["NodeID"], namespace=NAMESPACE)
                calls.append(gate.resume_all.remote(job))
    with contextlib.suppress(Exception):
        ray.get(calls, timeout=10)
