"""Triton Inference Server: the embedded process, the model repository, the backend model, the client."""
