//! One validation before anything is served, the same for `check-config`, `serve` and every
//! reload: the files a config names, the directories Sluice writes to, each filter loaded and its
//! `[stage.config]` accepted; errors name the file, line, stage and key. And `filter-test`'s
//! handling of messages, configurations and files that are not filters.

mod support;

use std::path::{Path, PathBuf};

use support::{check_config, filter_wasm, line_of, run_tool, sluice_bin, wasm_stage, Gateway};

const BAD_RULES: &str = "rules = \"header Subject /(/ reject 550 5.7.1 x\"";
const BAD_PATTERN: &str =
    "line 1: bad pattern: found open group without closing ')': header Subject /(/ reject 550 5.7.1 x";

/// Writes `text` as `sluice.toml` in `dir` (after a loopback `[server]`); returns its path.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    let server =
        format!("[server]\nlisten = [\"127.0.0.1:0\"]\n\n[maildir]\npath = \"{}\"\n\n", dir.join("mail").display());
    std::fs::write(&path, server + text).unwrap();
    path
}

/// `serve` on `path`; it must exit by itself (it is expected to refuse to start).
fn serve_refused(path: &Path) -> (Option<i32>, String) {
    let (status, output) = run_tool(sluice_bin(), &["serve", "-d", "--config", path.to_str().unwrap()], None);
    assert!(!output.contains("listening"), "nothing may listen before the config is valid:\n{output}");
    (status.code(), output)
}

#[test]
fn a_filter_refusing_its_configuration_is_reported_at_the_key_by_check_config_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &(wasm_stage("eicar", "eicar", "", "") + &wasm_stage("rules", "header_rules", "", BAD_RULES)),
    );
    let expected = format!(
        "{}:{}: stage \"rules\": [stage.config] rules: {BAD_PATTERN}",
        config.display(),
        line_of(&config, "rules =")
    );
    let (code, output) = check_config(&config);
    assert_eq!(code, Some(1), "{output}");
    assert_eq!(output.trim_end(), format!("sluice: {expected}"));
    let (code, output) = serve_refused(&config);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains(&expected), "want {expected:?} in:\n{output}");

    // Every stock filter refuses through the same path, naming its key.
    let cases = [
        (
            wasm_stage("footer", "footer", "", "separator = \"==\""),
            "stage \"footer\": [stage.config] text: is required",
        ),
        (wasm_stage("rules", "header_rules", "", ""), "stage \"rules\": [stage.config] rules: is required"),
        (
            wasm_stage("faults", "faults", "", "mode = \"explode\""),
            "stage \"faults\": [stage.config] mode: \"explode\" is not one of pass, verdict,",
        ),
        (
            wasm_stage("faults", "faults", "", "mode = \"header\"\ncount = \"many\""),
            "stage \"faults\": [stage.config] count: must be a whole number, 0 or more, not \"many\"",
        ),
    ];
    for (stage, message) in cases {
        let config = write_config(dir.path(), &stage);
        let (code, output) = check_config(&config);
        assert_eq!(code, Some(1), "{output}");
        assert!(
            output.contains(&format!("{}:", config.display())) && output.contains(message),
            "want {message:?} in:\n{output}"
        );
    }
}

/// The load-time check runs guest code, so it is bounded like every call: a filter that spins
/// or traps while checking its configuration fails the load with its cause, it does not hang it.
#[test]
fn a_filter_spinning_or_trapping_while_checking_its_configuration_fails_the_load() {
    let dir = tempfile::tempdir().unwrap();
    for (mode, cause) in [("loop", "exceeded its CPU limit (100 ms per call)"), ("trap", "trapped")] {
        let stage =
            wasm_stage("faulty", "faults", "cpu_limit = \"100ms\"", &format!("mode = \"{mode}\"\nat = \"new\""));
        let config = write_config(dir.path(), &stage);
        let (code, output) = check_config(&config);
        assert_eq!(code, Some(1), "{output}");
        assert!(output.contains("stage \"faulty\"") && output.contains(cause), "{mode}: want {cause:?} in:\n{output}");
    }
}

#[test]
fn unknown_filter_keys_are_warned_about_and_a_valid_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let rules = "rules = \"header Subject /x/ tag-subject [x]\"\nrulez = \"typo\"";
    let config = write_config(dir.path(), &wasm_stage("rules", "header_rules", "", rules));
    let (code, output) = check_config(&config);
    assert_eq!(code, Some(0), "{output}");
    let warning = format!(
        "warning: {}:{}: stage \"rules\": [stage.config] rulez: unknown key, not used by the filter",
        config.display(),
        line_of(&config, "rulez")
    );
    assert!(output.contains(&warning), "want {warning:?} in:\n{output}");
    assert!(output.contains(&format!("{}: ok", config.display())), "{output}");
    // serve logs the same warning, and serves.
    let gateway = Gateway::builder().section(&wasm_stage("rules", "header_rules", "", rules)).start();
    let logged = gateway.wait_for_log("rulez: unknown key, not used by the filter");
    assert!(logged.contains("stage \"rules\": [stage.config] rulez"), "{logged}");
}

#[test]
fn files_and_directories_are_checked_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    // A missing token file: found before anything listens, not after.
    let missing = dir.path().join("token");
    let config = write_config(dir.path(), "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"token\"\n");
    let expected = format!(
        "{}:{}: admin.token_file: {} does not exist",
        config.display(),
        line_of(&config, "token_file"),
        missing.display()
    );
    for (code, output) in [check_config(&config), serve_refused(&config)] {
        assert_eq!(code, Some(1), "{output}");
        assert!(output.contains(&expected), "want {expected:?} in:\n{output}");
    }
    // A spool directory that cannot take files (/proc refuses even root).
    let config = write_config(dir.path(), "[spool]\ndirectory = \"/proc\"\n");
    for (code, output) in [check_config(&config), serve_refused(&config)] {
        assert_eq!(code, Some(1), "{output}");
        assert!(
            output.contains(":2: spool.directory: /proc is not writable")
                || output.contains("spool.directory: /proc is not writable"),
            "{output}"
        );
    }
    // A relative filter path is shown resolved, without the build hint of the embedded default.
    let config =
        write_config(dir.path(), "[[stage]]\nname = \"mine\"\nkind = \"wasm\"\npath = \"filters/mine.wasm\"\n");
    let (code, output) = check_config(&config);
    assert_eq!(code, Some(1), "{output}");
    let expected = format!(
        "{}:{}: stage \"mine\": path: {} does not exist",
        config.display(),
        line_of(&config, "path = \"filters/"),
        dir.path().join("filters/mine.wasm").display()
    );
    assert_eq!(output.trim_end(), format!("sluice: {expected}"));
}

#[test]
fn the_embedded_default_says_how_to_get_its_filters() {
    // In a directory of its own: were it to start, its maildir would go there.
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_str().unwrap();
    let (status, output) =
        run_tool("env", &["-C", cwd, "SLUICE_FILTER_DIR=/nonexistent/filters", sluice_bin(), "serve", "-d"], None);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(!output.contains("listening"), "{output}");
    assert!(
        output.contains("stage \"eicar\": path: /nonexistent/filters/eicar.wasm does not exist; it is one of the embedded default's filters: build them with `make filters`, or set SLUICE_FILTER_DIR"),
        "{output}"
    );
}

#[test]
fn a_reload_with_a_refused_configuration_keeps_the_running_chain() {
    let good = "rules = \"header Subject /./ tag-subject [checked]\"";
    let gateway = Gateway::builder()
        .section(&wasm_stage("rules", "header_rules", "", good))
        .section("[admin]\nlisten = \"127.0.0.1:0\"")
        .start();
    let config = gateway.dir.path().join("sluice.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(good, BAD_RULES)).unwrap();
    support::run_tool("kill", &["-HUP", &gateway.pid().to_string()], None);
    let logged = gateway.wait_for_log(BAD_PATTERN);
    let at = format!("{}:{}: stage \"rules\": [stage.config] rules:", config.display(), line_of(&config, "rules ="));
    assert!(logged.contains(&at), "want {at:?} in {logged}");
    // The admin API's reload answers with the same error.
    let (status, body) = support::http(&gateway.admin_address(), "POST", "/reload", None);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(BAD_PATTERN), "{body}");
    // The old chain still runs (it tags), and nothing answers 451.
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], b"Subject: hi\r\n\r\nbody\r\n");
    assert_eq!(reply.code, 250, "{}", reply.text());
    assert_eq!(gateway.delivered(), vec![b"Subject: [checked] hi\r\n\r\nbody\r\n".to_vec()]);
}

/// A component importing `sluice:filter/host@0.1.0`, as every filter built with the 0.1 SDK does.
fn old_contract_component() -> Vec<u8> {
    use wasm_encoder::{Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType};
    let mut host = InstanceType::new();
    host.ty().function().params(Vec::<(&str, wasm_encoder::ComponentValType)>::new()).result(None);
    host.export("config", ComponentTypeRef::Func(0));
    let mut types = ComponentTypeSection::new();
    types.instance(&host);
    let mut imports = ComponentImportSection::new();
    imports.import("sluice:filter/host@0.1.0", ComponentTypeRef::Instance(0));
    let mut component = Component::new();
    component.section(&types).section(&imports);
    component.finish()
}

#[test]
fn a_filter_of_an_older_contract_is_told_to_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.wasm");
    std::fs::write(&old, old_contract_component()).unwrap();
    let config = write_config(dir.path(), "[[stage]]\nname = \"old\"\nkind = \"wasm\"\npath = \"old.wasm\"\n");
    let (code, output) = check_config(&config);
    assert_eq!(code, Some(1), "{output}");
    let expected = format!(
        "sluice: {}:{}: stage \"old\": path: {} was built against sluice:filter@0.1.0, but this Sluice needs sluice:filter@0.2.2: rebuild it against the current SDK (sluice-filter-sdk 0.2)",
        config.display(),
        line_of(&config, "path = \"old"),
        old.display()
    );
    assert_eq!(output.trim_end(), expected);
}

fn filter_test(filter: &str, eml: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["filter-test", filter, "--eml", eml.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (status, output) = run_tool(sluice_bin(), &args, None);
    (status.code(), output)
}

#[test]
fn filter_test_takes_lf_messages_and_checks_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let eml = dir.path().join("lf.eml");
    std::fs::write(&eml, "Subject: hello\nFrom: <a@client.test>\n\nfirst line\nsecond line\n").unwrap();
    let out = dir.path().join("out.eml");
    let footer = filter_wasm("footer");
    let (code, output) = filter_test(&footer, &eml, &["--config", "text=Scanned", "--output", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        String::from_utf8(std::fs::read(&out).unwrap()).unwrap(),
        "Subject: hello\r\nFrom: <a@client.test>\r\n\r\nfirst line\r\nsecond line\r\n-- \r\nScanned\r\n"
    );
    // A key the filter does not know is warned about.
    let (code, output) = filter_test(&footer, &eml, &["--config", "text=x", "--config", "txet=y"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("warning: --config txet: unknown key, not used by the filter"), "{output}");
    // A missing required key is a configuration error: one line, exit 2, no trap.
    let (code, output) = filter_test(&footer, &eml, &[]);
    assert_eq!(code, Some(2), "{output}");
    assert_eq!(output.trim_end(), "sluice: --config text: is required");
    let (code, output) =
        filter_test(&filter_wasm("header_rules"), &eml, &["--config", "rules=header Subject /(/ reject 550 5.7.1 x"]);
    assert_eq!(code, Some(2), "{output}");
    assert_eq!(output.trim_end(), format!("sluice: --config rules: {BAD_PATTERN}"));
}

#[test]
fn filter_test_explains_files_that_are_not_filters_and_its_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let eml = dir.path().join("m.eml");
    std::fs::write(&eml, "Subject: s\r\n\r\nx\r\n").unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "just some text\n").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    for (file, what) in [(&text, "it is not a wasm file at all"), (&core, "it is a core wasm module")] {
        let (code, output) = filter_test(file.to_str().unwrap(), &eml, &[]);
        assert_eq!(code, Some(2), "{output}");
        let expected = format!(
            "sluice: {} is not a WebAssembly component ({what}): build the filter for the wasm32-wasip2 target, which makes one",
            file.display()
        );
        assert_eq!(output.trim_end(), expected);
    }
    // A component, but not a filter.
    let other = dir.path().join("other.wasm");
    std::fs::write(&other, wasm_encoder::Component::new().finish()).unwrap();
    let (code, output) = filter_test(other.to_str().unwrap(), &eml, &[]);
    assert_eq!(code, Some(2), "{output}");
    let expected = format!(
        "sluice: {} is not a usable sluice:filter@0.2.2 filter: it does not export sluice:filter/handler: is it a Sluice filter?",
        other.display()
    );
    assert_eq!(output.trim_end(), expected);
    let (status, help) = run_tool(sluice_bin(), &["filter-test", "--help"], None);
    assert!(status.success(), "{help}");
    for code in ["0 the message would be delivered", "1 it would be refused", "2 the run could not be made"] {
        assert!(help.contains(code), "{code:?} missing from:\n{help}");
    }
}
