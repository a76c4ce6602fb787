//! API keys: their format, generation, parsing and hashing.
//!
//! A key looks like `sk_live_3F8a…Zq71Kx`: a prefix, an underscore, a base62 body of
//! 32 random bytes from the operating system's CSPRNG, and a 6-character base62 CRC32
//! checksum of everything before it (the scheme GitHub uses for its tokens). The checksum
//! lets [`KeyFormat::validate`] reject typos and random garbage without touching a cache
//! or a store, and lets secret scanners recognise a real key offline.
//!
//! Only the [`KeyHash`] (SHA-256 of the whole key) is ever stored or looked up.
//!
//! ```
//! use tower_api_key::{KeyFormat, KeyHash};
//!
//! let format = KeyFormat::new("sk_test").unwrap();
//! let key = format.generate();
//! assert!(key.expose_secret().starts_with("sk_test_"));
//!
//! // Parsing checks length, alphabet, prefix and checksum; no I/O.
//! let parsed = format.parse(key.expose_secret()).unwrap();
//! assert_eq!(parsed.hash(), KeyHash::of(key.expose_secret()));
//!
//! // One wrong character fails the checksum.
//! let mut typo = key.expose_secret().to_owned();
//! typo.replace_range(10..11, if &typo[10..11] == "a" { "b" } else { "a" });
//! assert!(format.parse(&typo).is_err());
//!
//! // Debug output never shows the secret.
//! assert!(!format!("{key:?}").contains(&key.expose_secret()[12..]));
//! ```

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The base62 alphabet, in ASCII order.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Width of the base62 checksum: 62^6 > 2^32.
const CHECKSUM_LEN: usize = 6;
/// How many body characters [`ApiKey::start`] shows after the prefix.
const START_BODY_CHARS: usize = 4;
/// Longest prefix accepted.
const MAX_PREFIX_LEN: usize = 32;
/// Smallest and largest entropy accepted, in bytes.
const MIN_ENTROPY: usize = 16;
const MAX_ENTROPY: usize = 64;
/// Default entropy: 256 bits.
const DEFAULT_ENTROPY: usize = 32;

/// The longest key not of this crate's format that
/// [`ApiKeyLayer::accept_foreign_keys`](crate::ApiKeyLayer::accept_foreign_keys) hashes
/// and looks up, in bytes.
pub const MAX_FOREIGN_KEY_LEN: usize = 512;

/// Why a [`KeyFormat`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidKeyFormat {
    /// The prefix is empty, longer than 32 characters, or uses characters other than
    /// ASCII lower-case letters, digits and `_` (it may not start or end with `_`).
    #[error("key prefix must be 1 to 32 characters of [a-z0-9_], not starting or ending with '_'")]
    Prefix,
    /// The entropy is outside 16..=64 bytes.
    #[error("key entropy must be between 16 and 64 bytes, got {0}")]
    Entropy(usize),
}

/// Why a presented key was rejected by [`KeyFormat::validate`] or [`KeyFormat::parse`].
///
/// The variants say what was wrong without repeating any of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedKey {
    /// The key does not have the length this format produces.
    #[error("the key has the wrong length")]
    Length,
    /// The key does not start with this format's prefix.
    #[error("the key does not carry the expected prefix")]
    Prefix,
    /// The body or checksum has a character outside base62.
    #[error("the key contains characters outside base62")]
    Charset,
    /// The checksum does not match: a typo, a truncated copy, or not a key at all.
    #[error("the key's checksum does not match")]
    Checksum,
}

/// How keys look: prefix, entropy and whether a checksum is appended.
///
/// `KeyFormat` is cheap to clone and is shared by the code that issues keys and the
/// [`ApiKeyLayer`](crate::ApiKeyLayer) that checks them.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: Box<str>,
    entropy: usize,
    checksum: bool,
    body_len: usize,
}

impl fmt::Debug for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFormat")
            .field("prefix", &self.prefix)
            .field("entropy", &self.entropy)
            .field("checksum", &self.checksum)
            .finish()
    }
}

impl Default for KeyFormat {
    /// `sk_live`, 32 bytes of entropy, with checksum.
    fn default() -> Self {
        Self::new("sk_live").expect("the default prefix is valid")
    }
}

impl KeyFormat {
    /// A format with the given prefix, 32 bytes of entropy and a checksum.
    pub fn new(prefix: &str) -> Result<Self, InvalidKeyFormat> {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && !prefix.starts_with('_')
            && !prefix.ends_with('_')
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(InvalidKeyFormat::Prefix);
        }
        Ok(Self {
            prefix: prefix.into(),
            entropy: DEFAULT_ENTROPY,
            checksum: true,
            body_len: base62_len(DEFAULT_ENTROPY),
        })
    }

    /// Sets how many random bytes a key carries (16 to 64; default 32).
    pub fn entropy(mut self, bytes: usize) -> Result<Self, InvalidKeyFormat> {
        if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&bytes) {
            return Err(InvalidKeyFormat::Entropy(bytes));
        }
        self.entropy = bytes;
        self.body_len = base62_len(bytes);
        Ok(self)
    }

    /// Turns the trailing CRC32 checksum on (the default) or off.
    pub fn checksum(mut self, on: bool) -> Self {
        self.checksum = on;
        self
    }

    /// The prefix, without the separating underscore.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The exact length in bytes of every key of this format.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + 1 + self.body_len + if self.checksum { CHECKSUM_LEN } else { 0 }
    }

    /// Generates a new key from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Panics only if the operating system cannot provide random bytes, in which case no
    /// key could be generated safely.
    pub fn generate(&self) -> ApiKey {
        let mut random = Zeroizing::new([0u8; MAX_ENTROPY]);
        getrandom::fill(&mut random[..self.entropy])
            .expect("the operating system's random number generator failed");
        let mut text = Zeroizing::new(String::with_capacity(self.key_len()));
        text.push_str(&self.prefix);
        text.push('_');
        encode_base62(&random[..self.entropy], self.body_len, &mut text);
        if self.checksum {
            let crc = crc32(text.as_bytes());
            push_checksum(crc, &mut text);
        }
        debug_assert_eq!(text.len(), self.key_len());
        ApiKey {
            start_len: self.prefix.len() + 1 + START_BODY_CHARS,
            secret: text,
        }
    }

    /// Checks that `key` is a well-formed key of this format: length first, then prefix,
    /// alphabet and checksum. It allocates nothing and does no I/O.
    pub fn validate(&self, key: &str) -> Result<(), MalformedKey> {
        self.validate_bytes(key.as_bytes())
    }

    /// [`validate`](Self::validate) on raw bytes, as they come from a header. A key that
    /// passes is ASCII.
    pub fn validate_bytes(&self, bytes: &[u8]) -> Result<(), MalformedKey> {
        if bytes.len() != self.key_len() {
            return Err(MalformedKey::Length);
        }
        let p = self.prefix.len();
        if &bytes[..p] != self.prefix.as_bytes() || bytes[p] != b'_' {
            return Err(MalformedKey::Prefix);
        }
        // Three range checks a byte, OR-ed together: no early exit, no branch and no
        // table lookup indexed by a secret byte; the compiler does 16 or 32 bytes a step.
        let bad = bytes[p + 1..]
            .iter()
            .fold(0u8, |acc, &b| acc | u8::from(!is_base62(b)));
        if bad != 0 {
            return Err(MalformedKey::Charset);
        }
        if self.checksum {
            let split = bytes.len() - CHECKSUM_LEN;
            let expected = crc32(&bytes[..split]);
            if decode_checksum(&bytes[split..]) != u64::from(expected) {
                return Err(MalformedKey::Checksum);
            }
        }
        Ok(())
    }

    /// Does `bytes` claim to be a key of this format, by starting with its prefix and
    /// `_`? Such a key is judged by [`validate_bytes`](Self::validate_bytes) alone, even
    /// where foreign keys are accepted: a typo in one of ours never costs a lookup.
    pub fn claims_bytes(&self, bytes: &[u8]) -> bool {
        let p = self.prefix.len();
        bytes.len() > p && &bytes[..p] == self.prefix.as_bytes() && bytes[p] == b'_'
    }

    /// May `bytes`, which failed [`validate_bytes`](Self::validate_bytes), be looked up as
    /// a key minted elsewhere? Only if it does not [claim](Self::claims_bytes) this
    /// format and is 1 to [`MAX_FOREIGN_KEY_LEN`] bytes of visible ASCII.
    pub(crate) fn may_be_foreign(&self, bytes: &[u8]) -> bool {
        (1..=MAX_FOREIGN_KEY_LEN).contains(&bytes.len())
            && bytes.iter().all(|b| b.is_ascii_graphic())
            && !self.claims_bytes(bytes)
    }

    /// Validates `key` and takes a copy of it as an [`ApiKey`].
    pub fn parse(&self, key: &str) -> Result<ApiKey, MalformedKey> {
        self.validate(key)?;
        Ok(ApiKey {
            secret: Zeroizing::new(key.to_owned()),
            start_len: self.prefix.len() + 1 + START_BODY_CHARS,
        })
    }
}

/// A secret API key as a client presents it.
///
/// It has no `Display`; its `Debug` shows only [`start`](Self::start). The memory holding
/// the secret is zeroed when the key is dropped. Use [`expose_secret`](Self::expose_secret)
/// exactly where the key must be shown to its owner, once.
#[derive(Clone)]
pub struct ApiKey {
    secret: Zeroizing<String>,
    start_len: usize,
}

impl ApiKey {
    /// The whole secret key. Show it to its owner once; never log or store it.
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// The public start of the key (prefix and the first 4 body characters), for display.
    pub fn start(&self) -> &str {
        &self.secret[..self.start_len]
    }

    /// The SHA-256 hash under which the key is stored and looked up.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.secret)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey(\"{}…\")", self.start())
    }
}

/// The SHA-256 hash of a whole key: what stores keep and caches are keyed by.
///
/// Equality is constant-time ([`subtle`]). `Debug` and `Display` show a short hex
/// prefix; [`to_hex`](Self::to_hex) gives all 64 hex digits.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a key's text.
    pub fn of(key: &str) -> Self {
        Self::of_bytes(key.as_bytes())
    }

    /// Hashes a key's bytes.
    pub fn of_bytes(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Wraps 32 bytes that are already a key hash (for example from a database).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// All 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }

    /// Two 64-bit words of the hash, for in-memory hash tables.
    pub(crate) fn words(&self) -> (u64, u64) {
        let a = u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(self.0[8..16].try_into().expect("8 bytes"));
        (a, b)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl PartialEq for KeyHash {
    /// Constant-time: all four 64-bit words are compared whatever the first differences.
    fn eq(&self, other: &Self) -> bool {
        let words = |h: &[u8; 32]| -> [u64; 4] {
            std::array::from_fn(|i| {
                u64::from_le_bytes(h[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            })
        };
        words(&self.0)[..].ct_eq(&words(&other.0)[..]).into()
    }
}

impl Eq for KeyHash {}

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// Number of base62 digits needed for any value of `bytes` bytes.
fn base62_len(bytes: usize) -> usize {
    // Exact: encode the largest value and count the digits.
    let max = [0xffu8; MAX_ENTROPY];
    let mut digits = 0;
    let mut n = max[..bytes].to_vec();
    while n.iter().any(|&b| b != 0) {
        divmod62(&mut n);
        digits += 1;
    }
    digits
}

/// Divides a big-endian number by 62 in place and returns the remainder.
fn divmod62(n: &mut [u8]) -> u8 {
    let mut rem: u32 = 0;
    for b in n.iter_mut() {
        let cur = (rem << 8) | u32::from(*b);
        *b = (cur / 62) as u8;
        rem = cur % 62;
    }
    rem as u8
}

/// Appends `bytes` (big-endian) as exactly `width` base62 digits.
fn encode_base62(bytes: &[u8], width: usize, out: &mut String) {
    let mut n = Zeroizing::new([0u8; MAX_ENTROPY]);
    n[..bytes.len()].copy_from_slice(bytes);
    let mut digits = Zeroizing::new([0u8; 128]);
    for d in digits[..width].iter_mut().rev() {
        *d = ALPHABET[usize::from(divmod62(&mut n[..bytes.len()]))];
    }
    out.extend(digits[..width].iter().map(|&d| char::from(d)));
}

fn push_checksum(crc: u32, out: &mut String) {
    let mut n = u64::from(crc);
    let mut digits = [0u8; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out.extend(digits.iter().map(|&d| char::from(d)));
}

/// Decodes base62 digits that are already known to be alphanumeric.
fn decode_checksum(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'A'..=b'Z' => d - b'A' + 10,
            _ => d - b'a' + 36,
        };
        acc * 62 + u64::from(v)
    })
}

/// Is `b` a base62 character? Without branches: each range check is one wrapping
/// subtraction and one comparison.
const fn is_base62(b: u8) -> bool {
    (b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'A') < 26) | (b.wrapping_sub(b'a') < 26)
}

/// CRC-32 (IEEE 802.3, the zlib/PNG polynomial), slicing-by-8: eight bytes a step.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = CRC_TABLES[7][(lo & 0xff) as usize]
            ^ CRC_TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ CRC_TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ CRC_TABLES[4][(lo >> 24) as usize]
            ^ CRC_TABLES[3][usize::from(c[4])]
            ^ CRC_TABLES[2][usize::from(c[5])]
            ^ CRC_TABLES[1][usize::from(c[6])]
            ^ CRC_TABLES[0][usize::from(c[7])];
    }
    for &b in chunks.remainder() {
        crc = CRC_TABLES[0][usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// `CRC_TABLES[0]` is the classic byte table; `CRC_TABLES[k][b]` is the CRC of byte `b`
/// followed by `k` zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        tables[0][i] = c;
        i += 1;
    }
    let mut t = 1;
    while t < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[t - 1][i];
            tables[t][i] = tables[0][(prev & 0xff) as usize] ^ (prev >> 8);
            i += 1;
        }
        t += 1;
    }
    tables
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base62_characters_are_exactly_the_alphabet() {
        for b in 0..=u8::MAX {
            assert_eq!(is_base62(b), ALPHABET.contains(&b), "{b}");
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The CRC-32/ISO-HDLC check value for "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// The plain bit-at-a-time definition, to check the sliced one against.
    fn crc32_bitwise(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    0xEDB8_8320 ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    proptest! {
        #[test]
        fn sliced_crc32_equals_the_bitwise_definition(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(crc32(&data), crc32_bitwise(&data));
        }
    }

    #[test]
    fn default_key_is_57_characters_of_prefix_body_checksum() {
        let f = KeyFormat::default();
        assert_eq!(base62_len(32), 43);
        assert_eq!(f.key_len(), "sk_live_".len() + 43 + 6);
        let k = f.generate();
        assert_eq!(k.expose_secret().len(), 57);
        assert_eq!(k.start().len(), "sk_live_".len() + 4);
        assert!(k.expose_secret().starts_with(k.start()));
    }

    #[test]
    fn generated_keys_differ() {
        let f = KeyFormat::default();
        let a = f.generate();
        let b = f.generate();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn rejects_each_kind_of_malformation() {
        let f = KeyFormat::default();
        let k = f.generate();
        let s = k.expose_secret();
        assert_eq!(f.validate(""), Err(MalformedKey::Length));
        assert_eq!(f.validate(&s[..s.len() - 1]), Err(MalformedKey::Length));
        let other = KeyFormat::new("sk_test").unwrap().generate();
        assert_eq!(f.validate(other.expose_secret()), Err(MalformedKey::Prefix));
        let mut bad = s.to_owned();
        bad.replace_range(20..21, "-");
        assert_eq!(f.validate(&bad), Err(MalformedKey::Charset));
        // Multi-byte UTF-8 of the right byte length is rejected, not sliced mid-char.
        let mut uni = s[..s.len() - 2].to_owned();
        uni.push('é');
        assert_eq!(uni.len(), s.len());
        assert_eq!(f.validate(&uni), Err(MalformedKey::Charset));
        let mut nonascii_prefix = String::from("é");
        nonascii_prefix.push_str(&s[2..]);
        assert_eq!(f.validate(&nonascii_prefix), Err(MalformedKey::Prefix));
    }

    #[test]
    fn format_without_checksum() {
        let f = KeyFormat::new("pk").unwrap().checksum(false);
        let k = f.generate();
        assert_eq!(k.expose_secret().len(), 3 + 43);
        assert!(f.validate(k.expose_secret()).is_ok());
    }

    #[test]
    fn format_rejects_bad_prefixes_and_entropy() {
        for p in ["", "_a", "a_", "Sk", "sk-live", &"a".repeat(33)] {
            assert_eq!(KeyFormat::new(p), Err(InvalidKeyFormat::Prefix), "{p}");
        }
        assert_eq!(
            KeyFormat::default().entropy(8),
            Err(InvalidKeyFormat::Entropy(8))
        );
        let f = KeyFormat::default().entropy(64).unwrap();
        assert!(f.validate(f.generate().expose_secret()).is_ok());
    }

    #[test]
    fn hash_equality_looks_at_every_byte() {
        let a = KeyHash::from_bytes([7; 32]);
        assert_eq!(a, KeyHash::from_bytes([7; 32]));
        for i in 0..32 {
            let mut b = [7; 32];
            b[i] = 8;
            assert_ne!(a, KeyHash::from_bytes(b), "byte {i}");
        }
    }

    #[test]
    fn hash_hex_round_trip_and_short_display() {
        let h = KeyHash::of("sk_live_x");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(h.to_string().chars().count(), 9);
        assert!(h.to_hex().starts_with(h.to_string().trim_end_matches('…')));
    }

    #[test]
    fn what_may_be_looked_up_as_a_foreign_key() {
        let f = KeyFormat::default();
        let ours = f.generate();
        assert!(f.claims_bytes(ours.expose_secret().as_bytes()));
        // Ours, with a typo or cut short: still ours, never looked up as foreign.
        let cut = &ours.expose_secret()[..20];
        assert!(f.claims_bytes(cut.as_bytes()) && !f.may_be_foreign(cut.as_bytes()));
        assert!(!f.may_be_foreign(b"sk_live_"));
        for foreign in [
            "doda_0123456789abcdef",
            "sk_test_51H8abc",
            "sk-proj-abc123",
            "sk_live",
            "sk_liveX",
            "0b9c6e1e-5e37-4b7e-9f0e-8d4a0f3c2a11",
        ] {
            assert!(!f.claims_bytes(foreign.as_bytes()), "{foreign}");
            assert!(f.may_be_foreign(foreign.as_bytes()), "{foreign}");
        }
        assert!(!f.may_be_foreign(b""));
        assert!(f.may_be_foreign("a".repeat(MAX_FOREIGN_KEY_LEN).as_bytes()));
        assert!(!f.may_be_foreign("a".repeat(MAX_FOREIGN_KEY_LEN + 1).as_bytes()));
        assert!(!f.may_be_foreign(b"with space"));
        assert!(!f.may_be_foreign("caf\u{e9}".as_bytes()));
        assert!(!f.may_be_foreign(b"tab\there"));
    }

    fn formats() -> impl Strategy<Value = KeyFormat> {
        ("[a-z][a-z0-9_]{0,10}[a-z0-9]", 16usize..=64, any::<bool>())
            .prop_map(|(p, e, c)| KeyFormat::new(&p).unwrap().entropy(e).unwrap().checksum(c))
    }

    proptest! {
        #[test]
        fn generate_then_parse_round_trips(format in formats()) {
            let key = format.generate();
            let parsed = format.parse(key.expose_secret()).unwrap();
            prop_assert_eq!(parsed.expose_secret(), key.expose_secret());
            prop_assert_eq!(parsed.hash(), key.hash());
            prop_assert_eq!(parsed.start(), key.start());
        }

        #[test]
        fn any_single_character_change_is_rejected(
            pos in 0usize..57,
            replacement in proptest::char::any(),
        ) {
            let format = KeyFormat::default();
            let key = format.generate();
            let original = key.expose_secret();
            let old = original.as_bytes()[pos] as char;
            prop_assume!(replacement != old);
            let mut changed = String::with_capacity(original.len() + 4);
            changed.push_str(&original[..pos]);
            changed.push(replacement);
            changed.push_str(&original[pos + 1..]);
            prop_assert!(format.validate(&changed).is_err());
        }

        #[test]
        fn any_garbage_is_rejected_without_panicking(s in "\\PC{0,80}") {
            let format = KeyFormat::default();
            // A random string passes only with a 1 in 2^32 chance of a matching CRC
            // after already matching length, prefix and alphabet.
            let _ = format.validate(&s);
        }
    }
}
