"""Where the local Prefect server lives, and when a command uses it (longrun.flows.server, longrun.cli.connect)."""

from __future__ import annotations

import argparse
from pathlib import Path

from longrun.cli.connect import configured_api_url, wants_ephemeral
from longrun.flows.server import ServerPaths


def test_the_data_dir_is_longrun_home_else_xdg_data_home_else_local_share():
    assert ServerPaths.from_env({"LONGRUN_HOME": "/a/lr", "XDG_DATA_HOME": "/x"}).home == Path("/a/lr")
    assert ServerPaths.from_env({"XDG_DATA_HOME": "/x"}).home == Path("/x/longrun")
    assert ServerPaths.from_env({}).home == Path.home() / ".local" / "share" / "longrun"
    paths = ServerPaths(Path("/d"))
    assert (paths.state, paths.lock, paths.log, paths.prefect_home) == (
        Path("/d/server.json"),
        Path("/d/server.lock"),
        Path("/d/server.log"),
        Path("/d/prefect"),
    )


def test_prefect_api_url_from_the_environment_or_the_active_profile(tmp_path):
    home = tmp_path / "prefect-home"
    env = {"PREFECT_HOME": str(home)}
    assert configured_api_url(env) is None  # no profiles file
    assert configured_api_url(env | {"PREFECT_API_URL": "http://h:1/api"}) == "http://h:1/api"
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://team:4200/api"\n[profiles.solo]\n'
    )
    assert configured_api_url(env) == "http://team:4200/api"
    assert configured_api_url(env | {"PREFECT_PROFILE": "solo"}) is None
    assert configured_api_url(env | {"PREFECT_API_URL": "http://h:1/api"}) == "http://h:1/api"  # the environment wins
    (home / "profiles.toml").write_text("not toml [")
    assert configured_api_url(env) is None


def test_ephemeral_by_flag_or_environment():
    assert wants_ephemeral(argparse.Namespace(ephemeral=True), {})
    assert wants_ephemeral(argparse.Namespace(), {"LONGRUN_EPHEMERAL": "1"})
    assert not wants_ephemeral(argparse.Namespace(ephemeral=False), {"LONGRUN_EPHEMERAL": "0"})
    assert not wants_ephemeral(argparse.Namespace(), {})
