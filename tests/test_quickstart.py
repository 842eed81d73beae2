"""The README's first command: serve on the embedded default from an empty data dir."""

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from tests.toolkit import ROOT, free_port


def serve(data_dir, port):
    env = {**os.environ, "BOTLNEK_DATA_DIR": str(data_dir)}
    env.pop("BOTLNEK_DATABASE_URL", None)  # the embedded default: SQLite
    return subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(url):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"{url} did not answer")


def read_until_serving(process) -> str:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Serving on"):
            return "".join(lines)
    pytest.fail("serve exited early:\n" + "".join(lines))


def test_serve_bootstraps_once_and_accepts_a_source(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = serve(tmp_path, port)
    try:
        output = read_until_serving(process)
        token = re.search(r"write token \(shown once\): (bk_\S+)", output).group(1)
        assert re.search(r"admin login \(shown once\): admin / \S+", output)
        assert wait_for(f"{url}/healthz").status_code == 200
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(
            f"{url}/api/domains", json={"key": "c-inputs"}, headers=headers
        )
        assert created.status_code == 201

        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "aggregates.client.cli",
                "post",
                "--url",
                url,
                "--token",
                token,
                "--domain",
                "c-inputs",
                "--aggregate",
                "2026-11-26",
                "--collection",
                "A",
                "run=am",
                "--attr",
                "path=s3://a",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert '"version": 1' in cli.stdout
        state = httpx.get(
            f"{url}/api/domains/c-inputs/aggregates/2026-11-26", headers=headers
        ).json()
        assert state["collections"]["A"][0]["attrs"] == {"path": "s3://a"}
        page = httpx.get(f"{url}/admin/login/")
        assert page.status_code == 200 and "csrfmiddlewaretoken" in page.text
    finally:
        process.terminate()
        process.wait(timeout=10)

    # A second start serves the same data and prints no new secrets.
    process = serve(tmp_path, port)
    try:
        output = read_until_serving(process)
        assert "shown once" not in output
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_cli_reports_errors_in_one_line(tmp_path):
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregates.client.cli",
            "post",
            "--url",
            f"http://127.0.0.1:{free_port()}",
            "--token",
            "x",
            "--domain",
            "d",
            "--aggregate",
            "a",
            "--collection",
            "A",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert cli.returncode == 1
    assert cli.stderr.startswith("botlnek: cannot reach")
    assert len(cli.stderr.strip().splitlines()) == 1
