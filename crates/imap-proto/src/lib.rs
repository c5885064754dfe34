//! The IMAP protocol without I/O (sans-I/O), for mailkeep's IMAP server.
//!
//! Implementation notes:
//! - [`frame::Framer`] turns the byte stream into commands. A literal (`{n}`, `{n+}`, `~{n}`)
//!   is announced to the caller *before* any of its bytes are read or a continuation request is
//!   sent, so the size can be checked first (RFC 9051 4.3, RFC 7888; literal-size DoS).
//!   Refused non-synchronizing literals are skipped without being kept. Memory is bounded by
//!   the line limit plus the literals the caller accepts.
//! - [`cursor::Cursor`] reads the RFC 9051 primitives (atom, astring, quoted, literal,
//!   number, list, sequence set including `$`) across the parts of a framed command.
//! - [`mutf7`] converts mailbox names between UTF-8 and modified UTF-7 (RFC 3501 5.1.3), for
//!   IMAP4rev1 clients; IMAP4rev2 clients use UTF-8 (RFC 9051 5.1).
#![warn(missing_docs)]

pub mod command;
pub mod cursor;
pub mod frame;
pub mod mutf7;
pub mod response;
pub mod section;
pub mod selected;
