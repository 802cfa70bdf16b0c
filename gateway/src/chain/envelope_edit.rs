//! The envelope as the chain's stages changed it (`EnvelopeChange`s at `end`, in chain order),
//! applied to the transaction's sender and the recipients the next hop accepted. Pure.

use super::stage::EnvelopeChange;

/// The envelope to relay instead of the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditedEnvelope {
    pub mail_from: String,
    pub recipients: Vec<String>,
}

impl EditedEnvelope {
    /// Whether `recipient` is one the stages added (the client did not give it).
    pub fn added(&self, original: &[String], recipient: &str) -> bool {
        !original.iter().any(|r| same_address(r, recipient))
    }
}

/// Addresses are the same when their local parts are (RFC 5321 §2.4: case matters there) and
/// their domains are without regard to case.
pub fn same_address(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((a_local, a_domain)), Some((b_local, b_domain))) => {
            a_local == b_local && a_domain.eq_ignore_ascii_case(b_domain)
        }
        _ => a == b,
    }
}

/// The changed envelope, or None when the changes leave it as it was. Adding a recipient that
/// is there already, or removing one that is not, changes nothing.
pub fn apply(mail_from: &str, recipients: &[String], changes: &[EnvelopeChange]) -> Option<EditedEnvelope> {
    let mut edited = EditedEnvelope { mail_from: mail_from.to_string(), recipients: recipients.to_vec() };
    for change in changes {
        match change {
            EnvelopeChange::AddRecipient(to) => {
                if !edited.recipients.iter().any(|r| same_address(r, to)) {
                    edited.recipients.push(to.clone());
                }
            }
            EnvelopeChange::RemoveRecipient(to) => edited.recipients.retain(|r| !same_address(r, to)),
            EnvelopeChange::ChangeSender(from) => edited.mail_from = from.clone(),
        }
    }
    let unchanged = edited.mail_from == mail_from && edited.recipients == recipients;
    (!unchanged).then_some(edited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use EnvelopeChange::*;

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changes_apply_in_order() {
        let original = rcpts(&["a@x.test", "b@x.test"]);
        let cases: Vec<(Vec<EnvelopeChange>, Option<(&str, Vec<String>)>)> = vec![
            (vec![], None),
            (vec![AddRecipient("a@X.TEST".into())], None),
            (vec![AddRecipient("A@x.test".into())], Some(("s@x.test", rcpts(&["a@x.test", "b@x.test", "A@x.test"])))),
            (vec![RemoveRecipient("B@x.test".into())], None),
            (vec![RemoveRecipient("nobody@x.test".into())], None),
            (vec![AddRecipient("c@x.test".into())], Some(("s@x.test", rcpts(&["a@x.test", "b@x.test", "c@x.test"])))),
            (vec![RemoveRecipient("b@X.test".into())], Some(("s@x.test", rcpts(&["a@x.test"])))),
            (vec![RemoveRecipient("a@x.test".into()), RemoveRecipient("b@x.test".into())], Some(("s@x.test", vec![]))),
            (vec![ChangeSender(String::new())], Some(("", original.clone()))),
            (vec![AddRecipient("c@x.test".into()), RemoveRecipient("c@x.test".into())], None),
        ];
        for (changes, expected) in cases {
            let got = apply("s@x.test", &original, &changes);
            let expected = expected.map(|(from, recipients)| EditedEnvelope { mail_from: from.into(), recipients });
            assert_eq!(got, expected, "{changes:?}");
        }
        let edited = apply("s@x.test", &original, &[AddRecipient("c@x.test".into())]).unwrap();
        assert!(edited.added(&original, "c@x.test") && !edited.added(&original, "a@X.test"));
    }
}
