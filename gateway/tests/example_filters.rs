//! The example filters in other languages (`examples/filters/`: Python, JavaScript, C, Zig),
//! built by the test command into `target/example-filters/`, each run in the real gateway with
//! the default limits: its reject (550 5.7.1 by Subject), its header with the body's size on a
//! small, a 5 MiB and a 20 MiB message, its log line through the host, and a fault (the filter
//! failing on purpose) answered by the stage's `on_error`, the gateway serving on.

mod support;

use std::path::PathBuf;

use support::Gateway;

fn example(language: &str) -> PathBuf {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/example-filters"))
        .join(format!("{language}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build it with `make example-filters` (the test command does)",
        path.display()
    );
    path
}

/// A message whose body has exactly `body_bytes` bytes, in CRLF lines.
fn content(subject: &str, body_bytes: usize) -> Vec<u8> {
    let line = b"a body line made for the example filters, 64 bytes with CRLF .\r\n";
    let mut body = Vec::with_capacity(body_bytes);
    while body.len() + line.len() <= body_bytes {
        body.extend_from_slice(line);
    }
    let rest = body_bytes - body.len();
    assert_ne!(rest, 1, "a size one byte past whole lines cannot end in CRLF");
    if rest >= 2 {
        body.extend(std::iter::repeat_n(b'x', rest - 2).chain(*b"\r\n"));
    }
    [format!("From: <a@client.test>\r\nTo: <b@dest.test>\r\nSubject: {subject}\r\n\r\n").into_bytes(), body].concat()
}

fn runs_in_the_gateway(language: &str) {
    let stage = format!(
        "[[stage]]\nname = \"example\"\nkind = \"wasm\"\npath = \"{}\"\non_error = \"tempfail\"\n[stage.config]\npattern = \"lottery\"\n",
        example(language).display()
    );
    let gateway = Gateway::builder().section(&stage).start();
    let mut client = gateway.connect();
    client.hello();

    let reply = client.send_message("a@client.test", &["b@dest.test"], &content("Win the LOTTERY now", 100));
    assert_eq!(reply.code, 550, "{language}: {}", reply.text());
    assert!(reply.text().contains("5.7.1 Subject contains \"lottery\""), "{language}: {}", reply.text());

    let sizes = [100usize, 5 << 20, 20 << 20];
    for (n, size) in sizes.iter().enumerate() {
        let reply = client.send_message("a@client.test", &["b@dest.test"], &content(&format!("hello {n}"), *size));
        assert_eq!(reply.code, 250, "{language} {size}: {}", reply.text());
        gateway.wait_for_log(&format!("{language} example: {size} body bytes"));
    }
    support::poll_until(|| gateway.delivered().len() == sizes.len(), "every message delivered");
    let mut headers: Vec<String> = gateway
        .delivered()
        .iter()
        .map(|message| {
            let text = String::from_utf8_lossy(&message[..message.len().min(4096)]).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("X-Sluice-Example: "))
                .unwrap_or_else(|| panic!("{language}: no header in {text}"))
                .to_string()
        })
        .collect();
    headers.sort_by_key(|h| h.split(' ').nth(1).and_then(|n| n.parse::<usize>().ok()));
    let expected: Vec<String> = sizes.iter().map(|size| format!("{language} {size}")).collect();
    assert_eq!(headers, expected);

    // The filter fails on purpose: the stage's on_error (tempfail) answers; the gateway serves on.
    let reply = client.send_message("a@client.test", &["b@dest.test"], &content("please crash", 100));
    assert_eq!(reply.code, 451, "{language}: {}", reply.text());
    gateway.wait_for_log("stage=example");
    let reply = client.send_message("a@client.test", &["b@dest.test"], &content("after the crash", 100));
    assert_eq!(reply.code, 250, "{language}: {}", reply.text());
}

#[test]
fn the_python_example_runs_in_the_gateway() {
    runs_in_the_gateway("python");
}

#[test]
fn the_javascript_example_runs_in_the_gateway() {
    runs_in_the_gateway("javascript");
}

#[test]
fn the_c_example_runs_in_the_gateway() {
    runs_in_the_gateway("c");
}

#[test]
fn the_zig_example_runs_in_the_gateway() {
    runs_in_the_gateway("zig");
}

/// `docs/filters.md` shows each example as it is: every block marked `<!-- example: PATH -->`
/// is that file's text.
#[test]
fn the_filters_page_shows_each_example_as_it_is() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let page = std::fs::read_to_string(root.join("docs/filters.md")).unwrap();
    let mut shown = 0;
    for marked in page.split("<!-- example: ").skip(1) {
        let (path, rest) = marked.split_once(" -->\n").unwrap();
        let code = rest.split_once("\n").unwrap().1.split_once("\n```\n").unwrap().0;
        let file = std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(code, file.trim_end(), "docs/filters.md shows an old {path}: copy it in again");
        shown += 1;
    }
    assert_eq!(shown, 4, "an example per language");
}
