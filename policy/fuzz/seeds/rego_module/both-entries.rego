package fuzz

import rego.v1

default allow := false

allow if {
	input.method in {"GET", "HEAD"}
	startswith(object.get(input, "path", ""), "/ledger/")
	net.cidr_contains("10.0.0.0/8", input.source_ip)
}

deny_reason contains sprintf("role %v", [r]) if {
	r := input.headers["x-role"]
	r != "auditor"
}

deny_reason contains "weekend" if {
	time.weekday([time.parse_rfc3339_ns(input.time), "Europe/London"]) in {"Saturday", "Sunday"}
}
