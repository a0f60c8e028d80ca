"""A normal (non-editable) install works outside the checkout: configs are package data.

``.ci/installed`` (run by ``.ci/run``) builds the wheel, installs it into a fresh venv and runs
``segment --demo`` and ``evaluate`` from a temporary folder; here its ``--quick`` mode loads every
shipped configuration, stain profile and the bundled model from that installed copy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about a minute (wheel build, fresh venv); .ci/run runs the full check every time
def test_installed_wheel_finds_its_configs_and_model() -> None:
    done = subprocess.run(["bash", str(REPO / ".ci" / "installed"), "--quick"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every shipped config and the bundled model load" in done.stdout
