//! The DATA decoder (sans I/O): finds the end of data and undoes dot-stuffing.
//!
//! Implementation notes (SMTP smuggling, CVE-2023-51764/51765/51766):
//! - The end of data is only `CRLF . CRLF` (RFC 5321 4.1.1.4). `LF . LF`, `CR . CR`,
//!   `LF . CRLF` and `CRLF . LF` are not ends: they are data.
//! - A bare LF or a bare CR anywhere in the data marks the message as refused, but the decoder
//!   keeps reading to the real end. So whatever an attacker hides behind a sloppy end marker
//!   stays inside the refused message and is never read as a new SMTP command.
//! - Memory is bounded: content beyond the size limit and over-long lines are counted, not kept.

/// Why a message was refused after its end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// Larger than the size limit.
    TooBig,
    /// A bare LF or CR (smuggling defence).
    BareLineBreak,
    /// A line longer than the limit.
    LineTooLong,
    /// The header section is larger than the limit.
    HeaderTooBig,
}

/// Decodes DATA content as it arrives.
#[derive(Debug)]
pub struct DataDecoder {
    max_size: usize,
    max_line: usize,
    max_header: usize,
    out: Vec<u8>,
    line: Vec<u8>,
    line_len: usize,
    in_header: bool,
    header_bytes: usize,
    problem: Option<DataProblem>,
    received: usize,
    /// Whether the previous line ended with CRLF: the end marker must follow a CRLF.
    prev_crlf: bool,
    /// The last byte fed, to see a CR split from its LF across reads.
    last_byte: u8,
}

impl DataDecoder {
    /// A decoder with the given limits (bytes).
    pub fn new(max_size: usize, max_line: usize, max_header: usize) -> DataDecoder {
        DataDecoder {
            max_size,
            max_line,
            max_header,
            out: Vec::with_capacity(8192.min(max_size)),
            line: Vec::with_capacity(256),
            line_len: 0,
            in_header: true,
            header_bytes: 0,
            problem: None,
            received: 0,
            prev_crlf: true,
            last_byte: 0,
        }
    }

    fn flag(&mut self, p: DataProblem) {
        // The first problem found is the one reported.
        if self.problem.is_none() {
            self.problem = Some(p);
        }
    }

    /// Feeds bytes; returns how many were consumed and whether the end of data was reached.
    /// Bytes after the end are not consumed: they are the next command (PIPELINING).
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let (chunk, has_lf) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..=i], true),
                None => (rest, false),
            };
            pos += chunk.len();
            let before_last = match chunk.len() {
                1 => self.last_byte,
                n => chunk[n - 2],
            };
            self.last_byte = chunk[chunk.len() - 1];
            self.received += chunk.len();
            self.line_len += chunk.len();
            // Keep at most max_line + 2 bytes of a line; only the flag matters past that.
            let room = (self.max_line + 2).saturating_sub(self.line.len());
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if !has_lf {
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let len = std::mem::replace(&mut self.line_len, 0);
            if self.end_line(&line, len, before_last == b'\r') {
                return (pos, true);
            }
            self.line = line;
            self.line.clear();
        }
        (pos, false)
    }

    /// Handles one complete line (ending in LF); true at the end of data.
    fn end_line(&mut self, line: &[u8], len: usize, crlf: bool) -> bool {
        let truncated = len > line.len();
        let proper = crlf;
        if proper && self.prev_crlf && line == b".\r\n" {
            return true; // RFC 5321 4.1.1.4: CRLF . CRLF
        }
        self.prev_crlf = proper;
        if len > self.max_line + 2 {
            self.flag(DataProblem::LineTooLong);
        }
        if truncated {
            // Only the flag matters for an over-long line; its content is never stored.
            return false;
        }
        let content = if proper {
            &line[..line.len() - 2]
        } else {
            // A line ending in a bare LF.
            self.flag(DataProblem::BareLineBreak);
            &line[..line.len() - 1]
        };
        if content.contains(&b'\r') {
            self.flag(DataProblem::BareLineBreak);
        }
        // RFC 5321 4.5.2: remove the leading dot of a stuffed line.
        let content = content.strip_prefix(b".").unwrap_or(content);
        if self.in_header {
            self.header_bytes += len;
            if content.is_empty() {
                self.in_header = false;
            } else if self.header_bytes > self.max_header {
                self.flag(DataProblem::HeaderTooBig);
            }
        }
        if self.out.len() + content.len() + 2 > self.max_size {
            self.flag(DataProblem::TooBig);
        } else if self.problem.is_none() {
            self.out.extend_from_slice(content);
            self.out.extend_from_slice(b"\r\n");
        }
        false
    }

    /// Bytes received so far (before unstuffing).
    pub fn received(&self) -> usize {
        self.received
    }

    /// The message, or why it is refused.
    pub fn finish(self) -> Result<Vec<u8>, DataProblem> {
        match self.problem {
            Some(p) => Err(p),
            None => Ok(self.out),
        }
    }
}

/// Checks a complete message received with BDAT (RFC 3030): no framing to confuse, so bare
/// line breaks are normalized to CRLF rather than refused; size and header limits still apply.
pub fn check_bdat(
    data: Vec<u8>,
    max_line: usize,
    max_header: usize,
) -> Result<Vec<u8>, DataProblem> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut line_len = 0usize;
    let mut in_header = true;
    let mut header_bytes = 0usize;
    let mut line_start = 0usize;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match b {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            _ => {
                out.push(b);
                line_len += 1;
                i += 1;
                if line_len > max_line {
                    return Err(DataProblem::LineTooLong);
                }
                continue;
            }
        }
        i += 1;
        if in_header {
            header_bytes += out.len() - line_start;
            if line_len == 0 {
                in_header = false;
            } else if header_bytes > max_header {
                return Err(DataProblem::HeaderTooBig);
            }
        }
        line_len = 0;
        line_start = out.len();
    }
    if line_len > 0 {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> (Result<Vec<u8>, DataProblem>, usize, bool) {
        let mut d = DataDecoder::new(1 << 20, 1000, 10000);
        let (n, done) = d.feed(input);
        (d.finish(), n, done)
    }

    #[test]
    fn plain_message_and_dot_unstuffing() {
        let (r, n, done) = decode(b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n");
        assert!(done);
        assert_eq!(n, b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n".len());
        assert_eq!(r.unwrap(), b"Subject: x\r\n\r\n.dot\r\nbody\r\n");
    }

    #[test]
    fn byte_by_byte_is_the_same() {
        let input = b"A: b\r\n\r\nx\r\n.\r\n";
        let mut d = DataDecoder::new(1 << 20, 1000, 10000);
        let mut done = false;
        for (i, b) in input.iter().enumerate() {
            let (n, end) = d.feed(std::slice::from_ref(b));
            assert_eq!(n, 1);
            if end {
                assert_eq!(i, input.len() - 1);
                done = true;
            }
        }
        assert!(done);
        assert_eq!(d.finish().unwrap(), b"A: b\r\n\r\nx\r\n");
    }

    #[test]
    fn smuggling_variants_are_not_ends() {
        for sloppy in [&b"\n.\n"[..], b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r"] {
            let mut input = b"Subject: a\r\n\r\nhello".to_vec();
            input.extend_from_slice(sloppy);
            input.extend_from_slice(
                b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nforged\r\n.\r\n",
            );
            let (r, n, done) = decode(&input);
            assert!(done, "real end found for {sloppy:?}");
            assert_eq!(
                n,
                input.len(),
                "the smuggled commands were consumed as data"
            );
            assert_eq!(r.unwrap_err(), DataProblem::BareLineBreak, "{sloppy:?}");
        }
    }

    #[test]
    fn size_limit_counts_without_keeping() {
        let mut d = DataDecoder::new(100, 1000, 1000);
        let big = vec![b'a'; 500];
        d.feed(&big);
        d.feed(b"\r\n");
        let (_, done) = d.feed(b".\r\n");
        assert!(done);
        assert_eq!(d.finish().unwrap_err(), DataProblem::TooBig);
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut d = DataDecoder::new(1 << 20, 1000, 100_000);
        d.feed(b"Subject: x\r\n\r\n");
        for _ in 0..100 {
            d.feed(&[b'x'; 1000]);
        }
        assert!(d.line.len() <= 1002, "memory for one line is bounded");
        let (_, done) = d.feed(b"\r\n.\r\n");
        assert!(done);
        assert_eq!(d.finish().unwrap_err(), DataProblem::LineTooLong);
    }

    #[test]
    fn huge_header_is_refused() {
        let mut d = DataDecoder::new(1 << 20, 1000, 2000);
        for _ in 0..50 {
            d.feed(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        d.feed(b"\r\nbody\r\n.\r\n");
        assert_eq!(d.finish().unwrap_err(), DataProblem::HeaderTooBig);
    }

    #[test]
    fn bdat_normalizes_line_breaks() {
        assert_eq!(
            check_bdat(b"A: b\n\nx\ry\r\n".to_vec(), 1000, 1000).unwrap(),
            b"A: b\r\n\r\nx\r\ny\r\n"
        );
        assert_eq!(
            check_bdat(b"A: b\r\n\r\nx".to_vec(), 1000, 1000).unwrap(),
            b"A: b\r\n\r\nx\r\n"
        );
        assert_eq!(
            check_bdat(vec![b'a'; 2000], 1000, 1000).unwrap_err(),
            DataProblem::LineTooLong
        );
    }
}
