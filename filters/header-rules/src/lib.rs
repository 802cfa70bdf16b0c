//! `header-rules`: matches envelope fields or header fields against regular expressions and
//! rejects, tempfails, adds a header or tags the subject. It never looks at the body (the host
//! skips body calls for it).
//!
//! Config: `rules` (required), one rule per line (`#` starts a comment):
//!
//! ```text
//! FIELD /REGEX/ ACTION [ARGUMENTS]
//! FIELD  = helo | mail-from | rcpt-to | header NAME
//! ACTION = reject CODE ENHANCED TEXT | tempfail CODE ENHANCED TEXT
//!        | add-header NAME VALUE | tag-subject PREFIX
//! ```
//!
//! For example:
//!
//! ```text
//! header Subject /(?i)lottery|casino/ reject 550 5.7.1 No gambling mail
//! mail-from /@spam\.example$/ tempfail 451 4.7.1 Sender under review
//! rcpt-to /^abuse@/ add-header X-Abuse-Report yes
//! header From /@partner\.example>?$/ tag-subject [partner]
//! ```
//!
//! A reject/tempfail on `rcpt-to` refuses only that recipient. The first matching reject or
//! tempfail decides; every matching add-header and tag-subject applies.

use regex_lite::Regex;
use sluice_filter_sdk::{
    export_filter, log, Config, ConfigError, Event, Filter, Headers, Interests, Reaction, Verdict,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Helo,
    MailFrom,
    RcptTo,
    Header(String),
}

impl Field {
    /// Header names compare case-insensitively (RFC 5322).
    fn matches(&self, other: &Field) -> bool {
        match (self, other) {
            (Field::Header(a), Field::Header(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        }
    }
}

#[derive(Debug, Clone)]
enum Action {
    Reject(u16, String, String),
    Tempfail(u16, String, String),
    AddHeader(String, String),
    TagSubject(String),
}

#[derive(Debug, Clone)]
struct Rule {
    field: Field,
    pattern: Regex,
    action: Action,
}

pub struct HeaderRules {
    rules: Vec<Rule>,
    /// Changes earned in the envelope phase, applied with the header section.
    pending: Vec<Action>,
}

fn parse_rules(text: &str) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |message: String| ConfigError {
            key: "rules".into(),
            message: format!("line {}: {message}: {line}", number + 1),
        };
        let (field, rest) = match line.split_once(' ') {
            Some(("header", rest)) => {
                let (name, rest) =
                    rest.trim_start().split_once(' ').ok_or_else(|| error("header needs a name".into()))?;
                (Field::Header(name.into()), rest)
            }
            Some(("helo", rest)) => (Field::Helo, rest),
            Some(("mail-from", rest)) => (Field::MailFrom, rest),
            Some(("rcpt-to", rest)) => (Field::RcptTo, rest),
            _ => return Err(error("unknown field (helo, mail-from, rcpt-to, header NAME)".into())),
        };
        let rest = rest.trim_start();
        let body = rest.strip_prefix('/').ok_or_else(|| error("the pattern must be written /REGEX/".into()))?;
        let end = body.rfind("/ ").ok_or_else(|| error("the pattern must be written /REGEX/ then an action".into()))?;
        let pattern = Regex::new(&body[..end]).map_err(|e| error(format!("bad pattern: {e}")))?;
        let mut words = body[end + 2..].trim().splitn(2, ' ');
        let verb = words.next().unwrap_or_default();
        let args = words.next().unwrap_or_default().trim();
        let reply = |class: u16| -> Result<(u16, String, String), ConfigError> {
            let mut parts = args.splitn(3, ' ');
            let code: u16 =
                parts.next().and_then(|c| c.parse().ok()).ok_or_else(|| error("needs a reply code".into()))?;
            if code / 100 != class {
                return Err(error(format!("the code must be {class}xx")));
            }
            Ok((code, parts.next().unwrap_or_default().into(), parts.next().unwrap_or_default().into()))
        };
        let action = match verb {
            "reject" => reply(5).map(|(c, e, t)| Action::Reject(c, e, t))?,
            "tempfail" => reply(4).map(|(c, e, t)| Action::Tempfail(c, e, t))?,
            "add-header" => {
                let (name, value) = args.split_once(' ').ok_or_else(|| error("add-header needs NAME VALUE".into()))?;
                Action::AddHeader(name.into(), value.trim().into())
            }
            "tag-subject" if !args.is_empty() => Action::TagSubject(args.into()),
            _ => return Err(error("unknown action (reject, tempfail, add-header, tag-subject)".into())),
        };
        rules.push(Rule { field, pattern, action });
    }
    Ok(rules)
}

impl HeaderRules {
    /// Matches `value` of `field`: the first refusal, or None after queueing the other actions.
    fn check(&mut self, field: &Field, value: &str) -> Option<Verdict> {
        for rule in self.rules.iter().filter(|r| r.field.matches(field) && r.pattern.is_match(value)) {
            match &rule.action {
                Action::Reject(code, enhanced, text) => return Some(Verdict::reject(*code, enhanced, text.clone())),
                Action::Tempfail(code, enhanced, text) => {
                    return Some(Verdict::tempfail(*code, enhanced, text.clone()))
                }
                other => self.pending.push(other.clone()),
            }
        }
        None
    }

    fn envelope(&mut self, field: Field, value: &str) -> Verdict {
        self.check(&field, value).unwrap_or(Verdict::Continue)
    }
}

impl Filter for HeaderRules {
    fn interests(_config: &Config) -> Interests {
        Interests::ENVELOPE.with(Event::Headers)
    }

    fn new(config: &Config) -> Result<Self, ConfigError> {
        let rules = parse_rules(&config.require::<String>("rules")?)?;
        Ok(HeaderRules { rules, pending: Vec::new() })
    }

    fn on_helo(&mut self, name: &str) -> Verdict {
        self.envelope(Field::Helo, name)
    }

    fn on_mail_from(&mut self, address: &str) -> Verdict {
        self.envelope(Field::MailFrom, address)
    }

    fn on_rcpt_to(&mut self, address: &str) -> Verdict {
        self.envelope(Field::RcptTo, address)
    }

    fn on_headers(&mut self, headers: &Headers) -> Reaction {
        for header in headers.iter() {
            if let Some(verdict) = self.check(&Field::Header(header.name.clone()), &header.value) {
                return verdict.into();
            }
        }
        let mut reaction = Reaction::carry_on();
        let mut subject = headers.get("Subject").map(str::to_string);
        for action in std::mem::take(&mut self.pending) {
            match action {
                Action::AddHeader(name, value) => reaction = reaction.add_header(&name, value),
                Action::TagSubject(prefix) => {
                    let current = subject.take().unwrap_or_default();
                    let tagged = if current.starts_with(&prefix) {
                        current
                    } else {
                        format!("{prefix} {current}").trim_end().to_string()
                    };
                    subject = Some(tagged);
                }
                Action::Reject(..) | Action::Tempfail(..) => {}
            }
        }
        if subject.as_deref() != headers.get("Subject") {
            log::debug("subject tagged");
            reaction = reaction.change_header("Subject", subject.unwrap_or_default());
        }
        reaction
    }
}

export_filter!(HeaderRules);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_filter_sdk::testing::{run, TestMessage};

    const RULES: &str = r"
        # gambling
        header Subject /(?i)lottery|casino/ reject 550 5.7.1 No gambling mail
        mail-from /@spam\.example$/ tempfail 451 4.7.1 Sender under review
        rcpt-to /^abuse@/ add-header X-Abuse-Report yes
        rcpt-to /^blocked@/ reject 550 5.1.1 No such user
        header from /@partner\.example>?$/ tag-subject [partner]
    ";

    fn outcome(content: &str, message: TestMessage) -> sluice_filter_sdk::testing::Outcome {
        let message = TestMessage { content: content.as_bytes().to_vec(), ..message };
        run::<HeaderRules>(&[("rules", RULES)], &message).unwrap()
    }

    #[test]
    fn header_rule_rejects() {
        let o = outcome("Subject: Win the LOTTERY\r\n\r\nx\r\n", TestMessage::new(""));
        assert_eq!(o.verdict, Verdict::reject(550, "5.7.1", "No gambling mail"));
    }

    #[test]
    fn envelope_rules() {
        let o = outcome("Subject: hi\r\n\r\n", TestMessage::new("").from("x@spam.example"));
        assert_eq!(o.verdict, Verdict::tempfail(451, "4.7.1", "Sender under review"));
        let o = outcome("Subject: hi\r\n\r\n", TestMessage::new("").to(&["blocked@x", "abuse@x"]));
        assert_eq!(o.refused_rcpts, vec!["blocked@x"]);
        assert_eq!(o.verdict, Verdict::Continue);
        assert_eq!(o.headers.get("X-Abuse-Report"), Some("yes"));
    }

    #[test]
    fn tag_subject_matches_header_names_case_insensitively() {
        let o = outcome("From: <a@partner.example>\r\nSubject: offer\r\n\r\n", TestMessage::new(""));
        assert_eq!(o.headers.get("subject"), Some("[partner] offer"));
    }

    #[test]
    fn bad_rules_name_the_line() {
        let err = run::<HeaderRules>(&[("rules", "header Subject /(/ reject 550 5.7.1 x")], &TestMessage::new(""))
            .unwrap_err();
        assert!(err.message.starts_with("line 1: bad pattern"), "{err}");
        let err = run::<HeaderRules>(&[("rules", "body /x/ reject 550 5.7.1 x")], &TestMessage::new("")).unwrap_err();
        assert!(err.message.contains("unknown field"), "{err}");
        let err = run::<HeaderRules>(&[("rules", "helo /x/ reject 450 4.7.1 x")], &TestMessage::new("")).unwrap_err();
        assert!(err.message.contains("must be 5xx"), "{err}");
    }

    #[test]
    fn config_check_reports_unknown_keys_and_missing_rules() {
        let config =
            |pairs: &[(&str, &str)]| Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let unused = sluice_filter_sdk::check_config::<HeaderRules>(&config(&[("rules", RULES), ("rulez", "x")]));
        assert_eq!(unused, Ok(vec!["rulez".to_string()]));
        let err = sluice_filter_sdk::check_config::<HeaderRules>(&config(&[("rulez", RULES)])).unwrap_err();
        assert_eq!(err.to_string(), "[stage.config] rules: is required");
    }
}
