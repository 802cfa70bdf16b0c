//! Between the chain's contract and the milter protocol, both ways, pure: a header field as a
//! milter is sent it, the macros that go with the connection, and a milter's answer as the
//! chain's verdict.

use super::codec::{Command, Reply};
use crate::chain::stage::Verdict;
use crate::smtp::reply::Reply as SmtpReply;

/// Where in the transaction an answer came: it decides the text of a bare reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Envelope,
    Content,
}

/// The verdict a milter's answer stands for; an error says what was wrong with it.
pub fn verdict(answer: Reply, phase: Phase) -> Result<Verdict, String> {
    Ok(match answer {
        Reply::Continue => Verdict::Continue,
        Reply::Accept => Verdict::Accept,
        Reply::Discard => Verdict::Discard,
        Reply::Reject => Verdict::Reject(match phase {
            Phase::Envelope => SmtpReply::new(550, "5.7.1", "Command rejected"),
            Phase::Content => SmtpReply::new(554, "5.7.1", "Message content rejected"),
        }),
        Reply::Tempfail => Verdict::Tempfail(SmtpReply::new(451, "4.7.1", "Service unavailable - try again later")),
        Reply::ReplyCode(text) => {
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<String> = text.split('\n').map(|l| l.trim_end_matches('\r').to_string()).collect();
            match SmtpReply::parse_lines(&lines) {
                Some(reply) if reply.is_transient() => Verdict::Tempfail(reply),
                Some(reply) if reply.code / 100 == 5 => Verdict::Reject(reply),
                _ => return Err(format!("sent a reply code that is not 4xx or 5xx: {text:?}")),
            }
        }
        other => return Err(format!("answered {} where a verdict was due", other.name())),
    })
}

/// Whether a packet ends the milter's answer to end of message (the rest are its changes, or
/// out of place).
pub fn is_final(reply: &Reply) -> bool {
    matches!(
        reply,
        Reply::Accept | Reply::Continue | Reply::Discard | Reply::Reject | Reply::Tempfail | Reply::ReplyCode(_)
    )
}

/// A raw header field as the milter protocol carries it: the name without trailing white space,
/// and the value after the colon, folds as bare LF (as Sendmail and Postfix send them), without
/// the final line end and, unless the milter asked for leading space, without the one space
/// after the colon.
pub fn header(raw: &[u8], leading_space: bool) -> Command {
    let colon = memchr::memchr(b':', raw).unwrap_or(raw.len());
    let name = raw[..colon].trim_ascii_end().to_vec();
    let mut value = raw.get(colon + 1..).unwrap_or_default();
    value = value.strip_suffix(b"\r\n").or_else(|| value.strip_suffix(b"\n")).unwrap_or(value);
    if !leading_space {
        value = value.strip_prefix(b" ").unwrap_or(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = memchr::memmem::find(rest, b"\r\n") {
        out.extend_from_slice(&rest[..at]);
        out.push(b'\n');
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    Command::Header { name, value: out }
}

/// The macros sent with CONNECT: the built-in ones, then `extra` (`[stage.macros]`), which
/// replaces a built-in one of the same name.
pub fn connect_macros(hostname: &str, client_addr: &str, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut pairs = vec![
        ("j".to_string(), hostname.to_string()),
        ("{daemon_name}".to_string(), "sluice".to_string()),
        ("{client_addr}".to_string(), client_addr.to_string()),
        ("{client_name}".to_string(), "unknown".to_string()),
    ];
    for (name, value) in extra {
        pairs.retain(|(n, _)| n != name);
        pairs.push((name.clone(), value.clone()));
    }
    pairs
}

/// SMFIC_MACRO for a command.
pub fn macros(for_command: u8, pairs: Vec<(String, String)>) -> Command {
    let macros = pairs.into_iter().map(|(name, value)| (name.into_bytes(), value.into_bytes())).collect();
    Command::Macros { for_command, macros }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_as_milters_see_them() {
        let cases: [(&[u8], bool, &[u8], &[u8]); 5] = [
            (b"Subject: hello\r\n", false, b"Subject", b"hello"),
            (b"Subject: hello\r\n", true, b"Subject", b" hello"),
            (b"Subject:hello\r\n", false, b"Subject", b"hello"),
            (b"X-Long: one\r\n\ttwo\r\n three\r\n", false, b"X-Long", b"one\n\ttwo\n three"),
            (b"To :  a@x.test\r\n", false, b"To", b" a@x.test"),
        ];
        for (raw, leading_space, name, value) in cases {
            let expected = Command::Header { name: name.to_vec(), value: value.to_vec() };
            assert_eq!(header(raw, leading_space), expected, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn answers_as_verdicts() {
        let reply = |code, enhanced, text| SmtpReply::new(code, enhanced, text);
        let cases = [
            (Reply::Continue, Phase::Envelope, Ok(Verdict::Continue)),
            (Reply::Accept, Phase::Content, Ok(Verdict::Accept)),
            (Reply::Discard, Phase::Content, Ok(Verdict::Discard)),
            (Reply::Reject, Phase::Envelope, Ok(Verdict::Reject(reply(550, "5.7.1", "Command rejected")))),
            (Reply::Reject, Phase::Content, Ok(Verdict::Reject(reply(554, "5.7.1", "Message content rejected")))),
            (
                Reply::Tempfail,
                Phase::Envelope,
                Ok(Verdict::Tempfail(reply(451, "4.7.1", "Service unavailable - try again later"))),
            ),
            (
                Reply::ReplyCode(b"550 5.1.1 No such user".to_vec()),
                Phase::Envelope,
                Ok(Verdict::Reject(reply(550, "5.1.1", "No such user"))),
            ),
            (
                Reply::ReplyCode(b"452 4.2.2 Mailbox full".to_vec()),
                Phase::Envelope,
                Ok(Verdict::Tempfail(reply(452, "4.2.2", "Mailbox full"))),
            ),
            (Reply::ReplyCode(b"250 2.0.0 fine".to_vec()), Phase::Content, Err("not 4xx or 5xx")),
            (Reply::ReplyCode(b"no code".to_vec()), Phase::Content, Err("not 4xx or 5xx")),
            (Reply::Skip, Phase::Envelope, Err("answered skip where a verdict was due")),
            (Reply::Progress, Phase::Content, Err("where a verdict was due")),
        ];
        for (answer, phase, expected) in cases {
            let what = format!("{answer:?} at {phase:?}");
            match (verdict(answer, phase), expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{what}"),
                (Err(got), Err(expected)) => assert!(got.contains(expected), "{what}: {got}"),
                (got, expected) => panic!("{what}: {got:?}, expected {expected:?}"),
            }
        }
        let multi = verdict(Reply::ReplyCode(b"450-4.7.1 one\r\n450 4.7.1 two".to_vec()), Phase::Content).unwrap();
        assert!(matches!(multi, Verdict::Tempfail(reply) if reply.lines == vec!["one", "two"]));
    }

    #[test]
    fn configured_macros_replace_built_in_ones() {
        let extra = vec![("{daemon_name}".to_string(), "mx-in".to_string()), ("{x}".to_string(), "1".to_string())];
        let pairs = connect_macros("gw.test", "192.0.2.1", &extra);
        let get = |name: &str| pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("{daemon_name}"), vec!["mx-in"]);
        assert_eq!(get("j"), vec!["gw.test"]);
        assert_eq!(get("{client_addr}"), vec!["192.0.2.1"]);
        assert_eq!(get("{x}"), vec!["1"]);
    }
}
