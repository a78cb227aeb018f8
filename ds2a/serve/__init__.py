"""Serving ds2a models to many stations from one GPU server on NVIDIA Triton Inference Server.

`ds2a serve` (server.py, PyTriton) hosts a model through our own runtime; `ds2a export-triton`
(repository.py) writes a model repository for the stock Triton container; stations reach
either with `--model triton://HOST:PORT/NAME` (ds2a/runtime/triton_backend.py). protocol.py is
what both sides agree on. Nothing here imports PyTriton, tritonclient or torch at import time.
"""
