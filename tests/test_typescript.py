"""The TypeScript SDK (sdk/typescript) built with tsc and run by Node's test runner against a
live `sfm serve`: `npm ci` installs its build tools (typescript, @types/node) from the
registry. Locally without Node it is skipped; in CI it fails (IN_CI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EMBEDDED_RUN, IN_CI, Live

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EMBEDDED_RUN, reason="the SDK is tested once, in the embedded run"),
]
SDK = Path(__file__).resolve().parent.parent / "sdk" / "typescript"


def test_the_typescript_sdk_against_a_live_server(live: Live) -> None:
    npm = shutil.which("npm")
    if npm is None:
        if IN_CI:
            pytest.fail("npm is missing: the TypeScript SDK's tests cannot run")
        pytest.skip("npm is missing (install Node.js 18+)")
    installed = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=SDK, capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    done = subprocess.run(
        [npm, "test"],
        cwd=SDK,
        env={**live.env, "SFM_URL": live.base},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "# fail 0" in done.stdout and "# skipped 0" in done.stdout, done.stdout[-2000:]
