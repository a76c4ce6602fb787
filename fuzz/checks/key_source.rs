//! `KeySource` extraction over arbitrary header maps and URIs, through `ApiKeyLayer`
//! (extraction is internal to the crate; the layer is how it is used).
//!
//! Input: a first byte of settings, then text lines: the first line is the URI, every
//! other line a header `name:value` (value bytes as they are; lines that do not make a
//! header name and value are skipped). Before parsing, `$KEY`, `$OTHER`, `$REVOKED`,
//! `$UNKNOWN` and `$FOREIGN` are replaced by two valid keys in the store, a revoked one,
//! a well-formed one not in the store, and a foreign key imported by hash.
//!
//! The settings byte: bits 0–3 pick the sources (`Authorization: Bearer`, `X-API-Key`,
//! `?api_key=`, `X-Token`; none picked: bearer alone), bit 4 reverses their order, bit
//! 5 turns on `hide_credentials`, bit 6 `accept_foreign_keys`.
//!
//! A model of the documented extraction rules (bearer scheme case-insensitive followed
//! by a space, header values trimmed, query values as they stand, the same key twice is
//! one key, two different keys a conflict) predicts the answer, which must be it: no
//! key 401 without `error`, a conflict 400, a valid key the inner service with that
//! key's id, anything else 401 `invalid_token` (gRPC requests: `grpc-status` 16 or the
//! inner service). With `hide_credentials` the inner service sees none of what the
//! sources read, and everything else unchanged; without, the request unchanged.

use std::convert::Infallible;
use std::sync::LazyLock;

use axum::body::Body;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use tower::{Layer, ServiceExt};
use tower_api_key::{
    ApiKeyLayer, Authenticated, CachedResolver, KeyFormat, KeyHash, KeyRecord, KeySource,
    MemoryStore,
};

struct World {
    runtime: tokio::runtime::Runtime,
    cache: CachedResolver<MemoryStore>,
    key: String,
    other: String,
    revoked: String,
    unknown: String,
}

const FOREIGN: &str = "foreign-Key.0001";

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let format = KeyFormat::default();
    let (key, other, revoked, unknown) = (
        format.generate(),
        format.generate(),
        format.generate(),
        format.generate(),
    );
    store.insert(KeyRecord::new(&key, "a").with_id("key_a"));
    store.insert(KeyRecord::new(&other, "b").with_id("key_b"));
    store.insert(
        KeyRecord::new(&revoked, "c")
            .with_id("key_c")
            .with_revoked_at(std::time::SystemTime::UNIX_EPOCH),
    );
    let mut foreign = KeyRecord::new(&format.generate(), "f").with_id("key_f");
    foreign.hash = KeyHash::of(FOREIGN);
    store.insert(foreign);
    World {
        runtime,
        cache: CachedResolver::new(store),
        key: key.expose_secret().to_owned(),
        other: other.expose_secret().to_owned(),
        revoked: revoked.expose_secret().to_owned(),
        unknown: unknown.expose_secret().to_owned(),
    }
});

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Src {
    Bearer,
    Header(&'static str),
    Query(&'static str),
}

/// What the inner service saw.
#[derive(Clone)]
struct Seen {
    key_id: String,
    headers: HeaderMap,
    uri: Uri,
}

#[derive(PartialEq, Eq)]
enum Expected {
    Missing,
    Conflict,
    Key(Vec<u8>),
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("Missing"),
            Self::Conflict => f.write_str("Conflict"),
            Self::Key(k) => write!(f, "Key({:?})", String::from_utf8_lossy(k)),
        }
    }
}

/// Runs one input; panics when an invariant does not hold.
pub(crate) fn check(data: &[u8]) {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let w = &*WORLD;
    let text = replace(rest, w);

    let all = [
        Src::Bearer,
        Src::Header("x-api-key"),
        Src::Query("api_key"),
        Src::Header("x-token"),
    ];
    let mut sources: Vec<Src> = (0..4)
        .filter(|i| settings & (1 << i) != 0)
        .map(|i| all[i])
        .collect();
    if sources.is_empty() {
        sources.push(Src::Bearer);
    }
    if settings & 0x10 != 0 {
        sources.reverse();
    }
    let hide = settings & 0x20 != 0;
    let foreign = settings & 0x40 != 0;

    let mut lines = text.split(|&b| b == b'\n');
    let uri =
        Uri::try_from(lines.next().unwrap_or_default()).unwrap_or_else(|_| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }

    let source = sources
        .iter()
        .map(|s| match *s {
            Src::Bearer => KeySource::bearer(),
            Src::Header(name) => KeySource::header(HeaderName::from_static(name)),
            Src::Query(name) => KeySource::query(name),
        })
        .reduce(KeySource::or)
        .unwrap();
    let layer = ApiKeyLayer::from_cache(w.cache.clone())
        .source(source)
        .hide_credentials(hide)
        .accept_foreign_keys(foreign);
    let inner = tower::service_fn(|req: Request<Body>| async move {
        let key_id = req
            .extensions()
            .get::<Authenticated>()
            .expect("the inner service is called only with Authenticated")
            .key_id()
            .to_owned();
        let seen = Seen {
            key_id,
            headers: req.headers().clone(),
            uri: req.uri().clone(),
        };
        let mut response = Response::new(Body::empty());
        response.extensions_mut().insert(seen);
        Ok::<_, Infallible>(response)
    });
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    let response = w
        .runtime
        .block_on(layer.layer(inner).oneshot(request))
        .unwrap();

    let expected = model(&sources, &headers, &uri);
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let id = match &expected {
        Expected::Key(k) if k == w.key.as_bytes() => Some("key_a"),
        Expected::Key(k) if k == w.other.as_bytes() => Some("key_b"),
        Expected::Key(k) if foreign && k == FOREIGN.as_bytes() => Some("key_f"),
        _ => None,
    };
    let seen = response.extensions().get::<Seen>().cloned();
    let www = response
        .headers()
        .get(http::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let answer = format!("{expected:?} → {} {www:?}", response.status());
    trace(&answer);
    for secret in [&w.key, &w.other, &w.revoked, &w.unknown] {
        for (_, v) in response.headers() {
            assert!(
                !v.as_bytes()
                    .windows(secret.len())
                    .any(|x| x == secret.as_bytes())
            );
        }
    }
    match id {
        Some(id) => {
            let seen = seen.unwrap_or_else(|| panic!("refused: {answer}"));
            assert_eq!(seen.key_id, id);
            assert_eq!(response.status(), StatusCode::OK);
            if hide {
                stripped(&sources, &headers, &uri, &seen);
            } else {
                assert_eq!(seen.headers, headers);
                assert_eq!(seen.uri, uri);
            }
        }
        None => {
            assert!(seen.is_none(), "let through: {answer}");
            if grpc {
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.headers()["grpc-status"], "16");
                return;
            }
            let (status, error) = match expected {
                Expected::Missing => (StatusCode::UNAUTHORIZED, None),
                Expected::Conflict => (StatusCode::BAD_REQUEST, Some("invalid_request")),
                Expected::Key(_) => (StatusCode::UNAUTHORIZED, Some("invalid_token")),
            };
            assert_eq!(response.status(), status, "{answer}");
            assert_eq!(
                response.headers()[http::header::CONTENT_TYPE],
                "application/problem+json",
                "{answer}"
            );
            if status == StatusCode::UNAUTHORIZED {
                let www = www.unwrap_or_else(|| panic!("no challenge: {answer}"));
                match error {
                    Some(error) => assert!(www.contains(&format!("error=\"{error}\"")), "{answer}"),
                    None => assert!(!www.contains("error="), "{answer}"),
                }
            }
        }
    }
}

fn replace(input: &[u8], w: &World) -> Vec<u8> {
    let pairs: [(&[u8], &str); 5] = [
        (b"$KEY", &w.key),
        (b"$OTHER", &w.other),
        (b"$REVOKED", &w.revoked),
        (b"$UNKNOWN", &w.unknown),
        (b"$FOREIGN", FOREIGN),
    ];
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    'outer: while i < input.len() {
        for (from, to) in pairs {
            if input[i..].starts_with(from) {
                out.extend_from_slice(to.as_bytes());
                i += from.len();
                continue 'outer;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// The key a bearer credential carries, by the documented rule: optional leading
/// whitespace, `Bearer` in any case, one space, the token (trimmed).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii_start();
    if value.len() < 7 || !value[..6].eq_ignore_ascii_case(b"bearer") || value[6] != b' ' {
        return None;
    }
    Some(value[7..].trim_ascii())
}

fn query<'u>(uri: &'u Uri, name: &str) -> Vec<&'u [u8]> {
    let Some(q) = uri.query() else {
        return Vec::new();
    };
    q.split('&')
        .filter_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v.as_bytes()),
            None if pair == name => Some(&b""[..]),
            _ => None,
        })
        .collect()
}

fn model(sources: &[Src], headers: &HeaderMap, uri: &Uri) -> Expected {
    let mut found: Vec<&[u8]> = Vec::new();
    for s in sources {
        match *s {
            Src::Bearer => found.extend(
                headers
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .filter_map(|v| bearer(v.as_bytes())),
            ),
            Src::Header(name) => found.extend(
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.as_bytes().trim_ascii()),
            ),
            Src::Query(name) => found.extend(query(uri, name)),
        }
    }
    match found.first() {
        None => Expected::Missing,
        Some(first) if found.iter().any(|k| k != first) => Expected::Conflict,
        Some(first) => Expected::Key(first.to_vec()),
    }
}

/// What the inner service saw with `hide_credentials`: none of what the sources read.
fn stripped(sources: &[Src], headers: &HeaderMap, uri: &Uri, seen: &Seen) {
    let mut expected = headers.clone();
    let mut names: Vec<&str> = Vec::new();
    for s in sources {
        match *s {
            Src::Bearer => {
                let carries = headers
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .any(|v| bearer(v.as_bytes()).is_some());
                if carries {
                    expected.remove(http::header::AUTHORIZATION);
                }
            }
            Src::Header(name) => {
                expected.remove(name);
            }
            Src::Query(name) => names.push(name),
        }
    }
    assert_eq!(seen.headers, expected, "headers after hide_credentials");
    assert_eq!(seen.uri.path(), uri.path());
    assert_eq!(seen.uri.scheme(), uri.scheme());
    assert_eq!(seen.uri.authority(), uri.authority());
    let kept: Vec<&str> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|pair| !names.contains(&pair.split_once('=').map_or(*pair, |(k, _)| k)))
                .collect()
        })
        .unwrap_or_default();
    let seen_pairs: Vec<&str> = seen
        .uri
        .query()
        .map(|q| q.split('&').collect())
        .unwrap_or_default();
    if names.is_empty() || query_is_untouched(uri, &names) {
        assert_eq!(seen.uri, *uri);
    } else if kept.is_empty() {
        assert_eq!(seen.uri.query(), None, "{uri} → {}", seen.uri);
    } else {
        assert_eq!(seen_pairs, kept, "{uri} → {}", seen.uri);
    }
}

fn query_is_untouched(uri: &Uri, names: &[&str]) -> bool {
    names.iter().all(|n| query(uri, n).is_empty())
}

/// With `FUZZ_TRACE` set, prints what each input did (to check that seeds reach what
/// they are meant to).
fn trace(what: &str) {
    static ON: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_TRACE").is_some());
    if *ON {
        eprintln!("{what}");
    }
}
