"""The grammar of container field values: ports, devices, tmpfs, volumes, names, sizes.

Each ``parse_*`` function takes one written value and returns it in the form the
compiler needs, or raises ``ValueError`` with a sentence that shows the value and says
what is accepted. Nothing here knows about paths; callers add them.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .documents import written_text

PROTOCOLS = ("tcp", "udp", "sctp")
_PORT_HINT = "write [IP:][HOST[-END]:]CONTAINER[-END][/tcp|udp|sctp]"


# -- ports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PortMapping:
    ip: str | None
    host: tuple[int, int] | None  # first, last
    container: tuple[int, int]
    protocol: str | None


def _port_range(text: str, whole: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    bounds = []
    for part in (first, last) if sep else (first,):
        if not part.isdigit():
            raise ValueError(f'"{whole}" is not a port mapping; {_PORT_HINT}')
        number = int(part)
        if not 1 <= number <= 65535:
            raise ValueError(f'"{whole}" uses port {number}; ports run from 1 to 65535')
        bounds.append(number)
    if len(bounds) == 2 and bounds[1] < bounds[0]:
        raise ValueError(f'"{whole}" has a range that runs backwards; write LOW-HIGH')
    return bounds[0], bounds[-1]


def parse_port(text: str) -> PortMapping:
    """Parse ``[IP:][HOST[-END]:]CONTAINER[-END][/PROTO]``."""
    rest, protocol = text, None
    if "/" in text:
        rest, _, protocol = text.rpartition("/")
        if protocol not in PROTOCOLS or "/" in rest:
            raise ValueError(
                f'"{text}" has an unknown protocol suffix; end with /tcp, /udp or /sctp'
            )

    ip: str | None = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0 or rest[close + 1 : close + 2] != ":":
            raise ValueError(f'"{text}" is not a port mapping; {_PORT_HINT}')
        ip, rest = rest[1:close], rest[close + 2 :]
        _check_ip(ip, text, version=6)
        parts = rest.split(":")
        if len(parts) != 2:
            raise ValueError(f'"{text}" is not a port mapping; {_PORT_HINT}')
        parts = [ip, *parts]
    else:
        parts = rest.split(":")
        if len(parts) > 3:
            raise ValueError(
                f'"{text}" is not a port mapping; {_PORT_HINT} (put an IPv6 address '
                "in brackets)"
            )
        if len(parts) == 3:
            ip = parts[0]
            _check_ip(ip, text, version=4)

    container = _port_range(parts[-1], text)
    host = None
    if len(parts) >= 2 and parts[-2] != "":
        host = _port_range(parts[-2], text)
    elif len(parts) == 2:
        raise ValueError(f'"{text}" is not a port mapping; {_PORT_HINT}')
    if host and host[1] - host[0] != container[1] - container[0]:
        if host[0] != host[1] and container[0] != container[1]:
            raise ValueError(
                f'"{text}" maps ranges of different lengths; give the host and the '
                "container ranges the same number of ports"
            )
        if container[0] != container[1]:
            raise ValueError(
                f'"{text}" maps a container range to one host port; give the host '
                "a range of the same length"
            )
    return PortMapping(ip, host, container, protocol)


def _check_ip(ip: str, whole: str, version: int) -> None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(
            f'"{whole}" is not a port mapping ("{ip}" is not an IP address); '
            f"{_PORT_HINT}"
        ) from None
    if address.version != version:
        raise ValueError(
            f'"{whole}" is not a port mapping; put an IPv6 address in brackets: '
            "[::1]:8080:80"
        )


# -- devices, tmpfs, volumes ----------------------------------------------------------


def parse_device(text: str) -> tuple[str, str, str]:
    """``HOST[:CONTAINER[:PERMS]]`` → (host, container, perms); perms default rwm."""
    parts = text.split(":")
    if len(parts) > 3 or not all(parts):
        raise ValueError(
            f'"{text}" is not a device mapping; write HOST[:CONTAINER[:PERMS]] such '
            "as /dev/dri:/dev/dri:rwm"
        )
    host = parts[0]
    container = parts[1] if len(parts) > 1 else host
    perms = parts[2] if len(parts) > 2 else "rwm"
    for path in (host, container):
        if not path.startswith("/"):
            raise ValueError(
                f'"{text}" uses the relative path "{path}"; device paths are absolute '
                "(/dev/…)"
            )
    if not set(perms) <= set("rwm") or len(set(perms)) != len(perms):
        raise ValueError(
            f'"{text}" has permissions "{perms}"; write a non-empty combination of '
            "r, w and m, each at most once"
        )
    return host, container, perms


def parse_tmpfs(text: str) -> tuple[str, str]:
    """``PATH[:OPTIONS]`` split at the first colon; options keep their commas."""
    path, _, options = text.partition(":")
    if not path.startswith("/"):
        raise ValueError(
            f'"{text}" mounts a tmpfs at "{path}"; write an absolute container path '
            "such as /dev/shm:rw,size=1g"
        )
    if ":" in text and not options:
        raise ValueError(f'"{text}" has an empty option list; drop the colon')
    return path, options


_VOLUME_MODES = {"ro", "rw", "z", "Z", "nocopy", "consistent", "cached", "delegated"}
_PROPAGATION = {"shared", "rshared", "slave", "rslave", "private", "rprivate"}
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def parse_volume(text: str) -> tuple[str | None, str, list[str]]:
    """``[SOURCE:]TARGET[:MODES]`` → (source, target, modes)."""
    parts = text.split(":")
    if len(parts) == 1:
        source, target, modes = None, parts[0], ""
    elif len(parts) == 2:
        source, target, modes = parts[0], parts[1], ""
    elif len(parts) == 3:
        source, target, modes = parts
    else:
        raise ValueError(
            f'"{text}" is not a volume; write SOURCE:TARGET[:MODES] such as '
            "/data/game:/app/data:ro"
        )
    if source is not None:
        _check_volume_source(source, text)
    if not target.startswith("/"):
        raise ValueError(
            f'"{text}" mounts at "{target}"; the container path must be absolute'
        )
    flags = modes.split(",") if modes else []
    for flag in flags:
        if flag not in _VOLUME_MODES | _PROPAGATION:
            known = ", ".join(sorted(_VOLUME_MODES | _PROPAGATION))
            raise ValueError(f'"{text}" has the unknown mode "{flag}"; use {known}')
    if {"ro", "rw"} <= set(flags):
        raise ValueError(f'"{text}" is both ro and rw; choose one')
    if len(set(flags) & _PROPAGATION) > 1:
        raise ValueError(f'"{text}" has more than one propagation mode; choose one')
    if len(set(flags)) != len(flags):
        raise ValueError(f'"{text}" repeats a mode; give each mode once')
    return source, target, flags


def _check_volume_source(source: str, whole: str) -> None:
    if source.startswith("/"):
        return
    if source.startswith((".", "~")) or "/" in source or not source:
        raise ValueError(
            f'"{whole}" uses the relative host path "{source}"; the engine would '
            "read it as a volume name, so write an absolute host path (or a volume "
            "name of letters, digits, _ . -)"
        )
    if not _VOLUME_NAME.match(source):
        raise ValueError(
            f'"{whole}" names the volume "{source}"; volume names use letters, '
            "digits, _ . - and start with a letter or digit"
        )


# -- names ----------------------------------------------------------------------------

_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_HOST_LABEL = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_IMAGE = re.compile(
    r"^(?:(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?/)?"  # registry
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # first path component
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # more components
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


def check_container_name(name: str) -> str:
    if not _CONTAINER_NAME.match(name):
        raise ValueError(
            f'"{name}" is not a Docker container name; use at least two characters '
            "of letters, digits, _ . - starting with a letter or digit"
        )
    return name


def check_hostname(name: str) -> str:
    labels = name.split(".")
    if len(name) > 64 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(
            f'"{name}" is not a hostname; use at most 64 characters in dot-separated '
            "labels of letters, digits and inner hyphens"
        )
    return name


def check_image(image: str) -> str:
    if not _IMAGE.match(image):
        raise ValueError(
            f'"{image}" is not an image reference; write [REGISTRY/]NAME[:TAG] with '
            "a lower-case name, such as registry.example.com/team/game:1.0"
        )
    return image


# -- scalars: env values, durations, sizes ----------------------------------------------


def scalar_text(value: Any) -> str:
    """The text a container sees for a YAML scalar: ``false`` → ``"false"``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    written = written_text(value)
    if written is not None:
        return written
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number; quote it as text")
        return format(Decimal(repr(value)), "f")
    raise ValueError(
        f"{value!r} is a {type(value).__name__}, not text; write a string, number or "
        "boolean"
    )


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


#: The longest duration a template may give (a timeout, a grace period): a year. Longer
#: is a mistake, and would not fit the engine's or the database's integers.
LONGEST_DURATION_SECONDS = 366 * 24 * 3600.0


def parse_duration(value: Any) -> float:
    """``"1m30s"``, ``"500ms"``, ``"2h"`` or a number of seconds → seconds."""
    seconds = _duration_seconds(value)
    if seconds > LONGEST_DURATION_SECONDS:
        raise ValueError(
            f"{value!r} is longer than a year; give a duration of at most 8784h"
        )
    return seconds


def _duration_seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{value} is negative; give a duration such as 30s")
        return float(value)
    if isinstance(value, str) and value:
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos == len(value):
            return total
    raise ValueError(
        f"{value!r} is not a duration; write a number of seconds or units such as "
        "90s, 5m, 1h30m, 500ms"
    )


_SIZE = re.compile(r"^(\d+)\s*([bkmgtp]?)b?$", re.I)


def parse_size(value: Any) -> str:
    """``"1g"``, ``"512mb"`` or a number of bytes → ``"1G"``, ``"512M"``, ``"1024"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match and int(match.group(1)) > 0:
            return match.group(1) + match.group(2).upper().replace("B", "")
    raise ValueError(
        f"{value!r} is not a size; write a positive number with an optional unit b, "
        "k, m, g, t or p such as 512m or 2g"
    )


# -- command lines ----------------------------------------------------------------------


def split_command(value: str | list[str]) -> list[str]:
    """A list as is; a string split by shell rules (quotes group, commas stay)."""
    if isinstance(value, list):
        return list(value)
    try:
        words = shlex.split(value)
    except ValueError as err:
        raise ValueError(
            f'"{value}" cannot be split into words ({err}); close the quote or write '
            "the command as a list"
        ) from None
    if not words:
        raise ValueError(
            "the command is empty; leave the field out to keep the image's own"
        )
    return words


def script_of(commands: list[str]) -> str:
    """The shell script for ``commands:``: stops at the first failing line."""
    return "set -e\n" + "\n".join(commands) + "\n"
