"""EvoTok Serve: the EvoTok unified image tokenizer (arXiv 2603.12108) as a model, engines and a service.

Subpackages (each maps onto a top-level folder of the repository):

- ``evotok.model``   PyTorch model, checkpoints, converter; ``evotok.model.train`` training and evaluation.
- ``evotok.export``  ONNX / TensorRT export, parity checks and the ``Runtime`` interface with its backends.
- ``evotok.service`` FastAPI app, in-process and Redis Streams batching, inference worker, metrics.
- ``evotok.client``  sync and async HTTP clients.
"""

from __future__ import annotations

__version__ = "0.1.0"
