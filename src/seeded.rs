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

/// One folded multiply: a 64×64→128-bit product of `x` and a seeded constant, its
/// halves XOR-ed together.
pub(crate) fn fold(x: u64, seed: u64) -> u64 {
    let p = u128::from(x ^ seed) * u128::from(0x9E37_79B9_7F4A_7C15_u64 ^ seed.rotate_left(29));
    (p as u64) ^ ((p >> 64) as u64)
}

/// `parts` one after another (their total length mixed in first), 8 bytes a step.
/// Callers put a separator between parts whose boundaries must count.
pub(crate) fn hash_parts(seed: (u64, u64), parts: &[&[u8]]) -> u64 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut h = seed.0 ^ len as u64;
    for part in parts {
        let mut chunks = part.chunks_exact(8);
        for c in &mut chunks {
            h = fold(
                h ^ u64::from_le_bytes(c.try_into().expect("8 bytes")),
                seed.1,
            );
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            h = fold(h ^ u64::from_le_bytes(last), seed.1);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_hash_depends_on_every_byte_the_boundaries_and_the_seed() {
        let s = (3, 5);
        let h = |parts: &[&[u8]]| hash_parts(s, parts);
        assert_ne!(h(&[b"key", &[0xff], b"a"]), h(&[b"key", &[0xff], b"b"]));
        assert_ne!(h(&[b"abcdefgh1"]), h(&[b"abcdefgh2"]));
        assert_ne!(h(&[b"a\0"]), h(&[b"a"]));
        assert_ne!(h(&[b"key", &[0xff], b"a"]), h(&[b"ke", &[0xff], b"ya"]));
        assert_ne!(hash_parts((7, 9), &[b"a"]), h(&[b"a"]));
        let seed = random_seed();
        assert!(seed.0 & 1 == 1 && seed.1 & 1 == 1);
    }
}
