"""Access decisions: every request asks `decide(input)`; Rego policies answer.

In-process by default (regorus, a Rust Rego interpreter, one engine per thread), or an OPA
server when `opa_url` is set (`POST {opa_url}/v1/data/sfm/authz` with the same policy files
loaded there). The policy must define `data.sfm.authz.allow` (bool) and may define `reason`
(string). Any failure of the engine denies (fail closed) and is logged.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx

from somafractalmemory.conf import Config, get_config
from somafractalmemory.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_POLICY = Path(__file__).parent / "policies" / "authz.rego"
PACKAGE = "data.sfm.authz"


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str = ""


@lru_cache(maxsize=4)
def policy_files(path: str | None) -> tuple[tuple[str, str], ...]:
    """(name, text) of the policy: `policy_path` (a .rego file or a directory of them), else
    the shipped default."""
    where = Path(path) if path else DEFAULT_POLICY
    files = sorted(where.glob("*.rego")) if where.is_dir() else [where]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"policy_path {where}: no .rego policy found")
    return tuple((f.name, f.read_text()) for f in files)


_local = threading.local()


def _engine(config: Config) -> Any:
    key = config.policy_path
    engine = getattr(_local, "engine", None)
    if engine is None or _local.key != key:
        import regorus

        engine = regorus.Engine()
        for name, text in policy_files(key):
            engine.add_policy(name, text)
        _local.engine, _local.key = engine, key
    return engine


def _reason(answer: Any) -> str:
    for result in answer.get("result", []):
        for expression in result.get("expressions", []):
            if isinstance(expression.get("value"), str):
                return str(expression["value"])
    return ""


def _in_process(config: Config, facts: dict[str, Any]) -> Decision:
    engine = _engine(config)
    engine.set_input_json(json.dumps(facts))
    allowed = engine.eval_rule(f"{PACKAGE}.allow") is True
    return Decision(allowed, "" if allowed else _reason(engine.eval_query(f"{PACKAGE}.reason")))


def _opa(config: Config, facts: dict[str, Any]) -> Decision:
    assert config.opa_url is not None
    url = f"{config.opa_url.rstrip('/')}/v1/data/sfm/authz"
    response = httpx.post(url, json={"input": facts}, timeout=config.opa_timeout)
    response.raise_for_status()
    result = response.json().get("result") or {}
    allowed = result.get("allow") is True
    return Decision(allowed, "" if allowed else str(result.get("reason") or ""))


def decide(facts: dict[str, Any], config: Config | None = None) -> Decision:
    """Ask the policy. Deny, with a reason, whenever it cannot answer."""
    config = config or get_config()
    try:
        decision = _opa(config, facts) if config.opa_url else _in_process(config, facts)
    except Exception as exc:  # fail closed
        log.error("policy engine failed, request denied: %s", exc)
        return Decision(False, "the access policy could not be evaluated; request denied")
    if not decision.allow and not decision.reason:
        return Decision(False, "denied by the access policy")
    return decision
