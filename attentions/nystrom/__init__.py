"""`nystrom`: Nyströmformer attention (Xiong et al. 2021), non-causal."""
