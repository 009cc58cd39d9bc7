"""The GamePipeline server: stores pipelines, hands them to agents, tracks their state.

One process serves two faces: gRPC (``grpc_service``) for the agents on the GameNodes and
an HTTP API (``api``) for the platform. Both share the ``Store`` (SQLite) and the
``Dispatcher``, which decides which node runs which pipeline. ``app`` starts and stops
the lot.
"""
