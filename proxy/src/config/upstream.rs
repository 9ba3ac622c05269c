//! The `upstream` of a listener: one address (`forward_to = "HOST:PORT"`, `target = "HOST:PORT"`,
//! the original form) or a table naming several endpoints, how to balance over them and how to
//! survive their failures. Both forms parse into one [`UpstreamConfig`], so the data path has one
//! shape whatever the operator wrote.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{HumanDuration, Target};

/// How requests (or connections) are spread over an upstream's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balancer {
    /// Power of two choices over peak-EWMA latency weighted by pending requests (linkerd2's default).
    #[default]
    P2cEwma,
    /// Each endpoint in turn.
    RoundRobin,
}

/// Where a listener forwards to, and the failure handling in front of it.
///
/// Defaults follow linkerd2-proxy and Envoy: 5 consecutive failures eject an endpoint for 1 s,
/// doubling up to 60 s (Envoy's outlier detection), retries limited to 20 % of requests plus
/// 10 per second (linkerd's `retryRatio` / `minRetriesPerSecond`), bodies up to 64 KiB replayable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `HOST:PORT` each; a DNS name stands for every address it resolves to.
    pub endpoints: Vec<Target>,
    /// `p2c-ewma` (default) or `round-robin`.
    #[serde(default)]
    pub balancer: Balancer,
    /// How often DNS names are resolved again (Envoy's `dns_refresh_rate`).
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: HumanDuration,
    /// Consecutive failures after which an endpoint is ejected.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// The first ejection's length; each further one doubles it.
    #[serde(default = "default_ejection_min")]
    pub ejection_min: HumanDuration,
    /// The longest ejection.
    #[serde(default = "default_ejection_max")]
    pub ejection_max: HumanDuration,
    /// TCP connect timeout per endpoint; `[timeouts] connect` when absent.
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// The whole request's timeout, retries included; `[http] request_timeout` when absent.
    #[serde(default)]
    pub request_timeout: Option<HumanDuration>,
    /// Attempts per request at most, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Retries allowed as a fraction of requests (over the last 10 s).
    #[serde(default = "default_retry_ratio")]
    pub retry_ratio: f32,
    /// Retries allowed per second whatever the ratio says.
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
    /// A request body up to this size is kept so the request can be retried; a larger one is
    /// streamed and the request is never retried once sent.
    #[serde(default = "default_retry_buffer_bytes")]
    pub retry_buffer_bytes: usize,
}

fn default_dns_refresh() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_failure_threshold() -> u32 {
    5
}
fn default_ejection_min() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn default_ejection_max() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_max_attempts() -> u32 {
    3
}
fn default_retry_ratio() -> f32 {
    0.2
}
fn default_min_retries_per_second() -> u32 {
    10
}
fn default_retry_buffer_bytes() -> usize {
    64 * 1024
}

impl UpstreamConfig {
    /// One endpoint with every default: the `forward_to = "HOST:PORT"` form.
    pub fn single(target: Target) -> Self {
        Self {
            endpoints: vec![target],
            balancer: Balancer::default(),
            dns_refresh: default_dns_refresh(),
            failure_threshold: default_failure_threshold(),
            ejection_min: default_ejection_min(),
            ejection_max: default_ejection_max(),
            connect_timeout: None,
            request_timeout: None,
            max_attempts: default_max_attempts(),
            retry_ratio: default_retry_ratio(),
            min_retries_per_second: default_min_retries_per_second(),
            retry_buffer_bytes: default_retry_buffer_bytes(),
        }
    }

    /// The first endpoint as written: names the upstream in log lines before one is chosen.
    pub fn first(&self) -> &Target {
        // Validated non-empty at parse time; `single` has one.
        &self.endpoints[0]
    }

    /// Whether the values make sense; the message says what to write instead.
    fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("`upstream.endpoints` is empty: name at least one HOST:PORT".to_owned());
        }
        if self.failure_threshold == 0 {
            return Err("`failure_threshold` must be 1 or more".to_owned());
        }
        if self.max_attempts == 0 || self.max_attempts > 10 {
            return Err("`max_attempts` must be between 1 and 10".to_owned());
        }
        if !(0.0..=1000.0).contains(&self.retry_ratio) || self.retry_ratio.is_nan() {
            return Err("`retry_ratio` must be between 0.0 and 1000.0, e.g. 0.2".to_owned());
        }
        if self.ejection_min.get().is_zero() || self.ejection_max.get() < self.ejection_min.get() {
            return Err("`ejection_min` must be above zero and at most `ejection_max`".to_owned());
        }
        if self.dns_refresh.get() < std::time::Duration::from_millis(100) {
            return Err("`dns_refresh` must be at least 100ms".to_owned());
        }
        Ok(())
    }
}

/// Accepts `"HOST:PORT"` or `{ endpoints = [...], ... }`.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<UpstreamConfig, D::Error> {
    struct Either;
    impl<'de> Visitor<'de> for Either {
        type Value = UpstreamConfig;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("\"HOST:PORT\" or { endpoints = [\"HOST:PORT\", ...] }")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<UpstreamConfig, E> {
            text.parse::<Target>()
                .map(UpstreamConfig::single)
                .map_err(E::custom)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UpstreamConfig, A::Error> {
            let config = UpstreamConfig::deserialize(de::value::MapAccessDeserializer::new(map))?;
            config.validate().map_err(de::Error::custom)?;
            Ok(config)
        }
    }
    deserializer.deserialize_any(Either)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Holder {
        #[serde(deserialize_with = "deserialize")]
        upstream: UpstreamConfig,
    }

    fn parse(text: &str) -> Result<UpstreamConfig, String> {
        toml::from_str::<Holder>(text)
            .map(|h| h.upstream)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn both_forms_parse_into_one_shape() {
        let single = parse(r#"upstream = "127.0.0.1:9001""#).unwrap();
        assert_eq!(
            single,
            UpstreamConfig::single("127.0.0.1:9001".parse().unwrap())
        );
        let table = parse(
            r#"upstream = { endpoints = ["127.0.0.1:9001", "ledger.internal:8080"], balancer = "round-robin" }"#,
        )
        .unwrap();
        assert_eq!(table.endpoints.len(), 2);
        assert_eq!(table.balancer, Balancer::RoundRobin);
        assert_eq!(table.failure_threshold, 5);
        assert_eq!(table.retry_buffer_bytes, 65_536);
    }

    #[test]
    fn bad_tables_are_refused_with_what_to_write() {
        for (text, expected) in [
            (r#"upstream = { endpoints = [] }"#, "is empty"),
            (r#"upstream = { endpoints = ["nope"] }"#, "has no port"),
            (
                r#"upstream = { endpoints = ["a:1"], balancr = "x" }"#,
                "unknown field `balancr`",
            ),
            (
                r#"upstream = { endpoints = ["a:1"], balancer = "random" }"#,
                "p2c-ewma",
            ),
            (
                r#"upstream = { endpoints = ["a:1"], max_attempts = 0 }"#,
                "max_attempts",
            ),
            (r#"upstream = "a""#, "has no port"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.contains("line 1"), "{text}: {error}");
        }
    }
}
