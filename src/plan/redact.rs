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

/// Splits a URL into `(prefix, userinfo, rest)`: `prefix` is `scheme://`
/// (or empty), `userinfo` what precedes the last `@`. The last `@`, not the
/// first `/`, ends the userinfo: a password holding an unencoded `/`, `?`
/// or `#` is still a password to a reader of the text, and masking a little
/// too much (an `@` in a path) is harmless where showing a password is not.
fn split(u: &str) -> (&str, Option<&str>, &str) {
    let (prefix, rest) = match u.find("://") {
        Some(i) => u.split_at(i + 3),
        None => ("", u),
    };
    match rest.rfind('@') {
        Some(at) => (prefix, Some(&rest[..at]), &rest[at + 1..]),
        None => (prefix, None, rest),
    }
}

/// A URL fit to show: userinfo as `***`, secret-looking query values as `***`.
pub fn url(u: &str) -> String {
    let (prefix, userinfo, rest) = split(u);
    let host = match userinfo {
        Some(_) => "***@",
        None => "",
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
    format!("{prefix}{host}{rest}")
}

/// What identifies the server a URL names: the URL without its userinfo
/// (a rotated password is the same source).
pub fn url_identity(u: &str) -> String {
    let (prefix, _, rest) = split(u);
    format!("{prefix}{rest}")
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
        // A password with an unencoded `/`, `?` or `#`, and text that is
        // not a URL at all, are masked too.
        assert_eq!(url("http://bob:pa/ss@host:1/x"), "http://***@host:1/x");
        assert_eq!(url("http://bob:pa#ss@host"), "http://***@host");
        assert_eq!(url("bob:pw@host:8000"), "***@host:8000");
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
