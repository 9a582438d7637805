//! Storage settings: S3 credentials and endpoint, FTP credentials, transfer sizes. A plain
//! struct of `Option`s so the config's future `[s3]`/`[ftp]` tables map onto it one to one;
//! what is unset comes from the standard AWS environment variables ([`StorageSettings::with_env`])
//! or from the FTP URL. `Debug` never shows a secret.

use std::fmt;

/// Settings for S3 and FTP stores. Every field is optional; see each store for its default.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageSettings {
    /// S3 access key ID (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// S3 secret access key (`AWS_SECRET_ACCESS_KEY`). Never printed.
    pub secret_access_key: Option<String>,
    /// S3 session token for temporary credentials (`AWS_SESSION_TOKEN`). Never printed.
    pub session_token: Option<String>,
    /// S3 region (`AWS_REGION`); default `us-east-1`.
    pub region: Option<String>,
    /// S3-compatible endpoint URL, e.g. `http://127.0.0.1:9000` (`AWS_ENDPOINT_URL`); default
    /// AWS itself. Requests use path-style addressing when an endpoint is set.
    pub endpoint: Option<String>,
    /// Allow plain `http://` endpoints (`AWS_ALLOW_HTTP`, `true`/`false`); default false.
    pub allow_http: Option<bool>,
    /// FTP user when the URL has none; default `anonymous`.
    pub ftp_user: Option<String>,
    /// FTP password when the URL has none. Never printed.
    pub ftp_password: Option<String>,
    /// Size of one S3 ranged GET and multipart part in bytes; default
    /// [`DEFAULT_PART_BYTES`](super::DEFAULT_PART_BYTES). Fetches use it as given (≥ 1);
    /// uploads raise it to [`MIN_UPLOAD_PART_BYTES`](super::MIN_UPLOAD_PART_BYTES), S3's minimum.
    pub part_bytes: Option<u64>,
    /// S3 requests in flight per fetch or upload; default
    /// [`DEFAULT_CONCURRENCY`](super::DEFAULT_CONCURRENCY).
    pub concurrency: Option<usize>,
}

impl StorageSettings {
    /// Settings from the standard AWS environment variables only.
    pub fn from_env() -> StorageSettings {
        StorageSettings::default().with_env()
    }

    /// Fills every unset S3 field from its AWS environment variable (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`). Fields already set win. Empty variables count as unset.
    pub fn with_env(self) -> StorageSettings {
        self.with_vars(|name| std::env::var(name).ok())
    }

    /// [`StorageSettings::with_env`] over any variable source (tests use a map).
    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> StorageSettings {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        let fill = |field: &mut Option<String>, name: &str| {
            if field.is_none() {
                *field = var(name);
            }
        };
        fill(&mut self.access_key_id, "AWS_ACCESS_KEY_ID");
        fill(&mut self.secret_access_key, "AWS_SECRET_ACCESS_KEY");
        fill(&mut self.session_token, "AWS_SESSION_TOKEN");
        fill(&mut self.region, "AWS_REGION");
        fill(&mut self.endpoint, "AWS_ENDPOINT_URL");
        if self.allow_http.is_none() {
            self.allow_http = var("AWS_ALLOW_HTTP").map(|v| v.eq_ignore_ascii_case("true"));
        }
        self
    }

    /// The secrets these settings hold, for scrubbing messages.
    pub(super) fn secrets(&self) -> Vec<String> {
        [
            &self.secret_access_key,
            &self.session_token,
            &self.ftp_password,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

/// `Some("***")` for a set secret, `None` otherwise.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "***")
}

impl fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageSettings")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("ftp_user", &self.ftp_user)
            .field("ftp_password", &redacted(&self.ftp_password))
            .field("part_bytes", &self.part_bytes)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIAENV".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".into()),
            "AWS_SESSION_TOKEN" => Some(String::new()),
            "AWS_REGION" => Some("eu-west-1".into()),
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000".into()),
            "AWS_ALLOW_HTTP" => Some("TRUE".into()),
            _ => None,
        }
    }

    #[test]
    fn explicit_settings_win_over_the_environment() {
        let explicit = StorageSettings {
            secret_access_key: Some("given".into()),
            allow_http: Some(false),
            ..StorageSettings::default()
        };
        let s = explicit.with_vars(vars);
        assert_eq!(
            s,
            StorageSettings {
                access_key_id: Some("AKIAENV".into()),
                secret_access_key: Some("given".into()),
                session_token: None,
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:9000".into()),
                allow_http: Some(false),
                ..StorageSettings::default()
            }
        );
        let from_env = StorageSettings::default().with_vars(vars);
        assert_eq!(from_env.allow_http, Some(true));
        assert_eq!(from_env.secret_access_key.as_deref(), Some("envsecret"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = StorageSettings {
            access_key_id: Some("AKIAID".into()),
            secret_access_key: Some("wJalrXUtnFEMI".into()),
            session_token: Some("FwoGZXIvYXdzE".into()),
            ftp_user: Some("alice".into()),
            ftp_password: Some("hunter2".into()),
            ..StorageSettings::default()
        };
        let text = format!("{s:?} {s:#?}");
        for secret in ["wJalrXUtnFEMI", "FwoGZXIvYXdzE", "hunter2"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("secret_access_key: Some(\"***\")"), "{text}");
        assert!(text.contains("AKIAID") && text.contains("alice"), "{text}");
        assert_eq!(
            s.secrets(),
            ["wJalrXUtnFEMI", "FwoGZXIvYXdzE", "hunter2"].map(String::from)
        );
    }
}
