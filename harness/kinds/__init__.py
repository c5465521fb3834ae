"""Built-in benchmark kinds, registered lazily (see `harness.plugins.kinds` for the contract).

`kernel` is the harness's own per-case pipeline (`harness.execute.pipeline`); kinds that measure
something else (a model with its attention swapped, a trained task) get a module here.
"""

from harness.plugins.kinds import KINDS

KINDS.register("kernel", "harness.execute.pipeline:KernelKind")
