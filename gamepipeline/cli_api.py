"""The ``gamepipeline`` commands that talk to a running server over its HTTP API.

``submit``, ``status``, ``list``, ``cancel``, ``nodes``, ``node`` and ``logs``. Each takes
``--server-url`` and ``--token``, before the command (``gamepipeline --server-url URL
list``, ``global_api_options``) or after it; given after, they win. Without them the
environment's ``GAMEPIPELINE_URL`` and ``GAMEPIPELINE_TOKEN`` count, then the default
URL ``http://127.0.0.1:8080``. Each read command takes ``--output json`` for scripts.

``submit --wait`` follows the pipeline until it ends and exits with ``EXIT_CODES``:

====  ====================================================================
0     completed
1     failed (a step failed, its node was lost, the node rejected it)
2     wrong usage (click's own code)
3     canceled
4     timed out: the pipeline's own timeout ran out (reason ``timeout``)
5     still running when ``--wait-timeout`` passed; the pipeline goes on
6     the server could not be reached, or refused the request
====  ====================================================================
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gamepipeline.client import FINAL_STATES, ApiClient, ApiError
from gamepipeline.terminal import printable

EXIT_COMPLETED: Final = 0
EXIT_FAILED: Final = 1
EXIT_CANCELED: Final = 3
EXIT_TIMED_OUT: Final = 4
EXIT_STILL_RUNNING: Final = 5
EXIT_SERVER: Final = 6

DEFAULT_URL: Final = "http://127.0.0.1:8080"
#: ``list`` shows whole ids and timestamps from this terminal width on.
WIDE_COLUMNS: Final = 120
#: The characters of an id ``list`` shows below ``WIDE_COLUMNS``.
SHORT_ID: Final = 8
#: The commands that take a pipeline id take any start of one of the ``MAX_LIST``
#: newest pipelines' ids that is this long or longer and starts no other.
MIN_PREFIX: Final = 4
#: A pipeline id's length (a UUID's 32 hex digits).
FULL_ID: Final = 32
#: How many of the newest pipelines a short id is looked up among (the API's limit).
MAX_LIST: Final = 1000
#: How often ``--wait`` asks the server; a step takes a second at the very least.
POLL_SECONDS: Final = 0.5
STATE_STYLES: Final = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "canceled": "yellow",
    "skipped": "dim",
    "online": "green",
    "offline": "red",
    "maintenance": "yellow",
    "disabled": "magenta",
}

F = TypeVar("F", bound=Callable[..., Any])


class ServerProblem(click.ClickException):
    """The server could not be reached or answered with an error."""

    exit_code = EXIT_SERVER


def exit_code_of(pipeline: dict[str, Any]) -> int:
    """The exit code of ``submit --wait`` for a pipeline that ended."""
    if pipeline["state"] == "completed":
        return EXIT_COMPLETED
    if pipeline["state"] == "canceled":
        return EXIT_CANCELED
    if pipeline.get("reason") == "timeout":
        return EXIT_TIMED_OUT
    return EXIT_FAILED


URL_ENV: Final = "GAMEPIPELINE_URL"
TOKEN_ENV: Final = "GAMEPIPELINE_TOKEN"


def global_api_options(group: F) -> F:
    """``--server-url`` and ``--token`` on the ``gamepipeline`` group itself, for the
    commands here; the environment and the default URL are read at this level."""
    group = click.option(
        "--token",
        envvar=TOKEN_ENV,
        help=f"Bearer token for the API (the server commands). [env: {TOKEN_ENV}]",
    )(group)
    group = click.option(
        "--server-url",
        envvar=URL_ENV,
        default=DEFAULT_URL,
        show_default=True,
        help=f"The server's HTTP address (the server commands). [env: {URL_ENV}]",
    )(group)
    return group


def _inherited(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """An option given after the command; else the same option given before it (or
    its env var or default there); else the env var, then the default."""
    if value is not None:
        return value
    name = param.name or ""
    root = ctx.find_root()
    if root is not ctx and name in root.params:
        return root.params[name]
    # The command was called on its own, without the group (tests, embedding).
    env = URL_ENV if name == "server_url" else TOKEN_ENV
    return os.environ.get(env) or (DEFAULT_URL if name == "server_url" else None)


def api_options(command: F) -> F:
    """``--server-url`` and ``--token``, shared by every command here; each may also
    come before the command (``global_api_options``)."""
    command = click.option(
        "--token",
        callback=_inherited,
        help=f"Bearer token for the API. [env: {TOKEN_ENV}]",
    )(command)
    command = click.option(
        "--server-url",
        callback=_inherited,
        help=f"The server's HTTP address; may also come before the command. "
        f"[env: {URL_ENV}; default: {DEFAULT_URL}]",
    )(command)
    return command


def output_option(command: F) -> F:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="text for people, json for scripts.",
    )(command)


def _client(server_url: str, token: str | None) -> ApiClient:
    return ApiClient(server_url, token=token or None)


def _call(
    server_url: str, action: Callable[[], Any], not_found: str | None = None
) -> Any:
    """Run one API call, turning its failures into a sentence and exit code 6.

    ``not_found`` replaces the server's sentence for a 404: the server's points to
    its HTTP API, this one to the command that lists what was not found.
    """
    try:
        return action()
    except ApiError as err:
        raise ServerProblem(
            f"the server at {server_url} answered {_api_error_text(err, not_found)}"
        ) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise ServerProblem(
            f"cannot reach the server at {server_url}: {reason}; start it, or pass "
            "--server-url (or set GAMEPIPELINE_URL) to where it listens"
        ) from None


def _api_error_text(err: ApiError, not_found: str | None) -> str:
    """The server's error for a person at a shell: every problem on its own line
    with its path, and hints that name this command's options."""
    body = err.body if isinstance(err.body, dict) else {}
    sentence = printable(str(body.get("error") or err.body or ""), lines=True)
    if err.status == 404 and not_found:
        sentence = not_found
    elif err.status == 401:
        sentence = (
            f"{sentence.split(';')[0]}; pass an API token with --token or set "
            f"{TOKEN_ENV} (one with the read scope to look, write to change)"
        )
    problems = [p for p in body.get("problems") or [] if isinstance(p, dict)]
    if not problems:
        return f"HTTP {err.status}: {sentence}"
    lines = [
        printable(f"{p['path']}: {p['message']}" if p.get("path") else p["message"])
        for p in problems
    ]
    # The server's sentence is "summary: first problem (and N more)": keep the
    # summary, then every problem.
    summary = sentence
    if len(problems) > 1:
        summary = summary.removesuffix(f" (and {len(problems) - 1} more)")
    summary = summary.removesuffix(f": {lines[0]}")
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return f"HTTP {err.status}: {summary} ({count}):\n" + "\n".join(
        f"  {line}" for line in lines
    )


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(
                f"{item!r} is not KEY=VALUE; write for example {option} PORT=8080",
                param_hint=option,
            )
        result[key] = value
    return result


def _styled(state: str) -> Text:
    return Text(printable(state), style=STATE_STYLES.get(state, ""))


def _shown(value: Any, *, lines: bool = False) -> Text:
    """A string from the server as a table cell or a line: literal (no rich markup,
    ``[eu]`` stays), without escape sequences, its control characters visible."""
    return Text(printable(str(value), lines=lines))


def _when(stamp: str | None) -> str:
    if not stamp:
        return "-"
    return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: str | None, end: str | None) -> str:
    if not start:
        return "-"
    finish = datetime.fromisoformat(end) if end else datetime.now().astimezone()
    seconds = (finish - datetime.fromisoformat(start)).total_seconds()
    return f"{max(seconds, 0):.1f}s"


def steps_view(pipeline: dict[str, Any]) -> Group:
    """``status`` and ``submit --wait``: a header (the name; the id, the state and
    the node), the steps, and the pipeline's message under them, each line from the
    left edge, so that an 80-column terminal wraps none but the long ones."""
    header = Text.assemble(
        _shown(pipeline["name"]),
        "\n",
        (pipeline["id"], "dim"),
        "  ",
        _styled(pipeline["state"]),
        " on ",
        _shown(pipeline.get("node") or "-"),
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in ("#", "step", "state", "time", "message"):
        table.add_column(column, overflow="fold")
    for step in pipeline["steps"]:
        table.add_row(
            str(step["index"]),
            _shown(step["name"]),
            _styled(step["state"]),
            _duration(step["started_at"], step["finished_at"]),
            _shown(step["message"] or "", lines=True),
        )
    parts: list[Text | Table] = [header, table]
    if pipeline.get("message"):
        parts.append(_shown(pipeline["message"], lines=True))
    return Group(*parts)


# --- commands ---------------------------------------------------------------------------


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--template", help="Submit the shipped template of this name instead.")
@click.option("--arg", "args", multiple=True, help="Arg KEY=VALUE (repeatable).")
@click.option("--env", "envs", multiple=True, help="Env KEY=VALUE (repeatable).")
@click.option("--node", help="Run on this node (default: any node with room).")
@click.option("--wait", is_flag=True, help="Follow the pipeline until it ends.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600,
    show_default=True,
    help="Give up waiting after this many seconds (exit 5).",
)
@output_option
@api_options
def submit(
    file: str | None,
    template: str | None,
    args: tuple[str, ...],
    envs: tuple[str, ...],
    node: str | None,
    wait: bool,
    wait_timeout: float,
    output: str,
    server_url: str,
    token: str | None,
) -> None:
    """Submit a pipeline from FILE or --template NAME; print its id.

    With --wait, show each step's progress until it ends and exit 0 completed,
    1 failed, 3 canceled, 4 timed out, 5 still running at --wait-timeout.
    """
    if (file is None) == (template is None):
        raise click.UsageError("give a pipeline FILE or --template NAME (one of them)")
    client = _client(server_url, token)
    document = Path(file).read_text(encoding="utf-8") if file else None
    pipeline_id: str = _call(
        server_url,
        lambda: client.submit(
            document,
            template=template,
            args=_pairs(args, "--arg"),
            envs=_pairs(envs, "--env"),
            node=node,
        ),
    )
    if not wait:
        if output == "json":
            _json({"id": pipeline_id, "state": "pending"})
        else:
            click.echo(pipeline_id)
        return
    final = _follow(client, server_url, pipeline_id, wait_timeout, output)
    sys.exit(EXIT_STILL_RUNNING if final is None else exit_code_of(final))


def _follow(
    client: ApiClient, server_url: str, pipeline_id: str, timeout: float, output: str
) -> dict[str, Any] | None:
    """Show the pipeline's steps live until it ends; None when ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    console = Console(stderr=output == "json")
    current: dict[str, Any] = _call(server_url, lambda: client.pipeline(pipeline_id))
    with Live(steps_view(current), console=console, auto_refresh=False) as live:
        while current["state"] not in FINAL_STATES:
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
            current = _call(server_url, lambda: client.pipeline(pipeline_id))
            live.update(steps_view(current), refresh=True)
    if not console.is_terminal:
        # Live ends its last line itself only on a terminal; piped, it would leave
        # the shell's prompt (or the next line of a log) on the table's last line.
        console.line()
    ended = current["state"] in FINAL_STATES
    if output == "json":
        _json(current)
    elif not ended:
        click.echo(
            f"pipeline {pipeline_id} is still {printable(current['state'])} after {timeout:g}s; "
            f"follow it with `gamepipeline status {pipeline_id}`",
            err=True,
        )
    return current if ended else None


@click.command()
@click.argument("pipeline_id")
@output_option
@api_options
def status(pipeline_id: str, output: str, server_url: str, token: str | None) -> None:
    """Show a pipeline and each of its steps."""
    client = _client(server_url, token)
    pipeline_id = _full_id(client, server_url, pipeline_id)
    pipeline = _call(
        server_url, lambda: client.pipeline(pipeline_id), _no_pipeline(pipeline_id)
    )
    if output == "json":
        _json(pipeline)
        return
    Console().print(steps_view(pipeline))


@click.command("list")
@click.option("--state", help="Only pipelines in this state (pending, running, ...).")
@click.option("--node", help="Only pipelines of this node.")
@click.option("--template", help="Only pipelines made from this template (name).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@output_option
@api_options
def list_(
    state: str | None,
    node: str | None,
    template: str | None,
    limit: int,
    output: str,
    server_url: str,
    token: str | None,
) -> None:
    """List pipelines, newest first."""
    client = _client(server_url, token)
    pipelines = _call(
        server_url,
        lambda: client.pipelines(
            state=state, node=node, template=template, limit=limit
        ),
    )
    if output == "json":
        _json(pipelines)
        return
    console = Console()
    console.print(pipelines_table(pipelines, console.width))
    if pipelines and console.width < WIDE_COLUMNS:
        console.print(SHORTENED, overflow="fold")


def pipelines_table(
    pipelines: list[dict[str, Any]], width: int, now: datetime | None = None
) -> Table:
    """The ``list`` table for a terminal ``width`` columns wide.

    From ``WIDE_COLUMNS`` on: whole ids, names and timestamps. Below
    (an 80-column terminal), ids are cut to ``SHORT_ID`` characters (``status``,
    ``logs`` and ``cancel`` take them), times are relative ("5m ago") or a date, name
    and node are ellipsized and the message folds: it is what the reader came for.
    """
    wide = width >= WIDE_COLUMNS
    # No borders: a space between columns, so that the message keeps room at 80.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    table.add_column("id", no_wrap=True, min_width=SHORT_ID)
    table.add_column(
        "name", no_wrap=True, overflow="ellipsis", max_width=32 if wide else 14
    )
    table.add_column("state", no_wrap=True, min_width=len("completed"))
    table.add_column(
        "node", no_wrap=True, overflow="ellipsis", max_width=20 if wide else 12
    )
    table.add_column("created", no_wrap=True)
    table.add_column("message", overflow="fold", min_width=20)
    for item in pipelines:
        table.add_row(
            item["id"] if wide else item["id"][:SHORT_ID],
            _shown(item["name"]),
            _styled(item["state"]),
            _shown(item["node"] or "-"),
            _when(item["created_at"]) if wide else _ago(item["created_at"], now),
            _shown(item["message"] or "", lines=True),
        )
    return table


#: Under ``list``'s table when its ids are cut short.
SHORTENED: Final = Text(
    "ids shortened: status, logs and cancel take them (or any start of an id "
    f"{MIN_PREFIX} characters or longer); -o json has them whole"
)


def _ago(stamp: str | None, now: datetime | None = None) -> str:
    """How long ago, in at most 7 characters ("45s ago", "12m ago", "3h ago",
    "12d ago"); the local date from 100 days on."""
    if not stamp:
        return "-"
    then = datetime.fromisoformat(stamp)
    seconds = ((now or datetime.now(then.tzinfo)) - then).total_seconds()
    if seconds >= 100 * 86400:
        return then.astimezone().strftime("%Y-%m-%d")
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(int(seconds), 0)}s ago"


def _full_id(client: ApiClient, server_url: str, given: str) -> str:
    """The id of the pipeline whose id ``given`` starts: a whole id as it is (the
    server says if it is unknown); else a start of ``MIN_PREFIX`` characters or more
    that starts exactly one of the ``MAX_LIST`` newest pipelines' ids."""
    if len(given) >= FULL_ID:
        return given
    if len(given) < MIN_PREFIX:
        raise click.BadParameter(
            f"{given!r} is too short: give a pipeline's whole id or its first "
            f"{MIN_PREFIX} characters or more (`gamepipeline list` shows them)",
            param_hint="PIPELINE_ID",
        )
    newest = _call(server_url, lambda: client.pipelines(limit=MAX_LIST))
    matches = [p for p in newest if p["id"].startswith(given.lower())]
    if not matches:
        raise ServerProblem(
            f"no pipeline id starts with {given!r} among the {MAX_LIST} newest "
            "pipelines; `gamepipeline list` shows their ids (an older pipeline "
            "needs its whole id)"
        )
    if len(matches) > 1:
        shown = 10
        lines = [
            f"  {p['id']}  {printable(p['name'])}  {printable(p['state'])}  "
            f"{_when(p['created_at'])}"
            for p in matches[:shown]
        ]
        if len(matches) > shown:
            lines.append(f"  ... and {len(matches) - shown} more")
        raise click.BadParameter(
            f"{given!r} is ambiguous: it starts {len(matches)} pipeline ids; give "
            "more of the one you mean:\n" + "\n".join(lines),
            param_hint="PIPELINE_ID",
        )
    found: str = matches[0]["id"]
    return found


def _no_pipeline(pipeline_id: str) -> str:
    return (
        f"pipeline {pipeline_id!r} does not exist; `gamepipeline list` shows the "
        "pipelines' ids"
    )


@click.command()
@click.argument("pipeline_id")
@output_option
@api_options
def cancel(pipeline_id: str, output: str, server_url: str, token: str | None) -> None:
    """Cancel a pending or running pipeline."""
    client = _client(server_url, token)
    pipeline_id = _full_id(client, server_url, pipeline_id)
    pipeline = _call(
        server_url, lambda: client.cancel(pipeline_id), _no_pipeline(pipeline_id)
    )
    if output == "json":
        _json(pipeline)
    elif pipeline["state"] == "canceled":
        click.echo(f"pipeline {pipeline_id} canceled")
    else:
        click.echo(
            f"pipeline {pipeline_id} is stopping on node "
            f"{printable(str(pipeline.get('node')))}; "
            f"`gamepipeline status {pipeline_id}` shows when it has"
        )


@click.command()
@output_option
@api_options
def nodes(output: str, server_url: str, token: str | None) -> None:
    """List the nodes: state, labels, load and last heartbeat, and under them any
    agent refused because another agent holds its node."""
    client = _client(server_url, token)
    found = _call(server_url, client.nodes)
    if output == "json":
        _json(found)
        return
    table = Table()
    for column in ("node", "state", "load", "labels", "last heartbeat", "agent"):
        table.add_column(column, overflow="fold")
    for node in found:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(node["labels"].items()))
        table.add_row(
            _shown(node["node_id"]),
            _styled(node["state"]),
            f"{node['active_pipelines']}/{node['capacity']}",
            _shown(labels or "-"),
            _when(node["last_heartbeat_at"]),
            _shown(node["agent_version"] or "-"),
        )
    console = Console()
    console.print(table)
    for node in found:
        if node.get("refused_registration"):
            console.print(_refusal(node["node_id"], node["refused_registration"]))


def _refusal(node_id: str, refused: dict[str, Any]) -> Text:
    """The line that says a second agent tried to take a node: two agents are
    configured with one node id, and only the first gets pipelines."""
    count = refused["count"]
    times = "once" if count == 1 else f"{count} times"
    agent = (
        f"host {refused.get('hostname') or 'unknown'}, "
        f"pid {refused.get('pid') or 'unknown'}, "
        f"from {refused.get('peer') or 'unknown'}"
    )
    return Text(
        printable(
            f"node {node_id}: another agent ({agent}) was refused {times}, last "
            f"{_when(refused.get('refused_at'))}; give each agent its own node id"
        ),
        style="yellow",
    )


@click.command()
@click.argument("node_id")
@click.argument("action", type=click.Choice(["maintenance", "disable", "enable"]))
@output_option
@api_options
def node(
    node_id: str, action: str, output: str, server_url: str, token: str | None
) -> None:
    """Put a node in maintenance (no new pipelines), disable it (its pipelines are
    canceled too) or enable it again."""
    client = _client(server_url, token)
    changed = _call(
        server_url,
        lambda: client.set_node(node_id, action),
        f"node {printable(node_id)!r} does not exist; `gamepipeline nodes` lists the "
        "nodes (a node exists once its agent has registered)",
    )
    if output == "json":
        _json(changed)
    else:
        state = printable(changed["state"])
        click.echo(
            f"node {printable(node_id)} is now "
            f"{'in maintenance' if state == 'maintenance' else state}"
        )


@click.command()
@click.argument("pipeline_id")
@click.option("--step", type=int, help="Only this step (its index).")
@output_option
@api_options
def logs(
    pipeline_id: str, step: int | None, output: str, server_url: str, token: str | None
) -> None:
    """Print the output each step's container left (its last lines)."""
    client = _client(server_url, token)
    pipeline_id = _full_id(client, server_url, pipeline_id)
    pipeline = _call(
        server_url, lambda: client.pipeline(pipeline_id), _no_pipeline(pipeline_id)
    )
    steps = pipeline["steps"]
    if step is not None:
        steps = [s for s in steps if s["index"] == step]
        if not steps:
            raise click.BadParameter(
                f"pipeline {pipeline_id} has no step {step}; its steps are "
                f"0..{len(pipeline['steps']) - 1}",
                param_hint="--step",
            )
    if output == "json":
        _json(
            [
                {
                    k: s[k]
                    for k in ("index", "name", "state", "exit_code", "output_tail")
                }
                for s in steps
            ]
        )
        return
    for item in steps:
        name, state = printable(item["name"]), printable(item["state"])
        click.echo(f"==> step {item['index']} {name} ({state}) <==")
        if item["output_tail"]:
            click.echo(printable(item["output_tail"], lines=True).rstrip("\n"))


COMMANDS: Final = (submit, status, list_, cancel, nodes, node, logs)
