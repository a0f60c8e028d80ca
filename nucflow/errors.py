"""The exception hierarchy: every error a user can cause is one of these.

Each subclasses a builtin as well, so callers that catch ``OSError`` or ``ValueError``
keep working. Messages say what was wrong, with which value, and what to do.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "ConfigError",
    "EvaluationError",
    "InputError",
    "ModelError",
    "NucflowError",
    "PreflightError",
    "SlideError",
    "TrainingError",
]


class NucflowError(Exception):
    """Base class of every error nucflow raises on purpose."""


class InputError(NucflowError, ValueError):
    """A path, glob or option given by the user is unusable."""


class PreflightError(InputError):
    """What a run found wrong before starting any work: every problem, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"nothing was started: {len(self.problems)} problem(s) to fix first:\n{lines}")


class ConfigError(NucflowError, ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, out of range)."""


class SlideError(NucflowError, OSError):
    """A slide cannot be opened or read, or lacks what the pipeline needs (e.g. resolution)."""


class ModelError(NucflowError, ValueError):
    """A model file or model card is missing, corrupt, or not understood by this version."""


class TrainingError(NucflowError, RuntimeError):
    """Training data or a training run is unusable."""


class EvaluationError(NucflowError, ValueError):
    """Evaluation inputs (images, truth, predictions) are unusable or do not pair up."""


class ClusterError(NucflowError, RuntimeError):
    """A Ray cluster or job cannot be reached, used or followed."""
