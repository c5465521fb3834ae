"""Luna nested attention (`luna_nested`; Ma et al. 2021). Registered lazily in `attentions/__init__.py`."""
