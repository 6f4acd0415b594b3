"""The OpenAPI document as a client generator reads it: valid, with the bearer key scheme,
readable operation ids, every error answer documented, and the SDK's result types equal to
the schemas they are read from (so the two cannot drift)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from somafractalmemory import client
from somafractalmemory.memories import api as routes
from somafractalmemory.memories.schemas import ERRORS
from tests.conftest import Api

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def spec(api: Api) -> dict[str, Any]:
    document: dict[str, Any] = api.ok("GET", "/api/v2/openapi.json")
    return document


def operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in spec["paths"].values() for m, op in path.items() if m in METHODS]


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)


def test_the_bearer_key_scheme_is_declared_and_optional(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert spec["security"] == [{"bearer": []}, {}]  # a key, or none where auth is optional


def test_operation_ids_are_the_route_functions_names(spec: dict[str, Any]) -> None:
    found = [op["operationId"] for op in operations(spec)]
    assert len(found) == len(set(found))
    assert all(re.fullmatch(r"[a-z][a-z_]*", name) for name in found), found
    assert {"store", "search", "get_memory", "history", "list_memories"} <= set(found)
    for name in found:
        assert callable(getattr(routes, name)), name


def test_every_operation_documents_the_error_envelope(spec: dict[str, Any]) -> None:
    (codes,) = [c for c in ERRORS if isinstance(c, frozenset)]
    for op in operations(spec):
        for status in codes:
            answer = op["responses"][str(status)]
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorOut"), (op["operationId"], status)
    envelope = spec["components"]["schemas"]["ErrorBody"]
    assert set(envelope["required"]) == {"code", "message"}


@pytest.mark.parametrize(
    ("result", "schema"),
    [
        (client.Stored, "StoreOut"),
        (client.MemoryRecord, "MemoryOut"),
        (client.Hit, "SearchHitOut"),
        (client.Link, "LinkOut"),
        (client.Job, "JobOut"),
        (client.Graph, "GraphOut"),
        (client.Namespace, "NamespaceOut"),
        (client.Purged, "PurgeOut"),
        (client.Policy, "PolicyOut"),
        (client.Usage, "UsageOut"),
        (client.Tenant, "TenantOut"),
        (client.Key, "NewKeyOut"),
        (client.AuditEntry, "AuditEntryOut"),
    ],
)
def test_the_sdks_result_types_match_the_schemas(
    spec: dict[str, Any], result: type, schema: str
) -> None:
    fields = {f.name for f in dataclasses.fields(result)}
    assert fields == set(spec["components"]["schemas"][schema]["properties"])


SDK_CALLS = {
    "store": "remember",
    "store_batch": "batch",
    "search": "recall",
    "list_memories": "list",
    "consolidate": "consolidate",
    "forget_faded": "forget_faded",
    "purge": "purge",
    "get_memory": "get",
    "patch_memory": "update",
    "delete_memory": "forget",
    "restore": "restore",
    "history": "history",
    "children": "children",
    "parents": "parents",
    "list_links": "links",
    "add_link": "link",
    "remove_link": "unlink",
    "graph": "graph",
    "job_status": "job",
    "list_namespaces": "namespaces",
    "namespace_stats": "namespace",
    "get_policy": "policy",
    "put_policy": "set_policy",
    "delete_namespace": "delete_namespace",
    "usage": "usage",
    "list_tenants": "tenants",
    "create_tenant": "create_tenant",
    "delete_tenant": "delete_tenant",
    "list_keys": "keys",
    "create_key": "create_key",
    "revoke_key": "revoke_key",
    "audit_log": "audit",
    "export": "export",
    "import_memories": "import_",
}


def test_every_operation_has_an_sdk_call_in_both_clients(spec: dict[str, Any]) -> None:
    assert {op["operationId"] for op in operations(spec)} == set(SDK_CALLS)
    for name in SDK_CALLS.values():
        assert callable(getattr(client.Memory, name)), name
        assert callable(getattr(client.AsyncMemory, name)), name


TS_TYPES = {
    "Stored": "StoreOut",
    "MemoryRecord": "MemoryOut",
    "Hit": "SearchHitOut",
    "Recall": "SearchOut",
    "Link": "LinkOut",
    "Graph": "GraphOut",
    "Job": "JobOut",
    "Namespace": "NamespaceOut",
    "Purged": "PurgeOut",
    "Related": "RelatedOut",
}


def test_the_typescript_sdks_types_match_the_schemas(spec: dict[str, Any]) -> None:
    """Each interface of sdk/typescript/src/index.ts names exactly its schema's fields."""
    from pathlib import Path

    source = (Path(__file__).resolve().parent.parent / "sdk/typescript/src/index.ts").read_text()
    for interface, schema in TS_TYPES.items():
        body = re.search(rf"export interface {interface} \{{(.*?)\n\}}", source, re.DOTALL)
        assert body, interface
        fields = set(re.findall(r"^  (\w+)\??:", body.group(1), re.MULTILINE))
        assert fields == set(spec["components"]["schemas"][schema]["properties"]), interface
