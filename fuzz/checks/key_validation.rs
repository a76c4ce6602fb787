//! Key validation and key-hash hex parsing.
//!
//! The first byte picks a [`KeyFormat`] (four, of different prefixes, entropies and
//! checksum settings) and a mode; the rest is the input.
//!
//! - mode 0, raw: `validate_bytes` on the bytes. No panic; a key that passes is ASCII
//!   of the format's length and prefix, `validate` and `parse` agree with it, its hash
//!   is the SHA-256 of the bytes (checked against `sha2` here, not the crate), stable,
//!   and its `Debug` shows no more than its start.
//! - mode 1, minted: the bytes are mapped onto base62 to make a body, and a checksum is
//!   computed here (a bitwise CRC-32, independent of the crate's sliced one): the key
//!   must validate; then one character, chosen by the input, is changed and it must not.
//! - mode 2, hex: `KeyHash::from_hex` on the bytes (as text). A hash it accepts prints
//!   back as the same digits in lower case, and `from_hex(to_hex(h)) == h`.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use tower_api_key::{KeyFormat, KeyHash};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The formats the first byte picks from, built once (building one computes its length).
static FORMATS: LazyLock<[KeyFormat; 4]> = LazyLock::new(|| {
    [
        KeyFormat::default(),
        KeyFormat::new("tk_test").unwrap().entropy(16).unwrap(),
        KeyFormat::new("pk")
            .unwrap()
            .entropy(64)
            .unwrap()
            .checksum(false),
        KeyFormat::new("a0_b").unwrap().entropy(24).unwrap(),
    ]
});

/// Runs one input; panics when an invariant does not hold.
pub(crate) fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let formats = &*FORMATS;
    let (format, checksum) = match selector & 3 {
        0 => (&formats[0], true),
        1 => (&formats[1], true),
        2 => (&formats[2], false),
        _ => (&formats[3], true),
    };
    match (selector >> 2) % 3 {
        0 => raw(format, rest),
        1 => minted(format, checksum, rest),
        _ => hex(rest),
    }
}

fn raw(format: &KeyFormat, bytes: &[u8]) {
    let verdict = format.validate_bytes(bytes);
    let text = std::str::from_utf8(bytes);
    if let Ok(text) = text {
        assert_eq!(
            format.validate(text),
            verdict,
            "validate and validate_bytes differ"
        );
        assert_eq!(
            format.parse(text).is_ok(),
            verdict.is_ok(),
            "parse and validate differ"
        );
    }
    if verdict.is_err() {
        return;
    }
    assert!(bytes.is_ascii(), "a valid key is ASCII");
    assert_eq!(bytes.len(), format.key_len());
    assert!(format.claims_bytes(bytes));
    let text = text.expect("ASCII is UTF-8");
    assert!(text.starts_with(format.prefix()) && text.as_bytes()[format.prefix().len()] == b'_');
    well_formed(format, text);
}

/// What holds of any key that validates.
fn well_formed(format: &KeyFormat, text: &str) {
    let key = format.parse(text).expect("a valid key parses");
    assert_eq!(key.expose_secret(), text);
    let expected: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    assert_eq!(
        key.hash().as_bytes(),
        &expected,
        "the hash is SHA-256 of the key"
    );
    assert_eq!(key.hash(), KeyHash::of(text), "the hash is stable");
    assert_eq!(key.hash(), KeyHash::of_bytes(text.as_bytes()));
    assert!(text.starts_with(key.start()));
    assert_eq!(key.start().len(), format.prefix().len() + 1 + 4);
    let debug = format!("{key:?}");
    assert!(
        !debug.contains(&text[key.start().len()..]),
        "Debug shows the secret"
    );
    let hash_debug = format!("{:?} {}", key.hash(), key.hash());
    assert!(!hash_debug.contains(text), "a hash shows the key");
}

fn minted(format: &KeyFormat, checksum: bool, bytes: &[u8]) {
    let body_len = format.key_len() - format.prefix().len() - 1 - if checksum { 6 } else { 0 };
    let mut key = String::with_capacity(format.key_len());
    key.push_str(format.prefix());
    key.push('_');
    for i in 0..body_len {
        let b = bytes.get(i).copied().unwrap_or(i as u8);
        key.push(char::from(ALPHABET[usize::from(b) % 62]));
    }
    if checksum {
        let mut n = crc32_bitwise(key.as_bytes());
        let mut digits = [0u8; 6];
        for d in digits.iter_mut().rev() {
            *d = ALPHABET[(n % 62) as usize];
            n /= 62;
        }
        key.extend(digits.iter().map(|&d| char::from(d)));
    }
    assert_eq!(format.validate(&key), Ok(()), "a well-made key is refused");
    well_formed(format, &key);

    // One character changed: refused (CRC-32 catches every single-byte change; without
    // a checksum, only a change outside base62 or in the prefix can be seen).
    let pos_byte = bytes.get(body_len).copied().unwrap_or(0);
    let new_byte = bytes.get(body_len + 1).copied().unwrap_or(b'!');
    let pos = usize::from(pos_byte) % key.len();
    let old = key.as_bytes()[pos];
    if new_byte == old || !new_byte.is_ascii() {
        return;
    }
    let mut changed = key.clone().into_bytes();
    changed[pos] = new_byte;
    let visible = pos <= format.prefix().len() || !ALPHABET.contains(&new_byte);
    if checksum || visible {
        assert!(
            format.validate_bytes(&changed).is_err(),
            "a one-character change passes"
        );
    }
}

fn hex(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match KeyHash::from_hex(text) {
        Some(hash) => {
            assert_eq!(
                hash.to_hex(),
                text.to_ascii_lowercase(),
                "hex does not round-trip"
            );
            assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        }
        None => {
            let digits = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(!digits, "64 hex digits refused");
        }
    }
    // Any 32 bytes print as 64 digits that parse back.
    let mut raw = [0u8; 32];
    for (slot, b) in raw.iter_mut().zip(bytes) {
        *slot = *b;
    }
    let hash = KeyHash::from_bytes(raw);
    let hex = hash.to_hex();
    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(KeyHash::from_hex(&hex), Some(hash));
    assert_eq!(KeyHash::from_hex(&hex.to_ascii_uppercase()), Some(hash));
}

/// CRC-32 (IEEE) bit by bit: the definition, to check the crate's against.
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
