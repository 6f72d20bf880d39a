//! The on-disk record format shared by log segments and snapshots.
//!
//! ```text
//! frame   := header payload
//! header  := len:u32le  payload_crc:u32le  header_crc:u32le     (header_crc = crc32(len ‖ payload_crc))
//! payload := kind:u8 lsn:u64 epoch:u64 counter:u64 written_ms:u64 key_len:u32 key
//!            [context_len:u32 context] [value_len:u32 value]
//! kind    := 1 put | 2 tombstone | 3 snapshot-begin | 4 snapshot-end
//!          | 5 entry-put | 6 entry-delete | 7 entry-noop | 8 truncate | 9 hard-state | 10 entry-cas
//!          | 11 put with context | 12 tombstone with context (leaderless: the version vector)
//!          | 13 replica snapshot (lsn: last index covered, epoch: its term, key: term starts,
//!            written_ms: the index the log after it starts after, value: the state machine
//!            in the snapshot format)
//! ```
//!
//! The header has its own checksum so that a flipped bit in a length cannot pass for a torn
//! tail and silently cut off the records after it. [`next_frame`] classifies damage:
//! a *torn* tail (the last write of a crashed process: a partial header, a record running past
//! the end of the file, or zero fill) may be truncated; anything else, including a full-length
//! record whose checksum fails, is *corrupt* and stops the node with nothing modified.

use bytes::{Buf, BufMut, Bytes};
use kv_replica::Version;

pub(crate) const HEADER: usize = 12;
/// Far above any record the node accepts (keys and values are limited long before this).
const MAX_PAYLOAD: u32 = 1 << 30;

pub(crate) const KIND_PUT: u8 = 1;
pub(crate) const KIND_TOMBSTONE: u8 = 2;
pub(crate) const KIND_SNAP_BEGIN: u8 = 3;
pub(crate) const KIND_SNAP_END: u8 = 4;
/// Replicated log (leader-follower): an entry that writes a value.
pub(crate) const KIND_ENTRY_PUT: u8 = 5;
/// Replicated log: an entry that deletes.
pub(crate) const KIND_ENTRY_DELETE: u8 = 6;
/// Replicated log: a leader's no-op entry.
pub(crate) const KIND_ENTRY_NOOP: u8 = 7;
/// Replicated log: entries from `lsn` on were removed.
pub(crate) const KIND_TRUNCATE: u8 = 8;
/// Replicated log: term (`version.epoch`) and vote (`version.counter`, 0 for none).
pub(crate) const KIND_HARD_STATE: u8 = 9;
/// Replicated log: a compare-and-set; its value is `has:u8 epoch:u64 counter:u64 value`.
pub(crate) const KIND_ENTRY_CAS: u8 = 10;

/// A put carrying a context (the leaderless version vector).
pub(crate) const KIND_PUT_CTX: u8 = 11;
/// A tombstone carrying a context.
pub(crate) const KIND_TOMBSTONE_CTX: u8 = 12;
/// Replicated log: the snapshot the log starts after (first record of a compacted log),
/// inline; written by versions before the snapshot got a file of its own, and still read.
pub(crate) const KIND_RAFT_SNAPSHOT: u8 = 13;
/// Replicated log: the snapshot the log starts after, kept in its own file (its value is the
/// file's length).
pub(crate) const KIND_RAFT_SNAPSHOT_FILE: u8 = 14;

/// The kind of a stored write: with or without a context, value or tombstone.
pub(crate) fn write_kind(has_value: bool, has_context: bool) -> u8 {
    match (has_value, has_context) {
        (true, false) => KIND_PUT,
        (false, false) => KIND_TOMBSTONE,
        (true, true) => KIND_PUT_CTX,
        (false, true) => KIND_TOMBSTONE_CTX,
    }
}

/// Whether a record kind is a stored write (value or tombstone).
pub(crate) fn is_write(kind: u8) -> bool {
    matches!(
        kind,
        KIND_PUT | KIND_TOMBSTONE | KIND_PUT_CTX | KIND_TOMBSTONE_CTX
    )
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub kind: u8,
    pub lsn: u64,
    pub version: Version,
    pub written_ms: u64,
    pub key: Bytes,
    pub value: Option<Bytes>,
    /// Only for the `*_CTX` kinds; empty otherwise.
    pub context: Bytes,
}

/// Appends one framed record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, r: &Record) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    out.put_u8(r.kind);
    out.put_u64_le(r.lsn);
    out.put_u64_le(r.version.epoch);
    out.put_u64_le(r.version.counter);
    out.put_u64_le(r.written_ms);
    out.put_u32_le(r.key.len() as u32);
    out.extend_from_slice(&r.key);
    if matches!(r.kind, KIND_PUT_CTX | KIND_TOMBSTONE_CTX) {
        out.put_u32_le(r.context.len() as u32);
        out.extend_from_slice(&r.context);
    }
    if let Some(v) = &r.value {
        out.put_u32_le(v.len() as u32);
        out.extend_from_slice(v);
    }
    let payload = &out[start + HEADER..];
    let len = payload.len() as u32;
    let pcrc = crc32fast::hash(payload);
    let mut hdr = [0u8; HEADER];
    hdr[0..4].copy_from_slice(&len.to_le_bytes());
    hdr[4..8].copy_from_slice(&pcrc.to_le_bytes());
    let hcrc = crc32fast::hash(&hdr[0..8]);
    hdr[8..12].copy_from_slice(&hcrc.to_le_bytes());
    out[start..start + HEADER].copy_from_slice(&hdr);
}

/// What [`next_frame`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A good record and the offset after it.
    Record(Record, usize),
    /// Clean end of the buffer.
    End,
    /// A torn final write: everything from the offset on may be cut off.
    Torn(String),
    /// Damage that a crash cannot explain.
    Corrupt(String),
}

/// The payload length a frame header at the start of `rest` announces, if the header is whole,
/// its checksum holds and the length is within bounds.
fn payload_len(rest: &[u8]) -> Option<usize> {
    let h = rest.get(..HEADER)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let hcrc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    (crc32fast::hash(&h[0..8]) == hcrc && len <= MAX_PAYLOAD).then_some(len as usize)
}

/// Decodes the frame at `off` in `buf` (a whole file).
pub(crate) fn next_frame(buf: &[u8], off: usize) -> Frame {
    let rest = &buf[off..];
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < HEADER {
        return Frame::Torn(format!("partial record header ({} bytes)", rest.len()));
    }
    let Some(len) = payload_len(rest) else {
        if rest.iter().all(|&b| b == 0) {
            return Frame::Torn(format!("zero-filled tail ({} bytes)", rest.len()));
        }
        return Frame::Corrupt("record header checksum mismatch".into());
    };
    let pcrc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let end = HEADER + len;
    if end > rest.len() {
        return Frame::Torn(format!(
            "final record runs past the end of the file ({} of {} bytes)",
            rest.len(),
            end
        ));
    }
    let payload = &rest[HEADER..end];
    if crc32fast::hash(payload) != pcrc {
        // Complete but damaged, even as the final record: a crashed process leaves a short
        // record, not a full-length wrong one, so this is not truncated away.
        return Frame::Corrupt("record checksum mismatch".into());
    }
    match decode_payload(payload) {
        Some(r) => Frame::Record(r, off + end),
        None => Frame::Corrupt("record checksum matches but its contents are malformed".into()),
    }
}

/// Whether the damage [`next_frame`] found at `off` is what a write interrupted by a crash
/// leaves in a file preallocated with zeros: the record there is short (its header, or the
/// payload its header announces, runs into the zero fill that ends the file) and no whole
/// record starts after it. A full-length record that fails its checksum, or a damaged one with
/// an intact record after it, is not explained by a crash: corrupt.
fn interrupted_write(buf: &[u8], off: usize) -> bool {
    let Some(last) = buf.iter().rposition(|&b| b != 0) else {
        return true;
    };
    if last < off {
        return true; // all zeros from `off`: the end, not damage
    }
    if last + 1 == buf.len() {
        return false; // no zero fill after it: not a preallocated file
    }
    let frame_end = off + HEADER + payload_len(&buf[off..]).unwrap_or(0);
    let short = last + 1 < frame_end;
    short && !(off + 1..=last).any(|o| matches!(next_frame(buf, o), Frame::Record(..)))
}

/// [`next_frame`] in a log file preallocated with zeros (`disk::Appender`): the zero fill after
/// the last record is the end, and a write cut short inside it ([`interrupted_write`]) is a
/// torn tail.
pub(crate) fn next_log_frame(buf: &[u8], off: usize) -> Frame {
    match next_frame(buf, off) {
        f @ (Frame::Record(..) | Frame::End) => f,
        _ if buf[off..].iter().all(|&b| b == 0) => Frame::End,
        Frame::Corrupt(_) if interrupted_write(buf, off) => {
            Frame::Torn("a record cut short in the preallocated space".into())
        }
        f => f,
    }
}

fn decode_payload(mut p: &[u8]) -> Option<Record> {
    if p.remaining() < 1 + 8 * 4 + 4 {
        return None;
    }
    let kind = p.get_u8();
    let lsn = p.get_u64_le();
    let version = Version::new(p.get_u64_le(), p.get_u64_le());
    let written_ms = p.get_u64_le();
    let klen = p.get_u32_le() as usize;
    if p.remaining() < klen {
        return None;
    }
    let key = Bytes::copy_from_slice(&p[..klen]);
    p.advance(klen);
    let mut context = Bytes::new();
    if matches!(kind, KIND_PUT_CTX | KIND_TOMBSTONE_CTX) {
        if p.remaining() < 4 {
            return None;
        }
        let clen = p.get_u32_le() as usize;
        if p.remaining() < clen {
            return None;
        }
        context = Bytes::copy_from_slice(&p[..clen]);
        p.advance(clen);
    }
    let value = match kind {
        KIND_PUT
        | KIND_ENTRY_PUT
        | KIND_ENTRY_CAS
        | KIND_PUT_CTX
        | KIND_RAFT_SNAPSHOT
        | KIND_RAFT_SNAPSHOT_FILE => {
            if p.remaining() < 4 {
                return None;
            }
            let vlen = p.get_u32_le() as usize;
            if p.remaining() != vlen {
                return None;
            }
            Some(Bytes::copy_from_slice(p))
        }
        KIND_TOMBSTONE | KIND_TOMBSTONE_CTX | KIND_SNAP_BEGIN | KIND_SNAP_END
        | KIND_ENTRY_DELETE | KIND_ENTRY_NOOP | KIND_TRUNCATE | KIND_HARD_STATE
            if p.is_empty() =>
        {
            None
        }
        _ => return None,
    };
    Some(Record {
        kind,
        lsn,
        version,
        written_ms,
        key,
        value,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(lsn: u64, value: Option<&'static [u8]>) -> Record {
        Record {
            kind: if value.is_some() {
                KIND_PUT
            } else {
                KIND_TOMBSTONE
            },
            lsn,
            version: Version::new(1, lsn),
            written_ms: 1000 + lsn,
            key: Bytes::from_static(b"key"),
            value: value.map(Bytes::from_static),
            context: Bytes::new(),
        }
    }

    fn two_records() -> (Vec<u8>, usize) {
        let mut buf = Vec::new();
        encode(&mut buf, &rec(1, Some(b"hello")));
        let first = buf.len();
        encode(&mut buf, &rec(2, None));
        (buf, first)
    }

    #[test]
    fn record_round_trips_put_and_tombstone() {
        let (buf, first) = two_records();
        assert_eq!(
            next_frame(&buf, 0),
            Frame::Record(rec(1, Some(b"hello")), first)
        );
        assert_eq!(
            next_frame(&buf, first),
            Frame::Record(rec(2, None), buf.len())
        );
        assert_eq!(next_frame(&buf, buf.len()), Frame::End);
    }

    #[test]
    fn record_round_trips_writes_with_a_context() {
        for value in [Some(Bytes::from_static(b"v")), None] {
            let r = Record {
                kind: write_kind(value.is_some(), true),
                context: Bytes::from_static(b"\x01\x00clock"),
                value,
                ..rec(7, None)
            };
            let mut buf = Vec::new();
            encode(&mut buf, &r);
            assert_eq!(next_frame(&buf, 0), Frame::Record(r, buf.len()));
        }
    }

    #[test]
    fn record_cut_anywhere_in_the_last_frame_is_torn() {
        let (buf, first) = two_records();
        for cut in first + 1..buf.len() {
            assert!(
                matches!(next_frame(&buf[..cut], first), Frame::Torn(_)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn record_with_flipped_bit_before_the_last_frame_is_corrupt() {
        let (buf, first) = two_records();
        for byte in 0..first {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    matches!(next_frame(&b, 0), Frame::Corrupt(_)),
                    "flip byte {byte} bit {bit}: {:?}",
                    next_frame(&b, 0)
                );
            }
        }
    }

    #[test]
    fn record_with_flipped_bit_in_the_last_frame_is_corrupt() {
        let (mut buf, first) = two_records();
        let last = buf.len() - 1;
        buf[last] ^= 0x10;
        assert!(matches!(next_frame(&buf, first), Frame::Corrupt(_)));
    }

    #[test]
    fn a_write_cut_short_in_zero_fill_is_interrupted_but_damage_before_a_record_is_not() {
        let (buf, first) = two_records();
        // The second record cut short (header and half its payload), then preallocated zeros.
        let mut cut = buf[..first + HEADER + 3].to_vec();
        cut.extend_from_slice(&[0u8; 64]);
        assert!(matches!(next_frame(&cut, first), Frame::Corrupt(_)));
        assert!(interrupted_write(&cut, first));
        // Only part of its header written.
        let mut cut = buf[..first + 5].to_vec();
        cut.extend_from_slice(&[0u8; 64]);
        assert!(interrupted_write(&cut, first));
        // The first record damaged while the second is whole: corrupt, even before zero fill.
        let mut flipped = buf.clone();
        flipped[HEADER + 2] ^= 0x01;
        flipped.extend_from_slice(&[0u8; 64]);
        assert!(matches!(next_frame(&flipped, 0), Frame::Corrupt(_)));
        assert!(!interrupted_write(&flipped, 0));
        // A full-length damaged last record, with or without zero fill after it.
        let mut last = buf.clone();
        let end = last.len() - 1;
        last[end] ^= 0x10;
        assert!(!interrupted_write(&last, first));
        last.extend_from_slice(&[0u8; 64]);
        assert!(matches!(next_frame(&last, first), Frame::Corrupt(_)));
        assert!(!interrupted_write(&last, first));
        // A whole header with a flipped bit, its payload after it: corrupt.
        let mut header = buf.clone();
        header[first + 1] ^= 0x01;
        header.extend_from_slice(&[0u8; 64]);
        assert!(!interrupted_write(&header, first));
    }

    #[test]
    fn record_zero_tail_is_torn_not_corrupt() {
        let (mut buf, _) = two_records();
        let end = buf.len();
        buf.extend_from_slice(&[0u8; 40]);
        assert!(matches!(next_frame(&buf, end), Frame::Torn(_)));
    }
}
