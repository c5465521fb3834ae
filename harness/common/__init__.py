"""Pieces every stage of the harness shares (imports nothing heavy)."""
