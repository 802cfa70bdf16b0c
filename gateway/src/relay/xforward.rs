//! XFORWARD (Postfix's XFORWARD_README): the commands, sent before MAIL in every transaction
//! when the next hop offers the extension, that give it the client's address, name, HELO and
//! protocol. Pure: the lines are built here and sent by `RelayClient`.

use super::facts::ClientFacts;

/// Longest XFORWARD command, CRLF included (XFORWARD_README); more attributes go in another.
const MAX_COMMAND: usize = 512;
/// What XFORWARD_README says for a fact that is not known.
const UNAVAILABLE: &str = "[UNAVAILABLE]";

/// The XFORWARD commands for `facts`, with only the attributes the next hop listed in its EHLO
/// (`offered`, e.g. `["NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT"]`). An
/// attribute too long for a command of its own (a HELO name of hundreds of bytes, xtext-encoded)
/// is left out: the next hop then keeps its own value for it.
pub fn commands(facts: &ClientFacts, offered: &[String]) -> Vec<String> {
    let name = facts.name.as_deref().unwrap_or(UNAVAILABLE);
    let helo = if facts.helo.is_empty() { UNAVAILABLE } else { &facts.helo };
    let attributes = [
        ("NAME", name.to_string()),
        ("ADDR", facts.address_literal()),
        ("PORT", facts.port.to_string()),
        ("PROTO", facts.proto.name().to_string()),
        ("HELO", helo.to_string()),
        ("SOURCE", "REMOTE".to_string()),
    ];
    let mut commands = Vec::new();
    let mut line = String::from("XFORWARD");
    for (key, value) in attributes {
        if !offered.iter().any(|o| o.eq_ignore_ascii_case(key)) {
            continue;
        }
        let attribute = format!(" {key}={}", xtext(value.as_bytes()));
        if "XFORWARD".len() + attribute.len() + 2 > MAX_COMMAND {
            continue;
        }
        if line.len() + attribute.len() + 2 > MAX_COMMAND {
            commands.push(std::mem::replace(&mut line, String::from("XFORWARD")));
        }
        line.push_str(&attribute);
    }
    if line.len() > "XFORWARD".len() {
        commands.push(line);
    }
    commands
}

/// RFC 3461 xtext: `!` to `~` as they are, except `+` and `=`; any other byte as `+XX`.
fn xtext(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &byte in value {
        match byte {
            b'+' | b'=' => out.push_str(&format!("+{byte:02X}")),
            b'!'..=b'~' => out.push(byte as char),
            _ => out.push_str(&format!("+{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::facts::Proto;

    fn facts(helo: &str) -> ClientFacts {
        ClientFacts {
            addr: "192.0.2.9".parse().unwrap(),
            port: 40123,
            name: None,
            helo: helo.into(),
            proto: Proto::Esmtp,
            tls: None,
        }
    }

    fn postfix_offer() -> Vec<String> {
        ["NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT"].map(String::from).to_vec()
    }

    #[test]
    fn one_command_with_every_offered_attribute() {
        assert_eq!(
            commands(&facts("client.example"), &postfix_offer()),
            ["XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.9 PORT=40123 PROTO=ESMTP HELO=client.example SOURCE=REMOTE"]
        );
    }

    #[test]
    fn only_the_offered_attributes_and_none_when_none_is_offered() {
        let offered = ["addr", "helo"].map(String::from).to_vec();
        assert_eq!(commands(&facts("h"), &offered), ["XFORWARD ADDR=192.0.2.9 HELO=h"]);
        assert!(commands(&facts("h"), &[]).is_empty());
    }

    #[test]
    fn values_are_xtext_and_ipv6_is_marked() {
        let mut f = facts("we ird+=é");
        f.addr = "2001:db8::1".parse().unwrap();
        f.proto = Proto::Smtp;
        f.name = Some("mx.example".into());
        let lines = commands(&f, &postfix_offer());
        assert_eq!(
            lines,
            ["XFORWARD NAME=mx.example ADDR=IPv6:2001:db8::1 PORT=40123 PROTO=SMTP HELO=we+20ird+2B+3D+C3+A9 SOURCE=REMOTE"]
        );
        // A v4 client on a dual-stack socket is written as v4.
        f.addr = "::ffff:192.0.2.9".parse().unwrap();
        assert!(commands(&f, &postfix_offer())[0].contains(" ADDR=192.0.2.9 "));
        assert_eq!(facts("").address_literal(), "192.0.2.9");
        assert!(commands(&facts(""), &postfix_offer())[0].contains(" HELO=[UNAVAILABLE] "));
    }

    #[test]
    fn long_values_split_the_command_and_none_exceeds_512() {
        let lines = commands(&facts(&"h".repeat(450)), &postfix_offer());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.len() + 2 <= MAX_COMMAND && l.starts_with("XFORWARD ")));
        assert!(lines[1].starts_with("XFORWARD HELO=hhh"), "{lines:?}");
        assert!(lines[1].ends_with(" SOURCE=REMOTE"), "{lines:?}");
        // Too long even alone: left out, the rest still sent.
        let lines = commands(&facts(&"\u{1}".repeat(200)), &postfix_offer());
        assert_eq!(lines, ["XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.9 PORT=40123 PROTO=ESMTP SOURCE=REMOTE"]);
    }
}
