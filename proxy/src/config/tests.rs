use super::*;

const GOOD: &str = r#"
[identity]
files = { cert = "svid.pem", key = "svid.key", bundle = "bundle.pem" }
[admin]
listen = "127.0.0.1:15000"
[access_log]
path = "access.log"
[[inbound]]
listen = "0.0.0.0:15006"
forward_to = "127.0.0.1:8080"
protocol = "tcp"
policy = "policy.toml"
[[outbound]]
listen = "127.0.0.1:15001"
target = "10.0.0.7:15006"
expect = ["spiffe://bank.example/ns/ledger/sa/ledger"]
protocol = "tcp"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/meshguard/sidecar.toml"))
}

fn error_at(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            line,
            column,
            message,
            ..
        }) => (line, column, message),
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

#[test]
fn the_issue_example_parses_with_defaults_and_resolved_paths() {
    let config = parse(GOOD).unwrap();
    assert_eq!(
        config.identity,
        IdentitySourceConfig::Files {
            cert: "/etc/meshguard/svid.pem".into(),
            key: "/etc/meshguard/svid.key".into(),
            bundle: "/etc/meshguard/bundle.pem".into(),
        }
    );
    assert_eq!(
        config.access_log.path,
        Path::new("/etc/meshguard/access.log")
    );
    assert_eq!(
        config.inbound[0].policy,
        Path::new("/etc/meshguard/policy.toml")
    );
    assert_eq!(config.inbound[0].max_connections, 10_000);
    assert_eq!(config.outbound[0].upstream.first().port(), 15006);
    assert_eq!(
        config.timeouts.drain_grace.get(),
        std::time::Duration::from_secs(30)
    );
    assert_eq!(config.inbound[0].display_name(), "inbound:0.0.0.0:15006");
}

#[test]
fn unknown_keys_are_reported_with_line_and_column() {
    let text = GOOD.replace("forward_to =", "forwad_to =");
    let (line, column, message) = error_at(&text);
    assert_eq!((line, column), (10, 1), "{message}");
    assert!(message.contains("forwad_to"), "{message}");
    let shown = parse(&text).unwrap_err().to_string();
    assert!(
        shown.starts_with("/etc/meshguard/sidecar.toml:10:1: "),
        "{shown}"
    );
}

#[test]
fn bad_values_point_at_the_value() {
    let text = GOOD.replace("10.0.0.7:15006", "10.0.0.7");
    let (line, column, message) = error_at(&text);
    assert_eq!((line, column), (15, 10), "{message}");
    assert!(message.contains("has no port"), "{message}");

    let text = GOOD.replace(
        "spiffe://bank.example/ns/ledger/sa/ledger",
        "spiffe://bank.example/ns//x",
    );
    let (line, _, message) = error_at(&text);
    assert_eq!(line, 16, "{message}");
    assert!(message.contains("is not a SPIFFE ID"), "{message}");
}

#[test]
fn identity_needs_exactly_one_source() {
    let text = GOOD.replace(
        "files = {",
        "workload_api = \"unix:///run/spire/agent.sock\"\nfiles = {",
    );
    let (line, _, message) = error_at(&text);
    assert_eq!(line, 2, "{message}");
    assert!(message.contains("exactly one source"), "{message}");
    let none = "[identity]\n";
    assert!(error_at(none).2.contains("exactly one source"));
    let wl = GOOD.replace(
        "files = { cert = \"svid.pem\", key = \"svid.key\", bundle = \"bundle.pem\" }",
        "workload_api = \"tcp://x\"",
    );
    assert!(error_at(&wl).2.contains("Unix socket"));
}

#[test]
fn l7_settings_and_missing_expectations() {
    // `http` and `detect` listeners are accepted; the `[http]` table rejects unknown keys.
    let text = GOOD.replacen("protocol = \"tcp\"", "protocol = \"http\"", 1);
    assert!(Config::parse(&text, std::path::Path::new("sidecar.toml")).is_ok());
    let text = format!("{GOOD}\n[http]\nmax_header_size = 1\n");
    assert!(error_at(&text).2.contains("max_header_size"));
    let text = GOOD.replace(
        "expect = [\"spiffe://bank.example/ns/ledger/sa/ledger\"]",
        "expect = []",
    );
    assert!(error_at(&text).2.contains("needs `expect"));
    let text = GOOD.replace("protocol = \"tcp\"\npolicy", "protocol = \"udp\"\npolicy");
    assert!(error_at(&text).2.contains("udp"));
}

#[test]
fn duplicate_listen_addresses_are_refused() {
    let text = GOOD.replace("127.0.0.1:15001", "0.0.0.0:15006");
    assert!(error_at(&text).2.contains("used by two listeners"));
}

#[test]
fn transparent_routes_parse_and_validate() {
    let text = format!(
        "{GOOD}\n[transparent]\nlisten = \"127.0.0.1:15002\"\npassthrough = true\n\
         [[transparent.route]]\ndestination = \"10.0.0.0/24\"\nports = [8080]\ntarget_port = 15006\n\
         expect = [\"spiffe://bank.example/*\"]\n"
    );
    let config = parse(&text).unwrap();
    let transparent = config.transparent.unwrap();
    assert!(transparent.passthrough);
    assert_eq!(transparent.route[0].target_port, Some(15006));

    let both = text.replace(
        "target_port = 15006",
        "target_port = 15006\ntarget = \"10.0.0.9:15006\"",
    );
    assert!(
        error_at(&both)
            .2
            .contains("exactly one of `target` or `target_port`")
    );
}

#[test]
fn the_redacted_json_shows_paths_not_contents() {
    let json = parse(GOOD).unwrap().to_redacted_json();
    assert_eq!(
        json["inbound"][0]["upstream"]["endpoints"][0],
        "127.0.0.1:8080"
    );
    assert_eq!(json["identity"]["files"]["key"], "/etc/meshguard/svid.key");
}

#[test]
fn log_overflow_is_explicit_drop_for_access_block_for_decisions() {
    let config = parse(&format!("{GOOD}[decision_log]\npath = \"decisions.log\"\n")).unwrap();
    assert_eq!(config.access_log.on_full, OnFull::Drop);
    assert_eq!(config.decision_log.unwrap().on_full, OnFull::Block);
    let text = GOOD.replace(
        "path = \"access.log\"",
        "path = \"access.log\"\non_full = \"block\"",
    );
    assert_eq!(parse(&text).unwrap().access_log.on_full, OnFull::Block);
    let text = GOOD.replace(
        "path = \"access.log\"",
        "path = \"access.log\"\non_full = \"sometimes\"",
    );
    let (line, _, message) = error_at(&text);
    assert_eq!(line, 8, "{message}");
    assert!(
        message.contains("block") && message.contains("drop"),
        "{message}"
    );
}
