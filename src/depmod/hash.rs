//! The iteration order of kmod's hash tables, which fixes the order of modules not listed in
//! modules.order and of every line in modules.symbols.
//!
//! kmod hashes keys with Paul Hsieh's SuperFastHash into a power-of-two number of buckets and keeps
//! each bucket sorted by `strcmp`; iterating walks buckets in ascending order. The 16-bit loads are
//! host-endian in kmod; this reproduces a little-endian build host (x86-64, arm64), and single
//! bytes are read as signed `char`, as on those hosts.

/// Buckets of depmod's module-name table.
pub const MODULE_BUCKETS: u32 = 512;
/// Buckets of depmod's symbol table.
pub const SYMBOL_BUCKETS: u32 = 2048;

/// SuperFastHash of `key`, as kmod computes it.
pub fn superfast(key: &[u8]) -> u32 {
    let rd16 = |p: &[u8]| u32::from(u16::from_le_bytes([p[0], p[1]]));
    let signed = |b: u8| b as i8 as i32 as u32;
    let mut hash = key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for p in &mut chunks {
        hash = hash.wrapping_add(rd16(p));
        let tmp = (rd16(&p[2..]) << 11) ^ hash;
        hash = (hash << 16) ^ tmp;
        hash = hash.wrapping_add(hash >> 11);
    }
    let rest = chunks.remainder();
    match rest.len() {
        3 => {
            hash = hash.wrapping_add(rd16(rest));
            hash ^= hash << 16;
            hash ^= signed(rest[2]) << 18;
            hash = hash.wrapping_add(hash >> 11);
        }
        2 => {
            hash = hash.wrapping_add(rd16(rest));
            hash ^= hash << 11;
            hash = hash.wrapping_add(hash >> 17);
        }
        1 => {
            hash = hash.wrapping_add(signed(rest[0]));
            hash ^= hash << 10;
            hash = hash.wrapping_add(hash >> 1);
        }
        _ => {}
    }
    hash ^= hash << 3;
    hash = hash.wrapping_add(hash >> 5);
    hash ^= hash << 4;
    hash = hash.wrapping_add(hash >> 17);
    hash ^= hash << 25;
    hash = hash.wrapping_add(hash >> 6);
    hash
}

/// Sorts `items` into the iteration order of a kmod hash table with `buckets` buckets.
pub fn sort_in_table_order<T>(items: &mut [T], buckets: u32, key: impl Fn(&T) -> &[u8]) {
    items.sort_by_cached_key(|item| {
        let k = key(item);
        (superfast(k) & (buckets - 1), k.to_vec())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values printed by kmod v30's own `hash_superfast` (shared/hash.c) compiled with
    /// gcc on x86-64; the last two take the signed-`char` paths.
    #[test]
    fn matches_kmod_on_every_tail_length() {
        let keys: [&[u8]; 9] = [b"", b"a", b"ab", b"abc", b"abcd", b"abcde", b"ext4", b"ab\xe9", b"\xe9"];
        let want = [
            0x00000000, 0x115ea782, 0x516b8b44, 0xd2be198a, 0xdad8b8db, 0x51ed072e, 0xe679ab16, 0xb4dfd4b5, 0x69ea06c0,
        ];
        let got: Vec<u32> = keys.iter().map(|k| superfast(k)).collect();
        assert_eq!(got, want);
    }
}
