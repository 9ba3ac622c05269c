package x

allow := "yes"

deny_reason := 7
