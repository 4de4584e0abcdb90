"""The pass contract and the pipeline that runs passes with verification.

A pass is `run(graph, ctx) -> PassResult`: it edits the graph through `onnxopt.graph` only and
counts what it did (torch.fx -> onnx-ir lineage, with `stats` and `skipped` added so a user learns
what happened and where the pass declined). Each pass declares whether it is exact and idempotent.

The pipeline never mutates the caller's model. After every pass that changed something it runs
onnx.checker, then compares outputs with the previous model in onnxruntime (optimizations
disabled) on seeded inputs: an exact pass whose outputs moved beyond `rtol` is rolled back and the
report says so; a lossy pass keeps its result and reports how far outputs moved.
"""
from __future__ import annotations

import dataclasses
import math
import time
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx

from ..analysis.cost import ModelStats, model_stats
from ..errors import BadData, BadModel, OnnxoptError, PreconditionError, first_line
from ..graph.core import Graph, skeleton
from ..graph.dims import named_dynamic_dims
from ..runtime.cpu import cpu_summary
from ..runtime.fidelity import Fidelity, compare
from ..runtime.sessions import Feed, random_feeds, resolve_input_shapes, run_model, verification_threads
from .contract import Instrument, Pass, PassContext, PassResult, Progress, Skip, _no_progress
from .tolerance import Tolerance


@dataclasses.dataclass
class PassReport:
    name: str
    spec: str
    status: str          # applied | unchanged | rolled-back | failed
    exact: bool
    seconds: float
    stats: dict[str, float]
    skipped: list[Skip]
    notes: list[str]
    message: str = ""    # why it was rolled back or failed
    fidelity: Fidelity | None = None  # vs the model before this pass (when verified)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    tolerance: float | None = None   # what an exact pass's max rel error was held to (when verified)
    noise_floor: float | None = None  # the floor of the model it started from, when it was needed

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["skipped"] = [s.as_dict() for s in self.skipped]
        return d


@dataclasses.dataclass
class RunReport:
    passes: list[PassReport]
    before: ModelStats
    after: ModelStats
    fidelity: Fidelity | None      # final model vs the original: as deployed when a lossy pass applied
    verified: bool
    input_shapes: dict[str, tuple[int, ...]]
    seconds: float
    verified_on: str | None = None  # "2 seeded random samples" or "2 calibration samples"
    # the final model in onnxruntime's reference kernels (optimizations off), beside a deployed headline:
    # a quantized model's QDQ pairs run in float there, so this shows what rounding alone does
    reference_fidelity: Fidelity | None = None
    cpu: dict = dataclasses.field(default_factory=dict)
    verification: dict = dataclasses.field(default_factory=dict)  # rtol, noise floor, tolerance of exact passes

    @property
    def deployed(self) -> bool:
        """Whether `fidelity` is measured as onnxruntime deploys the model (ORT_ENABLE_ALL, integer
        kernels on this CPU): so after any lossy pass."""
        return self.reference_fidelity is not None

    @property
    def changed(self) -> bool:
        return any(p.status == "applied" for p in self.passes)

    @property
    def problems(self) -> list[PassReport]:
        """Passes rolled back or failed, and passes some of whose rewrites were rolled back alone."""
        return [p for p in self.passes if p.status in ("rolled-back", "failed") or p.details.get("rolled_back_alone")]

    def as_dict(self) -> dict:
        """Strict JSON: non-finite numbers (a pass that produced NaN) become null."""
        return _finite(self._as_dict())

    def _as_dict(self) -> dict:
        return {
            "schema": "onnxopt.run/1",
            "changed": self.changed,
            "verified": self.verified,
            "verified_on": self.verified_on,
            "seconds": round(self.seconds, 4),
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "fidelity": self.fidelity.as_dict() if self.fidelity else None,
            "fidelity_measured": ("as deployed (ORT_ENABLE_ALL)" if self.deployed else "reference kernels (optimizations off)")
            if self.fidelity else None,
            "reference_fidelity": self.reference_fidelity.as_dict() if self.reference_fidelity else None,
            "verification": self.verification,
            "cpu": self.cpu,
            "passes": [p.as_dict() for p in self.passes],
        }


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclasses.dataclass
class RunResult:
    model: onnx.ModelProto
    report: RunReport
    serialized: bytes | None = None  # the model's bytes when verification already made them

    def to_bytes(self) -> bytes:
        return self.serialized if self.serialized is not None else self.model.SerializeToString()


def _check(model: onnx.ModelProto, full: bool) -> str | None:
    """onnx.checker on the model's skeleton: structure, attributes, order and (full) shape
    inference, without serializing every weight (the graph layer writes well-formed tensors)."""
    try:
        onnx.checker.check_model(skeleton(model), full_check=full)
    except Exception as exc:  # noqa: BLE001 - checker raises ValidationError and friends
        return first_line(exc)
    return None


# per-region rollback: how many extra verified runs of a pass may go into finding the rewrites that
# failed, per region it asked for, in log2 terms (each culprit costs about log2(regions) + 1 runs)
TRIALS_PER_CULPRIT_BOUND = 4


class Pipeline:
    """Run passes in order with checking and verification. See the module docstring."""

    def __init__(self, passes: Sequence[Pass], *, verify: bool = True, rtol: float | None = None, samples: int = 2,
                 seed: int = 0, input_shapes: dict[str, Sequence[int]] | None = None,
                 calibration: Iterable[Feed] | None = None, instruments: Sequence[Instrument] = (),
                 progress: Progress = _no_progress, threads: int | None = None, dry_run: bool = False,
                 evaluation: Any = None) -> None:
        self.passes = list(passes)
        self.evaluation = evaluation
        self.dry_run = dry_run
        self.verify = verify
        self.rtol = rtol  # None: DEFAULT_RTOL, or more where the model's own float noise is larger (tolerance.py)
        self.samples = samples
        self.seed = seed
        self.input_shapes = dict(input_shapes or {})
        self.calibration = calibration
        self.instruments = list(instruments)
        self.progress = progress
        # passes that time models (prune's latency table, quantize's speed step) run at the threads
        # asked for, 1 by default as `onnxopt bench` does; verification at every core unless told
        # (runtime.verification_threads)
        self.threads = threads or 1
        self.verify_threads = threads or verification_threads()

    @classmethod
    def parse(cls, spec: str, **kwargs: Any) -> "Pipeline":
        from .spec import parse_spec
        return cls(parse_spec(spec), **kwargs)

    def run(self, model: onnx.ModelProto, *, serialized: bytes | None = None) -> RunResult:
        """Run every pass on a copy of `model`. `serialized` may pass the model's bytes when the
        caller has them (saves serializing large models again for onnxruntime)."""
        start = time.perf_counter()
        hungry = [p.spec for p in self.passes if p.needs_calibration()]
        if hungry and self.calibration is None:
            raise BadData(f"{', '.join(hungry)} needs calibration data: give --calib DATA (.npz/.npy, a folder of them or of images with "
                          "--preprocess; `--calib random` for a smoke test)")
        named = named_dynamic_dims(model)
        if named is not model:
            model, serialized = named, None
        needs_shapes = self.verify or any(p.needs_static_shapes for p in self.passes)
        shapes = resolve_input_shapes(model, self._data_shapes() | self.input_shapes) if needs_shapes else {
            k: tuple(v) for k, v in self.input_shapes.items()}
        ctx = PassContext(seed=self.seed, input_shapes=shapes, calibration=self.calibration, evaluation=self.evaluation,
                          progress=self.progress, threads=self.threads, dry_run=self.dry_run)
        full_check = _check(model, True) is None  # hold later models to the level the input meets
        current = model
        feeds: list[Feed] = []
        reference = current_out = verified_on = None
        tolerance = None
        if self.verify:
            feeds, verified_on = self._verification_feeds(model, shapes)
            try:
                reference = current_out = run_model(serialized or model, feeds, threads=self.verify_threads)
            except BadModel as exc:
                raise BadModel(f"{exc}; verification needs onnxruntime to run the input model "
                               "(--no-verify optimizes without it)") from None
            except Exception as exc:  # noqa: BLE001 - ORT raises its own types at run time
                # a model that loads but cannot run on these inputs: seeded random values can take a
                # branch real ones never do (silero-vad's sample rate must be 8000 or 16000)
                first = first_line(exc, None)[-300:]
                raise BadData(f"onnxruntime cannot run the input model on {verified_on}: {first}; "
                              "give real inputs with --calib DATA (verification runs on its last samples) "
                              "or --no-verify") from None
            tolerance = Tolerance(self.rtol, feeds, self.verify_threads)
        current_bytes = serialized
        reports = []
        names_after: list[tuple[int, set[str]]] = []  # node names left after each accepted pass
        for i, p in enumerate(self.passes):
            self.progress(f"{p.name}", i, len(self.passes))
            for inst in self.instruments:
                inst.before_pass(p, current)
            t0 = time.perf_counter()
            graph = Graph(current, input_shapes=shapes)
            ctx.allowed, ctx.regions = None, []
            try:
                p.requires(graph, ctx)
                result = p.run(graph, ctx)
            except OnnxoptError as exc:
                if isinstance(exc, (PreconditionError, BadData)):  # the user's data, not the pass: stop the run
                    raise
                report = self._report(p, "failed", t0, PassResult(), f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a bug in one pass must not lose the run
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                where = f" ({tb.filename.rsplit('/', 1)[-1]}:{tb.lineno})"
                report = self._report(p, "failed", t0, PassResult(), f"{type(exc).__name__}: {exc}{where}")
            else:
                if not result.changed and graph.mutations:
                    report = self._report(p, "failed", t0, result, "the pass edited the graph but reported no "
                                          "change (PassResult.changed); its edits were discarded")
                elif not result.changed:
                    report = self._report(p, "unchanged", t0, result)
                else:
                    candidate = graph.to_model()
                    before = _Before(current_bytes or current, current_out, tolerance)
                    report, accepted, out, data = self._accept(p, candidate, result, t0, full_check, feeds, before)
                    if not accepted and p.exact and report.fidelity is not None and len(set(ctx.regions)) > 1:
                        isolated = self._isolate(p, current, shapes, ctx, t0, full_check, feeds, before)
                        if isolated is not None:
                            report, candidate, out, data = isolated
                            accepted = True
                    if accepted:
                        current, current_out, current_bytes = candidate, out, data
                        names_after.append((i, {n.name for n in current.graph.node if n.name}))
            reports.append(report)
            for inst in self.instruments:
                inst.after_pass(p, current, report)
        self.progress("done", len(self.passes), len(self.passes))
        _settle(reports, names_after)
        changed = current is not model
        final_fid = compare(reference, current_out) if self.verify and changed else None
        reference_fid = None
        if final_fid is not None and any(r.status == "applied" and not r.exact for r in reports):
            # a lossy result is judged as it will run: QDQ models keep their Q/DQ pairs in float in the
            # reference kernels, so there they hide what integer kernels on this CPU do to the outputs
            deployed = run_model(current_bytes or current, feeds, optimization="all", threads=self.verify_threads)
            final_fid, reference_fid = compare(reference, deployed), final_fid
        before = model_stats(model, shapes)
        after = model_stats(current, shapes) if changed else before
        run_report = RunReport(reports, before, after, final_fid, self.verify, shapes, time.perf_counter() - start,
                               verified_on, reference_fid, cpu_summary(),
                               tolerance.as_dict() if tolerance is not None else {})
        return RunResult(current, run_report, current_bytes)

    def _data_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the first calibration sample: they fix the dims a model leaves dynamic
        (--input-shape still overrides)."""
        if self.calibration is None:
            return {}
        first = next(iter(self.calibration), None)
        return {k: tuple(np.shape(v)) for k, v in (first or {}).items()}

    def _verification_feeds(self, model: onnx.ModelProto,
                            shapes: dict[str, tuple[int, ...]]) -> tuple[list[Feed], str]:
        """Real samples when there are any (the last ones of the calibration data: lossy passes are
        judged on the data they are for), seeded random ones otherwise; and which it was."""
        if self.calibration is not None:
            tail = getattr(self.calibration, "tail", None)
            feeds = tail(self.samples) if tail else [f for _, f in zip(range(self.samples), self.calibration)]
            if feeds:
                return feeds, f"{len(feeds)} calibration samples"
        return random_feeds(model, shapes, seed=self.seed, count=self.samples), f"{self.samples} seeded random samples"

    def _isolate(self, p: Pass, current: onnx.ModelProto, shapes, ctx: PassContext, t0: float, full_check: bool,
                 feeds: list[Feed], before: "_Before"):
        """Per-region rollback: the exact pass's result failed verification, so find the rewrites that
        moved the outputs and keep the others. One culprit at a time: hold back ever shorter tails of
        the regions (in the order the pass asked for them) until the rest verifies; the last region
        of the shortest such tail is a culprit. Tails, not halves: a rewrite that needs an earlier
        one (a second BN folds once the first is gone) is held back with it, never tested alone.
        None when that finds nothing that verifies within the trial budget, or the pass raises: the
        whole pass rolls back, as before."""
        keys = list(dict.fromkeys(ctx.regions))
        labels = dict(ctx.labels)
        budget = TRIALS_PER_CULPRIT_BOUND * (len(keys).bit_length() + 1)
        trials = [0]

        def attempt(held: set[str]):
            trials[0] += 1
            ctx.allowed, ctx.regions = frozenset(k for k in keys if k not in held), []
            graph = Graph(current, input_shapes=shapes)
            result = p.run(graph, ctx)
            candidate = graph.to_model()
            report, ok, out, data = self._accept(p, candidate, result, t0, full_check, feeds, before)
            return result, candidate, report, ok, out, data

        bad: dict[str, Fidelity | None] = {}
        try:
            while trials[0] < budget:
                rest = [k for k in keys if k not in bad]
                # holding back rest[lo:] verifies (lo = 0: nothing rewritten), rest[hi:] does not (hi = len)
                lo, hi = 0, len(rest)
                while hi - lo > 1 and trials[0] < budget:
                    mid = (lo + hi) // 2
                    if attempt(set(bad) | set(rest[mid:]))[3]:
                        lo = mid
                    else:
                        hi = mid
                culprit = rest[lo] if hi - lo == 1 else None
                if culprit is None:
                    return None
                bad[culprit] = None
                kept = attempt(set(bad))
                if kept[3]:
                    break
            else:
                return None
            result, candidate, report, ok, out, data = kept
            if not result.changed:
                return None
            for key in bad:  # each culprit's error: it rewritten on top of the good rewrites before it
                later = set(keys[keys.index(key) + 1:])
                bad[key] = attempt(later | (set(bad) - {key}))[2].fidelity
        except Exception:  # noqa: BLE001 - a pass that fails on a subset: the whole pass rolls back
            return None
        finally:
            ctx.allowed = None
        tol = report.tolerance
        for key, fid in bad.items():
            moved = f"max rel error {fid.max_rel:.3g} > {tol:g}" if fid is not None else "outputs moved"
            result.skip(labels.get(key, key), f"rolled back alone: rewriting it moved the outputs ({moved})")
        result.notes.append(f"{len(bad)} of {len(keys)} rewrites failed verification and were rolled back alone; "
                            f"the others were kept ({trials[0]} verification runs to find them)")
        result.details["rolled_back_alone"] = [labels.get(k, k) for k in bad]
        return (self._report(p, "applied", t0, result, fidelity=report.fidelity, tolerance=tol), candidate, out,
                data)

    def _report(self, p: Pass, status: str, t0: float, result: PassResult, message: str = "",
                fidelity: Fidelity | None = None, tolerance: float | None = None, floor=None) -> PassReport:
        return PassReport(p.name, p.spec, status, p.exact, time.perf_counter() - t0, dict(result.stats),
                          list(result.skipped), list(result.notes), message, fidelity, dict(result.details), tolerance,
                          floor.value if floor is not None else None)

    def _accept(self, p: Pass, candidate: onnx.ModelProto, result: PassResult, t0: float, full_check: bool,
                feeds: list[Feed], before: "_Before"):
        """Check and verify a pass's result: (report, accepted, outputs on the feeds, serialized)."""
        problem = _check(candidate, full_check)
        if problem:
            msg = f"onnx.checker rejected the result: {problem}"
            return self._report(p, "rolled-back", t0, result, msg), False, None, None
        if not self.verify:
            return self._report(p, "applied", t0, result), True, None, None
        data = candidate.SerializeToString()
        try:
            out = run_model(data, feeds, threads=self.verify_threads)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types at run time
            msg = f"onnxruntime cannot run the result: {first_line(exc, 200)}"
            return self._report(p, "rolled-back", t0, result, msg), False, None, None
        fid = compare(before.outputs, out)
        if not p.exact:  # reported as deployed (see run); `out` stays the reference the next pass is checked against
            fid = compare(before.outputs, run_model(data, feeds, optimization="all", threads=self.verify_threads))
            return self._report(p, "applied", t0, result, fidelity=fid), True, out, data
        tol = before.tolerance.of(out)
        floor = None
        if not fid.within(tol):
            floor = before.floor()
            tol = before.tolerance.of(out, floor)
        if not fid.within(tol):
            msg = (f"outputs changed (max rel error {fid.max_rel:.3g} > {tol:g}, worst output '{fid.worst}'); "
                   "result discarded")
            return self._report(p, "rolled-back", t0, result, msg, fid, tol, floor), False, None, None
        return self._report(p, "applied", t0, result, fidelity=fid, tolerance=tol, floor=floor), True, out, data


@dataclasses.dataclass
class _Before:
    """The model a pass starts from, its outputs on the verification feeds, and its noise floor (see
    onnxopt.pipeline.tolerance), measured the first time a pass on it exceeds rtol."""

    model: onnx.ModelProto | bytes
    outputs: list[Feed] | None
    tolerance: Tolerance | None
    _floor: Any = None

    def floor(self):
        if self._floor is None and self.tolerance is not None and self.tolerance.rtol is None:
            self._floor = self.tolerance.floor(self.model, self.outputs)
        return self._floor


def _settle(reports: list[PassReport], names_after: list[tuple[int, set[str]]]) -> None:
    """Mark declines whose node a later pass removed, naming that pass."""
    for i, report in enumerate(reports):
        if not any(s.node for s in report.skipped):
            continue
        later = [(j, names) for j, names in names_after if j > i]
        settled = []
        for s in report.skipped:
            by = next((reports[j].name for j, names in later if s.node and s.node not in names), None)
            settled.append(dataclasses.replace(s, settled_by=by) if by else s)
        report.skipped = settled


def run_passes(model: onnx.ModelProto, passes: Sequence[Pass] | str, **kwargs: Any) -> RunResult:
    """Convenience: `run_passes(model, "fold-bn,cleanup")`."""
    pipeline = Pipeline.parse(passes, **kwargs) if isinstance(passes, str) else Pipeline(passes, **kwargs)
    return pipeline.run(model)


