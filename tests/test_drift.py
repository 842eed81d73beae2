"""The reference pages keep up with the code: a setting, a route or a flag added
without its line in docs/reference/ fails here, and so does a documented one the
code no longer has."""

import ast
import re

from django.core.management import load_command_class
from django.core.management.base import BaseCommand
from django.urls import URLPattern, URLResolver, get_resolver

from aggregates.api import api
from aggregates.client import cli
from aggregates.live.routing import websocket_urlpatterns
from tests.toolkit import ROOT

REFERENCE = ROOT / "docs" / "reference"
SOURCES = [*(ROOT / "botlnek_site").rglob("*.py"), *(ROOT / "aggregates").rglob("*.py")]
VARIABLE = re.compile(r"BOTLNEK_[A-Z0-9_]+")


def _variables_in_code() -> tuple[set[str], set[str]]:
    """BOTLNEK_* names written as strings in the server's and client's code: those
    it reads (or sets for its own worker), and those it sets for the commands
    `botlnek watch` runs (the keys of a dict literal)."""
    read, given = set(), set()
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        keys = {
            id(key)
            for node in ast.walk(tree)
            if isinstance(node, ast.Dict)
            for key in node.keys
            if key is not None
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if not VARIABLE.fullmatch(node.value):
                    continue
                (given if id(node) in keys else read).add(node.value)
    return read, given


def _table_names(page: str, pattern: re.Pattern) -> set[str]:
    """The first column of the page's tables, as code."""
    text = (REFERENCE / page).read_text()
    return {match[1] for line in text.splitlines() if (match := pattern.match(line))}


def test_every_setting_the_code_reads_is_in_the_settings_reference():
    read, given = _variables_in_code()
    documented = _table_names("settings.md", re.compile(r"\| `(BOTLNEK_\w+)` \|"))
    assert sorted(read - documented) == [], "read by the code, not documented"
    assert sorted(documented - read) == [], "documented, not read by the code"
    commands = _table_names("cli.md", re.compile(r"\| `(BOTLNEK_\w+)` \|"))
    assert sorted(given - commands) == [], "given to watch's commands, undocumented"
    assert sorted(commands - given) == [], "documented for watch, not given"


# | METHOD[, METHOD] | `path` | …
ROW = re.compile(r"\| ([A-Z, ]+) \| `(/[^`]*)` \|")


def _documented_endpoints() -> set[tuple[str, str]]:
    text = (REFERENCE / "endpoints.md").read_text()
    return {
        (method.strip(), match[2])
        for line in text.splitlines()
        if (match := ROW.match(line))
        for method in match[1].split(",")
    }


def _openapi_endpoints() -> set[tuple[str, str]]:
    document = api.get_openapi_schema()
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }


def _braced(route: str) -> str:
    """A URL conf route written as the docs write paths: /d/{domain}/."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def _url_conf_paths() -> set[str]:
    """Every path of the URL conf and the websocket routes; an included URL conf
    other than the API's (Django's admin) is one path, its prefix."""
    paths = set()

    def walk(patterns, prefix):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver) and route == "api/":
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLResolver):
                paths.add(_braced(route))
            else:
                assert isinstance(pattern, URLPattern)
                paths.add(_braced(route))

    walk(get_resolver().url_patterns, "")
    walk(websocket_urlpatterns, "")
    return paths


def test_every_openapi_operation_is_in_the_endpoint_table_and_back():
    documented = {(m, p) for m, p in _documented_endpoints() if p.startswith("/api/")}
    operations = _openapi_endpoints()
    assert sorted(operations - documented) == [], "in the OpenAPI document only"
    # The OpenAPI document and its docs are served beside the operations.
    served = operations | {("GET", "/api/openapi.json"), ("GET", "/api/docs")}
    served.add(("GET", "/api/"))
    assert sorted(documented - served) == [], "in the table only"


def test_every_route_of_the_url_conf_is_in_the_endpoint_table_and_back():
    documented = {path for _, path in _documented_endpoints()}
    routes = _url_conf_paths()
    assert sorted(routes - documented) == [], "in the URL conf only"
    assert sorted(documented - routes) == [], "in the table only"


def _flags(parser) -> set[str]:
    """A parser's option strings, and its positionals by their metavar or dest."""
    found = set()
    for action in parser._actions:
        if action.option_strings:
            found.update(s for s in action.option_strings if s.startswith("--"))
        elif action.dest != "command" or action.metavar:
            found.add(action.metavar or action.dest)
    return found


def _subparsers(parser) -> dict:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def _sections() -> dict[str, str]:
    """The CLI reference's `### title` sections, by title."""
    text = (REFERENCE / "cli.md").read_text()
    parts = re.split(r"^### (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


DJANGO_OPTIONS = _flags(BaseCommand().create_parser("manage.py", "x"))
COMMANDS = ["demo", "export", "import", "prune", "serve", "token"]


def _commands() -> dict[str, set[str]]:
    """Every command of the client and every operator command, with its flags."""
    found = {}
    root = cli.parser()
    common = {"--url", "--token", "--help"}
    for name, sub in _subparsers(root).items():
        found[f"botlnek {name}"] = _flags(sub) - common
    for name in COMMANDS:
        parser = load_command_class("aggregates", name).create_parser("manage.py", name)
        actions = _subparsers(parser)
        if not actions:
            found[f"manage.py {name}"] = _flags(parser) - DJANGO_OPTIONS
        for action, sub in actions.items():
            found[f"manage.py {name} {action}"] = _flags(sub) - {"--help"}
    return found


def test_the_operator_commands_are_the_ones_checked():
    commands = sorted(
        p.stem
        for p in (ROOT / "aggregates" / "management" / "commands").glob("*.py")
        if p.stem != "__init__"
    )
    assert commands == COMMANDS


def test_every_command_and_flag_is_in_the_cli_reference():
    sections = _sections()
    missing = [
        f"{command} {flag}"
        for command, flags in _commands().items()
        for flag in sorted(flags)
        if command not in sections or f"`{flag}" not in sections[command]
    ]
    assert missing == []
    # Every section is a command that exists, with a table row per flag it has.
    commands = _commands()
    gone = [
        title
        for title in sections
        if title.split(" ")[0] in ("botlnek", "manage.py") and title not in commands
    ]
    assert gone == []
    extra = []
    for title, text in sections.items():
        if title not in commands:
            continue
        for row in re.findall(r"^\| `(--?[a-z][-\w]*)", text, flags=re.M):
            if row not in commands[title]:
                extra.append(f"{title} {row}")
    assert extra == []
