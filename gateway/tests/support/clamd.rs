//! A real clamd for tests: its own config and a small signature database written into a temp
//! dir (signatures cannot be downloaded here), listening on a loopback port and a unix socket,
//! started and stopped by PID.
//!
//! Signatures: `Eicar-Test-Signature` (the EICAR string, in any file), `Sluice.Test.Marker`
//! (our own marker string, `MARKER`), and the EICAR file's MD5 for attachments.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
pub const MARKER: &str = "SLUICE-TEST-MARKER-7f3a91";

/// clamd loads a tiny database in about a second; a loaded machine may need much longer.
const START_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Clamd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Clamd {
    /// Starts clamd with `StreamMaxLength` = `stream_max` (e.g. "64M").
    pub fn start(stream_max: &str) -> Clamd {
        let dir = tempfile::Builder::new().prefix("clamd-").tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        std::fs::write(
            db.join("sluice-test.ndb"),
            format!("Eicar-Test-Signature:0:*:{}\nSluice.Test.Marker:0:*:{}\n", hex(EICAR), hex(MARKER.as_bytes())),
        )
        .unwrap();
        std::fs::write(db.join("sluice-test.hdb"), "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-File-MD5\n")
            .unwrap();
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let conf = dir.path().join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nDatabaseDirectory {db}\nLocalSocket {sock}\nTCPSocket {port}\nTCPAddr 127.0.0.1\n\
                 ScanMail yes\nStreamMaxLength {stream_max}\nBytecode no\nLogFile {log}\nLogVerbose yes\n\
                 User root\nMaxThreads 20\nMaxQueue 200\nReadTimeout 60\nCommandReadTimeout 30\n",
                db = db.display(),
                sock = dir.path().join("clamd.sock").display(),
                log = dir.path().join("clamd.log").display(),
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/clamd")
            .args(["-c", conf.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clamd (the test command installs clamav-daemon)");
        let mut clamd = Clamd { port, dir, child: Some(child) };
        clamd.wait_ready();
        clamd
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default()
    }

    /// Waits until clamd answers PING with PONG.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut stream) = TcpStream::connect(self.address()) {
                let mut reply = Vec::new();
                if stream.write_all(b"zPING\0").is_ok()
                    && stream.read_to_end(&mut reply).is_ok()
                    && reply.starts_with(b"PONG")
                {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("clamd exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "clamd did not answer PING:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes clamd (SIGSTOP): connections are accepted by the kernel but nothing is read.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen clamd go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("clamd is running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Stops clamd now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen process must be thawed to die promptly.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.kill();
    }
}
