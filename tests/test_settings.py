"""Settings come from BOTLNEK_* variables and fail loudly on bad values."""

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from botlnek_site.env import env_bool, env_int, env_list
from tests.toolkit import ROOT


def test_env_helpers_parse_and_reject(monkeypatch):
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_INT", "12")
    monkeypatch.setenv("X_LIST", "a.example, b.example,,")
    assert env_bool("X_BOOL") is True
    assert env_int("X_INT", 1) == 12
    assert env_list("X_LIST", []) == ["a.example", "b.example"]
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL"):
        env_bool("X_BOOL")
    monkeypatch.setenv("X_INT", "many")
    with pytest.raises(ImproperlyConfigured, match="X_INT must be an integer"):
        env_int("X_INT", 1)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BOTLNEK_DEBUG", "maybe", "BOTLNEK_DEBUG must be 1 or 0"),
        ("BOTLNEK_DATABASE_URL", "mysql://x/y", "must be sqlite:// or postgres://"),
        ("BOTLNEK_DB_POOL_SIZE", "1", "BOTLNEK_DB_POOL_SIZE must be at least 2"),
        ("BOTLNEK_WRITE_RATE", "fast", "BOTLNEK_WRITE_RATE must look like 100/s"),
        ("BOTLNEK_HTTPS", "1", "BOTLNEK_SECRET_KEY is required with BOTLNEK_HTTPS=1"),
        ("BOTLNEK_SQLITE_SYNCHRONOUS", "off", "must be full or normal, not 'off'"),
        (
            "BOTLNEK_WEBHOOK_ALLOWED_HOSTS",
            "external, 10.0.0.0/33",
            "BOTLNEK_WEBHOOK_ALLOWED_HOSTS: '10.0.0.0/33' is neither",
        ),
    ],
)
def test_bad_setting_stops_the_server_with_its_name(tmp_path, variable, value, message):
    env = {**os.environ, "BOTLNEK_DATA_DIR": str(tmp_path), variable: value}
    env.pop("BOTLNEK_SECRET_KEY", None)
    if variable == "BOTLNEK_DB_POOL_SIZE":
        env["BOTLNEK_DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/x"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_secret_key_is_generated_once_into_the_data_dir(tmp_path):
    env = {**os.environ, "BOTLNEK_DATA_DIR": str(tmp_path)}
    env.pop("BOTLNEK_SECRET_KEY", None)
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    run = [sys.executable, "-c", f"import django; django.setup(); {code}"]
    env["DJANGO_SETTINGS_MODULE"] = "botlnek_site.settings"
    first = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True)
    second = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.stdout == second.stdout and len(first.stdout.strip()) >= 50
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_check_deploy_is_clean_with_https_switched_on(tmp_path):
    env = {
        **os.environ,
        "BOTLNEK_DATA_DIR": str(tmp_path),
        "BOTLNEK_DEBUG": "0",
        "BOTLNEK_HTTPS": "1",
        "BOTLNEK_SECRET_KEY": "k" * 20 + "-a-long-random-value-from-the-operator-" * 2,
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_dashboard_pages_carry_a_content_security_policy(admin_client):
    page = admin_client.get("/")
    assert "script-src 'self'" in page["Content-Security-Policy"]
    assert page["X-Frame-Options"] == "DENY"
    assert "Content-Security-Policy" not in admin_client.get("/admin/")


@pytest.mark.parametrize(("setting", "level"), [(None, "2"), ("normal", "1")])
def test_sqlite_syncs_every_commit_unless_told_otherwise(tmp_path, setting, level):
    """synchronous=FULL (2) by default: an acknowledged commit survives a power
    cut; NORMAL (1) when the operator trades that for speed."""
    env = {**os.environ, "BOTLNEK_DATA_DIR": str(tmp_path)}
    env.pop("BOTLNEK_DATABASE_URL", None)
    if setting:
        env["BOTLNEK_SQLITE_SYNCHRONOUS"] = setting
    code = (
        "from django.db import connection\n"
        "cursor = connection.cursor()\n"
        "print(cursor.execute('PRAGMA synchronous').fetchone()[0],"
        " cursor.execute('PRAGMA journal_mode').fetchone()[0])"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines()[-1].split() == [level, "wal"]
