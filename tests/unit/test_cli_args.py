"""CLI argument checks that must fail loudly instead of doing something surprising."""
from __future__ import annotations

import os

import pytest

from gastown.cli.main import main


@pytest.mark.parametrize("url", ["postgresql://user@host/db", "postgres://h/db", "sqlite:///x.db", "mysql://h/db"])
def test_worker_db_url_is_refused_not_taken_as_a_directory(tmp_path, monkeypatch, capsys, url):
    """``--db postgresql://…`` used to create a SQLite file under a directory named ``postgresql:``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GASTOWN_ADMIN_TOKEN", "a" * 16)
    monkeypatch.setenv("GASTOWN_JWT_SECRET", "s" * 32)
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--db", url])
    assert exc.value.code == 2
    assert "URLs are not supported" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
