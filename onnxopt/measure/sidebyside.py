"""`onnxopt bench`: several models measured side by side in one process.

The first model is the reference. Every model runs in onnxruntime sessions built with the same
options; all are timed in interleaved rounds (bench.interleave) at each batch size, over several
sets of sessions (time_side_by_side), and compared with the reference on the same feeds: fidelity per
output, top-1 accuracy when the data carries labels. Size
on disk, parameters, MACs and peak session memory (memory.py) complete the picture, because a
faster model that changed its answers, or a smaller one that is slower, is not a result.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from ..analysis.cost import model_stats
from ..data.feeds import FeedSet
from ..data.files import load_feeds
from ..errors import BadData, BadModel, UsageError, first_line
from ..graph import io as model_io
from ..runtime.fidelity import Fidelity, compare, per_sample, top1_accuracy
from ..runtime.sessions import (
    Feed,
    InputSpec,
    OptLevel,
    input_specs,
    make_session,
    random_feeds,
    resolve_input_shapes,
    run_feeds,
    shape_text,
)
from .memory import peak_session_bytes
from .timing import Timing, interleave, machine, runner

SCHEMA = "onnxopt.bench/1"


@dataclasses.dataclass
class Subject:
    """A model to measure: its label in the tables, the proto and its serialized bytes."""

    name: str
    model: onnx.ModelProto
    data: bytes
    path: Path | None = None

    @classmethod
    def from_path(cls, path: str | Path, name: str | None = None) -> "Subject":
        model, data = model_io.load_model_and_bytes(path)
        return cls(name or Path(path).name, model, data if data is not None else model.SerializeToString(), Path(path))


@dataclasses.dataclass
class Settings:
    threads: int = 1
    optimization: OptLevel = "all"
    warmup: int = 5
    rounds: int = 200                    # at most this many timed rounds per batch size ...
    budget_seconds: float | None = 10.0  # ... or until this much time has passed (at least 5 rounds)
    session_sets: int = 3                # sets of sessions, built in shuffled orders, sharing the rounds
    settle: float | None = None          # a set stops once every ratio is known to within ±settle (interleave)
    batches: tuple[int, ...] = ()        # () = the model's own batch size
    samples: int = 8                     # random samples for fidelity when no data is given
    seed: int = 0
    memory: bool = True


@dataclasses.dataclass
class Entry:
    """One model's measurements."""

    name: str
    path: str | None
    file_bytes: int
    params: int
    macs: int | None            # per inference at the first batch size
    nodes: int
    memory_bytes: int | None    # peak resident bytes of building the session and one run
    timings: dict[int, Timing]  # batch size -> timing
    fidelity: Fidelity | None   # vs the reference; None for the reference itself
    accuracy: float | None      # top-1 on labelled data

    def as_dict(self, reference: "Entry") -> dict:
        latency = {}
        for batch, t in self.timings.items():
            row = t.as_dict(reference.timings[batch])
            row["throughput_per_s"] = batch / t.median
            latency[str(batch)] = row
        fid = self.fidelity.as_dict() if self.fidelity is not None else None
        return {"name": self.name, "path": self.path, "file_bytes": self.file_bytes, "params": self.params,
                "macs": self.macs, "nodes": self.nodes, "peak_session_memory_bytes": self.memory_bytes,
                "latency": latency, "fidelity_vs_reference": fid, "accuracy": self.accuracy}


@dataclasses.dataclass
class BenchReport:
    settings: Settings
    machine: dict
    inputs: dict[str, list[int]]  # at the first batch size
    data: str                     # where the feeds came from
    fidelity_samples: int
    labelled_samples: int
    entries: list[Entry]

    @property
    def reference(self) -> Entry:
        return self.entries[0]

    @property
    def batches(self) -> list[int]:
        return list(self.reference.timings)

    def as_dict(self) -> dict:
        s = self.settings
        return {"schema": SCHEMA, "machine": self.machine,
                "settings": {"threads": s.threads, "optimization": s.optimization, "warmup": s.warmup,
                             "max_rounds": s.rounds, "budget_seconds_per_batch": s.budget_seconds,
                             "session_sets": s.session_sets,
                             "batches": self.batches},
                "inputs": self.inputs, "data": self.data, "fidelity_samples": self.fidelity_samples,
                "labelled_samples": self.labelled_samples, "reference": self.reference.name,
                "models": [e.as_dict(self.reference) for e in self.entries]}


def unique_names(paths: Sequence[Path]) -> list[str]:
    """File names, or paths where two files share a name (a/model.onnx vs b/model.onnx), numbered
    where the same path comes twice."""
    names = [p.name for p in paths]
    names = [str(p) if names.count(p.name) > 1 else p.name for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # the same file twice (an A/A run by hand)
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


def _describe(specs: Sequence[InputSpec]) -> str:
    return ", ".join(f"{s.name}: {s.dtype}{shape_text(s.shape).replace(' ', '')}" for s in specs)


def check_same_interface(subjects: Sequence[Subject]) -> None:
    """Every model must take a subset of the reference's inputs (cleanup may have removed an unused
    one), each with the reference's dtype, rank and fixed dims, and give as many outputs: otherwise
    the same feeds cannot drive them and fidelity means nothing."""
    first = subjects[0]
    ref = {s.name: s for s in input_specs(first.model)}
    for other in subjects[1:]:
        specs = {s.name: s for s in input_specs(other.model)}
        mismatch = not set(specs) <= set(ref) or any(
            spec.dtype != ref[n].dtype or (spec.shape is not None and ref[n].shape is not None and (
                len(spec.shape) != len(ref[n].shape)
                or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(spec.shape, ref[n].shape))))
            for n, spec in specs.items() if n in ref)
        if mismatch:
            raise BadData(f"{other.name}: inputs ({_describe(list(specs.values()))}) do not match "
                          f"{first.name}'s ({_describe(list(ref.values()))})")
        n_ref, n_other = len(first.model.graph.output), len(other.model.graph.output)
        if n_ref != n_other:
            raise BadData(f"{other.name}: {n_other} output(s), {first.name} has {n_ref}: cannot compare them")


def batch_inputs(model: onnx.ModelProto) -> tuple[set[str], int | None]:
    """The inputs whose axis 0 is the batch, and the batch size the model fixes (None if dynamic).

    Inputs with a dynamic first dim are the batched ones where there are any. In a model with
    only static shapes, the first input's first dim is the batch, shared by every input that
    starts with the same dim; a mask [3, 3] or a vector of scales beside an image [1, 3, H, W]
    has no batch axis."""
    specs = [s for s in input_specs(model) if s.shape]
    dynamic = {s.name for s in specs if not (isinstance(s.shape[0], int) and s.shape[0] > 0)}
    if dynamic or not specs:
        return dynamic, None
    first = specs[0].shape[0]
    return {s.name for s in specs if s.shape[0] == first}, first


def _batches(subjects: Sequence[Subject], asked: Sequence[int]) -> list[int]:
    """The batch sizes to time: those asked for, or the one a model fixes (else 1)."""
    fixed = {sub.name: batch_inputs(sub.model)[1] for sub in subjects}
    fixed = {name: b for name, b in fixed.items() if b is not None}
    for b in asked:
        for name, size in fixed.items():
            if b != size:
                raise UsageError(f"--batch {b}: {name} has a fixed batch size of {size}")
    return list(dict.fromkeys(asked)) or [next(iter(fixed.values()), 1)]


def _batch_shapes(reference: onnx.ModelProto, base: dict[str, tuple[int, ...]], batch: int) -> dict[str, tuple[int, ...]]:
    batched = batch_inputs(reference)[0]
    return {k: (batch, *v[1:]) if k in batched else v for k, v in base.items()}


def _slice_feed(feeds: FeedSet, batch: int) -> Feed:
    if feeds.samples < batch:
        raise BadData(f"{feeds.source}: {feeds.samples} samples, fewer than one batch of {batch}")
    return {k: a[:batch] for k, a in feeds.arrays.items()}


def _chunks(feeds: FeedSet, fixed: int | None, chunk: int = 64) -> list[Feed]:
    """All samples, in batches of the size a model fixes, else in batches of `chunk`."""
    size = fixed or chunk
    whole = feeds.samples // size * size if fixed else feeds.samples
    return [{k: a[i:i + size] for k, a in feeds.arrays.items()} for i in range(0, whole, size)]


def _labelled_chunks(feeds: FeedSet, fixed: int | None) -> tuple[list[Feed], str, np.ndarray | None]:
    """The data in batches (see _chunks), a line saying what of it is used, and the labels of the
    samples that run: those after the last whole batch of a fixed batch size do not."""
    chunks = _chunks(feeds, fixed)
    if not chunks:
        raise BadData(f"{feeds.source}: {feeds.samples} samples, fewer than the fixed batch size {fixed}")
    used = sum(len(next(iter(f.values()))) for f in chunks)
    source = f"{feeds.source} ({used} samples)" if used == feeds.samples else \
        f"{feeds.source} ({used} of {feeds.samples} samples: whole batches of {fixed})"
    return chunks, source, feeds.labels[:used] if feeds.labels is not None else None


def _runnable(subject: Subject) -> Subject:
    """A subject whose inputs declare 0 or -1 dims, with them named (onnxruntime reads 0 literally)."""
    from ..graph.dims import named_dynamic_dims

    model = named_dynamic_dims(subject.model)
    return subject if model is subject.model else dataclasses.replace(subject, model=model,
                                                                      data=model.SerializeToString())


def run_bench(subjects: Sequence[Subject], settings: Settings | None = None, *, data: str | Path | None = None,
              input_shapes: dict[str, tuple[int, ...]] | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> BenchReport:
    """Measure `subjects` side by side (the first is the reference); see the module docstring."""
    settings = settings or Settings()
    if not subjects:
        raise UsageError("give at least one model")
    subjects = [_runnable(s) for s in subjects]
    check_same_interface(subjects)
    reference = subjects[0].model
    batches = _batches(subjects, settings.batches)
    fixed = next((b for b in (batch_inputs(s.model)[1] for s in subjects) if b is not None), None)

    feedset = load_feeds(data, reference) if data is not None else None
    if feedset is not None and feedset.whole:
        # inputs given whole per batch (an RNN state, a scalar): the data says what one run is
        if batches != [feedset.batch]:
            raise UsageError(f"--batch: {data} gives {', '.join(sorted(feedset.whole))} whole per run; "
                             f"it runs at batch {feedset.batch} only")
        first = feedset.take(1)[0]
        shapes = {feedset.batch: {k: tuple(v.shape) for k, v in first.items()}}
        fidelity_feeds, source = list(feedset), f"{feedset.source} ({feedset.samples} samples)"
        labels = feedset.labels[:len(fidelity_feeds) * feedset.batch] if feedset.labels is not None else None
        timing_feeds = {feedset.batch: first}
    elif feedset is not None:
        # the data's own sample shape: it may fill dims the model leaves dynamic (H, W)
        base = {k: (1, *a.shape[1:]) for k, a in feedset.arrays.items()}
        shapes = {b: _batch_shapes(reference, base, b) for b in batches}
        fidelity_feeds, source, labels = _labelled_chunks(feedset, fixed)
        timing_feeds = {b: _slice_feed(feedset, b) for b in batches}
    else:
        base = resolve_input_shapes(reference, input_shapes)
        shapes = {b: _batch_shapes(reference, base, b) for b in batches}
        timing_feeds = {b: random_feeds(reference, shapes[b], seed=settings.seed)[0] for b in batches}
        fidelity_feeds = random_feeds(reference, shapes[batches[0]], seed=settings.seed + 1, count=settings.samples)
        source, labels = f"random normal inputs, seed {settings.seed}", None

    report = lambda what, done, total: progress(what, done, total) if progress else None  # noqa: E731
    memory: list[int | None] = []
    for i, sub in enumerate(subjects):
        takes = {s.name for s in input_specs(sub.model)}
        spec = {k: (v.shape, str(v.dtype)) for k, v in timing_feeds[batches[0]].items() if k in takes}
        memory.append(peak_session_bytes(sub.data, spec, threads=settings.threads, optimization=settings.optimization)
                      if settings.memory else None)
        report("peak session memory", i + 1, len(subjects))
    try:
        outputs = _outputs(subjects, settings, list(timing_feeds.values()), fidelity_feeds)
    except BadModel:
        if feedset is None or fixed is not None:
            raise
        # A model that declares a dynamic batch but hard-codes one inside (a Reshape to [1, ...],
        # common in exports) runs at the timed batch size only: compare in batches of that size.
        fidelity_feeds, source, labels = _labelled_chunks(feedset, batches[0])
        outputs = _outputs(subjects, settings, list(timing_feeds.values()), fidelity_feeds)
    timings = {b: time_side_by_side([(sub.name, sub.data) for sub in subjects], timing_feeds[b], settings,
                              lambda done, total, label=f"timing batch {b}": report(label, done, total))
               for b in batches}

    # samples, not batches, are the runs a centred cosine takes its mean over (runtime.fidelity.per_sample)
    if feedset is not None and feedset.whole:
        sizes = [feedset.batch] * len(fidelity_feeds)  # an input given whole (a state) says nothing of the batch
    elif feedset is not None:
        sizes = [len(next(iter(f.values()))) for f in fidelity_feeds]  # chunks of the data: every input batched
    else:
        sizes = [batches[0]] * len(fidelity_feeds)
    entries = []
    for i, sub in enumerate(subjects):
        stats = model_stats(sub.model, shapes[batches[0]])
        entries.append(Entry(
            name=sub.name, path=str(sub.path) if sub.path else None, file_bytes=len(sub.data), params=stats.params,
            macs=stats.macs, nodes=stats.nodes, memory_bytes=memory[i],
            timings={b: timings[b][i] for b in batches},
            fidelity=compare(*per_sample(outputs[0], outputs[i], sizes)) if i else None,
            accuracy=top1_accuracy(outputs[i], labels) if labels is not None else None))
    fidelity_samples = sum(sizes)
    return BenchReport(settings=settings, machine=machine(), inputs={k: list(v) for k, v in shapes[batches[0]].items()},
                       data=source, fidelity_samples=fidelity_samples,
                       labelled_samples=len(labels) if labels is not None else 0, entries=entries)


def _build_sessions(models: Sequence[tuple[str, bytes]], settings: Settings, order: Sequence[int]) -> list:
    """A session per (name, serialized model), built in `order`, returned in the models' order."""
    made = {}
    for i in order:
        name, data = models[i]
        try:
            made[i] = make_session(data, optimization=settings.optimization, threads=settings.threads, spinning=False)
        except BadModel as exc:
            raise BadModel(f"{name}: {exc}") from None
    return [made[i] for i in range(len(models))]


def _outputs(subjects: Sequence[Subject], settings: Settings, check_feeds: Sequence[Feed],
             fidelity_feeds: Sequence[Feed]) -> list[list[Feed]]:
    """Each model's outputs on the fidelity feeds, from one set of sessions that first runs every
    timing feed once: a model onnxruntime loads but cannot run on these inputs is refused in one
    line before anything is timed, not in a traceback from the middle of the timing."""
    outputs = []
    sessions = _build_sessions([(sub.name, sub.data) for sub in subjects], settings, range(len(subjects)))
    for sub, session in zip(subjects, sessions):
        for feed in check_feeds:
            _run_or_refuse(sub, session, feed)
        outputs.append([_run_or_refuse(sub, session, feed) for feed in fidelity_feeds])
    return outputs


def _run_or_refuse(sub: Subject, session, feed: Feed) -> Feed:
    try:
        return run_feeds(session, [feed])[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        first = first_line(exc, 200)
        raise BadModel(f"{sub.name}: onnxruntime cannot run it on inputs "
                       f"{', '.join(f'{k} {list(v.shape)}' for k, v in feed.items())}: {first}") from None


def time_side_by_side(models: Sequence[tuple[str, bytes]], feed: Feed, settings: Settings,
                      progress: Callable[[int, int], None] | None = None) -> list[Timing]:
    """Interleaved timing of every (name, serialized model) on one feed, the first the reference,
    pooled over `settings.session_sets` sets of sessions, each built in a new shuffled order; the
    rounds and the budget are shared out (only the bytes are needed: nothing is parsed).

    Where a session's buffers land in memory moves its speed by a few percent, and that placement
    follows the order sessions were built in: in one 14-model run, copies of one model built 1st,
    6th and 14th timed 1.000, 0.96 and 0.95. Pooling rounds over several building orders turns
    that bias into noise the statistics see (and Timing.round_ratio_interval widens to it)."""
    sets = max(1, min(settings.session_sets, settings.rounds))
    share = [settings.rounds // sets + (k < settings.rounds % sets) for k in range(sets)]
    budget = settings.budget_seconds / sets if settings.budget_seconds is not None else None
    rng = np.random.default_rng(settings.seed)
    seconds: list[list[float]] = [[] for _ in models]
    ratios: list[list[float]] = [[] for _ in models]
    set_medians: list[list[float]] = [[] for _ in models]
    done_before = 0
    for k in range(sets):
        sessions = _build_sessions(models, settings, [int(i) for i in rng.permutation(len(models))])
        part = interleave([(name, runner(sess, feed)) for (name, _), sess in zip(models, sessions)],
                          warmup=settings.warmup, rounds=share[k], budget_seconds=budget, seed=settings.seed + k,
                          settle=settings.settle,
                          progress=None if progress is None else
                          lambda done, total: progress(done_before + done, settings.rounds))
        del sessions  # freed before the next set is built
        for i, t in enumerate(part):
            seconds[i] += t.seconds
            ratios[i] += t.round_ratios
            if sets > 1:
                set_medians[i].append(t.median_round_ratio)
        done_before += len(part[0].seconds)
    return [Timing(name, seconds[i], ratios[i], set_medians[i]) for i, (name, _) in enumerate(models)]
