//! Stream 0's framing (spec 6): every section 4 message is a 4-byte big-endian length followed
//! by that many bytes, in order. A QUIC stream is a byte stream with no message boundaries, so
//! the receiving side cuts it back into messages here, refusing any frame longer than the
//! `a=max-message-size` it advertised before reading its body: a peer can make it hold at most
//! one frame of that size.
//!
//! What a frame holds is not looked at here: "exactly one CBOR item" is checked where it is
//! for data-channel messages (the core's transfer codec), so both transports behave the same.

/// Bytes of a frame's length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a stream-0 frame of {len} bytes is longer than the {max} this side accepts")]
    TooLarge { len: u64, max: usize },
}

/// The length prefix of a `len`-byte message (callers keep `len` within the peer's limit,
/// which is far below `u32::MAX`).
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// Cuts a byte stream into messages of at most `max` bytes each.
#[derive(Debug)]
pub struct FrameReader {
    max: usize,
    header: [u8; HEADER_LEN],
    /// Header bytes read so far (the body follows once all 4 are in).
    header_len: usize,
    /// The current frame's length, once its header is complete.
    body_len: Option<usize>,
    body: Vec<u8>,
    /// A refused frame poisons the stream: nothing after it can be framed again.
    failed: Option<FrameError>,
}

impl FrameReader {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            header: [0; HEADER_LEN],
            header_len: 0,
            body_len: None,
            body: Vec::new(),
            failed: None,
        }
    }

    /// Takes the next bytes of the stream; every message completed by them goes to `message`,
    /// in order. After an error nothing more is read (the connection is to be closed).
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        message: &mut impl FnMut(Vec<u8>),
    ) -> Result<(), FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        while !bytes.is_empty() || self.body_len == Some(self.body.len()) {
            let Some(len) = self.body_len else {
                let take = (HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len < HEADER_LEN {
                    return Ok(());
                }
                let len = u32::from_be_bytes(self.header);
                if u64::from(len) > self.max as u64 {
                    let error = FrameError::TooLarge {
                        len: u64::from(len),
                        max: self.max,
                    };
                    self.failed = Some(error.clone());
                    return Err(error);
                }
                // Bounded by `max`: the header was checked first.
                let len = len as usize;
                self.body = Vec::with_capacity(len);
                self.body_len = Some(len);
                continue;
            };
            let take = (len - self.body.len()).min(bytes.len());
            self.body.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.body.len() == len {
                self.header_len = 0;
                self.body_len = None;
                message(std::mem::take(&mut self.body));
            }
        }
        Ok(())
    }

    /// Bytes of an unfinished frame held (at most `max` plus a header).
    pub fn held(&self) -> usize {
        self.header_len + self.body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = header(message.len()).to_vec();
        out.extend_from_slice(message);
        out
    }

    fn read_all(reader: &mut FrameReader, pieces: &[&[u8]]) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut messages = Vec::new();
        for piece in pieces {
            if let Err(error) = reader.push(piece, &mut |m| messages.push(m)) {
                return (messages, Some(error));
            }
        }
        (messages, None)
    }

    #[test]
    fn messages_come_back_whole_however_the_stream_is_cut() {
        let messages: Vec<Vec<u8>> = vec![b"one".to_vec(), Vec::new(), vec![7; 300], b"x".to_vec()];
        let stream: Vec<u8> = messages.iter().flat_map(|m| frame(m)).collect();
        for cut in 1..stream.len() {
            let mut reader = FrameReader::new(1024);
            let (got, error) = read_all(&mut reader, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(error, None);
            assert_eq!(got, messages, "cut at {cut}");
            assert_eq!(reader.held(), 0);
        }
        // One byte at a time.
        let mut reader = FrameReader::new(1024);
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(read_all(&mut reader, &pieces).0, messages);
    }

    #[test]
    fn a_frame_longer_than_the_limit_is_refused_before_its_body() {
        let mut reader = FrameReader::new(256 * 1024);
        let mut stream = frame(b"fine");
        stream.extend_from_slice(&header(256 * 1024 + 1));
        let (got, error) = read_all(&mut reader, &[&stream]);
        assert_eq!(got, vec![b"fine".to_vec()]);
        assert_eq!(
            error,
            Some(FrameError::TooLarge {
                len: 256 * 1024 + 1,
                max: 256 * 1024
            })
        );
        // Nothing was allocated for it, and the stream stays refused.
        assert_eq!(reader.held(), HEADER_LEN);
        assert!(reader.push(&frame(b"later"), &mut |_| panic!()).is_err());
        // Exactly the limit is accepted; u32::MAX too is only a length.
        let mut reader = FrameReader::new(8);
        assert_eq!(
            read_all(&mut reader, &[&frame(&[1; 8])]).0,
            vec![vec![1; 8]]
        );
        assert!(reader.push(&[0xff; 4], &mut |_| ()).is_err());
    }
}
