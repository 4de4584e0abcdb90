"""Accuracy control: keep the drop within a budget by returning the most sensitive layers to float.

As NNCF's quantize_with_accuracy_control: measure the metric of the float and the quantized model;
if the drop exceeds max-drop, rank the quantized ops by how much the output recovers when that op
alone stays float, then return them to float in that order, measuring after each, until the drop is
within budget. The metric is the user's (an evaluate function, or accuracy on --eval data with
labels), else agreement with the float model on held-back calibration samples (top-1 agreement for
a classifier's output, else the cosine of what the input decides: runtime.fidelity.agreement).
"""
from __future__ import annotations

from collections.abc import Callable

import onnx

from onnxopt.errors import BadData
from onnxopt.graph.core import Graph
from onnxopt.pipeline.contract import PassContext, PassResult
from onnxopt.runtime.fidelity import agreement, agreement_measure, compare, cosine_agreement, top1
from onnxopt.runtime.sessions import Feed, make_session, run_feeds

MAX_RETURNED = 64


def _outputs(model: onnx.ModelProto, feeds, threads: int) -> list[Feed]:
    return run_feeds(make_session(model.SerializeToString(), optimization="all", threads=threads), list(feeds))


def _metric(p, reference_model: onnx.ModelProto, held: list[Feed], ctx: PassContext) -> tuple[Callable[[onnx.ModelProto], float], str]:
    if p.evaluate is not None:
        return (lambda m: float(p.evaluate(m))), "your evaluate function"
    data = ctx.evaluation
    if data is not None and getattr(data, "labels", None) is not None:
        feeds = list(data)

        def accuracy(m: onnx.ModelProto) -> float:
            outputs = _outputs(m, feeds, ctx.threads)  # its errors are the model's, not top-1's
            try:
                return top1(outputs, data.labels, fed=len(feeds) * data.batch)
            except ValueError as exc:
                raise BadData(f"quantize: max-drop on --eval {data.source}: {exc} (without --eval it judges by agreement with float on held-back calibration samples)") from None
        return accuracy, f"top-1 accuracy on {data.samples} labelled --eval samples"
    if not held:
        raise BadData("quantize: max-drop needs held-back calibration samples (holdback > 0, and --calib) "
                      "or --eval labelled data")
    reference = _outputs(reference_model, held, ctx.threads)

    def agreement_with_float(m: onnx.ModelProto) -> float:
        return agreement(reference, _outputs(m, held, ctx.threads))[1]
    return agreement_with_float, (f"{agreement_measure(reference)} with the float model on {len(held)} held-back "
                                  "calibration samples")


def control(p, builder, reference_model: onnx.ModelProto, float_keys: set[str], held: list[Feed], ctx: PassContext,
            result: PassResult) -> set[str]:
    """The float keys to build with; `reference_model` is the float model the drop is measured from."""
    o = p.options
    metric, what = _metric(p, reference_model, held, ctx)
    base = metric(reference_model)
    model, _, _ = builder.build(float_keys)
    score = metric(model)
    # candidates from an untouched copy: build() renames what it rewrites (a folded Relu's output
    # moves to the op before it), and keys must name nodes as the float model does
    plan = builder.plan(Graph(builder.float_model, input_shapes=builder.shapes), float_keys)
    steps = [{"returned": None, "metric": score}]
    report = {"metric": what, "float": base, "quantized": score, "max_drop": o.max_drop, "steps": steps,
              "returned": []}
    result.details["accuracy_control"] = report
    if base - score <= o.max_drop:
        result.notes.append(f"accuracy control: {what}: float {base:.4f}, int8 {score:.4f} (drop {base - score:.4f} "
                            f"within max-drop {o.max_drop:g}); nothing returned to float")
        return float_keys
    ranking = held[:32] if held else []
    reference = _outputs(reference_model, ranking, ctx.threads) if ranking else None
    candidates = [u for u in plan.units.values() if u.kind != "pass-through"]
    sensitivity: dict[str, float] = {}
    for i, u in enumerate(candidates):
        ctx.progress("quantize: ranking layers", i, len(candidates))
        key = u.node.outputs[0]
        trial, _, _ = builder.build(float_keys | {key})
        if reference is not None:
            sensitivity[key] = cosine_agreement(compare(reference, _outputs(trial, ranking, ctx.threads)))[1]
        else:
            sensitivity[key] = metric(trial)
    order = sorted(sensitivity, key=lambda k: -sensitivity[k])
    labels = {u.node.outputs[0]: u.node.label for u in candidates}
    keys = set(float_keys)
    for key in order[:MAX_RETURNED]:
        keys.add(key)
        model, _, _ = builder.build(keys)
        score = metric(model)
        steps.append({"returned": labels[key], "metric": score})
        report["returned"].append(labels[key])
        result.skip(labels[key], f"returned to float by accuracy control ({what}: {score:.4f} with it float)")
        if base - score <= o.max_drop:
            break
    report["quantized"] = score
    within = base - score <= o.max_drop
    result.notes.append(f"accuracy control: {what}: float {base:.4f}, int8 {steps[0]['metric']:.4f} -> {score:.4f} "
                        f"after returning {len(report['returned'])} ops to float"
                        + ("" if within else f"; warning: still {base - score:.4f} below float, over max-drop "
                                             f"{o.max_drop:g}"))
    return keys
