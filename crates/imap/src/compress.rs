//! COMPRESS=DEFLATE (RFC 4978): raw DEFLATE (RFC 1951) in both directions, each response
//! batch ended with a sync flush so the client can decode it at once.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Most octets one read may inflate to: a client cannot make a small read expand without
/// bound (DEFLATE's ratio is at most about 1,000:1, so 8 KiB reads stay far below this).
const MAX_INFLATE_PER_READ: usize = 16 << 20;

/// The compression state of a session.
pub struct Deflate {
    tx: Compress,
    rx: Decompress,
}

impl Default for Deflate {
    fn default() -> Self {
        Deflate {
            tx: Compress::new(Compression::default(), false),
            rx: Decompress::new(false),
        }
    }
}

impl Deflate {
    /// Compresses a batch of responses, ending with a sync flush.
    pub fn compress(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(input.len() / 2 + 256);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(input.len().max(4096));
            }
            let before_in = self.tx.total_in();
            let before_out = out.len();
            self.tx
                .compress_vec(&input[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| format!("deflate: {e}"))?;
            pos += (self.tx.total_in() - before_in) as usize;
            // The flush is complete once all input is taken and the output did not fill up.
            if pos >= input.len() && (out.len() < out.capacity() || out.len() == before_out) {
                return Ok(out);
            }
        }
    }

    /// Inflates what the client sent.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(16 * 1024);
            }
            let before_in = self.rx.total_in();
            let before_out = out.len();
            let status = self
                .rx
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::None)
                .map_err(|e| format!("inflate: {e}"))?;
            pos += (self.rx.total_in() - before_in) as usize;
            if out.len() > MAX_INFLATE_PER_READ {
                return Err("compressed input expands too far".into());
            }
            if status == Status::StreamEnd
                || (pos >= input.len() && (out.len() < out.capacity() || out.len() == before_out))
            {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_sync_flushed_pieces() {
        let mut server = Deflate::default();
        let mut client = Deflate::default();
        for msg in [&b"a NOOP\r\n"[..], &vec![b'x'; 200_000], b"b LOGOUT\r\n"] {
            let wire = client.compress(msg).unwrap();
            // Fed in odd-sized pieces, as reads would deliver it.
            let mut got = Vec::new();
            for piece in wire.chunks(7) {
                got.extend(server.decompress(piece).unwrap());
            }
            assert_eq!(got, msg);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Deflate::default();
        assert!(d.decompress(&[0xff; 64]).is_err());
    }
}
