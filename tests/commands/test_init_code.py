"""`embedd init --code` and the `[[watch]] preset` / `respect_gitignore` keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import CODE_INCLUDE, load_config, parse_config
from daemon.errors import ConfigError


def test_init_code_writes_a_code_watch(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    assert main(["init", "--code", str(tmp_path / "project"), "--config", str(cfg)]) == 0
    (watch,) = load_config(cfg).watches
    assert watch.preset == "code" and watch.respect_gitignore
    assert set(CODE_INCLUDE) <= set(watch.include) and "*.pdf" not in watch.include
    assert "node_modules" in watch.exclude and ".*" in watch.exclude
    assert 'preset = "code"' in cfg.read_text()


def test_preset_adds_to_a_given_include_and_unknown_presets_are_refused(tmp_path: Path) -> None:
    config = parse_config({"watch": [{"path": "src", "preset": "code", "include": ["*.proto"]}]}, tmp_path)
    assert "*.proto" in config.watches[0].include and "*.py" in config.watches[0].include
    with pytest.raises(ConfigError) as raised:
        parse_config({"watch": [{"path": "src", "preset": "java"}]}, tmp_path)
    assert raised.value.field == "watch[0].preset"
    plain = parse_config({"watch": [{"path": "src", "respect_gitignore": False}]}, tmp_path).watches[0]
    assert not plain.respect_gitignore and plain.preset == "" and "*.py" not in plain.include
