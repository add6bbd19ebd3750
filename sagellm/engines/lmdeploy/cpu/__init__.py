"""The CPU device for LMDeploy's PyTorch engine: device module, op backend, paged attention adapter."""
