"""Registers the built-in input sources, lazily (importing this module imports no source)."""

from __future__ import annotations

from harness.inputs import SOURCES

SOURCES.register("gaussian", "harness.inputs.gaussian:GaussianSource")
SOURCES.register("peaked", "harness.inputs.peaked:PeakedSource")
SOURCES.register("clustered", "harness.inputs.clustered:ClusteredSource")
SOURCES.register("local", "harness.inputs.local:LocalSource")
SOURCES.register("captured", "harness.inputs.captured:CapturedSource")
