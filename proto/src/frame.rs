//! gRPC's message framing on a unary call, both ways: a message behind its 5-byte prefix (a
//! compressed flag and a big-endian length), and back. Both ends that speak HTTP/2 without
//! tonic's codec use it: the node's server for `kv.v1.Kv` and the load generator's client.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

/// `m` encoded behind its prefix, in one buffer.
pub fn encode<M: prost::Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    m.encode_raw(&mut out);
    out.freeze()
}

/// The DATA frames of one call, kept as one buffer: the first frame's own, with no copy, when
/// it is the only one.
#[derive(Default)]
pub struct Gather {
    first: Option<Bytes>,
    more: BytesMut,
}

impl Gather {
    /// Adds the next frame's data.
    pub fn push(&mut self, chunk: Bytes) {
        if self.first.is_none() && self.more.is_empty() {
            self.first = Some(chunk);
            return;
        }
        if let Some(f) = self.first.take() {
            self.more.extend_from_slice(&f);
        }
        self.more.extend_from_slice(&chunk);
    }

    /// How many bytes so far.
    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(self.more.len(), Bytes::len)
    }

    /// Nothing so far.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything, as one buffer.
    pub fn finish(self) -> Bytes {
        self.first.unwrap_or_else(|| self.more.freeze())
    }
}

/// Why a call's data is not one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// It ends before its prefix, or before the length the prefix gives.
    Short,
    /// Its compressed flag is set (and no encoding was agreed).
    Compressed,
    /// The prefix gives a length over the limit.
    TooLarge(usize),
    /// More follows the message.
    Trailing,
}

/// The one message in `buf`, its prefix checked, its length at most `max`.
///
/// # Errors
/// What is wrong with it, in that order of checks.
pub fn one_message(mut buf: Bytes, max: usize) -> Result<Bytes, Malformed> {
    if buf.len() < 5 {
        return Err(Malformed::Short);
    }
    if buf[0] != 0 {
        return Err(Malformed::Compressed);
    }
    buf.advance(1);
    let len = buf.get_u32() as usize;
    if len > max {
        return Err(Malformed::TooLarge(len));
    }
    match buf.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(Malformed::Short),
        std::cmp::Ordering::Greater => Err(Malformed::Trailing),
        std::cmp::Ordering::Equal => Ok(buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_goes_through_split_anywhere_and_bad_data_is_named() {
        let m = crate::kv::v1::GetRequest {
            key: Bytes::from_static(b"some key"),
            consistency: None,
        };
        let framed = encode(&m);
        assert_eq!(framed.len(), 5 + prost::Message::encoded_len(&m));
        for cut in 0..=framed.len() {
            let mut g = Gather::default();
            g.push(framed.slice(..cut));
            g.push(framed.slice(cut..));
            assert_eq!(g.len(), framed.len());
            let msg = one_message(g.finish(), 1 << 20).expect("one message");
            let back: crate::kv::v1::GetRequest = prost::Message::decode(msg).expect("decodes");
            assert_eq!(back, m);
        }
        let body = framed.len() - 5;
        assert_eq!(one_message(framed.slice(..3), 100), Err(Malformed::Short));
        assert_eq!(
            one_message(framed.slice(..framed.len() - 1), 100),
            Err(Malformed::Short)
        );
        let mut two = BytesMut::from(&framed[..]);
        two.extend_from_slice(&framed);
        assert_eq!(one_message(two.freeze(), 100), Err(Malformed::Trailing));
        assert_eq!(
            one_message(framed.clone(), body - 1),
            Err(Malformed::TooLarge(body))
        );
        let mut flagged = BytesMut::from(&framed[..]);
        flagged[0] = 1;
        assert_eq!(
            one_message(flagged.freeze(), 100),
            Err(Malformed::Compressed)
        );
    }
}
