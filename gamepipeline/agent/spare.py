"""Ansible started ahead of the pipeline it will run.

Starting ``ansible-playbook`` (loading Ansible and its plugins, parsing, forking the
first worker) takes about a second of CPU, more than a whole ``docker run``. So the agent
keeps one *spare*: an ansible-runner run already started in a private data dir of its
own, whose playbook waits in its first task (``gamepipeline_wait``, an action plugin
that polls for a file every 10 ms in the controller: no module, no interpreter) and then
includes ``pipeline.yml``, the compiled pipeline's tasks. A run takes the spare, writes
its tasks file (whole, by a rename) and reads the spare's events as its own.

A spare is used once: its data dir, temp dirs and artifacts belong to the one run that
took it and are removed with it (F9), and nothing of a pipeline is in it before the
hand-over. Its ``TMPDIR`` is a dir of its own under the system's temp dir (short, since
Mitogen makes its Unix socket there and a socket's path may not pass 107 bytes), named
after the data dir so that a later agent finds it (``clear_temp_dirs``): a playbook
killed on a cancel or at the agent's stop leaves its socket behind, and it goes with
the dir. The next spare starts as soon as one is taken (and when a run ends, if
none is waiting). A run that finds no spare waiting (a burst of pipelines, or none
kept) starts one of its own, cold, with the tasks file written before it starts: the
same playbook, whose wait returns at once. A spare still starting is taken all the
same: it is further along than a new one.

The spare's playbook holds nothing but the agent's own text; the pipeline's tasks
arrive rendered by ``render_tasks`` (every value ``!unsafe``). Its ``cancel_callback``
asks the run that took it, so a cancel or a timeout kills the spare's process group as
it would a run's own; an untaken spare is ended the same way when the agent stops, and
its wait task ends it on its own if the agent dies.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible_runner

from gamepipeline.agent.orphans import RUN_ENV, kill_run, run_markers
from gamepipeline.ansible_plugins import action_plugins_env

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.5
"""How often ansible-runner asks whether to stop: bounds how late a cancel takes hold."""

#: ansible-runner empties a task's result when its text passes MAX_EVENT_RES (700,000
#: characters by default), and with it a `commands` step's exit code and output. Allow
#: results up to 32 MiB: a step printing more than that loses them still.
MAX_EVENT_RESULT_CHARS = 32 * 1024 * 1024

TASKS_FILE = "pipeline.yml"
"""The compiled tasks' file in the spare's ``project`` folder."""

PREPARED_MODULES = ("community.docker.docker_container",)
"""Modules whose payload a spare builds while it waits: every step runs this one."""

DONE: dict[str, Any] = {"event": "gamepipeline_runner_done"}
"""Queued (by identity) after ansible-runner's last event."""

WAIT_TASK = "gamepipeline waits for its pipeline"

_PLAYBOOK = """\
- name: GamePipeline
  hosts: all
  gather_facts: false
  tasks:
{warm_up}    - name: {wait_task}
      gamepipeline_wait:
        file: {tasks_file}
        agent_pid: {agent_pid}
        modules: [{modules}]
    - name: gamepipeline runs its pipeline
      ansible.builtin.include_tasks: {tasks_file}
"""

# Runs every prepared module once, in check mode and against a container name no one
# has, so that Mitogen's interpreter has imported the module and its module_utils
# before the pipeline arrives. It can change nothing; if it fails (no engine yet), the
# pipeline's own task will say why.
_WARM_UP = """\
    - name: gamepipeline warms up {module}
      {module}:
        name: gamepipeline-warm-up-{token}
        state: absent
      check_mode: true
      ignore_errors: true
"""


def temp_dir_prefix(run: str) -> str:
    """How the name of the TMPDIR of the run in data dir ``run`` begins: the data
    dir's name, cut to its last 48 characters (it ends in random ones) so that the
    socket's path stays short whatever the pipeline id."""
    return f"gamepipeline-{run[-48:]}-"


def clear_temp_dirs(run: str) -> None:
    """Remove the TMPDIR a run in data dir ``run`` left behind (its agent died)."""
    for leftover in Path(tempfile.gettempdir()).glob(f"{temp_dir_prefix(run)}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def mitogen_env() -> dict[str, str]:
    """The environment that makes ansible-playbook run its modules through Mitogen.

    Mitogen keeps one Python interpreter per host for the whole playbook and runs each
    module inside it, so a module's imports are paid once; after the spare's warm-up
    a ``docker_container`` task costs about what the engine's create and start cost.
    """
    import ansible_mitogen

    here = Path(ansible_mitogen.__file__).resolve().parent
    return {
        "ANSIBLE_STRATEGY_PLUGINS": str(here / "plugins" / "strategy"),
        "ANSIBLE_STRATEGY": "mitogen_linear",
    }


class Spare:
    """One ansible-runner run whose playbook waits for a pipeline's tasks.

    Args:
        data_dir: its private data dir, made here (mode 0700); must not exist.
        node_id: the node's id, put in the playbook's environment (``orphans``).
        mitogen: run modules through Mitogen (``mitogen_env``).
        warm_up: with ``mitogen``, run each prepared module once before waiting; for
            a spare started ahead, not for a run that starts its own with its tasks.
    """

    def __init__(
        self,
        data_dir: Path,
        node_id: str = "",
        *,
        mitogen: bool = True,
        warm_up: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self._node_id = node_id
        self._mitogen = mitogen
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.runner: Any = None
        self._discarded = threading.Event()
        #: Set when the playbook reaches its wait (after the warm-up, if any).
        self.ready = threading.Event()
        self._started_at = 0.0
        self._stop_check: Callable[[], bool] | None = None
        self._taken = False
        data_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        (data_dir / "project").mkdir(parents=True, mode=0o700)
        (data_dir / "tmp").mkdir(mode=0o700)
        os.chmod(data_dir, 0o700)
        #: The run's TMPDIR (mode 0700, from ``mkdtemp``).
        self.temp_dir = Path(tempfile.mkdtemp(prefix=temp_dir_prefix(data_dir.name)))
        (data_dir / "project" / "main.yml").write_text(
            _PLAYBOOK.format(
                warm_up="".join(
                    _WARM_UP.format(module=module, token=secrets.token_hex(8))
                    for module in PREPARED_MODULES
                )
                if mitogen and warm_up
                else "",
                wait_task=WAIT_TASK,
                tasks_file=TASKS_FILE,
                agent_pid=os.getpid(),
                modules=", ".join(PREPARED_MODULES),
            ),
            encoding="utf-8",
        )

    @classmethod
    def in_dir(
        cls,
        parent: Path,
        prefix: str = "spare",
        node_id: str = "",
        *,
        mitogen: bool = True,
        warm_up: bool = False,
    ) -> Spare:
        """A spare in a new dir under ``parent``, named ``<prefix>-<random>``."""
        return cls(
            parent / f"{prefix}-{secrets.token_hex(4)}",
            node_id,
            mitogen=mitogen,
            warm_up=warm_up,
        )

    @property
    def started(self) -> bool:
        return self.thread is not None

    @property
    def usable(self) -> bool:
        """Not taken, not discarded, and its playbook has not ended."""
        return (
            not self._taken
            and not self._discarded.is_set()
            and self.thread is not None
            and self.thread.is_alive()
        )

    def start(self) -> None:
        self._started_at = time.monotonic()
        self.thread, self.runner = ansible_runner.run_async(**self.runner_options())

    def hand_over(self, tasks_text: str, stop: Callable[[], bool]) -> None:
        """Give the spare its pipeline's tasks; ``stop`` says when to kill it."""
        self._taken = True
        self._stop_check = stop
        project = self.data_dir / "project"
        partial = project / f".{TASKS_FILE}.partial"
        partial.write_text(tasks_text, encoding="utf-8")
        os.chmod(partial, 0o600)
        partial.rename(project / TASKS_FILE)

    def discard(self, wait: float | None = 5.0) -> None:
        """Remove the spare's dir once its playbook has ended; an untaken spare's
        playbook is killed first. ``wait`` bounds the wait (None: no bound)."""
        if not self._taken:
            self._discarded.set()
        if self.thread is not None:
            self.thread.join(wait)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def runner_options(self) -> dict[str, Any]:
        """ansible-runner's options for this spare (also what benchmarks run)."""
        bin_dir = str(Path(sys.executable).parent)
        tmp = str(self.data_dir / "tmp")
        return {
            "private_data_dir": str(self.data_dir),
            "playbook": "main.yml",
            "inventory": (
                "localhost ansible_connection=local "
                f"ansible_python_interpreter={sys.executable}"
            ),
            "envvars": {
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_GATHERING": "explicit",
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
                "ANSIBLE_LOCAL_TEMP": tmp,
                "ANSIBLE_REMOTE_TEMP": tmp,
                "ANSIBLE_HOME": tmp,
                "TMPDIR": str(self.temp_dir),
                "MAX_EVENT_RES": str(MAX_EVENT_RESULT_CHARS),
                **action_plugins_env(),
                **(mitogen_env() if self._mitogen else {}),
                # Which node and agent started it, so that an agent started after this
                # one died can find its playbooks without its work dir (``orphans``);
                # the pipeline is not known yet when a spare starts.
                **(run_markers(self._node_id, "") if self._node_id else {}),
                # This run alone, so that its processes can all be killed (``_sweep``).
                RUN_ENV: self.data_dir.name,
            },
            "settings": {"pexpect_timeout": CANCEL_POLL_SECONDS},
            "quiet": True,
            "event_handler": self._queue_event,
            "finished_callback": self._finished,
            "cancel_callback": self._should_stop,
        }

    def _queue_event(self, event: dict[str, Any]) -> bool:
        # Only queue: a slow handler would stall the run (F7).
        self.events.put(event)
        if (
            not self.ready.is_set()
            and event.get("event") == "runner_on_start"
            and event.get("event_data", {}).get("task") == WAIT_TASK
        ):
            self.ready.set()
            if not self._taken:
                log.info(
                    "spare ansible-playbook ready in %.1f s (%s)",
                    time.monotonic() - self._started_at,
                    self.data_dir.name,
                )
        return True

    def _finished(self, runner: Any) -> None:
        # Called once the playbook's process is gone and its last event handed over,
        # so the run's thread wakes at once instead of polling.
        self._sweep("after its end")
        self.events.put(DONE)

    def _should_stop(self) -> bool:
        check = self._stop_check
        stop = self._discarded.is_set() or (check is not None and check())
        if stop:
            # ansible-runner kills the playbook's process group next; its workers are
            # in sessions of their own and would outlive it.
            self._sweep("on its stop")
        return stop

    def _sweep(self, when: str) -> None:
        """Kill every process left of this run (``orphans.kill_run``)."""
        killed = kill_run(self.data_dir.name)
        if killed:
            log.info(
                "killed %d process group(s) left of %s %s",
                killed,
                self.data_dir.name,
                when,
            )


class SparePool:
    """Keeps one spare started in ``spares_dir`` for the next run to take.

    Args:
        spares_dir: where spares' data dirs are made; emptied by ``clear``.
        enabled: False keeps no spare (every run starts its own, cold).
        mitogen: spares run modules through Mitogen, warmed up while they wait.
    """

    def __init__(
        self,
        spares_dir: Path,
        *,
        node_id: str = "",
        enabled: bool = True,
        mitogen: bool = True,
    ) -> None:
        self._dir = spares_dir
        self._node_id = node_id
        self._enabled = enabled
        self._mitogen = mitogen
        self._spare: Spare | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def waiting_dir(self) -> Path | None:
        """The data dir of the spare waiting now, if one is."""
        with self._lock:
            return self._spare.data_dir if self._spare is not None else None

    def take(self) -> Spare | None:
        """The waiting spare, if there is one that can still run a pipeline; the next
        one starts at once, in the background.

        Starting it now rather than when the run ends costs the run a little CPU
        while its modules work, but a pipeline that follows soon after finds its
        spare ready (measured: back-to-back one-step pipelines 1.1-1.3 s instead of
        1.6-2.4 s at the run's end, no clear cost to one alone).
        """
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            threading.Thread(
                target=self.replenish, name="spare-start", daemon=True
            ).start()
        if spare is None:
            return None
        if not spare.usable:
            log.warning("the spare ansible-playbook in %s had ended", spare.data_dir)
            spare.discard()
            return None
        return spare

    def replenish(self) -> None:
        """Start a spare unless one is waiting (or the pool is closed)."""
        if not self._enabled:
            return
        with self._lock:
            if self._closed or self._spare is not None:
                return
            spare = Spare.in_dir(
                self._dir,
                node_id=self._node_id,
                mitogen=self._mitogen,
                warm_up=True,
            )
            self._spare = spare
            try:
                spare.start()
            except Exception:
                self._spare = None
                log.exception("could not start a spare ansible-playbook")
                spare.discard()
                return
        log.debug("started a spare ansible-playbook in %s", spare.data_dir)

    def close(self) -> None:
        """End the waiting spare and keep no other."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()
