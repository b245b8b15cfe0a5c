"""``isekai users add``: create or update an admin API user in the configured store."""

from __future__ import annotations

import asyncio
import io

import pytest

from isekai.admin.auth import verify_password
from isekai.cli import main
from isekai.store import open_store


def _user(url: str, name: str) -> dict | None:
    async def read():
        store = open_store(url)
        await store.open()
        try:
            return await store.get_user(name)
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "gw.yaml"
    url = f"sqlite:///{tmp_path}/users.db"
    path.write_text(f'routes: []\nstore: {{url: "{url}"}}\n')
    return path, url


def test_users_add_creates_then_updates(config_file, capsys, monkeypatch):
    monkeypatch.delenv("ISEKAI_USER_PASSWORD", raising=False)
    path, url = config_file
    code = main(
        ["users", "add", "alice", "--role", "editor", "--password", "first secret", "-c", str(path)]
    )
    assert code == 0
    assert "user 'alice' created with role editor" in capsys.readouterr().out
    user = _user(url, "alice")
    assert user["role"] == "editor" and verify_password("first secret", user["password_hash"])
    monkeypatch.setattr("sys.stdin", io.StringIO("second secret\n"))
    code = main(["users", "add", "alice", "--role", "admin", "--password-stdin", "-c", str(path)])
    assert code == 0
    assert "user 'alice' updated with role admin" in capsys.readouterr().out
    user = _user(url, "alice")
    assert user["role"] == "admin" and verify_password("second secret", user["password_hash"])


def test_users_add_takes_the_password_from_the_environment(config_file, monkeypatch):
    path, url = config_file
    monkeypatch.setenv("ISEKAI_USER_PASSWORD", "from the env")
    monkeypatch.setenv("ISEKAI_CONFIG", str(path))
    assert main(["users", "add", "bob", "--role", "viewer"]) == 0
    assert verify_password("from the env", _user(url, "bob")["password_hash"])


def test_users_add_store_url_option_beats_the_config(config_file, tmp_path):
    path, _ = config_file
    other = f"sqlite:///{tmp_path}/other.db"
    args = ["users", "add", "carol", "--role", "viewer", "--password", "long enough pw"]
    assert main([*args, "-c", str(path), "--store-url", other]) == 0
    assert _user(other, "carol") is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--role", "root", "--password", "long enough pw"], "invalid choice: 'root'"),
        (["--role", "admin", "--password", "short"], "at least 12 characters"),
        (["--role", "admin"], "no password"),
        (["--role", "admin", "--password", "long enough pw", "--password-stdin"], "one way"),
    ],
)
def test_users_add_usage_errors_exit_2(config_file, capsys, monkeypatch, args, message):
    monkeypatch.delenv("ISEKAI_USER_PASSWORD", raising=False)
    path, url = config_file
    assert main(["users", "add", "dave", *args, "-c", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_users_add_bad_name_and_bad_config(tmp_path, capsys):
    assert (
        main(["users", "add", "bad name", "--role", "admin", "--password", "long enough pw"]) == 2
    )
    assert "bad username" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {url: nope}\n")
    code = main(
        ["users", "add", "x", "--role", "admin", "--password", "long enough pw", "-c", str(bad)]
    )
    assert code == 1
    assert "store.url" in capsys.readouterr().err


def test_users_without_action_prints_help(capsys):
    assert main(["users"]) == 2
    assert "add" in capsys.readouterr().err
