"""The ``gamepipeline`` command: server, agent, and the template author's tools."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from gamepipeline import __version__


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """Turn repeated ``K=V`` options into a mapping, naming the option on a bad one."""
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        result[key] = value
    return result


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group()
@click.version_option(__version__, prog_name="gamepipeline")
def main() -> None:
    """Turn pipeline templates into running game containers on GameNodes."""


@main.command()
@click.option("--grpc", "grpc_address", default="0.0.0.0:50051", show_default=True,
              help="Address agents connect to (HOST:PORT; port 0 picks a free one).")
@click.option("--http", "http_address", default="0.0.0.0:8080", show_default=True,
              help="Address of the HTTP API (HOST:PORT; port 0 picks a free one).")
@click.option("--db", "db_path", default="gamepipeline.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite database file.")
@click.option("--port-file", type=click.Path(dir_okay=False),
              help='Write {"grpc": PORT, "http": PORT} here once both listen.')
@click.option("--log-level", default="info", show_default=True)
def server(
    grpc_address: str,
    http_address: str,
    db_path: str,
    port_file: str | None,
    log_level: str,
) -> None:
    """Run the server: gRPC for agents, HTTP for the platform."""
    from gamepipeline.server.app import serve

    _setup_logging(log_level)
    serve(
        db_path=db_path,
        grpc_address=grpc_address,
        http_address=http_address,
        port_file=port_file,
    )


@main.command()
@click.option("--server", "server_address", required=True, help="Server's gRPC HOST:PORT.")
@click.option("--node-id", required=True, help="This GameNode's id in the fleet.")
@click.option("--capacity", default=4, show_default=True, type=click.IntRange(1),
              help="Pipelines run at once.")
@click.option("--label", "labels", multiple=True, help="Node label KEY=VALUE (repeatable).")
@click.option("--env", "envs", multiple=True,
              help="Node-local env KEY=VALUE; wins over submitted values (repeatable).")
@click.option("--work-dir", default="/var/lib/gamepipeline-agent", show_default=True,
              type=click.Path(file_okay=False), help="Where private run dirs are made.")
@click.option("--log-level", default="info", show_default=True)
def agent(
    server_address: str,
    node_id: str,
    capacity: int,
    labels: tuple[str, ...],
    envs: tuple[str, ...],
    work_dir: str,
    log_level: str,
) -> None:
    """Run the agent of one GameNode."""
    from gamepipeline.agent.app import AgentConfig, run_agent

    _setup_logging(log_level)
    config = AgentConfig(
        server_address=server_address,
        node_id=node_id,
        capacity=capacity,
        labels=_pairs(labels, "--label"),
        envs=_pairs(envs, "--env"),
        work_dir=Path(work_dir),
    )
    run_agent(config)


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
                click.echo(f"{name}:{problem.path}: {problem.message}")
            failed = True
    sys.exit(1 if failed else 0)


@main.command("compile")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--arg", "args", multiple=True, help="Arg KEY=VALUE (repeatable).")
@click.option("--env", "envs", multiple=True, help="Env KEY=VALUE (repeatable).")
@click.option("--pipeline-id", default="compiled", show_default=True)
def compile_(file: str, args: tuple[str, ...], envs: tuple[str, ...], pipeline_id: str) -> None:
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
        for problem in err.problems:
            click.echo(f"{file}:{problem.path}: {problem.message}", err=True)
        sys.exit(1)
    click.echo(render_playbook(compile_playbook(bound, pipeline_id=pipeline_id)), nl=False)


@main.command()
def schema() -> None:
    """Print the JSON Schema of pipeline documents."""
    from gamepipeline.pipeline import json_schema

    click.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))
