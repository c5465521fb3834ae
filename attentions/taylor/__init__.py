"""`taylor`: linear attention with the second-order Taylor feature map of exp (Based, QT-ViT)."""
