"""The Dagster UI in a real browser: the webserver over a data folder and Debian's Chromium driven by
Playwright (the browser test and the README's screenshots)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dc_pipeline.catalog import CODE_LOCATION
from dc_pipeline.ops.cluster import stop_groups
from dc_pipeline.ops.loopback import HOST, free_port, wait_for_location

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
        wait_for_location(url, pid=proc.pid, log_file=log_file)
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
