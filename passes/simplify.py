"""Run onnxsim (constant folding, shape-driven simplification) as a pass, under onnxopt's own
verification. onnxsim's own check is left off: the pipeline compares outputs after every pass."""
from __future__ import annotations

import collections
import dataclasses

from onnxopt.errors import first_line
from onnxopt.graph.core import Graph
from onnxopt.pipeline.contract import Pass, PassContext, PassResult
from onnxopt.pipeline.options import option
from onnxopt.pipeline.registry import register_pass


def _resolve_castlike(graph: Graph) -> int:
    """CastLike(c, x) where x's dtype is known is Cast(c, to=dtype): it reads x only for its type.
    Exporters emit it for biases built at run time (torch's dynamo exporter with optimize=False);
    rewritten as a Cast of a constant, onnxsim folds the whole bias into a constant."""
    count = 0
    for node in graph.nodes("CastLike"):
        dtype = graph.dtype(node.input(1))
        if not dtype or graph.constant(node.input(0)) is None:
            continue
        out = node.outputs[0]
        graph.remove(node, safe=False)
        graph.add_node("Cast", [node.input(0)], [out], name=node.name or None, to=dtype)
        count += 1
    return count


def _computation(model) -> list[bytes]:
    """What determines the model's outputs: nodes, constants and the graph's interface."""
    g = model.graph
    return [x.SerializeToString(deterministic=True) for field in (g.node, g.initializer, g.input, g.output)
            for x in field]


@register_pass
class Simplify(Pass):
    name = "simplify"
    summary = "onnxsim: constant folding and shape simplification (verified like every exact pass)"
    exact = True
    stage = 95

    @dataclasses.dataclass(frozen=True)
    class Options:
        fuse_bn: bool = option(False, "let onnxsim fuse BN too (fold-bn does it numerically and reports it)")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        import onnxsim  # imported here: it is slow to import and only this pass needs it

        result = PassResult()
        resolved = _resolve_castlike(graph)
        model = graph.to_model()
        try:
            simplified, ok = onnxsim.simplify(model, check_n=0, skip_fuse_bn=not self.options.fuse_bn)
        except Exception as exc:  # noqa: BLE001 - onnxsim raises many types, all mean "no result"
            result.skip("model", f"onnxsim failed: {first_line(exc, 200)}")
            return result
        if not ok:
            result.skip("model", "onnxsim reported its result invalid")
            return result
        if _computation(simplified) == _computation(model) and not resolved:
            return result  # onnxsim only annotated shapes (value_info): nothing to apply
        before = collections.Counter(n.op_type for n in model.graph.node)
        after = collections.Counter(n.op_type for n in simplified.graph.node)
        graph.reset(simplified)
        result.count("nodes_removed", sum(before.values()) - sum(after.values()))
        if resolved:
            result.count("castlike_resolved", resolved)
        for op in sorted(set(before) | set(after)):
            if before[op] != after[op]:
                result.notes.append(f"{op}: {before[op]} -> {after[op]}")
        result.changed = True
        return result
