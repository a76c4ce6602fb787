//! A [GitHub secret scanning partner] endpoint (feature `admin`): GitHub finds one of
//! your keys in a public repository, gist, issue, … and posts it here; the key is
//! revoked at once (or, with [`LeakAction::Notify`], only recorded), and GitHub is told
//! which tokens were real.
//!
//! GitHub's contract: `POST` with a JSON array of `{"token","type","url","source"}`,
//! signed with ECDSA P-256 / SHA-256 over the raw body. The header
//! `Github-Public-Key-Identifier` names the key, `Github-Public-Key-Signature` holds the
//! base64 of the DER signature; the keys are those of GitHub's
//! `GET /meta/public_keys/secret_scanning` document, which the operator provides
//! ([`PublicKeys::parse`]). The answer is 200 with GitHub's feedback array
//! `[{"token_hash","token_type","label"}]`: `token_hash` is the SHA-256 hex of the token,
//! `token_type` echoes `type`, `label` is `true_positive` for a key of ours that exists
//! (revoked or not) and `false_positive` for anything else.
//!
//! For each token: a token that is not of the store's [`KeyFormat`] or whose checksum
//! fails is a `false_positive` with no store lookup; a key of ours is looked up by hash
//! and, when found, [reported leaked](KeyStore::report_leak): an audit entry `leaked`
//! with GitHub's `url` and `source` (never the token), actor
//! [`ACTOR`], and with [`LeakAction::Revoke`] (the default) its revocation, in one
//! transaction, which reaches the change feed and this instance's cache as a revocation
//! through the admin API does.
//!
//! | case | status |
//! | --- | --- |
//! | missing or unknown `Github-Public-Key-Identifier`, missing or bad signature | 401 |
//! | body over 1 MiB | 413 |
//! | not JSON, not an array, an entry without a string `token` or `type` | 400 |
//! | the key store fails | 503 |
//!
//! Errors are RFC 9457 problem+json, as in the rest of the admin API; they never hold a
//! token, and nothing here logs one. The headers are checked before the body is read,
//! the size while it is read, the signature before the body is parsed.
//!
//! The router is separate from [`router`](super::router): it is optional, its contract
//! is GitHub's, and it is authenticated by GitHub's signature rather than a key. The
//! admin API's OpenAPI document describes it with no security requirement (`security:
//! [{}]`) and the two signature headers, and says that it answers 404 where it is not
//! mounted.
//!
//! ```
//! use axum::Router;
//! use tower_api_key::admin::secret_scanning::{LeakAction, PublicKeys, SecretScanning};
//! use tower_api_key::{CachedResolver, MemoryStore};
//!
//! # let document = r#"{"public_keys":[{"key_identifier":"k1","is_current":true,"key":
//! # "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtxOaNlumnsq8qF4uMi+RHEVRq1AS\n1w9c7Kwz7Satdj2qqnLmbLLV4MM8OIufeWqXkQPssdXur5yUX/khkTFepQ==\n-----END PUBLIC KEY-----\n"}]}"#;
//! // The document of GitHub's `GET /meta/public_keys/secret_scanning`, saved by the operator.
//! let keys = PublicKeys::parse(document.as_bytes()).unwrap();
//! let cache = CachedResolver::new(MemoryStore::new());
//! let app: Router = Router::new()
//!     .merge(tower_api_key::admin::router(cache.clone()))
//!     .merge(SecretScanning::new(cache, keys).action(LeakAction::Revoke).router());
//! # let _ = app;
//! ```
//!
//! [GitHub secret scanning partner]: https://docs.github.com/en/code-security/secret-scanning/secret-scanning-partnership-program/secret-scanning-partner-program

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use http_body::Body as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Problem, problem, store_error};
use crate::key::{KeyFormat, KeyHash};
use crate::resolve::CachedResolver;
use crate::store::KeyStore;

/// The path [`SecretScanning::router`] serves by default.
pub const DEFAULT_PATH: &str = "/github/secret-scanning";
/// The largest body accepted: 1 MiB.
pub const MAX_BODY: usize = 1024 * 1024;
/// The actor of the audit entries this endpoint writes.
pub const ACTOR: &str = "github-secret-scanning";
/// The header naming the key that signed the body.
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";
/// The header holding the base64 of the DER signature over the raw body.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// In fuzz builds only (`--cfg fuzzing`, which cargo-fuzz sets and no other build does):
/// a signature header value that [`PublicKeys::verify`] takes as good for any listed key,
/// so that the fuzzer spends its executions past the signature gate rather than in ECDSA
/// (signing and verifying each input held it to ~1 700 a second). Every other value is
/// verified as always; the gate itself is fuzzed with real signatures of another key.
#[cfg(fuzzing)]
#[doc(hidden)]
pub const FUZZING_SIGNATURE: &str = "fuzzing-only-signature";

/// The longest `url` or `source` kept in the audit log; longer ones are cut.
const MAX_AUDIT_TEXT: usize = 2048;

/// What to do with a key of ours that GitHub found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LeakAction {
    /// Revoke it at once, and record the leak (the default).
    #[default]
    Revoke,
    /// Only record the leak; the key keeps working.
    Notify,
}

impl LeakAction {
    /// `revoke` or `notify`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Notify => "notify",
        }
    }
}

impl fmt::Display for LeakAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A [`LeakAction`] name that is neither `revoke` nor `notify`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the action on a leaked key must be revoke or notify, not {0:?}")]
pub struct UnknownLeakAction(String);

impl FromStr for LeakAction {
    type Err = UnknownLeakAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "revoke" => Ok(Self::Revoke),
            "notify" => Ok(Self::Notify),
            other => Err(UnknownLeakAction(other.to_owned())),
        }
    }
}

/// Why a public-key document could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublicKeysError {
    /// It is not JSON of GitHub's shape.
    #[error("the public-key document is not GitHub's format: {0}")]
    Format(String),
    /// A key is not a PEM P-256 public key (SubjectPublicKeyInfo).
    #[error("public key {key_identifier:?} is not a PEM P-256 public key: {detail}")]
    Key {
        /// The `key_identifier` of the entry.
        key_identifier: String,
        /// What is wrong with it.
        detail: String,
    },
    /// It lists no key: every report would be refused.
    #[error("the public-key document lists no key")]
    Empty,
}

/// GitHub's secret-scanning public keys, by identifier: the document of its
/// `GET /meta/public_keys/secret_scanning`,
/// `{"public_keys":[{"key_identifier","key","is_current"}]}`.
///
/// Every listed key is accepted, current or not: GitHub signs with the current one and
/// lists the previous ones while their signatures may still arrive.
#[derive(Clone)]
pub struct PublicKeys {
    keys: BTreeMap<String, (VerifyingKey, bool)>,
}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeys")
            .field("key_identifiers", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PublicKeys {
    /// Parses a document in GitHub's format. Bad JSON, a missing field, a key that is
    /// not a PEM P-256 SubjectPublicKeyInfo, and a document with no key are errors.
    pub fn parse(json: &[u8]) -> Result<Self, PublicKeysError> {
        let format = |detail: &str| PublicKeysError::Format(detail.to_owned());
        let value: Value =
            serde_json::from_slice(json).map_err(|e| PublicKeysError::Format(e.to_string()))?;
        let list = value
            .get("public_keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format("no \"public_keys\" array"))?;
        let mut keys = BTreeMap::new();
        for entry in list {
            let id = entry
                .get("key_identifier")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| format("an entry has no \"key_identifier\" string"))?;
            let pem = entry.get("key").and_then(Value::as_str).ok_or_else(|| {
                PublicKeysError::Format(format!("entry {id:?} has no \"key\" string"))
            })?;
            let current = match entry.get("is_current") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(PublicKeysError::Format(format!(
                        "entry {id:?}: \"is_current\" must be true or false"
                    )));
                }
            };
            let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
                PublicKeysError::Key {
                    key_identifier: id.to_owned(),
                    detail: e.to_string(),
                }
            })?;
            keys.insert(id.to_owned(), (key, current));
        }
        if keys.is_empty() {
            return Err(PublicKeysError::Empty);
        }
        Ok(Self { keys })
    }

    /// The key named `key_identifier`.
    pub fn get(&self, key_identifier: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_identifier).map(|(key, _)| key)
    }

    /// The identifiers of the keys, and whether GitHub marks each current.
    pub fn identifiers(&self) -> impl Iterator<Item = (&str, bool)> {
        self.keys
            .iter()
            .map(|(id, (_, current))| (id.as_str(), *current))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys? (Never, for a parsed document.)
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `signature_b64` (base64 of a DER ECDSA signature) is the signature
    /// of the key `key_identifier` over exactly `body`.
    pub fn verify(
        &self,
        key_identifier: &str,
        signature_b64: &[u8],
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let key = self.get(key_identifier).ok_or(SignatureError::UnknownKey)?;
        #[cfg(fuzzing)]
        if signature_b64 == FUZZING_SIGNATURE.as_bytes() {
            return Ok(());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim_ascii())
            .map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::Malformed)?;
        key.verify(body, &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// Why a report's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No key has the identifier the report names.
    #[error("unknown public key identifier")]
    UnknownKey,
    /// The signature is not base64 of a DER ECDSA signature.
    #[error("the signature is not base64 of a DER ECDSA signature")]
    Malformed,
    /// The signature does not match the body.
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Builds the secret-scanning router over a cached store: from the store (shared with
/// the [`ApiKeyLayer`](crate::ApiKeyLayer), so that a revocation takes effect there at
/// once), GitHub's public keys, and the [`LeakAction`].
pub struct SecretScanning<S> {
    cache: CachedResolver<S>,
    keys: PublicKeys,
    action: LeakAction,
    format: KeyFormat,
    path: String,
}

impl<S> fmt::Debug for SecretScanning<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretScanning")
            .field("keys", &self.keys)
            .field("action", &self.action)
            .field("format", &self.format)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> SecretScanning<S> {
    /// Reports to `cache`'s store, verified with `keys`; [`LeakAction::Revoke`], keys of
    /// [`KeyFormat::default`], served at [`DEFAULT_PATH`].
    pub fn new(cache: CachedResolver<S>, keys: PublicKeys) -> Self {
        Self {
            cache,
            keys,
            action: LeakAction::default(),
            format: KeyFormat::default(),
            path: DEFAULT_PATH.to_owned(),
        }
    }

    /// What to do with a key of ours that was found.
    pub fn action(mut self, action: LeakAction) -> Self {
        self.action = action;
        self
    }

    /// The format of the store's keys (the one the store and the `ApiKeyLayer` use):
    /// tokens that do not fit it, or whose checksum fails, are false positives without
    /// a lookup.
    pub fn format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }

    /// Where the endpoint is served (default [`DEFAULT_PATH`]).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The router: `POST` at the path.
    pub fn router(self) -> Router {
        let path = self.path.clone();
        let state = Arc::new(Endpoint {
            cache: self.cache,
            keys: self.keys,
            action: self.action,
            format: self.format,
        });
        Router::new()
            .route(&path, post(report::<S>))
            .with_state(state)
    }
}

/// What the handler needs.
pub(super) struct Endpoint<S> {
    cache: CachedResolver<S>,
    keys: PublicKeys,
    action: LeakAction,
    format: KeyFormat,
}

/// One entry of a report, its token taken out of the parsed JSON.
struct Reported {
    token: Zeroizing<String>,
    token_type: String,
    url: String,
    source: String,
}

/// The label GitHub gets for one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    TruePositive,
    FalsePositive,
}

impl Label {
    fn name(self) -> &'static str {
        match self {
            Self::TruePositive => "true_positive",
            Self::FalsePositive => "false_positive",
        }
    }
}

fn unauthorized(detail: &str) -> Problem {
    problem(StatusCode::UNAUTHORIZED, detail, None)
}

fn bad_request(detail: &str) -> Problem {
    problem(StatusCode::BAD_REQUEST, detail, None)
}

fn too_large() -> Problem {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {MAX_BODY} bytes"),
        None,
    )
}

/// One token of GitHub's report (documents the body; the handler reads the raw bytes).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub(super) struct LeakReportItem {
    /// The text GitHub found.
    token: String,
    /// The secret type GitHub matched (echoed back as `token_type`).
    r#type: String,
    /// Where it was found.
    url: Option<String>,
    /// What kind of place it was found in (`content`, `commit`, …).
    source: Option<String>,
}

/// What GitHub is told of a token.
#[allow(dead_code)] // Documents `LeakFeedbackItem::label`.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
enum LabelName {
    TruePositive,
    FalsePositive,
}

/// One label of the answer.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub(super) struct LeakFeedbackItem {
    /// The SHA-256 hex of the token.
    token_hash: String,
    /// The reported `type`.
    token_type: String,
    /// `true_positive` (a key of this service) or `false_positive`.
    #[schema(value_type = LabelName)]
    label: String,
}

/// GitHub's secret-scanning partner endpoint: mounted only when configured (the example
/// server: `GITHUB_SECRET_SCANNING_KEYS`), and authenticated by GitHub's signature, not by
/// an admin key.
#[utoipa::path(post, path = "/github/secret-scanning", request_body = Vec<LeakReportItem>,
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "Which of GitHub's keys signed the body"),
        ("Github-Public-Key-Signature" = String, Header, description = "Base64 DER ECDSA P-256 / SHA-256 signature of the raw body")),
    responses(
        (status = 200, description = "A label for each reported token", body = Vec<LeakFeedbackItem>),
        (status = 400, description = "The body is not a JSON array of reports."),
        (status = 401, description = "A signature header is missing, names a key GitHub does not have, or does not verify."),
        (status = 404, description = "Not mounted: the server has no GitHub public keys (the example server: `GITHUB_SECRET_SCANNING_KEYS` is unset)."),
        (status = 413, description = "The body is larger than 1 MiB."),
        (status = 503, description = "The key store is unavailable; GitHub sends the report again.")),
    security(()))]
pub(super) async fn report<S: KeyStore>(
    State(endpoint): State<Arc<Endpoint<S>>>,
    request: Request,
) -> Response {
    endpoint
        .handle(request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

impl<S: KeyStore> Endpoint<S> {
    async fn handle(&self, request: Request) -> Result<Response, Problem> {
        let (parts, body) = request.into_parts();
        let (key_id, signature) = signature_headers(&parts.headers)?;
        if self.keys.get(key_id).is_none() {
            return Err(unauthorized("unknown Github-Public-Key-Identifier"));
        }
        if parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > MAX_BODY as u64)
        {
            return Err(too_large());
        }
        let body = read_limited(body, MAX_BODY).await?;
        self.keys
            .verify(key_id, signature, &body)
            .map_err(|e| unauthorized(&e.to_string()))?;
        let reports = parse_reports(&body)?;
        drop(body);

        let mut feedback = Vec::with_capacity(reports.len());
        let (mut ours, mut revoked) = (0usize, 0usize);
        for reported in &reports {
            let hash = KeyHash::of(&reported.token);
            let label = self.check(reported, &hash).await?;
            if label == Label::TruePositive {
                ours += 1;
                revoked += usize::from(self.action == LeakAction::Revoke);
            }
            feedback.push(json!({
                "token_hash": hash.to_hex(),
                "token_type": reported.token_type,
                "label": label.name(),
            }));
        }
        tracing::info!(
            reported = reports.len(),
            ours,
            revoked,
            action = self.action.name(),
            "GitHub secret scanning report"
        );
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Value::Array(feedback).to_string(),
        )
            .into_response())
    }

    /// Looks the token up (if it is of our format) and reports the leak of a key of ours.
    async fn check(&self, reported: &Reported, hash: &KeyHash) -> Result<Label, Problem> {
        if self.format.validate(&reported.token).is_err() {
            return Ok(Label::FalsePositive);
        }
        // The store itself, not the cache: the answer to GitHub must be the store's.
        let record = self.cache.resolver().resolve(hash).await.map_err(|e| {
            tracing::warn!(error = %e, "secret scanning: key store failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store is unavailable; try again shortly",
                None,
            )
        })?;
        let Some(record) = record else {
            return Ok(Label::FalsePositive);
        };
        self.cache
            .report_leak(
                &record.id,
                &reported.url,
                &reported.source,
                self.action == LeakAction::Revoke,
                ACTOR,
            )
            .await
            .map_err(store_error)?;
        tracing::warn!(
            key_id = %record.id,
            consumer = %record.consumer,
            action = self.action.name(),
            "a key was found leaked by GitHub secret scanning"
        );
        Ok(Label::TruePositive)
    }
}

/// The key identifier and the signature, both present.
fn signature_headers(headers: &HeaderMap) -> Result<(&str, &[u8]), Problem> {
    let key_id = headers
        .get(KEY_IDENTIFIER_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("missing Github-Public-Key-Identifier"))?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| unauthorized("missing Github-Public-Key-Signature"))?;
    Ok((key_id, signature))
}

/// The whole body, refused with 413 as soon as it passes `limit` bytes.
async fn read_limited(mut body: Body, limit: usize) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let mut bytes = Zeroizing::new(Vec::new());
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|_| bad_request("the body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(too_large());
            }
            if bytes.capacity() < bytes.len() + data.len() {
                // Grow by hand, so that no copy of a token is left behind unzeroed.
                let mut bigger = Zeroizing::new(Vec::with_capacity(
                    (bytes.len() + data.len())
                        .max(bytes.capacity() * 2)
                        .min(limit),
                ));
                bigger.extend_from_slice(&bytes);
                bytes = bigger;
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// Parses GitHub's array. Messages name fields and positions, never a value.
fn parse_reports(body: &[u8]) -> Result<Vec<Reported>, Problem> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's syntax errors give a position, not the text around it.
        problem(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
            None,
        )
    })?;
    let Value::Array(entries) = value else {
        return Err(bad_request("the body must be a JSON array"));
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let Value::Object(mut entry) = entry else {
                return Err(bad_request(&format!("entry {i} is not an object")));
            };
            let mut take = |field: &str, required: bool| match entry.remove(field) {
                Some(Value::String(s)) => Ok(s),
                None | Some(Value::Null) if !required => Ok(String::new()),
                _ => Err(bad_request(&format!(
                    "entry {i}: {field:?} must be a string"
                ))),
            };
            let token = Zeroizing::new(take("token", true)?);
            let token_type = take("type", true)?;
            let url = cut(take("url", false)?);
            let source = cut(take("source", false)?);
            Ok(Reported {
                token,
                token_type,
                url,
                source,
            })
        })
        .collect()
}

/// `text`, cut to [`MAX_AUDIT_TEXT`] bytes at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_AUDIT_TEXT {
        let mut at = MAX_AUDIT_TEXT;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use http_body_util::BodyExt;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    use tower::ServiceExt;

    use crate::MemoryStore;

    fn signing_key(seed: u8) -> SigningKey {
        let mut scalar = [0x11u8; 32];
        scalar[31] = seed;
        SigningKey::from_slice(&scalar).unwrap()
    }

    fn document(keys: &[(&str, &SigningKey)]) -> String {
        let entries: Vec<Value> = keys
            .iter()
            .map(|(id, key)| {
                json!({
                    "key_identifier": id,
                    "key": key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                    "is_current": true,
                })
            })
            .collect();
        json!({ "public_keys": entries }).to_string()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        let signature: Signature = key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    fn app(key: &SigningKey) -> Router {
        let keys = PublicKeys::parse(document(&[("k1", key)]).as_bytes()).unwrap();
        SecretScanning::new(CachedResolver::new(MemoryStore::new()), keys).router()
    }

    async fn post(
        app: &Router,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, String, String) {
        let mut request = Request::post(DEFAULT_PATH);
        if let Some(id) = key_id {
            request = request.header(KEY_IDENTIFIER_HEADER, id);
        }
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let ctype = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(bytes.to_vec()).unwrap())
    }

    const TOKEN: &str = "ghp_notoursatall0000000000000000000000";

    fn body() -> Vec<u8> {
        // Spacing and member order as a client might send them: re-serializing changes
        // the bytes.
        format!(r#"[ {{"token":"{TOKEN}", "type":"acme_api_key", "url":"https://github.com/o/r/blob/x/a.env","source":"content"}} ]"#)
            .into_bytes()
    }

    #[test]
    fn a_signature_over_the_raw_bytes_verifies() {
        let key = signing_key(1);
        let keys = PublicKeys::parse(document(&[("k1", &key)]).as_bytes()).unwrap();
        let body = body();
        let signature = sign(&key, &body);
        assert_eq!(keys.verify("k1", signature.as_bytes(), &body), Ok(()));
    }

    #[test]
    fn another_key_a_tampered_body_or_garbage_does_not_verify() {
        let key = signing_key(1);
        let other = signing_key(2);
        let keys = PublicKeys::parse(document(&[("k1", &key), ("k2", &other)]).as_bytes()).unwrap();
        let body = body();
        let signature = sign(&key, &body);
        // Signed by k1, said to be k2's.
        assert_eq!(
            keys.verify("k2", signature.as_bytes(), &body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify("k3", signature.as_bytes(), &body),
            Err(SignatureError::UnknownKey)
        );
        // One byte changed.
        let mut tampered = body.clone();
        let at = tampered.iter().position(|&b| b == b'a').unwrap();
        tampered[at] = b'b';
        assert_eq!(
            keys.verify("k1", signature.as_bytes(), &tampered),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify("k1", b"not base64!", &body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            keys.verify("k1", b"AAAA", &body),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_signature_over_reserialized_json_is_not_one_over_the_body() {
        let key = signing_key(1);
        let keys = PublicKeys::parse(document(&[("k1", &key)]).as_bytes()).unwrap();
        let body = body();
        let reserialized = serde_json::from_slice::<Value>(&body).unwrap().to_string();
        assert_ne!(reserialized.as_bytes(), &body[..]);
        let signature = sign(&key, reserialized.as_bytes());
        assert_eq!(
            keys.verify("k1", signature.as_bytes(), &body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn bad_documents_are_clear_errors() {
        assert!(matches!(
            PublicKeys::parse(b"{not json"),
            Err(PublicKeysError::Format(_))
        ));
        assert!(matches!(
            PublicKeys::parse(b"{\"keys\":[]}"),
            Err(PublicKeysError::Format(_))
        ));
        assert_eq!(
            PublicKeys::parse(b"{\"public_keys\":[]}").unwrap_err(),
            PublicKeysError::Empty
        );
        let bad_pem = json!({"public_keys":[{"key_identifier":"k1","key":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n","is_current":true}]});
        match PublicKeys::parse(bad_pem.to_string().as_bytes()) {
            Err(PublicKeysError::Key { key_identifier, .. }) => assert_eq!(key_identifier, "k1"),
            other => panic!("{other:?}"),
        }
        let no_key = json!({"public_keys":[{"key_identifier":"k1"}]});
        assert!(matches!(
            PublicKeys::parse(no_key.to_string().as_bytes()),
            Err(PublicKeysError::Format(_))
        ));
        let keys = PublicKeys::parse(document(&[("k1", &signing_key(1))]).as_bytes()).unwrap();
        assert_eq!(keys.identifiers().collect::<Vec<_>>(), [("k1", true)]);
        assert_eq!(
            format!("{keys:?}"),
            r#"PublicKeys { key_identifiers: ["k1"] }"#
        );
    }

    #[test]
    fn actions_parse() {
        assert_eq!("revoke".parse(), Ok(LeakAction::Revoke));
        assert_eq!("notify".parse(), Ok(LeakAction::Notify));
        assert!(
            "delete"
                .parse::<LeakAction>()
                .unwrap_err()
                .to_string()
                .contains("delete")
        );
        assert_eq!(LeakAction::default(), LeakAction::Revoke);
    }

    #[tokio::test]
    async fn signatures_are_checked_before_anything_is_answered() {
        let key = signing_key(1);
        let app = app(&key);
        let body = body();
        let good = sign(&key, &body);

        let (status, ctype, text) = post(&app, Some("k1"), Some(&good), body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(ctype, "application/json");
        let feedback: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            feedback,
            json!([{"token_hash": KeyHash::of(TOKEN).to_hex(), "token_type": "acme_api_key", "label": "false_positive"}])
        );

        let refused = [
            (None, Some(good.as_str())),
            (Some("k1"), None),
            (Some("k9"), Some(good.as_str())),
            (Some("k1"), Some("bm9wZQ==")),
            (Some("k1"), Some(&*sign(&signing_key(2), &body))),
        ];
        for (key_id, signature) in refused {
            let (status, ctype, text) = post(&app, key_id, signature, body.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{key_id:?} {signature:?}");
            assert_eq!(ctype, "application/problem+json");
            assert!(!text.contains(TOKEN));
        }
        let mut tampered = body.clone();
        *tampered.last_mut().unwrap() = b'}';
        let (status, _, _) = post(&app, Some("k1"), Some(&good), tampered).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "one byte changed");
    }

    #[tokio::test]
    async fn a_body_over_one_mebibyte_is_413() {
        let key = signing_key(1);
        let app = app(&key);
        // A valid array padded with spaces to the limit is read; one byte more is not.
        let mut at_limit = b"[]".to_vec();
        at_limit.resize(MAX_BODY, b' ');
        let signature = sign(&key, &at_limit);
        let (status, _, _) = post(&app, Some("k1"), Some(&signature), at_limit.clone()).await;
        assert_eq!(status, StatusCode::OK);
        let mut over = at_limit;
        over.push(b' ');
        let signature = sign(&key, &over);
        let (status, ctype, _) = post(&app, Some("k1"), Some(&signature), over.clone()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ctype, "application/problem+json");
        // Streamed, with no Content-Length to refuse it early.
        let chunks: Vec<Bytes> = over.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
        let response = app
            .clone()
            .oneshot(
                Request::post(DEFAULT_PATH)
                    .header(KEY_IDENTIFIER_HEADER, "k1")
                    .header(SIGNATURE_HEADER, signature)
                    .body(Body::new(Chunks(chunks.into())))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// A body of chunks whose length it does not tell.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
        }
    }

    #[tokio::test]
    async fn malformed_reports_are_400_and_echo_no_token() {
        let key = signing_key(1);
        let app = app(&key);
        let bodies: [&[u8]; 6] = [
            b"[{\"token\":",
            b"{\"token\":\"sk_live_x\",\"type\":\"t\"}",
            b"[\"sk_live_x\"]",
            b"[{\"type\":\"t\"}]",
            b"[{\"token\":\"sk_live_secretsecret\",\"type\":5}]",
            b"[{\"token\":12345678,\"type\":\"t\"}]",
        ];
        for body in bodies {
            let signature = sign(&key, body);
            let (status, ctype, text) =
                post(&app, Some("k1"), Some(&signature), body.to_vec()).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(ctype, "application/problem+json");
            assert!(
                !text.contains("secret") && !text.contains("12345678"),
                "{text}"
            );
        }
    }

    #[test]
    fn long_audit_text_is_cut_at_a_character() {
        let long = "é".repeat(MAX_AUDIT_TEXT);
        let cut = cut(long);
        assert!(cut.len() <= MAX_AUDIT_TEXT && cut.chars().all(|c| c == 'é'));
        assert_eq!(super::cut("short".into()), "short");
    }
}
