//! A milter's end-of-message modifications, gathered until its final answer and turned into the
//! chain's changes: header changes, envelope changes, a replaced body, a quarantine. Each is
//! allowed only if negotiated, and the whole is bounded as it arrives (the chain's per-answer
//! limits in number and bytes, the message size for a body): a milter cannot make the host hold
//! more than a stage may answer. Pure.

use bytes::Bytes;

use super::codec::{Actions, OptNeg, Reply};
use crate::chain::answer::{MAX_ADDRESS, MAX_ENVELOPE_CHANGES, MAX_HEADER_BYTES, MAX_HEADER_CHANGES};
use crate::chain::headers::HeaderChange;
use crate::chain::stage::{BodyOutput, EnvelopeChange, Reaction, Verdict};
use crate::config::stages::QuarantineAction;
use crate::milter::codec::Protocol;
use crate::smtp::reply::Reply as SmtpReply;

/// The quarantine reason kept (it goes into a reply or a header field).
const MAX_REASON: usize = 200;

pub struct Modifications {
    headers: Vec<HeaderChange>,
    /// Octets of field names and values so far.
    header_bytes: usize,
    envelope: Vec<EnvelopeChange>,
    /// The new body, if the milter replaced it.
    body: Option<Vec<Bytes>>,
    body_bytes: u64,
    max_body: u64,
    quarantine: Option<String>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Modifications {
    pub fn new(max_body: u64) -> Modifications {
        Modifications {
            headers: Vec::new(),
            header_bytes: 0,
            envelope: Vec::new(),
            body: None,
            body_bytes: 0,
            max_body,
            quarantine: None,
        }
    }

    /// Takes one modification packet; an error names what the milter did wrong.
    pub fn add(&mut self, packet: Reply, agreed: OptNeg) -> Result<(), String> {
        let needs = |action: Actions, name: &str| match agreed.actions.contains(action) {
            true => Ok(()),
            false => Err(format!("sent {name} without having negotiated it")),
        };
        // With leading space negotiated, values come with the space after the colon, which
        // Sluice writes itself.
        let value = |bytes: &[u8]| {
            let value = text(bytes);
            match agreed.protocol.contains(Protocol::HEADER_LEADING_SPACE) {
                true => value.strip_prefix(' ').map(str::to_string).unwrap_or(value),
                false => value,
            }
        };
        match packet {
            Reply::AddHeader { name, value: v } => {
                needs(Actions::ADD_HEADERS, "SMFIR_ADDHEADER")?;
                self.header(HeaderChange::Add { name: text(&name), value: value(&v) })?;
            }
            // Index 0 is the top; any other index is below the MTA's own trace field, which
            // Sluice's relay adds above the section: the top is the same place here.
            Reply::InsertHeader { name, value: v, .. } => {
                needs(Actions::ADD_HEADERS, "SMFIR_INSHEADER")?;
                self.header(HeaderChange::Prepend { name: text(&name), value: value(&v) })?;
            }
            // Index 0 means the first, as in Sendmail; an empty value deletes the field.
            Reply::ChangeHeader { index, name, value: v } => {
                needs(Actions::CHANGE_HEADERS, "SMFIR_CHGHEADER")?;
                let (name, index) = (text(&name), index.max(1));
                self.header(match v.is_empty() {
                    true => HeaderChange::Remove { name, index },
                    false => HeaderChange::Change { name, index, value: value(&v) },
                })?;
            }
            Reply::AddRcpt(rcpt) => {
                needs(Actions::ADD_RCPT, "SMFIR_ADDRCPT")?;
                self.envelope(EnvelopeChange::AddRecipient(text(&rcpt)))?;
            }
            // The ESMTP arguments (DSN) are not passed on: Sluice relays none of its own either.
            Reply::AddRcptWithArgs { rcpt, .. } => {
                needs(Actions::ADD_RCPT_PAR, "SMFIR_ADDRCPT_PAR")?;
                self.envelope(EnvelopeChange::AddRecipient(text(&rcpt)))?;
            }
            Reply::DeleteRcpt(rcpt) => {
                needs(Actions::DELETE_RCPT, "SMFIR_DELRCPT")?;
                self.envelope(EnvelopeChange::RemoveRecipient(text(&rcpt)))?;
            }
            Reply::ChangeFrom { from, .. } => {
                needs(Actions::CHANGE_FROM, "SMFIR_CHGFROM")?;
                self.envelope(EnvelopeChange::ChangeSender(text(&from)))?;
            }
            Reply::ReplaceBody(piece) => {
                needs(Actions::CHANGE_BODY, "SMFIR_REPLBODY")?;
                self.body_bytes += piece.len() as u64;
                if self.body_bytes > self.max_body {
                    return Err(format!("replaced the body with more than {} octets", self.max_body));
                }
                self.body.get_or_insert_with(Vec::new).push(piece);
            }
            Reply::Quarantine(reason) => {
                needs(Actions::QUARANTINE, "SMFIR_QUARANTINE")?;
                self.quarantine = Some(text(&reason).chars().take(MAX_REASON).collect());
            }
            other => return Err(format!("sent {} among its modifications", other.name())),
        }
        Ok(())
    }

    fn header(&mut self, change: HeaderChange) -> Result<(), String> {
        if self.headers.len() >= MAX_HEADER_CHANGES {
            return Err(format!("sent more than {MAX_HEADER_CHANGES} header changes"));
        }
        self.header_bytes += match &change {
            HeaderChange::Add { name, value }
            | HeaderChange::Prepend { name, value }
            | HeaderChange::Change { name, value, .. } => name.len() + value.len(),
            HeaderChange::Remove { name, .. } => name.len(),
        };
        if self.header_bytes > MAX_HEADER_BYTES {
            return Err(format!("sent more than {MAX_HEADER_BYTES} octets of header changes"));
        }
        self.headers.push(change);
        Ok(())
    }

    fn envelope(&mut self, change: EnvelopeChange) -> Result<(), String> {
        if self.envelope.len() >= MAX_ENVELOPE_CHANGES {
            return Err(format!("sent more than {MAX_ENVELOPE_CHANGES} envelope changes"));
        }
        let (EnvelopeChange::AddRecipient(address)
        | EnvelopeChange::RemoveRecipient(address)
        | EnvelopeChange::ChangeSender(address)) = &change;
        // With its angle brackets.
        if address.len() > MAX_ADDRESS + 2 {
            return Err(format!("sent an address of {} octets", address.len()));
        }
        self.envelope.push(change);
        Ok(())
    }

    /// The stage's answer at end: the milter's verdict (continue or accept) with its changes;
    /// a quarantine becomes what `quarantine` says.
    pub fn into_reaction(self, verdict: Verdict, quarantine: &QuarantineAction, subject: Option<&str>) -> Reaction {
        let mut reaction = Reaction {
            header_changes: self.headers,
            envelope: self.envelope,
            body: self.body.map_or(BodyOutput::Pass, BodyOutput::Replace),
            ..Reaction::verdict(verdict)
        };
        let Some(reason) = self.quarantine else { return reaction };
        match quarantine {
            QuarantineAction::Tempfail => {
                let text = format!("Message held for review: {}", reason.trim());
                return Reaction::verdict(Verdict::Tempfail(SmtpReply::new(451, "4.7.1", text)));
            }
            QuarantineAction::Tag => reaction.header_changes.push(HeaderChange::Change {
                name: "Subject".into(),
                index: 1,
                value: format!("[QUARANTINE] {}", subject.unwrap_or_default()),
            }),
            QuarantineAction::Header => {
                reaction.header_changes.push(HeaderChange::Add { name: "X-Quarantined".into(), value: reason })
            }
        }
        reaction
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milter::codec::VERSION;

    fn agreed(actions: Actions, protocol: Protocol) -> OptNeg {
        OptNeg { version: VERSION, actions, protocol }
    }

    fn all() -> OptNeg {
        agreed(Actions(0x1ff), Protocol(0))
    }

    #[test]
    fn modifications_map_to_changes() {
        let mut mods = Modifications::new(100);
        let packets = vec![
            Reply::AddHeader { name: b"X-A".to_vec(), value: b"1".to_vec() },
            Reply::InsertHeader { index: 1, name: b"DKIM-Signature".to_vec(), value: b"v=1".to_vec() },
            Reply::ChangeHeader { index: 0, name: b"Subject".to_vec(), value: b"new".to_vec() },
            Reply::ChangeHeader { index: 2, name: b"X-B".to_vec(), value: Vec::new() },
            Reply::AddRcpt(b"<c@x.test>".to_vec()),
            Reply::AddRcptWithArgs { rcpt: b"d@x.test".to_vec(), args: b"NOTIFY=NEVER".to_vec() },
            Reply::DeleteRcpt(b"<a@x.test>".to_vec()),
            Reply::ChangeFrom { from: b"<>".to_vec(), args: None },
            Reply::ReplaceBody(Bytes::from_static(b"new body\r\n")),
        ];
        for packet in packets {
            mods.add(packet, all()).unwrap();
        }
        let reaction = mods.into_reaction(Verdict::Continue, &QuarantineAction::Tempfail, None);
        assert_eq!(
            reaction.header_changes,
            vec![
                HeaderChange::Add { name: "X-A".into(), value: "1".into() },
                HeaderChange::Prepend { name: "DKIM-Signature".into(), value: "v=1".into() },
                HeaderChange::Change { name: "Subject".into(), index: 1, value: "new".into() },
                HeaderChange::Remove { name: "X-B".into(), index: 2 },
            ]
        );
        assert_eq!(
            reaction.envelope,
            vec![
                EnvelopeChange::AddRecipient("<c@x.test>".into()),
                EnvelopeChange::AddRecipient("d@x.test".into()),
                EnvelopeChange::RemoveRecipient("<a@x.test>".into()),
                EnvelopeChange::ChangeSender("<>".into()),
            ]
        );
        assert_eq!(reaction.body, BodyOutput::Replace(vec![Bytes::from_static(b"new body\r\n")]));
    }

    #[test]
    fn what_was_not_negotiated_or_is_too_much_is_refused() {
        let only_headers = agreed(Actions::ADD_HEADERS, Protocol(0));
        let cases = [
            (Reply::ChangeHeader { index: 1, name: b"S".to_vec(), value: b"v".to_vec() }, "SMFIR_CHGHEADER"),
            (Reply::AddRcpt(b"a@x".to_vec()), "SMFIR_ADDRCPT"),
            (Reply::ReplaceBody(Bytes::from_static(b"x")), "SMFIR_REPLBODY"),
            (Reply::Quarantine(b"why".to_vec()), "SMFIR_QUARANTINE"),
            (Reply::Continue, "among its modifications"),
        ];
        for (packet, expected) in cases {
            let err = Modifications::new(100).add(packet, only_headers).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let mut mods = Modifications::new(4);
        let err = mods.add(Reply::ReplaceBody(Bytes::from_static(b"12345")), all()).unwrap_err();
        assert!(err.contains("more than 4 octets"), "{err}");
        let mut mods = Modifications::new(4);
        for _ in 0..MAX_HEADER_CHANGES {
            mods.add(Reply::AddHeader { name: b"X".to_vec(), value: b"v".to_vec() }, all()).unwrap();
        }
        assert!(mods.add(Reply::AddHeader { name: b"X".to_vec(), value: b"v".to_vec() }, all()).is_err());
        let mut mods = Modifications::new(4);
        let big = Reply::AddHeader { name: b"X".to_vec(), value: vec![b'v'; MAX_HEADER_BYTES] };
        assert!(mods.add(big, all()).unwrap_err().contains("octets of header changes"));
        let long = Reply::AddRcpt([b"<".as_slice(), &[b'a'; 300], b"@x.test>"].concat());
        assert!(Modifications::new(4).add(long, all()).unwrap_err().contains("an address of"));
    }

    #[test]
    fn leading_space_is_ours_to_write() {
        let mut mods = Modifications::new(100);
        let leading = agreed(Actions::ADD_HEADERS, Protocol::HEADER_LEADING_SPACE);
        mods.add(Reply::AddHeader { name: b"X-A".to_vec(), value: b" spaced".to_vec() }, leading).unwrap();
        let reaction = mods.into_reaction(Verdict::Continue, &QuarantineAction::Tempfail, None);
        assert_eq!(reaction.header_changes, vec![HeaderChange::Add { name: "X-A".into(), value: "spaced".into() }]);
    }

    #[test]
    fn quarantine_becomes_the_configured_action() {
        let quarantined = |action: QuarantineAction| {
            let mut mods = Modifications::new(100);
            mods.add(Reply::Quarantine(b"suspicious".to_vec()), all()).unwrap();
            mods.into_reaction(Verdict::Continue, &action, Some("Hello"))
        };
        let held = quarantined(QuarantineAction::Tempfail);
        assert!(
            matches!(&held.verdict, Verdict::Tempfail(reply) if reply.code == 451 && reply.summary().contains("suspicious"))
        );
        assert_eq!(
            quarantined(QuarantineAction::Tag).header_changes,
            vec![HeaderChange::Change { name: "Subject".into(), index: 1, value: "[QUARANTINE] Hello".into() }]
        );
        assert_eq!(
            quarantined(QuarantineAction::Header).header_changes,
            vec![HeaderChange::Add { name: "X-Quarantined".into(), value: "suspicious".into() }]
        );
    }
}
