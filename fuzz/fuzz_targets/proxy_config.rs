//! The proxy's TOML config file. A refusal must name a line and column inside the text, because
//! that is what the operator is told to go and fix.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use meshguard_proxy::Config;
use meshguard_proxy::config::ConfigError;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: relative paths in the text resolve under it and read nothing.
    match Config::parse(text, Path::new("/nonexistent/meshguard-fuzz/proxy.toml")) {
        Ok(config) => {
            let _ = config.to_redacted_json();
        }
        Err(ConfigError::Invalid { line, column, .. }) => {
            assert!(line >= 1 && column >= 1);
            assert!(
                line <= text.lines().count().max(1) + 1,
                "line {line} is past the end"
            );
        }
        Err(_) => {}
    }
});
