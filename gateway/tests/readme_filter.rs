//! The README checked as a user reads it. Its "Writing a filter" guide, followed to the letter: its Cargo.toml, src/lib.rs
//! and commands (the blocks marked `<!-- readme-filter: … -->`) are written into a fresh crate
//! beside a `sluice` checkout, as the guide lays it out; its commands are run as written (the
//! native unit test, the wasm build, `sluice filter-test` on `examples/sample.eml`), and the
//! built component is tried once more with a word the sample does not contain.
//!
//! The crate's `target/` is a link to a directory kept under the workspace's target/, so the
//! SDK's dependencies are built once, not on every run; the workspace's Cargo.lock is copied in
//! so the versions are those the workspace is tested with, and cargo works offline. And the
//! files the README names exist.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{run_tool, sluice_bin};

const MARK: &str = "<!-- readme-filter: ";

/// The marked blocks of `readme`: name → text (blocks with the same name are joined).
fn marked_blocks(readme: &str) -> BTreeMap<String, String> {
    let mut blocks: BTreeMap<String, String> = BTreeMap::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix(MARK).and_then(|rest| rest.strip_suffix(" -->")) else { continue };
        let fence = lines.next().unwrap_or_default();
        assert!(fence.starts_with("```"), "the line after {line:?} must open a code block, not {fence:?}");
        let text: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        let block = blocks.entry(name.to_string()).or_default();
        if !block.is_empty() {
            block.push('\n');
        }
        block.push_str(&(text.join("\n") + "\n"));
    }
    blocks
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Where the guide's crate keeps its build between runs.
fn cached_target() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
    target.join("readme-filter")
}

/// Runs one line of the guide's commands in `dir` with the test's `sluice` first on PATH.
fn sh(dir: &Path, line: &str) -> (Option<i32>, String) {
    let bin_dir = Path::new(sluice_bin()).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("sh")
        .args(["-c", line])
        .current_dir(dir)
        .env("PATH", path)
        .env("CARGO_NET_OFFLINE", "true")
        // The crate's own target/ (the link) is the one the guide's paths name.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {line:?}: {e}"));
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[test]
fn the_readme_filter_builds_tests_and_runs_from_an_empty_directory() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    let names: Vec<&str> = blocks.keys().map(String::as_str).collect();
    assert_eq!(names, ["Cargo.toml", "commands", "src/lib.rs"], "the README's marked blocks");

    // The layout the guide describes: a checkout named `sluice` beside the filter's directory.
    let root = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(workspace(), root.path().join("sluice")).unwrap();
    let krate = root.path().join("no-word");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(krate.join("Cargo.toml"), &blocks["Cargo.toml"]).unwrap();
    std::fs::write(krate.join("src/lib.rs"), &blocks["src/lib.rs"]).unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    std::fs::create_dir_all(cached_target()).unwrap();
    std::os::unix::fs::symlink(cached_target(), krate.join("target")).unwrap();

    let mut filter_tested = false;
    for line in blocks["commands"].lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (code, output) = sh(&krate, line);
        if line.starts_with("sluice filter-test") {
            // The sample's subject has the configured word: refused (exit 1), by the filter's reply.
            assert_eq!(code, Some(1), "{line}:\n{output}");
            assert!(output.contains("result: reject 550 5.7.1 No lottery here"), "{line}:\n{output}");
            filter_tested = true;
        } else {
            assert_eq!(code, Some(0), "{line}:\n{output}");
            if line.starts_with("cargo test") {
                assert!(output.contains("test tests::refuses_the_word_and_tags_the_rest ... ok"), "{output}");
            }
        }
    }
    assert!(filter_tested, "the guide's commands run sluice filter-test");

    // The same component with a word the sample lacks: delivered, with the filter's header.
    let wasm = krate.join("target/wasm32-wasip2/release/no_word.wasm");
    let sample = workspace().join("examples/sample.eml");
    let args = ["filter-test", wasm.to_str().unwrap(), "--eml", sample.to_str().unwrap(), "--config", "word=casino"];
    let (status, output) = run_tool(sluice_bin(), &args, None);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("+ add header X-No-Word: checked"), "{output}");
    assert!(output.contains("result: delivered"), "{output}");
}

/// The README speaks to users of this repository: the files it names (in links and as
/// `path` in backticks under the repository's top-level directories) exist, and it refers to
/// nothing outside the repository or its issue tracker.
#[test]
fn the_readme_names_only_files_that_exist_in_the_repository() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let tops = ["gateway/", "filter-sdk/", "filters/", "wit/", "examples/", "docs/", "bench/"];
    let quoted = readme.split('`').skip(1).step_by(2);
    let linked = readme.split("](").skip(1).filter_map(|rest| rest.split(')').next());
    let named: Vec<&str> = quoted.chain(linked).filter(|p| tops.iter().any(|top| p.starts_with(top))).collect();
    assert!(named.contains(&"docs/architecture.md"), "the README links the architecture");
    for path in named {
        assert!(workspace().join(path).exists(), "the README names {path}, which does not exist");
    }
    assert!(!readme.contains("../shared") && !readme.contains("DESIGN.md"), "no files outside the repository");
    let issue_number =
        readme.match_indices("issue ").any(|(at, _)| readme[at + 6..].starts_with(|c: char| c.is_ascii_digit()));
    assert!(!issue_number, "the README says what exists, not which issue brought it");
}

#[test]
fn marked_blocks_are_found_and_joined() {
    let text = "intro\n<!-- readme-filter: a -->\n```toml\nx = 1\n```\nprose\n<!-- readme-filter: a -->\n```\ny\n```\n";
    assert_eq!(marked_blocks(text), BTreeMap::from([("a".to_string(), "x = 1\n\ny\n".to_string())]));
}
