//! kmod's binary module index, format 2.1 (`modules.*.bin`): a radix trie with big-endian offsets.
//!
//! The trie's shape depends only on the key set; values in a node are ordered by priority with
//! the newest first among equals. kmod up to 33 writes nodes children-first (post-order), kmod 34
//! parent-first (pre-order); both give files of the same size that every kmod reads.

use std::fmt;

const MAGIC: u32 = 0xB007_F457;
const VERSION: u32 = 0x0002_0001;
const FLAG_PREFIX: u32 = 0x8000_0000;
const FLAG_VALUES: u32 = 0x4000_0000;
const FLAG_CHILDS: u32 = 0x2000_0000;
const OFFSET_MASK: u32 = 0x0FFF_FFFF;
/// kmod 34 refuses keys and values with a byte of 0x80 or more (its child tables are indexed by
/// a 7-bit byte); kmod 30 to 33 store them (within a node's prefix as they are, and as a child
/// byte read unsigned here).
const SEVEN_BIT_END: u8 = 128;

/// Which kmod's byte layout to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// kmod 30 to 33: children written before their parent, root last.
    #[default]
    PostOrder,
    /// kmod 34 and later: parent first, root at offset 12.
    PreOrder,
}

/// A key or value byte kmod's index cannot hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCharacter {
    pub text: Vec<u8>,
}

impl fmt::Display for BadCharacter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "module index: only 7-bit ASCII is supported, found a byte >= 0x80 in {:?}",
            String::from_utf8_lossy(&self.text)
        )
    }
}

impl std::error::Error for BadCharacter {}

#[derive(Debug, Default)]
struct Node {
    prefix: Vec<u8>,
    /// (byte, node index), sorted by byte.
    children: Vec<(u8, usize)>,
    /// (priority, value), ascending priority, newest first among equal priorities.
    values: Vec<(u32, Vec<u8>)>,
}

/// An index being built in memory.
#[derive(Debug)]
pub struct IndexBuilder {
    nodes: Vec<Node>,
    /// Keys and values may hold bytes of 0x80 and more (kmod 30 to 33), or not (kmod 34).
    eight_bit: bool,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        IndexBuilder { nodes: vec![Node::default()], eight_bit: false }
    }
}

impl IndexBuilder {
    /// An index taking 7-bit keys and values only, as kmod 34 does.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index for `layout`'s kmod: kmod 30 to 33 (post-order) also take 8-bit bytes, as in
    /// module file names that are not ASCII.
    pub fn for_layout(layout: Layout) -> Self {
        IndexBuilder { eight_bit: layout == Layout::PostOrder, ..Self::default() }
    }

    /// Adds `value` under `key` with `priority`. Returns whether an equal value was already
    /// stored under that key (depmod's `-w` reports those).
    pub fn insert(&mut self, key: &[u8], value: &[u8], priority: u32) -> Result<bool, BadCharacter> {
        for text in [key, value] {
            if (!self.eight_bit && text.iter().any(|&b| b >= SEVEN_BIT_END)) || text.contains(&0) {
                return Err(BadCharacter { text: text.to_vec() });
            }
        }
        let mut node = 0;
        let mut i = 0;
        loop {
            // Make the node's prefix a prefix of key[i..], splitting the node where they diverge.
            let prefix_len = self.nodes[node].prefix.len();
            let common = self.nodes[node].prefix.iter().zip(&key[i..]).take_while(|(a, b)| a == b).count();
            if common < prefix_len {
                self.split(node, common);
            }
            i += common;
            let Some(&ch) = key.get(i) else {
                return Ok(add_value(&mut self.nodes[node].values, value, priority));
            };
            match self.child(node, ch) {
                Some(child) => {
                    node = child;
                    i += 1;
                }
                None => {
                    let leaf = self.nodes.len();
                    self.nodes.push(Node {
                        prefix: key[i + 1..].to_vec(),
                        children: Vec::new(),
                        values: vec![(priority, value.to_vec())],
                    });
                    self.set_child(node, ch, leaf);
                    return Ok(false);
                }
            }
        }
    }

    fn child(&self, node: usize, ch: u8) -> Option<usize> {
        let children = &self.nodes[node].children;
        children.binary_search_by_key(&ch, |&(c, _)| c).ok().map(|pos| children[pos].1)
    }

    fn set_child(&mut self, node: usize, ch: u8, child: usize) {
        let children = &mut self.nodes[node].children;
        match children.binary_search_by_key(&ch, |&(c, _)| c) {
            Ok(pos) => children[pos].1 = child,
            Err(pos) => children.insert(pos, (ch, child)),
        }
    }

    /// Splits `node` after `at` prefix bytes: the node keeps prefix[..at]; a new child at
    /// prefix[at] takes the rest of the prefix, the values and the children.
    fn split(&mut self, node: usize, at: usize) {
        let old = std::mem::take(&mut self.nodes[node]);
        let ch = old.prefix[at];
        let tail = Node { prefix: old.prefix[at + 1..].to_vec(), children: old.children, values: old.values };
        let tail_index = self.nodes.len();
        self.nodes.push(tail);
        let head = &mut self.nodes[node];
        head.prefix = old.prefix[..at].to_vec();
        head.children = vec![(ch, tail_index)];
    }

    /// Serializes the index in `layout`.
    pub fn to_bytes(&self, layout: Layout) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        let root = match layout {
            Layout::PostOrder => self.write_post_order(0, &mut out),
            Layout::PreOrder => {
                let mut totals = vec![0usize; self.nodes.len()];
                self.compute_totals(0, &mut totals);
                self.write_pre_order(0, &totals, &mut out)
            }
        };
        out[8..12].copy_from_slice(&root.to_be_bytes());
        out
    }

    fn flags(&self, node: usize) -> u32 {
        let n = &self.nodes[node];
        let mut flags = 0;
        if !n.prefix.is_empty() {
            flags |= FLAG_PREFIX;
        }
        if !n.values.is_empty() {
            flags |= FLAG_VALUES;
        }
        if !n.children.is_empty() {
            flags |= FLAG_CHILDS;
        }
        flags
    }

    /// Size of a node's own body in bytes.
    fn body_size(&self, node: usize) -> usize {
        let n = &self.nodes[node];
        let mut size = 0;
        if !n.prefix.is_empty() {
            size += n.prefix.len() + 1;
        }
        if let (Some(first), Some(last)) = (n.children.first(), n.children.last()) {
            size += 2 + 4 * (usize::from(last.0 - first.0) + 1);
        }
        if !n.values.is_empty() {
            size += 4 + n.values.iter().map(|(_, v)| 4 + v.len() + 1).sum::<usize>();
        }
        size
    }

    /// Writes a node body given its child references (indexed by byte - first).
    fn write_body(&self, node: usize, child_refs: &[u32], out: &mut Vec<u8>) {
        let n = &self.nodes[node];
        if !n.prefix.is_empty() {
            out.extend_from_slice(&n.prefix);
            out.push(0);
        }
        if let (Some(first), Some(last)) = (n.children.first(), n.children.last()) {
            out.push(first.0);
            out.push(last.0);
            for r in child_refs {
                out.extend_from_slice(&r.to_be_bytes());
            }
        }
        if !n.values.is_empty() {
            out.extend_from_slice(&(n.values.len() as u32).to_be_bytes());
            for (priority, value) in &n.values {
                out.extend_from_slice(&priority.to_be_bytes());
                out.extend_from_slice(value);
                out.push(0);
            }
        }
    }

    /// Child reference slots for `node`: one per byte in [first, last], 0 where absent.
    fn child_slots(&self, node: usize) -> Vec<Option<usize>> {
        let children = &self.nodes[node].children;
        let (Some(first), Some(last)) = (children.first(), children.last()) else {
            return Vec::new();
        };
        let mut slots = vec![None; usize::from(last.0 - first.0) + 1];
        for &(ch, child) in children {
            slots[usize::from(ch - first.0)] = Some(child);
        }
        slots
    }

    fn write_post_order(&self, node: usize, out: &mut Vec<u8>) -> u32 {
        let refs: Vec<u32> = self
            .child_slots(node)
            .into_iter()
            .map(|slot| slot.map_or(0, |child| self.write_post_order(child, out)))
            .collect();
        let offset = out.len() as u32;
        self.write_body(node, &refs, out);
        offset | self.flags(node)
    }

    fn compute_totals(&self, node: usize, totals: &mut [usize]) -> usize {
        let mut total = self.body_size(node);
        for &(_, child) in &self.nodes[node].children {
            total += self.compute_totals(child, totals);
        }
        totals[node] = total;
        total
    }

    fn write_pre_order(&self, node: usize, totals: &[usize], out: &mut Vec<u8>) -> u32 {
        let offset = out.len();
        let mut next = offset + self.body_size(node);
        let slots = self.child_slots(node);
        let refs: Vec<u32> = slots
            .iter()
            .map(|slot| match slot {
                Some(child) => {
                    let r = next as u32 | self.flags(*child);
                    next += totals[*child];
                    r
                }
                None => 0,
            })
            .collect();
        self.write_body(node, &refs, out);
        for child in slots.into_iter().flatten() {
            self.write_pre_order(child, totals, out);
        }
        offset as u32 | self.flags(node)
    }
}

/// Inserts before the first value whose priority is >= `priority`; reports an equal value.
fn add_value(values: &mut Vec<(u32, Vec<u8>)>, value: &[u8], priority: u32) -> bool {
    let duplicate = values.iter().any(|(_, v)| v == value);
    let pos = values.iter().position(|(p, _)| *p >= priority).unwrap_or(values.len());
    values.insert(pos, (priority, value.to_vec()));
    duplicate
}

/// Why a byte string is not a readable index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexError(pub String);

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IndexError {}

/// The values stored under one key: (priority, value) in stored order.
pub type Values<'a> = Vec<(u32, &'a [u8])>;

/// A read-only view of an index file's bytes.
pub struct Index<'a> {
    bytes: &'a [u8],
    root: u32,
}

/// A decoded node: its prefix, child references by byte, and values.
struct RawNode<'a> {
    prefix: &'a [u8],
    first: u8,
    children: Vec<u32>,
    values: Vec<(u32, &'a [u8])>,
}

impl<'a> Index<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Index<'a>, IndexError> {
        let word = |at: usize| -> Result<u32, IndexError> {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| IndexError("index shorter than its 12-byte header".into()))
        };
        if word(0)? != MAGIC {
            return Err(IndexError("not a module index (bad magic)".into()));
        }
        if word(4)? >> 16 != VERSION >> 16 {
            return Err(IndexError(format!("unsupported index version {:#x}", word(4)?)));
        }
        Ok(Index { bytes, root: word(8)? })
    }

    fn node(&self, reference: u32) -> Result<RawNode<'a>, IndexError> {
        let bad = || IndexError(format!("index node reference {reference:#x} is out of range"));
        let mut at = (reference & OFFSET_MASK) as usize;
        let bytes = self.bytes;
        let word = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let mut node = RawNode { prefix: &[], first: 0, children: Vec::new(), values: Vec::new() };
        if reference & FLAG_PREFIX != 0 {
            let rest = bytes.get(at..).ok_or_else(bad)?;
            let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
            node.prefix = &rest[..end];
            at += end + 1;
        }
        if reference & FLAG_CHILDS != 0 {
            let (&first, &last) = (bytes.get(at).ok_or_else(bad)?, bytes.get(at + 1).ok_or_else(bad)?);
            if last < first {
                return Err(bad());
            }
            at += 2;
            node.first = first;
            for _ in first..=last {
                node.children.push(word(at).ok_or_else(bad)?);
                at += 4;
            }
        }
        if reference & FLAG_VALUES != 0 {
            let count = word(at).ok_or_else(bad)?;
            at += 4;
            for _ in 0..count {
                let priority = word(at).ok_or_else(bad)?;
                at += 4;
                let rest = bytes.get(at..).ok_or_else(bad)?;
                let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
                node.values.push((priority, &rest[..end]));
                at += end + 1;
            }
        }
        Ok(node)
    }

    /// The values stored under exactly `key`, in stored order (what kmod's exact search returns
    /// the first of).
    pub fn get(&self, key: &[u8]) -> Result<Values<'a>, IndexError> {
        let mut reference = self.root;
        let mut i = 0;
        // Every step consumes at least one key byte, so the walk ends within key.len() + 1 nodes.
        loop {
            let node = self.node(reference)?;
            if !key[i..].starts_with(node.prefix) {
                return Ok(Vec::new());
            }
            i += node.prefix.len();
            let Some(&ch) = key.get(i) else {
                return Ok(node.values);
            };
            let slot = usize::from(ch.wrapping_sub(node.first));
            match node.children.get(slot) {
                Some(&child) if ch >= node.first && child != 0 => {
                    reference = child;
                    i += 1;
                }
                _ => return Ok(Vec::new()),
            }
        }
    }

    /// Every (key, values) pair in key order, as `modprobe -c` dumps them.
    pub fn entries(&self) -> Result<Vec<(Vec<u8>, Values<'a>)>, IndexError> {
        let mut out = Vec::new();
        // Depth-first with an explicit stack; a reference seen twice means a malformed file.
        let mut stack = vec![(self.root, Vec::new())];
        let mut seen = std::collections::HashSet::new();
        while let Some((reference, mut key)) = stack.pop() {
            if !seen.insert(reference & OFFSET_MASK) {
                return Err(IndexError("index nodes form a loop".into()));
            }
            let node = self.node(reference)?;
            key.extend_from_slice(node.prefix);
            for (slot, &child) in node.children.iter().enumerate().rev() {
                if child != 0 {
                    let mut child_key = key.clone();
                    child_key.push(node.first + slot as u8);
                    stack.push((child, child_key));
                }
            }
            if !node.values.is_empty() {
                out.push((key, node.values));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin_example() -> IndexBuilder {
        let mut index = IndexBuilder::new();
        for key in [&b"ab"[..], b"abc", b"b"] {
            index.insert(key, b"", 0).expect("insert");
        }
        index
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    /// The worked example of shared/reference/depmod.md §2.5, checked there against real depmod.
    #[test]
    fn pre_order_matches_kmod34_example() {
        let want = hex("b007f457 00020001 2000000c 6162 e0000016 40000030 6200 6363 40000027 00000001 00000000 00
                        00000001 00000000 00 00000001 00000000 00");
        assert_eq!(builtin_example().to_bytes(Layout::PreOrder), want);
    }

    #[test]
    fn post_order_matches_kmod30_example() {
        let want = hex("b007f457 00020001 2000002f 00000001 00000000 00 6200 6363 4000000c 00000001 00000000 00
                        00000001 00000000 00 6162 e0000015 40000026");
        assert_eq!(builtin_example().to_bytes(Layout::PostOrder), want);
    }

    #[test]
    fn empty_index_is_header_only() {
        assert_eq!(IndexBuilder::new().to_bytes(Layout::PostOrder), hex("b007f457 00020001 0000000c"));
        assert_eq!(IndexBuilder::new().to_bytes(Layout::PreOrder), hex("b007f457 00020001 0000000c"));
    }

    #[test]
    fn values_newest_first_among_equal_priorities() {
        let mut index = IndexBuilder::new();
        index.insert(b"k", b"one", 0).expect("insert");
        index.insert(b"k", b"two", 0).expect("insert");
        index.insert(b"k", b"low", 5).expect("insert");
        assert!(index.insert(b"k", b"one", 9).expect("insert"), "duplicate reported");
        let bytes = index.to_bytes(Layout::PostOrder);
        let got = Index::new(&bytes).expect("index").get(b"k").expect("get");
        let values: Vec<&[u8]> = got.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, vec![&b"two"[..], b"one", b"low", b"one"]);
    }

    #[test]
    fn round_trip_both_layouts() {
        let keys: Vec<Vec<u8>> = (0..300u32).map(|i| format!("key{}x{}", i % 17, i).into_bytes()).collect();
        let mut index = IndexBuilder::new();
        for (i, k) in keys.iter().enumerate() {
            index.insert(k, format!("v{i}").as_bytes(), i as u32).expect("insert");
        }
        for layout in [Layout::PostOrder, Layout::PreOrder] {
            let bytes = index.to_bytes(layout);
            let reader = Index::new(&bytes).expect("index");
            for (i, k) in keys.iter().enumerate() {
                let got = reader.get(k).expect("get");
                assert_eq!(got, vec![(i as u32, format!("v{i}").as_bytes())]);
            }
            assert!(reader.get(b"key").expect("get").is_empty());
            let mut sorted = keys.clone();
            sorted.sort();
            let listed: Vec<Vec<u8>> = reader.entries().expect("entries").into_iter().map(|(k, _)| k).collect();
            assert_eq!(listed, sorted);
        }
    }

    #[test]
    fn rejects_8bit_and_nul() {
        assert!(IndexBuilder::new().insert(b"caf\xe9", b"", 0).is_err());
        assert!(IndexBuilder::new().insert(b"a", b"x\0y", 0).is_err());
    }

    #[test]
    fn reader_survives_garbage() {
        for bytes in [
            &b""[..],
            b"\xb0\x07\xf4\x57\x00\x02\x00\x01\x0f\xff\xff\xff",
            b"\xb0\x07\xf4\x57\x00\x02\x00\x01\xe0\x00\x00\x0c",
        ] {
            if let Ok(index) = Index::new(bytes) {
                let _ = index.get(b"abc");
                let _ = index.entries();
            }
        }
    }
}
