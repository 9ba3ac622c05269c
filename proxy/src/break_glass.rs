//! Break-glass through the admin control socket: `POST /break-glass` appends a time-boxed grant (principal,
//! duration, mandatory reason) to the grants file every inbound policy loads, then reloads those
//! policies so the grant applies to the next connection. Grants expire by themselves (the policy
//! crate checks `expires` on every decision); the file keeps them as a record of each emergency.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use jiff::{SignedDuration, Timestamp};
use meshguard_policy::store::PolicyStore;
use meshguard_policy::{BreakGlass, Grant};
use serde::Deserialize;

/// What `POST /break-glass` takes (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The exact SPIFFE ID to let through.
    pub principal: String,
    /// How long, like `15m` or `1h` (at most 24 h).
    #[serde(rename = "for")]
    pub duration: String,
    /// Why; mandatory.
    pub reason: String,
    /// Who asked (operator or ticket), when known.
    #[serde(default)]
    pub issued_by: Option<String>,
}

/// The grants file and the policy stores that read it.
#[derive(Debug)]
pub struct BreakGlassAdmin {
    file: PathBuf,
    stores: OnceLock<Vec<Arc<PolicyStore>>>,
    /// One writer at a time, so concurrent grants never interleave in the file.
    writing: tokio::sync::Mutex<()>,
}

// === impl BreakGlassAdmin ===

impl BreakGlassAdmin {
    /// Grants go to `file`.
    pub fn new(file: PathBuf) -> Self {
        Self {
            file,
            stores: OnceLock::new(),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// The inbound policies to reload after a grant (set once the listeners exist).
    pub fn set_stores(&self, stores: Vec<Arc<PolicyStore>>) {
        let _ = self.stores.set(stores);
    }

    /// Checks the request, appends the grant and reloads the policies. The error is a sentence
    /// for the operator.
    pub async fn grant(&self, request: GrantRequest, now: Timestamp) -> Result<Grant, String> {
        let duration: SignedDuration = request.duration.parse().map_err(|e| {
            format!(
                "`for` = `{}` is not a duration ({e}): write it like `15m` or `1h`",
                request.duration
            )
        })?;
        // Whole seconds (rounded down, so the grant is in force at once): people read the file.
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let mut grant = Grant::new(&request.principal, duration, &request.reason, now)
            .map_err(|e| e.to_string())?;
        grant.issued_by = request.issued_by.filter(|who| !who.trim().is_empty());
        let _writing = self.writing.lock().await;
        let existing = match tokio::fs::read_to_string(&self.file).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(format!(
                    "cannot read the grants file {}: {e}",
                    self.file.display()
                ));
            }
        };
        // Never add to a file the policy could not load.
        BreakGlass::parse(&self.file, &existing).map_err(|e| {
            format!("the grants file is not valid; fix it before adding a grant: {e}")
        })?;
        let mut text = existing;
        if !text.is_empty() && !text.ends_with("\n\n") {
            text.push_str(if text.ends_with('\n') { "\n" } else { "\n\n" });
        }
        text.push_str(&grant.to_toml());
        // Write whole and rename, so a reload never reads half a grant.
        let tmp = self.file.with_extension("toml.tmp");
        tokio::fs::write(&tmp, &text)
            .await
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        tokio::fs::rename(&tmp, &self.file).await.map_err(|e| {
            format!(
                "cannot replace the grants file {}: {e}",
                self.file.display()
            )
        })?;
        for store in self.stores.get().into_iter().flatten() {
            if let Err(error) = store.reload() {
                return Err(format!(
                    "the grant was written to {} but a policy did not reload ({error}); fix the policy and it applies on the next reload",
                    self.file.display()
                ));
            }
        }
        tracing::warn!(principal = %grant.principal, expires = %grant.expires, reason = %grant.reason, "break-glass grant added through the admin API");
        Ok(grant)
    }

    /// Every grant in the file, with whether it is in force at `now`.
    pub async fn list(&self, now: Timestamp) -> Result<serde_json::Value, String> {
        let text = match tokio::fs::read_to_string(&self.file).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", self.file.display())),
        };
        let grants = BreakGlass::parse(&self.file, &text).map_err(|e| e.to_string())?;
        Ok(serde_json::Value::Array(
            grants.grants().map(|g| grant_json(g, now)).collect(),
        ))
    }
}

/// A grant as the admin API shows it.
pub fn grant_json(grant: &Grant, now: Timestamp) -> serde_json::Value {
    serde_json::json!({
        "principal": grant.principal,
        "reason": grant.reason,
        "not_before": grant.not_before.to_string(),
        "expires": grant.expires.to_string(),
        "issued_by": grant.issued_by,
        "active": grant.is_active(now),
    })
}

/// Posts a grant to a running proxy's admin control socket (`meshguard policy break-glass
/// --admin-socket PATH`); returns the grant as the proxy recorded it, or the proxy's answer in words.
pub async fn post_grant(
    socket: &std::path::Path,
    principal: &str,
    duration: &str,
    reason: &str,
    issued_by: Option<&str>,
) -> Result<serde_json::Value, String> {
    let body = serde_json::json!({
        "principal": principal, "for": duration, "reason": reason, "issued_by": issued_by,
    });
    let answer = crate::admin::client::call(
        socket,
        http::Method::POST,
        "/break-glass",
        Some(body.to_string()),
    )
    .await?;
    if answer.status != http::StatusCode::CREATED {
        return Err(format!(
            "the proxy refused the grant ({}): {}",
            answer.status,
            answer.body.trim()
        ));
    }
    serde_json::from_str(&answer.body)
        .map_err(|e| format!("the admin control socket answered something else: {e}"))
}
