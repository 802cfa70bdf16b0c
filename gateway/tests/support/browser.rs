//! `Browser`: a real headless Chromium (Debian's `chromium` and `chromium-driver`) driven over
//! the W3C WebDriver protocol: a small blocking client (ureq, serde_json) of a `chromedriver`
//! it starts on a loopback port, in its own process group, with a fresh profile in a temp dir.
//! Every wait is bounded by `WAIT`; every failure panics with what was asked and what the
//! driver said. Drop deletes the session (chromedriver then closes Chromium) and kills the group.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::WAIT;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The browser itself, not Debian's `/usr/bin/chromium` shell wrapper: the wrapper adds its own
/// flags from /etc/chromium.d (and its /dev/shm check prints errors on some machines).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
const ARGS: [&str; 5] =
    ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage"];
/// The key of an element reference in WebDriver's JSON (fixed by the W3C spec).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const POLL: Duration = Duration::from_millis(100);
/// The driver's own timeouts (page load, script) are `WAIT`; the HTTP read timeout only backs
/// them up against a hung driver, so it is a little longer and the driver's message wins.
const HTTP_SLACK: Duration = Duration::from_secs(10);
/// chromedriver exits when its port was taken between `free_port` and its bind: retry.
const ATTEMPTS: usize = 3;

/// An element of the current page (a WebDriver element reference).
#[derive(Debug, Clone)]
pub struct Element {
    id: String,
}

impl Element {
    /// The reference as JSON, to pass to `Browser::execute` (the script sees the DOM element).
    pub fn json(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }
}

pub struct Browser {
    /// Chromium's version, as the new session reported it.
    pub browser_version: String,
    /// chromedriver's version, from its `/status`.
    pub driver_version: String,
    agent: ureq::Agent,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    driver: Child,
    /// The profile (`--user-data-dir`) and chromedriver's log; dropped after the processes.
    dir: tempfile::TempDir,
}

/// A failed WebDriver command: the spec's error code (`no such element`…) and message, or
/// `transport` when the HTTP request itself failed.
struct Failure {
    error: String,
    message: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; panics when they are not installed
    /// or do not come up within `WAIT`.
    pub fn start() -> Browser {
        assert!(Path::new(CHROMIUM).exists(), "chromium is not installed (the test command installs it: .ci/setup)");
        assert!(
            Path::new(CHROMEDRIVER).exists(),
            "chromedriver is not installed (package chromium-driver; the test command installs it: .ci/setup)"
        );
        let dir = tempfile::tempdir().expect("temp dir for the browser profile");
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(WAIT + HTTP_SLACK)
            .timeout_write(WAIT)
            .build();
        let (driver, base, driver_version) = start_driver(&agent, dir.path());
        let mut browser =
            Browser { browser_version: String::new(), driver_version, agent, session: String::new(), driver, dir };
        let profile = browser.dir.path().join("profile");
        let mut args: Vec<String> = ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let millis = WAIT.as_millis() as u64;
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "timeouts": { "implicit": 0, "pageLoad": millis, "script": millis },
        }}});
        let created =
            call(&browser.agent, "POST", &format!("{base}/session"), Some(capabilities)).unwrap_or_else(|f| {
                panic!("chromium did not start a session: {}: {}\n{}", f.error, f.message, browser.driver_log())
            });
        let id = created["sessionId"].as_str().expect("a session id in the new session's reply");
        browser.session = format!("{base}/session/{id}");
        browser.browser_version = created["capabilities"]["browserVersion"].as_str().unwrap_or_default().to_string();
        browser
    }

    /// Navigates to `url` and waits for the page to load (the session's page-load timeout).
    /// Panics when Chromium shows its own error page (refused, unresolvable…); an HTTP error
    /// status is a page like any other (WebDriver does not expose the status).
    pub fn goto(&self, url: &str) {
        if let Err(f) = self.command("POST", "/url", Some(json!({ "url": url }))) {
            self.fail(&format!("goto {url}"), f);
        }
        // A failed load is no WebDriver error: Chromium shows chrome-error://chromewebdata/.
        let page = self.execute("return [location.protocol, document.body ? document.body.innerText : '']", vec![]);
        if page[0] == json!("chrome-error:") {
            let reason = page[1].as_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
            panic!("browser: cannot load {url}: {reason}");
        }
    }

    /// The current page's URL.
    pub fn url(&self) -> String {
        self.run("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// The first element matching the CSS selector, now (no waiting).
    pub fn find(&self, css: &str) -> Option<Element> {
        let body = json!({ "using": "css selector", "value": css });
        match self.command("POST", "/element", Some(body)) {
            Ok(found) => Some(element(&found)),
            Err(f) if f.error == "no such element" => None,
            Err(f) => self.fail(&format!("find {css:?}"), f),
        }
    }

    /// Polls until an element matches `css`; `what` says what it is, for the panic message.
    pub fn wait_for(&self, css: &str, what: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.find(css) {
                return found;
            }
            if Instant::now() >= deadline {
                panic!("{what}: no element matches {css:?} after {WAIT:?} on {}", self.url());
            }
            sleep(POLL);
        }
    }

    /// Polls until the text of the element matching `css` contains `needle`; returns the text.
    /// The element is found again on each poll, so a re-rendered one is seen too.
    pub fn wait_for_text(&self, css: &str, needle: &str, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(found) = self.find(css) {
                // A stale reference (the page replaced the element in between) is polled again.
                if let Ok(text) = self.command("GET", &format!("/element/{}/text", found.id), None) {
                    let text = text.as_str().unwrap_or_default().to_string();
                    if text.contains(needle) {
                        return text;
                    }
                    last = Some(text);
                }
            }
            if Instant::now() >= deadline {
                match last {
                    Some(text) => {
                        panic!("{what}: the text of {css:?} has no {needle:?} after {WAIT:?}; it is {text:?}")
                    }
                    None => panic!("{what}: no element matches {css:?} after {WAIT:?} on {}", self.url()),
                }
            }
            sleep(POLL);
        }
    }

    /// The element's rendered text (`innerText`-like, as WebDriver defines it).
    pub fn text(&self, element: &Element) -> String {
        let text = self.run("GET", &format!("/element/{}/text", element.id), None);
        text.as_str().unwrap_or_default().to_string()
    }

    /// Types `text` into the element (focusing it first), as key presses.
    pub fn type_into(&self, element: &Element, text: &str) {
        self.run("POST", &format!("/element/{}/value", element.id), Some(json!({ "text": text })));
    }

    /// Clicks the element's centre (scrolled into view first).
    pub fn click(&self, element: &Element) {
        self.run("POST", &format!("/element/{}/click", element.id), Some(json!({})));
    }

    /// Runs `script` as a function body with `args` (`arguments[0]`…; an `Element::json` is the
    /// DOM element) and returns what it returns; a returned promise is awaited.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.run("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let encoded = self.run("GET", "/screenshot", None);
        let png = base64_decode(encoded.as_str().unwrap_or_default()).expect("the screenshot in base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write the screenshot {}: {e}", path.display()));
    }

    /// chromedriver's output so far (for failure messages).
    pub fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        format!("chromedriver's log:\n{log}")
    }

    /// A session command (`path` relative to the session); panics on failure.
    fn run(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body).unwrap_or_else(|f| self.fail(&format!("{method} {path}"), f))
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        call(&self.agent, method, &format!("{}{path}", self.session), body)
    }

    fn fail(&self, what: &str, failure: Failure) -> ! {
        panic!("browser: {what} failed: {}: {}", failure.error, failure.message)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Deleting the session makes chromedriver close Chromium; a short bound, as the group
        // kill below ends whatever is left anyway.
        if !self.session.is_empty() {
            let _ = self.agent.request("DELETE", &self.session).timeout(Duration::from_secs(10)).call();
        }
        // chromedriver leads its own group, and Chromium's processes are in it.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts chromedriver on a free port until its `/status` says ready: (child, base URL, version).
fn start_driver(agent: &ureq::Agent, dir: &Path) -> (Child, String, String) {
    let log_path = dir.join("chromedriver.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut failures = String::new();
    for _ in 0..ATTEMPTS {
        let port = free_port();
        let out = std::fs::File::create(&log_path).expect("chromedriver's log file");
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            // cargo's LD_LIBRARY_PATH (target dirs) is no use to chromedriver or Chromium.
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER} (.ci/setup installs chromium-driver): {e}"));
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                failures.push_str(&format!("chromedriver on port {port} exited with {status}:\n{}\n", log()));
                break;
            }
            if let Ok(status) = call(agent, "GET", &format!("{base}/status"), None) {
                if status["ready"] == json!(true) {
                    // "156.0.8078.114 (ea19f97…-refs/branch-heads/…)": the number only.
                    let version = status["build"]["version"].as_str().unwrap_or_default();
                    return (child, base, version.split(' ').next().unwrap_or_default().to_string());
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromedriver on port {port} not ready after {WAIT:?}:\n{}", log());
            }
            sleep(POLL);
        }
    }
    panic!("chromedriver did not start:\n{failures}");
}

/// One WebDriver request: the reply's `value`, or the error it carries.
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<Value>) -> Result<Value, Failure> {
    let request = agent.request(method, url);
    let reply = match body {
        Some(body) => request.set("Content-Type", "application/json").send_string(&body.to_string()),
        None => request.call(),
    };
    let response = match reply {
        Ok(response) => response,
        // WebDriver errors come as 4xx/5xx with a JSON body naming the error.
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => return Err(Failure { error: "transport".into(), message: format!("{method} {url}: {e}") }),
    };
    let status = response.status();
    // Not into_string: it stops at 10 MB, and a screenshot's base64 can be large.
    let mut text = String::new();
    if let Err(e) = response.into_reader().read_to_string(&mut text) {
        return Err(Failure { error: "transport".into(), message: format!("reading {method} {url}: {e}") });
    }
    let reply: Value = serde_json::from_str(&text).map_err(|e| Failure {
        error: "bad reply".into(),
        message: format!("{method} {url} answered {status} with non-JSON ({e}): {text:.300}"),
    })?;
    let value = reply["value"].clone();
    match value["error"].as_str() {
        Some(error) if status >= 400 => Err(Failure { error: error.to_string(), message: message(error, &value) }),
        _ => Ok(value),
    }
}

/// chromedriver's error message without the repeated error code and its "(Session info: …)".
fn message(error: &str, value: &Value) -> String {
    let text = value["message"].as_str().unwrap_or_default();
    let text = text.strip_prefix(error).and_then(|t| t.strip_prefix(": ")).unwrap_or(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("(Session info:")).collect();
    lines.join("\n")
}

/// The element reference in a find reply.
fn element(found: &Value) -> Element {
    let id = found[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("no element reference in {found}"));
    Element { id: id.to_string() }
}

/// Standard base64 (with padding), as WebDriver sends screenshots; None when malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut count) = (0u32, 0);
    for &c in text.trim_end_matches('=').as_bytes() {
        bits = ((bits << 6) | u32::from(digit(c)?)) & 0xffff;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

/// A loopback port nothing listens on (chromedriver binds it right after; a race is retried).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}
