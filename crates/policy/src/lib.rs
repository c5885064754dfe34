//! Message policy beyond sender authentication: virus scanning ([`antivirus`]), DNS
//! blocklists ([`dnsbl`]), greylisting ([`greylist`]), the statistical spam classifier
//! ([`spam`]) and the rules and scoring around it ([`score`]).
#![warn(missing_docs)]

pub mod antivirus;
pub mod dnsbl;
pub mod greylist;
pub mod score;
pub mod spam;
