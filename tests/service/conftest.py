"""Fixtures of the service tests that need more than one file: a work dir for the daemon run as
an unprivileged user (root reads every file and folder, so permission cases need another user)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import NOBODY, NOBODY_PREFIX


@pytest.fixture
def nobody_root(default_model: Path) -> Iterator[Path]:
    """A work dir uid 65534 can use: the model linked in, data/ owned by that user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user (and root reads every file anyway)")
    probe = subprocess.run([*NOBODY_PREFIX, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot run as uid {NOBODY}: {probe.stderr.strip()}")
    base = Path(tempfile.mkdtemp(prefix="embedd-nobody-"))
    try:
        base.chmod(0o755)
        model = base / default_model.name
        try:
            os.link(default_model, model)
        except OSError:
            shutil.copyfile(default_model, model)
        model.chmod(0o644)
        (base / "data").mkdir()
        os.chown(base / "data", NOBODY, NOBODY)
        yield base
    finally:
        # A test may have made folders unreadable (chmod 000): give them back before removing.
        for folder in base.rglob("*"):
            with contextlib.suppress(OSError):
                if folder.is_dir():
                    folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
