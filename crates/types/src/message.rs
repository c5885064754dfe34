//! The parsed form of a message kept with its metadata, so that IMAP FETCH ENVELOPE and
//! BODYSTRUCTURE never re-parse the blob (RFC 9051 7.5.2).

use serde::{Deserialize, Serialize};

/// One address of an envelope field (RFC 9051 7.5.2 "address" structure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EnvelopeAddress {
    /// Display name, decoded from RFC 2047.
    pub name: Option<String>,
    /// Local part (or group name when `host` is None and this starts a group).
    pub mailbox: Option<String>,
    /// Domain.
    pub host: Option<String>,
}

/// The IMAP ENVELOPE of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Envelope {
    /// Date header as written.
    pub date: Option<String>,
    /// Subject, decoded.
    pub subject: Option<String>,
    /// From.
    pub from: Vec<EnvelopeAddress>,
    /// Sender.
    pub sender: Vec<EnvelopeAddress>,
    /// Reply-To.
    pub reply_to: Vec<EnvelopeAddress>,
    /// To.
    pub to: Vec<EnvelopeAddress>,
    /// Cc.
    pub cc: Vec<EnvelopeAddress>,
    /// Bcc.
    pub bcc: Vec<EnvelopeAddress>,
    /// In-Reply-To as written.
    pub in_reply_to: Option<String>,
    /// Message-ID as written.
    pub message_id: Option<String>,
}

/// The IMAP BODYSTRUCTURE of one MIME part (RFC 9051 7.5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BodyStructure {
    /// Media type, lower case (`text`, `multipart`...).
    pub media_type: String,
    /// Subtype, lower case.
    pub subtype: String,
    /// Content-Type parameters.
    pub params: Vec<(String, String)>,
    /// Content-ID.
    pub id: Option<String>,
    /// Content-Description.
    pub description: Option<String>,
    /// Content-Transfer-Encoding, upper case as IMAP shows it.
    pub encoding: String,
    /// Size of the encoded body in octets.
    pub size: u64,
    /// Lines of the encoded body (text/* and message/rfc822).
    pub lines: u64,
    /// Content-MD5.
    pub md5: Option<String>,
    /// Content-Disposition type and parameters.
    pub disposition: Option<(String, Vec<(String, String)>)>,
    /// Content-Language.
    pub language: Vec<String>,
    /// Content-Location.
    pub location: Option<String>,
    /// Child parts of a multipart, or the one body of a message/rfc822.
    pub parts: Vec<BodyStructure>,
    /// Envelope of an embedded message/rfc822.
    pub envelope: Option<Box<Envelope>>,
    /// Byte offset of the part's header within the message (for BODY[section] later).
    pub header_offset: u64,
    /// Byte offset of the part's body within the message.
    pub body_offset: u64,
}

/// What is computed once at ingest and kept beside the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MessageCache {
    /// The envelope.
    pub envelope: Envelope,
    /// The body structure.
    pub body: BodyStructure,
    /// The Message-ID without angle brackets, for searching the log and the store.
    pub message_id: Option<String>,
    /// Size of the header section of the blob, in octets.
    pub header_size: u64,
}
