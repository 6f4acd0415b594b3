"""Tenants that cannot see each other: keys, scopes, policies, rate limits, audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from somafractalmemory.errors import ValidationFailed
from somafractalmemory.memories import tenancy
from somafractalmemory.memories.limits import LIMIT_CEILINGS
from somafractalmemory.memories.models import ApiKey, AuditEntry
from tests.conftest import Api
from tests.servers import JsonHandler, local_http


def tenant_with_key(
    name: str | None = None, scopes: tuple[str, ...] = ("read", "write"), **limits: int
) -> tuple[str, Api]:
    name = name or f"t{uuid.uuid4().hex[:10]}"
    tenancy.create_tenant(name, **limits)
    made = tenancy.create_key(name, scopes)
    return name, Api(made.secret)


def seed(api: Api, namespace: str) -> dict[str, str]:
    """Memories, a tree, links and a job in `namespace` of the caller's tenant."""
    ids = {}
    for n, text in enumerate(
        [
            "The vault code is 4412 and changes monthly.",
            "The vault code 4412 is shared with Ana only.",
            "Ana keeps the vault key in the blue drawer.",
        ]
    ):
        body = {"content": text, "namespace": namespace, "created_at": f"2024-05-01T10:0{n}:00Z"}
        ids[f"m{n}"] = api.ok("POST", "/memory/store", body)["id"]
    job = api.ok("POST", "/memory/consolidate", {"namespace": namespace, "wait": True})
    ids["job"] = job["id"]
    (parent,) = api.ok("GET", "/memory", namespace=namespace, type="semantic")["memories"]
    ids["parent"] = parent["id"]
    api.ok("POST", f"/memory/{ids['m0']}/links", {"target": ids["m2"], "kind": "about"})
    return ids


def test_another_tenant_sees_nothing_of_mine(api: Api, namespace: str) -> None:
    _, alice = tenant_with_key()
    _, bob = tenant_with_key(scopes=("read", "write", "admin"))
    mine = seed(alice, namespace)
    missing = "mem_" + "0" * 20

    def same_as_missing(method: str, path: str, body: Any = None, **params: Any) -> None:
        """Bob's answer about Alice's memory is the answer about no memory at all."""
        theirs = bob.call(method, path.format(id=mine["m0"]), body, **params)
        nobody = bob.call(method, path.format(id=missing), body, **params)
        assert theirs.status_code == nobody.status_code == 404, (path, theirs.content)

        def strip(r):
            return json.dumps(r.json()).replace(mine["m0"], "X").replace(missing, "X")

        assert strip(theirs) == strip(nobody)

    for method, path, body in [
        ("GET", "/memory/{id}", None),
        ("PATCH", "/memory/{id}", {"importance": 0.1}),
        ("DELETE", "/memory/{id}", None),
        ("GET", "/memory/{id}/children", None),
        ("GET", "/memory/{id}/parents", None),
        ("GET", "/memory/{id}/links", None),
        ("POST", "/memory/{id}/links", {"target": mine["m1"], "kind": "steal"}),
        ("POST", "/memory/{id}/restore", None),
        ("GET", "/graph/{id}", None),
    ]:
        same_as_missing(method, path, body)
    same_as_missing("DELETE", "/memory/{id}/links?target=" + mine["m2"] + "&kind=about")
    assert bob.error(404, "GET", f"/memory/{mine['parent']}/children") == "memory_not_found"
    assert bob.error(404, "GET", f"/jobs/{mine['job']}") == "job_not_found"
    # Linking from Bob's memory to Alice's: her memory does not exist for him.
    own = bob.ok("POST", "/memory/store", {"content": "Bob's note", "namespace": namespace})
    assert (
        bob.error(404, "POST", f"/memory/{own['id']}/links", {"target": mine["m0"], "kind": "x"})
        == "memory_not_found"
    )
    # Same namespace name, other tenant: search, list, consolidate and usage see only Bob's.
    found = bob.ok("POST", "/memory/search", {"query": "vault code 4412", "namespace": namespace})
    assert [m["id"] for m in found["memories"]] == [own["id"]]
    everywhere = bob.ok("POST", "/memory/search", {"query": "vault code 4412", "mode": "lexical"})
    assert {m["id"] for m in everywhere["memories"]} <= {own["id"]}
    listed = bob.ok("GET", "/memory", namespace=namespace)["memories"]
    assert [m["id"] for m in listed] == [own["id"]]
    tree = bob.ok("POST", "/memory/consolidate", {"namespace": namespace, "wait": True})
    assert tree["result"]["created"] == 0
    assert bob.ok("GET", "/usage")["memories"] == 1
    (space,) = bob.ok("GET", "/namespaces")["namespaces"]
    assert space["namespace"] == namespace and space["memories"] == 1
    assert space["by_type"] == {"episodic": 1} and space["by_level"] == {"0": 1}
    assert alice.ok("GET", f"/namespaces/{namespace}")["by_level"] == {"0": 3, "1": 1}
    assert bob.error(403, "GET", "/admin/tenants") == "forbidden"
    assert {k["tenant_id"] for k in bob.ok("GET", "/admin/keys")["keys"]} == {own_tenant(bob)}

    # Export and import: each tenant's own memories only; another tenant's ids are refused.
    def exported(api: Api) -> list[dict[str, Any]]:
        answer = api.client.get("/api/v2/export")
        assert answer.status_code == 200 and answer["Content-Type"] == "application/x-ndjson"
        text = b"".join(answer.streaming_content).decode()  # type: ignore[attr-defined]
        return [json.loads(line) for line in text.splitlines()]

    assert [r["id"] for r in exported(bob)] == [own["id"]]
    hers = exported(alice)
    assert {mine["m0"], mine["m1"], mine["m2"], mine["parent"]} <= {r["id"] for r in hers}
    assert {r["tenant"] for r in hers} == {own_tenant(alice)}
    text = "".join(json.dumps(r) + "\n" for r in hers)
    refused = bob.client.post("/api/v2/import", data=text, content_type="application/x-ndjson")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    assert bob.ok("GET", "/usage")["memories"] == 1  # nothing written
    again = alice.client.post("/api/v2/import", data=text, content_type="application/x-ndjson")
    assert again.status_code == 200 and again.json()["skipped"] == len(hers)
    # And Alice still has everything.
    assert alice.ok("GET", f"/memory/{mine['m0']}")["importance"] == 0.5
    assert len(alice.ok("GET", f"/memory/{mine['parent']}/children")["memories"]) == 3


def own_tenant(api: Api) -> str:
    return str(api.ok("GET", "/usage")["tenant"])


def test_keys_scopes_and_namespace_allow_lists(api: Api, namespace: str) -> None:
    name, writer = tenant_with_key()
    reader = Api(tenancy.create_key(name, ["read"]).secret)
    scoped = Api(tenancy.create_key(name, ["read", "write"], namespaces=[namespace]).secret)
    stored = writer.ok(
        "POST", "/memory/store", {"content": "Quarterly goals", "namespace": namespace}
    )
    assert reader.ok("GET", f"/memory/{stored['id']}")["content"] == "Quarterly goals"
    denied = reader.call("POST", "/memory/store", {"content": "x", "namespace": namespace})
    assert denied.status_code == 403
    assert denied.json()["error"] == {
        "code": "forbidden",
        "details": None,
        "message": 'this key lacks the "write" scope',
    }
    assert scoped.ok("POST", "/memory/search", {"query": "goals", "namespace": namespace})
    assert scoped.error(403, "POST", "/memory/search", {"query": "goals"}) == "forbidden"
    other = scoped.call("POST", "/memory/store", {"content": "x", "namespace": "elsewhere"})
    assert other.status_code == 403 and "namespaces" in other.json()["error"]["message"]
    assert reader.error(403, "GET", "/admin/keys") == "forbidden"
    writer.ok("POST", "/memory/store", {"content": "Other note", "namespace": "elsewhere"})
    assert {n["namespace"] for n in writer.ok("GET", "/namespaces")["namespaces"]} == {
        namespace,
        "elsewhere",
    }
    assert [n["namespace"] for n in scoped.ok("GET", "/namespaces")["namespaces"]] == [namespace]
    assert scoped.error(403, "GET", "/namespaces/elsewhere") == "forbidden"
    assert writer.error(404, "GET", "/namespaces/nowhere") == "not_found"
    denials = AuditEntry.objects.filter(tenant=name, outcome="denied")
    assert denials.count() == 5 and not any("Quarterly" in json.dumps(e.details) for e in denials)


def test_unknown_revoked_and_missing_keys(api: Api, settings_env: Any, namespace: str) -> None:
    name, caller = tenant_with_key()
    assert caller.ok("GET", "/usage")["tenant"] == name
    assert Api("sfm_nope").error(401, "GET", "/usage") == "unauthorized"
    assert Api("Basic abc").error(401, "GET", "/usage") == "unauthorized"
    (key,) = ApiKey.objects.filter(tenant_id=name)
    assert key.last_used_at is not None and len(key.digest) == 64 and key.prefix.startswith("sfm_")
    tenancy.revoke_key(key.id)
    assert caller.error(401, "GET", "/usage") == "unauthorized"
    assert Api().ok("GET", "/usage")["tenant"] == "default"  # auth optional: the default tenant
    settings_env(auth="required")
    assert Api().error(401, "GET", "/usage") == "unauthorized"
    assert Api().call("GET", "/api/v2/openapi.json").status_code == 200  # the spec stays public
    assert Api().call("GET", "/healthz").status_code == 200


def test_guessing_keys_is_rate_limited(api: Api, settings_env: Any) -> None:
    settings_env(auth_failures_per_minute="3")
    client = Api(f"sfm_guess{uuid.uuid4().hex}")
    client.client.defaults["REMOTE_ADDR"] = f"10.9.{uuid.uuid4().int % 250}.7"
    codes = [client.call("GET", "/usage").status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    limited = client.call("GET", "/usage")
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited["Retry-After"]) >= 1


def test_requests_per_minute_and_quotas(api: Api, namespace: str) -> None:
    _, limited = tenant_with_key(requests_per_minute=3)
    codes = [limited.call("GET", "/usage").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    _, small = tenant_with_key(max_memories=2)
    for text in ("one", "two"):
        small.ok("POST", "/memory/store", {"content": text, "namespace": namespace})
    over = small.call("POST", "/memory/store", {"content": "three", "namespace": namespace})
    assert over.status_code == 403 and over.json()["error"]["code"] == "quota_exceeded"
    assert small.ok("GET", "/usage")["memories"] == 2
    _, tiny = tenant_with_key(max_bytes=10)
    assert (
        tiny.error(403, "POST", "/memory/batch", {"memories": [{"content": "0123456789A"}]})
        == "quota_exceeded"
    )


def test_limits_beyond_what_the_database_holds_are_refused(api: Api) -> None:
    """A limit past its column's range was a 500 (SQLite overflow); now a 422, and nothing made."""
    tenancy.create_tenant("default")
    operator = Api(tenancy.create_key("default", ["read", "write", "admin"]).secret)
    for limit, ceiling in LIMIT_CEILINGS.items():
        name = f"t{uuid.uuid4().hex[:10]}"
        body = {"id": name, limit: ceiling + 1}
        assert operator.error(422, "POST", "/admin/tenants", body) == "validation_error"
        with pytest.raises(ValidationFailed):
            tenancy.create_tenant(name, **{limit: ceiling + 1})
        assert not tenancy.Tenant.objects.filter(id=name).exists()
        made = operator.ok("POST", "/admin/tenants", {"id": name, limit: ceiling})
        assert made[limit] == ceiling


READ_ONLY = """package sfm.authz

import rego.v1

default allow := false

allow if {
	input.scopes[_] == "admin"
}

allow if {
	input.action == "memory.read"
}

allow if {
	input.action == "memory.write"
	input.namespace != "archive"
}

reason := "the archive namespace is read-only" if input.namespace == "archive"
"""


def test_custom_policy_makes_a_namespace_read_only(
    api: Api, settings_env: Any, tmp_path: Path
) -> None:
    (tmp_path / "authz.rego").write_text(READ_ONLY)
    settings_env(policy_path=str(tmp_path))
    _, caller = tenant_with_key()
    caller.ok("POST", "/memory/store", {"content": "fine", "namespace": "notes"})
    denied = caller.call("POST", "/memory/store", {"content": "no", "namespace": "archive"})
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == "the archive namespace is read-only"
    caller.ok("POST", "/memory/search", {"query": "anything", "namespace": "archive"})


class FakeOpa(JsonHandler):
    """OPA's data API, deciding with the shipped policy file (as an OPA server loaded with
    it would)."""

    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        from somafractalmemory import policy

        body = self.read_json()
        FakeOpa.calls.append({"path": self.path, **body})
        import regorus

        engine = regorus.Engine()
        for name, text in policy.policy_files(None):
            engine.add_policy(name, text)
        engine.set_input_json(json.dumps(body["input"]))
        allow = engine.eval_rule("data.sfm.authz.allow") is True
        reason = "" if allow else policy._reason(engine.eval_query("data.sfm.authz.reason"))
        self.send_json(200, {"result": {"allow": allow, "reason": reason}})


def test_opa_server_decides_and_its_failure_denies(api: Api, settings_env: Any) -> None:
    name, reader = tenant_with_key(scopes=("read",))
    with local_http(FakeOpa) as opa:
        settings_env(opa_url=opa)
        FakeOpa.calls.clear()
        assert reader.ok("GET", "/usage")["tenant"] == name
        denied = reader.call("POST", "/memory/store", {"content": "x"})
        assert denied.status_code == 403 and "write" in denied.json()["error"]["message"]
        assert FakeOpa.calls[0]["path"] == "/v1/data/sfm/authz"
        assert FakeOpa.calls[0]["input"]["tenant"] == name
    settings_env(opa_url="http://127.0.0.1:9", opa_timeout="1")  # nothing listens: fail closed
    assert reader.error(403, "GET", "/usage") == "forbidden"


def run_sfm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "somafractalmemory.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_tenants_and_keys(server_env: dict[str, str]) -> None:
    assert run_sfm("migrate", env=server_env).returncode == 0
    made = run_sfm("tenant", "create", "acme", "--rpm", "100", env=server_env)
    assert made.returncode == 0, made.stderr
    key = run_sfm("key", "create", "--tenant", "acme", "--scopes", "read", env=server_env)
    assert key.returncode == 0, key.stderr
    secret = key.stdout.strip().splitlines()[-1]
    assert secret.startswith("sfm_") and len(secret) > 40
    listed = run_sfm("key", "list", env=server_env).stdout
    assert "acme" in listed and secret not in listed and secret[:12] in listed
    key_id = listed.split()[0]
    assert run_sfm("key", "revoke", key_id, env=server_env).returncode == 0
    assert "revoked" in run_sfm("key", "list", "--tenant", "acme", env=server_env).stdout
    bad = run_sfm("key", "create", "--tenant", "acme", "--scopes", "root", env=server_env)
    assert bad.returncode == 2 and "validation_error" in bad.stderr
    assert "acme" in run_sfm("tenant", "list", env=server_env).stdout
    gone = run_sfm("tenant", "delete", "acme", "--yes", env=server_env)
    assert gone.returncode == 0 and "deleted tenant acme" in gone.stdout
    wide = run_sfm("serve", "--host", "0.0.0.0", env={**server_env, "SFM_AUTH": "optional"})
    assert wide.returncode == 2 and "--insecure" in wide.stderr
    assert os.environ.get("SFM_AUTH") != "required"  # the test process itself is unchanged


@given(
    st.integers(1, 120),
    st.lists(st.floats(0, 600, allow_nan=False), min_size=1, max_size=300),
)
@example(1, [452.9306066798876, 452.9306066798876])  # rounding made the wait 60.00000000000006
def test_token_bucket_allows_a_burst_then_the_refill_rate(limit: int, times: list[float]) -> None:
    tat, allowed = 0.0, []
    for now in sorted(times):
        tat, wait = tenancy.gcra(tat, now, limit)
        if wait == 0:
            allowed.append(now)
        else:
            assert wait <= 60.0  # retry within a minute at most
    start = min(times)
    for n, now in enumerate(allowed, 1):
        # Never more than a full bucket plus what refilled since the first request.
        assert n <= limit + (now - start) * limit / 60 + 1e-9
    burst = [tenancy.gcra(0.0, 0.0, limit)]
    for _ in range(limit - 1):
        burst.append(tenancy.gcra(burst[-1][0], 0.0, limit))
    assert all(wait == 0 for _, wait in burst)  # a full burst at once
    assert tenancy.gcra(burst[-1][0], 0.0, limit)[1] == pytest.approx(60 / limit)


def test_a_path_prefix_does_not_skip_authentication(api: Api, settings_env: Any) -> None:
    from django.test import Client

    settings_env(auth="required")
    prefixed = Client().post(
        "/api/v2/admin/keys",
        {"scopes": ["admin"]},
        content_type="application/json",
        SCRIPT_NAME="/x",
    )
    assert prefixed.status_code == 401 and prefixed.json()["error"]["code"] == "unauthorized"


def test_namespace_limited_keys_see_nothing_beyond_through_links(api: Api, namespace: str) -> None:
    name, writer = tenant_with_key()
    inside = writer.ok(
        "POST", "/memory/store", {"content": "Team offsite plan", "namespace": namespace}
    )["id"]
    outside = writer.ok(
        "POST", "/memory/store", {"content": "HR salary review", "namespace": "hr"}
    )["id"]
    writer.ok("POST", f"/memory/{inside}/links", {"target": outside, "kind": "about"})
    limited = Api(tenancy.create_key(name, ["read", "write"], namespaces=[namespace]).secret)
    graph = limited.ok("GET", f"/graph/{inside}", depth=2)
    assert [n["id"] for n in graph["nodes"]] == [inside] and graph["edges"] == []
    assert limited.ok("GET", f"/memory/{inside}/links")["links"] == []
    assert (
        limited.error(403, "POST", f"/memory/{inside}/links", {"target": outside, "kind": "x"})
        == "forbidden"
    )
    job = limited.ok("POST", "/memory/consolidate", {"namespace": namespace, "wait": True})
    assert limited.ok("GET", f"/jobs/{job['id']}")["status"] == "succeeded"
    # `derived_from` edges are the hierarchy: only consolidation makes them.
    body = {"target": outside, "kind": "derived_from"}
    assert writer.error(422, "POST", f"/memory/{inside}/links", body) == "validation_error"


def test_byte_quota_counts_plaintext_not_ciphertext(api: Api, namespace: str) -> None:
    _, small = tenant_with_key(max_bytes=100)
    for n in range(10):
        small.ok("POST", "/memory/store", {"content": f"note {n:05d}", "namespace": namespace})
    assert small.ok("GET", "/usage")["bytes"] == 100
    over = small.call("POST", "/memory/store", {"content": "x", "namespace": namespace})
    assert over.status_code == 403 and over.json()["error"]["code"] == "quota_exceeded"


def test_a_namespace_limited_key_cannot_remove_a_link_into_a_namespace_it_cannot_see(
    api: Api, namespace: str
) -> None:
    name, writer = tenant_with_key()
    inside = writer.ok("POST", "/memory/store", {"content": "Plan", "namespace": namespace})["id"]
    outside = writer.ok("POST", "/memory/store", {"content": "Salaries", "namespace": "hr"})["id"]
    writer.ok("POST", f"/memory/{inside}/links", {"target": outside, "kind": "about"})
    limited = Api(tenancy.create_key(name, ["read", "write"], namespaces=[namespace]).secret)
    path = f"/memory/{inside}/links?target={outside}&kind=about"
    assert limited.error(403, "DELETE", path) == "forbidden"
    assert [e["target"] for e in writer.ok("GET", f"/memory/{inside}/links")["links"]] == [outside]


class Clock:
    """`time.time` for the tenancy module, moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.mark.parametrize("start", [0.5, 59.99], ids=["early-in-a-minute", "at-its-end"])
def test_wrong_keys_never_lock_out_a_valid_key(
    api: Api, settings_env: Any, monkeypatch: pytest.MonkeyPatch, start: float
) -> None:
    settings_env(auth_failures_per_minute="3")
    clock = Clock(60.0 * 29_000_000 + start)
    monkeypatch.setattr(tenancy, "time", clock)
    _, good = tenant_with_key()
    address = f"10.8.{uuid.uuid4().int % 250}.9"
    good.client.defaults["REMOTE_ADDR"] = address
    guesser = Api(f"sfm_guess{uuid.uuid4().hex}")
    guesser.client.defaults["REMOTE_ADDR"] = address
    assert [guesser.call("GET", "/usage").status_code for _ in range(5)][-1] == 429
    clock.now += 0.02  # into the next minute, when the guessing ended at one's end
    other = Api(f"sfm_other{uuid.uuid4().hex}")  # another wrong key from the same address
    other.client.defaults["REMOTE_ADDR"] = address
    assert other.call("GET", "/usage").status_code == 429
    assert good.call("GET", "/usage").status_code == 200  # the valid key still works
    clock.now += 120.0  # two minutes on, the failures are forgotten
    assert other.call("GET", "/usage").status_code == 401


def test_failures_are_counted_over_the_last_minute_not_since_the_clock_turned() -> None:
    # At a minute's turn the previous minute counts in full, then fades out over this one.
    assert tenancy.recent_failures(10, 0, 0.0) == 10
    assert tenancy.recent_failures(10, 2, 0.5) == 7
    assert tenancy.recent_failures(10, 2, 0.99) == pytest.approx(2.1)
    # Retry-After: until one more failure fits under the limit again.
    assert tenancy.seconds_until_allowed(0, 2, 0.3, limit=3) == 0
    assert tenancy.seconds_until_allowed(10, 0, 0.0, limit=3) == pytest.approx(48)  # 10 → 2
    assert tenancy.seconds_until_allowed(0, 5, 0.5, limit=3) == pytest.approx(30 + 36)
    for previous, current, elapsed in [(10, 0, 0.0), (4, 3, 0.2), (0, 9, 0.9), (7, 7, 0.5)]:
        wait = tenancy.seconds_until_allowed(previous, current, elapsed, limit=3)
        later = elapsed + wait / 60
        if later < 1:  # still this minute
            assert tenancy.recent_failures(previous, current, later) == pytest.approx(2)
        else:  # in the next one
            assert tenancy.recent_failures(current, 0, later - 1) == pytest.approx(2)


def test_behind_a_trusted_proxy_clients_are_told_apart(api: Api, settings_env: Any) -> None:
    settings_env(auth_failures_per_minute="2", trusted_proxies="10.7.0.0/16")
    proxy = f"10.7.{uuid.uuid4().int % 250}.1"

    def via_proxy(forwarded: str) -> Api:
        caller = Api(f"sfm_guess{uuid.uuid4().hex}")
        caller.client.defaults.update(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=forwarded)
        return caller

    first = f"198.51.100.{uuid.uuid4().int % 250}"
    attacker = via_proxy(f"{first}, {proxy}")
    assert [attacker.call("GET", "/usage").status_code for _ in range(4)][-1] == 429
    # Another client behind the same proxy is not refused for the attacker's failures...
    assert via_proxy("203.0.113.5").call("GET", "/usage").status_code == 401
    # ...and a forged header from outside the proxies changes nothing.
    forged = Api(f"sfm_guess{uuid.uuid4().hex}")
    forged.client.defaults.update(REMOTE_ADDR=first, HTTP_X_FORWARDED_FOR="203.0.113.77")
    assert forged.call("GET", "/usage").status_code == 429
