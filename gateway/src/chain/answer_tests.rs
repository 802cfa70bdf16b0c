use super::*;

fn reject(code: u16, enhanced: &str, text: &str) -> Verdict {
    Verdict::Reject(Reply { code, enhanced: Some(enhanced.into()), lines: vec![text.into()] })
}

fn rules(bare_line_endings: BareLineEndings) -> ContentRules {
    ContentRules { max_message_size: 1000, bare_line_endings }
}

fn replace(pieces: &[&[u8]]) -> Reaction {
    Reaction { body: BodyOutput::Replace(pieces.iter().map(|p| Bytes::copy_from_slice(p)).collect()), ..pass() }
}

fn pass() -> Reaction {
    Reaction::carry_on()
}

/// Body chunks given to a stage and its answer to each.
type BodyAnswers<'a> = Vec<(&'a [u8], Reaction)>;

/// Runs body answers and the end; returns the bytes passed on.
fn stream(rules: ContentRules, answers: BodyAnswers, end: Reaction) -> Result<Vec<u8>, Malformed> {
    let mut checker = ContentAnswers::new(rules);
    let mut out = Vec::new();
    let mut emit = |input: &[u8], body: BodyOutput| match body {
        BodyOutput::Pass => out.extend_from_slice(input),
        BodyOutput::Replace(pieces) => pieces.iter().for_each(|p| out.extend_from_slice(p)),
    };
    for (input, reaction) in answers {
        let chunk = Bytes::copy_from_slice(input);
        emit(input, checker.body(&chunk, reaction)?.body);
    }
    emit(b"", checker.end(end)?.body);
    Ok(out)
}

#[test]
fn replies_must_be_of_their_verdicts_class() {
    let checked = verdict(reject(550, "5.7.1", "no\r\nthanks\n")).unwrap();
    assert_eq!(
        checked,
        Verdict::Reject(Reply { code: 550, enhanced: Some("5.7.1".into()), lines: vec!["no".into(), "thanks".into()] })
    );
    assert_eq!(
        verdict(reject(250, "2.0.0", "x")),
        Err(Malformed::ReplyCode { verdict: "reject", class: 5, code: 250 })
    );
    let tempfail = Verdict::Tempfail(Reply::new(550, "5.7.1", "x"));
    assert_eq!(verdict(tempfail), Err(Malformed::ReplyCode { verdict: "tempfail", class: 4, code: 550 }));
    assert_eq!(
        verdict(reject(550, "2.0.0", "x")),
        Err(Malformed::EnhancedClass { code: 550, enhanced: "2.0.0".into() })
    );
    let injected = "5.7.1\r\n250 2.0.0 injected";
    assert_eq!(verdict(reject(550, injected, "x")), Err(Malformed::EnhancedSyntax(injected.into())));
    for bad in ["5.7", "5.7.1.1", "55.1.1", "5.1234.1", "5.a.1", "5..1", " 5.7.1", "5.7.1 "] {
        assert_eq!(verdict(reject(550, bad, "x")), Err(Malformed::EnhancedSyntax(bad.into())), "{bad:?}");
    }
    assert!(verdict(reject(554, "5.123.456", "x")).is_ok());
    // No enhanced code at all is fine.
    let Verdict::Reject(reply) = verdict(reject(550, "", "x")).unwrap() else { panic!() };
    assert_eq!(reply.enhanced, None);
    for other in [Verdict::Continue, Verdict::Accept, Verdict::Discard] {
        assert_eq!(verdict(other.clone()), Ok(other));
    }
    // A stage refuses the message, not the connection: its 421 is a 451.
    let Verdict::Tempfail(reply) = verdict(Verdict::Tempfail(Reply::new(421, "4.7.0", "go away"))).unwrap() else {
        panic!()
    };
    assert_eq!((reply.code, reply.enhanced.as_deref()), (451, Some("4.7.0")));
}

#[test]
fn reply_text_is_cut_to_clean_lines_of_512_octets() {
    let long = "é".repeat(600);
    let text = format!("a\x07b\x1b[2J\r{long}\n{}", "line\n".repeat(30));
    let Verdict::Reject(reply) = verdict(reject(550, "5.7.1", &text)).unwrap() else { panic!() };
    assert_eq!(reply.lines.len(), MAX_REPLY_LINES);
    assert!(reply.lines[0].starts_with("ab[2Jéé"), "{}", reply.lines[0]);
    let wire = reply.to_wire();
    for line in wire.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= MAX_REPLY_LINE, "{} octets", line.len());
        assert!(line.ends_with(b"\r\n") && !line[..line.len() - 2].iter().any(|b| b.is_ascii_control()));
    }
    assert!(std::str::from_utf8(&wire).is_ok());
    let Verdict::Reject(empty) = verdict(reject(550, "5.7.1", "")).unwrap() else { panic!() };
    assert_eq!(empty.to_wire(), b"550 5.7.1 \r\n");
}

#[test]
fn header_changes_must_name_a_field_and_stay_in_bounds() {
    let answers = ContentAnswers::new(rules(BareLineEndings::Normalize));
    let section = HeaderSection::parse(b"Subject: s\r\n\r\n");
    let with = |changes: Vec<HeaderChange>| answers.headers(Reaction { header_changes: changes, ..pass() }, &section);
    let add = |name: &str| HeaderChange::Add { name: name.into(), value: "v".into() };
    for empty in ["", "\u{1} :\t", ":::", "ü"] {
        assert_eq!(with(vec![add(empty)]), Err(Malformed::EmptyFieldName(empty.into())), "{empty:?}");
        let remove = HeaderChange::Remove { name: empty.into(), index: 0 };
        assert!(matches!(with(vec![remove]), Err(Malformed::EmptyFieldName(_))));
    }
    let (reaction, changed) = with(vec![add("X Odd:Name")]).unwrap();
    assert_eq!(reaction.header_changes, vec![add("XOddName")]);
    assert_eq!(changed.to_bytes(), b"Subject: s\r\nXOddName: v\r\n\r\n");
    assert_eq!(section.to_bytes(), b"Subject: s\r\n\r\n", "the section given is not changed");
    assert_eq!(with(vec![add(&"N".repeat(997))]), Err(Malformed::LongFieldName(997)));
    assert!(with(vec![add(&"N".repeat(996))]).is_ok());
    assert_eq!(with(vec![add("X"); 1001]), Err(Malformed::TooManyHeaderChanges(1001)));
    assert!(with(vec![add("X"); 1000]).is_ok());
    let big = HeaderChange::Add { name: "X".into(), value: "v".repeat(MAX_HEADER_BYTES) };
    assert_eq!(with(vec![big]), Err(Malformed::HeaderBytes(MAX_HEADER_BYTES + 1)));
}

#[test]
fn changes_and_output_that_an_event_cannot_carry_are_dropped() {
    let mut answers = ContentAnswers::new(rules(BareLineEndings::Normalize));
    let headers = Reaction { body: BodyOutput::Replace(vec![Bytes::from_static(b"x")]), ..pass() };
    let section = HeaderSection::default();
    assert_eq!(answers.headers(headers, &section).unwrap().0.body, BodyOutput::Pass);
    let body = pass().add_header("", "at body: ignored, so not malformed either");
    assert_eq!(answers.body(&Bytes::from_static(b"a\r\n"), body).unwrap(), pass());
    // A final verdict makes the rest of its answer moot, however big.
    let refusal = Reaction { verdict: reject(550, "5.7.1", "no"), ..replace(&[&[b'\n'; 5000]]) };
    let checked = answers.body(&Bytes::from_static(b"a\r\n"), refusal).unwrap();
    assert_eq!((checked.body, checked.verdict.kind()), (BodyOutput::Pass, "reject"));
}

#[test]
fn body_output_is_normalised_like_client_content_across_chunks() {
    let normalize = rules(BareLineEndings::Normalize);
    let cases: Vec<(BodyAnswers, Reaction, &[u8])> = vec![
        // The smuggling shape: a bare CR before the dot; in one piece and byte by byte.
        (vec![(b"x\r\n", replace(&[b"a\r.\r\nMAIL FROM:<e@x>\r\n"]))], pass(), b"a\r\n.\r\nMAIL FROM:<e@x>\r\n"),
        (vec![(b"x\r\n", replace(&[b"a", b"\r", b".", b"\r", b"\n"]))], pass(), b"a\r\n.\r\n"),
        (vec![(b"x\r\n", replace(&[b"one\ntwo\rthree\r\n"]))], pass(), b"one\r\ntwo\r\nthree\r\n"),
        // Ending in a bare LF, or with no line end at all: the end closes the line.
        (vec![(b"x\r\n", replace(&[b"last\n"]))], pass(), b"last\r\n"),
        (vec![(b"x\r\n", replace(&[b"open"]))], pass(), b"open\r\n"),
        (vec![(b"x\r\n", replace(&[b"cr\r"]))], pass(), b"cr\r\n"),
        // A seam between the filter's bytes and input it passes: "x" + "\nb" is a bare LF.
        (vec![(b"a\r\n", replace(&[b"x"])), (b"\nb\r\n", pass())], pass(), b"x\r\nb\r\n"),
        // Input split inside a CRLF, passed, then a replacement: the CR sent is not sent twice.
        (vec![(b"a\r", pass()), (b"\nb\r\n", replace(&[b"\nc\r\n"]))], pass(), b"a\r\nc\r\n"),
        (vec![(b"a\r", pass()), (b"\n", replace(&[])), (b"c\r\n", pass())], pass(), b"a\r\nc\r\n"),
        // Appended at the end, after an untouched body.
        (vec![(b"body\r\n", pass())], replace(&[b"tail\n.\n"]), b"body\r\ntail\r\n.\r\n"),
        // Untouched content passes as it is, and the end adds nothing.
        (vec![(b"a\r\n", pass()), (b".b\r\n", pass())], pass(), b"a\r\n.b\r\n"),
    ];
    for (answers, end, expected) in cases {
        let shown = format!("{answers:?}");
        assert_eq!(stream(normalize, answers, end).as_deref(), Ok(expected), "{shown}");
    }
}

#[test]
fn bare_line_endings_in_body_output_are_malformed_under_reject() {
    let strict = rules(BareLineEndings::Reject);
    let cases: Vec<(BodyAnswers, Reaction)> = vec![
        (vec![(b"x\r\n", replace(&[b"a\nb\r\n"]))], pass()),
        (vec![(b"x\r\n", replace(&[b"a\r.\r\n"]))], pass()),
        (vec![(b"a\r\n", replace(&[b"x"])), (b"\nb\r\n", pass())], pass()),
        (vec![(b"a\r\n", pass())], replace(&[b"tail\r"])),
    ];
    for (answers, end) in cases {
        let shown = format!("{answers:?} {end:?}");
        assert_eq!(stream(strict, answers, end), Err(Malformed::BareLineEnding), "{shown}");
    }
    let clean = vec![(&b"x\r\n"[..], replace(&[b"a\r\n", b"b\r\n"]))];
    assert_eq!(stream(strict, clean, pass()).as_deref(), Ok(&b"a\r\nb\r\n"[..]));
}

#[test]
fn body_output_may_not_outgrow_the_message_size_limit() {
    let limit = rules(BareLineEndings::Normalize);
    let fits: &[u8] = &[b'a'; 998];
    assert_eq!(stream(limit, vec![(b"x\r\n", replace(&[fits, b"\r\n"]))], pass()).map(|o| o.len()), Ok(1000));
    let too_big = vec![(&b"x\r\n"[..], replace(&[fits, b"\r\n"])), (b"y\r\n", pass())];
    assert_eq!(stream(limit, too_big, pass()), Err(Malformed::BodyTooLarge(1000)));
    // Normalising grows the output: 600 bare LFs become 1200 octets.
    let grows = vec![(&b"x\r\n"[..], replace(&[&[b'\n'; 600]]))];
    assert_eq!(stream(limit, grows, pass()), Err(Malformed::BodyTooLarge(1000)));
    let appended = vec![(fits, pass())];
    assert_eq!(stream(limit, appended, replace(&[b"abc\r\n"])), Err(Malformed::BodyTooLarge(1000)));
}
