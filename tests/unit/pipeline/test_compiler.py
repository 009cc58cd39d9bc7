"""compile_playbook: one play, a docker_container task per step, every field mapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gamepipeline.pipeline import (
    LABEL_PIPELINE,
    LABEL_SPEC,
    LABEL_STEP,
    LABEL_TEMPLATE,
    ValidationError,
    bind,
    compile_playbook,
    load_template,
    step_index_of_task,
)
from gamepipeline.pipeline.compiler import (
    DOCKER_CONTAINER,
    FAIL,
    INSPECT,
)

from .pipeline_helpers import container_doc


def compile_doc(doc: dict[str, Any], pipeline_id: str = "p1") -> list[dict[str, Any]]:
    return compile_playbook(bind(load_template(doc), {}, {}), pipeline_id=pipeline_id)


def main_tasks(playbook: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks that run each step's container (not inspect/replace/verify)."""
    return [
        t
        for t in playbook[0]["tasks"]
        if DOCKER_CONTAINER in t and t[DOCKER_CONTAINER].get("state") != "absent"
    ]


def options(**fields: Any) -> dict[str, Any]:
    [task] = main_tasks(compile_doc(container_doc(**fields)))
    result: dict[str, Any] = task[DOCKER_CONTAINER]
    return result


def design_41(data_dir: Path) -> list[dict[str, Any]]:
    template = load_template((data_dir / "design-4.1.yaml").read_bytes())
    envs = {name: f"v-{name}" for name in template.envs}
    args = {name: "x" for name in template.args}
    return compile_playbook(bind(template, args, envs), pipeline_id="p41")


def test_playbook_is_one_play_on_all_hosts_without_facts(data_dir: Path) -> None:
    [play] = design_41(data_dir)
    assert play["hosts"] == "all"
    assert play["gather_facts"] is False


def test_one_docker_container_task_per_step(data_dir: Path) -> None:
    tasks = main_tasks(design_41(data_dir))
    assert [t["name"] for t in tasks] == [
        "[step 0] 启动数据库",
        "[step 1] 启动游戏服务器",
    ]


def test_every_task_name_maps_back_to_its_step(data_dir: Path) -> None:
    indexes = {step_index_of_task(t["name"]) for t in design_41(data_dir)[0]["tasks"]}
    assert indexes == {0, 1}


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("[step 2] 启动游戏服务器", 2),
        ("[step 10] x: verify", 10),
        ("Gathering Facts", None),
    ],
)
def test_step_index_of_task_parses_the_marker(name: str, index: int | None) -> None:
    assert step_index_of_task(name) == index


def test_design_fields_map_to_docker_container_options(data_dir: Path) -> None:
    game = main_tasks(design_41(data_dir))[1][DOCKER_CONTAINER]
    assert game["image"] == "game-server:latest"
    assert game["name"] == "game-server"
    assert game["privileged"] is True
    assert game["device_requests"] == [{"capabilities": [["gpu"]], "count": -1}]
    assert game["security_opts"] == ["seccomp=unconfined"]
    assert game["capabilities"] == ["SYS_RAWIO"]
    assert game["tmpfs"] == ["/dev/shm:rw"]
    assert game["devices"] == ["/dev/dri:/dev/dri:rwm"]
    assert game["volumes"] == [
        "/dev/input:/dev/input",
        "/data/nvidia:/data/nvidia",
        "/data/game:/app/data",
    ]
    assert game["published_ports"] == ["8080:8080"]
    assert game["env"]["DISPLAY_SIZEW"] == "1920"
    assert game["env"]["SELKIES_TURN_HOST"] == "v-BEAGLE_WIND_TURN_HOST"
    assert all(isinstance(v, str) for v in game["env"].values())
    assert game["pull"] == "missing"
    assert game["command_handling"] == "correct"
    assert game["state"] == "started" and game["detach"] is True


def test_gpu_request_is_one_and_list_with_count_written_out() -> None:
    deploy = {
        "resources": {
            "reservations": {
                "devices": [
                    {"driver": "nvidia", "capabilities": ["gpu", "utility"]},
                    {"capabilities": ["gpu"], "count": "all"},
                    {"capabilities": ["gpu"], "count": 2},
                    {"capabilities": ["gpu"], "device_ids": ["0", "1"]},
                ]
            }
        }
    }
    assert options(deploy=deploy)["device_requests"] == [
        {"driver": "nvidia", "capabilities": [["gpu", "utility"]], "count": -1},
        {"capabilities": [["gpu"]], "count": -1},
        {"capabilities": [["gpu"]], "count": 2},
        {"capabilities": [["gpu"]], "device_ids": ["0", "1"]},
    ]


def test_command_string_is_split_and_list_kept() -> None:
    cmd = '--peers http://a:2379,http://b:2379 --motd "Welcome aboard"'
    assert options(command=cmd)["command"] == [
        "--peers",
        "http://a:2379,http://b:2379",
        "--motd",
        "Welcome aboard",
    ]
    assert options(command=["a b", "c"])["command"] == ["a b", "c"]


def test_no_command_keeps_the_images_cmd() -> None:
    assert "command" not in options()
    assert "entrypoint" not in options()


def test_commands_run_as_one_script_that_stops_at_the_first_failure() -> None:
    opts = options(commands=["echo one", "false", "echo never"])
    assert opts["entrypoint"] == ["/bin/sh", "-c"]
    assert opts["command"] == ["set -e\necho one\nfalse\necho never\n"]
    assert (opts["detach"], opts["cleanup"], opts["state"]) == (False, True, "started")


def test_service_with_healthcheck_waits_until_health_is_decided() -> None:
    doc = container_doc(
        healthcheck={"test": ["CMD", "true"], "interval": "5s", "retries": 3}
    )
    doc["steps"][0]["type"] = "service"
    tasks = compile_doc(doc)[0]["tasks"]
    [main] = main_tasks([{"tasks": tasks}])
    # Started, then polled: docker_container's own `healthy` state would wait through
    # "unhealthy" for five minutes.
    assert main[DOCKER_CONTAINER]["state"] == "started"
    assert main[DOCKER_CONTAINER]["healthcheck"] == {
        "test": ["CMD", "true"],
        "interval": "5s",
        "retries": 3,
    }
    wait, verdict = (t for t in tasks if t["name"].endswith((": health", ": healthy")))
    assert INSPECT in wait
    # 0 s start period + (5 s interval + 30 s default timeout) x (3 retries + 1)
    assert (wait["retries"], wait["delay"]) == (140, 1)
    assert "'healthy', 'unhealthy'" in wait["until"]
    assert "ansible.builtin.fail" in verdict
    assert "!= 'healthy'" in verdict["when"]


def test_containers_without_name_get_a_generated_one() -> None:
    doc = container_doc()
    doc["steps"].append({"name": "b", "container": {"image": "a:1"}})
    names = [t[DOCKER_CONTAINER]["name"] for t in main_tasks(compile_doc(doc, "abc"))]
    assert names == ["gp-abc-0", "gp-abc-1"]


def test_labels_name_pipeline_step_template_and_spec() -> None:
    doc = container_doc(labels={"team": "games"})
    [task] = main_tasks(compile_doc(doc, "abc"))
    labels = task[DOCKER_CONTAINER]["labels"]
    assert labels["team"] == "games"
    assert labels[LABEL_PIPELINE] == "abc"
    assert labels[LABEL_STEP] == "0"
    assert labels[LABEL_TEMPLATE] == "t"
    assert len(labels[LABEL_SPEC]) == 16


def test_spec_label_ignores_the_pipeline_id_but_follows_the_spec() -> None:
    def spec(doc: dict[str, Any], pipeline_id: str) -> str:
        [task] = main_tasks(compile_doc(doc, pipeline_id))
        return str(task[DOCKER_CONTAINER]["labels"][LABEL_SPEC])

    same = container_doc(environment={"A": "1"})
    changed = container_doc(environment={"A": "2"})
    assert spec(same, "run-1") == spec(same, "run-2")
    assert spec(same, "run-1") != spec(changed, "run-1")


def test_service_step_runs_one_module_and_checks_running_from_its_own_result() -> None:
    """Each module call costs an interpreter start: a service step makes one
    (docker_container); inspect is an action plugin in the controller, ownership and
    running are checks that run no module."""
    tasks = compile_doc(container_doc(), "abc")[0]["tasks"]
    actions = [
        next(k for k in t if k.startswith(("community.", "ansible.", "gamepipeline_")))
        for t in tasks
    ]
    assert actions == [INSPECT, FAIL, DOCKER_CONTAINER, FAIL]
    _, _, main, running = tasks
    # A changed spec is recreated by the main task itself: no labels comparison of
    # its own, so docker_container's default (allow_more_present) sees the new hash.
    assert "comparisons" not in main[DOCKER_CONTAINER]
    assert running["name"].endswith(": running")
    assert f"{main['register']}.container.State.Running" in running["when"]
    assert f"{main['register']} is not skipped" in running["when"]


def test_extra_compose_fields_map_to_their_options() -> None:
    opts = options(
        shm_size="2g",
        restart="on-failure:3",
        network_mode="host",
        ipc="host",
        user=1000,
        working_dir="/app",
        entrypoint="/init --fast",
        ulimits={"nofile": {"soft": 1024, "hard": 4096}},
        runtime="nvidia",
        extra_hosts=["game.local:10.0.0.5"],
        dns="1.1.1.1",
        mem_limit="4g",
        cpus=1.5,
        stop_grace_period="1m30s",
    )
    assert opts["shm_size"] == "2G"
    assert (opts["restart_policy"], opts["restart_retries"]) == ("on-failure", 3)
    assert opts["network_mode"] == "host"
    assert opts["ipc_mode"] == "host"
    assert opts["user"] == "1000"
    assert opts["working_dir"] == "/app"
    assert opts["entrypoint"] == ["/init", "--fast"]
    assert opts["ulimits"] == ["nofile:1024:4096"]
    assert opts["runtime"] == "nvidia"
    assert opts["etc_hosts"] == {"game.local": "10.0.0.5"}
    assert opts["dns_servers"] == ["1.1.1.1"]
    assert opts["memory"] == "4G"
    assert opts["cpus"] == 1.5
    assert opts["stop_timeout"] == 90


def test_step_timeout_retries_and_continue_on_error() -> None:
    doc = container_doc(commands=["true"])
    doc["steps"][0].update(
        timeout="2m", retries=2, retry_delay="10s", continue_on_error=True
    )
    tasks = compile_doc(doc)[0]["tasks"]
    [main] = main_tasks([{"tasks": tasks}])
    assert main["timeout"] == 120
    assert (main["retries"], main["delay"]) == (2, 10)
    assert main["until"] == f"{main['register']} is succeeded"
    assert all(t.get("ignore_errors") is True for t in tasks)


def test_pipeline_id_that_cannot_name_a_container_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        compile_doc(container_doc(), pipeline_id="bad id")
    assert caught.value.problems[0].path == "pipeline_id"


def test_mount_roots_add_a_guard_before_each_step_with_host_paths() -> None:
    doc = container_doc(volumes=["/data/wind:/w", "named:/n"])
    doc["steps"].append({"name": "b", "container": {"image": "a:1"}})
    bound = bind(load_template(doc), {}, {})

    tasks = compile_playbook(
        bound, pipeline_id="p1", mount_roots=("/data", "/dev/input")
    )[0]["tasks"]

    guards = [t for t in tasks if t["name"].endswith(": mounts")]
    assert [t["name"] for t in guards] == ["[step 0] s: mounts"]
    [guard] = guards
    assert tasks.index(guard) == 0
    assert guard["vars"]["gp_sources"] == ["/data/wind"]
    assert guard["vars"]["gp_roots"] == "^(/data|/dev/input)(/|$)"
    assert "realpath" in guard["when"]
    no_guard = compile_playbook(bound, pipeline_id="p1")[0]["tasks"]
    assert not any(t["name"].endswith(": mounts") for t in no_guard)
