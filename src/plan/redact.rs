//! Keeping credentials out of everything lanceferry prints or writes.
//!
//! A Chroma URL may carry `user:password@`; a target's `storage_options`
//! may carry cloud keys. The plan keeps the real values for the one place
//! that sends them, and everything shown or stored (`check`, `check
//! --json`, the apply prompt, reports, state, logs, errors) goes through
//! here: userinfo becomes `***`, and so does the value of any storage option
//! or URL query parameter whose name looks secret. The checker accepts such
//! a storage option only as a whole `${VAR}`, like the Chroma token, so a
//! plan in git never holds one.

/// Words that mark a name as holding a secret (`aws_secret_access_key`,
/// `azure_storage_account_key`, `session_token`, `password`, ...).
const SECRET_WORDS: [&str; 5] = ["key", "secret", "token", "password", "credential"];

/// Whether an option or parameter name looks like it holds a secret.
pub fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// Splits `scheme://authority/rest` into its parts (None if no `://`).
fn parts(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

/// A URL fit to show: userinfo as `***`, secret-looking query values as `***`.
pub fn url(u: &str) -> String {
    let Some((scheme, authority, rest)) = parts(u) else {
        return u.to_string();
    };
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let rest = match rest.split_once('?') {
        None => rest.to_string(),
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, format!("#{f}")),
                None => (query, String::new()),
            };
            let q: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if looks_secret(k) => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}{fragment}", q.join("&"))
        }
    };
    format!("{scheme}://{host}{rest}")
}

/// What identifies the server a URL names: the URL without its userinfo
/// (a rotated password is the same source).
pub fn url_identity(u: &str) -> String {
    match parts(u) {
        Some((scheme, authority, rest)) => {
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{rest}")
        }
        None => u.to_string(),
    }
}

/// Serializes a URL redacted (for `Plan` fields).
pub fn ser_url<S: serde::Serializer>(u: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&url(u))
}

/// Serializes storage options with secret-looking values as `***`.
pub fn ser_options<S: serde::Serializer>(
    options: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(options.len()))?;
    for (k, v) in options {
        if looks_secret(k) {
            map.serialize_entry(k, "***")?;
        } else {
            map.serialize_entry(k, v)?;
        }
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_secret_parameters_are_hidden() {
        assert_eq!(
            url("http://bob:PASSWORD@chroma:8000/x"),
            "http://***@chroma:8000/x"
        );
        assert_eq!(url("https://tok@host"), "https://***@host");
        assert_eq!(url("http://host:8000"), "http://host:8000");
        assert_eq!(
            url("http://h/p?api_key=S3CR3T&x=1#f"),
            "http://h/p?api_key=***&x=1#f"
        );
        // An `@` in the path is not userinfo.
        assert_eq!(url("http://h/a@b"), "http://h/a@b");
        assert_eq!(url_identity("http://a:b@h:1/p"), "http://h:1/p");
    }

    #[test]
    fn secret_names() {
        for n in [
            "aws_secret_access_key",
            "AWS_SESSION_TOKEN",
            "azure_storage_account_key",
            "google_application_credentials",
            "password",
        ] {
            assert!(looks_secret(n), "{n}");
        }
        for n in ["region", "endpoint", "aws_region", "allow_http"] {
            assert!(!looks_secret(n), "{n}");
        }
    }
}
