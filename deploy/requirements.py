"""requirements.txt from pyproject.toml: the service's dependencies as declared there, then
the package itself (`.`), so that `pip install -r requirements.txt` in a checkout gives an
installed service (`make requirements` writes it; a test keeps it current)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Generated from pyproject.toml by `make requirements` (deploy/requirements.py): edit that.
# pip install -r requirements.txt   installs the service from this checkout, then:
# cp .env.example .env && python manage.py migrate && python manage.py runserver 10101
"""


def render() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return HEADER + "".join(f"{spec}\n" for spec in project["dependencies"]) + ".\n"


if __name__ == "__main__":
    (ROOT / "requirements.txt").write_text(render())
