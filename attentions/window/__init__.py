"""`window`: exact softmax attention over a sliding window of keys (local attention)."""
