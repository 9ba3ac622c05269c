# Copied from examples/policies/key-access.rego for the bank demo: it adds the demo's reporting
# workload to the accounting principals and loopback to the accounting networks; otherwise unchanged.
# Key access: decrypting the financial-report key is allowed only for the accounting services,
# acting in an accounting role, from the accounting networks, in London business hours.
#
# Rego v1 (meshguard refuses v0). Entry points: `allow` (boolean) and `deny_reason` (set of strings).
# Input: see `meshguard policy --help`; `input.time` is the proxy's clock (RFC 3339). Time is read
# with time.weekday / time.clock in the business's zone; never time.now_ns.
package meshguard.key_access

decrypt_path := "/v1/keys/financial-report/decrypt"

accounting_principals := {
	"spiffe://bank.example/ns/accounting/sa/reporting",
	"spiffe://bank.example/ns/accounting/sa/month-end",
	# The demo bank's reporting workload.
	"spiffe://bank.example/ns/reporting/sa/reporting",
}

accounting_roles := {"accountant", "financial-controller"}

# The demo runs on loopback: 127.0.0.0/8 plays an accounting network.
accounting_networks := ["10.20.0.0/16", "10.21.4.0/24", "127.0.0.0/8"]

business_days := {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}

business_zone := "Europe/London"

# Absent fields are read through object.get so a missing attribute is a value, not undefined
# (`not f(input.x)` with a missing input.x behaves differently across Rego engines).
principal := object.get(input, "principal", "")

source_ip := object.get(input, "source_ip", "")

role := object.get(object.get(input, "headers", {}), "x-role", "")

is_decrypt if {
	input.method == "POST"
	input.path == decrypt_path
}

now_ns := time.parse_rfc3339_ns(input.time)

in_business_hours if {
	business_days[time.weekday([now_ns, business_zone])]
	[hour, _, _] := time.clock([now_ns, business_zone])
	hour >= 9
	hour < 17
}

from_accounting_network if {
	source_ip != ""
	some network in accounting_networks
	net.cidr_contains(network, source_ip)
}

default allow := false

# Allow needs every condition to hold positively (not merely "no deny reason"): the RVM treats a
# builtin error inside a rule body as that body failing, so a deny rule that errors would give no
# reason, while an allow condition that errors gives no allow.
allow if {
	is_decrypt
	accounting_principals[principal]
	accounting_roles[role]
	from_accounting_network
	in_business_hours
}

deny_reason contains "only POST /v1/keys/financial-report/decrypt is governed by this policy" if {
	not is_decrypt
}

deny_reason contains msg if {
	is_decrypt
	not accounting_principals[principal]
	msg := sprintf("principal %q is not an accounting service", [principal])
}

deny_reason contains msg if {
	is_decrypt
	not accounting_roles[role]
	msg := sprintf("role %q may not decrypt the financial-report key", [role])
}

deny_reason contains msg if {
	is_decrypt
	not from_accounting_network
	msg := sprintf("source address %q is outside the accounting networks", [source_ip])
}

deny_reason contains "outside business hours (Mon-Fri 09:00-17:00 Europe/London)" if {
	is_decrypt
	not in_business_hours
}
