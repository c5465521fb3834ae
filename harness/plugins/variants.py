"""The registry of attention variants.

Built-in variants register lazily in `attentions/__init__.py`; a third-party package adds its
own through the entry-point group ``attnbench.variants`` (value ``"module:Class"``).
"""

from __future__ import annotations

from harness.plugins.contract import AttentionVariant
from harness.plugins.registry import Registry

VARIANTS: Registry[type[AttentionVariant]] = Registry(
    "variant", group="attnbench.variants", builtins="attentions", base=AttentionVariant
)
