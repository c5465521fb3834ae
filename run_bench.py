#!/usr/bin/env python3
"""attnbench entry point: `python run_bench.py scenarios/long.yaml` (see README.md)."""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
