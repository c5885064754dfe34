//! Reading RFC 9051 primitives across the parts of a framed command.
//!
//! The grammar (RFC 9051 9): `atom` is ATOM-CHARs (no `(){ %*"\]` and no CTL), `astring` also
//! allows `]`, strings are quoted (`\` escapes only `"` and `\`; 8-bit UTF-8 under IMAP4rev2)
//! or literals, `list-mailbox` also allows `%` and `*`, and a `sequence-set` is ranges of
//! `nz-number` or `*`, or `$` (SEARCHRES, RFC 5182).

use std::borrow::Cow;

use crate::frame::Part;

/// A syntax error, with the text a BAD reply should carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(msg.into()))
}

fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

/// A sequence number or `*` (the largest in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNo {
    /// A number (never 0).
    Num(u32),
    /// `*`.
    Star,
}

/// A sequence set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceSet {
    /// `$`: the saved search result (RFC 5182).
    Saved,
    /// Ranges; a single number is a range of one.
    Ranges(Vec<(SeqNo, SeqNo)>),
}

impl SequenceSet {
    /// Whether `n` is in the set, given the largest number in use (what `*` stands for).
    /// `$` matches nothing here: the session substitutes the saved result first.
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        let value = |s: SeqNo| match s {
            SeqNo::Num(v) => v,
            SeqNo::Star => largest,
        };
        match self {
            SequenceSet::Saved => false,
            // RFC 9051 9: a range may be written in either order.
            SequenceSet::Ranges(r) => r.iter().any(|(a, b)| {
                let (x, y) = (value(*a), value(*b));
                x.min(y) <= n && n <= x.max(y)
            }),
        }
    }
}

/// A cursor over a framed command.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    parts: &'a [Part],
    part: usize,
    pos: usize,
}

/// What comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A byte of a text part.
    Byte(u8),
    /// A literal.
    Literal,
    /// The end of the command.
    End,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of a command.
    pub fn new(parts: &'a [Part]) -> Cursor<'a> {
        let mut c = Cursor {
            parts,
            part: 0,
            pos: 0,
        };
        c.settle();
        c
    }

    /// Moves past empty text parts (the one after a literal is often empty).
    fn settle(&mut self) {
        while let Some(Part::Text(t)) = self.parts.get(self.part) {
            if self.pos < t.len() {
                break;
            }
            // At the end of a text part: the next part is a literal, or more text.
            if self.part + 1 >= self.parts.len() {
                break;
            }
            if matches!(self.parts.get(self.part + 1), Some(Part::Literal { .. })) {
                break;
            }
            self.part += 1;
            self.pos = 0;
        }
    }

    /// What comes next, without consuming it.
    pub fn peek(&self) -> Next {
        match self.parts.get(self.part) {
            Some(Part::Text(t)) => match t.get(self.pos) {
                Some(b) => Next::Byte(*b),
                None => match self.parts.get(self.part + 1) {
                    Some(Part::Literal { .. }) => Next::Literal,
                    _ => Next::End,
                },
            },
            Some(Part::Literal { .. }) => Next::Literal,
            None => Next::End,
        }
    }

    /// True at the end of the command.
    pub fn at_end(&self) -> bool {
        self.peek() == Next::End
    }

    /// Fails unless at the end of the command.
    pub fn end(&self) -> Result<(), SyntaxError> {
        match self.peek() {
            Next::End => Ok(()),
            _ => err("unexpected text after the end of the command"),
        }
    }

    fn bump(&mut self) {
        self.pos += 1;
        self.settle();
    }

    /// Consumes `b` if it comes next.
    pub fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Next::Byte(b) {
            self.bump();
            true
        } else {
            false
        }
    }

    /// Requires the byte `b`.
    pub fn expect(&mut self, b: u8) -> Result<(), SyntaxError> {
        if self.eat(b) {
            Ok(())
        } else {
            err(format!("expected {:?}", b as char))
        }
    }

    /// Requires one space.
    pub fn sp(&mut self) -> Result<(), SyntaxError> {
        self.expect(b' ')
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let Some(Part::Text(t)) = self.parts.get(self.part) else {
            return &[];
        };
        let start = self.pos;
        let len = t[start..].iter().take_while(|b| f(**b)).count();
        self.pos += len;
        let out = &t[start..start + len];
        self.settle();
        out
    }

    /// An atom (RFC 9051 9), e.g. a command name or a flag keyword.
    pub fn atom(&mut self) -> Result<&'a str, SyntaxError> {
        let a = self.take_while(is_atom_char);
        if a.is_empty() {
            return err("expected an atom");
        }
        // ATOM-CHARs are ASCII, so this cannot fail.
        std::str::from_utf8(a).map_err(|_| SyntaxError("atom is not ASCII".into()))
    }

    /// Letters, digits, `.` and `-` (fetch attribute and section names, which `[` ends).
    pub fn word(&mut self) -> Result<&'a str, SyntaxError> {
        let w = self.take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if w.is_empty() {
            return err("expected a name");
        }
        std::str::from_utf8(w).map_err(|_| SyntaxError("name is not ASCII".into()))
    }

    /// A flag: `\` atom (system flag or extension) or a keyword atom (RFC 9051 9).
    pub fn flag(&mut self) -> Result<String, SyntaxError> {
        let backslash = self.eat(b'\\');
        let a = self.atom()?;
        Ok(if backslash {
            format!("\\{a}")
        } else {
            a.to_string()
        })
    }

    /// A parenthesized flag list, possibly empty (`(\\Seen $Junk)`).
    pub fn flag_list(&mut self) -> Result<Vec<String>, SyntaxError> {
        let mut flags = Vec::new();
        self.list(true, |c| {
            flags.push(c.flag()?);
            Ok(())
        })?;
        Ok(flags)
    }

    /// ASCII letters only (a month name in a date).
    pub fn letters(&mut self) -> Result<&'a str, SyntaxError> {
        let w = self.take_while(|b| b.is_ascii_alphabetic());
        if w.is_empty() {
            return err("expected letters");
        }
        std::str::from_utf8(w).map_err(|_| SyntaxError("not ASCII".into()))
    }

    /// The next atom if it equals `word` (ASCII case-insensitive); otherwise nothing is read.
    pub fn keyword(&mut self, word: &str) -> bool {
        let save = (self.part, self.pos);
        match self.atom() {
            Ok(a) if a.eq_ignore_ascii_case(word) => true,
            _ => {
                (self.part, self.pos) = save;
                false
            }
        }
    }

    fn quoted(&mut self) -> Result<Vec<u8>, SyntaxError> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Next::Byte(b'"') => {
                    self.bump();
                    return Ok(out);
                }
                Next::Byte(b'\\') => {
                    self.bump();
                    match self.peek() {
                        Next::Byte(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.bump();
                        }
                        _ => return err("a backslash in a quoted string escapes only \" and \\"),
                    }
                }
                Next::Byte(b'\r' | b'\n' | 0) => return err("CR, LF or NUL in a quoted string"),
                Next::Byte(b) => {
                    out.push(b);
                    self.bump();
                }
                Next::Literal | Next::End => return err("unterminated quoted string"),
            }
        }
    }

    fn literal(&mut self) -> Result<&'a [u8], SyntaxError> {
        // At the end of a text part (or at a literal part): step onto the literal.
        if let Some(Part::Text(_)) = self.parts.get(self.part) {
            self.part += 1;
            self.pos = 0;
        }
        match self.parts.get(self.part) {
            Some(Part::Literal { data, .. }) => {
                self.part += 1;
                self.pos = 0;
                self.settle();
                Ok(data)
            }
            _ => err("expected a literal"),
        }
    }

    /// True when the next token is a literal sent as `~{n}` (RFC 3516).
    pub fn literal_is_binary(&self) -> bool {
        let idx = match self.parts.get(self.part) {
            Some(Part::Literal { .. }) => self.part,
            _ => self.part + 1,
        };
        matches!(
            self.parts.get(idx),
            Some(Part::Literal { binary: true, .. })
        )
    }

    /// A tag (RFC 9051 9: ASTRING-CHARs except `+`).
    pub fn astring_tag(&mut self) -> Result<String, SyntaxError> {
        let t = self.take_while(|b| is_astring_char(b) && b != b'+');
        if t.is_empty() || t.len() > 64 {
            return err("missing or invalid tag");
        }
        if !matches!(self.peek(), Next::Byte(b' ')) {
            return err("invalid tag");
        }
        Ok(String::from_utf8_lossy(t).into_owned())
    }

    /// A string: quoted or literal.
    pub fn string(&mut self) -> Result<Cow<'a, [u8]>, SyntaxError> {
        match self.peek() {
            Next::Byte(b'"') => Ok(Cow::Owned(self.quoted()?)),
            Next::Literal => Ok(Cow::Borrowed(self.literal()?)),
            _ => err("expected a string"),
        }
    }

    /// An astring: atom characters (with `]`) or a string.
    pub fn astring(&mut self) -> Result<Cow<'a, [u8]>, SyntaxError> {
        match self.peek() {
            Next::Byte(b'"') | Next::Literal => self.string(),
            _ => {
                let a = self.take_while(is_astring_char);
                if a.is_empty() {
                    return err("expected an atom or a string");
                }
                Ok(Cow::Borrowed(a))
            }
        }
    }

    /// An nstring: a string or NIL.
    pub fn nstring(&mut self) -> Result<Option<Cow<'a, [u8]>>, SyntaxError> {
        if self.keyword("NIL") {
            return Ok(None);
        }
        self.string().map(Some)
    }

    /// A list-mailbox pattern: list characters (with `%` and `*`) or a string.
    pub fn list_mailbox(&mut self) -> Result<Cow<'a, [u8]>, SyntaxError> {
        match self.peek() {
            Next::Byte(b'"') | Next::Literal => self.string(),
            _ => {
                let a = self.take_while(is_list_char);
                if a.is_empty() {
                    return err("expected a mailbox pattern");
                }
                Ok(Cow::Borrowed(a))
            }
        }
    }

    /// A number64 (RFC 9051 9: up to 2^63 - 1).
    pub fn number64(&mut self) -> Result<u64, SyntaxError> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() {
            return err("expected a number");
        }
        if d.len() > 19 {
            return err("number too large");
        }
        let n: u64 = std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| SyntaxError("number too large".into()))?;
        if n > i64::MAX as u64 {
            return err("number too large");
        }
        Ok(n)
    }

    /// A number (RFC 9051 9: 32 bits).
    pub fn number(&mut self) -> Result<u32, SyntaxError> {
        let n = self.number64()?;
        u32::try_from(n).map_err(|_| SyntaxError("number larger than 4294967295".into()))
    }

    /// A non-zero number.
    pub fn nz_number(&mut self) -> Result<u32, SyntaxError> {
        match self.number()? {
            0 => err("0 is not a valid message number"),
            n => Ok(n),
        }
    }

    fn seq_no(&mut self) -> Result<SeqNo, SyntaxError> {
        if self.eat(b'*') {
            Ok(SeqNo::Star)
        } else {
            self.nz_number().map(SeqNo::Num)
        }
    }

    /// A sequence set, or `$`.
    pub fn sequence_set(&mut self) -> Result<SequenceSet, SyntaxError> {
        if self.eat(b'$') {
            return Ok(SequenceSet::Saved);
        }
        let mut ranges = Vec::new();
        loop {
            let a = self.seq_no()?;
            let b = if self.eat(b':') { self.seq_no()? } else { a };
            ranges.push((a, b));
            if !self.eat(b',') {
                return Ok(SequenceSet::Ranges(ranges));
            }
        }
    }

    /// Runs `item` for each element of a parenthesized, space-separated list. With
    /// `allow_empty`, `()` is accepted.
    pub fn list(
        &mut self,
        allow_empty: bool,
        mut item: impl FnMut(&mut Cursor<'a>) -> Result<(), SyntaxError>,
    ) -> Result<(), SyntaxError> {
        self.expect(b'(')?;
        if self.eat(b')') {
            return if allow_empty {
                Ok(())
            } else {
                err("empty list")
            };
        }
        loop {
            item(self)?;
            if self.eat(b')') {
                return Ok(());
            }
            self.sp()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Part {
        Part::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn atoms_astrings_and_quoted() {
        let parts = [t(r#"a1 LOGIN alice] "p\"w\\d" NIL"#)];
        let mut c = Cursor::new(&parts);
        assert_eq!(c.atom().unwrap(), "a1");
        c.sp().unwrap();
        assert!(c.keyword("login"));
        c.sp().unwrap();
        assert_eq!(&*c.astring().unwrap(), b"alice]");
        c.sp().unwrap();
        assert_eq!(&*c.astring().unwrap(), br#"p"w\d"#);
        c.sp().unwrap();
        assert_eq!(c.nstring().unwrap(), None);
        c.end().unwrap();
    }

    #[test]
    fn literals_between_text_parts() {
        let parts = [
            t("a LOGIN "),
            Part::Literal {
                data: b"al ice".to_vec(),
                binary: false,
            },
            t(" "),
            Part::Literal {
                data: b"pw".to_vec(),
                binary: false,
            },
            t(""),
        ];
        let mut c = Cursor::new(&parts);
        c.atom().unwrap();
        c.sp().unwrap();
        c.atom().unwrap();
        c.sp().unwrap();
        assert_eq!(c.peek(), Next::Literal);
        assert_eq!(&*c.astring().unwrap(), b"al ice");
        c.sp().unwrap();
        assert_eq!(&*c.string().unwrap(), b"pw");
        assert!(c.at_end());
    }

    #[test]
    fn sequence_sets() {
        let parts = [t("1:5,7,*:9 $ 0 4294967296")];
        let mut c = Cursor::new(&parts);
        let s = c.sequence_set().unwrap();
        assert!(s.contains(3, 20) && s.contains(7, 20) && s.contains(15, 20) && !s.contains(6, 20));
        c.sp().unwrap();
        assert_eq!(c.sequence_set().unwrap(), SequenceSet::Saved);
        c.sp().unwrap();
        assert!(c.sequence_set().is_err(), "0 is not a sequence number");
        let parts = [t("4294967296")];
        assert!(Cursor::new(&parts).number().is_err());
    }

    #[test]
    fn lists_and_patterns() {
        let parts = [t(r#"(\Seen $Junk) () "INBOX/*" Lists/%"#)];
        let mut c = Cursor::new(&parts);
        let mut flags = Vec::new();
        c.list(false, |c| {
            c.eat(b'\\');
            flags.push(c.atom()?.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(flags, ["Seen", "$Junk"]);
        c.sp().unwrap();
        c.list(true, |_| Ok(())).unwrap();
        c.sp().unwrap();
        assert_eq!(&*c.list_mailbox().unwrap(), b"INBOX/*");
        c.sp().unwrap();
        assert_eq!(&*c.list_mailbox().unwrap(), b"Lists/%");
        c.end().unwrap();
    }

    #[test]
    fn bad_input_gives_errors_not_panics() {
        for s in ["\"open", "\"bad\\x\"", "(a b", "", "\"cr\r\""] {
            let parts = [t(s)];
            let mut c = Cursor::new(&parts);
            let r = c
                .astring()
                .and_then(|_| c.end())
                .or_else(|_| c.list(false, |c| c.atom().map(|_| ())));
            assert!(r.is_err(), "{s:?}");
        }
    }
}
