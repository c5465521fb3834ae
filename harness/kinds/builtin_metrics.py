"""Registers the metrics of the built-in kinds by name, so a lookup by name (a report column, a
compare gate) finds them without loading the kinds themselves (no torch import)."""

from harness.kinds.e2e.metrics import E2E
from harness.kinds.kernel.metrics import KERNEL
from harness.kinds.mqar.metrics import MQAR
from harness.plugins.metrics import register_metric

for _m in KERNEL + MQAR + E2E:
    register_metric(_m)
