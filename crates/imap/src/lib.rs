//! IMAP sessions for mailkeep, over [`mailkeep_imap_proto`] (in progress: the session itself
//! comes next; this crate holds what it evaluates).
//!
//! - [`fetch`]: FETCH response lines from stored metadata, the cached structure and, for body
//!   sections only, the content.
//! - [`search`]: SEARCH criteria evaluated against one message (RFC 9051 6.4.4), the same
//!   code for every message so that results equal a naive scan.
//! - [`sort`]: SORT, base subjects, THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256).
#![warn(missing_docs)]

pub mod fetch;
pub mod search;
pub mod sort;
