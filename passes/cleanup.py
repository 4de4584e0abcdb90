"""Remove what does not contribute to the outputs: dead nodes, Identity and inference-mode Dropout,
unused constants and unused graph inputs (the same clean-up onnxoptimizer's eliminate_deadend,
eliminate_identity and eliminate_unused_initializer do)."""
from __future__ import annotations

import dataclasses

from onnxopt.graph.core import Graph, Node
from onnxopt.pipeline.contract import Pass, PassContext, PassResult
from onnxopt.pipeline.options import option
from onnxopt.pipeline.registry import register_pass


def _is_passthrough(graph: Graph, node: Node) -> bool:
    """Identity, or a Dropout that is a no-op at inference and whose mask nobody reads."""
    if node.op == "Identity" and node.domain in ("", "ai.onnx"):
        return True
    if node.op != "Dropout" or node.domain not in ("", "ai.onnx"):
        return False
    if any(graph.is_used(t) for t in node.outputs[1:] if t):
        return False
    training = node.input(2)
    if training:
        value = graph.constant(training)
        return value is not None and not bool(value.reshape(-1)[0])
    return True  # opset >= 7 Dropout without a training_mode input is the identity at inference


@register_pass
class Cleanup(Pass):
    name = "cleanup"
    summary = "remove dead nodes, Identity, inference Dropout, unused constants and unused graph inputs"
    exact = True
    stage = 90

    @dataclasses.dataclass(frozen=True)
    class Options:
        inputs: bool = option(True, "also remove graph inputs that nothing reads")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        for node in graph.nodes():
            if node.alive and _is_passthrough(graph, node):
                if graph.is_graph_output(node.outputs[0]) and not graph.is_private_output(node.input(0)):
                    continue  # it gives a graph output its name; removing it would only move it
                graph.bypass(node)
                result.count(f"{node.op.lower()}_removed")
        for node in reversed(graph.topological_nodes()):
            if any(graph.is_used(t) for t in node.outputs if t):
                continue
            if node.domain not in ("", "ai.onnx"):
                result.skip(node, "dead, but a custom-domain op may have side effects; kept")
                continue
            graph.remove(node)
            result.count("dead_nodes_removed")
        for name in graph.constant_names():
            if not graph.is_used(name):
                graph.remove_constant(name)
                result.count("constants_removed")
        if self.options.inputs:
            for name in graph.input_names:
                if not graph.is_used(name):
                    graph.remove_graph_input(name)
                    result.count("inputs_removed")
                    result.notes.append(f"removed unused graph input '{name}': the model's interface changed "
                                        "(cleanup:inputs=false keeps it)")
        result.changed = any(result.stats.values())
        return result
