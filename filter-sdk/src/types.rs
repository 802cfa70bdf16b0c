//! The values a filter answers with: verdicts, header changes, body output, and the builders
//! that make a `Reaction` readable.

/// An SMTP reply the client will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as "5.7.1" (RFC 3463), of the code's class; empty for none.
    pub enhanced: String,
    /// Line breaks start new reply lines; the host drops control characters and cuts long text.
    pub text: String,
}

/// What a filter says about the message after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; call me with the next event.
    Continue,
    /// I am done: stop calling me, pass the message on.
    Accept,
    /// Refuse permanently (5xx).
    Reject(Reply),
    /// Refuse for now (4xx); the client retries later.
    Tempfail(Reply),
    /// Tell the client 250, then drop the message.
    Discard,
}

impl Verdict {
    /// A permanent refusal, e.g. `Verdict::reject(550, "5.7.1", "Spam is not welcome")`.
    pub fn reject(code: u16, enhanced: &str, text: impl Into<String>) -> Verdict {
        Verdict::Reject(Reply { code, enhanced: enhanced.into(), text: text.into() })
    }

    /// A temporary refusal, e.g. `Verdict::tempfail(451, "4.7.1", "Try again later")`.
    pub fn tempfail(code: u16, enhanced: &str, text: impl Into<String>) -> Verdict {
        Verdict::Tempfail(Reply { code, enhanced: enhanced.into(), text: text.into() })
    }

    /// Whether this verdict ends calls for the message.
    pub fn is_final(&self) -> bool {
        !matches!(self, Verdict::Continue)
    }
}

/// One header field: `name` as written, `value` unfolded and trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// The header section as a filter sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// The header section exactly as the host was given it for this stage, every field with its
    /// folding and CRLF (the fields above are unfolded and trimmed): for a signer or verifier
    /// that must hash what is relayed. Valid in `on_headers` and after, for the current message.
    pub fn raw_section(&self) -> Vec<u8> {
        crate::raw::header_section()
    }
}

/// A change to the header section (`index` counts fields of that name from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    Add(Header),
    Prepend(Header),
    Change {
        name: String,
        index: u32,
        value: String,
    },
    /// Index 0 removes every field of that name.
    Remove {
        name: String,
        index: u32,
    },
}

/// What becomes of the body bytes a filter was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BodyOutput {
    /// Pass the chunk on unchanged (at the end: append nothing).
    #[default]
    Pass,
    /// Pass these bytes on instead (at the end: append them).
    Replace(Vec<Vec<u8>>),
}

/// A filter's answer to a content event: a verdict plus changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub verdict: Verdict,
    pub header_changes: Vec<HeaderChange>,
    pub body: BodyOutput,
}

impl Default for Reaction {
    fn default() -> Self {
        Reaction::carry_on()
    }
}

impl From<Verdict> for Reaction {
    fn from(verdict: Verdict) -> Reaction {
        Reaction { verdict, header_changes: Vec::new(), body: BodyOutput::Pass }
    }
}

impl Reaction {
    /// Continue, no changes.
    pub fn carry_on() -> Reaction {
        Reaction::from(Verdict::Continue)
    }

    pub fn with_verdict(mut self, verdict: Verdict) -> Reaction {
        self.verdict = verdict;
        self
    }

    /// Appends a field at the end of the header section.
    pub fn add_header(mut self, name: &str, value: impl Into<String>) -> Reaction {
        self.header_changes.push(HeaderChange::Add(Header { name: name.into(), value: value.into() }));
        self
    }

    /// Inserts a field at the top of the header section.
    pub fn prepend_header(mut self, name: &str, value: impl Into<String>) -> Reaction {
        self.header_changes.push(HeaderChange::Prepend(Header { name: name.into(), value: value.into() }));
        self
    }

    /// Sets the value of the first field `name` (adding it if absent).
    pub fn change_header(mut self, name: &str, value: impl Into<String>) -> Reaction {
        self.header_changes.push(HeaderChange::Change { name: name.into(), index: 1, value: value.into() });
        self
    }

    /// Removes every field `name`.
    pub fn remove_header(mut self, name: &str) -> Reaction {
        self.header_changes.push(HeaderChange::Remove { name: name.into(), index: 0 });
        self
    }

    /// Replaces the chunk (or, at the end, appends) with these bytes.
    pub fn replace_body(mut self, chunks: Vec<Vec<u8>>) -> Reaction {
        self.body = BodyOutput::Replace(chunks);
        self
    }
}

/// The events a filter can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connect,
    Helo,
    MailFrom,
    RcptTo,
    Headers,
    Body,
    End,
}

/// The set of events a filter wants; the host skips the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interests(u8);

impl Interests {
    pub const NONE: Interests = Interests(0);
    pub const ALL: Interests = Interests(0x7f);
    /// Connect, HELO, MAIL FROM and RCPT TO.
    pub const ENVELOPE: Interests = Interests(0x0f);

    pub const fn with(self, event: Event) -> Interests {
        Interests(self.0 | 1 << event as u8)
    }

    pub const fn wants(self, event: Event) -> bool {
        self.0 & (1 << event as u8) != 0
    }
}

impl std::ops::BitOr<Event> for Interests {
    type Output = Interests;
    fn bitor(self, event: Event) -> Interests {
        self.with(event)
    }
}
