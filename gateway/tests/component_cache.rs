//! The compiled-component cache: the first load of a filter compiles it and writes an entry, the
//! next (a reload, a restart) takes it from the entry; a corrupt or truncated entry is compiled
//! anew and rewritten, never loaded; a cache directory other users can write is refused.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{filter_wasm, http, run_tool, sluice_bin, Gateway};

fn stage_with_cache(cache: &Path) -> String {
    format!(
        "[wasm]\ncache_dir = \"{}\"\n\n[[stage]]\nname = \"rules\"\nkind = \"wasm\"\npath = \"{}\"\n[stage.config]\nrules = \"header Subject /x/ add-header X-Seen yes\"\n",
        cache.display(),
        filter_wasm("header_rules")
    )
}

fn entries(cache: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

#[test]
fn a_filter_is_compiled_once_then_loaded_from_its_entry_and_a_bad_entry_is_rebuilt() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("components");
    let mut gateway =
        Gateway::builder().section(&stage_with_cache(&cache)).section("[admin]\nlisten = \"127.0.0.1:0\"").start();
    gateway.wait_for_log("stage=rules");
    assert!(gateway.log().contains("cache=miss"), "{}", gateway.log());
    assert_eq!(entries(&cache).len(), 1);
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);

    let (status, body) = http(&gateway.admin_address(), "POST", "/reload", None);
    assert_eq!(status, 200, "{body}");
    gateway.wait_for_log("cache=hit");

    // A corrupt entry (one flipped byte) is found out and rewritten; the filter still runs.
    let entry = entries(&cache).remove(0);
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    let (status, body) = http(&gateway.admin_address(), "POST", "/reload", None);
    assert_eq!(status, 200, "{body}");
    gateway.wait_for_log("cache=rebuilt");
    gateway.wait_for_log("the cached compilation was unusable (corrupt (checksum mismatch)): compiled anew");
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], b"Subject: x\r\n\r\nhi\r\n").code, 250);
    support::poll_until(|| gateway.delivered().len() == 1, "delivered");
    assert!(String::from_utf8_lossy(&gateway.delivered()[0]).contains("X-Seen: yes"));
    gateway.terminate();

    // A truncated entry, at the next start.
    let entry = entries(&cache).remove(0);
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() - 100]).unwrap();
    let gateway = Gateway::builder().section(&stage_with_cache(&cache)).start();
    gateway.wait_for_log("cache=rebuilt");
    assert_eq!(entries(&cache).len(), 1);
}

#[test]
fn a_cache_directory_others_can_write_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("shared");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("sluice.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[maildir]\npath = \"{}\"\n\n{}",
        dir.path().join("mail").display(),
        stage_with_cache(&cache)
    );
    std::fs::write(&path, text).unwrap();
    let (status, output) = run_tool(sluice_bin(), &["check-config", path.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!(
            "{}:8: wasm.cache_dir: the component cache {} is writable by other users (777): make it private (chmod 700) or set [wasm] cache = false",
            path.display(),
            cache.display()
        )),
        "{output}"
    );
}
