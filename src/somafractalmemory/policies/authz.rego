# The default access policy: a key may do what its scopes allow, in its namespaces.
#
# Input: {tenant, key_id, scopes, allowed_namespaces, action, namespace, resource}.
# `allowed_namespaces` empty means every namespace; `namespace` is null for requests that
# name none (a search or list across namespaces), which a namespace-limited key may not make.
# Replace this file (setting `policy_path`) to change the rules; keep `allow` and `reason`.
package sfm.authz

import rego.v1

scope_of := {
	"memory.read": "read",
	"memory.write": "write",
	"admin": "admin",
}

default allow := false

allow if {
	scope_ok
	namespace_ok
}

scope_ok if {
	scope_of[input.action]
	input.scopes[_] == "admin"
}

scope_ok if input.scopes[_] == scope_of[input.action]

namespace_ok if count(input.allowed_namespaces) == 0

namespace_ok if input.allowed_namespaces[_] == input.namespace

reason := msg if {
	not scope_of[input.action]
	msg := sprintf("unknown action %q", [input.action])
}

reason := msg if {
	scope_of[input.action]
	not scope_ok
	msg := sprintf("this key lacks the %q scope", [scope_of[input.action]])
}

reason := msg if {
	scope_ok
	not namespace_ok
	msg := sprintf("this key may only use the namespaces %v; name one of them", [input.allowed_namespaces])
}
