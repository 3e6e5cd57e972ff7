"""The Open Inference Protocol (KServe "v2") beside the service's own routes, over HTTP and gRPC.

- ``tensors``: the wire forms of a tensor (JSON ``data``, the binary tensor data extension with
  ``Inference-Header-Content-Length``, length-prefixed BYTES), parsed with every size checked before allocation;
- ``models``: the three v2 models (``encode``, ``decode``, ``embed``), their metadata, and one ``infer`` shared
  by both transports (inputs checked against the model, then the batcher, as the routes do);
- ``status``: the one mapping from the service's error table to the v2 error shape and to gRPC status codes;
- ``http``: the FastAPI router (``/v2/...``);
- ``grpc_server``: ``inference.GRPCInferenceService`` on ``grpc.aio`` in the app's event loop, with the
  message definitions that ``tritonclient[grpc]`` ships (``tritonclient.grpc.service_pb2``);
- ``load``: a small v2 load generator (HTTP and gRPC) for ``evotok bench service``.
"""
