//! SMTP command syntax (RFC 5321 §4.1, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8,
//! RFC 3030 BDAT): one command line in, a typed `Command` or a typed syntax error out.

use super::reply::Reply;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: String,
        params: MailParams,
    },
    Rcpt {
        to: String,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// RFC 3207; offered only when `[tls]` is configured.
    StartTls,
    /// Known verbs we deliberately do not offer (AUTH, EXPN, ETRN, TURN).
    NotImplemented(String),
}

/// The MAIL FROM parameters we advertise; anything else is refused with 555.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("command not recognized")]
    Unrecognized,
    #[error("{0}")]
    Arguments(&'static str),
    #[error("bad sender address syntax")]
    Sender,
    #[error("bad recipient address syntax")]
    Recipient,
    #[error("unsupported parameter {0}")]
    Parameter(String),
    #[error("non-ASCII address requires SMTPUTF8")]
    NeedsSmtpUtf8,
}

impl SyntaxError {
    pub fn reply(&self) -> Reply {
        match self {
            SyntaxError::Unrecognized => Reply::new(500, "5.5.2", "Error: command not recognized"),
            SyntaxError::Arguments(what) => Reply::new(501, "5.5.4", format!("Syntax: {what}")),
            SyntaxError::Sender => Reply::new(501, "5.1.7", "Bad sender address syntax"),
            SyntaxError::Recipient => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
            SyntaxError::Parameter(p) => Reply::new(555, "5.5.4", format!("Unsupported option: {p}")),
            SyntaxError::NeedsSmtpUtf8 => Reply::new(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"),
        }
    }
}

/// Parses one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command, SyntaxError> {
    let line = std::str::from_utf8(line).map_err(|_| SyntaxError::Unrecognized)?;
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line.trim_end(), ""),
    };
    let no_args = |command: Command, usage: &'static str| {
        if args.is_empty() {
            Ok(command)
        } else {
            Err(SyntaxError::Arguments(usage))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" | "HELO" => {
            let domain = args.split_whitespace().next().ok_or(SyntaxError::Arguments("EHLO hostname"))?;
            Ok(if verb.eq_ignore_ascii_case("EHLO") {
                Command::Ehlo(domain.into())
            } else {
                Command::Helo(domain.into())
            })
        }
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args(Command::Data, "DATA"),
        "BDAT" => parse_bdat(args),
        "RSET" => no_args(Command::Rset, "RSET"),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit, "QUIT"),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls, "STARTTLS"),
        "AUTH" | "EXPN" | "ETRN" | "TURN" | "ATRN" => Ok(Command::NotImplemented(verb.to_ascii_uppercase())),
        _ => Err(SyntaxError::Unrecognized),
    }
}

/// Splits `FROM:<path> params` (tolerating a space after the colon, as real clients send).
fn split_path<'a>(args: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    if !rest.starts_with('<') {
        return None;
    }
    let end = closing_bracket(rest)?;
    Some((&rest[1..end], rest[end + 1..].trim()))
}

/// Index of the '>' closing the path, skipping quoted local parts.
fn closing_bracket(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Validates a mailbox `local@domain` (a source route `@a,@b:` prefix is dropped, RFC 5321 §4.1.2).
fn mailbox(path: &str, utf8_allowed: bool) -> Option<String> {
    let path = match path.starts_with('@') {
        true => path.split_once(':')?.1,
        false => path,
    };
    let (local, domain) = path.rsplit_once('@')?;
    let local_ok =
        !local.is_empty() && local.chars().all(|c| !c.is_control()) && (local.starts_with('"') || !local.contains(' '));
    let domain_ok = !domain.is_empty() && domain.chars().all(|c| c.is_alphanumeric() || "-.[]:".contains(c));
    if !local_ok || !domain_ok || local.len() > 64 || domain.len() > 255 {
        return None;
    }
    if !utf8_allowed && !path.is_ascii() {
        return None;
    }
    Some(path.to_string())
}

fn parse_mail(args: &str) -> Result<Command, SyntaxError> {
    let (path, rest) = split_path(args, "FROM:").ok_or(SyntaxError::Arguments("MAIL FROM:<address>"))?;
    let mut params = MailParams::default();
    for param in rest.split_whitespace() {
        let (key, value) = param.split_once('=').map_or((param, None), |(k, v)| (k, Some(v)));
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                params.size = Some(v.parse().map_err(|_| SyntaxError::Arguments("SIZE=number"))?);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => params.body = Some(BodyType::SevenBit),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => params.body = Some(BodyType::EightBitMime),
            ("SMTPUTF8", None) => params.smtputf8 = true,
            _ => return Err(SyntaxError::Parameter(param.to_string())),
        }
    }
    if path.is_empty() {
        return Ok(Command::Mail { from: String::new(), params });
    }
    if !path.is_ascii() && !params.smtputf8 {
        return Err(SyntaxError::NeedsSmtpUtf8);
    }
    let from = mailbox(path, params.smtputf8).ok_or(SyntaxError::Sender)?;
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &str) -> Result<Command, SyntaxError> {
    let (path, rest) = split_path(args, "TO:").ok_or(SyntaxError::Arguments("RCPT TO:<address>"))?;
    if let Some(param) = rest.split_whitespace().next() {
        return Err(SyntaxError::Parameter(param.to_string()));
    }
    if path.eq_ignore_ascii_case("postmaster") {
        return Ok(Command::Rcpt { to: path.to_string() });
    }
    // Whether SMTPUTF8 was given is a transaction fact; the session checks it (RFC 6531 §3.4).
    let to = mailbox(path, true).ok_or(SyntaxError::Recipient)?;
    Ok(Command::Rcpt { to })
}

fn parse_bdat(args: &str) -> Result<Command, SyntaxError> {
    let usage = SyntaxError::Arguments("BDAT size [LAST]");
    let mut words = args.split_whitespace();
    let size = words.next().and_then(|w| w.parse().ok()).ok_or(usage.clone())?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(usage),
    };
    if words.next().is_some() {
        return Err(usage);
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn err(line: &str) -> SyntaxError {
        parse(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn table() {
        let cases: &[(&str, Command)] = &[
            ("EHLO client.example", Command::Ehlo("client.example".into())),
            ("helo x", Command::Helo("x".into())),
            ("MAIL FROM:<>", Command::Mail { from: "".into(), params: MailParams::default() }),
            ("mail from: <a@b.c>", Command::Mail { from: "a@b.c".into(), params: MailParams::default() }),
            (
                "MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME",
                Command::Mail {
                    from: "a@b.c".into(),
                    params: MailParams { size: Some(1000), body: Some(BodyType::EightBitMime), smtputf8: false },
                },
            ),
            (
                "MAIL FROM:<ü@b.c> SMTPUTF8",
                Command::Mail { from: "ü@b.c".into(), params: MailParams { smtputf8: true, ..Default::default() } },
            ),
            ("MAIL FROM:<@relay.x,@r2.y:a@b.c>", Command::Mail { from: "a@b.c".into(), params: MailParams::default() }),
            ("RCPT TO:<\"john doe\"@b.c>", Command::Rcpt { to: "\"john doe\"@b.c".into() }),
            ("RCPT TO:<Postmaster>", Command::Rcpt { to: "Postmaster".into() }),
            ("DATA", Command::Data),
            ("BDAT 100", Command::Bdat { size: 100, last: false }),
            ("bdat 0 last", Command::Bdat { size: 0, last: true }),
            ("RSET", Command::Rset),
            ("NOOP anything", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY root", Command::Vrfy),
            ("HELP", Command::Help),
            ("STARTTLS", Command::StartTls),
            ("starttls", Command::StartTls),
        ];
        for (line, expected) in cases {
            assert_eq!(&ok(line), expected, "{line}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(err("FOO"), SyntaxError::Unrecognized);
        assert_eq!(err("EHLO"), SyntaxError::Arguments("EHLO hostname"));
        assert_eq!(err("MAIL TO:<a@b>"), SyntaxError::Arguments("MAIL FROM:<address>"));
        assert_eq!(err("MAIL FROM:a@b"), SyntaxError::Arguments("MAIL FROM:<address>"));
        assert_eq!(err("MAIL FROM:<nodomain>"), SyntaxError::Sender);
        assert_eq!(err("MAIL FROM:<a@b> FOO=1"), SyntaxError::Parameter("FOO=1".into()));
        assert_eq!(err("MAIL FROM:<a@b> BODY=BINARYMIME"), SyntaxError::Parameter("BODY=BINARYMIME".into()));
        assert_eq!(err("MAIL FROM:<ü@b>"), SyntaxError::NeedsSmtpUtf8);
        assert_eq!(err("RCPT TO:<a b@c>"), SyntaxError::Recipient);
        assert_eq!(err("RCPT TO:<a@b> NOTIFY=NEVER"), SyntaxError::Parameter("NOTIFY=NEVER".into()));
        assert_eq!(err("DATA x"), SyntaxError::Arguments("DATA"));
        assert_eq!(err("BDAT"), SyntaxError::Arguments("BDAT size [LAST]"));
        assert_eq!(err("BDAT 10 FIRST"), SyntaxError::Arguments("BDAT size [LAST]"));
        assert_eq!(err("\u{ff}"), SyntaxError::Unrecognized);
        assert_eq!(parse(b"EHLO \xff").unwrap_err(), SyntaxError::Unrecognized);
    }

    #[test]
    fn replies_carry_codes() {
        assert_eq!(SyntaxError::Unrecognized.reply().code, 500);
        assert_eq!(SyntaxError::Sender.reply().code, 501);
        assert_eq!(SyntaxError::Parameter("X".into()).reply().code, 555);
        assert_eq!(SyntaxError::NeedsSmtpUtf8.reply().code, 553);
    }
}
