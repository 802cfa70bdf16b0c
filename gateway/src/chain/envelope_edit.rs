//! The envelope as the chain's stages changed it (`EnvelopeChange`s at `end`, in chain order),
//! applied to the transaction's sender and the recipients the next hop accepted. Pure.

use super::stage::EnvelopeChange;

/// The envelope to relay instead of the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditedEnvelope {
    pub mail_from: String,
    pub recipients: Vec<String>,
}

/// The changed envelope, or None when the changes leave it as it was. Addresses compare without
/// regard to case; adding a recipient that is there already, or removing one that is not, changes
/// nothing.
pub fn apply(mail_from: &str, recipients: &[String], changes: &[EnvelopeChange]) -> Option<EditedEnvelope> {
    let mut edited = EditedEnvelope { mail_from: mail_from.to_string(), recipients: recipients.to_vec() };
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    for change in changes {
        match change {
            EnvelopeChange::AddRecipient(to) => {
                if !edited.recipients.iter().any(|r| same(r, to)) {
                    edited.recipients.push(to.clone());
                }
            }
            EnvelopeChange::RemoveRecipient(to) => edited.recipients.retain(|r| !same(r, to)),
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
            (vec![AddRecipient("A@X.test".into())], None),
            (vec![RemoveRecipient("nobody@x.test".into())], None),
            (vec![AddRecipient("c@x.test".into())], Some(("s@x.test", rcpts(&["a@x.test", "b@x.test", "c@x.test"])))),
            (vec![RemoveRecipient("B@x.test".into())], Some(("s@x.test", rcpts(&["a@x.test"])))),
            (vec![RemoveRecipient("a@x.test".into()), RemoveRecipient("b@x.test".into())], Some(("s@x.test", vec![]))),
            (vec![ChangeSender(String::new())], Some(("", original.clone()))),
            (vec![AddRecipient("c@x.test".into()), RemoveRecipient("c@x.test".into())], None),
        ];
        for (changes, expected) in cases {
            let got = apply("s@x.test", &original, &changes);
            let expected = expected.map(|(from, recipients)| EditedEnvelope { mail_from: from.into(), recipients });
            assert_eq!(got, expected, "{changes:?}");
        }
    }
}
