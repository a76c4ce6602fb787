//! GitHub's secret-scanning report body, through `SecretScanning::router` in process.
//!
//! The signature gates the parser, and the parser is internal: inputs are signed here
//! with a test key (ECDSA P-256, a fixed scalar) that the endpoint's public-key document
//! lists, so that the fuzzer reaches the parser and everything after it. In fuzz builds
//! (`--cfg fuzzing`) they carry instead the one value the endpoint takes as good there
//! (`FUZZING_SIGNATURE`): ECDSA held the target to ~1 700 executions a second.
//!
//! Input: a settings byte, then the body. Before signing, `$KEY`, `$REVOKED` and
//! `$UNKNOWN` in the body are replaced by a key in the store, a revoked key in the
//! store, and a well-formed key that is not. Settings: bit 0 `LeakAction::Notify`
//! (else `Revoke`); bits 1–2: 3 sends another key's real signature of another body
//! (verified, in every build: the answer must be 401 and nothing may change), else the
//! listed key's.
//!
//! A body that is a JSON array of objects with string `token` and `type` (and `url`,
//! `source` strings or absent) is answered 200 with one label per entry, in order:
//! `token_hash` the SHA-256 hex of the token (computed here with `sha2`), `token_type`
//! the `type`, `label` `true_positive` exactly for the keys in the store (this input's
//! live key, the revoked one, and earlier inputs' live keys). With
//! `Revoke`, the live key is revoked iff it was reported. Any other body is 400
//! problem+json whose detail is one of the endpoint's fixed messages (so it holds no
//! token). Nothing is ever 5xx, and no answer holds a key (but in a `type`, which
//! GitHub's contract echoes).

use std::sync::{LazyLock, Mutex};

use axum::body::Body;
use base64::Engine as _;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_api_key::admin::secret_scanning::{
    DEFAULT_PATH, KEY_IDENTIFIER_HEADER, SIGNATURE_HEADER,
};
use tower_api_key::admin::{LeakAction, PublicKeys, SecretScanning};
use tower_api_key::{ApiKey, CachedResolver, KeyFormat, KeyRecord, KeyStore, MemoryStore};

struct World {
    runtime: tokio::runtime::Runtime,
    github: SigningKey,
    /// The stranger's signature of another body: real ECDSA, verified and refused.
    forged: String,
    keys: PublicKeys,
    revoked: ApiKey,
    unknown: ApiKey,
    state: Mutex<Option<State>>,
}

/// A store (holding the revoked key), its cache and the two routers (`Revoke`,
/// `Notify`), shared by [`RENEW_EVERY`] inputs; each input reports a live key of its own.
struct State {
    cache: CachedResolver<MemoryStore>,
    apps: [axum::Router; 2],
    inputs: u64,
    /// The live keys of this store's earlier inputs, still in it (some revoked): the
    /// fuzzer sees them in comparisons and puts them in later inputs, and they are true
    /// positives there too.
    earlier: std::collections::HashSet<String>,
}

/// How many inputs one store serves before it is dropped (which bounds its memory).
const RENEW_EVERY: u64 = 256;

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let github = SigningKey::from_slice(&[0x42; 32]).unwrap();
    let pem = github
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let document =
        json!({"public_keys": [{"key_identifier": "k1", "key": pem, "is_current": true}]});
    let format = KeyFormat::default();
    World {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        github,
        forged: {
            let stranger = SigningKey::from_slice(&[0x07; 32]).unwrap();
            let signature: Signature = stranger.sign(b"[]");
            base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
        },
        keys: PublicKeys::parse(document.to_string().as_bytes()).unwrap(),
        revoked: format.generate(),
        unknown: format.generate(),
        state: Mutex::new(None),
    }
});

/// Runs one input; panics when an invariant does not hold.
pub(crate) fn check(data: &[u8]) {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let w = &*WORLD;
    let mut state = w.state.lock().unwrap_or_else(|e| e.into_inner());
    if state.as_ref().is_none_or(|s| s.inputs >= RENEW_EVERY) {
        let store = MemoryStore::new();
        store.insert(
            KeyRecord::new(&w.revoked, "b")
                .with_id("key_revoked")
                .with_revoked_at(std::time::SystemTime::UNIX_EPOCH),
        );
        let cache = CachedResolver::new(store);
        let app = |action| {
            SecretScanning::new(cache.clone(), w.keys.clone())
                .action(action)
                .router()
        };
        let apps = [app(LeakAction::Revoke), app(LeakAction::Notify)];
        *state = Some(State {
            cache,
            apps,
            inputs: 0,
            earlier: Default::default(),
        });
    }
    let state = state.as_mut().unwrap();
    state.inputs += 1;
    let live = KeyFormat::default().generate();
    w.runtime.block_on(report(w, state, settings, rest, &live));
    state.earlier.insert(live.expose_secret().to_owned());
}

async fn report(w: &World, state: &State, settings: u8, raw: &[u8], live: &ApiKey) {
    // This input's own live key, under an id no other input of this store uses.
    let live_id = format!("key_live{}", state.inputs);
    state
        .cache
        .resolver()
        .insert(KeyRecord::new(live, "a").with_id(&live_id));
    let body = replace(raw, w, live);
    let action = if settings & 1 != 0 {
        LeakAction::Notify
    } else {
        LeakAction::Revoke
    };
    let forged = (settings >> 1) & 3 == 3;
    let cache = &state.cache;
    let app = state.apps[usize::from(action == LeakAction::Notify)].clone();

    let signature = if forged {
        w.forged.clone()
    } else {
        good_signature(w, &body)
    };
    let request = Request::post(DEFAULT_PATH)
        .header(KEY_IDENTIFIER_HEADER, "k1")
        .header(SIGNATURE_HEADER, signature)
        .body(Body::from(body.clone()))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let ctype = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .expect("answers are UTF-8");
    let what = format!("{:?} → {status} {text}", String::from_utf8_lossy(&body));
    trace(&what);

    // No answer holds a key, unless GitHub's contract says to echo it: `token_type` is
    // the reported `type`, whatever it holds.
    let expected = model(&body);
    for key in [live, &w.revoked, &w.unknown] {
        let secret = key.expose_secret();
        let echoed = expected
            .as_ref()
            .is_some_and(|entries| entries.iter().any(|(_, t)| t.contains(secret)));
        assert!(
            echoed || !text.contains(secret),
            "an answer holds a key: {what}"
        );
    }
    let revoked_now = cache
        .get(&live_id)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some();

    if forged {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(ctype, "application/problem+json", "{what}");
        assert!(!revoked_now, "a forged report revoked a key: {what}");
        return;
    }
    let Some(entries) = expected else {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(ctype, "application/problem+json", "{what}");
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["status"], 400, "{what}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            known_detail(detail),
            "a problem that may hold a token: {what}"
        );
        assert!(!revoked_now, "a refused report revoked a key: {what}");
        return;
    };
    assert_eq!(status, StatusCode::OK, "{what}");
    assert_eq!(ctype, "application/json", "{what}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let labels = answer
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {what}"));
    assert_eq!(labels.len(), entries.len(), "{what}");
    let mut live_reported = false;
    for ((token, token_type), label) in entries.iter().zip(labels) {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let ours = token == live.expose_secret()
            || token == w.revoked.expose_secret()
            || state.earlier.contains(token.as_str());
        live_reported |= token == live.expose_secret();
        let expected = json!({
            "token_hash": hex,
            "token_type": token_type,
            "label": if ours { "true_positive" } else { "false_positive" },
        });
        assert_eq!(label, &expected, "{what}");
    }
    assert_eq!(
        revoked_now,
        live_reported && action == LeakAction::Revoke,
        "revocation does not follow the report: {what}"
    );
    let leaks = cache
        .audit(Some(&live_id))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.name() == "leaked")
        .count();
    assert_eq!(leaks > 0, live_reported, "{what}");
}

/// The report's entries `(token, type)` if the body is one the endpoint must take.
fn model(body: &[u8]) -> Option<Vec<(String, String)>> {
    let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    entries
        .iter()
        .map(|entry| {
            let entry = entry.as_object()?;
            let token = entry.get("token")?.as_str()?.to_owned();
            let token_type = entry.get("type")?.as_str()?.to_owned();
            for optional in ["url", "source"] {
                match entry.get(optional) {
                    None | Some(Value::Null | Value::String(_)) => {}
                    Some(_) => return None,
                }
            }
            Some((token, token_type))
        })
        .collect()
}

/// Is `detail` one of the endpoint's messages for a refused body, none of which can
/// hold a value from the body (serde_json's syntax errors give a position)?
fn known_detail(detail: &str) -> bool {
    if detail.starts_with("the body is not valid JSON: ")
        || detail == "the body must be a JSON array"
    {
        return true;
    }
    let Some(rest) = detail.strip_prefix("entry ") else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &rest[digits..];
    digits > 0
        && (rest == " is not an object"
            || ["token", "type", "url", "source"]
                .iter()
                .any(|f| rest == format!(": \"{f}\" must be a string")))
}

fn replace(input: &[u8], w: &World, live: &ApiKey) -> Vec<u8> {
    let pairs: [(&[u8], &str); 3] = [
        (b"$KEY", live.expose_secret()),
        (b"$REVOKED", w.revoked.expose_secret()),
        (b"$UNKNOWN", w.unknown.expose_secret()),
    ];
    let mut out = Vec::with_capacity(input.len() + 64);
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

/// With `FUZZ_TRACE` set, prints what each input did (to check that seeds reach what
/// they are meant to).
fn trace(what: &str) {
    static ON: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_TRACE").is_some());
    if *ON {
        eprintln!("{what}");
    }
}

/// GitHub's signature of `body`: real ECDSA, as in production (the corpus replay on
/// stable runs this)…
#[cfg(not(fuzzing))]
fn good_signature(w: &World, body: &[u8]) -> String {
    let signature: Signature = w.github.sign(body);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

/// …or, in fuzz builds, the value the endpoint takes as good there
/// (`FUZZING_SIGNATURE`), so that executions go to the parser and not to ECDSA.
#[cfg(fuzzing)]
fn good_signature(_: &World, _: &[u8]) -> String {
    tower_api_key::admin::secret_scanning::FUZZING_SIGNATURE.to_owned()
}
