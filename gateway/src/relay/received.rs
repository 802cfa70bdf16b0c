//! The `Received:` field the relay prepends when `[relay] add_received = true` (RFC 5321 §4.4):
//! where the message came from (the client's HELO and address), who took it (Sluice), how
//! (`with ESMTP`, `ESMTPS` over TLS), Sluice's transaction id, the recipient when there is one,
//! and when. Pure: rendered here, written before the content by the wire.

use std::time::{SystemTime, UNIX_EPOCH};

use super::facts::{ClientFacts, Proto};

/// Fold before this many characters where a clause boundary allows (RFC 5322 §2.1.1).
const FOLD_AT: usize = 78;

/// What a field names besides the client.
pub struct Receipt<'a> {
    /// Our host name, after `by`.
    pub by: &'a str,
    /// Sluice's transaction id, after `id`.
    pub id: &'a str,
    /// The recipient, named only when the message has exactly one (RFC 5321 §7.2).
    pub rcpt: Option<&'a str>,
}

/// The field, folded, ending in CRLF, dated `now`.
pub fn field(client: &ClientFacts, receipt: &Receipt<'_>, now: SystemTime) -> String {
    let literal = format!("[{}]", client.address_literal());
    let helo = sanitized(&client.helo);
    let from = if helo.is_empty() { literal.clone() } else { helo };
    let info = match &client.name {
        Some(name) => format!("{} {literal}", sanitized(name)),
        None => literal,
    };
    let with = match (client.proto, &client.tls) {
        (Proto::Esmtp, Some(_)) => "ESMTPS",
        (proto, _) => proto.name(),
    };
    let mut clauses = vec![format!("from {from} ({info})")];
    if let Some(tls) = &client.tls {
        // Ours (`tls::describe`), not the client's: written as it is.
        clauses.push(format!("(using {tls})"));
    }
    clauses.push(format!("by {} (Sluice)", receipt.by));
    clauses.push(format!("with {with}"));
    clauses.push(format!("id {}", receipt.id));
    if let Some(rcpt) = receipt.rcpt {
        clauses.push(format!("for <{rcpt}>"));
    }
    if let Some(last) = clauses.last_mut() {
        last.push(';');
    }
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    clauses.push(date(secs));
    fold("Received:", &clauses)
}

/// The clauses after `name`, each kept whole on a line, a new line (tab-indented) begun where
/// the next would pass `FOLD_AT`.
fn fold(name: &str, clauses: &[String]) -> String {
    let mut out = String::from(name);
    let mut column = name.len();
    for clause in clauses {
        if column + 1 + clause.len() > FOLD_AT && column > 1 {
            out.push_str("\r\n\t");
            column = 1;
        } else {
            out.push(' ');
            column += 1;
        }
        out.push_str(clause);
        column += clause.len();
    }
    out.push_str("\r\n");
    out
}

/// A client-given name as a field may carry it: printable ASCII, without the characters that
/// would end a comment or the clause list (`(`, `)`, `\`, `;`); others become `?`.
fn sanitized(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_graphic() && !"()\\;".contains(c) { c } else { '?' }).collect()
}

/// RFC 5322 date-time in UTC: `Tue, 14 Nov 2023 22:13:20 +0000`.
fn date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil(days as i64);
    format!(
        "{}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn client(helo: &str, tls: Option<&str>) -> ClientFacts {
        ClientFacts {
            addr: "127.0.0.9".parse().unwrap(),
            port: 40000,
            name: None,
            helo: helo.into(),
            proto: Proto::Esmtp,
            tls: tls.map(String::from),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
        assert_eq!(date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(date(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 +0000");
    }

    #[test]
    fn a_plain_field_folds_at_clause_boundaries() {
        let receipt = Receipt { by: "gw.example.org", id: "18c2f0a1b2c.1f.1", rcpt: Some("b@dest.example") };
        let field = field(&client("client.example", None), &receipt, at(1_700_000_000));
        assert_eq!(
            field,
            "Received: from client.example ([127.0.0.9]) by gw.example.org (Sluice)\r\n\
             \twith ESMTP id 18c2f0a1b2c.1f.1 for <b@dest.example>;\r\n\
             \tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        assert!(field.split("\r\n").all(|line| line.len() <= FOLD_AT), "{field}");
    }

    #[test]
    fn tls_recipients_names_and_odd_helos() {
        let receipt = Receipt { by: "gw", id: "1.2.3", rcpt: None };
        let tls = "TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384";
        let mut facts = client("mx.example", Some(tls));
        facts.name = Some("mx.example".into());
        let field = field(&facts, &receipt, at(0));
        assert_eq!(
            field,
            "Received: from mx.example (mx.example [127.0.0.9])\r\n\
             \t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384) by gw (Sluice)\r\n\
             \twith ESMTPS id 1.2.3; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        // No HELO: the address stands in; a HELO cannot close the comment or the clause list.
        let field = super::field(&client("", None), &receipt, at(0));
        assert!(field.starts_with("Received: from [127.0.0.9] ([127.0.0.9]) by gw"), "{field}");
        let field = super::field(&client("a); Mon, 1 Jan 2001", None), &receipt, at(0));
        assert!(field.starts_with("Received: from a???Mon,?1?Jan?2001 ([127.0.0.9])"), "{field}");
        let mut v6 = client("h", None);
        v6.addr = "2001:db8::1".parse().unwrap();
        v6.proto = Proto::Smtp;
        let field = super::field(&v6, &receipt, at(0));
        assert!(field.starts_with("Received: from h ([IPv6:2001:db8::1]) by gw (Sluice) with SMTP id"), "{field}");
    }
}
