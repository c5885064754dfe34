//! Message policy beyond sender authentication. For now: virus scanning ([`antivirus`]);
//! spam scoring and greylisting will join it.
#![warn(missing_docs)]

pub mod antivirus;
