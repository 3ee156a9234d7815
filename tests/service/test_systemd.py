"""The systemd unit: systemd-analyze accepts it and scores it as hardened (where systemd-analyze exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "embedd.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _unit_with_real_binary(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks that)."""
    text = UNIT.read_text().replace("/opt/embedd/.venv/bin/embedd", sys.executable)
    out = tmp_path / "embedd.service"
    out.write_text(text)
    return out


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "verify", str(_unit_with_real_binary(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "embedd.service" not in proc.stderr, proc.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(_unit_with_real_binary(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for embedd\.service: ([0-9.]+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 1.0, "the README quotes 0.6 SAFE; keep the unit hardened"


def test_unit_runs_the_documented_command_as_an_unprivileged_user() -> None:
    text = UNIT.read_text()
    assert "ExecStart=/opt/embedd/.venv/bin/embedd --config /etc/embedd/config.toml" in text
    assert "User=embedd" in text and "Type=notify" in text and "Restart=on-failure" in text
    assert "ReadWritePaths=/var/lib/embedd" in text and "ProtectSystem=strict" in text


def test_unit_gives_the_api_socket_a_runtime_folder_and_keeps_no_network() -> None:
    text = UNIT.read_text()
    assert "RuntimeDirectory=embedd" in text and "RuntimeDirectoryMode=0750" in text
    assert "PrivateNetwork=yes" in text and "RestrictAddressFamilies=AF_UNIX\n" in text
