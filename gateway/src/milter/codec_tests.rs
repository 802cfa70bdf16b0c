//! Tests of the milter codec: packets written out byte by byte by hand (so a wrong length or
//! field order in the codec cannot also be in the expectation), every reply kind and decoding
//! error, round trips, and the frame reader over a stream cut anywhere.

use super::*;

fn s(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn encoded(command: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    command.encode(&mut out);
    out
}

fn encoded_reply(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    reply.encode(&mut out);
    out
}

/// A packet's code and data, after checking its length field against its size.
fn frame(packet: &[u8]) -> (u8, &[u8]) {
    let length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
    assert_eq!(length, packet.len() - 4, "length field of {packet:?}");
    (packet[4], &packet[5..])
}

/// Every command kind (CONNECT for each family), with its packet written out by hand.
fn commands() -> Vec<(Command, &'static [u8])> {
    let optneg = OptNeg {
        version: VERSION,
        actions: Actions::ADD_HEADERS | Actions::CHANGE_HEADERS,
        protocol: Protocol::NO_RCPT | Protocol::NR_HEADER,
    };
    vec![
        (Command::OptNeg(optneg), b"\0\0\0\x0dO\0\0\0\x06\0\0\0\x11\0\0\0\x88"),
        (
            Command::Macros {
                for_command: b'C',
                macros: vec![(s("j"), s("mx.example")), (s("{daemon_name}"), s("sluice"))],
            },
            b"\0\0\0\x24DCj\0mx.example\0{daemon_name}\0sluice\0",
        ),
        (Command::Macros { for_command: b'T', macros: vec![] }, b"\0\0\0\x02DT"),
        (
            Command::Connect { hostname: s("mail.example"), family: Family::Inet4, port: 25, address: s("192.0.2.1") },
            b"\0\0\0\x1bCmail.example\x004\x00\x19192.0.2.1\0",
        ),
        (
            Command::Connect { hostname: s("host6"), family: Family::Inet6, port: 50000, address: s("2001:db8::1") },
            b"\0\0\0\x16Chost6\x006\xc3\x502001:db8::1\0",
        ),
        (
            Command::Connect { hostname: s("localhost"), family: Family::Unix, port: 0, address: s("/run/sock") },
            b"\0\0\0\x18Clocalhost\0L\0\0/run/sock\0",
        ),
        (
            Command::Connect { hostname: s("unknown"), family: Family::Unknown, port: 0, address: vec![] },
            b"\0\0\0\x0aCunknown\0U",
        ),
        (Command::Helo(s("client.example")), b"\0\0\0\x10Hclient.example\0"),
        (
            Command::Mail(vec![s("<a@b.example>"), s("SIZE=100"), s("BODY=8BITMIME")]),
            b"\0\0\0\x26M<a@b.example>\0SIZE=100\0BODY=8BITMIME\0",
        ),
        (Command::Rcpt(vec![s("<c@d.example>")]), b"\0\0\0\x0fR<c@d.example>\0"),
        (Command::Data, b"\0\0\0\x01T"),
        (Command::Header { name: s("Subject"), value: s("hi there") }, b"\0\0\0\x12LSubject\0hi there\0"),
        (Command::EndOfHeaders, b"\0\0\0\x01N"),
        (Command::Body(Bytes::from_static(b"line\r\n")), b"\0\0\0\x07Bline\r\n"),
        (Command::Body(Bytes::new()), b"\0\0\0\x01B"),
        (Command::EndOfBody, b"\0\0\0\x01E"),
        (Command::Abort, b"\0\0\0\x01A"),
        (Command::Quit, b"\0\0\0\x01Q"),
        (Command::QuitNewConnection, b"\0\0\0\x01K"),
        (Command::Unknown(s("XCMD arg")), b"\0\0\0\x0aUXCMD arg\0"),
    ]
}

/// Every reply kind, with its packet written out by hand (encoding gives exactly these).
fn replies() -> Vec<(&'static [u8], Reply)> {
    let optneg = OptNeg {
        version: 6,
        actions: Actions(0x3),
        protocol: Protocol::NO_CONNECT | Protocol::NO_HELO | Protocol::SKIP,
    };
    vec![
        (b"\0\0\0\x0dO\0\0\0\x06\0\0\0\x03\0\0\x04\x03", Reply::OptNeg(optneg)),
        (b"\0\0\0\x01a", Reply::Accept),
        (b"\0\0\0\x01c", Reply::Continue),
        (b"\0\0\0\x01d", Reply::Discard),
        (b"\0\0\0\x01r", Reply::Reject),
        (b"\0\0\0\x01t", Reply::Tempfail),
        (b"\0\0\0\x01s", Reply::Skip),
        (b"\0\0\0\x01p", Reply::Progress),
        (b"\0\0\0\x01f", Reply::ConnectionFailed),
        (b"\0\0\0\x014", Reply::Shutdown),
        (b"\0\0\0\x13y550 5.7.1 Go away\0", Reply::ReplyCode(s("550 5.7.1 Go away"))),
        (b"\0\0\0\x1ay550-5.7.1 a\r\n550 5.7.1 b\0", Reply::ReplyCode(s("550-5.7.1 a\r\n550 5.7.1 b"))),
        (b"\0\0\0\x0chX-Spam\0yes\0", Reply::AddHeader { name: s("X-Spam"), value: s("yes") }),
        (b"\0\0\0\x0fi\0\0\0\0X-First\x001\0", Reply::InsertHeader { index: 0, name: s("X-First"), value: s("1") }),
        (b"\0\0\0\x0em\0\0\0\x01Subject\0\0", Reply::ChangeHeader { index: 1, name: s("Subject"), value: vec![] }),
        (b"\0\0\0\x0fm\0\0\0\x02X-Tag\0new\0", Reply::ChangeHeader { index: 2, name: s("X-Tag"), value: s("new") }),
        (b"\0\0\0\x07+<x@y>\0", Reply::AddRcpt(s("<x@y>"))),
        (b"\0\0\0\x142<x@y>\0NOTIFY=NEVER\0", Reply::AddRcptWithArgs { rcpt: s("<x@y>"), args: s("NOTIFY=NEVER") }),
        (b"\0\0\0\x07-<x@y>\0", Reply::DeleteRcpt(s("<x@y>"))),
        (b"\0\0\0\x07e<s@t>\0", Reply::ChangeFrom { from: s("<s@t>"), args: None }),
        (b"\0\0\0\x0ee<s@t>\0SIZE=1\0", Reply::ChangeFrom { from: s("<s@t>"), args: Some(s("SIZE=1")) }),
        (b"\0\0\0\x08e<s@t>\0\0", Reply::ChangeFrom { from: s("<s@t>"), args: Some(vec![]) }),
        (b"\0\0\0\x0bbnew body\r\n", Reply::ReplaceBody(Bytes::from_static(b"new body\r\n"))),
        (b"\0\0\0\x01b", Reply::ReplaceBody(Bytes::new())),
        (b"\0\0\0\x07qvirus\0", Reply::Quarantine(s("virus"))),
        (b"\0\0\0\x15l\0\0\0\x01{auth_authen} j\0", Reply::SetSymbolList { stage: 1, macros: s("{auth_authen} j") }),
    ]
}

#[test]
fn commands_encode_byte_exact() {
    for (command, expected) in commands() {
        let bytes = encoded(&command);
        assert_eq!(bytes, expected, "{command:?}: got {:?}", bytes.escape_ascii().to_string());
        assert_eq!(frame(expected).0, command.code(), "{command:?}");
    }
    // A NUL cannot be in a C string: it goes out as a space.
    assert_eq!(encoded(&Command::Helo(s("a\0b"))), b"\0\0\0\x05Ha b\0");
    let mut out = b"kept".to_vec();
    Command::Quit.encode(&mut out);
    assert_eq!(out, b"kept\0\0\0\x01Q", "encode appends");
}

#[test]
fn replies_decode_from_hand_written_bytes() {
    for (packet, expected) in replies() {
        let (code, data) = frame(packet);
        assert_eq!(decode_reply(code, data).as_ref(), Ok(&expected), "{:?}", packet.escape_ascii().to_string());
        assert_eq!(expected.code(), code);
        assert_eq!(encoded_reply(&expected), packet, "{expected:?} encodes otherwise");
    }
    let mut out = Vec::new();
    Reply::AddHeader { name: s("X\0Y"), value: s("\0") }.encode(&mut out);
    assert_eq!(out, b"\0\0\0\x07hX Y\0 \0", "a NUL goes out as a space");
}

#[test]
fn one_spare_nul_after_a_last_string_is_tolerated() {
    let cases: Vec<(&[u8], Reply)> = vec![
        (b"\0\0\0\x08y550 x\0\0", Reply::ReplyCode(s("550 x"))),
        (b"\0\0\0\x06ha\0b\0\0", Reply::AddHeader { name: s("a"), value: s("b") }),
        (b"\0\0\0\x0ai\0\0\0\x03a\0b\0\0", Reply::InsertHeader { index: 3, name: s("a"), value: s("b") }),
        (b"\0\0\0\x08+<x@y>\0\0", Reply::AddRcpt(s("<x@y>"))),
        (b"\0\0\0\x09e<s@t>\0\0\0", Reply::ChangeFrom { from: s("<s@t>"), args: Some(vec![]) }),
        (b"\0\0\0\x08qvirus\0\0", Reply::Quarantine(s("virus"))),
    ];
    for (packet, expected) in cases {
        let (code, data) = frame(packet);
        assert_eq!(decode_reply(code, data), Ok(expected.clone()));
        // Re-encoding gives the packet without the spare NUL (and length one less).
        let canonical = encoded_reply(&expected);
        assert_eq!([frame(&canonical).1, &b"\0"[..]].concat(), data);
    }
}

#[test]
fn reply_decode_errors() {
    use DecodeError::*;
    let cases: Vec<(u8, &[u8], DecodeError)> = vec![
        (b'Z', b"", UnknownCode(b'Z')),
        (b'O', b"\0\0\0\x06\0\0\0\0\0\0\0", Truncated { packet: "optneg" }),
        (b'O', b"\0\0\0\x06\0\0\0\0\0\0\0\0\0", TrailingBytes { packet: "optneg" }),
        (b'a', b"\0", TrailingBytes { packet: "accept" }),
        (b'4', b"x", TrailingBytes { packet: "shutdown" }),
        (b'y', b"", Truncated { packet: "replycode" }),
        (b'y', b"550 x", MissingNul { packet: "replycode" }),
        (b'y', b"550 x\0\0\0", TrailingBytes { packet: "replycode" }),
        (b'y', b"550 x\0more", TrailingBytes { packet: "replycode" }),
        (b'h', b"X-A\0", Truncated { packet: "addheader" }),
        (b'h', b"X-A\0v", MissingNul { packet: "addheader" }),
        (b'i', b"\0\0\0", Truncated { packet: "insheader" }),
        (b'm', b"\0\0\0\x01", Truncated { packet: "chgheader" }),
        (b'+', b"<x@y>", MissingNul { packet: "addrcpt" }),
        (b'2', b"<x@y>\0", Truncated { packet: "addrcpt_par" }),
        (b'-', b"<x@y>\0<z@y>\0", TrailingBytes { packet: "delrcpt" }),
        (b'e', b"", Truncated { packet: "chgfrom" }),
        (b'e', b"<s@t>\0SIZE=1", MissingNul { packet: "chgfrom" }),
        (b'q', b"why", MissingNul { packet: "quarantine" }),
        (b'l', b"\0\0\0\x01", Truncated { packet: "setsymlist" }),
        (b'l', b"\0\0\0\x01i j", MissingNul { packet: "setsymlist" }),
    ];
    for (code, data, expected) in cases {
        assert_eq!(decode_reply(code, data), Err(expected), "{} {:?}", code as char, data.escape_ascii().to_string());
    }
}

#[test]
fn command_decode_errors() {
    use DecodeError::*;
    let cases: Vec<(u8, &[u8], DecodeError)> = vec![
        (b'z', b"", UnknownCode(b'z')),
        (b'O', b"\0\0\0\x06", Truncated { packet: "optneg" }),
        (b'D', b"", Truncated { packet: "macro" }),
        (b'D', b"Cj\0", Truncated { packet: "macro" }),
        (b'D', b"Cj\0value", MissingNul { packet: "macro" }),
        (b'C', b"host", MissingNul { packet: "connect" }),
        (b'C', b"host\0", Truncated { packet: "connect" }),
        (b'C', b"host\0X", BadFamily(b'X')),
        (b'C', b"host\x004\0", Truncated { packet: "connect" }),
        (b'C', b"host\x004\0\x19", Truncated { packet: "connect" }),
        (b'C', b"host\x004\0\x19127.0.0.1", MissingNul { packet: "connect" }),
        (b'C', b"host\0U\0", TrailingBytes { packet: "connect" }),
        (b'H', b"x\0\0", TrailingBytes { packet: "helo" }),
        (b'M', b"", Truncated { packet: "mail" }),
        (b'R', b"<a>\0SIZE", MissingNul { packet: "rcpt" }),
        (b'T', b"x", TrailingBytes { packet: "data" }),
        (b'L', b"Subject\0", Truncated { packet: "header" }),
        (b'K', b"\0", TrailingBytes { packet: "quit_nc" }),
        (b'U', b"", Truncated { packet: "unknown" }),
    ];
    for (code, data, expected) in cases {
        assert_eq!(decode_command(code, data), Err(expected), "{} {:?}", code as char, data.escape_ascii().to_string());
    }
}

#[test]
fn errors_read_well() {
    assert_eq!(DecodeError::UnknownCode(b'Z').to_string(), "unknown milter packet code 'Z'");
    assert_eq!(DecodeError::BadFamily(0).to_string(), "milter connect packet: unknown address family '\\x00'");
    assert_eq!(
        DecodeError::TooLong { length: 70000, max: 65551 }.to_string(),
        "milter packet of 70000 bytes, over the limit of 65551"
    );
    assert_eq!(DecodeError::Truncated { packet: "optneg" }.to_string(), "milter optneg packet cut short");
}

#[test]
fn commands_round_trip() {
    let more = [
        Command::Body(Bytes::from(vec![b'x'; MAX_BODY_CHUNK])),
        Command::Mail(vec![s("<>"), s("")]),
        Command::Connect { hostname: vec![], family: Family::Inet6, port: 65535, address: s("::1") },
        Command::Macros { for_command: b'E', macros: vec![(vec![], vec![]), (s("i"), s("4F2"))] },
        Command::Header { name: s("X-Empty"), value: vec![] },
        Command::OptNeg(OptNeg { version: u32::MAX, actions: Actions(u32::MAX), protocol: Protocol(0) }),
    ];
    for command in commands().into_iter().map(|(command, _)| command).chain(more) {
        let bytes = encoded(&command);
        let (code, data) = frame(&bytes);
        assert_eq!(decode_command(code, data), Ok(command));
    }
}

#[test]
fn replies_round_trip() {
    let more = [
        Reply::ReplaceBody(Bytes::from(vec![b'\n'; MAX_BODY_CHUNK])),
        Reply::InsertHeader { index: u32::MAX, name: s("X"), value: vec![] },
        Reply::ReplyCode(vec![]),
        Reply::SetSymbolList { stage: 6, macros: vec![] },
        Reply::AddRcptWithArgs { rcpt: s("<a@b>"), args: vec![] },
    ];
    for reply in replies().into_iter().map(|(_, reply)| reply).chain(more) {
        let bytes = encoded_reply(&reply);
        let (code, data) = frame(&bytes);
        assert_eq!(decode_reply(code, data).as_ref(), Ok(&reply));
        assert_ne!(reply.name(), "unknown", "{reply:?}");
    }
    assert_eq!(Reply::ReplyCode(vec![]).name(), "replycode");
    assert_eq!(Reply::ConnectionFailed.name(), "conn_fail");
}

#[test]
fn flags_have_the_libmilter_values() {
    let actions = [
        (Actions::ADD_HEADERS, 0x1),
        (Actions::CHANGE_BODY, 0x2),
        (Actions::ADD_RCPT, 0x4),
        (Actions::DELETE_RCPT, 0x8),
        (Actions::CHANGE_HEADERS, 0x10),
        (Actions::QUARANTINE, 0x20),
        (Actions::CHANGE_FROM, 0x40),
        (Actions::ADD_RCPT_PAR, 0x80),
        (Actions::SET_SYMLIST, 0x100),
    ];
    for (flag, value) in actions {
        assert_eq!(flag.0, value, "{flag:?}");
    }
    let protocol = [
        (Protocol::NO_CONNECT, 0x1),
        (Protocol::NO_HELO, 0x2),
        (Protocol::NO_MAIL, 0x4),
        (Protocol::NO_RCPT, 0x8),
        (Protocol::NO_BODY, 0x10),
        (Protocol::NO_HEADERS, 0x20),
        (Protocol::NO_EOH, 0x40),
        (Protocol::NR_HEADER, 0x80),
        (Protocol::NO_UNKNOWN, 0x100),
        (Protocol::NO_DATA, 0x200),
        (Protocol::SKIP, 0x400),
        (Protocol::RCPT_REJ, 0x800),
        (Protocol::NR_CONNECT, 0x1000),
        (Protocol::NR_HELO, 0x2000),
        (Protocol::NR_MAIL, 0x4000),
        (Protocol::NR_RCPT, 0x8000),
        (Protocol::NR_DATA, 0x10000),
        (Protocol::NR_UNKNOWN, 0x20000),
        (Protocol::NR_EOH, 0x40000),
        (Protocol::NR_BODY, 0x80000),
        (Protocol::HEADER_LEADING_SPACE, 0x100000),
        (Protocol::MDS_256K, 0x10000000),
        (Protocol::MDS_1M, 0x20000000),
    ];
    for (flag, value) in protocol {
        assert_eq!(flag.0, value, "{flag:?}");
    }
    let all_actions = actions.iter().fold(Actions(0), |all, (flag, _)| all | *flag);
    assert_eq!(all_actions, Actions(0x1ff));
    assert_eq!(all_actions.names().len(), actions.len());
    assert_eq!(protocol.iter().fold(Protocol(0), |all, (flag, _)| all | *flag).names().len(), protocol.len());
}

#[test]
fn flag_operations() {
    let both = Actions::ADD_HEADERS | Actions::CHANGE_HEADERS;
    assert_eq!(both, Actions(0x11));
    assert!(both.contains(Actions::CHANGE_HEADERS));
    assert!(both.contains(both));
    assert!(both.contains(Actions(0)));
    assert!(!both.contains(Actions::ADD_HEADERS | Actions::QUARANTINE));
    assert_eq!(both & (Actions::CHANGE_HEADERS | Actions::QUARANTINE), Actions::CHANGE_HEADERS);
    assert_eq!(Actions(0x8000_0011).names(), ["ADD_HEADERS", "CHANGE_HEADERS"], "unnamed bits left out");
    assert_eq!(Protocol(0x3000_0000).names(), ["MDS_256K", "MDS_1M"]);
    assert!(Protocol(0).names().is_empty());
    assert_eq!(format!("{both:?}"), "Actions(0x11 ADD_HEADERS|CHANGE_HEADERS)");
    assert_eq!(Family::from_code(b'6'), Some(Family::Inet6));
    assert_eq!(Family::from_code(b'x'), None);
}

/// Every reply the reader gives for `stream` pushed in the pieces cut at `cuts`, up to the end.
fn read_replies(stream: &[u8], cuts: &[usize]) -> Vec<Reply> {
    let mut reader = PacketReader::new(1024);
    let mut replies = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&stream.len()]) {
        reader.push(&stream[start..end]);
        start = end;
        while let Some(reply) = reader.next_reply().unwrap() {
            replies.push(reply);
        }
    }
    assert_eq!(reader.buffered(), 0);
    replies
}

#[test]
fn reader_splits_at_every_byte_boundary() {
    let stream: Vec<u8> = replies().iter().flat_map(|(packet, _)| packet.iter().copied()).collect();
    let expected: Vec<Reply> = replies().into_iter().map(|(_, reply)| reply).collect();
    for cut in 0..=stream.len() {
        assert_eq!(read_replies(&stream, &[cut]), expected, "cut at {cut}");
    }
    let every: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(read_replies(&stream, &every), expected, "one byte at a time");

    let stream: Vec<u8> = commands().iter().flat_map(|(_, packet)| packet.iter().copied()).collect();
    let expected: Vec<Command> = commands().into_iter().map(|(command, _)| command).collect();
    for cut in 0..=stream.len() {
        let mut reader = PacketReader::new(1024);
        let mut got = Vec::new();
        for piece in [&stream[..cut], &stream[cut..]] {
            reader.push(piece);
            while let Some(command) = reader.next_command().unwrap() {
                got.push(command);
            }
        }
        assert_eq!(got, expected, "cut at {cut}");
    }
}

#[test]
fn reader_gives_two_packets_of_one_push() {
    let mut reader = PacketReader::new(64);
    reader.push(b"\0\0\0\x01c\0\0\0\x07+<x@y>\0\0\0");
    assert_eq!(reader.next_reply(), Ok(Some(Reply::Continue)));
    assert_eq!(reader.next_reply(), Ok(Some(Reply::AddRcpt(s("<x@y>")))));
    assert_eq!(reader.next_reply(), Ok(None));
    assert_eq!(reader.buffered(), 2, "the start of a third length");
    reader.push(b"\0\x03yab");
    assert_eq!(reader.next_frame(), Ok(Some((b'y', Bytes::from_static(b"ab")))), "frames are not decoded");
    assert_eq!(reader.buffered(), 0);
}

#[test]
fn reader_refuses_a_length_over_the_max_before_the_data() {
    let mut reader = PacketReader::new(100);
    reader.push(b"\0\0");
    assert_eq!(reader.next_reply(), Ok(None));
    reader.push(b"\0\x65");
    assert_eq!(reader.next_reply(), Err(DecodeError::TooLong { length: 101, max: 100 }));
    assert_eq!(reader.next_frame(), Err(DecodeError::TooLong { length: 101, max: 100 }), "and again");
    assert_eq!(reader.buffered(), 4);

    let mut reader = PacketReader::new(100);
    reader.push(b"\xff\xff\xff\xff");
    assert_eq!(reader.next_frame(), Err(DecodeError::TooLong { length: 0xffff_ffff, max: 100 }));

    // Exactly the max is fine, and waits for its data.
    let mut reader = PacketReader::new(100);
    reader.push(b"\0\0\0\x64b");
    assert_eq!(reader.next_reply(), Ok(None));
    reader.push(&[b'x'; 99]);
    assert_eq!(reader.next_reply(), Ok(Some(Reply::ReplaceBody(Bytes::from(vec![b'x'; 99])))));
}

#[test]
fn reader_refuses_zero_length() {
    let mut reader = PacketReader::new(100);
    reader.push(b"\0\0\0\0\0\0\0\x01c");
    assert_eq!(reader.next_reply(), Err(DecodeError::Empty));
    assert_eq!(reader.next_command(), Err(DecodeError::Empty), "the stream cannot be resynchronised");
}

#[test]
fn reader_goes_on_after_a_packet_that_does_not_decode() {
    let mut reader = PacketReader::new(100);
    reader.push(b"\0\0\0\x02a\0\0\0\0\x01c\0\0\0\x01Z");
    assert_eq!(reader.next_reply(), Err(DecodeError::TrailingBytes { packet: "accept" }));
    assert_eq!(reader.next_reply(), Ok(Some(Reply::Continue)));
    assert_eq!(reader.next_reply(), Err(DecodeError::UnknownCode(b'Z')));
    assert_eq!(reader.next_reply(), Ok(None));
    assert_eq!(reader.buffered(), 0);
}
