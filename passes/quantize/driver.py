"""The quantize pass, step by step: opset, plan, calibration, range checks, optional equalization,
bias correction and accuracy control, then the rewrite and the fusion audit."""
from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx

from onnxopt.analysis.fusion import audit
from onnxopt.errors import BadData, OnnxoptError, PreconditionError, first_line
from onnxopt.graph.core import Graph
from onnxopt.pipeline.contract import PassContext, PassResult
from onnxopt.runtime.cpu import this_cpu, u8s8_saturates
from onnxopt.runtime.fidelity import compare
from onnxopt.runtime.sessions import Feed, make_session, random_feeds, run_feeds

from . import calibrate, speed
from .materialize import Applied, activation_is_exact, apply_plan, fit_activation
from .placement import Plan, make_plan, matches
from .scheme import activation_qparams
from .speed import GAIN
from .target import Target, resolve


class Samples:
    """Calibration feeds split into the part that sets ranges and a held-back part that measures
    agreement with the float model. Reads a re-iterable source as often as asked; a one-shot
    iterator is read once, keeping only the held-back part and a few samples for bias correction."""

    def __init__(self, source: Iterable[Feed], samples: int, holdback: int, keep: int = 0) -> None:
        """`keep`: how many calibration feeds a one-shot source must keep for a second read."""
        self.source, self.samples, self.keep = source, samples, keep
        self.one_shot = iter(source) is source
        self.overlap = False
        self._reuse: list[Feed] | None = None
        if self.one_shot:
            self.held = list(itertools.islice(source, holdback))
            return
        n = _length(source)
        if n is not None and hasattr(source, "tail"):
            if n >= 2 * holdback:
                self.held = list(source.tail(holdback)) if holdback else []
                self.limit = min(samples, n - holdback)
            else:
                self.held, self.limit, self.overlap = list(source.tail(min(holdback, n))), min(samples, n), True
        else:  # re-iterable without a tail: hold back the first ones
            self.held = list(itertools.islice(iter(source), holdback))
            self.limit = samples
            self._skip = len(self.held)
            if n is not None and n < 2 * holdback:
                self._skip, self.overlap = 0, True
            return
        self._skip = 0

    def calibration(self) -> Iterator[Feed]:
        if self.one_shot:
            if self._reuse is not None:
                yield from self._reuse
                return
            self._reuse, count = [], 0
            rest = itertools.islice(self.source, self.samples)
            for feed in itertools.chain(rest, self._overlap(lambda: count)):
                if len(self._reuse) < self.keep:
                    self._reuse.append(feed)
                count += 1
                yield feed
            return
        yield from itertools.islice(iter(self.source), self._skip, self._skip + self.limit)

    def _overlap(self, count) -> Iterator[Feed]:
        """After a one-shot source ran dry: fewer samples than held back were left, so the held-back
        ones are calibrated on too (as a short list would be)."""
        if count() < len(self.held):
            self.overlap = True
            yield from self.held[: self.samples - count()]

    def total(self) -> int:
        return self.samples if self.one_shot else self.limit


def _length(source) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


def _ensure_opset(graph: Graph, per_channel: bool, result: PassResult) -> bool:
    """Per-channel QDQ needs opset >= 13 (QuantizeLinear's axis); older models are upgraded by the
    onnx version converter when that is exact, else quantized per tensor. Returns per_channel."""
    opset = graph.opset
    if opset < 10:
        raise PreconditionError(f"opset {opset}: QuantizeLinear needs opset >= 10; upgrade the model first")
    if opset >= 13 or not per_channel:
        return per_channel
    model = graph.to_model()
    try:
        upgraded = onnx.version_converter.convert_version(model, 13)
        feeds = random_feeds(model, graph.input_shapes, seed=0, count=2)
        before = run_feeds(make_session(model.SerializeToString()), feeds)
        after = run_feeds(make_session(upgraded.SerializeToString()), feeds)
        fid = compare(before, after)
        if not fid.within(1e-5):
            raise ValueError(f"outputs moved by {fid.max_rel:.2g}")
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds
        why = first_line(exc, 160)
        result.notes.append(f"opset {opset}: per-channel QDQ needs opset 13 and the onnx version converter "
                            f"could not upgrade it exactly ({why}); weights are quantized per tensor")
        return False
    graph.reset(upgraded)
    result.notes.append(f"upgraded opset {opset} -> 13 for per-channel QDQ (onnx version converter; outputs "
                        "verified identical)")
    return True


def _calibrated_tensors(plan: Plan) -> list[str]:
    """Every tensor a plan may need a range for once some of its ops return to float: each quantized
    tensor (a pass-through output becomes its own root when the op before it is float), and the
    inputs of absorbed activations (used when folding an activation turns out inexact)."""
    extra = [u.activation.input(0) for u in plan.units.values() if u.activation is not None]
    return sorted(set(plan.tensors) | set(plan.range_tensors) | set(extra))


class Builder:
    """Quantized models from one float model and one set of ranges, with different nodes in float."""

    def __init__(self, float_model: onnx.ModelProto, shapes, ranges: dict[str, tuple[float, float]], options,
                 dtype: str, per_channel: bool, pair_bound: bool = False) -> None:
        self.float_model, self.shapes, self.ranges = float_model, shapes, ranges
        self.o, self.dtype, self.per_channel, self.pair_bound = options, dtype, per_channel, pair_bound
        self.reasons: dict[str, str] = {}  # float node key -> why (decided here, not by the user)

    def plan(self, graph: Graph, float_keys: set[str]) -> Plan:
        return make_plan(graph, exclude=self.o.exclude, op_types=self.o.op_types, float_nodes=float_keys)

    def build(self, float_keys: set[str], model: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, Applied, Plan]:
        graph = Graph(model or self.float_model, input_shapes=self.shapes)
        plan = self.plan(graph, float_keys)
        applied = apply_plan(graph, plan, self.ranges, dtype=self.dtype, per_channel=self.per_channel,
                             keep_activations=self.o.keep_activations, pair_bound=self.pair_bound)
        return graph.to_model(), applied, plan

    def settle(self, graph: Graph, float_keys: set[str]) -> set[str]:
        """Hold in float what the ranges say cannot be quantized well: a Concat of very different
        ranges (one scale would erase the small part), an activation whose fold would not be exact."""
        keys = set(float_keys)
        for _ in range(8):
            plan = self.plan(graph, keys)
            new = set()
            for u in plan.units.values():
                if u.node.op == "Concat" and self.o.concat_range_ratio:
                    widths = [self._width(t) for t in u.node.inputs]
                    if min(widths) > 0 and max(widths) / min(widths) > self.o.concat_range_ratio:
                        key = u.node.outputs[0]
                        new.add(key)
                        spans = ", ".join(f"{t} {self._span(t)}" for t in u.node.inputs)
                        self.reasons[key] = (f"{u.node.label} stays float: its inputs' ranges differ "
                                             f"{max(widths) / min(widths):.0f}x ({spans}); one scale would erase "
                                             "the small-range part")
                if u.activation is not None:
                    t = u.activation.outputs[0]
                    q = fit_activation(activation_qparams(*self.ranges[t], self.dtype), u.activation, graph)
                    if not activation_is_exact(u.activation, graph, q):
                        key = u.activation.outputs[0]
                        new.add(key)
                        self.reasons[key] = (f"{u.activation.label} kept: its output range cannot make it "
                                             "redundant, so it runs in float between Q/DQ")
            if not new - keys:
                return keys
            keys |= new
        return keys

    def _width(self, t: str) -> float:
        lo, hi = self.ranges.get(t, (0.0, 0.0))
        return max(hi, 0.0) - min(lo, 0.0)

    def _span(self, t: str) -> str:
        lo, hi = self.ranges.get(t, (0.0, 0.0))
        return f"[{lo:.3g}, {hi:.3g}]"


def _stats(float_model: onnx.ModelProto, tensors: list[str], samples: Samples, o, ctx: PassContext,
           result: PassResult) -> dict[str, calibrate.TensorStats]:
    fingerprint = calibrate.fingerprint(float_model)
    cache = Path(o.ranges) if o.ranges else None
    if cache is not None and cache.is_file():
        stats, meta = calibrate.load_cache(cache)
        missing = [t for t in tensors if t not in stats]
        if meta.get("fingerprint") == fingerprint and not missing:
            result.notes.append(f"ranges read from {cache} ({meta.get('batches', '?')} calibration batches)")
            result.details["calibration"] = {"cached": str(cache), "batches": meta.get("batches")}
            return stats
        result.notes.append(f"{cache} was made for another model or other settings: calibrating again")
    if samples is None:
        raise BadData("quantize needs calibration data: give --calib DATA (.npz/.npy, a folder of them or of "
                      "images with --preprocess), or --calib random for a smoke test")
    total = samples.total()
    histograms = o.method in calibrate.HISTOGRAM_METHODS or cache is not None
    stats, batches = calibrate.collect(float_model, tensors, samples.calibration(), threads=ctx.threads,
                                       histograms=histograms,
                                       progress=lambda i: ctx.progress("quantize: calibration", i, total))
    if batches == 0:
        raise BadData("quantize: the calibration data holds no samples beyond the held-back ones")
    unseen = [t for t in tensors if not stats[t].seen]
    if unseen:
        raise BadData(f"quantize: calibration never produced {unseen[0]!r} (non-finite or empty)")
    result.details["calibration"] = {"batches": batches, "held_back": len(samples.held), "overlap": samples.overlap}
    if samples.overlap:
        result.notes.append(f"only {batches} calibration batches: the {len(samples.held)} held back for the "
                            "agreement check are also calibrated on")
    if cache is not None and not ctx.dry_run:
        try:
            calibrate.save_cache(cache, stats, {"fingerprint": fingerprint, "batches": batches})
            result.notes.append(f"ranges saved to {cache}")
        except OnnxoptError as exc:  # the cache is a convenience: the quantized model still stands
            result.notes.append(f"warning: ranges not saved: {exc}")
    return stats


def quantize_graph(p, graph: Graph, ctx: PassContext, result: PassResult) -> PassResult:
    o = p.options
    target, native = resolve(o.target)
    dtype = o.activations if o.activations != "auto" else target.activations
    cpu = this_cpu()
    timed = o.speed and native and not ctx.dry_run
    # a float verdict must give back the model as it came: keep a copy only where the graph is edited
    # before that verdict (the opset upgrade, CLE); everything else builds separate graphs
    original = graph.to_model() if timed and (o.cle or (graph.opset < 13 and o.per_channel)) else None
    per_channel = _ensure_opset(graph, o.per_channel, result)
    plan = make_plan(graph, exclude=o.exclude, op_types=o.op_types)
    for pattern in o.exclude:
        if not any(matches(n, (pattern,)) for n in graph.nodes()):
            result.notes.append(f"warning: exclude pattern '{pattern}' matches no node")
    if not plan.units:
        result.details["kept_float"] = dict(plan.kept_float)
        for label, why in plan.kept_float.items():
            result.skip(label, f"stays float: {why}")
        result.notes.append("nothing to quantize: no op onnxruntime runs in int8")
        hidden = {op: k for op, k in graph.nested_ops().items() if op in ("Conv", "MatMul", "Gemm", "ConvTranspose")}
        if hidden:
            result.notes.append(
                f"{', '.join(f'{k} {op}' for op, k in sorted(hidden.items()))} inside If/Loop/Scan bodies stay "
                "float: quantize works on the top-level graph (export without control flow, e.g. one model per branch)")
        return result
    result.details["target"] = {"name": target.name, "native": native, "activations": dtype,
                                "weights": target.weights, "cpu": cpu.as_dict()}
    result.notes.append(f"target {target.name}: {target.about}; this CPU: {cpu.describe()}")
    if not native:
        result.notes.append(f"warning: made for {target.name}, not for this CPU ({cpu.kind}): its speed was not measured "
                            "and the held-back fidelity below is as this CPU runs it, not as the target will")
    if o.cle:
        from .equalize import equalize
        equalize(graph, result)
    float_model = graph.to_model()
    source = p.calibration if p.calibration is not None else ctx.calibration
    from .correct import SAMPLES as correction_samples
    samples = (Samples(source, o.samples, o.holdback, keep=correction_samples if o.bias_correction else 0)
               if source is not None else None)
    if getattr(source, "random", False):
        result.notes.append("warning: calibrated on random inputs (--calib random): the ranges fit noise, not "
                            "your data; for smoke tests only")
    stats = _stats(float_model, _calibrated_tensors(plan), samples, o, ctx, result)  # CLE changed weights only
    ranges = {t: calibrate.compute_range(st, o.method, percentile=o.percentile)
              for t, st in stats.items() if st.seen}
    builder = Builder(float_model, graph.input_shapes, ranges, o, dtype, per_channel, target.pair_bound)
    reference = float_model  # bias correction edits builder.float_model; fidelity is against this one
    float_keys = builder.settle(graph, set())
    if o.bias_correction:
        from .correct import correct_biases
        if samples is None:
            raise BadData("quantize: bias-correction needs calibration data (--calib)")
        builder.float_model = correct_biases(builder, float_keys, samples, ctx, result)
    held = samples.held if samples is not None else []
    if o.max_drop is not None:
        from .accuracy import control
        float_keys = control(p, builder, reference, float_keys, held, ctx, result)
    timing = None
    if timed:
        units = list(builder.plan(Graph(builder.float_model, input_shapes=builder.shapes), float_keys).units.values())
        if not units:
            return _stay_float(graph, original, result, "every quantizable op was kept float (" + (
                "accuracy control, " if o.max_drop is not None else "") + "range checks): the model stays float")
        timing = _where_it_pays(builder, reference, units, float_keys, held, ctx, result)
        float_keys = timing.float_keys
    elif o.speed and native and ctx.dry_run:
        result.notes.append("dry run: int8 was not timed against float; a real run keeps float the regions that are "
                            "not faster in int8 here, and the whole model when int8 does not pay")
    model, applied, final_plan = builder.build(float_keys)
    if timing is not None and not timing.pays and not o.force:
        return _stay_float(graph, original, result, (
            f"int8 does not pay on this CPU ({cpu.kind}, {ctx.threads} thread{'s' * (ctx.threads > 1)}): the "
            f"quantized model runs at {timing.ratio:.3f}x the float model's latency (needs <= {1 - GAIN:.3f}x); the "
            "model stays float (quantize:force=true keeps int8)"))
    graph.reset(model)
    result.changed = True
    _report(result, final_plan, applied, builder, dtype, per_channel, o, target)
    if held:
        _agreement(result, reference, model, held, ctx)
    if timing is not None and not timing.pays:
        held_back = result.details.get("held_back", {}).get("outputs", {})
        worst = min((v["cosine"] for v in held_back.values()), default=None)
        moved = f"; outputs moved to cosine {worst:.4f} with float" if worst is not None else ""
        result.notes.append(f"warning: force=true keeps int8 on a CPU where it does not pay: {timing.ratio:.3f}x the "
                            f"float model's latency{moved}")
    if o.audit:
        _audit(result, model, ctx, _kept_float_names(builder, final_plan, float_keys), target)
    return result


def _stay_float(graph: Graph, original: onnx.ModelProto | None, result: PassResult, why: str) -> PassResult:
    """The pass's verdict is the float model: the graph goes back to what came in, and what was tried
    on the way is kept under details["discarded"] (its notes and details describe a model not written)."""
    if original is not None:
        graph.revert(original)
    keep = {"target", "speed"}
    result.details["discarded"] = {k: result.details.pop(k) for k in list(result.details) if k not in keep}
    shown = ("target ", "warning: ")  # the target, and warnings about the input or the data, still hold
    result.details["discarded"]["notes"] = [n for n in result.notes if not n.startswith(shown)]
    result.notes[:] = [n for n in result.notes if n.startswith(shown)] + [why]
    result.stats.clear()
    result.skipped.clear()
    return result


def _where_it_pays(builder: Builder, reference: onnx.ModelProto, units: list, float_keys: set[str],
                   held: list[Feed], ctx: PassContext, result: PassResult) -> speed.SpeedPlan:
    """Regions of `units` that are slower in int8 return to float (speed.choose), each named in the report."""
    feed = held[0] if held else random_feeds(reference, builder.shapes, seed=ctx.seed, count=1)[0]
    timing = speed.choose(lambda keys: builder.build(keys)[0], units, reference, float_keys, feed, ctx.threads,
                          progress=lambda i, n: ctx.progress("quantize: timing regions", i, n))
    result.details["speed"] = timing.as_dict()
    for t in timing.trials:
        if t.kept_float:
            result.skip(t.region, f"stays float: the model ran {1 - t.ratio:.0%} faster with it in float than in "
                                  "int8 on this CPU")
    if timing.undone:
        result.notes.append("speed: regions that each looked faster in float were not faster together than all "
                            "int8; all int8 kept")
    returned = sum(t.kept_float for t in timing.trials)
    result.notes.append(f"speed on this CPU, int8 / float latency: {timing.first_ratio:.3f} all int8"
                        + (f", {timing.ratio:.3f} with {returned} of {len(timing.trials)} regions kept float"
                           if returned else "") + f" (side by side, medians, {ctx.threads} thread"
                        + "s" * (ctx.threads > 1) + ")")
    return timing


def _kept_float_names(builder: Builder, plan: Plan, float_keys: set[str]) -> dict[str, str]:
    """Node names kept float by request or decision (excluded, op-types, a range check, accuracy
    control): the ones whose fusion onnxruntime may still do on its own."""
    graph = Graph(builder.float_model, input_shapes=builder.shapes)
    out = {}
    for node in graph.nodes():
        if not node.name:
            continue
        why = plan.kept_float.get(node.label)
        if why == "excluded" or node.outputs[0] in float_keys:
            out[node.name] = why or builder.reasons.get(node.outputs[0], "returned to float")
    return out


def _report(result: PassResult, plan: Plan, applied: Applied, builder: Builder, dtype: str, per_channel: bool,
            o, target: Target) -> None:
    ops = collections.Counter(u.node.op for u in plan.units.values())
    result.count("nodes quantized", len(plan.units))
    result.count("activations quantized", applied.activations)
    result.count("weights quantized", applied.weights)
    if applied.folded:
        result.count("Relu/Clip folded", len(applied.folded))
    if applied.widened_channels:
        result.count("weight channels widened for int32 bias", applied.widened_channels)
        result.notes.append(f"{applied.widened_channels} weight channels got a wider scale so that their bias "
                            "fits int32 (input scale x weight scale too small)")
    result.details.update({
        "activations": dtype, "weights": "int8 symmetric " + ("per channel" if per_channel else "per tensor"),
        "pair_bounded_weights": target.pair_bound,
        "method": o.method, "quantized_ops": dict(sorted(ops.items())), "folded": applied.folded,
        "kept_activations": applied.kept_activations,
    })
    kept = {}
    for label, why in plan.kept_float.items():
        kept[label] = why
        result.skip(label, f"stays float: {why}")
    if any(label.startswith("BatchNormalization") for label in plan.kept_float):
        result.notes.append("warning: BatchNormalization left in the graph runs in float between Q/DQ; run fold-bn "
                            "before quantize (`--passes fold-bn,quantize`)")
    for key, why in builder.reasons.items():
        kept[key] = why
        result.skip(key, why.split(": ", 1)[-1] if ": " in why else why)
    result.details["kept_float"] = kept
    result.notes.append(f"{dtype} activations, {target.weights} {'per-channel' if per_channel else 'per-tensor'} weights, "
                        f"{o.method} ranges; " + ", ".join(f"{n} {op}" for op, n in ops.most_common()))


def _agreement(result: PassResult, float_model: onnx.ModelProto, model: onnx.ModelProto, held: list[Feed],
               ctx: PassContext) -> None:
    ref = run_feeds(make_session(float_model.SerializeToString(), threads=ctx.threads), held)
    got = run_feeds(make_session(model.SerializeToString(), optimization="all", threads=ctx.threads), held)
    fid = compare(ref, got)
    per = {k: {"cosine": v.cosine, "centred_cosine": v.centred_cosine, "max_abs": v.max_abs,
               "top1_agreement": v.top1_agreement} for k, v in fid.outputs.items()}
    result.details["held_back"] = {"samples": len(held), "outputs": per}
    for name, v in per.items():
        top1 = f", top-1 agreement {v['top1_agreement']:.1%}" if v["top1_agreement"] is not None else ""
        # the plain cosine alone flatters an output mostly common to every input (centred_cosine)
        centred = f" (centred {v['centred_cosine']:.4f})" if v["centred_cosine"] is not None else ""
        result.notes.append(f"output '{name}' on {len(held)} held-back samples: cosine {v['cosine']:.4f}{centred}, "
                            f"max abs error {v['max_abs']:.3g}{top1}")


def _audit(result: PassResult, model: onnx.ModelProto, ctx: PassContext, kept_float: dict[str, str],
           target: Target) -> None:
    """The fusion audit, and the ops kept float that onnxruntime runs as integer kernels anyway: an op
    between quantized neighbours still reads a DequantizeLinear and feeds a QuantizeLinear, the very
    unit onnxruntime fuses (a float-weight Conv there gets its weights quantized by onnxruntime).
    Audited as the target's platform fuses: int8 activations made for ARM fuse there, not on x86."""
    found = audit(model, threads=ctx.threads, int8_fused=target.int8_fused)
    result.details["fusion"] = found.as_dict()
    anyway = {name: found.integer_nodes[name] for name in kept_float if name in found.integer_nodes}
    result.details["fusion"]["fused_anyway"] = anyway
    if anyway:
        listed = ", ".join(f"{name} ({op})" for name, op in anyway.items())
        result.notes.append(f"warning: kept float here, but onnxruntime fuses them into integer kernels anyway, as "
                            f"their neighbours are quantized: {listed}; to run them in float, keep their "
                            "neighbours float too")
    if found.saturating:
        here = ("this CPU's u8 x s8 kernel saturates too: outputs here are wrong by more than rounding"
                if u8s8_saturates() else "exact on this CPU")
        result.notes.append(f"warning: {len(found.saturating)} integer kernels have weight pairs beyond int16: "
                            f"{here}; they saturate on x86 without VNNI (AVX2, AVX-512 without VNNI), where "
                            "target=x86-avx2 makes a model that is right on both")
    result.count("float islands", len(found.islands))
    result.notes.append(f"fusion audit (onnxruntime's optimized graph, as on {target.name}): {found.summary()}")
    for island in found.islands:
        result.skip(island.name or island.op, f"{island.op} runs in float in onnxruntime ({island.inputs_from})")
