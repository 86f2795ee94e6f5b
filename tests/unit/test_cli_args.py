"""CLI argument checks that must fail loudly instead of doing something surprising."""
from __future__ import annotations

import os

import pytest

from gastown.cli.main import main


@pytest.mark.parametrize("url", ["sqlite:///x.db", "mysql://h/db", "postgres:/h/db"])
def test_worker_db_url_is_refused_not_taken_as_a_directory(tmp_path, monkeypatch, capsys, url):
    """``--db postgresql://…`` used to create a SQLite file under a directory named ``postgresql:``
    (PostgreSQL URLs are the store's now; other schemes are still refused)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GASTOWN_ADMIN_TOKEN", "a" * 16)
    monkeypatch.setenv("GASTOWN_JWT_SECRET", "s" * 32)
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--db", url])
    assert exc.value.code == 2
    assert "URLs are not supported" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("url", ["postgresql://u:hunter2@127.0.0.1/db", "postgres://u:@h/db",
                                 "postgresql://u@h/db?sslmode=require&password=hunter2"])
def test_a_database_password_on_the_command_line_is_refused(tmp_path, monkeypatch, capsys, url):
    """argv is readable by every user of the machine (``ps``): the password goes in PGPASSWORD,
    ~/.pgpass or GASTOWN_DB_URL."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--db", url])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "GASTOWN_DB_URL" in err and "hunter2" not in err


def test_the_database_url_with_its_password_comes_from_the_environment(monkeypatch):
    from gastown.cli.main import _parser

    monkeypatch.setenv("GASTOWN_DB_URL", "postgresql://u:hunter2@127.0.0.1:5/db")
    assert _parser().parse_args(["worker"]).db == "postgresql://u:hunter2@127.0.0.1:5/db"
    assert _parser().parse_args(["worker", "--db", "postgresql://u@h/other"]).db == "postgresql://u@h/other"


def test_a_rerun_that_cannot_reuse_the_town_moves_the_old_state_aside_not_away(tmp_path):
    """The mayor's history (data/) and the worker DB used to be deleted when a port was taken."""
    from gastown.cli.up import _set_aside

    (tmp_path / "data" / "agents").mkdir(parents=True)
    (tmp_path / "worker.db").write_text("db")
    (tmp_path / "town.json").write_text("{}")
    (tmp_path / "up.log").write_text("kept in place")
    aside = _set_aside(tmp_path)
    assert aside is not None and aside.parent == tmp_path and aside.name.startswith("previous-")
    assert sorted(p.name for p in aside.iterdir()) == ["data", "town.json", "worker.db"]
    assert (aside / "worker.db").read_text() == "db" and (tmp_path / "up.log").exists()
    assert _set_aside(tmp_path) is None  # nothing left to move


@pytest.mark.parametrize("args, env, message", [
    (["--containers", "docker"], {}, "needs --image"),
    (["--containers", "kubernetes"], {}, "needs --image"),
    (["--containers", "local"], {"GASTOWN_IDLE_STOP_S": "0"}, "GASTOWN_IDLE_STOP_S must be > 0"),
    (["--containers", "local"], {"GASTOWN_IDLE_STOP_S": "soon"}, "must be a number of seconds"),
    (["--containers", "local"], {"GASTOWN_IDLE_STOP_THROTTLE_S": "nan"}, "GASTOWN_IDLE_STOP_THROTTLE_S must be > 0"),
    (["--containers", "local"], {"GASTOWN_CONTAINER_ENV_FILE": "{dir}/env.json"}, "JSON object of strings"),
    (["--containers", "local"], {"GASTOWN_CONTAINER_ENV_FILE": "{dir}/missing.json"}, "GASTOWN_CONTAINER_ENV_FILE"),
])
def test_a_bad_container_provider_setting_stops_the_worker_with_a_message(tmp_path, monkeypatch, capsys, args, env,
                                                                           message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GASTOWN_ADMIN_TOKEN", "a" * 16)
    monkeypatch.setenv("GASTOWN_JWT_SECRET", "s" * 32)
    (tmp_path / "env.json").write_text('{"GASTOWN_KILO_PROVIDERS": 7}')
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(dir=tmp_path))
    assert main(["worker", "--db", str(tmp_path / "w.db"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w.db").exists()
