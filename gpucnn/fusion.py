"""The ReLU fusion plan of a graph: which ReLUs move their backward (and sometimes forward) into their consumer.

A ReLU's producer is a ReLU layer or a Conv2D/Dense with activation='relu'. When its output feeds
exactly one layer, and that layer is a Conv2D or a MaxPool2D, the ReLU's work moves into the consumer:
- Conv2D consumer: the ReLU mask is applied in its data-gradient epilogue (backward input_relu=True);
  the producer then skips its own mask (backward relu_done=True).
- MaxPool2D consumer: the mask is applied to the pooled gradient; a ReLU *layer* before the pool also
  moves its forward into the pool (relu_max_pool2d): the ReLU runs with deferred=True, the pool with
  input_relu=True.
Gradients are the same as unfused, to rounding. The graph runner (gpucnn.graph.Network) asks for the
plan once and passes each layer the flags below; this module knows layers and nodes, nothing above.
"""
from __future__ import annotations

from .layers import Conv2D, Dense, MaxPool2D, Node, ReLU

Plan = dict  # {id(consumer node): (consumer node, producer node)}


def relu_fusions(nodes: list[Node], input_node: Node, output_node: Node) -> Plan:
    """The plan for a graph given as its nodes in topological order (input first)."""
    uses: dict[int, int] = {}
    for node in nodes[1:]:
        for parent in node.inbound:
            uses[id(parent)] = uses.get(id(parent), 0) + 1
    plan = {}
    for node in nodes[1:]:
        if not isinstance(node.layer, (Conv2D, MaxPool2D)) or len(node.inbound) != 1:
            continue
        parent = node.inbound[0]
        if parent is input_node or parent is output_node or uses[id(parent)] != 1:
            continue
        p = parent.layer
        if isinstance(p, ReLU) or (isinstance(p, (Conv2D, Dense)) and p.activation == "relu"):
            plan[id(node)] = (node, parent)
    return plan


def deferred_relus(plan: Plan) -> set[int]:
    """ids of the ReLU-layer nodes whose forward moves into the max pool after them."""
    return {id(p) for c, p in plan.values() if isinstance(p.layer, ReLU) and isinstance(c.layer, MaxPool2D)}


def forward_flags(node: Node, deferred: set[int]) -> dict:
    """The keyword flags node's layer.forward takes under the plan (deferred_relus(plan))."""
    if id(node) in deferred:
        return {"deferred": True}
    if node.inbound and id(node.inbound[0]) in deferred:
        return {"input_relu": True}
    return {}


def backward_flags(node: Node, plan: Plan, relu_done: set[int]) -> dict:
    """The keyword flags node's layer.backward takes under the plan; relu_done = {id(p) for _, p in plan.values()}.

    A consumer applies its input's ReLU mask (input_relu); that ReLU's producer then skips it (relu_done).
    """
    flags = {"input_relu": True} if id(node) in plan else {}
    if id(node) in relu_done:
        flags["relu_done"] = True
    return flags
