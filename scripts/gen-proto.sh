#!/usr/bin/env bash
# Regenerates gamepipeline/proto/ from proto/gamepipeline.proto (code and .pyi stubs).
# Run through `make proto`; tests/unit/test_proto_fresh.py fails when the checked-in code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
python -m grpc_tools.protoc \
  -Igamepipeline/proto=proto \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/gamepipeline.proto
