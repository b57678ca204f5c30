"""Pictures for the README: `jit dev`'s Slack sandbox, a request pending, approved (active) and denied.

Runs the same flow as tests/scenarios/test_sandbox_browser.py (it reuses its page object, so it needs
a source checkout with the test extra and Debian's chromium + chromium-driver):

    python docs/screenshots.py            # writes docs/img/sandbox*.png

For colour emoji in the pictures, install a font that has them (`apt-get install fonts-noto-color-emoji`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import requests
from selenium.common.exceptions import StaleElementReferenceException

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the page object and the `jit dev` runner of the tests

from dev_support import Dev  # noqa: E402
from sandbox_page import SandboxPage, chromium, have_chromium  # noqa: E402

OUT = ROOT / "docs" / "img"
CONTEXT = {
    "repository": "acme/web",
    "ref": "refs/heads/main",
    "commit": "4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39",
    "run_url": "https://github.com/acme/web/actions/runs/4242",
}


def ask(dev: Dev, reason: str) -> str:
    r = requests.post(
        dev.url + "/v1/requests",
        json={"action": "read-secret", "reason": reason, "requested_by": "carol@example.com", "context": CONTEXT},
        headers={"Authorization": f"Bearer {dev.pipeline_token()}"},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()["id"]


def shot(page: SandboxPage, rid: str, showing: str, path: Path) -> None:
    """The message's picture once it shows `showing`; the page re-renders the feed as updates
    arrive, so an element can go stale between finding it and taking its picture: find it again."""
    for _ in range(10):
        try:
            page.screenshot(page.wait_message(rid, showing), str(path))
            return
        except StaleElementReferenceException:
            continue
    raise RuntimeError(f"the message of {rid} kept changing under the screenshot")


def main() -> int:
    if not have_chromium():
        print("screenshots: needs /usr/bin/chromium and /usr/bin/chromedriver", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jit-screenshots-") as folder:
        dev = Dev(Path(folder), "--example-policy")
        driver = chromium(width=1200, height=860)
        try:
            dev.wait_ready()
            page = SandboxPage(driver, dev.sandbox_url()).open()
            page.be("U0ALICE")

            # both asked before either is decided: a pipeline asking again for an action it holds an
            # active grant of gets that grant back, not a second request
            denied = ask(dev, "migrate the orders table")
            approved = ask(dev, "release 4.2: rotate the deploy key")
            page.wait_message(approved, "Waiting for approval")
            driver.execute_script("document.getElementById('feed').scrollTop = 1e9")
            driver.save_screenshot(str(OUT / "sandbox.png"))
            shot(page, approved, "Waiting for approval", OUT / "sandbox-pending.png")

            page.click_and_hear(approved, "Approve", "1 more needed")
            page.be("U0BOB")
            page.click(approved, "Approve")
            shot(page, approved, "Active", OUT / "sandbox-active.png")

            page.be("U0ALICE")
            page.click(denied, "Deny")
            page.type_in_modal("Not during the release freeze; ask again on Monday.")
            page.submit_modal()
            page.wait_modal_closed()
            shot(page, denied, "Denied", OUT / "sandbox-denied.png")
        finally:
            driver.quit()
            dev.stop()
            dev.kill()
    for name in ("sandbox.png", "sandbox-pending.png", "sandbox-active.png", "sandbox-denied.png"):
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
