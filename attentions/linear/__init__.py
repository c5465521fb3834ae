"""`linear`: kernelized linear attention with phi(x) = elu(x) + 1 (Katharopoulos et al. 2020)."""
