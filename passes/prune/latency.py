"""Latency-aware ratios: reach a fraction of the model's measured latency, choosing per group how
many channels go from measurements, not from FLOPs.

1. Every Conv/Gemm/MatMul that produces or reads a prunable group is timed alone in onnxruntime
   (the session options the model runs with) at a few input and output widths, interleaved. A
   layer at (cin', cout') is predicted as T(cin, cout) * r_in(cin'/cin) * r_out(cout'/cout), the
   two factors interpolated from the measured widths. Timings are cached per CPU, onnxruntime
   version and thread count (`$ONNXOPT_CACHE_DIR`, default ~/.cache/onnxopt), keyed by the layer's
   shapes and attributes, so a second run on the same model, or a model with the same layers,
   measures nothing.
2. Greedy: from full width, repeatedly narrow the group whose next width saves the most predicted
   latency per unit of importance removed (scores in one unit across groups, as
   importance.score_groups gives them), until the prediction
   meets the target.
3. The pruned model is measured against the original, interleaved; if the measured ratio misses
   the target by more than 3 points the internal target is corrected by target / measured and the
   plan made again (at most 3 times). The closest plan wins; predicted and measured ratios are
   reported.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxopt.analysis.channels import ChannelAnalysis, Group
from onnxopt.graph.core import Graph, Node
from onnxopt.graph.io import atomic_write_bytes
from onnxopt.graph.probes import single_node
from onnxopt.graph.shrink import shrink
from onnxopt.measure.timing import interleave, machine, session_runner
from onnxopt.pipeline.contract import PassContext, PassResult
from onnxopt.runtime.sessions import random_feeds

from . import select

FRACTIONS = (1.0, 0.75, 0.5, 0.25)          # widths each layer is timed at
STEPS = tuple(1 - k / 16 for k in range(13))  # widths a group may take: 100% .. 25% in 1/16 steps
TOLERANCE = 0.03
MAX_ROUNDS = 3


def cache_path() -> Path:
    root = Path(os.environ.get("ONNXOPT_CACHE_DIR") or Path.home() / ".cache" / "onnxopt")
    m = machine()
    key = hashlib.sha1(f"{m['cpu']}|{m['onnxruntime']}".encode()).hexdigest()[:12]
    return root / f"layer-latency-{key}.json"


class LatencyTable:
    """Measured single-layer latencies, persisted as JSON (a cache: losing it costs time only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, float] = {}
        self.measured = 0
        if path is not None and path.exists():
            try:
                self.entries = {k: float(v) for k, v in json.loads(path.read_text()).get("entries", {}).items()}
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    def save(self) -> None:
        if self.path is None or not self.measured:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps({"machine": machine(), "entries": self.entries}).encode())
        except OSError:
            pass  # a read-only home: measure again next time


@dataclasses.dataclass
class _Layer:
    node: Node
    cin: int
    cout: int
    in_groups: dict[int, int]   # group id -> positions of the input it fills
    out_groups: dict[int, int]
    depthwise: bool
    seconds: dict[tuple[float, float], float] = dataclasses.field(default_factory=dict)

    def width(self, counts: dict[int, int], sizes: dict[int, int], side: str) -> float:
        groups, full = (self.in_groups, self.cin) if side == "in" else (self.out_groups, self.cout)
        lost = sum(n * (1 - counts[g] / sizes[g]) for g, n in groups.items())
        return max(full - lost, 1) / full


def _attrs(node: Node, **override) -> dict:
    out = {}
    for a in node.proto.attribute:
        out[a.name] = helper.get_attribute_value(a)
    out.update(override)
    return {k: v for k, v in out.items() if v is not None}


def _layer_model(graph: Graph, layer: _Layer, fin: float, fout: float) -> tuple[onnx.ModelProto, tuple]:
    n = layer.node
    x_shape = list(graph.static_shape(n.input(0)))
    w = graph.constant(n.input(1))
    rng = np.random.default_rng(0)
    if n.op == "Conv":
        group = int(n.attr("group", 1))
        if layer.depthwise:
            c = max(1, round(layer.cin * fin))
            mult = layer.cout // layer.cin
            cin, cout, group = c, c * mult, c
        else:
            step = group
            cin = max(step, round(layer.cin * fin / step) * step)
            cout = max(step, round(layer.cout * fout / step) * step)
        x_shape[1] = cin
        weight = rng.standard_normal((cout, cin // group, *w.shape[2:])).astype(np.float32)
        attrs = _attrs(n, group=group)
    elif n.op in ("Gemm", "MatMul"):
        cin, cout = max(1, round(layer.cin * fin)), max(1, round(layer.cout * fout))
        x_shape[1] = cin
        trans_b = n.op == "Gemm" and int(n.attr("transB", 0))
        weight = rng.standard_normal((cout, cin) if trans_b else (cin, cout)).astype(np.float32)
        attrs = _attrs(n)
    else:
        raise ValueError(f"cannot time {n.op}")
    initializers = {"w": weight}
    if len(n.inputs) > 2 and n.input(2):
        initializers["b"] = np.zeros(cout, np.float32)
    return single_node(n.op, x_shape, initializers, attrs=attrs, opset=graph.opset), tuple(x_shape)


def _signature(graph: Graph, layer: _Layer, fin: float, fout: float, threads: int) -> str:
    n = layer.node
    attrs = sorted((k, str(v)) for k, v in _attrs(n).items())
    w = graph.constant(n.input(1)).shape
    x = graph.static_shape(n.input(0))
    return f"{n.op}|{attrs}|x{x}|w{w}|b{len(n.inputs) > 2 and bool(n.input(2))}|{fin:.4f}|{fout:.4f}|t{threads}"


def _overhead(table: LatencyTable, threads: int) -> float:
    """What one session.run costs with nothing to compute: a layer timed alone pays it, a layer
    inside the model does not."""
    sig = f"overhead|t{threads}"
    if sig not in table.entries:
        model = single_node("Identity", (1, 1))
        run = session_runner(model, {"x": np.zeros((1, 1), np.float32)}, threads=threads)
        (t,) = interleave([("empty", run)], warmup=5, rounds=200, budget_seconds=0.5)
        table.entries[sig] = t.median
        table.measured += 1
    return table.entries[sig]


def measure_layers(graph: Graph, layers: list[_Layer], table: LatencyTable, ctx: PassContext) -> None:
    overhead = _overhead(table, ctx.threads)
    for k, layer in enumerate(layers):
        points = [(1.0, 1.0)] + [(f, 1.0) for f in FRACTIONS[1:]]
        if not layer.depthwise:
            points += [(1.0, f) for f in FRACTIONS[1:]]
        missing = []
        for p in points:
            sig = _signature(graph, layer, *p, ctx.threads)
            if sig not in table.entries:
                missing.append((p, sig))
        if missing:
            runners = []
            for p, sig in missing:
                model, x_shape = _layer_model(graph, layer, *p)
                feed = random_feeds(model, {"x": x_shape})[0]
                runners.append((sig, session_runner(model, feed, threads=ctx.threads)))
            timings = interleave(runners, warmup=2, rounds=25, budget_seconds=2.0, seed=k)
            for (p, sig), t in zip(missing, timings):
                table.entries[sig] = t.median
                table.measured += 1
        for p in points:
            raw = table.entries[_signature(graph, layer, *p, ctx.threads)]
            layer.seconds[p] = max(raw - overhead, 0.05 * raw)
        ctx.progress("prune: timing layers", k + 1, len(layers))


def _factor(layer: _Layer, side: str, f: float) -> float:
    """Measured time ratio at width fraction f on one side, linearly interpolated."""
    full = layer.seconds[(1.0, 1.0)]
    pts = sorted(((p[0] if side == "in" else p[1]), t) for p, t in layer.seconds.items()
                 if (p[1] == 1.0 if side == "in" else p[0] == 1.0))
    xs = [x for x, _ in pts]
    ys = [t / full for _, t in pts]
    return float(np.interp(f, xs, ys))


def predict(layer: _Layer, counts: dict[int, int], sizes: dict[int, int]) -> float:
    full = layer.seconds[(1.0, 1.0)]
    fin = layer.width(counts, sizes, "in")
    if layer.depthwise:
        return full * _factor(layer, "in", fin)
    fout = layer.width(counts, sizes, "out")
    return full * _factor(layer, "in", fin) * _factor(layer, "out", fout)


def _layers(graph: Graph, analysis: ChannelAnalysis, groups: list[Group]) -> list[_Layer]:
    ids = {g.id for g in groups}
    layers = []
    for n in graph.topological_nodes():
        if n.op not in ("Conv", "Gemm", "MatMul") or graph.constant(n.input(1)) is None:
            continue
        x, y = analysis.maps.get(n.input(0)), analysis.maps.get(n.outputs[0])
        if x is None or y is None or graph.static_shape(n.input(0)) is None:
            continue

        def count(tensor: str) -> dict[int, int]:
            roots = analysis.roots(tensor)
            return {int(r): int((roots == r).sum()) for r in np.unique(roots) if int(r) in ids}

        cin, cout = len(x), len(y)
        depthwise = n.op == "Conv" and int(n.attr("group", 1)) == cin and cin > 1
        ins, outs = count(n.input(0)), count(n.outputs[0])
        if ins or outs:
            layers.append(_Layer(n, cin, cout, ins, outs, depthwise))
    return layers


def _greedy(layers: list[_Layer], groups: list[Group], scores: dict[int, np.ndarray], limits: select.Limits,
            budget: float, fixed: dict[int, int] | None = None) -> tuple[dict[int, int], float]:
    """Widths per group whose predicted time saving reaches `budget` seconds, cheapest first.
    Groups in `fixed` (group id -> width: a per-layer ratio override) keep that width; the time it
    saves counts towards the budget."""
    sizes = {g.id: g.size for g in groups}
    counts = dict(sizes)
    fixed = fixed or {}
    ladders = {}
    for g in groups:
        widths = sorted({select.legal_keep(g, max(1, round(g.size * f)), limits) for f in STEPS}, reverse=True)
        ladders[g.id] = [w for w in widths if w <= g.size] if g.id not in fixed else [g.size]
    step_at = {g.id: 0 for g in groups}
    cost_sorted = {}
    for g in groups:
        cost_sorted[g.id] = np.sort(scores[g.id])  # ascending: the first size-k go when k stay
    by_group: dict[int, list[_Layer]] = {g.id: [] for g in groups}
    for ly in layers:
        for gid in set(ly.in_groups) | set(ly.out_groups):
            by_group[gid].append(ly)
    base = {id(ly): predict(ly, counts, sizes) for ly in layers}
    counts.update(fixed)
    current = {id(ly): predict(ly, counts, sizes) for ly in layers}
    saved = sum(base[k] - current[k] for k in base)
    while saved < budget:
        best = None
        for g in groups:
            ladder, i = ladders[g.id], step_at[g.id]
            if i + 1 >= len(ladder):
                continue
            new = ladder[i + 1]
            trial = dict(counts)
            trial[g.id] = new
            gain = sum(current[id(ly)] - predict(ly, trial, sizes) for ly in by_group[g.id])
            if gain <= 0:
                continue
            cs = cost_sorted[g.id]
            cost = float(cs[g.size - counts[g.id]:g.size - new].sum()) + 1e-12
            value = gain / cost
            if best is None or value > best[0]:
                best = (value, g.id, new, gain)
        if best is None:
            break
        _, gid, new, gain = best
        counts[gid] = new
        step_at[gid] += 1
        for ly in by_group[gid]:
            current[id(ly)] = predict(ly, counts, sizes)
        saved += gain
    return counts, saved


def _translate(plan: dict[int, np.ndarray], source: ChannelAnalysis, target: ChannelAnalysis) -> dict[int, np.ndarray]:
    return {target.group_by_key(source.group_of(gid).key).id: keep for gid, keep in plan.items()}


def _measure_ratio(model: onnx.ModelProto, pruned: onnx.ModelProto, shapes, ctx: PassContext, seed: int) -> float:
    feed = random_feeds(model, shapes, seed=ctx.seed)[0]
    runners = [("original", session_runner(model, feed, threads=ctx.threads)),
               ("pruned", session_runner(pruned, feed, threads=ctx.threads))]
    timings = interleave(runners, warmup=3, rounds=60, budget_seconds=6.0, seed=seed)
    return timings[1].median_round_ratio


def latency_plan(graph: Graph, analysis: ChannelAnalysis, groups: list[Group], scores: dict[int, np.ndarray],
                 target: float, limits: select.Limits, ctx: PassContext, result: PassResult, *,
                 fixed: dict[int, np.ndarray] | None = None, fixed_ids: set[int] | None = None) -> dict[int, np.ndarray]:
    """`fixed`: keep-sets of groups a ratio override settles (`fixed_ids` lists every overridden
    group, pruned or not); the planner chooses the other groups' widths."""
    fixed = fixed or {}
    fixed_widths = {g.id: len(fixed[g.id]) if g.id in fixed else g.size for g in groups if g.id in (fixed_ids or ())}
    table = LatencyTable(cache_path())
    layers = _layers(graph, analysis, groups)
    measure_layers(graph, layers, table, ctx)
    table.save()
    model = graph.to_model()
    shapes = graph.input_shapes
    feed = random_feeds(model, shapes, seed=ctx.seed)[0]
    (whole,) = interleave([("model", session_runner(model, feed, threads=ctx.threads))], warmup=3, rounds=30,
                          budget_seconds=4.0, seed=ctx.seed)
    total = whole.median
    layer_total = sum(ly.seconds[(1.0, 1.0)] for ly in layers)
    aim = target
    tried = []
    for attempt in range(MAX_ROUNDS):
        counts, saved = _greedy(layers, groups, scores, limits, budget=(1 - aim) * total, fixed=fixed_widths)
        plan = {g.id: select.choose(scores[g.id], counts[g.id], g.blocks) for g in groups
                if counts[g.id] < g.size and g.id not in fixed_widths}
        plan.update(fixed)
        predicted = 1 - saved / total
        trial = Graph(model, input_shapes=shapes)
        trial_analysis = ChannelAnalysis(trial)
        shrink(trial, trial_analysis, _translate(plan, analysis, trial_analysis))
        measured = _measure_ratio(model, trial.to_model(), shapes, ctx, seed=attempt)
        tried.append({"aim": round(aim, 4), "predicted": round(predicted, 4), "measured": round(measured, 4),
                      "groups_pruned": len(plan), "plan": plan})
        ctx.progress("prune: latency search", attempt + 1, MAX_ROUNDS)
        if abs(measured - target) <= TOLERANCE:
            break
        aim = min(0.99, max(0.05, aim * target / measured))
    best = min(tried, key=lambda t: abs(t["measured"] - target))
    result.details["latency"] = {
        "target": target, "model_seconds": total, "timed_layers": len(layers),
        "layers_share_of_model": round(layer_total / total, 3) if total else None,
        "layers_measured_now": table.measured, "cache": str(table.path),
        "attempts": [{k: v for k, v in t.items() if k != "plan"} for t in tried],
        "chosen": {k: v for k, v in best.items() if k != "plan"},
    }
    result.notes.append(f"target latency {target:.0%}: predicted {best['predicted']:.0%}, measured "
                        f"{best['measured']:.0%} of the original (median of interleaved runs; "
                        f"{len(tried)} plan(s), {table.measured} layer timings measured, the rest cached)")
    return best["plan"]

