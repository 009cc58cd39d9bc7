"""The node policy (issue 5): what steps may mount, pass and add, checked before Docker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gamepipeline.agent.policy import NodePolicy, PolicyViolation, policy_from_settings
from gamepipeline.pipeline import bind, load_template, parse_document

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted((ROOT / "pipelines").glob("*.yaml")) + sorted(
    (ROOT / "tests" / "data" / "original").glob("*.yaml")
)


def steps_of(container: dict[str, Any]) -> Any:
    template = load_template(
        {
            "name": "t",
            "steps": [{"name": "s", "container": {"image": "busybox", **container}}],
        }
    )
    return bind(template, {}, {}).steps


def violation(policy: NodePolicy, container: dict[str, Any]) -> str:
    with pytest.raises(PolicyViolation) as caught:
        policy.check(steps_of(container))
    return str(caught.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_default_policy_lets_every_shipped_template_run(path: Path) -> None:
    template = load_template(parse_document(path.read_bytes(), source=str(path)))
    # Numbers fit every arg the templates declare (ports, instance ids, names).
    args = {name: "8081" for name in template.args}
    envs = {name: "v" for name in template.envs}
    envs["BEAGLE_WIND_ROOT"] = "/data/wind"
    NodePolicy().check(bind(template, args, envs).steps)


@pytest.mark.parametrize(
    "volume",
    ["/:/host", "/etc:/etc", "/var/run/docker.sock:/var/run/docker.sock",
     "/data/../etc:/x", "/database:/x"],
)  # fmt: skip
def test_a_host_path_outside_mount_paths_names_the_rule(volume: str) -> None:
    message = violation(NodePolicy(), {"volumes": [volume]})
    assert "policy.mount_paths" in message
    assert volume in message
    assert 'steps[0].container.volumes[0]: "' in message
    assert "step 0 (s) breaks the node policy" in message


def test_named_and_anonymous_volumes_need_no_rule() -> None:
    NodePolicy().check(steps_of({"volumes": ["cache:/cache", "/scratch"]}))


def test_a_device_outside_the_policy_is_refused() -> None:
    message = violation(NodePolicy(), {"devices": ["/dev/sda:/dev/sda"]})
    assert 'steps[0].container.devices[0]: "/dev/sda:/dev/sda"' in message
    assert "policy.devices" in message
    NodePolicy().check(steps_of({"devices": ["/dev/dri/renderD128"]}))


def test_privileged_is_refused_when_the_policy_says_false() -> None:
    strict = NodePolicy(privileged=False)
    message = violation(strict, {"privileged": True})
    assert "steps[0].container.privileged: true is refused by policy.privileged" in (
        message
    )
    strict.check(steps_of({"privileged": False}))


def test_capabilities_outside_the_list_are_refused_by_name() -> None:
    message = violation(NodePolicy(), {"cap_add": ["SYS_ADMIN", "CAP_SYS_NICE"]})
    assert "steps[0].container.cap_add[0]: SYS_ADMIN" in message
    assert "policy.capabilities" in message
    assert "SYS_NICE" not in message.split("(")[0]


def test_security_options_outside_the_list_are_refused_by_name() -> None:
    allowed = NodePolicy()
    allowed.check(steps_of({"security_opt": ["seccomp:unconfined"]}))
    allowed.check(steps_of({"security_opt": ["no-new-privileges:true"]}))

    message = violation(
        allowed, {"security_opt": ["apparmor=unconfined", "label=disable"]}
    )
    assert (
        "steps[0].container.security_opt[0]: apparmor=unconfined is not in "
        "policy.security_opt" in message
    )
    assert "steps[0].container.security_opt[1]: label=disable" in message
    assert "step 0 (s) breaks the node policy" in message


@pytest.mark.parametrize("field", ["network_mode", "ipc"])
def test_host_namespaces_are_refused_unless_the_policy_allows_them(field: str) -> None:
    message = violation(NodePolicy(), {field: "host"})
    assert f"steps[0].container.{field}: host" in message
    assert "policy.host_namespaces" in message

    NodePolicy(host_namespaces=True).check(steps_of({field: "host"}))
    NodePolicy(other_containers=True).check(steps_of({field: "container:other"}))


@pytest.mark.parametrize("field", ["network_mode", "ipc"])
def test_joining_a_container_outside_the_pipeline_is_refused(field: str) -> None:
    template = load_template(
        {
            "name": "t",
            "steps": [
                {"name": "db", "container": {"image": "i", "container_name": "db"}},
                {"name": "game", "container": {"image": "i", field: "container:db"}},
                {"name": "spy", "container": {"image": "i", field: "container:other"}},
            ],
        }
    )
    steps = bind(template, {}, {}).steps

    with pytest.raises(PolicyViolation) as caught:
        NodePolicy().check(steps)
    assert caught.value.problems == [
        f"steps[2].container.{field}: container:other joins the namespace of a container "
        "that is not one of this pipeline's, which policy.other_containers (false) "
        "refuses; join a container an earlier step of the pipeline starts, or allow it "
        "in the node's policy"
    ]
    NodePolicy(other_containers=True).check(steps)


def test_runtimes_outside_the_list_are_refused() -> None:
    NodePolicy().check(steps_of({"runtime": "nvidia"}))
    message = violation(NodePolicy(), {"runtime": "kata"})
    assert (
        "steps[0].container.runtime: kata is not in policy.runtimes (runc, nvidia)"
        in message
    )


def test_every_broken_rule_is_listed() -> None:
    with pytest.raises(PolicyViolation) as caught:
        NodePolicy(privileged=False).check(
            steps_of({"privileged": True, "volumes": ["/etc:/etc"]})
        )
    assert len(caught.value.problems) == 2
    # The message carries every rule broken, so the author sees them all at once.
    assert "policy.privileged" in str(caught.value)
    assert "policy.mount_paths" in str(caught.value)


def test_the_violation_names_each_step_that_breaks_a_rule_and_only_those() -> None:
    template = load_template(
        {
            "name": "t",
            "steps": [
                {"name": "fetch", "container": {"image": "i"}},
                {"name": "game", "container": {"image": "i", "volumes": ["/etc:/x"]}},
                {
                    "name": "tools",
                    "container": {"image": "i", "cap_add": ["SYS_ADMIN"]},
                },
            ],
        }
    )

    with pytest.raises(PolicyViolation) as caught:
        NodePolicy().check(bind(template, {}, {}).steps)

    assert [(s.index, s.name) for s in caught.value.steps] == [
        (1, "game"),
        (2, "tools"),
    ]
    first = caught.value.steps[0].problems[0]
    assert first.startswith(
        'steps[1].container.volumes[0]: "/etc:/x" mounts the host path /etc,'
    )
    assert str(caught.value).startswith("step 1 (game) breaks the node policy: ")
    assert "; step 2 (tools) breaks the node policy: " in str(caught.value)


def test_a_symbolic_link_below_an_allowed_folder_cannot_lead_outside_it(
    tmp_path: Path,
) -> None:
    allowed = tmp_path / "data"
    (allowed / "real").mkdir(parents=True)
    (allowed / "hostroot").symlink_to("/")
    (allowed / "inside").symlink_to(allowed / "real")
    policy = NodePolicy(mount_paths=(str(allowed),))

    policy.check(steps_of({"volumes": [f"{allowed}/inside:/x"]}))
    with pytest.raises(PolicyViolation) as caught:
        policy.check(steps_of({"volumes": [f"{allowed}/hostroot/etc:/host:ro"]}))

    assert "a symbolic link to /etc" in str(caught.value)


def test_settings_build_a_policy_and_name_a_bad_key() -> None:
    policy = policy_from_settings(
        {
            "mount_paths": ["/srv/games/"],
            "privileged": False,
            "capabilities": ["net_admin"],
        }
    )
    assert policy.mount_paths == ("/srv/games",)
    assert policy.capabilities == ("NET_ADMIN",)
    assert policy_from_settings(None) == NodePolicy()
    with pytest.raises(ValueError, match=r"unknown key.*mounts"):
        policy_from_settings({"mounts": ["/x"]})
    with pytest.raises(ValueError, match="not an absolute host path"):
        policy_from_settings({"mount_paths": ["data"]})
    with pytest.raises(ValueError, match="not true or false"):
        policy_from_settings({"privileged": "yes"})
    with pytest.raises(ValueError, match=r"host_namespaces.*not true or false"):
        policy_from_settings({"host_namespaces": "no"})
    with pytest.raises(ValueError, match=r"policy\.runtimes must be a list"):
        policy_from_settings({"runtimes": "nvidia"})
    opened = policy_from_settings(
        {"security_opt": ["apparmor=unconfined"], "host_namespaces": True}
    )
    assert opened.security_opt == ("apparmor=unconfined",)
    assert opened.host_namespaces and opened.runtimes == ("runc", "nvidia")
