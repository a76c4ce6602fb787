//! Seeded, non-cryptographic hashing for the in-memory tables whose keys a client
//! chooses (cache buckets, limiter state): with a per-process random seed, positions
//! cannot be predicted or collided on purpose.

/// Two random odd words from the OS. Without OS randomness the tables still work; they
/// only lose their flood guard.
pub(crate) fn random_seed() -> (u64, u64) {
    let mut seed = [0u8; 16];
    let _ = getrandom::fill(&mut seed);
    (
        u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) | 1,
        u64::from_le_bytes(seed[8..].try_into().expect("8 bytes")) | 1,
    )
}

/// 2⁶⁴ divided by the golden ratio: an odd constant with well-spread bits, for
/// multiplying by.
pub(crate) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// One folded multiply: a 64×64→128-bit product of `x` and a seeded constant, its
/// halves XOR-ed together.
pub(crate) fn fold(x: u64, seed: u64) -> u64 {
    mum(x ^ seed, GOLDEN ^ seed.rotate_left(29))
}

/// A 64×64→128-bit product of two words, its halves XOR-ed together.
pub(crate) fn mum(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Eight bytes as a little-endian word.
fn word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// Four bytes as a little-endian word.
fn half(bytes: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")))
}

/// Folds `bytes` into `h`, 16 bytes a multiply. Short inputs and the tail are read
/// with overlapping loads instead of being copied into a padded buffer (that copy, a
/// `memcpy` of a few bytes, cost more than the multiplies): for a given length every
/// byte is read, so inputs of one length stay distinct. Callers mix lengths in first.
fn mix(mut h: u64, seed: u64, bytes: &[u8]) -> u64 {
    let len = bytes.len();
    if len > 16 {
        let mut chunks = bytes[..len - 1].chunks_exact(16);
        for c in &mut chunks {
            h = mum(h ^ word(c), seed ^ word(&c[8..]));
        }
        // The last 16 bytes: the loop stops short of them (it leaves 1 to 16 bytes
        // unread) and this step overlaps what it read when `len` is not a multiple of 16.
        let tail = &bytes[len - 16..];
        mum(h ^ word(tail), seed ^ word(&tail[8..]))
    } else if len >= 8 {
        mum(h ^ word(bytes), seed ^ word(&bytes[len - 8..]))
    } else if len >= 4 {
        mum(h ^ (half(bytes) << 32 | half(&bytes[len - 4..])), seed)
    } else if len > 0 {
        let v =
            u64::from(bytes[0]) << 16 | u64::from(bytes[len / 2]) << 8 | u64::from(bytes[len - 1]);
        mum(h ^ v, seed)
    } else {
        h
    }
}

/// A seeded hash of the pair `(a, b)`: both lengths first, so that where `a` ends
/// counts, then the bytes of each.
pub(crate) fn hash_pair(seed: (u64, u64), a: &[u8], b: &[u8]) -> u64 {
    let h = mum(seed.0 ^ a.len() as u64, seed.1 ^ b.len() as u64 ^ GOLDEN);
    let h = mix(h, seed.1, a);
    fold(mix(h, seed.1, b), seed.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_hash_depends_on_every_byte_the_boundary_and_the_seed() {
        let s = (3, 5);
        let h = |a: &[u8], b: &[u8]| hash_pair(s, a, b);
        assert_ne!(h(b"key", b"a"), h(b"key", b"b"));
        assert_ne!(h(b"key", b"a"), h(b"ke", b"ya"));
        assert_ne!(h(b"a", b""), h(b"", b"a"));
        assert_ne!(h(b"key", b"a\0"), h(b"key", b"a"));
        assert_ne!(hash_pair((7, 9), b"key", b"a"), h(b"key", b"a"));
        // Every length up to three chunks, every byte position: flipping one bit of
        // one byte changes the hash (every byte is read, whatever the length).
        for len in 0..=48 {
            let base: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let whole = h(b"peer", &base);
            for i in 0..len {
                for bit in [0x01, 0x80] {
                    let mut changed = base.clone();
                    changed[i] ^= bit;
                    assert_ne!(h(b"peer", &changed), whole, "len {len}, byte {i}");
                    assert_ne!(
                        h(&changed, b"peer"),
                        h(&base, b"peer"),
                        "len {len}, byte {i}"
                    );
                }
            }
        }
        let seed = random_seed();
        assert!(seed.0 & 1 == 1 && seed.1 & 1 == 1);
    }
}
