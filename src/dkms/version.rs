//! How dkms orders versions: its VER() keys (kernels, OBSOLETE_BY, the not-newer check) and GNU
//! `sort -V` (dkms 3.4's "newest version of a dependency").

use std::cmp::Ordering;

/// dkms's VER(): every run of digits padded to at least three digits, so that plain string
/// comparison orders versions (`2.6.9-1cvs` → `002.006.009-001cvs`).
pub fn ver_key(version: &str) -> String {
    let mut out = String::with_capacity(version.len() + 8);
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if !digits.is_empty() {
            for _ in digits.len()..3 {
                out.push('0');
            }
            out.push_str(digits);
            digits.clear();
        }
    };
    for c in version.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// The order of `LC_ALL=C sort -V`: gnulib's filevercmp, then the bytes when it sees no
/// difference (sort's last-resort comparison). dkms 3.4 picks a dependency's newest version with
/// `sort -V | tail -n1`; VER() would misorder a number of four digits or more.
pub fn sort_v(a: &str, b: &str) -> Ordering {
    filevercmp(a.as_bytes(), b.as_bytes()).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// gnulib's filevercmp: empty names first, then `.`, `..` and other dot names, then the names
/// compared without their file suffixes (`(\.[A-Za-z~][A-Za-z0-9~]*)*$`), then with them.
fn filevercmp(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        (false, false) => {}
    }
    match (a[0] == b'.', b[0] == b'.') {
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        (true, true) => {
            for special in [&b"."[..], b".."] {
                match (a == special, b == special) {
                    (true, true) => return Ordering::Equal,
                    (true, false) => return Ordering::Less,
                    (false, true) => return Ordering::Greater,
                    (false, false) => {}
                }
            }
        }
        (false, false) => {}
    }
    let (a_prefix, b_prefix) = (prefix_len(a), prefix_len(b));
    let first = verrevcmp(&a[..a_prefix], &b[..b_prefix]);
    if first != Ordering::Equal || (a_prefix == a.len() && b_prefix == b.len()) {
        return first;
    }
    verrevcmp(a, b)
}

/// The length of `name` without its longest file suffix, which may be all of it (`.~` is all
/// suffix to coreutils 9.1, Debian 12's; gnulib's later filevercmp keeps the first byte).
fn prefix_len(name: &[u8]) -> usize {
    let starts_suffix =
        |i: usize| name[i] == b'.' && name.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'~');
    let mut prefix = 0;
    let mut i = 0;
    loop {
        while i < name.len() && starts_suffix(i) {
            i += 2;
            while i < name.len() && (name[i].is_ascii_alphanumeric() || name[i] == b'~') {
                i += 1;
            }
        }
        if i >= name.len() {
            return prefix;
        }
        i += 1;
        prefix = i;
    }
}

/// The weight of the byte at `pos` (past the end: before everything but `~`).
fn order(s: &[u8], pos: usize) -> i32 {
    match s.get(pos) {
        None => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(*c),
        Some(b'~') => -2,
        Some(c) => i32::from(*c) + 256,
    }
}

/// dpkg's verrevcmp as gnulib adapts it: alternating non-digit runs (by [`order`]) and digit
/// runs (numerically, leading zeros ignored).
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let digit_at = |s: &[u8], i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit_at(a, i)) || (j < b.len() && !digit_at(b, j)) {
            let (x, y) = (order(a, i), order(b, j));
            if x != y {
                return x.cmp(&y);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit_at(a, i) && digit_at(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit_at(a, i) {
            return Ordering::Greater;
        }
        if digit_at(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn ver_pads_numbers() {
        assert_eq!(ver_key("2.6.9-1cvs200409091247"), "002.006.009-001cvs200409091247");
        assert!(ver_key("1.10") > ver_key("1.9"));
        assert!(ver_key("4.12-rc1") > ver_key("4.12"));
    }

    /// Deterministic pseudo-random words over the bytes that matter to filevercmp.
    fn words(count: usize) -> Vec<String> {
        const ALPHABET: &[u8] = b"0019.~-aZb.+";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let len = 1 + (next() % 8) as usize;
                (0..len).map(|_| char::from(ALPHABET[(next() % ALPHABET.len() as u64) as usize])).collect()
            })
            .collect()
    }

    /// The reference: GNU sort -V from coreutils, in the C locale.
    #[test]
    fn sort_v_orders_as_gnu_sort_does() {
        let mut list = words(3000);
        list.extend(
            ["1.0", "1.00", "999", "1000", "2.0.beta", "2.0", "2.0~rc1", ".", "..", ".a", ""].map(String::from),
        );
        let mut child = Command::new("sort")
            .arg("-V")
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sort");
        let input: String = list.iter().map(|w| format!("{w}\n")).collect();
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
        let output = child.wait_with_output().expect("sort output");
        let expected: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(String::from).collect();
        let mut ours = list;
        ours.sort_by(|a, b| sort_v(a, b));
        let first = ours.iter().zip(&expected).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "first difference at {first:?}: {:?}",
            first.map(|i| (&ours[i..i + 3], &expected[i..i + 3]))
        );
        assert_eq!(ours.len(), expected.len());
    }
}
