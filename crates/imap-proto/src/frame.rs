//! Framing: from client bytes to whole commands, with a decision point before every literal.
//!
//! Implementation notes:
//! - A command is one or more line segments; every segment but the last ends with a literal
//!   announcement `{n}`, `{n+}` (LITERAL+/LITERAL-, RFC 7888) or `~{n}` (literal8, RFC 3516)
//!   followed by CRLF, and then the literal's n bytes (RFC 9051 4.3).
//! - When a segment ends with an announcement, [`Framer::next_event`] returns
//!   [`Event::Literal`] and reads nothing more until the caller says [`Framer::accept`] (for a
//!   synchronizing literal it then sends `+`) or [`Framer::reject`]. So a size limit is applied
//!   before a single literal byte is read or stored (literal-size DoS).
//! - A rejected synchronizing literal ends the command: the client sends nothing until it gets
//!   `+`, so the next bytes are a new command. A rejected non-synchronizing literal is already
//!   on its way: its bytes are counted and dropped, and so is the rest of that command, which
//!   is then reported as [`Event::Discarded`].
//! - A line longer than the limit is dropped up to its LF and reported as
//!   [`Event::LineTooLong`]; the session goes on.

/// Limits of the framer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line segment in bytes (without literals).
    pub max_line: usize,
    /// Most literals in one command.
    pub max_literals: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            max_literals: 1000,
        }
    }
}

/// How a literal was announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralMode {
    /// `{n}`: the client waits for a continuation request.
    Sync,
    /// `{n+}`: the client sends the bytes at once (LITERAL+ / LITERAL-).
    NonSync,
}

/// One part of a framed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A line segment, without its literal announcement and without CRLF.
    Text(Vec<u8>),
    /// A literal's bytes.
    Literal {
        /// The content.
        data: Vec<u8>,
        /// `~{n}`: may contain NUL (RFC 3516).
        binary: bool,
    },
}

/// What the framer has found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete command.
    Command(Vec<Part>),
    /// A literal is announced; call [`Framer::accept`] or [`Framer::reject`].
    Literal {
        /// The command's tag, if it could be read.
        tag: Option<Vec<u8>>,
        /// Announced length.
        length: u64,
        /// Synchronizing or not.
        mode: LiteralMode,
        /// `~{n}`.
        binary: bool,
        /// Literals of this command before this one.
        index: usize,
        /// Bytes of this command's earlier literals.
        accepted_bytes: u64,
    },
    /// A command was dropped after a refused literal; answer BAD (or NO) to this tag.
    Discarded {
        /// The tag, if it could be read.
        tag: Option<Vec<u8>>,
    },
    /// A line was over the limit and was dropped.
    LineTooLong {
        /// The tag, if it could be read.
        tag: Option<Vec<u8>>,
    },
    /// A literal announcement that is not a valid number, or too many literals.
    BadLiteral {
        /// The tag, if it could be read.
        tag: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a line segment.
    Line,
    /// A literal was announced; waiting for the caller.
    Decide {
        length: u64,
        mode: LiteralMode,
        binary: bool,
    },
    /// Reading an accepted literal.
    Literal { remaining: u64, binary: bool },
    /// Dropping a refused literal, then the rest of the command.
    Skip { remaining: u64 },
    /// Dropping the rest of an over-long line.
    DropLine,
}

/// The framer. Feed bytes with [`Framer::push`], take events with [`Framer::next_event`].
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    buf: Vec<u8>,
    state: State,
    parts: Vec<Part>,
    poisoned: bool,
    literals: usize,
    literal_bytes: u64,
}

fn tag_of(line: &[u8]) -> Option<Vec<u8>> {
    let end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
    let tag = &line[..end];
    // RFC 9051 9: tag = 1*<any ASTRING-CHAR except "+">.
    if tag.is_empty()
        || tag.len() > 64
        || !tag.iter().all(|b| {
            b.is_ascii_graphic()
                && !matches!(b, b'+' | b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\')
        })
    {
        return None;
    }
    Some(tag.to_vec())
}

/// Splits `{n}`, `{n+}` or `~{n}` off the end of a line (without CRLF).
fn announcement(line: &[u8]) -> Option<Result<(usize, u64, LiteralMode, bool), ()>> {
    if line.last() != Some(&b'}') {
        return None;
    }
    let open = line.iter().rposition(|b| *b == b'{')?;
    let inner = &line[open + 1..line.len() - 1];
    let (digits, mode) = match inner.strip_suffix(b"+") {
        Some(d) => (d, LiteralMode::NonSync),
        None => (inner, LiteralMode::Sync),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // RFC 9051 9: number is at most 2^32 - 1 (literal8 allows number64; we take u64).
    let length = match std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
    {
        Some(n) if digits.len() <= 19 => n,
        _ => return Some(Err(())),
    };
    let binary = open > 0 && line[open - 1] == b'~';
    let cut = if binary { open - 1 } else { open };
    Some(Ok((cut, length, mode, binary)))
}

impl Framer {
    /// A framer with these limits.
    pub fn new(limits: Limits) -> Framer {
        Framer {
            limits,
            buf: Vec::new(),
            state: State::Line,
            parts: Vec::new(),
            poisoned: false,
            literals: 0,
            literal_bytes: 0,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet framed (e.g. to discard after STARTTLS).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drops everything buffered and any command in progress.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.reset_command();
        self.state = State::Line;
    }

    /// Gives back buffer memory when nothing is buffered (an idle connection keeps none).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
        if self.parts.is_empty() && self.parts.capacity() > 0 {
            self.parts = Vec::new();
        }
    }

    /// Takes the bytes not yet framed (e.g. the rest of an IDLE `DONE` line or a
    /// COMPRESS switch), leaving the framer empty.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    fn reset_command(&mut self) {
        self.parts.clear();
        self.poisoned = false;
        self.literals = 0;
        self.literal_bytes = 0;
    }

    fn current_tag(&self) -> Option<Vec<u8>> {
        match self.parts.first() {
            Some(Part::Text(t)) => tag_of(t),
            _ => None,
        }
    }

    /// Accepts the announced literal: for [`LiteralMode::Sync`] the caller now sends a
    /// continuation request (`+ ...`).
    pub fn accept(&mut self) {
        if let State::Decide { length, binary, .. } = self.state {
            self.literals += 1;
            self.literal_bytes += length;
            // Capacity grows with what arrives, not with what was announced.
            self.parts.push(Part::Literal {
                data: Vec::with_capacity(length.min(64 * 1024) as usize),
                binary,
            });
            self.state = State::Literal {
                remaining: length,
                binary,
            };
        }
    }

    /// Refuses the announced literal; the command ends (synchronizing) or is skipped to its
    /// end and then reported as [`Event::Discarded`] (non-synchronizing).
    pub fn reject(&mut self) {
        if let State::Decide { length, mode, .. } = self.state {
            match mode {
                LiteralMode::Sync => {
                    self.reset_command();
                    self.state = State::Line;
                }
                LiteralMode::NonSync => {
                    self.poisoned = true;
                    self.state = State::Skip { remaining: length };
                }
            }
        }
    }

    /// The next event, or None when more bytes are needed (or a decision is pending).
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.state {
                State::Decide { .. } => return None,
                State::Literal { remaining, binary } => {
                    if remaining > 0 && self.buf.is_empty() {
                        return None;
                    }
                    let n = (remaining.min(self.buf.len() as u64)) as usize;
                    if let Some(Part::Literal { data, .. }) = self.parts.last_mut() {
                        data.extend(self.buf.drain(..n));
                    }
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::Line
                    } else {
                        State::Literal {
                            remaining: left,
                            binary,
                        }
                    };
                    if left > 0 {
                        return None;
                    }
                }
                State::Skip { remaining } => {
                    let n = (remaining.min(self.buf.len() as u64)) as usize;
                    self.buf.drain(..n);
                    let left = remaining - n as u64;
                    if left > 0 {
                        self.state = State::Skip { remaining: left };
                        return None;
                    }
                    self.state = State::Line;
                }
                State::DropLine => {
                    match self.buf.iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            self.buf.drain(..=i);
                            self.state = State::Line;
                            let tag = self.current_tag();
                            self.reset_command();
                            return Some(Event::LineTooLong { tag });
                        }
                        None => {
                            // Keep only what could start the tag, never the whole line.
                            self.buf.clear();
                            return None;
                        }
                    }
                }
                State::Line => {
                    let Some(lf) = self.buf.iter().position(|b| *b == b'\n') else {
                        if self.buf.len() > self.limits.max_line {
                            if self.parts.is_empty() {
                                let head = self.buf[..self.buf.len().min(80)].to_vec();
                                self.parts.push(Part::Text(head));
                            }
                            self.state = State::DropLine;
                            continue;
                        }
                        return None;
                    };
                    if lf > self.limits.max_line {
                        if self.parts.is_empty() {
                            let head = self.buf[..lf.min(80)].to_vec();
                            self.parts.push(Part::Text(head));
                        }
                        self.state = State::DropLine;
                        continue;
                    }
                    let mut line: Vec<u8> = self.buf.drain(..=lf).collect();
                    line.pop(); // LF
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    match announcement(&line) {
                        None => {
                            if !self.poisoned {
                                self.parts.push(Part::Text(line));
                            }
                            let parts = std::mem::take(&mut self.parts);
                            let poisoned = self.poisoned;
                            let tag = match parts.first() {
                                Some(Part::Text(t)) => tag_of(t),
                                _ => None,
                            };
                            self.reset_command();
                            return Some(if poisoned {
                                Event::Discarded { tag }
                            } else {
                                Event::Command(parts)
                            });
                        }
                        Some(Err(())) => {
                            if !self.poisoned {
                                self.parts.push(Part::Text(line));
                            }
                            let tag = self.current_tag();
                            self.reset_command();
                            return Some(Event::BadLiteral { tag });
                        }
                        Some(Ok((cut, length, mode, binary))) => {
                            if self.poisoned {
                                // Still skipping this command: a further non-synchronizing
                                // literal is dropped too; a synchronizing one will never come.
                                if mode == LiteralMode::NonSync {
                                    self.state = State::Skip { remaining: length };
                                    continue;
                                }
                                let tag = self.current_tag();
                                self.reset_command();
                                return Some(Event::Discarded { tag });
                            }
                            line.truncate(cut);
                            self.parts.push(Part::Text(line));
                            if self.literals >= self.limits.max_literals {
                                let tag = self.current_tag();
                                if mode == LiteralMode::NonSync {
                                    self.poisoned = true;
                                    self.state = State::Skip { remaining: length };
                                    continue;
                                }
                                self.reset_command();
                                return Some(Event::BadLiteral { tag });
                            }
                            self.state = State::Decide {
                                length,
                                mode,
                                binary,
                            };
                            return Some(Event::Literal {
                                tag: self.current_tag(),
                                length,
                                mode,
                                binary,
                                index: self.literals,
                                accepted_bytes: self.literal_bytes,
                            });
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Part {
        Part::Text(s.as_bytes().to_vec())
    }

    fn lit(s: &str) -> Part {
        Part::Literal {
            data: s.as_bytes().to_vec(),
            binary: false,
        }
    }

    #[test]
    fn simple_lines_and_pipelining() {
        let mut f = Framer::new(Limits::default());
        f.push(b"a1 NOOP\r\na2 CAPABILITY\r\na3 LOG");
        assert_eq!(f.next_event(), Some(Event::Command(vec![text("a1 NOOP")])));
        assert_eq!(
            f.next_event(),
            Some(Event::Command(vec![text("a2 CAPABILITY")]))
        );
        assert_eq!(f.next_event(), None);
        f.push(b"OUT\r\n");
        assert_eq!(
            f.next_event(),
            Some(Event::Command(vec![text("a3 LOGOUT")]))
        );
    }

    #[test]
    fn synchronizing_literal_waits_for_the_decision() {
        let mut f = Framer::new(Limits::default());
        f.push(b"a LOGIN {5}\r\n");
        match f.next_event() {
            Some(Event::Literal {
                tag,
                length: 5,
                mode: LiteralMode::Sync,
                binary: false,
                index: 0,
                ..
            }) => {
                assert_eq!(tag.as_deref(), Some(&b"a"[..]));
            }
            other => panic!("{other:?}"),
        }
        // Nothing more until the caller decides.
        f.push(b"alice {6+}\r\nsecret\r\n");
        assert_eq!(f.next_event(), None);
        f.accept();
        match f.next_event() {
            Some(Event::Literal {
                length: 6,
                mode: LiteralMode::NonSync,
                index: 1,
                accepted_bytes: 5,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        f.accept();
        assert_eq!(
            f.next_event(),
            Some(Event::Command(vec![
                text("a LOGIN "),
                lit("alice"),
                text(" "),
                lit("secret"),
                text("")
            ]))
        );
    }

    #[test]
    fn literal_split_across_reads_and_binary_literal() {
        let mut f = Framer::new(Limits::default());
        f.push(b"b APPEND INBOX ~{4}\r\n");
        assert!(matches!(
            f.next_event(),
            Some(Event::Literal {
                binary: true,
                length: 4,
                ..
            })
        ));
        f.accept();
        f.push(b"a\0");
        assert_eq!(f.next_event(), None);
        f.push(b"bc\r\n");
        assert_eq!(
            f.next_event(),
            Some(Event::Command(vec![
                text("b APPEND INBOX "),
                Part::Literal {
                    data: b"a\0bc".to_vec(),
                    binary: true
                },
                text("")
            ]))
        );
    }

    #[test]
    fn rejected_sync_literal_ends_the_command() {
        let mut f = Framer::new(Limits::default());
        f.push(b"c APPEND INBOX {999999999}\r\n");
        assert!(matches!(
            f.next_event(),
            Some(Event::Literal {
                length: 999999999,
                ..
            })
        ));
        f.reject();
        f.push(b"d NOOP\r\n");
        assert_eq!(f.next_event(), Some(Event::Command(vec![text("d NOOP")])));
    }

    #[test]
    fn rejected_nonsync_literal_is_skipped_without_being_kept() {
        let mut f = Framer::new(Limits {
            max_line: 100,
            max_literals: 10,
        });
        f.push(b"e APPEND INBOX {20+}\r\n");
        assert!(matches!(
            f.next_event(),
            Some(Event::Literal {
                mode: LiteralMode::NonSync,
                ..
            })
        ));
        f.reject();
        f.push(b"0123456789");
        assert_eq!(f.next_event(), None);
        assert_eq!(f.buffered(), 0, "skipped bytes are not kept");
        // The literal's end, then more of the command with another literal, then its end.
        f.push(b"0123456789 {3+}\r\nxyz)\r\nf NOOP\r\n");
        assert_eq!(
            f.next_event(),
            Some(Event::Discarded {
                tag: Some(b"e".to_vec())
            })
        );
        assert_eq!(f.next_event(), Some(Event::Command(vec![text("f NOOP")])));
    }

    #[test]
    fn over_long_lines_are_dropped_and_memory_stays_bounded() {
        let mut f = Framer::new(Limits {
            max_line: 100,
            max_literals: 10,
        });
        f.push(b"g SEARCH ");
        for _ in 0..1000 {
            f.push(&[b'x'; 1000]);
            assert_eq!(f.next_event(), None);
            assert!(f.buffered() <= 1000 + 100, "{}", f.buffered());
        }
        f.push(b"\r\nh NOOP\r\n");
        assert_eq!(
            f.next_event(),
            Some(Event::LineTooLong {
                tag: Some(b"g".to_vec())
            })
        );
        assert_eq!(f.next_event(), Some(Event::Command(vec![text("h NOOP")])));
    }

    #[test]
    fn bad_literal_numbers() {
        let mut f = Framer::new(Limits::default());
        f.push(b"i LOGIN {99999999999999999999999}\r\n");
        assert_eq!(
            f.next_event(),
            Some(Event::BadLiteral {
                tag: Some(b"i".to_vec())
            })
        );
        // Not an announcement at all: braces without digits are just text.
        f.push(b"j LOGIN {x}\r\n");
        assert_eq!(
            f.next_event(),
            Some(Event::Command(vec![text("j LOGIN {x}")]))
        );
    }

    #[test]
    fn too_many_literals() {
        let mut f = Framer::new(Limits {
            max_line: 100,
            max_literals: 1,
        });
        f.push(b"k X {1}\r\n");
        assert!(matches!(f.next_event(), Some(Event::Literal { .. })));
        f.accept();
        f.push(b"a {1}\r\n");
        assert_eq!(
            f.next_event(),
            Some(Event::BadLiteral {
                tag: Some(b"k".to_vec())
            })
        );
    }
}
