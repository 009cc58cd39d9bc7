"""The ``gamepipeline`` command: server, agent, the template author's tools, and the
operator's commands that talk to a server (``cli_api``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gamepipeline import __version__
from gamepipeline.cli_api import COMMANDS, global_api_options
from gamepipeline.logs import FORMATS, setup_logging
from gamepipeline.terminal import printable


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """Turn repeated ``K=V`` options into a mapping, naming the option on a bad one."""
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        result[key] = value
    return result


log_format_option = click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text for people; json writes one object a line with the pipeline, step "
    "and node ids.",
)


@click.group()
@click.version_option(__version__, prog_name="gamepipeline")
@global_api_options
def main(server_url: str, token: str | None) -> None:
    """Turn pipeline templates into running game containers on GameNodes.

    --server-url and --token serve the commands that talk to a server (submit,
    status, list, cancel, nodes, node, logs); each of those also takes them after
    its name.
    """


for _command in COMMANDS:
    main.add_command(_command)


def _config_file(path: str | None, known: frozenset[str]) -> dict[str, Any]:
    """Read a YAML configuration file; every key must be one the command knows."""
    if path is None:
        return {}
    from gamepipeline.pipeline import ConfigError, parse_config

    try:
        data = parse_config(Path(path).read_bytes(), source=path)
    except OSError as err:
        raise click.BadParameter(f"cannot read {path}: {err.strerror}") from None
    except ConfigError as err:
        raise click.BadParameter(str(err)) from None
    unknown = sorted(set(data) - known)
    if unknown:
        raise click.BadParameter(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return data


def _number(value: Any, key: str, source: str | None, kind: type[Any]) -> Any:
    """A config file's number setting; anything else is refused naming file and key."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise click.BadParameter(f"{source}: {key}: {value!r} is not a number")
    if kind is int and not isinstance(value, int):
        raise click.BadParameter(f"{source}: {key}: {value!r} is not a whole number")
    return kind(value)


def _scalar(value: Any) -> str:
    """A config file's scalar as the text it was written as (``010`` stays 010)."""
    from gamepipeline.pipeline.grammar import scalar_text

    try:
        return scalar_text(value)
    except ValueError:
        return str(value)


def _mapping(value: Any, where: str, source: str | None = None) -> dict[str, str]:
    """A config file's mapping of text values, each as it was written."""
    from gamepipeline.pipeline.grammar import scalar_text

    prefix = f"{source}: " if source else ""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise click.BadParameter(f"{prefix}{where} must be a mapping of KEY: VALUE")
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise click.BadParameter(
                f"{prefix}{where}: the key {key!r} is not text; quote it"
            )
        if item is None:
            raise click.BadParameter(
                f'{prefix}{where}.{key} has no value; write {key}: "" for an empty one'
            )
        try:
            result[key] = scalar_text(item)
        except ValueError as err:
            raise click.BadParameter(f"{prefix}{where}.{key}: {err}") from None
    return result


SERVER_SETTINGS = frozenset(
    {"grpc", "http", "db", "envs", "templates_dir", "offline_after", "node_lost_after",
     "agents", "api_tokens", "tls", "insecure"}
)  # fmt: skip
AGENT_SETTINGS = frozenset(
    {"server", "node_id", "hostname", "capacity", "labels", "envs", "work_dir",
     "heartbeat_interval", "token", "token_file", "tls", "policy", "spare",
     "mitogen"}
)  # fmt: skip
AGENT_TLS_SETTINGS = frozenset({"ca", "cert", "key", "server_name"})


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML file with grpc, http, db, envs (env values submissions may leave "
    "out) and templates_dir; options given here win.",
)
@click.option(
    "--grpc",
    "grpc_address",
    help="Address agents connect to, HOST:PORT (port 0 picks a free one). "
    "[default: 0.0.0.0:50051]",
)
@click.option(
    "--http",
    "http_address",
    help="Address of the HTTP API, HOST:PORT (port 0 picks a free one). "
    "[default: 0.0.0.0:8080]",
)
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False),
    help="SQLite database file. [default: gamepipeline.db]",
)
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False),
    help='Write {"grpc": PORT, "http": PORT} here once both listen.',
)
@click.option(
    "--templates-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Folder of the templates served by name. [default: pipelines/ of a checkout]",
)
@click.option(
    "--env",
    "envs",
    multiple=True,
    help="Env KEY=VALUE that submissions may leave out (repeatable).",
)
@click.option(
    "--offline-after",
    type=click.FloatRange(min=1),
    help="Seconds without a heartbeat before a node is marked offline; agents are "
    "told to beat three times as often. [default: 30]",
)
@click.option(
    "--node-lost-after",
    type=click.FloatRange(min=0),
    help="Seconds a node may stay offline before its running pipelines fail with "
    "the reason node_lost. [default: 300]",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve without tokens on a non-loopback address (agents, api_tokens unset).",
)
@click.option("--log-level", default="info", show_default=True)
@log_format_option
def server(
    config_path: str | None,
    grpc_address: str | None,
    http_address: str | None,
    db_path: str | None,
    port_file: str | None,
    offline_after: float | None,
    node_lost_after: float | None,
    templates_dir: str | None,
    envs: tuple[str, ...],
    insecure: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the server: gRPC for agents, HTTP for the platform.

    Security lives in the --config file: `agents` maps node ids to their token's
    hash, `api_tokens` maps caller names to {sha256, scopes: [read, write]}, `tls`
    names {cert, key, client_ca} for the gRPC port. `gamepipeline token` makes tokens.
    """
    from gamepipeline.server.app import StartupError, serve
    from gamepipeline.server.dispatcher import NODE_LOST_AFTER_SECONDS
    from gamepipeline.server.security import SecurityConfigError, load_security
    from gamepipeline.wire import NODE_OFFLINE_AFTER_SECONDS

    config = _config_file(config_path, SERVER_SETTINGS)
    base = Path(config_path).parent if config_path else Path.cwd()
    try:
        security = load_security(config, base=base, insecure=insecure)
    except SecurityConfigError as err:
        raise click.BadParameter(f"{config_path}: {err}") from None
    setup_logging(log_level, log_format)
    timings = {
        "offline_after_seconds": _seconds(
            offline_after, config, "offline_after", NODE_OFFLINE_AFTER_SECONDS, 1
        ),
        "node_lost_after_seconds": _seconds(
            node_lost_after, config, "node_lost_after", NODE_LOST_AFTER_SECONDS, 0
        ),
    }
    try:
        serve(
            db_path=db_path or config.get("db", "gamepipeline.db"),
            grpc_address=grpc_address or config.get("grpc", "0.0.0.0:50051"),
            http_address=http_address or config.get("http", "0.0.0.0:8080"),
            port_file=port_file,
            **timings,
            templates_dir=templates_dir or config.get("templates_dir"),
            envs={
                **_mapping(config.get("envs"), "envs", config_path),
                **_pairs(envs, "--env"),
            },
            security=security,
        )
    except StartupError as err:
        click.echo(f"gamepipeline server: {err}", err=True)
        sys.exit(1)


def _seconds(
    given: float | None,
    config: dict[str, Any],
    key: str,
    default: float,
    least: float,
) -> float:
    """A duration in seconds from the option, else the config file, else the default."""
    if given is not None:
        return given
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
        raise click.BadParameter(
            f"{key} must be a number of seconds, at least {least:g}; got {value!r}"
        )
    return float(value)


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML file with server, node_id, capacity, labels, envs, work_dir; "
    "options given here win.",
)
@click.option("--server", "server_address", help="Server's gRPC HOST:PORT.")
@click.option("--node-id", help="This GameNode's id in the fleet.")
@click.option(
    "--capacity", type=click.IntRange(1), help="Pipelines run at once. [default: 4]"
)
@click.option(
    "--label", "labels", multiple=True, help="Node label KEY=VALUE (repeatable)."
)
@click.option(
    "--env",
    "envs",
    multiple=True,
    help="Node-local env KEY=VALUE; wins over submitted values (repeatable).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    help="Where private run dirs are made. [default: /var/lib/gamepipeline-agent]",
)
@click.option("--token", help="This node's token (prefer --token-file).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File holding this node's token (keep it mode 0600).",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False),
    help="Talk TLS to the server and verify it against this CA (PEM).",
)
@click.option("--log-level", default="info", show_default=True)
@log_format_option
def agent(
    config_path: str | None,
    server_address: str | None,
    node_id: str | None,
    capacity: int | None,
    labels: tuple[str, ...],
    envs: tuple[str, ...],
    work_dir: str | None,
    token: str | None,
    token_file: str | None,
    tls_ca: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the agent of one GameNode.

    The --config file may also hold `token` or `token_file`, `tls` ({ca, cert, key,
    server_name}, or true to verify against the system's roots) and `policy` (what
    steps may mount, pass and add; see gamepipeline/agent/policy.py), `spare`
    (false: keep no ansible-playbook started ahead of the next pipeline) and `mitogen`
    (false: every module starts its own Python instead of running in Mitogen's).
    """
    from gamepipeline.agent.app import AgentConfig, run_agent
    from gamepipeline.agent.connection import AgentError
    from gamepipeline.agent.policy import policy_from_settings

    config = _config_file(config_path, AGENT_SETTINGS)
    server_address = server_address or config.get("server")
    node_id = node_id or config.get("node_id")
    if not server_address:
        raise click.UsageError(
            "no server address: give --server or `server:` in --config"
        )
    if not node_id:
        raise click.UsageError("no node id: give --node-id or `node_id:` in --config")
    settings: dict[str, Any] = {}
    if "hostname" in config:
        settings["hostname"] = _scalar(config["hostname"])
    if "heartbeat_interval" in config:
        settings["heartbeat_interval"] = _number(
            config["heartbeat_interval"], "heartbeat_interval", config_path, float
        )
    for switch in ("spare", "mitogen"):
        if switch in config:
            if not isinstance(config[switch], bool):
                raise click.BadParameter(
                    f"{config_path}: {switch}: {config[switch]!r} is not true or false"
                )
            settings[switch] = config[switch]
    settings["token"] = _agent_token(token, token_file, config)
    settings.update(_agent_tls(tls_ca, config))
    try:
        settings["policy"] = policy_from_settings(config.get("policy"))
    except ValueError as err:
        raise click.BadParameter(f"{config_path}: {err}") from None
    setup_logging(log_level, log_format, static={"node_id": str(node_id)})
    try:
        agent_config = AgentConfig(
            server_address=_scalar(server_address),
            node_id=_scalar(node_id),
            capacity=capacity
            or int(_number(config.get("capacity", 4), "capacity", config_path, int)),
            labels={
                **_mapping(config.get("labels"), "labels", config_path),
                **_pairs(labels, "--label"),
            },
            envs={
                **_mapping(config.get("envs"), "envs", config_path),
                **_pairs(envs, "--env"),
            },
            work_dir=Path(
                work_dir or config.get("work_dir", "/var/lib/gamepipeline-agent")
            ),
            **settings,
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    try:
        run_agent(agent_config)
    except AgentError as err:
        click.echo(f"gamepipeline agent: {err}", err=True)
        sys.exit(1)


def _read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise click.BadParameter(
            f"cannot read {what} {path}: {err.strerror}; give a readable file"
        ) from None


def _agent_token(
    token: str | None, token_file: str | None, config: dict[str, Any]
) -> str | None:
    """The node's token: --token, --token-file, then the config's token/token_file."""
    if token:
        return token
    path = token_file or config.get("token_file")
    if path:
        text = _read_file(path, "the token file").decode().strip()
        if not text:
            raise click.BadParameter(f"the token file {path} is empty")
        return text
    value = config.get("token")
    return _scalar(value) if value else None


def _agent_tls(tls_ca: str | None, config: dict[str, Any]) -> dict[str, Any]:
    raw = config.get("tls")
    if raw is None or raw is False:
        raw = {}
    elif raw is True:
        raw = {"enabled": True}
    elif not isinstance(raw, dict) or set(raw) - AGENT_TLS_SETTINGS:
        raise click.BadParameter(
            "tls must be true or a mapping with some of "
            f"{', '.join(sorted(AGENT_TLS_SETTINGS))}"
        )
    ca = tls_ca or raw.get("ca")
    settings: dict[str, Any] = {"tls": bool(raw) or ca is not None}
    if ca:
        settings["tls_ca"] = _read_file(ca, "the TLS CA")
    if raw.get("cert") or raw.get("key"):
        settings["tls_cert"] = _read_file(raw.get("cert", ""), "tls.cert")
        settings["tls_key"] = _read_file(raw.get("key", ""), "tls.key")
    if raw.get("server_name"):
        settings["tls_server_name"] = str(raw["server_name"])
    return settings


@main.command()
def token() -> None:
    """Print a new random token and the hash the server's configuration holds."""
    from gamepipeline.server.security import hash_token, new_token

    value = new_token()
    click.echo(f"token: {value}")
    click.echo(f"sha256: {hash_token(value)}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(files: tuple[str, ...]) -> None:
    """Check templates; print FILE:PATH: message for each problem."""
    from gamepipeline.pipeline import ValidationError, load_template, parse_document

    failed = False
    for name in files:
        try:
            load_template(parse_document(Path(name).read_bytes(), source=name))
        except OSError as err:
            click.echo(f"{name}: cannot read: {err.strerror}", err=True)
            failed = True
        except ValidationError as err:
            for problem in err.problems:
                # A problem with the whole document is placed at the file itself.
                where = "" if problem.path in ("", name) else f":{problem.path}"
                click.echo(f"{name}{printable(where)}: {printable(problem.message)}")
            failed = True
    sys.exit(1 if failed else 0)


@main.command("compile")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--arg", "args", multiple=True, help="Arg KEY=VALUE (repeatable).")
@click.option("--env", "envs", multiple=True, help="Env KEY=VALUE (repeatable).")
@click.option("--pipeline-id", default="compiled", show_default=True)
def compile_(
    file: str, args: tuple[str, ...], envs: tuple[str, ...], pipeline_id: str
) -> None:
    """Print the Ansible playbook a template compiles to."""
    from gamepipeline.pipeline import (
        ValidationError,
        bind,
        compile_playbook,
        load_template,
        parse_document,
        render_playbook,
    )

    try:
        template = load_template(parse_document(Path(file).read_bytes(), source=file))
        bound = bind(template, _pairs(args, "--arg"), _pairs(envs, "--env"))
    except ValidationError as err:
        options = {"args": "--arg", "envs": "--env"}
        for problem in err.problems:
            option = options.get(problem.path.partition(".")[0])
            hint = f" (with {option} NAME=VALUE)" if option else ""
            where = f"{file}:{printable(problem.path)}"
            click.echo(f"{where}: {printable(problem.message)}{hint}", err=True)
        sys.exit(1)
    click.echo(
        render_playbook(compile_playbook(bound, pipeline_id=pipeline_id)), nl=False
    )


@main.command()
def schema() -> None:
    """Print the JSON Schema of pipeline documents."""
    from gamepipeline.pipeline import json_schema

    click.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))
