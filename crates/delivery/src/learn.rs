//! Users teach their own spam models by filing mail: a message moved or copied into Junk is
//! learnt as spam, one moved out of Junk (anywhere but Trash) as ham. This is what
//! Dovecot's antispam plugins and Stalwart do; the model is the user's own (model id = the
//! account id), added to the server's when their mail is scored.
//!
//! Each message is learnt once per model, keyed by its blob (its content's hash): moving it
//! back and forth moves it between the two sides instead of counting it again.

use mailkeep_store::{SharedStore, StoreError};
use mailkeep_types::{MailboxId, MailboxRole, Uid};

/// What moving messages from a mailbox with role `from` to one with role `to` teaches:
/// Some(true) spam, Some(false) ham, None nothing.
pub fn lesson(from: Option<MailboxRole>, to: Option<MailboxRole>) -> Option<bool> {
    let junk = Some(MailboxRole::Junk);
    if to == junk && from != junk {
        Some(true)
    } else if from == junk && to != junk && to != Some(MailboxRole::Trash) {
        // Deleting spam says nothing about it.
        Some(false)
    } else {
        None
    }
}

/// Learns the messages `uids` of `mailbox` for `model` as spam or ham; returns how many
/// changed the model (messages learnt that way before are skipped).
pub async fn learn(
    store: &SharedStore,
    mailbox: MailboxId,
    uids: &[Uid],
    model: i64,
    is_spam: bool,
) -> Result<usize, StoreError> {
    let metas = store.messages_by_uid(mailbox, uids).await?;
    let mut changed = 0;
    for meta in metas {
        let Some(bytes) = store.get_blob(&meta.blob).await? else {
            continue;
        };
        // Tokenizing a large message is CPU work: off the async threads.
        let tokens = tokio::task::spawn_blocking(move || {
            let mut t: Vec<String> = mailkeep_policy::spam::tokens(&bytes).into_iter().collect();
            t.sort();
            t
        })
        .await
        .map_err(|e| StoreError::Backend(format!("tokenizing: {e}")))?;
        if store
            .spam_train(model, &meta.blob.0, &tokens, is_spam)
            .await?
        {
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MailboxRole::*;

    #[test]
    fn lessons_follow_junk() {
        assert_eq!(lesson(Some(Inbox), Some(Junk)), Some(true));
        assert_eq!(lesson(None, Some(Junk)), Some(true));
        assert_eq!(lesson(Some(Junk), Some(Inbox)), Some(false));
        assert_eq!(lesson(Some(Junk), None), Some(false));
        assert_eq!(lesson(Some(Junk), Some(Trash)), None);
        assert_eq!(lesson(Some(Junk), Some(Junk)), None);
        assert_eq!(lesson(Some(Inbox), Some(Archive)), None);
    }
}
