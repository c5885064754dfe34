//! Selected-state commands: SEARCH (RFC 9051 6.4.4, ESEARCH RFC 4731, SEARCHRES RFC 5182,
//! CONDSTORE RFC 7162), FETCH (6.4.5, BINARY RFC 3516, CHANGEDSINCE/VANISHED), STORE (6.4.6,
//! UNCHANGEDSINCE), COPY/MOVE (6.4.7, RFC 6851), SORT and THREAD (RFC 5256).

use crate::cursor::{Cursor, Next, SequenceSet, SyntaxError};

fn err<T>(msg: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(msg.into()))
}

/// Deepest nesting of NOT, OR and parentheses in a search (a stack-depth DoS bound).
pub const MAX_SEARCH_DEPTH: usize = 32;

/// A calendar date of SEARCH (`1-Feb-1994`), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Year.
    pub year: u16,
    /// Month, 1-12.
    pub month: u8,
    /// Day, 1-31.
    pub day: u8,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

fn date(c: &mut Cursor<'_>) -> Result<Date, SyntaxError> {
    // RFC 9051 9: date = date-text / DQUOTE date-text DQUOTE.
    let quoted = c.eat(b'"');
    let day = c.number()?;
    c.expect(b'-')?;
    let mon = c.letters()?;
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(mon))
        .ok_or_else(|| SyntaxError(format!("bad month {mon:?}")))? as u8
        + 1;
    c.expect(b'-')?;
    let year = c.number()?;
    if quoted {
        c.expect(b'"')?;
    }
    let days_in_month = match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=days_in_month).contains(&day) || !(1..=9999).contains(&year) {
        return err("invalid date");
    }
    Ok(Date {
        year: year as u16,
        month,
        day: day as u8,
    })
}

/// One search criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    /// ALL.
    All,
    /// A message flag is set (`\Seen`, `$Junk`...): ANSWERED, DELETED, DRAFT, FLAGGED, SEEN,
    /// RECENT, KEYWORD x.
    Flag(String),
    /// The flag is not set: UNANSWERED ... UNKEYWORD x.
    NoFlag(String),
    /// NEW (RECENT UNSEEN).
    New,
    /// OLD (NOT RECENT).
    Old,
    /// HEADER field value (an empty value matches any message with the field).
    Header(String, Vec<u8>),
    /// BODY text.
    Body(Vec<u8>),
    /// TEXT text (header and body).
    Text(Vec<u8>),
    /// Internal date before.
    Before(Date),
    /// Internal date on.
    On(Date),
    /// Internal date since.
    Since(Date),
    /// Date: header before.
    SentBefore(Date),
    /// Date: header on.
    SentOn(Date),
    /// Date: header since.
    SentSince(Date),
    /// Larger than.
    Larger(u64),
    /// Smaller than.
    Smaller(u64),
    /// UID set.
    Uid(SequenceSet),
    /// Message sequence set.
    Seq(SequenceSet),
    /// NOT.
    Not(Box<SearchKey>),
    /// OR.
    Or(Box<SearchKey>, Box<SearchKey>),
    /// A parenthesized list: all must match.
    And(Vec<SearchKey>),
    /// MODSEQ n (RFC 7162 3.1.5): changed at or after.
    ModSeq(u64),
    /// OLDER seconds (RFC 5032).
    Older(u32),
    /// YOUNGER seconds (RFC 5032).
    Younger(u32),
}

/// ESEARCH return options (RFC 4731, RFC 5182).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchReturn {
    /// MIN.
    pub min: bool,
    /// MAX.
    pub max: bool,
    /// ALL.
    pub all: bool,
    /// COUNT.
    pub count: bool,
    /// SAVE (SEARCHRES).
    pub save: bool,
}

fn astring_vec(c: &mut Cursor<'_>) -> Result<Vec<u8>, SyntaxError> {
    Ok(c.astring()?.into_owned())
}

fn keyword(c: &mut Cursor<'_>) -> Result<String, SyntaxError> {
    let a = c.atom()?;
    Ok(a.to_string())
}

fn search_key(c: &mut Cursor<'_>, depth: usize) -> Result<SearchKey, SyntaxError> {
    if depth > MAX_SEARCH_DEPTH {
        return err("search nested too deeply");
    }
    match c.peek() {
        Next::Byte(b'(') => {
            let mut keys = Vec::new();
            c.list(false, |c| {
                keys.push(search_key(c, depth + 1)?);
                Ok(())
            })?;
            return Ok(SearchKey::And(keys));
        }
        Next::Byte(b'0'..=b'9' | b'*' | b'$') => return Ok(SearchKey::Seq(c.sequence_set()?)),
        _ => {}
    }
    let name = c.atom()?.to_ascii_uppercase();
    let flag = |f: &str| SearchKey::Flag(f.into());
    let noflag = |f: &str| SearchKey::NoFlag(f.into());
    Ok(match name.as_str() {
        "ALL" => SearchKey::All,
        "ANSWERED" => flag("\\Answered"),
        "DELETED" => flag("\\Deleted"),
        "DRAFT" => flag("\\Draft"),
        "FLAGGED" => flag("\\Flagged"),
        "SEEN" => flag("\\Seen"),
        "RECENT" => flag("\\Recent"),
        "UNANSWERED" => noflag("\\Answered"),
        "UNDELETED" => noflag("\\Deleted"),
        "UNDRAFT" => noflag("\\Draft"),
        "UNFLAGGED" => noflag("\\Flagged"),
        "UNSEEN" => noflag("\\Seen"),
        "NEW" => SearchKey::New,
        "OLD" => SearchKey::Old,
        "KEYWORD" | "UNKEYWORD" => {
            c.sp()?;
            let k = keyword(c)?;
            if name == "KEYWORD" {
                SearchKey::Flag(k)
            } else {
                SearchKey::NoFlag(k)
            }
        }
        "BCC" | "CC" | "FROM" | "TO" | "SUBJECT" => {
            c.sp()?;
            let field = match name.as_str() {
                "BCC" => "Bcc",
                "CC" => "Cc",
                "FROM" => "From",
                "TO" => "To",
                _ => "Subject",
            };
            SearchKey::Header(field.into(), astring_vec(c)?)
        }
        "HEADER" => {
            c.sp()?;
            let field = String::from_utf8(astring_vec(c)?)
                .map_err(|_| SyntaxError("header field name is not ASCII".into()))?;
            c.sp()?;
            SearchKey::Header(field, astring_vec(c)?)
        }
        "BODY" => {
            c.sp()?;
            SearchKey::Body(astring_vec(c)?)
        }
        "TEXT" => {
            c.sp()?;
            SearchKey::Text(astring_vec(c)?)
        }
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
            c.sp()?;
            let d = date(c)?;
            match name.as_str() {
                "BEFORE" => SearchKey::Before(d),
                "ON" => SearchKey::On(d),
                "SINCE" => SearchKey::Since(d),
                "SENTBEFORE" => SearchKey::SentBefore(d),
                "SENTON" => SearchKey::SentOn(d),
                _ => SearchKey::SentSince(d),
            }
        }
        "LARGER" => {
            c.sp()?;
            SearchKey::Larger(c.number64()?)
        }
        "SMALLER" => {
            c.sp()?;
            SearchKey::Smaller(c.number64()?)
        }
        "UID" => {
            c.sp()?;
            SearchKey::Uid(c.sequence_set()?)
        }
        "NOT" => {
            c.sp()?;
            SearchKey::Not(Box::new(search_key(c, depth + 1)?))
        }
        "OR" => {
            c.sp()?;
            let a = search_key(c, depth + 1)?;
            c.sp()?;
            let b = search_key(c, depth + 1)?;
            SearchKey::Or(Box::new(a), Box::new(b))
        }
        "MODSEQ" => {
            c.sp()?;
            // RFC 7162 3.1.5: optional entry name and type, then the value.
            if c.peek() == Next::Byte(b'"') {
                c.string()?;
                c.sp()?;
                let t = c.atom()?.to_ascii_lowercase();
                if !matches!(t.as_str(), "priv" | "shared" | "all") {
                    return err("MODSEQ entry type must be priv, shared or all");
                }
                c.sp()?;
            }
            SearchKey::ModSeq(c.number64()?)
        }
        "OLDER" | "YOUNGER" => {
            c.sp()?;
            let n = c.nz_number()?;
            if name == "OLDER" {
                SearchKey::Older(n)
            } else {
                SearchKey::Younger(n)
            }
        }
        other => return err(format!("unknown search key {other}")),
    })
}

/// A search program: optional CHARSET, then keys that must all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchProgram {
    /// CHARSET, upper case.
    pub charset: Option<String>,
    /// The keys (implicit AND).
    pub keys: Vec<SearchKey>,
}

fn search_program(
    c: &mut Cursor<'_>,
    charset_required: bool,
) -> Result<SearchProgram, SyntaxError> {
    let mut charset = None;
    if charset_required {
        charset = Some(c.astring()?.to_ascii_uppercase());
        c.sp()?;
    } else if c.keyword("CHARSET") {
        c.sp()?;
        charset = Some(c.astring()?.to_ascii_uppercase());
        c.sp()?;
    }
    let charset = charset.map(|v| String::from_utf8_lossy(&v).into_owned());
    let mut keys = vec![search_key(c, 0)?];
    while c.eat(b' ') {
        keys.push(search_key(c, 0)?);
    }
    Ok(SearchProgram { charset, keys })
}

/// SEARCH [RETURN (...)] program.
pub fn search(c: &mut Cursor<'_>) -> Result<(Option<SearchReturn>, SearchProgram), SyntaxError> {
    c.sp()?;
    let mut returns = None;
    if c.keyword("RETURN") {
        c.sp()?;
        let mut r = SearchReturn::default();
        c.list(true, |c| {
            match c.atom()?.to_ascii_uppercase().as_str() {
                "MIN" => r.min = true,
                "MAX" => r.max = true,
                "ALL" => r.all = true,
                "COUNT" => r.count = true,
                "SAVE" => r.save = true,
                other => return err(format!("unknown RETURN option {other}")),
            }
            Ok(())
        })?;
        // RFC 4731 3.1: RETURN () means RETURN (ALL).
        if r == SearchReturn::default() {
            r.all = true;
        }
        returns = Some(r);
        c.sp()?;
    }
    Ok((returns, search_program(c, false)?))
}

/// A body section (RFC 9051 6.4.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    /// The part path (`1.2.3`); empty for the whole message.
    pub part: Vec<u32>,
    /// What of that part.
    pub text: Option<SectionText>,
}

/// The text specifier of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    /// HEADER.
    Header,
    /// HEADER.FIELDS (names), or HEADER.FIELDS.NOT when `not`.
    HeaderFields {
        /// Exclude rather than include.
        not: bool,
        /// Field names.
        fields: Vec<String>,
    },
    /// TEXT.
    Text,
    /// MIME (only after a part number).
    Mime,
}

/// One FETCH item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem {
    /// ENVELOPE.
    Envelope,
    /// FLAGS.
    Flags,
    /// INTERNALDATE.
    InternalDate,
    /// RFC822.SIZE.
    Rfc822Size,
    /// UID.
    Uid,
    /// MODSEQ (RFC 7162).
    ModSeq,
    /// BODY (non-extensible structure).
    Body,
    /// BODYSTRUCTURE.
    BodyStructure,
    /// RFC822 (= BODY[]), RFC822.HEADER (= BODY.PEEK[HEADER]), RFC822.TEXT (= BODY[TEXT]).
    Rfc822(Option<SectionText>),
    /// BODY[section]<partial> or BODY.PEEK[...].
    Section {
        /// The section.
        section: Section,
        /// `<offset.length>`.
        partial: Option<(u32, u32)>,
        /// .PEEK: do not set \Seen.
        peek: bool,
    },
    /// BINARY[part]<partial> or BINARY.PEEK (RFC 3516).
    Binary {
        /// The part path.
        part: Vec<u32>,
        /// `<offset.length>`.
        partial: Option<(u32, u32)>,
        /// .PEEK.
        peek: bool,
    },
    /// BINARY.SIZE[part].
    BinarySize(Vec<u32>),
}

/// FETCH modifiers (RFC 7162).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchModifiers {
    /// CHANGEDSINCE modseq.
    pub changed_since: Option<u64>,
    /// VANISHED (UID FETCH only).
    pub vanished: bool,
}

/// `1.2.3`, and whether a `.` followed that introduces a text specifier (`1.2.MIME`).
fn part_path(c: &mut Cursor<'_>) -> Result<(Vec<u32>, bool), SyntaxError> {
    let mut path = Vec::new();
    while let Next::Byte(b'1'..=b'9') = c.peek() {
        path.push(c.nz_number()?);
        if path.len() > 100 {
            return err("part path too deep");
        }
        if !c.eat(b'.') {
            return Ok((path, false));
        }
        if !matches!(c.peek(), Next::Byte(b'1'..=b'9')) {
            return Ok((path, true));
        }
    }
    Ok((path, false))
}

fn section_text(c: &mut Cursor<'_>, after_part: bool) -> Result<SectionText, SyntaxError> {
    let w = c.word()?.to_ascii_uppercase();
    Ok(match w.as_str() {
        "HEADER" => SectionText::Header,
        "TEXT" => SectionText::Text,
        "MIME" if after_part => SectionText::Mime,
        "HEADER.FIELDS" | "HEADER.FIELDS.NOT" => {
            c.sp()?;
            let mut fields = Vec::new();
            c.list(false, |c| {
                let f = c.astring()?;
                fields.push(String::from_utf8_lossy(&f).into_owned());
                Ok(())
            })?;
            SectionText::HeaderFields {
                not: w.ends_with(".NOT"),
                fields,
            }
        }
        other => return err(format!("unknown section {other}")),
    })
}

fn section(c: &mut Cursor<'_>) -> Result<Section, SyntaxError> {
    c.expect(b'[')?;
    let mut s = Section::default();
    if c.eat(b']') {
        return Ok(s);
    }
    let (part, dot) = part_path(c)?;
    s.part = part;
    let text_follows = match c.peek() {
        Next::Byte(b']') if !dot => false,
        Next::Byte(b) if b.is_ascii_alphabetic() && (dot || s.part.is_empty()) => true,
        _ => return err("bad section"),
    };
    if text_follows {
        s.text = Some(section_text(c, !s.part.is_empty())?);
    }
    c.expect(b']')?;
    Ok(s)
}

fn partial(c: &mut Cursor<'_>) -> Result<Option<(u32, u32)>, SyntaxError> {
    if !c.eat(b'<') {
        return Ok(None);
    }
    let offset = c.number()?;
    c.expect(b'.')?;
    let len = c.nz_number()?;
    c.expect(b'>')?;
    Ok(Some((offset, len)))
}

fn binary_part(c: &mut Cursor<'_>) -> Result<Vec<u32>, SyntaxError> {
    c.expect(b'[')?;
    let mut path = Vec::new();
    if !c.eat(b']') {
        loop {
            path.push(c.nz_number()?);
            if !c.eat(b'.') {
                break;
            }
        }
        c.expect(b']')?;
    }
    Ok(path)
}

pub(crate) fn fetch_item(c: &mut Cursor<'_>) -> Result<Vec<FetchItem>, SyntaxError> {
    let w = c.word()?.to_ascii_uppercase();
    let one = |i| Ok(vec![i]);
    match w.as_str() {
        // RFC 9051 6.4.5 macros.
        "ALL" => Ok(vec![
            FetchItem::Flags,
            FetchItem::InternalDate,
            FetchItem::Rfc822Size,
            FetchItem::Envelope,
        ]),
        "FAST" => Ok(vec![
            FetchItem::Flags,
            FetchItem::InternalDate,
            FetchItem::Rfc822Size,
        ]),
        "FULL" => Ok(vec![
            FetchItem::Flags,
            FetchItem::InternalDate,
            FetchItem::Rfc822Size,
            FetchItem::Envelope,
            FetchItem::Body,
        ]),
        "ENVELOPE" => one(FetchItem::Envelope),
        "FLAGS" => one(FetchItem::Flags),
        "INTERNALDATE" => one(FetchItem::InternalDate),
        "RFC822.SIZE" => one(FetchItem::Rfc822Size),
        "RFC822" => one(FetchItem::Rfc822(None)),
        "RFC822.HEADER" => one(FetchItem::Rfc822(Some(SectionText::Header))),
        "RFC822.TEXT" => one(FetchItem::Rfc822(Some(SectionText::Text))),
        "UID" => one(FetchItem::Uid),
        "MODSEQ" => one(FetchItem::ModSeq),
        "BODYSTRUCTURE" => one(FetchItem::BodyStructure),
        "BODY" | "BODY.PEEK" => {
            if c.peek() != Next::Byte(b'[') {
                return if w == "BODY" {
                    one(FetchItem::Body)
                } else {
                    err("BODY.PEEK needs a section")
                };
            }
            let section = section(c)?;
            let partial = partial(c)?;
            one(FetchItem::Section {
                section,
                partial,
                peek: w == "BODY.PEEK",
            })
        }
        "BINARY" | "BINARY.PEEK" => {
            let part = binary_part(c)?;
            let partial = partial(c)?;
            one(FetchItem::Binary {
                part,
                partial,
                peek: w == "BINARY.PEEK",
            })
        }
        "BINARY.SIZE" => one(FetchItem::BinarySize(binary_part(c)?)),
        other => err(format!("unknown FETCH item {other}")),
    }
}

/// FETCH set items [modifiers].
pub fn fetch(
    c: &mut Cursor<'_>,
) -> Result<(SequenceSet, Vec<FetchItem>, FetchModifiers), SyntaxError> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    let mut items = Vec::new();
    if c.peek() == Next::Byte(b'(') {
        c.list(false, |c| {
            items.extend(fetch_item(c)?);
            Ok(())
        })?;
    } else {
        items = fetch_item(c)?;
    }
    let mut m = FetchModifiers::default();
    if c.eat(b' ') {
        c.list(false, |c| {
            match c.atom()?.to_ascii_uppercase().as_str() {
                "CHANGEDSINCE" => {
                    c.sp()?;
                    m.changed_since = Some(c.number64()?);
                }
                "VANISHED" => m.vanished = true,
                other => return err(format!("unknown FETCH modifier {other}")),
            }
            Ok(())
        })?;
        // RFC 7162 3.2.6: VANISHED needs CHANGEDSINCE.
        if m.vanished && m.changed_since.is_none() {
            return err("VANISHED needs CHANGEDSINCE");
        }
    }
    Ok((set, items, m))
}

/// How STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// FLAGS: replace.
    Replace,
    /// +FLAGS: add.
    Add,
    /// -FLAGS: remove.
    Remove,
}

/// A parsed STORE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// Messages.
    pub set: SequenceSet,
    /// UNCHANGEDSINCE (RFC 7162).
    pub unchanged_since: Option<u64>,
    /// Replace, add or remove.
    pub mode: StoreMode,
    /// .SILENT.
    pub silent: bool,
    /// The flags.
    pub flags: Vec<String>,
}

/// STORE set [(UNCHANGEDSINCE n)] [+-]FLAGS[.SILENT] flags.
pub fn store(c: &mut Cursor<'_>) -> Result<Store, SyntaxError> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    let mut unchanged_since = None;
    if c.peek() == Next::Byte(b'(') {
        c.list(false, |c| {
            if !c.keyword("UNCHANGEDSINCE") {
                return err("unknown STORE modifier");
            }
            c.sp()?;
            unchanged_since = Some(c.number64()?);
            Ok(())
        })?;
        c.sp()?;
    }
    let mode = if c.eat(b'+') {
        StoreMode::Add
    } else if c.eat(b'-') {
        StoreMode::Remove
    } else {
        StoreMode::Replace
    };
    let w = c.word()?.to_ascii_uppercase();
    let silent = match w.as_str() {
        "FLAGS" => false,
        "FLAGS.SILENT" => true,
        other => return err(format!("expected FLAGS, not {other}")),
    };
    c.sp()?;
    let mut flags = Vec::new();
    if c.peek() == Next::Byte(b'(') {
        flags = c.flag_list()?;
    } else {
        flags.push(c.flag()?);
        while c.eat(b' ') {
            flags.push(c.flag()?);
        }
    }
    Ok(Store {
        set,
        unchanged_since,
        mode,
        silent,
        flags,
    })
}

/// COPY or MOVE set mailbox.
pub fn copy(c: &mut Cursor<'_>) -> Result<(SequenceSet, Vec<u8>), SyntaxError> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    Ok((set, c.astring()?.into_owned()))
}

/// A SORT criterion (RFC 5256, RFC 5957).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// ARRIVAL.
    Arrival,
    /// CC.
    Cc,
    /// DATE.
    Date,
    /// FROM.
    From,
    /// SIZE.
    Size,
    /// SUBJECT.
    Subject,
    /// TO.
    To,
    /// DISPLAYFROM.
    DisplayFrom,
    /// DISPLAYTO.
    DisplayTo,
}

/// SORT (criteria) charset program; each criterion with its REVERSE flag.
pub fn sort(c: &mut Cursor<'_>) -> Result<(Vec<(bool, SortKey)>, SearchProgram), SyntaxError> {
    c.sp()?;
    let mut keys = Vec::new();
    c.list(false, |c| {
        let mut reverse = false;
        let mut w = c.atom()?.to_ascii_uppercase();
        if w == "REVERSE" {
            reverse = true;
            c.sp()?;
            w = c.atom()?.to_ascii_uppercase();
        }
        let k = match w.as_str() {
            "ARRIVAL" => SortKey::Arrival,
            "CC" => SortKey::Cc,
            "DATE" => SortKey::Date,
            "FROM" => SortKey::From,
            "SIZE" => SortKey::Size,
            "SUBJECT" => SortKey::Subject,
            "TO" => SortKey::To,
            "DISPLAYFROM" => SortKey::DisplayFrom,
            "DISPLAYTO" => SortKey::DisplayTo,
            other => return err(format!("unknown sort key {other}")),
        };
        keys.push((reverse, k));
        Ok(())
    })?;
    c.sp()?;
    Ok((keys, search_program(c, true)?))
}

/// A THREAD algorithm (RFC 5256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadAlgorithm {
    /// ORDEREDSUBJECT.
    OrderedSubject,
    /// REFERENCES.
    References,
}

/// THREAD algorithm charset program.
pub fn thread(c: &mut Cursor<'_>) -> Result<(ThreadAlgorithm, SearchProgram), SyntaxError> {
    c.sp()?;
    let a = match c.atom()?.to_ascii_uppercase().as_str() {
        "ORDEREDSUBJECT" => ThreadAlgorithm::OrderedSubject,
        "REFERENCES" => ThreadAlgorithm::References,
        other => return err(format!("unknown THREAD algorithm {other}")),
    };
    c.sp()?;
    Ok((a, search_program(c, true)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Part;

    fn parts(s: &str) -> Vec<Part> {
        vec![Part::Text(s.as_bytes().to_vec())]
    }

    #[test]
    fn search_keys_return_options_and_nesting() {
        let p = parts(" RETURN (MIN COUNT SAVE) CHARSET UTF-8 OR (FROM alice SINCE 1-Feb-1994) NOT HEADER X-Spam yes UID $ 2:4,7:* MODSEQ 620162338");
        let (r, prog) = search(&mut Cursor::new(&p)).unwrap();
        let r = r.unwrap();
        assert!(r.min && r.count && r.save && !r.max);
        assert_eq!(prog.charset.as_deref(), Some("UTF-8"));
        assert_eq!(prog.keys.len(), 4);
        match &prog.keys[0] {
            SearchKey::Or(a, b) => {
                assert!(matches!(**a, SearchKey::And(_)));
                assert!(matches!(**b, SearchKey::Not(_)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(prog.keys[1], SearchKey::Uid(SequenceSet::Saved));
        assert!(matches!(prog.keys[2], SearchKey::Seq(_)));
        assert_eq!(prog.keys[3], SearchKey::ModSeq(620162338));
        // RFC 4731: RETURN () is ALL.
        let p = parts(" RETURN () ALL");
        assert!(search(&mut Cursor::new(&p)).unwrap().0.unwrap().all);
        // Dates are checked.
        for bad in [
            " SINCE 30-Feb-2020",
            " ON 1-Foo-2020",
            " BEFORE \"1-Jan-2020",
        ] {
            assert!(search(&mut Cursor::new(&parts(bad))).is_err(), "{bad}");
        }
        assert!(search(&mut Cursor::new(&parts(" SENTON \"29-Feb-2024\""))).is_ok());
    }

    #[test]
    fn search_depth_is_bounded() {
        let deep = format!(" {}ALL", "NOT ".repeat(1000));
        let e = search(&mut Cursor::new(&parts(&deep))).unwrap_err();
        assert!(e.0.contains("deeply"));
        let deep = format!(" {}ALL{}", "(".repeat(1000), ")".repeat(1000));
        assert!(search(&mut Cursor::new(&parts(&deep))).is_err());
    }

    #[test]
    fn fetch_items_sections_partials_and_modifiers() {
        let p = parts(" 1:* (FLAGS UID BODY.PEEK[HEADER.FIELDS (Subject From)]<0.512> BODY[1.2.MIME] BINARY.PEEK[1]<10.20> BINARY.SIZE[2] BODY RFC822.SIZE) (CHANGEDSINCE 12345 VANISHED)");
        let (_, items, m) = fetch(&mut Cursor::new(&p)).unwrap();
        assert_eq!(
            m,
            FetchModifiers {
                changed_since: Some(12345),
                vanished: true
            }
        );
        assert_eq!(items.len(), 8);
        assert_eq!(
            items[2],
            FetchItem::Section {
                section: Section {
                    part: vec![],
                    text: Some(SectionText::HeaderFields {
                        not: false,
                        fields: vec!["Subject".into(), "From".into()]
                    })
                },
                partial: Some((0, 512)),
                peek: true
            }
        );
        assert_eq!(
            items[3],
            FetchItem::Section {
                section: Section {
                    part: vec![1, 2],
                    text: Some(SectionText::Mime)
                },
                partial: None,
                peek: false
            }
        );
        assert_eq!(
            items[4],
            FetchItem::Binary {
                part: vec![1],
                partial: Some((10, 20)),
                peek: true
            }
        );
        assert_eq!(items[6], FetchItem::Body);
        let (_, items, _) = fetch(&mut Cursor::new(&parts(" 2 FULL"))).unwrap();
        assert_eq!(items.len(), 5);
        let (_, items, _) = fetch(&mut Cursor::new(&parts(" 2 BODY[]"))).unwrap();
        assert_eq!(
            items[0],
            FetchItem::Section {
                section: Section::default(),
                partial: None,
                peek: false
            }
        );
        for bad in [
            " 1 BODY[1.]",
            " 1 BODY[MIME]",
            " 1 BODY.PEEK",
            " 1 (FLAGS) (VANISHED)",
            " 1 BODY[]<5.0>",
            " 1 FROB",
        ] {
            assert!(fetch(&mut Cursor::new(&parts(bad))).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_copy_sort_thread() {
        let st = store(&mut Cursor::new(&parts(
            " 2:4 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted $Junk)",
        )))
        .unwrap();
        assert_eq!(st.mode, StoreMode::Add);
        assert!(st.silent);
        assert_eq!(st.unchanged_since, Some(320162338));
        assert_eq!(st.flags, vec!["\\Deleted".to_string(), "$Junk".to_string()]);
        let st = store(&mut Cursor::new(&parts(" 1 FLAGS \\Seen \\Flagged"))).unwrap();
        assert_eq!((st.mode, st.flags.len()), (StoreMode::Replace, 2));
        assert!(store(&mut Cursor::new(&parts(" 1 LABELS x"))).is_err());
        let (_, mbox) = copy(&mut Cursor::new(&parts(" 2:4 \"Saved Messages\""))).unwrap();
        assert_eq!(mbox, b"Saved Messages");
        let (keys, prog) = sort(&mut Cursor::new(&parts(
            " (REVERSE DATE SUBJECT) UTF-8 SINCE 1-Feb-1994",
        )))
        .unwrap();
        assert_eq!(keys, vec![(true, SortKey::Date), (false, SortKey::Subject)]);
        assert_eq!(prog.charset.as_deref(), Some("UTF-8"));
        let (alg, _) = thread(&mut Cursor::new(&parts(" REFERENCES UTF-8 ALL"))).unwrap();
        assert_eq!(alg, ThreadAlgorithm::References);
    }
}
