"""What an installed package relies on: the client without Django, ./data under the
working directory, the app's templates and static files inside the app.

.ci/wheel-smoke checks the same from a built wheel installed into a fresh venv.
"""

import os
import subprocess
import sys
from pathlib import Path

from django.contrib.staticfiles import finders
from django.template.loader import get_template

import aggregates

APP_DIR = Path(aggregates.__file__).resolve().parent


def clean_env() -> dict[str, str]:
    """This environment without Django's or Botlnek's settings."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BOTLNEK_", "DJANGO_"))
    }


def test_client_and_cli_import_without_django(tmp_path):
    code = """
import sys
import aggregates.client, aggregates.client.cli
assert "django" not in sys.modules, "the client imported Django"
loaded = {name.split(".")[0] for name in sys.modules}
foreign = {
    name for name in loaded - set(sys.stdlib_module_names)
    if not name.startswith("_")  # site's own helpers (.pth files, __main__)
}
assert foreign == {"aggregates", "websockets"}, sorted(foreign)
print(aggregates.client.Client.__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Client"
    # Importing the client configures no server: no data directory appears.
    assert list(tmp_path.iterdir()) == []


def test_default_data_dir_is_data_under_the_working_directory(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.DATA_DIR); print(settings.DATABASES['default']['NAME'])"
    )
    env = {**clean_env(), "DJANGO_SETTINGS_MODULE": "botlnek_site.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data_dir, database = result.stdout.splitlines()
    assert Path(data_dir) == tmp_path.resolve() / "data"
    assert Path(database) == tmp_path.resolve() / "data" / "botlnek.sqlite3"
    assert (tmp_path / "data" / "secret_key").is_file()


def test_data_dir_variable_overrides_the_working_directory(tmp_path):
    code = "import django; django.setup(); from django.conf import settings; "
    code += "print(settings.DATA_DIR)"
    env = {
        **clean_env(),
        "DJANGO_SETTINGS_MODULE": "botlnek_site.settings",
        "BOTLNEK_DATA_DIR": "elsewhere",
    }
    (tmp_path / "run").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path / "run",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path.resolve() / "run" / "elsewhere"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["elsewhere"]


def test_the_apps_templates_and_static_files_are_found_inside_the_app():
    """The app's pages and files; the site's own templates are the top-level
    templates/ (tests/test_site_templates.py), shipped inside botlnek_site."""
    for name in ("dashboard/domain.html", "dashboard/partials/picture.html"):
        origin = Path(get_template(name).origin.name)
        assert origin.is_relative_to(APP_DIR / "templates"), origin
    for name in ("botlnek/botlnek.css", "botlnek/vendor/htmx-2.0.11.min.js"):
        found = Path(finders.find(name))
        assert found.is_relative_to(APP_DIR / "static"), found
