"""The Dagster UI in a real browser: the webserver over a data folder and Debian's Chromium driven by
Playwright (the browser test and the README's screenshots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dc_pipeline.catalog import CODE_LOCATION
from dc_pipeline.ops.cluster import HOST, free_port, stop_groups

CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (``apt-get install chromium``): browser downloads do not work on every machine."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Headless on a machine with a closed network: no background connections, no sandbox (CI runs as root)."""

LOCATION_QUERY = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
LOCATION_QUERY += "locationOrLoadError { __typename ... on PythonError { message } } } } } }"


def graphql(url: str, query: str, variables: Mapping | None = None, timeout: float = 30.0) -> dict:
    """A query to the webserver at ``url`` (loopback): the decoded JSON answer."""
    request = urllib.request.Request(  # noqa: S310 (an http URL this module built)
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


def wait_for_location(url: str, timeout: float = 180.0) -> None:
    """Until the webserver answers and the code location has loaded; a load error is raised."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entries = graphql(url, LOCATION_QUERY)["data"]["workspaceOrError"]["locationEntries"]
        except OSError:
            entries = []
        for entry in entries:
            if entry["name"] == CODE_LOCATION and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"]
                if loaded and loaded["__typename"] == "PythonError":
                    raise RuntimeError(f"code location failed to load: {loaded['message']}")
                return
        time.sleep(1.0)
    raise TimeoutError(f"the code location did not load at {url} within {timeout:g} s")


@contextmanager
def served_ui(
    home: Path, env: Mapping[str, str], log_file: Path, port: int | None = None, read_only: bool = False
) -> Iterator[str]:
    """``dagster-webserver`` for the code location on 127.0.0.1, with ``home`` as Dagster home (and working
    directory: no ``.env`` there) and ``env`` over this process's environment (the ``DC_*`` settings); with
    ``read_only`` the viewers' UI (nothing can be launched, cancelled, wiped or switched on). Yields its URL
    once the location has loaded; stops it and everything it started afterwards, also on failure."""
    port = port or free_port()
    full_env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
    webserver = str(Path(sys.executable).parent / "dagster-webserver")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [webserver, "-m", CODE_LOCATION, "-h", HOST, "-p", str(port), *(["--read-only"] if read_only else [])],
            cwd=home,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://{HOST}:{port}"
        wait_for_location(url)
        yield url
    finally:
        stop_groups([proc.pid])


def visit(page, url: str) -> None:
    """Open ``url`` and wait until the page is quiet, dismissing Dagster's first-visit community dialog."""
    page.goto(url)
    page.wait_for_load_state("networkidle")
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()


@contextmanager
def chromium(viewport: tuple[int, int] = (1440, 900)):
    """A new page in headless Debian Chromium (Playwright's sync API); closed afterwards."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"{CHROMIUM} not found: `apt-get install chromium` (see .ci/run)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            yield page
        finally:
            browser.close()
