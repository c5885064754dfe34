//! Message policy beyond sender authentication: virus scanning ([`antivirus`]) and the
//! statistical spam classifier ([`spam`]); rules, DNSBL checks and greylisting will join
//! them.
#![warn(missing_docs)]

pub mod antivirus;
pub mod dnsbl;
pub mod spam;
