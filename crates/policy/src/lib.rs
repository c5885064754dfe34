//! Message policy beyond sender authentication: virus scanning ([`antivirus`]), DNS
//! blocklists ([`dnsbl`]), the statistical spam classifier ([`spam`]) and the rules and
//! scoring around it ([`score`]).
#![warn(missing_docs)]

pub mod antivirus;
pub mod dnsbl;
pub mod score;
pub mod spam;
