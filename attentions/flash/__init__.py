"""`flash`: FlashAttention (exact, IO-aware) through SDPA's flash backend, flash_attn or xformers."""
