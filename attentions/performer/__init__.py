"""`performer`: FAVOR+ positive orthogonal random features (Choromanski et al. 2021)."""
