"""Who may do what: the caller of a request, the policy's decision, and what a
namespace-limited key may see. The API's routes and the dashboard's pages both ask here, so
both show exactly what the key may read."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from django.http import HttpRequest

from somafractalmemory import policy
from somafractalmemory.conf import get_config
from somafractalmemory.errors import Forbidden, Unauthorized
from somafractalmemory.memories import remember, tenancy
from somafractalmemory.memories.models import DEFAULT_TENANT, Memory

READ, WRITE, ADMIN = "memory.read", "memory.write", "admin"


@lru_cache(maxsize=8)
def _proxies(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(
        ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip()
    )


def _is_proxy(
    address: str, proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(request: HttpRequest) -> str:
    """Who sent the request: the peer, or behind a trusted reverse proxy (`trusted_proxies`)
    the last `X-Forwarded-For` address that is not one of the proxies. A forwarded header
    from anyone else is ignored (it is the client's to forge)."""
    peer = str(request.META.get("REMOTE_ADDR", ""))
    proxies = _proxies(get_config().trusted_proxies)
    if not proxies or not _is_proxy(peer, proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_proxy(hop, proxies):
            return hop
    return peer


def principal(request: HttpRequest) -> tenancy.Principal:
    """The caller the authentication middleware found. A request it did not authenticate is
    refused (fail closed): nothing falls back to a default identity."""
    found = getattr(request, "principal", None)
    if not isinstance(found, tenancy.Principal):
        raise Unauthorized("this request was not authenticated")
    return found


def allow(
    request: HttpRequest, action: str, *, namespace: str | None = None, resource: str = ""
) -> str:
    """Ask the access policy; returns the caller's tenant, or raises 403 with its reason."""
    caller = principal(request)
    decision = policy.decide(
        {
            "tenant": caller.tenant,
            "key_id": caller.key_id,
            "scopes": list(caller.scopes),
            "allowed_namespaces": list(caller.namespaces),
            "action": action,
            "namespace": namespace,
            "resource": resource,
        }
    )
    if not decision.allow:
        tenancy.audit(
            caller.tenant,
            caller.actor,
            action,
            resource=resource,
            outcome="denied",
            details={"namespace": namespace, "reason": decision.reason},
        )
        raise Forbidden(decision.reason)
    return caller.tenant


def visible(request: HttpRequest, memories: Sequence[Memory]) -> list[Memory]:
    """What a namespace-limited key may see of memories reached through links."""
    allowed = principal(request).namespaces
    return [m for m in memories if not allowed or m.namespace in allowed]


def owned(request: HttpRequest, action: str, memory_id: str) -> tuple[str, Memory]:
    """The caller's memory (404 for another tenant's), once the policy allows `action` on
    its namespace."""
    row = remember.get(memory_id, tenant=principal(request).tenant)
    return allow(request, action, namespace=row.namespace, resource=memory_id), row


def readable(request: HttpRequest) -> tuple[str, tuple[str, ...]]:
    """The caller's tenant and the namespaces it may read (empty: all), once the policy
    allows reading each (a namespace-limited key lists its own namespaces only)."""
    caller = principal(request)
    if not caller.namespaces:
        return allow(request, READ), ()
    for name in caller.namespaces:
        allow(request, READ, namespace=name)
    return caller.tenant, caller.namespaces


def operator(request: HttpRequest, what: str) -> str:
    """Tenants are managed by admin keys of the `default` tenant (the operator's)."""
    tenant = allow(request, ADMIN, resource=what)
    if tenant != DEFAULT_TENANT:
        raise Forbidden("only the operator (an admin key of the `default` tenant) manages tenants")
    return tenant


def audited(request: HttpRequest, action: str, resource: str, **details: object) -> None:
    """Record an action of the caller in the audit log."""
    caller = principal(request)
    tenancy.audit(caller.tenant, caller.actor, action, resource=resource, details=details)
