"""The grammar of each container field, checked through load_template."""

from __future__ import annotations

from typing import Any

import pytest

from gamepipeline.pipeline import Container, ValidationError, load_template
from gamepipeline.pipeline.grammar import parse_port, split_command

from .pipeline_helpers import container_doc


def container(**fields: Any) -> Container:
    return load_template(container_doc(**fields)).steps[0].container


def problem_paths(**fields: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        load_template(container_doc(**fields))
    return {p.path: p.message for p in caught.value.problems}


# -- ports ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "port",
    [
        "8080",
        "8080:80",
        "127.0.0.1:8080:80",
        "127.0.0.1::80",
        "[::1]:8080:80",
        "8000-8010:9000-9010",
        "53:53/udp",
        "9000:9000/sctp",
        "0.0.0.0:80:80/tcp",
    ],
)
def test_valid_port_mappings_are_accepted(port: str) -> None:
    assert container(ports=[port]).ports == [port]


def test_unquoted_number_port_becomes_text() -> None:
    assert container(ports=[8080]).ports == ["8080"]


@pytest.mark.parametrize(
    ("port", "words"),
    [
        ("80:80:80", "not a port mapping"),
        ("0:80", "ports run from 1 to 65535"),
        ("70000", "ports run from 1 to 65535"),
        ("8000-8010:9000-9005", "different lengths"),
        ("9010-9000:80", "runs backwards"),
        ("80/http", "protocol"),
        ("80/tcp:80", "protocol"),
        ("::1:8080:80", "brackets"),
        ("[::1]:8080", "not a port mapping"),
        (":80", "not a port mapping"),
        ("8080:9000-9010", "one host port"),
    ],
)
def test_invalid_port_mappings_are_rejected(port: str, words: str) -> None:
    paths = problem_paths(ports=[port])
    assert words in paths["steps[0].container.ports[0]"]
    assert f'"{port}"' in paths["steps[0].container.ports[0]"]


def test_parsed_port_keeps_address_range_and_protocol() -> None:
    mapping = parse_port("[::1]:8000-8001:9000-9001/udp")
    assert mapping.ip == "::1"
    assert mapping.host == (8000, 8001)
    assert mapping.container == (9000, 9001)
    assert mapping.protocol == "udp"


# -- devices, tmpfs, volumes -----------------------------------------------------------


@pytest.mark.parametrize(
    "device", ["/dev/dri", "/dev/dri:/dev/dri", "/dev/snd:/dev/snd:rw"]
)
def test_valid_devices_are_accepted(device: str) -> None:
    assert container(devices=[device]).devices == [device]


@pytest.mark.parametrize(
    ("device", "words"),
    [
        ("/dev/dri:/dev/dri:rwx", "combination of r, w and m"),
        ("/dev/dri:/dev/dri:rr", "combination of r, w and m"),
        ("dri", "relative path"),
        ("/dev/a:/dev/b:rw:x", "not a device mapping"),
        ("/dev/a::rw", "not a device mapping"),
    ],
)
def test_invalid_devices_are_rejected(device: str, words: str) -> None:
    assert words in problem_paths(devices=[device])["steps[0].container.devices[0]"]


def test_tmpfs_options_keep_their_commas() -> None:
    c = container(
        tmpfs=["/dev/shm:rw,nosuid,size=1g", "/run/cache:size=512m,mode=1777"]
    )
    assert c.tmpfs == ["/dev/shm:rw,nosuid,size=1g", "/run/cache:size=512m,mode=1777"]


def test_tmpfs_relative_path_is_rejected() -> None:
    assert (
        "absolute"
        in problem_paths(tmpfs=["run:size=1m"])["steps[0].container.tmpfs[0]"]
    )


def test_dev_shm_tmpfs_with_shm_size_is_an_error_naming_both() -> None:
    paths = problem_paths(tmpfs=["/run", "/dev/shm:rw"], shm_size="1g")
    message = paths["steps[0].container.tmpfs[1]"]
    assert "/dev/shm" in message and "shm_size" in message


@pytest.mark.parametrize(
    "volume",
    [
        "/data/game:/app/data",
        "/data/game:/app/data:ro",
        "/data/game:/app/data:rw,rshared",
        "gamedata:/app/data",
        "/cache",
        "/data:/data:ro,z",
    ],
)
def test_valid_volumes_are_accepted(volume: str) -> None:
    assert container(volumes=[volume]).volumes == [volume]


@pytest.mark.parametrize(
    ("volume", "words"),
    [
        ("./data:/data", "relative host path"),
        ("data/x:/data", "relative host path"),
        ("~/data:/data", "relative host path"),
        ("/data:data", "must be absolute"),
        ("/data:/data:ro,rw", "both ro and rw"),
        ("/data:/data:shared,slave", "more than one propagation"),
        ("/data:/data:fast", "unknown mode"),
        ("/a:/b:ro:x", "not a volume"),
    ],
)
def test_invalid_volumes_are_rejected(volume: str, words: str) -> None:
    assert words in problem_paths(volumes=[volume])["steps[0].container.volumes[0]"]


def test_relative_volume_message_explains_the_volume_name_reading() -> None:
    message = problem_paths(volumes=["./data:/data"])["steps[0].container.volumes[0]"]
    assert "volume name" in message


# -- environment ----------------------------------------------------------------------


def test_env_number_becomes_its_decimal_text() -> None:
    assert container(environment={"DISPLAY_SIZEW": 1920}).environment == {
        "DISPLAY_SIZEW": "1920"
    }


def test_env_false_becomes_lowercase_false() -> None:
    env = container(environment={"SELKIES_ENABLE_RESIZE": False, "X": True}).environment
    assert env == {"SELKIES_ENABLE_RESIZE": "false", "X": "true"}


def test_env_float_becomes_its_decimal_text() -> None:
    env = container(environment={"RATIO": 1.5, "BIG": 1e10, "ONE": 1.0}).environment
    assert env == {"RATIO": "1.5", "BIG": "10000000000.0", "ONE": "1.0"}


def test_env_null_value_is_an_error_naming_the_key() -> None:
    paths = problem_paths(environment={"KEY": None, "OTHER": None})
    assert set(paths) == {
        "steps[0].container.environment.KEY",
        "steps[0].container.environment.OTHER",
    }
    assert "KEY has no value" in paths["steps[0].container.environment.KEY"]


def test_env_list_form_splits_at_the_first_equals_sign() -> None:
    env = container(environment=["A=1", "B=x=y", "C="]).environment
    assert env == {"A": "1", "B": "x=y", "C": ""}


def test_env_list_entry_without_equals_is_an_error() -> None:
    paths = problem_paths(environment=["A=1", "B"])
    assert "KEY=VALUE" in paths["steps[0].container.environment[1]"]


def test_env_nested_value_is_an_error() -> None:
    paths = problem_paths(environment={"A": [1, 2]})
    assert "steps[0].container.environment.A" in paths


# -- command and entrypoint ---------------------------------------------------------


def test_command_string_is_split_by_shell_rules_keeping_commas() -> None:
    words = split_command('--peers http://a:2379,http://b:2379 --motd "Welcome aboard"')
    assert words == [
        "--peers",
        "http://a:2379,http://b:2379",
        "--motd",
        "Welcome aboard",
    ]


def test_command_list_is_kept_as_is() -> None:
    assert container(command=["echo", "a b", "c,d"]).command == ["echo", "a b", "c,d"]


def test_command_with_unclosed_quote_is_an_error() -> None:
    paths = problem_paths(command='echo "oops')
    assert "close the quote" in paths["steps[0].container.command"]


def test_empty_command_list_is_an_error() -> None:
    assert "steps[0].container.command" in problem_paths(command=[])


# -- names and images -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["game-db", "a1", "game_server.v2"])
def test_docker_container_names_are_accepted(name: str) -> None:
    assert container(container_name=name).container_name == name


@pytest.mark.parametrize("name", ["-game", "a", "game server", "游戏"])
def test_invalid_container_names_are_rejected(name: str) -> None:
    assert (
        "container name"
        in problem_paths(container_name=name)["steps[0].container.container_name"]
    )


@pytest.mark.parametrize("name", ["host1", "game-1.example.com"])
def test_hostnames_are_accepted(name: str) -> None:
    assert container(hostname=name).hostname == name


@pytest.mark.parametrize("name", ["-host", "host_1", "a" * 65, "a..b"])
def test_invalid_hostnames_are_rejected(name: str) -> None:
    assert "hostname" in problem_paths(hostname=name)["steps[0].container.hostname"]


@pytest.mark.parametrize("image", ["Ubuntu:latest", "game server", ""])
def test_invalid_images_are_rejected(image: str) -> None:
    assert "steps[0].container.image" in problem_paths(image=image)


# -- GPU ------------------------------------------------------------------------------


def gpu(**request: Any) -> dict[str, Any]:
    return {"resources": {"reservations": {"devices": [request]}}}


def test_gpu_count_with_device_ids_is_an_error() -> None:
    paths = problem_paths(deploy=gpu(capabilities=["gpu"], count=1, device_ids=["0"]))
    key = "steps[0].container.deploy.resources.reservations.devices[0].count"
    assert "device_ids" in paths[key]


def test_gpu_capabilities_as_list_of_lists_is_an_error() -> None:
    paths = problem_paths(deploy=gpu(capabilities=[["gpu"], ["utility"]]))
    key = "steps[0].container.deploy.resources.reservations.devices[0].capabilities"
    assert "one list" in paths[key]


@pytest.mark.parametrize("count", [0, -1, "some", True])
def test_gpu_count_must_be_positive_or_all(count: Any) -> None:
    paths = problem_paths(deploy=gpu(capabilities=["gpu"], count=count))
    assert "steps[0].container.deploy.resources.reservations.devices[0].count" in paths


# -- extra compose fields ---------------------------------------------------------------


def test_sizes_are_normalised_for_the_engine() -> None:
    c = container(shm_size="1g", mem_limit="512mb")
    assert (c.shm_size, c.mem_limit) == ("1G", "512M")


@pytest.mark.parametrize("restart", ["no", "always", "unless-stopped", "on-failure:3"])
def test_restart_policies_are_accepted(restart: str) -> None:
    assert container(restart=restart).restart == restart


def test_unknown_restart_policy_is_rejected() -> None:
    assert (
        "restart policy"
        in problem_paths(restart="sometimes")["steps[0].container.restart"]
    )


def test_ulimit_number_means_soft_and_hard() -> None:
    c = container(ulimits={"nproc": 65535, "nofile": {"soft": 1024, "hard": 4096}})
    assert {k: (v.soft, v.hard) for k, v in c.ulimits.items()} == {
        "nproc": (65535, 65535),
        "nofile": (1024, 4096),
    }


def test_extra_hosts_need_an_ip_address() -> None:
    paths = problem_paths(extra_hosts=["game.local:not-an-ip"])
    assert "not an IP address" in paths["steps[0].container.extra_hosts[0]"]


def test_reserved_label_prefix_is_rejected() -> None:
    paths = problem_paths(labels={"io.beaglewind.gamepipeline.pipeline": "x"})
    assert "steps[0].container.labels.io.beaglewind.gamepipeline.pipeline" in paths


def test_bad_duration_is_rejected() -> None:
    paths = problem_paths(stop_grace_period="soon")
    assert "duration" in paths["steps[0].container.stop_grace_period"]


def test_relative_working_dir_is_rejected() -> None:
    assert "steps[0].container.working_dir" in problem_paths(working_dir="app")
