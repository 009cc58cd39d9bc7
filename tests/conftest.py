"""Settings every test process needs before anything imports gRPC."""

import os

# Tests run agents in-process and fork ansible-playbook beside live gRPC threads; see
# gamepipeline/agent/__init__.py for why gRPC's fork handlers must stay off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
