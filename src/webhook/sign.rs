//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`, with a secret given as `whsec_<base64>`.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use zeroize::Zeroizing;

/// How far a `webhook-timestamp` may be from the receiver's clock, by default: five
/// minutes (the specification's recommendation against replays).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The prefix of a secret's text form.
const PREFIX: &str = "whsec_";

/// A webhook signing secret: the bytes both sides share. Its `Debug` never shows them;
/// they are zeroed on drop.
///
/// ```
/// use tower_api_key::webhook::WebhookSecret;
///
/// let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
/// assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// assert_eq!(format!("{secret:?}"), "WebhookSecret(whsec_…)");
/// ```
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

/// Why a secret's text was refused. The message never repeats the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The text does not start with `whsec_`.
    #[error("a webhook secret must start with `whsec_`")]
    MissingPrefix,
    /// What follows `whsec_` is not standard base64.
    #[error("a webhook secret must be `whsec_` followed by base64")]
    NotBase64,
    /// The secret is shorter than 16 bytes (the specification asks for 24 to 64).
    #[error("a webhook secret must hold at least 16 bytes")]
    TooShort,
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let bytes = Zeroizing::new(
            STANDARD
                .decode(encoded)
                .map_err(|_| SecretError::NotBase64)?,
        );
        if bytes.len() < 16 {
            return Err(SecretError::TooShort);
        }
        Ok(Self(bytes))
    }

    /// A fresh secret of 32 random bytes (from the operating system).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
        Self(bytes)
    }

    /// The text form, `whsec_<base64>`, to give to the receiver. Handle with care: this
    /// is the secret.
    pub fn expose_secret(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}{}", STANDARD.encode(&*self.0)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value of a message: `v1,<base64 HMAC-SHA256>` of
    /// `"{id}.{timestamp}.{body}"`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Checks a received message as a receiver does: the `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature` headers, the timestamp within
    /// `tolerance` of `now`, and one of the (space-separated) `v1` signatures equal to
    /// the body's, compared in constant time.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
        tolerance: Duration,
    ) -> Result<(), VerifyError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(VerifyError::MissingHeader(name))
        };
        let id = header("webhook-id")?;
        let timestamp: i64 = header("webhook-timestamp")?
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        let signatures = header("webhook-signature")?;
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
            return Err(VerifyError::BadTimestamp);
        }
        let expected = self.mac(id, timestamp, body);
        for candidate in signatures.split(' ') {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(tag) = STANDARD.decode(encoded) else {
                continue;
            };
            // `verify_slice` compares in constant time.
            if expected.clone().verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        Err(VerifyError::NoMatch)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_…)")
    }
}

/// Why [`WebhookSecret::verify`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A header is missing (or not text).
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// The timestamp is not a number, or too far from now.
    #[error("the webhook-timestamp is malformed or outside the tolerance")]
    BadTimestamp,
    /// No signature matches.
    #[error("no webhook signature matches")]
    NoMatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    }

    fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        h.insert("webhook-signature", signature.parse().unwrap());
        h
    }

    #[test]
    fn signs_the_specifications_test_vector() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_id_timestamp_body() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let key = STANDARD.decode(&SECRET[6..]).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{ID}.{TIMESTAMP}.").as_bytes());
        mac.update(BODY);
        let by_hand = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), by_hand);
    }

    #[test]
    fn verifies_a_good_message_and_refuses_tampering() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let now = at(TIMESTAMP + 10);
        let ok = headers(ID, TIMESTAMP, SIGNATURE);
        assert_eq!(secret.verify(&ok, BODY, now, DEFAULT_TOLERANCE), Ok(()));
        // One of several signatures (a receiver during a secret rotation).
        let several = headers(ID, TIMESTAMP, &format!("v1,AAAA v2,xyz {SIGNATURE}"));
        assert_eq!(
            secret.verify(&several, BODY, now, DEFAULT_TOLERANCE),
            Ok(())
        );

        let body = br#"{"test": 2432232315}"#;
        assert_eq!(
            secret.verify(&ok, body, now, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatch)
        );
        let other_id = headers("msg_other", TIMESTAMP, SIGNATURE);
        assert_eq!(
            secret.verify(&other_id, BODY, now, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatch)
        );
        let other_secret = WebhookSecret::generate();
        assert_eq!(
            other_secret.verify(&ok, BODY, now, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatch)
        );
        let stale = at(TIMESTAMP + 301);
        assert_eq!(
            secret.verify(&ok, BODY, stale, DEFAULT_TOLERANCE),
            Err(VerifyError::BadTimestamp)
        );
        let mut missing = ok.clone();
        missing.remove("webhook-signature");
        assert_eq!(
            secret.verify(&missing, BODY, now, DEFAULT_TOLERANCE),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
    }

    #[test]
    fn secrets_parse_strictly_and_never_show() {
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").err(),
            Some(SecretError::MissingPrefix)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!").err(),
            Some(SecretError::NotBase64)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_c2hvcnQ=").err(),
            Some(SecretError::TooShort)
        );
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(&*secret.expose_secret(), SECRET);
        assert!(!format!("{secret:?}").contains(&SECRET[6..]));
        let generated = WebhookSecret::generate();
        let text = generated.expose_secret();
        assert_eq!(
            WebhookSecret::parse(&text).unwrap().sign(ID, 1, b""),
            generated.sign(ID, 1, b"")
        );
    }
}
