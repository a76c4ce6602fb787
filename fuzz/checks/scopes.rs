//! `Scope` and `Scopes` parsing, and what a set of scopes grants.
//!
//! The input is text, split into lines: the first is a required scope, the others the
//! scopes granted. Each line is judged by `Scope::new` and by a model written here from
//! the documented rule (1 to 128 bytes of `A-Z a-z 0-9 _ . : / -`, optionally ending in
//! `:*`, or exactly `*`); they must agree. A valid scope prints as itself. The set
//! (`Scopes::parse`) parses iff every line does, is sorted and without duplicates,
//! parses back from its own strings to an equal set, and grants the required scope iff
//! the model says one of its scopes does.

use tower_api_key::{Scope, Scopes};

/// Runs one input; panics when an invariant does not hold.
pub(crate) fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let required = lines.next().unwrap_or_default();
    let granted: Vec<&str> = lines.take(64).collect();

    for line in std::iter::once(required).chain(granted.iter().copied()) {
        match Scope::new(line) {
            Ok(scope) => {
                assert!(valid(line), "{line:?} accepted");
                assert_eq!(scope.to_string(), line);
                assert_eq!(scope.as_str(), line);
                assert!(scope.grants(line), "{line:?} does not grant itself");
                assert_eq!(Scope::try_from(line).as_ref(), Ok(&scope));
            }
            Err(_) => assert!(!valid(line), "{line:?} refused"),
        }
    }

    match Scopes::parse(&granted) {
        Ok(scopes) => {
            assert!(granted.iter().all(|s| valid(s)));
            let list: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "not sorted and unique: {list:?}"
            );
            let mut expected = granted.clone();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(list, expected);
            assert_eq!(Scopes::parse(&list).as_ref(), Ok(&scopes), "no round trip");
            assert_eq!(scopes.len(), list.len());
            assert_eq!(scopes.is_empty(), list.is_empty());
            let model = list.iter().any(|g| grants(g, required));
            assert_eq!(
                scopes.grants(required),
                model,
                "{list:?} grants {required:?}?"
            );
            let _ = format!("{scopes:?}");
        }
        Err(_) => assert!(granted.iter().any(|s| !valid(s))),
    }
}

/// The documented rule for a scope.
fn valid(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let body = match s.strip_suffix(":*") {
        Some(stem) => &s[..stem.len() + 1],
        None => s,
    };
    !s.is_empty()
        && s.len() <= 128
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
}

/// The documented rule for what a granted scope grants.
fn grants(granted: &str, required: &str) -> bool {
    if granted == "*" || granted == required {
        return true;
    }
    match granted.strip_suffix('*') {
        // `orders:*` grants `orders:` followed by at least one character.
        Some(stem) => required.len() > stem.len() && required.starts_with(stem),
        None => false,
    }
}
