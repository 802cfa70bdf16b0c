//! Contract versions: a filter built against `sluice:filter@0.2.0` (raw wit-bindgen, the crate in
//! `tests/fixtures/contract-0.2.0`, built here) loads and runs in this 0.2.2 host, because 0.2.1
//! and 0.2.2 only added interfaces. (A 0.1.0 component is refused with a rebuild hint:
//! `tests/config_validation.rs`.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{message, Gateway};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the fixture (its target dir cached under the workspace's target/) and returns the
/// component's path.
fn build_fixture() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
    let cached = target.join("contract-0.2.0");
    let krate = tempfile::tempdir().unwrap();
    let fixture = workspace().join("gateway/tests/fixtures/contract-0.2.0");
    for file in ["Cargo.toml", "src/lib.rs", "wit/filter.wit"] {
        std::fs::create_dir_all(krate.path().join(file).parent().unwrap()).unwrap();
        std::fs::copy(fixture.join(file), krate.path().join(file)).unwrap();
    }
    // The workspace's lock: the same wit-bindgen, already downloaded (offline).
    std::fs::copy(workspace().join("Cargo.lock"), krate.path().join("Cargo.lock")).unwrap();
    let output = Command::new("cargo")
        .args(["build", "--release", "--offline", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&cached)
        .current_dir(krate.path())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo");
    assert!(output.status.success(), "building the 0.2.0 fixture: {}", String::from_utf8_lossy(&output.stderr));
    cached.join("wasm32-wasip2/release/contract_0_2_0.wasm")
}

#[test]
fn a_filter_built_against_0_2_0_runs_in_this_host() {
    let wasm = build_fixture();
    let stage = format!("[[stage]]\nname = \"old\"\nkind = \"wasm\"\npath = \"{}\"\n", wasm.display());
    let gateway = Gateway::builder().section(&stage).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message("old", 1000)).code, 250);
    support::poll_until(|| gateway.delivered().len() == 1, "the message delivered");
    let delivered = String::from_utf8(gateway.delivered().remove(0)).unwrap();
    assert!(delivered.contains("\r\nX-Contract: 0.2.0\r\n"), "{delivered}");
    gateway.wait_for_log("0.2.0 filter saw 4 fields");
}
