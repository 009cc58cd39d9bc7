"""Helpers for the pipeline language's unit tests."""

from __future__ import annotations

from typing import Any


def container_doc(**container: Any) -> dict[str, Any]:
    """A one-step template document whose container has the given fields."""
    container.setdefault("image", "gamepipeline/stand-in:busybox")
    return {"name": "t", "steps": [{"name": "s", "container": container}]}
