"""The agent's configuration."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from gamepipeline import wire
from gamepipeline.agent.policy import NodePolicy

DEFAULT_HEARTBEAT_SECONDS = float(wire.HEARTBEAT_INTERVAL_SECONDS)
"""Heartbeat interval until the server names its own in ``RegistrationAccepted``."""

DEFAULT_CAPACITY = 4


@dataclass(frozen=True)
class AgentConfig:
    """What one agent needs to know to serve its GameNode.

    Attributes:
        server_address: the server's gRPC ``HOST:PORT``.
        node_id: this node's id, unique in the fleet.
        hostname: reported at registration; the machine's host name by default.
        labels: reported at registration; the server matches node selectors on them.
        capacity: how many pipelines run at once; more are refused when offered.
        work_dir: private run dirs and the report journal live here.
        envs: node-local env values; they win over the values given at submission.
        heartbeat_interval: seconds between heartbeats until the server names its own.
        token: this node's token, sent with every call; None when the server takes
            agents without one (a loopback test server).
        tls: talk TLS to the server and verify its certificate (against ``tls_ca``,
            or the system's roots when that is None).
        tls_ca: PEM bytes of the CA that signed the server's certificate.
        tls_cert, tls_key: PEM bytes of this agent's certificate and key, for a server
            that asks for mutual TLS.
        tls_server_name: the name the server's certificate must carry, when it is not
            the host of ``server_address``.
        policy: what steps may ask of this node (mounts, devices, privileges).
        spare: keep one ansible-playbook started ahead of the next pipeline (see
            ``spare``); off, every run starts its own when it begins.
        mitogen: run modules through Mitogen, in one interpreter per playbook that a
            spare warms up while it waits; off, every module starts its own Python
            (about 0.3 s more per step).
    """

    server_address: str
    node_id: str
    hostname: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    capacity: int = DEFAULT_CAPACITY
    work_dir: Path = Path("/var/lib/gamepipeline-agent")
    envs: dict[str, str] = field(default_factory=dict)
    heartbeat_interval: float = DEFAULT_HEARTBEAT_SECONDS
    token: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: bytes | None = field(default=None, repr=False)
    tls_cert: bytes | None = field(default=None, repr=False)
    tls_key: bytes | None = field(default=None, repr=False)
    tls_server_name: str | None = None
    policy: NodePolicy = field(default_factory=NodePolicy)
    spare: bool = True
    mitogen: bool = True

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id is empty; give each GameNode a unique id")
        problem = wire.node_id_problem(self.node_id)
        if problem:
            raise ValueError(f"node_id: {problem}")
        if self.capacity < 1:
            raise ValueError(f"capacity {self.capacity} is below 1")
        if self.heartbeat_interval <= 0:
            raise ValueError(
                f"heartbeat_interval {self.heartbeat_interval} is not positive"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "give both the agent's TLS certificate and its key, or neither"
            )
        if not self.tls and (self.tls_ca or self.tls_cert or self.tls_server_name):
            raise ValueError(
                "TLS files were given but TLS is off; turn on tls or drop the files"
            )

    @property
    def runs_dir(self) -> Path:
        return Path(self.work_dir) / "runs"

    @property
    def spares_dir(self) -> Path:
        return Path(self.work_dir) / "spares"

    @property
    def active_dir(self) -> Path:
        return Path(self.work_dir) / "active"

    @property
    def journal_dir(self) -> Path:
        return Path(self.work_dir) / "journal"
