//! Sieve (RFC 5228) at local delivery, with the sieve-rs interpreter: each recipient's
//! active script decides where their copy goes.
//!
//! Implementation notes:
//! - A script runs on the message as it will be stored, with the envelope (MAIL FROM and
//!   the recipient's address) set, bounded by [`Limits`] (script size, instructions,
//!   redirects, nesting).
//! - Done here: keep, fileinto (`:create`, `:flags`, `:specialuse`), discard, stop, reject and
//!   ereject (RFC 5429: the SMTP session refuses the message when every recipient rejects
//!   it), imap4flags, and every test sieve-rs evaluates by itself (envelope, body,
//!   variables, relational, subaddress, date, index, regex, mailbox, spamtest...).
//! - redirect (with `:copy`, RFC 3894): the addresses are handed to the caller, which
//!   delivers locally or forwards through the queue.
//! - vacation (RFC 5230, with sieve-rs's RFC 3834 checks: no reply to the null sender,
//!   lists, bulk or auto-submitted mail, or mail not addressed to the user): the reply is
//!   handed to the caller; once per sender and period, remembered through `Env::seen`, as
//!   duplicate (RFC 7352) is.
//! - editheader (RFC 5293): a copy kept or filed after header changes is stored as
//!   changed (a redirect still sends the original).
//! - include (RFC 6609): the user's scripts by name and the admin's global ones; the
//!   admin's `sieve.before`/`after` scripts wrap the user's through include.
//! - spamtest and virustest (RFC 5235) see the spam filter's score and the virus scan.
//! - notify (RFC 5435) with the mailto method (RFC 5436): sieve-rs builds the notification
//!   (Auto-Submitted: auto-notified); it goes like a vacation reply, from the user only, to
//!   at most `max_redirects` addresses, never about an automatic message, and never with
//!   header fields from the URI beyond a few harmless ones. Other methods are logged as
//!   not supported.
//! - A script that fails to compile or to run delivers to INBOX, and says why.

use sieve::{Compiler, Event, Input, Mailbox, Runtime};

/// Bounds on a user's script.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of script text.
    pub max_script_size: usize,
    /// Instructions executed per message.
    pub max_instructions: usize,
    /// Redirects per message.
    pub max_redirects: usize,
    /// Nested blocks and tests.
    pub max_nesting: usize,
    /// Scripts one user may keep (ManageSieve's PUTSCRIPT; RFC 5804 QUOTA/MAXSCRIPTS).
    pub max_scripts: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_script_size: 64 * 1024,
            max_instructions: 20_000,
            max_redirects: 4,
            max_nesting: 15,
            max_scripts: 100,
        }
    }
}

/// What the admin configured (`[sieve]`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Bounds on scripts.
    pub limits: Limits,
    /// Where global scripts are (`NAME.sieve`).
    pub global_dir: std::path::PathBuf,
    /// Global scripts before each user's.
    pub before: Vec<String>,
    /// And after.
    pub after: Vec<String>,
}

/// One copy the script asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The mailbox by name; None: INBOX.
    pub mailbox: Option<String>,
    /// A special-use role asked for (`:specialuse "\\Junk"`, RFC 8579).
    pub special_use: Option<String>,
    /// Create the mailbox when missing (`:create`, RFC 5490).
    pub create: bool,
    /// Flags to set (imap4flags, RFC 5232).
    pub flags: Vec<String>,
    /// The message as the script changed it (editheader, RFC 5293), whole: it replaces
    /// the copy's prefix and content. None: unchanged.
    pub edited: Option<Vec<u8>>,
}

/// What a script decided for one recipient's copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The copies to store (none: discarded or rejected).
    pub copies: Vec<Copy>,
    /// Rejected, with the reason.
    pub reject: Option<String>,
    /// What it did, for the delivery log.
    pub actions: Vec<String>,
    /// Why it failed, when it did (the copy then goes to INBOX).
    pub error: Option<String>,
    /// Addresses to redirect the message to (RFC 5228 4.2).
    pub redirects: Vec<String>,
    /// Messages the script made to send (a vacation reply, RFC 5230; a notification, RFC
    /// 5436): (recipient, message, what it is).
    pub replies: Vec<(String, Vec<u8>, &'static str)>,
}

impl Decision {
    fn inbox_after(error: String) -> Decision {
        Decision {
            copies: vec![Copy {
                mailbox: None,
                special_use: None,
                create: false,
                flags: Vec::new(),
                edited: None,
            }],
            reject: None,
            actions: vec!["keep".into()],
            error: Some(error),
            redirects: Vec::new(),
            replies: Vec::new(),
        }
    }
}

fn compiler(limits: &Limits) -> Compiler {
    Compiler::new()
        .with_max_script_size(limits.max_script_size)
        .with_max_nested_blocks(limits.max_nesting)
        .with_max_nested_tests(limits.max_nesting)
}

/// Compiles a script to run it: with its variables declared at the top first (see
/// [`hoist_variables`]); an error is described on the script as written.
fn compile(script: &str, limits: &Limits) -> Result<std::sync::Arc<sieve::Sieve>, String> {
    if let Some(hoisted) = hoist_variables(script) {
        // The declarations do not count against the script's size.
        let roomier = Limits {
            max_script_size: limits
                .max_script_size
                .saturating_add(hoisted.len().saturating_sub(script.len())),
            ..*limits
        };
        if let Ok(c) = compiler(&roomier).compile(hoisted.as_bytes()) {
            return Ok(std::sync::Arc::new(c));
        }
    }
    compiler(limits)
        .compile(script.as_bytes())
        .map(std::sync::Arc::new)
        .map_err(|e| describe(script, &e))
}

/// RFC 5229 3: a variable is the script's, wherever it is set. sieve-rs 0.7.3 scopes a
/// name to the block that first sets it, so after `if header :matches "Subject" "*" { set
/// "s" "${1}"; }` a later `${s}` is empty (Pigeonhole's own examples do this). Declaring
/// every variable the script sets right after its `require`s, on the same line (line
/// numbers stay), makes each one the script's. None when the script sets nothing.
fn hoist_variables(script: &str) -> Option<String> {
    let b = script.as_bytes();
    let mut names: Vec<String> = Vec::new();
    // Where the leading `require`s end, and whether a command has started since.
    let mut insert_at: Option<usize> = None;
    let mut leading = true;
    let mut i = 0;
    // Whether the next string is a `set`'s name; whether strings now are `global` names
    // (RFC 5229 has none, sieve-rs's `global` may not follow a `set` of the same name).
    let mut want_name = false;
    let mut want_global = false;
    let mut globals: Vec<String> = Vec::new();
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
                continue;
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if want_global {
                    globals.push(script[start.min(b.len())..i.min(b.len())].to_ascii_lowercase());
                } else if want_name {
                    want_name = false;
                    let name = &script[start.min(b.len())..i.min(b.len())];
                    let valid = name
                        .bytes()
                        .next()
                        .is_some_and(|f| f.is_ascii_alphabetic() || f == b'_')
                        && name.bytes().all(|x| x.is_ascii_alphanumeric() || x == b'_');
                    if valid && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                        names.push(name.to_string());
                    }
                }
                i += 1;
                continue;
            }
            b';' => {
                want_name = false;
                want_global = false;
                if leading {
                    insert_at = Some(i + 1);
                }
            }
            b'{' | b'}' => {
                want_name = false;
                leading = false;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &script[start..i];
                let tag = start > 0 && b[start - 1] == b':';
                // `text:` strings hold anything up to a line with a lone dot.
                if word.eq_ignore_ascii_case("text") && b.get(i) == Some(&b':') {
                    while i < b.len() {
                        let line_end = script[i..].find('\n').map_or(b.len(), |n| i + n + 1);
                        let line = script[i..line_end].trim_end_matches(['\r', '\n']);
                        i = line_end;
                        if line == "." {
                            break;
                        }
                    }
                    want_name = false;
                    continue;
                }
                if !tag {
                    if word.eq_ignore_ascii_case("set") {
                        want_name = true;
                    }
                    if word.eq_ignore_ascii_case("global") {
                        want_global = true;
                    }
                    if !word.eq_ignore_ascii_case("require") {
                        leading = false;
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names.retain(|n| !globals.contains(&n.to_ascii_lowercase()));
    if names.is_empty() {
        return None;
    }
    let at = insert_at?;
    let decls: String = names
        .iter()
        .map(|n| format!(" set \"{n}\" \"\";"))
        .collect();
    Some(format!("{}{decls}{}", &script[..at], &script[at..]))
}

/// Compiles a script: Ok, or the error with its line and column (for `sieve put|check`
/// and ManageSieve's CHECKSCRIPT).
pub fn check(script: &str, limits: &Limits) -> Result<(), String> {
    compile(script, limits).map(|_| ())
}

/// A compile error as people read it. sieve-rs gives line 0 for an unknown command; the
/// line is then that of the first command with the name it did not know.
fn describe(script: &str, e: &sieve::compiler::CompileError) -> String {
    let text = e.to_string();
    if e.line_num() > 0 {
        return text;
    }
    let word = text
        .split("but found \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("");
    let line = script.lines().position(|l| {
        let l = l.trim_start();
        !word.is_empty()
            && l.starts_with(word)
            && !l[word.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    });
    match line {
        Some(n) => format!(
            "{} at line {}",
            text.split(" at line ").next().unwrap_or(&text),
            n + 1
        ),
        None => text,
    }
}

/// Who a script runs for and what it may ask of the store.
pub struct Env<'a> {
    /// The envelope sender.
    pub from: &'a str,
    /// The envelope recipient as addressed (with its sub-address).
    pub to: &'a str,
    /// The user's own address: the From: of their vacation replies.
    pub user: &'a str,
    /// Their mailbox names (for the mailbox extension's tests).
    pub mailboxes: &'a [String],
    /// Our host name, for the Message-ID of replies.
    pub hostname: &'a str,
    /// Whether an id (vacation: sender and handle; duplicate) was seen within its expiry
    /// (seconds), recording it when not.
    pub seen: &'a dyn Fn(&str, u64) -> bool,
    /// The text of an included script (RFC 6609): the user's by name (`:personal`) or a
    /// global one; None when there is none.
    pub include: &'a dyn Fn(&sieve::Script) -> Option<String>,
    /// The spam filter's score of this copy (spamtest, RFC 5235), when it scored it.
    pub spam_score: Option<f64>,
    /// The copy was scanned by the virus scanner and found clean (virustest).
    pub virus_clean: bool,
}

/// The script that runs for a user: theirs alone, or wrapped between the admin's global
/// scripts (RFC 6609 include, so that they share one set of actions and `stop` ends all).
pub fn wrapper(user_script: &str, before: &[String], after: &[String]) -> Option<String> {
    if before.is_empty() && after.is_empty() {
        return None;
    }
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::from("require \"include\";\n");
    for b in before {
        out.push_str(&format!("include :global {};\n", q(b)));
    }
    if !user_script.is_empty() {
        out.push_str(&format!("include :personal {};\n", q(user_script)));
    }
    for a in after {
        out.push_str(&format!("include :global {};\n", q(a)));
    }
    Some(out)
}

/// Runs `script` on `message` for one recipient.
pub fn evaluate(script: &str, message: &[u8], env: &Env<'_>, limits: &Limits) -> Decision {
    let (from, to, mailboxes) = (env.from, env.to, env.mailboxes);
    let compiled = match compile(script, limits) {
        Ok(c) => c,
        Err(e) => return Decision::inbox_after(e),
    };
    let runtime = Runtime::new()
        .with_cpu_limit(limits.max_instructions)
        .with_max_redirects(limits.max_redirects)
        .with_max_nested_includes(limits.max_nesting)
        .with_max_out_messages(limits.max_redirects + 1)
        .with_local_hostname(env.hostname.to_string());
    let mut instance = runtime
        .filter(message)
        .with_user_address(env.user)
        .with_spam_status(match env.spam_score {
            Some(p) => sieve::SpamStatus::MaybeSpam(p.clamp(0.0, 1.0)),
            None => sieve::SpamStatus::Unknown,
        })
        .with_virus_status(if env.virus_clean {
            sieve::VirusStatus::Clean
        } else {
            sieve::VirusStatus::Unknown
        });
    let mut made: Vec<Vec<u8>> = Vec::new();
    // Which made messages are vacation replies (the others are the message as editheader
    // changed it).
    let mut vacation_ids: Vec<usize> = Vec::new();
    let mut vacation_next = false;
    instance.set_envelope(sieve::Envelope::From, from);
    instance.set_envelope(sieve::Envelope::To, to);
    let mut decision = Decision::default();
    let mut input = Input::script("user", compiled);
    let mut skipped = false;
    // Addresses notified in this run: at most `max_redirects` over all its notify actions.
    let mut notified: Vec<String> = Vec::new();
    while let Some(result) = instance.run(input) {
        input = Input::True;
        let event = match result {
            Ok(e) => e,
            Err(e) => return Decision::inbox_after(format!("{e:?}")),
        };
        match event {
            Event::IncludeScript { name, optional } => match (env.include)(&name) {
                Some(text) => match compile(&text, limits) {
                    Ok(c) => input = Input::script(name, c),
                    Err(e) => {
                        return Decision::inbox_after(format!(
                            "include {}: {e}",
                            script_name(&name),
                        ))
                    }
                },
                None if optional => input = Input::False,
                None => {
                    return Decision::inbox_after(format!(
                        "include {}: no such script",
                        script_name(&name)
                    ))
                }
            },
            Event::MailboxExists {
                mailboxes: asked, ..
            } => {
                let all = asked.iter().all(|m| match m {
                    Mailbox::Name(n) => mailboxes.iter().any(|have| have.eq_ignore_ascii_case(n)),
                    Mailbox::Id(_) => false,
                });
                input = all.into();
            }
            // RFC 5230 4.2 (vacation's once per period) and RFC 7352 (duplicate).
            Event::DuplicateId { id, expiry, .. } => {
                let seen = (env.seen)(&id, expiry);
                // sieve-rs asks `_v…` for vacation; when not seen, the next message it makes
                // is the reply.
                vacation_next = id.starts_with("_v") && !seen;
                input = seen.into();
            }
            Event::ListContains { .. } | Event::Function { .. } => {
                input = Input::False;
            }
            Event::CreatedMessage {
                message_id,
                message,
            } => {
                if made.len() + 1 == message_id {
                    made.push(message);
                    if std::mem::take(&mut vacation_next) {
                        vacation_ids.push(message_id);
                    }
                }
            }
            Event::SetEnvelope { .. } => {}
            Event::Keep { flags, message_id } => {
                decision.actions.push("keep".into());
                decision.copies.push(Copy {
                    mailbox: None,
                    special_use: None,
                    create: false,
                    flags,
                    edited: edited(&made, message_id),
                });
            }
            Event::Discard => decision.actions.push("discard".into()),
            Event::Reject { extended, reason } => {
                decision
                    .actions
                    .push(if extended { "ereject" } else { "reject" }.into());
                decision.reject = Some(reason);
            }
            Event::FileInto {
                folder,
                flags,
                special_use,
                create,
                message_id,
                ..
            } => {
                decision.actions.push(format!("fileinto {folder:?}"));
                decision.copies.push(Copy {
                    mailbox: Some(folder),
                    special_use,
                    create,
                    flags,
                    edited: edited(&made, message_id),
                });
            }
            // A redirect sends the message itself (message 0); other messages are ones the
            // script made (vacation replies).
            Event::SendMessage {
                recipient: sieve::Recipient::Address(to),
                message_id: 0,
                ..
            } => {
                decision.actions.push(format!("redirect {to:?}"));
                decision.redirects.push(to);
            }
            // A message the script made: a vacation reply (RFC 5230), sent only when its
            // From: is the user's own address (a script's :from may not be anyone's).
            Event::SendMessage {
                recipient: sieve::Recipient::Address(to),
                message_id,
                ..
            } if message_id > 0 && !vacation_ids.contains(&message_id) => {
                // A redirect of the message as editheader changed it: the original goes.
                decision.actions.push(format!(
                    "redirect {to:?} (of the original: header edits are not carried over)"
                ));
                decision.redirects.push(to);
            }
            Event::SendMessage {
                recipient: sieve::Recipient::Address(to),
                message_id,
                ..
            } if message_id > 0 => {
                let reply = made.get(message_id - 1).cloned().unwrap_or_default();
                if let Some(why) = no_auto_reply(message)
                    .map(str::to_string)
                    .or_else(|| made_header_refused(&reply, VACATION_FIELDS))
                {
                    decision
                        .actions
                        .push(format!("vacation reply to {to:?} not sent: {why}"));
                } else if from_is(&reply, env.user) {
                    decision.actions.push(format!("vacation reply to {to:?}"));
                    decision.replies.push((to, reply, "vacation reply"));
                } else {
                    decision.actions.push(format!(
                        "vacation reply to {to:?} not sent: :from is not the user"
                    ));
                }
            }
            // A notification (RFC 5435 `notify` with a mailto URI, RFC 5436) sieve-rs made.
            Event::SendMessage {
                recipient: sieve::Recipient::Group(to),
                message_id,
                ..
            } if message_id > 0 => {
                let note = made.get(message_id - 1).cloned().unwrap_or_default();
                let mut fresh: Vec<String> = Vec::new();
                for a in &to {
                    let known = notified
                        .iter()
                        .chain(&fresh)
                        .any(|n| n.eq_ignore_ascii_case(a));
                    if !known {
                        fresh.push(a.clone());
                    }
                }
                let refused = if notified.len() + fresh.len() > limits.max_redirects {
                    Some(format!(
                        "more than {} notified addresses in one run",
                        limits.max_redirects
                    ))
                } else {
                    notification_refused(message, &note, env.user, &to)
                };
                match refused {
                    Some(why) => decision
                        .actions
                        .push(format!("notify {to:?} not sent: {why}")),
                    None => {
                        decision.actions.push(format!("notify {to:?}"));
                        for a in fresh {
                            notified.push(a.clone());
                            decision.replies.push((a, note.clone(), "notification"));
                        }
                    }
                }
            }
            Event::SendMessage { recipient, .. } => {
                decision
                    .actions
                    .push(format!("{recipient:?} not sent: not supported"));
                skipped = true;
            }
            Event::Notify { method, .. } => {
                // sieve-rs hands a mailto notify over here once the script made as many
                // messages as it may.
                let why = if method.to_ascii_lowercase().starts_with("mailto:") {
                    "the script made as many messages as it may"
                } else {
                    "only mailto is supported"
                };
                decision
                    .actions
                    .push(format!("notify {method:?} skipped: {why}"));
            }
        }
    }
    // A skipped redirect must not lose the message: without another copy, keep it.
    if skipped && decision.copies.is_empty() && decision.reject.is_none() {
        decision.actions.push("keep".into());
        decision.copies.push(Copy {
            mailbox: None,
            special_use: None,
            create: false,
            flags: Vec::new(),
            edited: None,
        });
    }
    decision
}

/// The message as the script changed it, when an action names a changed one (message
/// ids count from 1; 0 is the message as it came).
fn edited(made: &[Vec<u8>], message_id: usize) -> Option<Vec<u8>> {
    message_id.checked_sub(1).and_then(|i| made.get(i)).cloned()
}

fn script_name(s: &sieve::Script) -> String {
    match s {
        sieve::Script::Personal(n) => format!(":personal {n:?}"),
        sieve::Script::Global(n) => format!(":global {n:?}"),
    }
}

/// Why a message must get no automatic reply (RFC 3834 2, 3.1.8; RFC 5230 4.5), if it
/// must not. sieve-rs checks these too, but with mail-parser 0.11 it misses Auto-Submitted
/// (parsed as a known field, not the "other" one it looks for), so they are checked here
/// as well.
fn no_auto_reply(message: &[u8]) -> Option<&'static str> {
    if let Some(why) = automatic(message) {
        return Some(why);
    }
    for (name, value) in &header_fields(message) {
        match name.as_str() {
            "precedence" if ["bulk", "list", "junk"].contains(&value.as_str()) => {
                return Some("the message is bulk mail (Precedence)")
            }
            n if n.starts_with("list-") => return Some("the message is from a list"),
            "x-auto-response-suppress" if value.contains("all") || value.contains("oof") => {
                return Some("the sender asked for none (X-Auto-Response-Suppress)")
            }
            _ => {}
        }
    }
    None
}

/// A message's header fields as unfolded, lower-cased (name, value) pairs.
fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let end = crate::ingest::header_len(message).min(message.len());
    let head = String::from_utf8_lossy(&message[..end]).to_ascii_lowercase();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    fields
}

/// Why a message is automatic (RFC 3834 5: an Auto-Submitted field other than "no").
fn automatic(message: &[u8]) -> Option<&'static str> {
    header_fields(message)
        .iter()
        .any(|(name, value)| {
            name == "auto-submitted" && value.split(';').next().unwrap_or("").trim() != "no"
        })
        .then_some("the message is automatic (Auto-Submitted)")
}

/// The fields a notification may have: sieve-rs's own and a few a mailto URI may add.
const NOTIFICATION_FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "importance",
    "x-priority",
    "auto-submitted",
    "x-sieve",
    "content-type",
    "in-reply-to",
    "references",
    "keywords",
    "comments",
];

/// Why a notification sieve-rs made about `message` must not go to `to`, if it must not.
fn notification_refused(message: &[u8], note: &[u8], user: &str, to: &[String]) -> Option<String> {
    // RFC 5436 2.7: none about an automatic message (sieve-rs's own check misses
    // Auto-Submitted with mail-parser 0.11, as for vacation).
    if let Some(why) = automatic(message) {
        return Some(why.into());
    }
    if to.is_empty() {
        return Some("the URI names no recipient".into());
    }
    if let Some(why) = made_header_refused(note, NOTIFICATION_FIELDS) {
        return Some(why);
    }
    // RFC 5436 2.3: the sender may only be the user.
    if !from_is(note, user) {
        return Some(":from is not the user".into());
    }
    let fields = header_fields(note);
    // RFC 5436 2.7: marked as a notification, once.
    let marks: Vec<&String> = fields
        .iter()
        .filter(|(n, _)| n == "auto-submitted")
        .map(|(_, v)| v)
        .collect();
    if marks.len() != 1 || !marks[0].starts_with("auto-notified") {
        return Some("it would not be marked Auto-Submitted: auto-notified".into());
    }
    None
}

/// The fields a vacation reply (RFC 5230) may have: those sieve-rs writes.
const VACATION_FIELDS: &[&str] = &[
    "from",
    "to",
    "subject",
    "in-reply-to",
    "references",
    "date",
    "message-id",
    "auto-submitted",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// Why the header of a message the script made must not go out, if it must not: line breaks
/// only as CRLF, only `allowed` fields, each once. So nothing a URI value, a :subject, a
/// :message or the triggering message's own Subject (an encoded word may decode to CRLF,
/// which sieve-rs copies into "Auto: ...") holds can start a field of its own.
fn made_header_refused(made: &[u8], allowed: &[&str]) -> Option<String> {
    let end = crate::ingest::header_len(made).min(made.len());
    let head = &made[..end];
    let bare = head.iter().enumerate().any(|(i, &c)| {
        (c == b'\r' && head.get(i + 1) != Some(&b'\n'))
            || (c == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    });
    if bare {
        return Some("a line break inside a header field".into());
    }
    let fields = header_fields(made);
    if let Some((name, _)) = fields
        .iter()
        .find(|(name, _)| !allowed.contains(&name.as_str()))
    {
        return Some(format!(
            "it would carry a {name:?} field: a line break inside a value it copies?"
        ));
    }
    for (i, (name, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(n, _)| n == name) {
            return Some(format!("{name:?} twice"));
        }
    }
    None
}

/// Whether a message's From: address is `user`.
fn from_is(message: &[u8], user: &str) -> bool {
    // Exactly one From: field naming exactly one address: a `:from` with a line break or a
    // list in it cannot slip another sender in beside the user.
    let end = crate::ingest::header_len(message).min(message.len());
    let head = String::from_utf8_lossy(&message[..end]).to_ascii_lowercase();
    let froms = head
        .split('\n')
        .filter(|l| l.trim_start_matches('\r').starts_with("from:"))
        .count();
    if froms != 1 {
        return false;
    }
    mail_parser::MessageParser::new()
        .parse_headers(message)
        .and_then(|m| {
            let list = m.from()?;
            (list.iter().count() == 1)
                .then(|| {
                    list.first()?
                        .address()
                        .map(|a| a.eq_ignore_ascii_case(user))
                })
                .flatten()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Boss <boss@corp.test>\r\nTo: me@example.test\r\nSubject: quarterly report\r\nList-Id: <team.corp.test>\r\n\r\nThe numbers are in.\r\n";

    fn no_include(_: &sieve::Script) -> Option<String> {
        None
    }

    fn env<'a>(seen: &'a dyn Fn(&str, u64) -> bool, boxes: &'a [String]) -> Env<'a> {
        Env {
            from: "boss@corp.test",
            to: "me+work@example.test",
            user: "me@example.test",
            mailboxes: boxes,
            hostname: "mail.example.test",
            seen,
            include: &no_include,
            spam_score: Some(0.95),
            virus_clean: true,
        }
    }

    #[test]
    fn includes_global_wrappers_and_spamtest() {
        let include = |s: &sieve::Script| {
            match s {
            sieve::Script::Global(n) if n == "spam" => Some(
                "require [\"spamtest\", \"relational\", \"comparator-i;ascii-numeric\", \"fileinto\"];\n\
                 if spamtest :value \"ge\" :comparator \"i;ascii-numeric\" \"8\" { fileinto \"Junk\"; stop; }\n"
                    .to_string(),
            ),
            sieve::Script::Personal(n) if n == "mine" => Some("require \"fileinto\"; fileinto \"Work\";\n".into()),
            _ => None,
        }
        };
        let boxes = ["INBOX".to_string(), "Work".to_string(), "Junk".to_string()];
        let wrapped = wrapper("mine", &["spam".into()], &[]).unwrap();
        let mut e = env(&|_, _| false, &boxes);
        e.include = &include;
        let d = evaluate(&wrapped, MSG, &e, &Limits::default());
        assert_eq!(d.copies.len(), 1, "{d:?}");
        assert_eq!(d.copies[0].mailbox.as_deref(), Some("Junk"), "{d:?}");
        // Not spam: the user's script runs.
        e.spam_score = Some(0.1);
        let d = evaluate(&wrapped, MSG, &e, &Limits::default());
        assert_eq!(d.copies[0].mailbox.as_deref(), Some("Work"), "{d:?}");
        // A missing include keeps the message and says so.
        let d = evaluate(
            &wrapper("gone", &[], &["none".into()]).unwrap(),
            MSG,
            &e,
            &Limits::default(),
        );
        assert!(
            d.error
                .as_deref()
                .is_some_and(|x| x.contains("no such script")),
            "{d:?}"
        );
        assert_eq!(d.copies.len(), 1);
        assert_eq!(wrapper("x", &[], &[]), None);
    }

    fn run(script: &str) -> Decision {
        let boxes = ["INBOX".to_string(), "Work".to_string()];
        evaluate(script, MSG, &env(&|_, _| false, &boxes), &Limits::default())
    }

    #[test]
    fn fileinto_with_flags_and_create() {
        let d = run(r#"require ["fileinto", "imap4flags", "mailbox"];
            if header :contains "subject" "report" {
                fileinto :create :flags ["\\Flagged"] "Reports";
                stop;
            }"#);
        assert_eq!(d.error, None);
        assert_eq!(
            d.copies,
            vec![Copy {
                mailbox: Some("Reports".into()),
                special_use: None,
                create: true,
                flags: vec!["\\Flagged".into()],
                edited: None,
            }]
        );
    }

    #[test]
    fn envelope_subaddress_and_mailboxexists() {
        let d = run(
            r#"require ["fileinto", "envelope", "subaddress", "mailbox"];
            if allof (envelope :detail "to" "work", mailboxexists "Work") { fileinto "Work"; }"#,
        );
        assert_eq!(d.copies[0].mailbox.as_deref(), Some("Work"));
        // Without a match the implicit keep files to INBOX.
        let d = run(r#"require ["fileinto", "envelope"];
            if envelope :is "from" "other@x.test" { fileinto "Work"; }"#);
        assert_eq!(
            d.copies,
            vec![Copy {
                mailbox: None,
                special_use: None,
                create: false,
                flags: vec![],
                edited: None,
            }]
        );
    }

    #[test]
    fn editheader_changes_the_stored_copy() {
        let d = run(r#"require ["editheader", "fileinto"];
            addheader "X-Filed" "by sieve";
            deleteheader "List-Id";
            fileinto "Work";"#);
        assert_eq!(d.copies.len(), 1, "{d:?}");
        let edited = String::from_utf8(d.copies[0].edited.clone().expect("edited")).unwrap();
        assert!(edited.contains("X-Filed: by sieve"), "{edited}");
        assert!(!edited.contains("List-Id"), "{edited}");
        assert!(edited.contains("The numbers are in."), "{edited}");
    }

    #[test]
    fn an_edited_auto_reply_is_still_redirected() {
        let auto = b"From: a@b.test\r\nTo: me@example.test\r\nAuto-Submitted: auto-replied\r\nSubject: away\r\n\r\nx\r\n";
        let d = evaluate(
            r#"require "editheader"; addheader "X-Seen" "1"; redirect "x@y.test";"#,
            auto,
            &env(&|_, _| false, &[]),
            &Limits::default(),
        );
        assert_eq!(d.redirects, ["x@y.test"], "{d:?}");
    }

    #[test]
    fn discard_reject_and_errors() {
        assert!(run("discard;").copies.is_empty());
        let d = run(r#"require "reject"; reject "no thanks";"#);
        assert_eq!(d.reject.as_deref(), Some("no thanks"));
        assert!(d.copies.is_empty());
        // A syntax error names its line and keeps the message.
        let d = run("require \"fileinto\";\nfileinto \"x\"\nkeep;");
        assert!(
            d.error.as_deref().is_some_and(|e| e.contains("at line 3")),
            "{d:?}"
        );
        assert_eq!(d.copies.len(), 1);
        assert!(check("if true { keep; }", &Limits::default()).is_ok());
        let e = check("keep;\n  frobnicate;", &Limits::default()).unwrap_err();
        assert!(e.contains("frobnicate") && e.ends_with("at line 2"), "{e}");
        let e = check("keep;\nkeep;\nstop stop;", &Limits::default()).unwrap_err();
        assert!(e.contains("at line 3, column 6"), "{e}");
    }

    #[test]
    fn variables_set_in_a_block_are_the_scripts() {
        let script = "require [\"fileinto\", \"variables\"]; # set \"no\" \"x\";\n\
                      if header :matches \"Subject\" \"*\" { set :lower \"Subj\" \"${1}\"; }\n\
                      fileinto \"${subj}\";\n";
        let hoisted = hoist_variables(script).expect("a set");
        assert_eq!(
            hoisted.lines().next(),
            Some("require [\"fileinto\", \"variables\"]; set \"Subj\" \"\"; # set \"no\" \"x\";")
        );
        assert_eq!(
            hoisted.lines().count(),
            script.lines().count(),
            "lines stay"
        );
        let boxes = ["INBOX".to_string(), "quarterly report".to_string()];
        let d = evaluate(script, MSG, &env(&|_, _| false, &boxes), &Limits::default());
        assert_eq!(d.actions, ["fileinto \"quarterly report\""], "{d:?}");
        // Comments do not hide what follows them.
        assert_eq!(
            hoist_variables("require \"variables\";\n/*x*/set \"a\" \"b\"; fileinto /*y*/\"box\";"),
            Some("require \"variables\"; set \"a\" \"\";\n/*x*/set \"a\" \"b\"; fileinto /*y*/\"box\";".into())
        );
        // A `global` name is left alone.
        assert_eq!(
            hoist_variables(
                "require [\"variables\", \"include\"];\nglobal \"g\";\nset \"g\" \"1\";"
            ),
            None
        );
        // Nothing set, or set only inside strings and text: blocks: nothing to do.
        assert_eq!(hoist_variables("keep;"), None);
        assert_eq!(
            hoist_variables("require \"vacation\";\nvacation text:\nset \"x\" \"y\";\n.\n;"),
            None
        );
        // Errors still name the script's own lines.
        let d = evaluate(
            "require \"variables\";\nset \"a\" \"b\";\nfrobnicate;\n",
            MSG,
            &env(&|_, _| false, &boxes),
            &Limits::default(),
        );
        assert!(
            d.error.as_deref().is_some_and(|e| e.contains("line 3")),
            "{d:?}"
        );
    }

    #[test]
    fn notifications_by_mailto() {
        let boxes = ["INBOX".to_string()];
        let personal =
            b"From: Boss <boss@corp.test>\r\nTo: me@example.test\r\nSubject: hi\r\n\r\nHi.\r\n";
        let notify = |script: &str, message: &[u8]| {
            evaluate(
                &format!("require [\"enotify\", \"variables\"];\n{script}"),
                message,
                &env(&|_, _| false, &boxes),
                &Limits::default(),
            )
        };
        let d = notify(
            r#"notify :importance "1" :message "from boss" "mailto:pager@phone.test?body=check%20mail";"#,
            personal,
        );
        assert_eq!(d.copies.len(), 1, "implicit keep: {d:?}");
        assert_eq!(d.replies.len(), 1, "{d:?}");
        let (to, note, what) = &d.replies[0];
        let note = String::from_utf8_lossy(note);
        assert_eq!((to.as_str(), *what), ("pager@phone.test", "notification"));
        for want in [
            "Auto-Submitted: auto-notified",
            "Subject: from boss",
            "Importance: High",
            "\r\n\r\ncheck mail",
        ] {
            assert!(note.contains(want), "{want} in {note}");
        }
        assert!(from_is(note.as_bytes(), "me@example.test"), "{note}");
        // RFC 5436 2.7: none about an automatic message.
        let auto =
            b"From: robot@corp.test\r\nAuto-Submitted: auto-generated\r\nSubject: x\r\n\r\nx\r\n";
        let d = notify(r#"notify "mailto:pager@phone.test";"#, auto);
        assert!(d.replies.is_empty(), "{d:?}");
        // A :from naming someone else gives way to the user (sieve-rs).
        let d = notify(
            r#"notify :from "ceo@example.test" "mailto:pager@phone.test";"#,
            personal,
        );
        assert_eq!(d.replies.len(), 1, "{d:?}");
        assert!(from_is(&d.replies[0].1, "me@example.test"), "{d:?}");
        // Not to a crowd, no smuggled header fields.
        for script in [
            r#"notify "mailto:a@x.test,b@x.test,c@x.test,d@x.test,e@x.test";"#,
            r#"notify "mailto:pager@phone.test?Reply-To=evil@x.test";"#,
        ] {
            let d = notify(script, personal);
            assert!(d.replies.is_empty(), "{script}: {d:?}");
            assert!(
                d.actions.iter().any(|a| a.contains("not sent")),
                "{script}: {d:?}"
            );
        }
        // At most max_redirects (4) addresses over the whole run; a repeat is not sent twice.
        let d = notify(
            r#"notify "mailto:a@x.test,b@x.test"; notify "mailto:a@x.test,c@x.test";
               notify "mailto:d@x.test,e@x.test";"#,
            personal,
        );
        let sent: Vec<&str> = d.replies.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(sent, ["a@x.test", "b@x.test", "c@x.test"], "{d:?}");
        assert!(
            d.actions.iter().any(|a| a.contains("more than 4 notified")),
            "{d:?}"
        );
        // No header field smuggled through a URI value or the message's own Subject.
        let d = notify(
            r#"notify "mailto:pager@phone.test?subject=hi%0D%0AContent-Type:%20text/html";"#,
            personal,
        );
        assert!(d.replies.is_empty(), "{d:?}");
        let crafted = b"From: Boss <boss@corp.test>\r\nTo: me@example.test\r\nSubject: =?utf-8?q?x=0D=0AReply-To:_evil@x.test?=\r\n\r\nHi.\r\n";
        let d = notify(r#"notify "mailto:pager@phone.test";"#, crafted);
        assert!(d.replies.is_empty(), "{d:?}");
        // Other methods are not supported; the message is kept.
        let d = notify(r#"notify "xmpp:me@im.test";"#, personal);
        assert_eq!(d.copies.len(), 1, "{d:?}");
        assert!(d.replies.is_empty(), "{d:?}");
    }

    #[test]
    fn redirects_and_a_skipped_vacation() {
        let d = run(r#"redirect "elsewhere@x.test";"#);
        assert!(d.copies.is_empty());
        assert_eq!(d.redirects, ["elsewhere@x.test"]);
        let d = run(r#"require "copy"; redirect :copy "elsewhere@x.test";"#);
        assert_eq!((d.copies.len(), d.redirects.len()), (1, 1));
        // Not to a list (RFC 5230 4.5)...
        let d = run(r#"require "vacation"; vacation "I am away";"#);
        assert_eq!(d.copies.len(), 1, "{d:?}");
        assert!(d.replies.is_empty(), "{d:?}");
        // ...but to a person.
        let personal = b"From: Boss <boss@corp.test>\r\nTo: me@example.test\r\nSubject: hi\r\nMessage-ID: <1@corp.test>\r\n\r\nHi.\r\n";
        let boxes = ["INBOX".to_string()];
        let vacation = |script: &str, seen: &dyn Fn(&str, u64) -> bool| {
            evaluate(script, personal, &env(seen, &boxes), &Limits::default())
        };
        let d = vacation(r#"require "vacation"; vacation "I am away";"#, &|_, _| {
            false
        });
        assert_eq!(d.replies.len(), 1, "{d:?}");
        let (to, reply, _) = &d.replies[0];
        let reply = String::from_utf8_lossy(reply);
        assert_eq!(to, "boss@corp.test");
        assert!(
            reply.contains("From: me@example.test") || reply.contains("<me@example.test>"),
            "{reply}"
        );
        assert!(reply.contains("Auto-Submitted: auto-replied"), "{reply}");
        // Seen within the period: no reply.
        let d = vacation(
            r#"require "vacation"; vacation :days 3 "I am away";"#,
            &|id, expiry| id.contains("boss@corp.test") && expiry == 3 * 86400,
        );
        assert!(d.replies.is_empty(), "{d:?}");
        // A forged :from is not sent, nor one hiding a second From: or a list.
        for from in [
            "ceo@example.test",
            "ceo@example.test\r\nFrom: me@example.test",
            "me@example.test, ceo@example.test",
        ] {
            let d = vacation(
                &format!("require \"vacation\"; vacation :from {from:?} \"away\";"),
                &|_, _| false,
            );
            assert!(d.replies.is_empty(), "{from}: {d:?}");
        }
        let d = vacation(
            r#"require "vacation"; vacation :from "ceo@example.test" "away";"#,
            &|_, _| false,
        );
        assert!(d.replies.is_empty(), "{d:?}");
        assert!(
            d.actions
                .iter()
                .any(|a| a.contains(":from is not the user")),
            "{d:?}"
        );
    }

    #[test]
    fn an_encoded_line_break_in_the_subject_cannot_add_a_field_to_the_vacation_reply() {
        // The Subject decodes to "hi\r\nX-Injected: yes\r\nBcc: victim@x.test"; the reply's
        // "Auto: <subject>" must keep it inside one field.
        let msg = b"From: Boss <boss@corp.test>\r\nTo: me@example.test\r\nSubject: =?UTF-8?B?aGkNClgtSW5qZWN0ZWQ6IHllcw0KQmNjOiB2aWN0aW1AeC50ZXN0?=\r\nMessage-ID: <2@corp.test>\r\n\r\nHi.\r\n";
        let boxes = ["INBOX".to_string()];
        let d = evaluate(
            r#"require "vacation"; vacation "I am away";"#,
            msg,
            &env(&|_, _| false, &boxes),
            &Limits::default(),
        );
        assert!(d.replies.is_empty(), "{d:?}");
        assert!(
            d.actions
                .iter()
                .any(|a| a.contains("not sent: it would carry")),
            "{d:?}"
        );
        for (_, reply, _) in &d.replies {
            let end = crate::ingest::header_len(reply);
            let head = String::from_utf8_lossy(&reply[..end]);
            for line in head.split("\r\n") {
                assert!(
                    !line.starts_with("X-Injected") && !line.starts_with("Bcc"),
                    "{head}"
                );
                assert!(!line.contains(['\r', '\n']), "{head:?}");
            }
        }
    }

    #[test]
    fn automatic_mail_gets_no_reply() {
        let base = "From: a@b.test\r\nTo: me@example.test\r\n";
        for (extra, none) in [
            ("Auto-Submitted: auto-replied\r\n", true),
            ("Auto-Submitted: No\r\n", false),
            ("Precedence: bulk\r\n", true),
            ("List-Unsubscribe:\r\n <mailto:x@y.test>\r\n", true),
            ("X-Auto-Response-Suppress: OOF, AutoReply\r\n", true),
            ("", false),
        ] {
            let m = format!("{base}{extra}\r\nbody\r\n");
            assert_eq!(no_auto_reply(m.as_bytes()).is_some(), none, "{extra}");
        }
    }

    #[test]
    fn runaway_scripts_are_stopped() {
        let limits = Limits {
            max_instructions: 100,
            ..Limits::default()
        };
        // Sieve has no loops: many tests make many instructions.
        let many = format!(
            "require [\"variables\"];\n{}",
            "if header :contains \"subject\" \"x\" { keep; }\n".repeat(500)
        );
        let d = evaluate(&many, MSG, &env(&|_, _| false, &[]), &limits);
        assert!(d.error.is_some(), "{d:?}");
        assert_eq!(d.copies.len(), 1);
    }
}
