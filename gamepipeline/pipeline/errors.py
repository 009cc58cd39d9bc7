"""Errors of the pipeline language.

Every mistake in a document, in args or in envs is a ``Problem``: where it is (a path
such as ``steps[1].container.ports[0]``) and a sentence saying what is wrong and how to
fix it. ``ValidationError`` carries every problem found in one document at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class PipelineError(Exception):
    """Base of every error raised by ``gamepipeline.pipeline``."""


@dataclass(frozen=True)
class Problem:
    """One mistake: where it is and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        if not self.path:
            return self.message
        return f"{self.path}: {self.message}"


class ValidationError(PipelineError):
    """A document, or the args and envs given for it, is not acceptable."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class GrammarError(ValueError):
    """Raised inside field validators; carries problems relative to the field.

    Each entry is ``(suffix, message)``: the suffix is appended to the field's path
    (``"[0]"``, ``".KEY"`` or ``""`` for the field itself).
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(m for _, m in self.problems))

    @classmethod
    def one(cls, message: str, suffix: str = "") -> GrammarError:
        return cls([(suffix, message)])


def join_path(base: str, suffix: str | int) -> str:
    """Extend a path with a key (``a.b``) or an index (``a[0]``)."""
    if isinstance(suffix, int):
        return f"{base}[{suffix}]"
    if not base:
        return suffix
    return f"{base}.{suffix}"
