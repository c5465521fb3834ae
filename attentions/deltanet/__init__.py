"""`deltanet`: the delta rule (DeltaNet) and its gated form (Gated DeltaNet), a recurrent mixer."""
