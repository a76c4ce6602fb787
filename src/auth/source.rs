use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, Uri};

/// Where [`ApiKeyLayer`](crate::ApiKeyLayer) reads the key.
///
/// - [`bearer`](Self::bearer) (the default): `Authorization: Bearer <key>`, scheme
///   matched case-insensitively;
/// - [`header`](Self::header): a header holding only the key, such as `X-API-Key`;
/// - [`query`](Self::query): a query parameter. Opt-in only: URLs end up in logs,
///   browser histories and `Referer` headers.
///
/// Sources combine with [`or`](Self::or); all of them are read, and a request carrying
/// two *different* keys is refused with 400 `invalid_request` rather than one of them
/// being picked silently.
///
/// ```
/// use http::HeaderName;
/// use tower_api_key::KeySource;
///
/// let source = KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key")));
/// # let _ = source;
/// ```
#[derive(Clone, Debug)]
pub struct KeySource {
    sources: Arc<[Source]>,
}

#[derive(Clone, Debug)]
enum Source {
    Bearer,
    Header(HeaderName),
    Query(Box<str>),
}

/// The request carries two different keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conflicting;

impl Default for KeySource {
    fn default() -> Self {
        Self::bearer()
    }
}

impl KeySource {
    /// `Authorization: Bearer <key>`.
    pub fn bearer() -> Self {
        Self::one(Source::Bearer)
    }

    /// A header whose whole value is the key, e.g. `X-API-Key`.
    pub fn header(name: HeaderName) -> Self {
        Self::one(Source::Header(name))
    }

    /// A query parameter, e.g. `?api_key=…`. Keys are base62, so the value is taken as
    /// it stands, with no percent-decoding.
    pub fn query(name: impl Into<String>) -> Self {
        Self::one(Source::Query(name.into().into_boxed_str()))
    }

    /// Reads from `self` and from `other`.
    pub fn or(self, other: KeySource) -> Self {
        Self {
            sources: self
                .sources
                .iter()
                .chain(other.sources.iter())
                .cloned()
                .collect(),
        }
    }

    fn one(source: Source) -> Self {
        Self {
            sources: Arc::new([source]),
        }
    }

    /// The key the request carries, if any, as raw bytes: a key that is not ASCII fails
    /// [`KeyFormat::validate_bytes`](crate::KeyFormat::validate_bytes) like any other
    /// malformed key.
    pub(crate) fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        uri: &'a Uri,
    ) -> Result<Option<&'a [u8]>, Conflicting> {
        let mut found: Option<&'a [u8]> = None;
        for source in self.sources.iter() {
            match source {
                Source::Bearer => {
                    for value in headers.get_all(AUTHORIZATION) {
                        if let Some(token) = bearer_token(value.as_bytes()) {
                            take(&mut found, token)?;
                        }
                    }
                }
                Source::Header(name) => {
                    for value in headers.get_all(name) {
                        take(&mut found, value.as_bytes().trim_ascii())?;
                    }
                }
                Source::Query(name) => {
                    for value in query_values(uri, name) {
                        take(&mut found, value.as_bytes())?;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Removes what the sources read, so that the inner service never sees the key.
    pub(crate) fn strip(&self, headers: &mut HeaderMap, uri: &mut Uri) {
        for source in self.sources.iter() {
            match source {
                Source::Bearer => {
                    let bearer = headers
                        .get_all(AUTHORIZATION)
                        .iter()
                        .any(|v| bearer_token(v.as_bytes()).is_some());
                    if bearer {
                        headers.remove(AUTHORIZATION);
                    }
                }
                Source::Header(name) => {
                    headers.remove(name);
                }
                Source::Query(name) => strip_query(uri, name),
            }
        }
    }
}

/// Keeps the first key seen; a different second key is a conflict.
fn take<'a>(found: &mut Option<&'a [u8]>, key: &'a [u8]) -> Result<(), Conflicting> {
    match *found {
        Some(seen) if seen != key => Err(Conflicting),
        _ => {
            *found = Some(key);
            Ok(())
        }
    }
}

/// The token of a `Bearer` credential; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    // What clients send: `Bearer ` and a token with no white space around it. The same
    // answer as below, without the byte-by-byte trimming and case folding.
    if let Some(token) = value.strip_prefix(b"Bearer ")
        && let (Some(first), Some(last)) = (token.first(), token.last())
        && !first.is_ascii_whitespace()
        && !last.is_ascii_whitespace()
    {
        return Some(token);
    }
    let value = value.trim_ascii_start();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii())
}

fn query_values<'u, 'n>(
    uri: &'u Uri,
    name: &'n str,
) -> impl Iterator<Item = &'u str> + use<'u, 'n> {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
}

fn strip_query(uri: &mut Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    if query_values(uri, name).next().is_none() {
        return;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let mut path_and_query = uri.path().to_owned();
    if !kept.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&kept.join("&"));
    }
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(rebuilt) = Uri::from_parts(parts) {
        *uri = rebuilt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn all() -> KeySource {
        KeySource::bearer()
            .or(KeySource::header(HeaderName::from_static("x-api-key")))
            .or(KeySource::query("api_key"))
    }

    const K1: Result<Option<&[u8]>, Conflicting> = Ok(Some(b"k1"));

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        let uri = Uri::from_static("/");
        for v in ["Bearer k1", "bearer k1", "BEARER   k1 ", "  bEaReR k1"] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(KeySource::bearer().extract(&h, &uri), K1, "{v}");
        }
        for v in ["Basic a2V5", "Bearerk1", "Token k1", "Bear"] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(KeySource::bearer().extract(&h, &uri), Ok(None), "{v}");
        }
        let h = headers(&[("authorization", "Bearer ")]);
        assert_eq!(KeySource::bearer().extract(&h, &uri), Ok(Some(&b""[..])));
    }

    #[test]
    fn sources_in_combination() {
        let src = all();
        let uri = Uri::from_static("/x?a=1&api_key=k1&b=2");
        assert_eq!(src.extract(&HeaderMap::new(), &uri), K1);
        let h = headers(&[("x-api-key", "k1"), ("authorization", "Bearer k1")]);
        assert_eq!(src.extract(&h, &uri), K1, "the same key twice is fine");
        let h = headers(&[("x-api-key", "k2"), ("authorization", "Bearer k1")]);
        assert_eq!(src.extract(&h, &Uri::from_static("/")), Err(Conflicting));
        let h = headers(&[("x-api-key", "k1"), ("x-api-key", "k2")]);
        assert_eq!(src.extract(&h, &Uri::from_static("/")), Err(Conflicting));
        assert_eq!(
            src.extract(
                &HeaderMap::new(),
                &Uri::from_static("/x?api_key=k1&api_key=k3")
            ),
            Err(Conflicting)
        );
        // Query parameters are read only when asked for.
        assert_eq!(
            KeySource::bearer().extract(&HeaderMap::new(), &uri),
            Ok(None)
        );
    }

    #[test]
    fn non_ascii_header_is_passed_on_as_bytes_for_validation_to_refuse() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-api-key",
            http::HeaderValue::from_bytes(b"k\xff").unwrap(),
        );
        let src = KeySource::header(HeaderName::from_static("x-api-key"));
        let uri = Uri::from_static("/");
        let got = src.extract(&h, &uri).unwrap().unwrap();
        assert_eq!(got, b"k\xff");
        assert!(crate::KeyFormat::default().validate_bytes(got).is_err());
    }

    /// What `KeySource::bearer` reads from one `Authorization` header holding `value`.
    fn bearer_of(value: &[u8]) -> Result<Option<Vec<u8>>, Conflicting> {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, http::HeaderValue::from_bytes(value).unwrap());
        let uri = Uri::from_static("/");
        KeySource::bearer()
            .extract(&h, &uri)
            .map(|found| found.map(<[u8]>::to_vec))
    }

    #[test]
    fn bad_bytes_in_authorization_are_a_malformed_key_or_no_bearer_credential() {
        let format = crate::KeyFormat::default();
        // Not UTF-8, obs-text, a tab inside: read as the token, refused by validation.
        for v in [
            &b"Bearer \xff\xfe"[..],
            b"Bearer sk_live_\xe9\xe9",
            b"Bearer k1\xa0",
            b"bearer k1\tk2",
        ] {
            let token = bearer_of(v).unwrap().unwrap_or_else(|| panic!("{v:?}"));
            assert!(format.validate_bytes(&token).is_err(), "{v:?}");
        }
        // Obs-text in the scheme, or a tab or a no-break space where its one space goes
        // (RFC 9110 §11.4: `auth-scheme 1*SP token68`): no bearer credential at all.
        for v in [
            &b"B\xe9arer k1"[..],
            b"Bearer\tk1",
            b"Bearer\xa0k1",
            b"\xff\xfe\xfd\xfc\xfb\xfa k1",
            b"Bearer",
            b"Bearer\t",
        ] {
            assert_eq!(bearer_of(v), Ok(None), "{v:?}");
        }
        // Only white space after the scheme: an empty token (on the wire hyper trims the
        // trailing white space first, and then there is no bearer credential).
        for v in [&b"Bearer    "[..], b"Bearer \t \t"] {
            assert_eq!(bearer_of(v), Ok(Some(Vec::new())), "{v:?}");
        }
        // White space around the token is trimmed.
        assert_eq!(bearer_of(b"\tBearer \tk1\t "), Ok(Some(b"k1".to_vec())));
        // NUL, CR, LF and other controls cannot be in a header value at all: the HTTP
        // parser refuses them before the layer sees the request.
        for v in [
            &b"Bearer k\x001"[..],
            b"Bearer k\r1",
            b"Bearer k\n1",
            b"Bearer k\x7f",
        ] {
            assert!(http::HeaderValue::from_bytes(v).is_err(), "{v:?}");
        }
    }

    /// `bearer_token` without its fast path: the definition the fast path must agree with.
    fn bearer_token_slowly(value: &[u8]) -> Option<&[u8]> {
        let value = value.trim_ascii_start();
        let (scheme, rest) = value.split_at_checked(6)?;
        if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
            return None;
        }
        Some(rest.trim_ascii())
    }

    #[test]
    fn the_fast_bearer_path_agrees_with_the_general_one() {
        for v in [
            &b"Bearer k1"[..],
            b"Bearer  k1",
            b"Bearer k1 ",
            b"Bearer \tk1",
            b"Bearer k1\t",
            b"Bearer ",
            b"Bearer k",
            b"Bearer k 1",
            b"bearer k1",
            b" Bearer k1",
            b"Bearerk1",
            b"Bearer \xffk1",
        ] {
            assert_eq!(bearer_token(v), bearer_token_slowly(v), "{v:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_authorization_bytes_give_the_general_answer(
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            bearer in proptest::bool::ANY,
        ) {
            let mut v = if bearer { b"Bearer ".to_vec() } else { Vec::new() };
            v.extend_from_slice(&rest);
            proptest::prop_assert_eq!(bearer_token(&v), bearer_token_slowly(&v));
        }
    }

    #[test]
    fn long_values_and_many_headers() {
        let uri = Uri::from_static("/");
        let format = crate::KeyFormat::default();
        let long = vec![b'a'; 64 * 1024];
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(&long);
        assert_eq!(bearer_of(&value), Ok(Some(long.clone())));
        assert_eq!(
            format.validate_bytes(&long),
            Err(crate::key::MalformedKey::Length)
        );
        let src = KeySource::header(HeaderName::from_static("x-api-key"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", http::HeaderValue::from_bytes(&long).unwrap());
        assert_eq!(src.extract(&h, &uri), Ok(Some(&long[..])));

        let many = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(AUTHORIZATION, v.parse().unwrap());
            }
            h
        };
        let same = vec!["Bearer k1"; 100];
        assert_eq!(KeySource::bearer().extract(&many(&same), &uri), K1);
        for at in [0, 50, 99] {
            let mut one_differs = same.clone();
            one_differs[at] = "Bearer k2";
            let h = many(&one_differs);
            assert_eq!(
                KeySource::bearer().extract(&h, &uri),
                Err(Conflicting),
                "at {at}"
            );
        }
        // Other schemes are not keys: they neither count nor conflict.
        let mut basic = vec!["Basic a2V5"; 99];
        assert_eq!(KeySource::bearer().extract(&many(&basic), &uri), Ok(None));
        basic.push("Bearer k1");
        assert_eq!(KeySource::bearer().extract(&many(&basic), &uri), K1);
    }

    proptest::proptest! {
        /// Whatever bytes a header value may hold, extraction does not panic, and a
        /// token that validates is ASCII.
        #[test]
        fn any_header_bytes_extract_without_panicking(
            auth in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            other in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(&auth) {
                h.append(AUTHORIZATION, v);
            }
            if let Ok(v) = http::HeaderValue::from_bytes(&other) {
                h.append("x-api-key", v);
            }
            let uri = Uri::from_static("/");
            if let Ok(Some(token)) = all().extract(&h, &uri)
                && crate::KeyFormat::default().validate_bytes(token).is_ok()
            {
                proptest::prop_assert!(token.is_ascii());
            }
        }
    }

    #[test]
    fn strip_removes_every_copy_of_the_key() {
        let src = all();
        let mut h = headers(&[
            ("x-api-key", "k1"),
            ("authorization", "Bearer k1"),
            ("accept", "*/*"),
        ]);
        let mut uri = Uri::from_static("http://h/x?a=1&api_key=k1&b=2");
        src.strip(&mut h, &mut uri);
        assert!(!h.contains_key("x-api-key"));
        assert!(!h.contains_key("authorization"));
        assert!(h.contains_key("accept"));
        assert_eq!(uri.to_string(), "http://h/x?a=1&b=2");
        let mut only = Uri::from_static("/x?api_key=k1");
        src.strip(&mut h, &mut only);
        assert_eq!(only.to_string(), "/x");
        // A Basic credential is not ours to remove.
        let mut h = headers(&[("authorization", "Basic a2V5")]);
        src.strip(&mut h, &mut only);
        assert!(h.contains_key("authorization"));
    }
}
