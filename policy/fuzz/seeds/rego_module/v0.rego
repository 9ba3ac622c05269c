package x

allow {
  input.method == "GET"
}
