//! A PostgreSQL URL's TLS parameters, read as libpq reads them.
//!
//! sqlx parses `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (and the `PGSSLMODE`,
//! `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` variables); two of libpq's rules it does not
//! apply, and this does:
//!
//! - `sslmode=require` with a root certificate checks the server's certificate against it,
//!   as `verify-ca` does ("If a root CA file exists, the behavior of sslmode=require will
//!   be the same as that of verify-ca", libpq's documentation);
//! - `sslrootcert=system` (PostgreSQL 16's libpq) trusts the system's root certificates
//!   and makes `verify-full` the default; a weaker `sslmode` with it is refused.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// The connection options of `url`, with libpq's TLS rules. The error never repeats the
/// URL, which may hold a password.
pub(super) fn connect_options(url: &str) -> Result<PgConnectOptions, String> {
    let params = query_params(url);
    let param = |names: &[&str]| {
        params
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let root = param(&["sslrootcert", "ssl-root-cert", "ssl-ca"]).or_else(|| env("PGSSLROOTCERT"));
    let mode_given = param(&["sslmode", "ssl-mode"]).or_else(|| env("PGSSLMODE"));
    let system = root.as_deref() == Some("system");
    let mut options = PgConnectOptions::from_str(url).map_err(|e| {
        format!(
            "invalid PostgreSQL URL (expected postgres://user:password@host[:port]/database[?sslmode=…&sslrootcert=…]): {}",
            redact(&e.to_string(), url)
        )
    })?;
    if system {
        // sqlx would read `system` as a file name; no extra root instead (its roots are
        // the system's).
        options = options.ssl_root_cert_from_pem(Vec::new());
        match (mode_given.is_some(), options.get_ssl_mode()) {
            (_, PgSslMode::VerifyFull) => {}
            (false, _) => options = options.ssl_mode(PgSslMode::VerifyFull),
            (true, mode) => {
                return Err(format!(
                    "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                    mode_name(mode)
                ));
            }
        }
    } else if root.is_some() && matches!(options.get_ssl_mode(), PgSslMode::Require) {
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    Ok(options)
}

fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// `message` with the URL's password, should it appear as written in the URL or
/// percent-decoded (as a parser's message may quote it), replaced.
fn redact(message: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    let Some(password) = password else {
        return message.to_owned();
    };
    // In userinfo `+` is a plus, not a space.
    let decoded = percent_decode(&password.replace('+', "%2B"));
    let mut message = message.replace(password, "***");
    if !decoded.is_empty() {
        message = message.replace(&decoded, "***");
    }
    message
}

/// The query's `name=value` pairs, percent-decoded.
fn query_params(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> &'static str {
        mode_name(connect_options(url).unwrap().get_ssl_mode())
    }

    #[test]
    fn require_with_a_root_certificate_checks_it() {
        let base = "postgres://u:p@db.example.com/keys";
        assert_eq!(mode(&format!("{base}?sslmode=require")), "require");
        assert_eq!(
            mode(&format!("{base}?sslmode=require&sslrootcert=/etc/ca.pem")),
            "verify-ca"
        );
        assert_eq!(
            mode(&format!(
                "{base}?sslmode=verify-full&sslrootcert=/etc/ca.pem"
            )),
            "verify-full"
        );
        assert_eq!(mode(&format!("{base}?sslmode=disable")), "disable");
    }

    #[test]
    fn sslrootcert_system_means_verify_full_and_refuses_weaker() {
        let base = "postgres://u:s3cret@db.example.com/keys";
        assert_eq!(mode(&format!("{base}?sslrootcert=system")), "verify-full");
        assert_eq!(
            mode(&format!("{base}?sslrootcert=system&sslmode=verify-full")),
            "verify-full"
        );
        let e = connect_options(&format!("{base}?sslmode=require&sslrootcert=system")).unwrap_err();
        assert!(e.contains("weak sslmode \"require\""), "{e}");
        assert!(!e.contains("s3cret"));
    }

    #[test]
    fn parameters_are_decoded() {
        assert_eq!(
            query_params("postgres://h/d?a=%2Fx%20y&b=system&c=%2#f"),
            [
                ("a".to_owned(), "/x y".to_owned()),
                ("b".to_owned(), "system".to_owned()),
                ("c".to_owned(), "%2".to_owned())
            ]
        );
    }

    #[test]
    fn redaction_covers_the_written_and_the_decoded_password() {
        let url = "postgres://u:p%40ss+w%2Fd@db.example.com/keys";
        let message = "bad: p%40ss+w%2Fd or p@ss+w/d";
        assert_eq!(redact(message, url), "bad: *** or ***");
        assert_eq!(
            redact("no password here", "postgres://u@h/d"),
            "no password here"
        );
    }

    #[test]
    fn a_bad_url_does_not_repeat_the_password() {
        let e = connect_options("postgres://u:hunter22@db.example.com:notaport/keys").unwrap_err();
        assert!(!e.contains("hunter22"), "{e}");
    }
}
