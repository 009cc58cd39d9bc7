"""Markers of the runs in progress on this node, kept on disk so that a restarted agent
can settle the runs its predecessor left unfinished (see ``recovery``)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ActiveRuns:
    """The markers of the runs in progress on this node."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, pipeline_id: str) -> Path:
        return self.directory / f"{_SAFE.sub('_', pipeline_id)}.json"

    def record(self, pipeline_id: str, marker: dict[str, Any]) -> None:
        path = self._path(pipeline_id)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"pipeline_id": pipeline_id, **marker}))
        os.replace(tmp, path)

    def update_step(self, pipeline_id: str, step: int) -> None:
        marker = self.read(pipeline_id)
        if marker is not None:
            marker["step"] = step
            self.record(pipeline_id, marker)

    def read(self, pipeline_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._path(pipeline_id).read_text())
        except (OSError, ValueError):
            return None
        return data

    def remove(self, pipeline_id: str) -> None:
        self._path(pipeline_id).unlink(missing_ok=True)

    def leftovers(self) -> list[dict[str, Any]]:
        markers = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                markers.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                log.warning("unreadable run marker %s; removing it", path)
                path.unlink(missing_ok=True)
        return markers
