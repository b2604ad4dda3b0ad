//! Unit tests of the parser and encoder against the Cyrus behaviour of spec §2 and §15.

use super::parser::*;
use super::response;
use super::{Command, CommandKind};
use crate::mailbox::MailboxWrite;
use proptest::prelude::*;

const AUTHED: ParseContext = ParseContext {
    authenticated: true,
};
const ANON: ParseContext = ParseContext {
    authenticated: false,
};

/// Feeds `input` in one piece and renders every event the way the server would answer.
fn run(input: &[u8], ctx: ParseContext) -> Vec<Event> {
    let mut parser = Parser::new(Limits::default());
    let mut events = Vec::new();
    let mut rest = input;
    loop {
        let (used, event) = parser.advance(rest, &ctx);
        rest = &rest[used..];
        match event {
            // The session closes the connection after a fatal input.
            Some(e @ Event::Fatal { .. }) => {
                events.push(e);
                break;
            }
            Some(e) => events.push(e),
            None => break,
        }
    }
    events
}

fn answers(input: &[u8], ctx: ParseContext) -> String {
    let mut out = Vec::new();
    for event in run(input, ctx) {
        match event {
            Event::Error { tag, kind } => response::parse_error(&mut out, tag.as_deref(), kind),
            Event::Command(c) => out.extend_from_slice(format!("CMD {:?}\n", c.kind).as_bytes()),
            Event::Continue => out.extend_from_slice(response::GO_AHEAD),
            Event::Fatal { tag } => out
                .extend_from_slice(format!("FATAL {:?}\n", tag.map(String::from_utf8)).as_bytes()),
            Event::Sasl(r) => out.extend_from_slice(format!("SASL {r:?}\n").as_bytes()),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every input's answer, as `answers` renders it, before login (`ANON`) and after (`AUTHED`).
#[rustfmt::skip]
const ANSWERS: &[(ParseContext, &[u8], &str)] = &[
    (ANON, b"\r\n", "* BAD \"Need command\"\r\n"),
    (ANON, b"A01\r\n", "* BAD \"Need command\"\r\n"),
    (ANON, b"A01 \r\n", "A01 BAD \"Null command\"\r\n"),
    (ANON, b"A1  NOOP\r\n", "A1 BAD \"Null command\"\r\n"),
    (ANON, b"A1\tNOOP\r\n", "* BAD \"Need command\"\r\n"),
    (ANON, b"a\"b NOOP\r\n", "* BAD \"Need command\"\r\n"),
    (ANON, b" NOOP\r\n", " BAD \"Please login first\"\r\n"),
    (ANON, b"* NOOP\r\n", "* BAD \"Please login first\"\r\n"),
    (ANON, b"\x00\x01\x02\r\n", "* BAD \"Need command\"\r\n"),
    (ANON, b"a\x00b NOOP\r\n", "a BAD \"Please login first\"\r\n"),
    (AUTHED, b"N3 NOOP\r\r\n", "N3 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"N2 NOOP\n", "CMD Noop\n"),
    (AUTHED, b"A4 noop\r\n", "CMD Noop\n"),
    (ANON, b"A01 FOO\r\n", "A01 BAD \"Please login first\"\r\n"),
    (ANON, b"A02 XYZZY\r\n", "A02 BAD \"Unrecognized command\"\r\n"),
    (ANON, b"A02 CAPA\r\n", "A02 BAD \"Unrecognized command\"\r\n"),
    (AUTHED, b"A02 XYZZY\r\n", "A02 BAD \"Unrecognized command\"\r\n"),
    (AUTHED, b"A02 FOO\r\n", "A02 BAD \"Unrecognized command\"\r\n"),
    // No `+ go ahead`: the login check precedes argument parsing.
    (ANON, b"F1 FIND {5}\r\n", "F1 BAD \"Please login first\"\r\n"),
    (AUTHED, b"A1 NO\x00OP\r\n", "A1 BAD \"Unrecognized command\"\r\n"),
    (AUTHED, b"F2 FIND \"a\x00b\"\r\n", "CMD Find { name: [97] }\n"),
    (AUTHED, b"A1 ACTIVATE {3}\r\nabc {5}\r\nh!p1x {0}\r\n\r\n", "+ go ahead\r\n+ go ahead\r\n+ go ahead\r\nCMD Write(Activate { name: [97, 98, 99], location: [104, 33, 112, 49, 120], acl: [] })\n"),
    (AUTHED, b"F1 FIND {200000}\r\nN1 NOOP\r\nN2 NOOP\r\n", "F1 BAD \"Extra arguments\"\r\nCMD Noop\n"),
    (AUTHED, b"F1 FIND {200000+}\r\n", "FATAL Some(Ok(\"F1\"))\n"),
    (AUTHED, b"F1 FIND {99999999999}\r\n", "FATAL Some(Ok(\"F1\"))\n"),
    (AUTHED, b"A1 FOO {5+}\r\nN1 NO\r\nN2 NOOP\r\n", "A1 BAD \"Unrecognized command\"\r\nCMD Noop\n"),
    (AUTHED, b"A1 FOO {3}\r\nN1 NOOP\r\n", "A1 BAD \"Unrecognized command\"\r\nCMD Noop\n"),
    (AUTHED, b"A2 ACTIVATE abc \"h!p\" \"\"\r\n", "A2 BAD \"Missing arguments\"\r\n"),
    (AUTHED, b"A3 ACTIVATE \"abc\" \"h!p\"\r\n", "A3 BAD \"Missing arguments\"\r\n"),
    (AUTHED, b"A5 ACTIVATE\r\n", "A5 BAD \"Missing arguments\"\r\n"),
    (AUTHED, b"A1 ACTIVATE \"a\" \"b\" \r\n", "A1 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"A4 ACTIVATE \"a\"  \"b\" \"c\"\r\n", "A4 BAD \"Missing arguments\"\r\n"),
    (AUTHED, b"A6 ACTIVATE \"t6\" \"h!p\" \"\" \"extra\"\r\n", "A6 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"F2 FIND\r\n", "F2 BAD \"Missing arguments\"\r\n"),
    (AUTHED, b"F1 FIND \r\n", "F1 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"F3 FIND abc\r\n", "F3 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"F4 FIND \"abc\" \"x\"\r\n", "F4 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"FIND(\"x\"\r\n", "* BAD \"Need command\"\r\n"),
    (AUTHED, b"F1 FIND(\"x\"\r\n", "F1 BAD \"Missing arguments\"\r\n"),
    (AUTHED, b"L1 LIST(\"x\"\r\n", "L1 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"N1 NOOP(\r\n", "N1 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"L3 LIST h\r\n", "L3 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"L1 LIST \r\n", "L1 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"X4 AUTHENTICATE PLAIN\r\n", "X4 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"X5 AUTHENTICATE\r\n", "X5 BAD \"Missing arguments\"\r\n"),
    (AUTHED, b"A3 AUTHENTICATE \"PLAIN\" \r\n", "A3 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"U1 UPDATE \"\"\r\n", "U1 BAD \"Badly formed arguments\"\r\n"),
    (AUTHED, b"U2 UPDATE be9\r\n", "U2 BAD \"Badly formed arguments\"\r\n"),
    (AUTHED, b"U3 UPDATE \"be9\" \r\n", "U3 BAD \"Badly formed arguments\"\r\n"),
    (AUTHED, b"C2 COMPRESS DEFLATE\r\n", "C2 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"C3 COMPRESS\r\n", "C3 BAD \"Missing arguments\"\r\n"),
    (AUTHED, b"F10 FIND \"abc\r\n", "F10 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"F8 FIND {x}\r\n", "F8 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"F7 FIND {3+}\r\na\x00c\r\n", "F7 BAD \"Extra arguments\"\r\n"),
    (AUTHED, b"F9 FIND {3+ }\r\nabc\r\n", "F9 BAD \"Extra arguments\"\r\n* BAD \"Need command\"\r\n"),
    (AUTHED, b"F11 FIND {3+}\nabc\r\n", "F11 BAD \"Extra arguments\"\r\n* BAD \"Need command\"\r\n"),
];

#[test]
fn answers_match_cyrus() {
    for (ctx, input, expected) in ANSWERS {
        assert_eq!(
            answers(input, *ctx),
            *expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn strings_and_literals() {
    assert_eq!(
        run(b"F5 FIND \"ab\\c\"\r\n", AUTHED),
        vec![Event::Command(Command {
            tag: b"F5".to_vec(),
            kind: CommandKind::Find {
                name: b"abc".to_vec()
            }
        })]
    );
}

#[test]
fn oversized_inputs() {
    let mut big = b"F1 FIND {131072+}\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'z', 131_072));
    big.extend_from_slice(b"\r\n");
    assert!(matches!(run(&big, AUTHED)[..], [Event::Command(_)]));

    let mut tag = vec![b'T'; 131_073];
    tag.extend_from_slice(b" NOOP\r\n");
    assert_eq!(answers(&tag, AUTHED), "FATAL None\n");
    let mut tag = vec![b'T'; 131_072];
    tag.extend_from_slice(b" NOOP\r\n");
    assert_eq!(run(&tag, AUTHED).len(), 1);
    let mut quoted = b"X4 FIND \"".to_vec();
    quoted.extend(std::iter::repeat_n(b'q', 140_000));
    assert_eq!(answers(&quoted, AUTHED), "FATAL Some(Ok(\"X4\"))\n");

    let mut atom = b"F3 FIND ".to_vec();
    atom.extend(std::iter::repeat_n(b'a', 200_000));
    atom.extend_from_slice(b"\r\nN1 NOOP\r\n");
    assert_eq!(
        answers(&atom, AUTHED),
        "F3 BAD \"Extra arguments\"\r\nCMD Noop\n"
    );
    let mut spaces = b"F5 NOOP".to_vec();
    spaces.extend(std::iter::repeat_n(b' ', 300_000));
    spaces.extend_from_slice(b"\r\n");
    assert_eq!(answers(&spaces, AUTHED), "F5 BAD \"Extra arguments\"\r\n");
}

#[test]
fn update_host_limit() {
    let mut line = b"U0 UPDATE".to_vec();
    for i in 0..30 {
        line.extend_from_slice(format!(" \"h{i}\"").as_bytes());
    }
    let mut thirty = line.clone();
    thirty.extend_from_slice(b"\r\n");
    assert!(
        matches!(&run(&thirty, AUTHED)[..], [Event::Command(Command { kind: CommandKind::Update { hosts }, .. })] if hosts.len() == 30)
    );
    line.extend_from_slice(b" \"h30\"\r\n");
    assert_eq!(answers(&line, AUTHED), "U0 BAD \"Extra arguments\"\r\n");
}

#[test]
fn interrupted_commands_are_answered_as_cyrus_does() {
    let mut parser = Parser::new(Limits::default());
    let (_, event) = parser.advance(b"A1 FIND ", &AUTHED);
    assert_eq!(event, None);
    assert_eq!(
        parser.interrupt(),
        Some(Event::Error {
            tag: Some(b"A1".to_vec()),
            kind: ParseErrorKind::ExtraArguments
        })
    );
    let (_, event) = parser.advance(b"A1 FIND {5+}\r\nab", &AUTHED);
    assert_eq!(event, None);
    assert!(matches!(
        parser.interrupt(),
        Some(Event::Error {
            kind: ParseErrorKind::ExtraArguments,
            ..
        })
    ));
    let (_, event) = parser.advance(b"A1 FI", &AUTHED);
    assert_eq!(event, None);
    assert_eq!(parser.interrupt(), None);
    assert!(parser.is_idle());
}

#[test]
fn sasl_lines() {
    let mut parser = Parser::new(Limits::default());
    parser.expect_sasl_response();
    let (used, event) = parser.advance(b"*\r\nN1 NOOP\r\n", &ANON);
    assert_eq!(used, 3);
    assert_eq!(event, Some(Event::Sasl(SaslResponse::Cancel)));
    parser.expect_sasl_response();
    let (_, event) = parser.advance(b"AG11\n", &ANON);
    assert_eq!(
        event,
        Some(Event::Sasl(SaslResponse::Line(b"AG11".to_vec())))
    );
}

#[test]
fn byte_at_a_time_equals_all_at_once() {
    let input = b"A1 ACTIVATE {3+}\r\nabc \"h!p\" {4}\r\nx\tl\t\r\nB2 FIND \"abc\"\r\nC3 BOGUS {2+}\r\nxx\r\n";
    let whole = run(input, AUTHED);
    let mut parser = Parser::new(Limits::default());
    let mut events = Vec::new();
    for b in input.iter() {
        let mut rest: &[u8] = std::slice::from_ref(b);
        while !rest.is_empty() {
            let (used, event) = parser.advance(rest, &AUTHED);
            rest = &rest[used..];
            events.extend(event);
        }
    }
    assert_eq!(events, whole);
}

#[test]
fn banner_is_byte_exact() {
    let mut out = Vec::new();
    response::Banner {
        mechanisms: vec!["PLAIN".into()],
        starttls: false,
        compress: true,
        server_name: "mupdate-master".into(),
        implementation: "Cyrus IMAP".into(),
        version: "3.6.1-Debian-3.6.1-4+deb12u5".into(),
        role: "(master)".into(),
    }
    .encode(&mut out);
    assert_eq!(
        out,
        b"* AUTH \"PLAIN\"\r\n* COMPRESS \"DEFLATE\"\r\n* PARTIAL-UPDATE\r\n* OK MUPDATE \"mupdate-master\" \"Cyrus IMAP\" \"3.6.1-Debian-3.6.1-4+deb12u5\" \"(master)\"\r\n"
    );
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    // NUL cannot travel in a MUPDATE string (Cyrus truncates or refuses it).
    proptest::collection::vec(1u8..=255, 0..40)
}

fn arb_tag() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("word byte", |b| {
            !matches!(
                b,
                b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c | b'(' | b')' | b'"' | 0
            )
        }),
        0..12,
    )
}

fn arb_kind() -> impl Strategy<Value = CommandKind> {
    prop_oneof![
        (arb_bytes(), arb_bytes(), arb_bytes()).prop_map(|(name, location, acl)| {
            CommandKind::Write(MailboxWrite::Activate {
                name,
                location,
                acl,
            })
        }),
        (arb_bytes(), arb_bytes()).prop_map(|(name, location)| CommandKind::Write(
            MailboxWrite::Reserve { name, location }
        )),
        (arb_bytes(), arb_bytes()).prop_map(|(name, location)| CommandKind::Write(
            MailboxWrite::Deactivate { name, location }
        )),
        arb_bytes().prop_map(|name| CommandKind::Write(MailboxWrite::Delete { name })),
        arb_bytes().prop_map(|name| CommandKind::Find { name }),
        proptest::option::of(arb_bytes()).prop_map(|prefix| CommandKind::List { prefix }),
        proptest::collection::vec(proptest::collection::vec(1u8..=255, 1..10), 0..=30)
            .prop_map(|hosts| CommandKind::Update { hosts }),
        (arb_bytes(), proptest::option::of(arb_bytes())).prop_map(
            |(mechanism, initial_response)| {
                CommandKind::Authenticate {
                    mechanism,
                    initial_response,
                }
            }
        ),
        (arb_bytes(), proptest::option::of(arb_bytes()))
            .prop_map(|(seq, replica)| CommandKind::Xack { seq, replica }),
        Just(CommandKind::Noop),
        Just(CommandKind::Logout),
    ]
}

proptest! {
    #[test]
    fn encode_then_parse_round_trips(tag in arb_tag(), kind in arb_kind()) {
        let command = Command { tag, kind };
        let mut wire = Vec::new();
        command.encode(&mut wire);
        let events = run(&wire, AUTHED);
        prop_assert_eq!(events, vec![Event::Command(command)]);
    }

    #[test]
    fn arbitrary_input_never_panics_and_is_consumed(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut parser = Parser::new(Limits { max_word: 16, max_quoted: 16, max_literal: 16 });
        let mut rest = &input[..];
        let mut guard = 0;
        while !rest.is_empty() {
            let (used, event) = parser.advance(rest, &AUTHED);
            prop_assert!(used > 0 || event.is_some());
            if let Some(Event::Fatal { .. }) = event { break; }
            rest = &rest[used..];
            guard += 1;
            prop_assert!(guard < 10_000);
        }
        let _ = parser.interrupt();
    }
}

#[test]
fn command_names_lists_every_command_once() {
    let lines: &[&[u8]] = &[
        b"A AUTHENTICATE \"PLAIN\"\r\n",
        b"A ACTIVATE \"m\" \"h!p\" \"\"\r\n",
        b"A RESERVE \"m\" \"h!p\"\r\n",
        b"A DEACTIVATE \"m\" \"h!p\"\r\n",
        b"A DELETE \"m\"\r\n",
        b"A FIND \"m\"\r\n",
        b"A LIST\r\n",
        b"A UPDATE\r\n",
        b"A XUPDATE\r\n",
        b"A XACK \"7\"\r\n",
        b"A NOOP\r\n",
        b"A LOGOUT\r\n",
        b"A STARTTLS\r\n",
        b"A COMPRESS \"DEFLATE\"\r\n",
    ];
    let mut seen: Vec<&str> = lines
        .iter()
        .flat_map(|line| run(line, AUTHED))
        .map(|event| match event {
            Event::Command(command) => command.kind.name(),
            other => panic!("not a command: {other:?}"),
        })
        .collect();
    let mut listed = super::command::COMMAND_NAMES.to_vec();
    seen.sort_unstable();
    listed.sort_unstable();
    assert_eq!(seen, listed);
}

#[test]
fn a_slaves_authenticate_is_spelled_as_cyrus_and_parses_back() {
    let mut out = Vec::new();
    super::command::encode_authenticate(&mut out, b"A01", "PLAIN", b"\0mupdate\0pass");
    assert_eq!(
        out,
        b"A01 AUTHENTICATE \"PLAIN\" {20+}\r\nAG11cGRhdGUAcGFzcw==\r\n".as_slice()
    );
    match run(&out, ANON).as_slice() {
        [Event::Command(command)] => assert_eq!(
            command.kind,
            CommandKind::Authenticate {
                mechanism: b"PLAIN".to_vec(),
                initial_response: Some(b"AG11cGRhdGUAcGFzcw==".to_vec()),
            }
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_status_of_the_last_answer_line() {
    use super::response::Status;
    let found = b"F1 MAILBOX {1+}\r\nx {1+}\r\ny {0+}\r\n\r\nF1 OK \"Search completed\"\r\n";
    assert_eq!(Status::of_last_line(found), Some(Status::Ok));
    let refused = b"A1 NO \"mailbox already exists\"\r\n";
    assert_eq!(Status::of_last_line(refused), Some(Status::No));
    assert_eq!(
        Status::of_last_line(b"* BAD \"Need command\"\r\n"),
        Some(Status::Bad)
    );
    assert_eq!(Status::of_last_line(b"+ go ahead\r\n"), None);
    assert_eq!(Status::of_last_line(b""), None);
}
