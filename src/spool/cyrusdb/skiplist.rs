//! The skiplist format (Cyrus 2.x default, still found in old spools and in 3.x files that were
//! never converted): a 48-byte header, a dummy node, the INORDER nodes written by the last
//! checkpoint, then a log of ADD / DELETE records closed by COMMIT records. All integers are
//! 32-bit big-endian; keys and values are zero-padded to 4 bytes.
//!
//! Writers update pointers of older nodes in place before they commit, so the linked list alone
//! can show uncommitted changes. This reader therefore takes *what* is live from replaying the
//! log up to the last COMMIT, and *in which order* from the level-0 list (Cyrus's sort order,
//! which differs between versions and databases). It never writes and never runs Cyrus's
//! recovery.

use std::collections::{HashMap, HashSet};

use super::{at, be_u32, Record};
use crate::spool::ParseError;

/// The first 20 bytes of every skiplist file.
pub const MAGIC: &[u8; 20] = b"\xA1\x02\x8B\x0Dskiplist file\0\0\0";

const HEADER_SIZE: usize = 48;
const OFFSET_VERSION: usize = 20;
const OFFSET_MAXLEVEL: usize = 28;
const OFFSET_CURLEVEL: usize = 32;
const DUMMY_OFFSET: usize = HEADER_SIZE;
/// The only major version Cyrus has written.
const VERSION: u32 = 1;
/// Cyrus never builds a skiplist taller than this.
const MAX_LEVEL: u32 = 20;

const TYPE_INORDER: u32 = 1;
const TYPE_ADD: u32 = 2;
const TYPE_DELETE: u32 = 4;
const TYPE_COMMIT: u32 = 255;
const TYPE_DUMMY: u32 = 257;
/// Ends the pointer array of every node, which is how a node's level is known.
const END_OF_POINTERS: u32 = u32::MAX;

/// A node (dummy, INORDER or ADD) as stored, borrowed from the file.
#[derive(Clone, Copy)]
struct Node<'a> {
    kind: u32,
    key: &'a [u8],
    value: &'a [u8],
    /// The level-0 forward pointer (0 = end of list).
    next0: u32,
    level: u32,
    /// Offset just past the node.
    end: usize,
}

/// Why a node could not be read: the file ends inside it (a torn append) or it is malformed.
enum NodeError {
    Truncated,
    Malformed(ParseError),
}

fn read_node(bytes: &[u8], offset: usize, max_level: u32) -> Result<Node<'_>, NodeError> {
    let word = |pos: usize| be_u32(bytes, pos).ok_or(NodeError::Truncated);
    let kind = word(offset)?;
    let keylen = word(offset + 4)? as usize;
    let key_start = offset + 8;
    let key_padded = keylen
        .checked_next_multiple_of(4)
        .ok_or(NodeError::Truncated)?;
    let datalen_pos = key_start
        .checked_add(key_padded)
        .ok_or(NodeError::Truncated)?;
    let datalen = word(datalen_pos)? as usize;
    let data_start = datalen_pos + 4;
    let data_padded = datalen
        .checked_next_multiple_of(4)
        .ok_or(NodeError::Truncated)?;
    let first_ptr = data_start
        .checked_add(data_padded)
        .ok_or(NodeError::Truncated)?;
    // Both fields lie before first_ptr, which word() below bounds-checks against the file.
    let (Some(key), Some(value)) = (
        bytes.get(key_start..key_start + keylen),
        bytes.get(data_start..data_start + datalen),
    ) else {
        return Err(NodeError::Truncated);
    };
    let mut level = 0u32;
    let mut next0 = 0u32;
    let mut ptr_pos = first_ptr;
    loop {
        let ptr = word(ptr_pos)?;
        if ptr == END_OF_POINTERS {
            break;
        }
        if level == 0 {
            next0 = ptr;
        }
        level += 1;
        ptr_pos = ptr_pos.checked_add(4).ok_or(NodeError::Truncated)?;
        if level > max_level {
            return Err(NodeError::Malformed(ParseError::new(
                at(offset),
                format!(
                    "skiplist node at {offset} has more than {max_level} pointers (no end \
                     marker)"
                ),
            )));
        }
    }
    if level == 0 {
        return Err(NodeError::Malformed(ParseError::new(
            at(offset),
            format!("skiplist node at {offset} has no forward pointers"),
        )));
    }
    Ok(Node {
        kind,
        key,
        value,
        next0,
        level,
        // The end marker was read at ptr_pos, so this stays inside the file.
        end: ptr_pos + 4,
    })
}

/// A log entry that has been read but whose transaction may not be committed.
enum LogOp {
    Add { node: usize },
    Delete { record: usize, target: usize },
}

/// The committed live records in level-0 (key) order.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>, ParseError> {
    let Some(raw_header) = bytes.get(..HEADER_SIZE) else {
        return Err(ParseError::new(
            at(bytes.len()),
            format!(
                "skiplist file ends after {} bytes, inside the {HEADER_SIZE}-byte header",
                bytes.len()
            ),
        ));
    };
    if !raw_header.starts_with(MAGIC) {
        return Err(ParseError::new(0, "not a skiplist file (bad magic)"));
    }
    let field = |offset| be_u32(raw_header, offset).unwrap_or_default();
    if field(OFFSET_VERSION) != VERSION {
        return Err(ParseError::new(
            at(OFFSET_VERSION),
            format!(
                "skiplist version {} is not supported (only {VERSION})",
                field(OFFSET_VERSION)
            ),
        ));
    }
    let max_level = field(OFFSET_MAXLEVEL);
    if max_level == 0 || max_level > MAX_LEVEL {
        return Err(ParseError::new(
            at(OFFSET_MAXLEVEL),
            format!("skiplist maxlevel {max_level} is outside 1..={MAX_LEVEL}"),
        ));
    }
    if field(OFFSET_CURLEVEL) > max_level {
        return Err(ParseError::new(
            at(OFFSET_CURLEVEL),
            format!(
                "skiplist curlevel {} is above maxlevel {max_level}",
                field(OFFSET_CURLEVEL)
            ),
        ));
    }

    let dummy = match read_node(bytes, DUMMY_OFFSET, max_level) {
        Ok(node) => node,
        Err(NodeError::Malformed(e)) => return Err(e),
        Err(NodeError::Truncated) => {
            return Err(ParseError::new(
                at(bytes.len()),
                "skiplist file ends inside the dummy node",
            ))
        }
    };
    if dummy.kind != TYPE_DUMMY
        || !dummy.key.is_empty()
        || !dummy.value.is_empty()
        || dummy.level != max_level
    {
        return Err(ParseError::new(
            at(DUMMY_OFFSET),
            format!(
                "skiplist dummy node is malformed (type {}, key {} bytes, value {} bytes, \
                 level {} for maxlevel {max_level})",
                dummy.kind,
                dummy.key.len(),
                dummy.value.len(),
                dummy.level
            ),
        ));
    }

    // Every INORDER and ADD node by offset, committed or not: DELETE records and list
    // pointers name nodes by offset.
    let mut nodes: HashMap<usize, Node> = HashMap::new();
    // Committed live state: key -> offset of the node holding its current value.
    let mut live: HashMap<&[u8], usize> = HashMap::new();
    let mut pos = dummy.end;

    // The checkpoint wrote these before renaming the file into place: all committed.
    while be_u32(bytes, pos) == Some(TYPE_INORDER) {
        let node = match read_node(bytes, pos, max_level) {
            Ok(node) => node,
            Err(NodeError::Malformed(e)) => return Err(e),
            Err(NodeError::Truncated) => {
                return Err(ParseError::new(
                    at(bytes.len()),
                    format!("skiplist file ends inside the INORDER node at {pos}"),
                ))
            }
        };
        live.insert(node.key, pos);
        nodes.insert(pos, node);
        pos = node.end;
    }

    let mut pending: Vec<LogOp> = Vec::new();
    while pos < bytes.len() {
        // A torn append can leave fewer than 4 bytes.
        let Some(kind) = be_u32(bytes, pos) else {
            break;
        };
        match kind {
            // Cyrus's recovery skips zero words: crashes and old recovery bugs left them.
            0 => pos += 4,
            TYPE_ADD => match read_node(bytes, pos, max_level) {
                Ok(node) => {
                    nodes.insert(pos, node);
                    pending.push(LogOp::Add { node: pos });
                    pos = node.end;
                }
                Err(NodeError::Truncated) => break,
                Err(NodeError::Malformed(e)) => return Err(e),
            },
            TYPE_DELETE => {
                let Some(target) = be_u32(bytes, pos + 4) else {
                    break;
                };
                pending.push(LogOp::Delete {
                    record: pos,
                    target: target as usize,
                });
                pos += 8;
            }
            TYPE_COMMIT => {
                for op in pending.drain(..) {
                    match op {
                        LogOp::Add { node } => {
                            if let Some(n) = nodes.get(&node) {
                                live.insert(n.key, node);
                            }
                        }
                        LogOp::Delete { record, target } => {
                            let Some(n) = nodes.get(&target) else {
                                return Err(ParseError::new(
                                    at(record) + 4,
                                    format!(
                                        "skiplist DELETE at {record} names offset {target}, \
                                         which is not an earlier node"
                                    ),
                                ));
                            };
                            // Cyrus deletes by key; a key already gone is not an error.
                            live.remove(n.key);
                        }
                    }
                }
                pos += 4;
            }
            other => {
                return Err(ParseError::new(
                    at(pos),
                    format!(
                        "skiplist log record at {pos} has type {other}; only ADD (2), \
                         DELETE (4) and COMMIT (255) belong in the log"
                    ),
                ))
            }
        }
    }
    let walk = walk_level0(&dummy, &nodes, bytes.len());
    // A pointer past the end of the file means an interrupted append whose data never reached
    // the disk while the pointer update did: uncommitted, like a visible tail.
    let interrupted = !pending.is_empty()
        || pos < bytes.len()
        || matches!(walk, Err(WalkError { past_eof: true, .. }));
    let order = if !interrupted {
        // Pointers and log must agree exactly when nothing is pending.
        let walk = walk.map_err(|e| e.error)?;
        check_walk_matches_log(&walk, &nodes, &live, bytes.len())?;
        walk
    } else {
        // Deletes of the interrupted transaction tell which unlinked nodes are really live.
        let deleted_at: HashMap<usize, usize> = pending
            .iter()
            .filter_map(|op| match *op {
                LogOp::Delete { record, target } => Some((target, record)),
                LogOp::Add { .. } => None,
            })
            .collect();
        let live_offsets: HashSet<usize> = live.values().copied().collect();
        walk.ok()
            .and_then(|walk| committed_order(&walk, &nodes, &live_offsets, &deleted_at))
            .unwrap_or_else(|| fallback_order(&nodes, &live_offsets))
    };
    Ok(order
        .iter()
        .filter_map(|offset| nodes.get(offset))
        .map(|n| Record {
            key: n.key.to_vec(),
            value: n.value.to_vec(),
        })
        .collect())
}

struct WalkError {
    /// The list points past the end of the file.
    past_eof: bool,
    error: ParseError,
}

/// Node offsets along the level-0 list, as linked now (committed or not).
fn walk_level0(
    dummy: &Node,
    nodes: &HashMap<usize, Node>,
    file_len: usize,
) -> Result<Vec<usize>, WalkError> {
    let mut order = Vec::new();
    let mut visited = HashSet::new();
    let mut from = DUMMY_OFFSET;
    let mut next = dummy.next0 as usize;
    while next != 0 {
        let Some(node) = nodes.get(&next) else {
            return Err(WalkError {
                past_eof: next >= file_len,
                error: ParseError::new(
                    at(from),
                    format!("skiplist node at {from} points to {next}, which is not a node"),
                ),
            });
        };
        if !visited.insert(next) {
            return Err(WalkError {
                past_eof: false,
                error: ParseError::new(
                    at(from),
                    format!("skiplist level-0 list loops: node at {from} points back to {next}"),
                ),
            });
        }
        order.push(next);
        from = next;
        next = node.next0 as usize;
    }
    Ok(order)
}

fn check_walk_matches_log(
    walk: &[usize],
    nodes: &HashMap<usize, Node>,
    live: &HashMap<&[u8], usize>,
    file_len: usize,
) -> Result<(), ParseError> {
    for &offset in walk {
        let key = nodes.get(&offset).map(|n| n.key).unwrap_or_default();
        if live.get(key) != Some(&offset) {
            return Err(ParseError::new(
                at(offset),
                format!(
                    "skiplist node at {offset} is linked in the list but the log deleted or \
                     replaced it"
                ),
            ));
        }
    }
    if walk.len() != live.len() {
        let linked: HashSet<usize> = walk.iter().copied().collect();
        let missing = live
            .values()
            .copied()
            .filter(|o| !linked.contains(o))
            .min()
            .unwrap_or(file_len);
        return Err(ParseError::new(
            at(missing),
            format!(
                "skiplist node at {missing} is live according to the log but not linked in the \
                 list"
            ),
        ));
    }
    Ok(())
}

/// Rebuilds the committed order after an interrupted transaction, without knowing Cyrus's
/// comparator.
///
/// The current list is the interrupted transaction's view. Nodes it unlinked still hold the
/// level-0 pointer they had when they were unlinked, which names their successor at that
/// moment; and of several unlinked nodes naming the same successor, the one unlinked last sat
/// first (each unlink re-pointed its predecessor past it). So each committed node missing from
/// the list goes right before its successor, after the missing nodes that point to it.
/// Returns `None` when the file does not fit that picture.
fn committed_order(
    walk: &[usize],
    nodes: &HashMap<usize, Node>,
    live: &HashSet<usize>,
    deleted_at: &HashMap<usize, usize>,
) -> Option<Vec<usize>> {
    let in_walk: HashSet<usize> = walk.iter().copied().collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    for (&node, _) in deleted_at.iter().filter(|(n, _)| !in_walk.contains(n)) {
        let parent = nodes.get(&node)?.next0 as usize;
        children.entry(parent).or_default().push(node);
    }
    for kids in children.values_mut() {
        kids.sort_by_key(|kid| std::cmp::Reverse(deleted_at.get(kid).copied()));
    }

    let mut order = Vec::with_capacity(live.len());
    // 0 anchors the nodes that were last before the end of the list.
    for anchor in walk.iter().copied().chain([0]) {
        // Post-order over the unlinked nodes hanging off `anchor`; each node has one parent,
        // so nothing is visited twice and cycles are never reached.
        let mut stack: Vec<(usize, usize)> = vec![(anchor, 0)];
        while let Some(top) = stack.last_mut() {
            let (node, child) = *top;
            if let Some(&kid) = children.get(&node).and_then(|k| k.get(child)) {
                top.1 += 1;
                stack.push((kid, 0));
            } else {
                stack.pop();
                if node != anchor && live.contains(&node) {
                    order.push(node);
                }
            }
        }
        if anchor != 0 && live.contains(&anchor) {
            order.push(anchor);
        }
    }
    (order.len() == live.len()).then_some(order)
}

/// Last resort when the list is too damaged to order the committed records: Cyrus 3.x's
/// default skiplist order (bytes compared as signed chars, then shorter first).
fn fallback_order(nodes: &HashMap<usize, Node>, live: &HashSet<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = live.iter().copied().collect();
    let key = |o: &usize| -> Vec<i8> {
        nodes
            .get(o)
            .map(|n| n.key.iter().map(|&b| b as i8).collect())
            .unwrap_or_default()
    };
    order.sort_by_cached_key(key);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds skiplist files the way Cyrus lays them out.
    struct Builder {
        bytes: Vec<u8>,
        max_level: u32,
    }

    fn put(v: &mut Vec<u8>, w: u32) {
        v.extend_from_slice(&w.to_be_bytes());
    }

    impl Builder {
        fn new(max_level: u32, dummy_next: &[u32]) -> Builder {
            let mut bytes = MAGIC.to_vec();
            for w in [VERSION, 2, max_level, max_level, 0, 0, 0] {
                put(&mut bytes, w);
            }
            let mut b = Builder { bytes, max_level };
            let mut ptrs = vec![0; max_level as usize];
            ptrs[..dummy_next.len()].copy_from_slice(dummy_next);
            b.node(TYPE_DUMMY, b"", b"", &ptrs);
            b
        }

        fn node_bytes(kind: u32, key: &[u8], value: &[u8], ptrs: &[u32]) -> Vec<u8> {
            let mut v = Vec::new();
            put(&mut v, kind);
            put(&mut v, key.len() as u32);
            v.extend_from_slice(key);
            v.resize(v.len().next_multiple_of(4), 0);
            put(&mut v, value.len() as u32);
            v.extend_from_slice(value);
            v.resize(v.len().next_multiple_of(4), 0);
            for &p in ptrs {
                put(&mut v, p);
            }
            put(&mut v, END_OF_POINTERS);
            v
        }

        fn node(&mut self, kind: u32, key: &[u8], value: &[u8], ptrs: &[u32]) -> u32 {
            let at = self.bytes.len() as u32;
            self.bytes
                .extend_from_slice(&Self::node_bytes(kind, key, value, ptrs));
            at
        }

        fn delete(&mut self, target: u32) {
            put(&mut self.bytes, TYPE_DELETE);
            put(&mut self.bytes, target);
        }

        fn commit(&mut self) {
            put(&mut self.bytes, TYPE_COMMIT);
        }

        fn here(&self) -> u32 {
            self.bytes.len() as u32
        }

        /// Sets the level-0 pointer of the node (or dummy) at `offset`.
        fn link(&mut self, offset: u32, to: u32) {
            let o = offset as usize;
            let keylen = be_u32(&self.bytes, o + 4).unwrap() as usize;
            let dl_pos = o + 8 + keylen.next_multiple_of(4);
            let datalen = be_u32(&self.bytes, dl_pos).unwrap() as usize;
            let p = dl_pos + 4 + datalen.next_multiple_of(4);
            self.bytes[p..p + 4].copy_from_slice(&to.to_be_bytes());
        }
    }

    fn size(key: usize, value: usize) -> u32 {
        (12 + key.next_multiple_of(4) + value.next_multiple_of(4) + 4 + 4) as u32
    }

    fn keys(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.key).into_owned())
            .collect()
    }

    fn dummy_size(max_level: u32) -> u32 {
        12 + 4 * max_level + 4
    }

    /// INORDER nodes e, d, c, b, a (one-byte keys and values) at level 1. The list runs in
    /// reverse byte order, as with a comparator unlike the default, so a reader that sorted
    /// instead of following the list would be caught.
    fn five_inorder() -> (Builder, Vec<u32>) {
        let first = (HEADER_SIZE as u32) + dummy_size(3);
        let step = size(1, 1);
        let offs: Vec<u32> = (0..5).map(|i| first + i * step).collect();
        let mut b = Builder::new(3, &[first]);
        for (i, k) in ["e", "d", "c", "b", "a"].iter().enumerate() {
            let next = offs.get(i + 1).copied().unwrap_or(0);
            b.node(TYPE_INORDER, k.as_bytes(), b"v", &[next]);
        }
        (b, offs)
    }

    #[test]
    fn inorder_only() {
        let (b, _) = five_inorder();
        assert_eq!(keys(&parse(&b.bytes).unwrap()), ["e", "d", "c", "b", "a"]);
        assert_eq!(b.max_level, 3);
    }

    #[test]
    fn committed_log_add_replace_delete() {
        let (mut b, offs) = five_inorder();
        // Add "x" between d and c; replace "b"; delete "e"; all committed.
        let x = b.here();
        b.node(TYPE_ADD, b"x", b"new", &[offs[2]]);
        b.link(offs[1], x);
        b.delete(offs[3]);
        let b2 = b.here();
        b.node(TYPE_ADD, b"b", b"replaced", &[offs[4]]);
        b.link(offs[2], b2);
        b.delete(offs[0]);
        b.link(HEADER_SIZE as u32, offs[1]);
        b.commit();
        let got = parse(&b.bytes).unwrap();
        assert_eq!(keys(&got), ["d", "x", "c", "b", "a"]);
        assert_eq!(got[3].value, b"replaced");
    }

    /// An interrupted transaction added a node and unlinked committed ones in place: the
    /// committed records come back, in their committed order.
    #[test]
    fn uncommitted_changes_are_undone_in_order() {
        for deletion_order in [[1usize, 2, 3], [3, 2, 1], [2, 3, 1], [2, 1, 3]] {
            let (mut b, offs) = five_inorder();
            b.commit();
            // Uncommitted: add "y" after e, then delete d, c, b in the given order.
            let y = b.here();
            b.node(TYPE_ADD, b"y", b"x", &[offs[1]]);
            b.link(offs[0], y);
            let mut current: Vec<u32> = vec![offs[0], y, offs[1], offs[2], offs[3], offs[4]];
            for &i in &deletion_order {
                let victim = offs[i];
                let pos = current.iter().position(|&o| o == victim).unwrap();
                let (pred, succ) = (current[pos - 1], current.get(pos + 1).copied().unwrap_or(0));
                b.delete(victim);
                b.link(pred, succ);
                current.remove(pos);
            }
            let got = parse(&b.bytes).unwrap();
            assert_eq!(
                keys(&got),
                ["e", "d", "c", "b", "a"],
                "deleted in order {deletion_order:?}"
            );
        }
    }

    /// An append cut short (its pointer update on disk, its bytes not): the committed records,
    /// but the list past the lost node is gone, so they come in the fallback order.
    #[test]
    fn torn_tail_is_uncommitted() {
        let (mut b, offs) = five_inorder();
        let len = b.here() as usize;
        b.node(TYPE_ADD, b"zz", b"torn", &[0]);
        b.link(offs[4], len as u32);
        for cut in len..b.bytes.len() {
            let got = parse(&b.bytes[..cut]).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            assert_eq!(keys(&got), ["a", "b", "c", "d", "e"], "cut {cut}");
        }
        // Complete but uncommitted: the list is intact and its order is kept.
        let got = parse(&b.bytes).unwrap();
        assert_eq!(keys(&got), ["e", "d", "c", "b", "a"]);
    }

    #[test]
    fn zero_words_in_the_log_are_skipped() {
        let (mut b, _) = five_inorder();
        b.bytes.extend_from_slice(&[0; 12]);
        b.commit();
        assert_eq!(parse(&b.bytes).unwrap().len(), 5);
    }

    #[test]
    fn disagreement_between_list_and_log_is_an_error() {
        let (mut b, offs) = five_inorder();
        b.delete(offs[2]);
        b.commit(); // but c is still linked
        let err = parse(&b.bytes).unwrap_err();
        assert_eq!(err.offset, offs[2] as u64);

        let (mut b, offs) = five_inorder();
        b.link(offs[1], offs[3]); // c unlinked without a DELETE
        let err = parse(&b.bytes).unwrap_err();
        assert_eq!(err.offset, offs[2] as u64);
    }

    #[test]
    fn structural_errors() {
        let (b, offs) = five_inorder();
        assert!(parse(&b.bytes[..40]).unwrap_err().detail.contains("header"));
        let mut bad = b.bytes.clone();
        bad[OFFSET_MAXLEVEL + 3] = 21;
        assert_eq!(parse(&bad).unwrap_err().offset, OFFSET_MAXLEVEL as u64);
        let mut looped = Builder {
            bytes: b.bytes.clone(),
            max_level: 3,
        };
        looped.link(offs[4], offs[0]);
        assert!(parse(&looped.bytes).unwrap_err().detail.contains("loops"));
        let mut dangling = Builder {
            bytes: b.bytes.clone(),
            max_level: 3,
        };
        dangling.link(offs[4], 7);
        assert!(parse(&dangling.bytes)
            .unwrap_err()
            .detail
            .contains("not a node"));
        let mut junk = b.bytes.clone();
        put(&mut junk, 99);
        assert_eq!(parse(&junk).unwrap_err().offset, b.bytes.len() as u64);
        let mut bad_delete = b.bytes;
        put(&mut bad_delete, TYPE_DELETE);
        put(&mut bad_delete, 12345);
        put(&mut bad_delete, TYPE_COMMIT);
        assert!(parse(&bad_delete).unwrap_err().detail.contains("12345"));
    }

    #[test]
    fn missing_end_marker_is_bounded() {
        let mut b = Builder::new(2, &[]);
        put(&mut b.bytes, TYPE_ADD);
        put(&mut b.bytes, 0);
        put(&mut b.bytes, 0);
        b.bytes.extend_from_slice(&[0x11; 64]);
        put(&mut b.bytes, TYPE_COMMIT);
        assert!(parse(&b.bytes).unwrap_err().detail.contains("pointers"));
    }
}
