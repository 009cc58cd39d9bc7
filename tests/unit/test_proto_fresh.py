"""The generated gRPC code checked in under gamepipeline/proto/ matches proto/."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "gamepipeline" / "proto"


def test_checked_in_proto_code_is_regenerated_from_the_contract(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    subprocess.run(
        [str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    fresh = sorted((tmp_path / "gamepipeline" / "proto").iterdir())
    assert [p.name for p in fresh] == [
        "gamepipeline_pb2.py",
        "gamepipeline_pb2.pyi",
        "gamepipeline_pb2_grpc.py",
        "gamepipeline_pb2_grpc.pyi",
    ]
    for path in fresh:
        checked_in = GENERATED / path.name
        assert checked_in.read_text() == path.read_text(), (
            f"{checked_in.relative_to(ROOT)} is stale: run `make proto` and commit"
        )
