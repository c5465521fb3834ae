"""`softmax`: exact attention in plain PyTorch (materializes the N x N score matrix)."""
