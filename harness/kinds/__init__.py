"""Built-in benchmark kinds, registered lazily (see `harness.plugins.kinds` for the contract).

`kernel` is the harness's own per-case pipeline (`harness.kinds.kernel.steps`); kinds that measure
something else (a model with its attention swapped, a trained task) get a module here.
"""

from harness.plugins.kinds import KINDS

KINDS.register("kernel", "harness.kinds.kernel.kind:KernelKind")
KINDS.register("mqar", "harness.kinds.mqar.kind:MQARKind")
KINDS.register("e2e", "harness.kinds.e2e.kind:E2EKind")
