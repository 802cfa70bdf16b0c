//! Local delivery into a Maildir (the embedded default when no next hop is configured): each
//! message is written to `tmp/`, synced, then renamed into `new/`, so a reader never sees a
//! partial file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::fs::{self, File};
use tokio::io::AsyncWriteExt;

use crate::spool::Spool;

/// The Maildir spec forbids '/' and ':' in the host part of a file name.
fn file_name_host(hostname: &str) -> String {
    hostname.replace('/', "\\057").replace(':', "\\072")
}

pub struct Maildir {
    root: PathBuf,
    hostname: String,
    sequence: AtomicU64,
}

impl Maildir {
    /// Creates `tmp/`, `new/` and `cur/` under `root` if missing.
    pub fn open(root: &Path, hostname: &str) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Maildir { root: root.to_path_buf(), hostname: file_name_host(hostname), sequence: AtomicU64::new(0) })
    }

    /// Whether this is the maildir `open(root, hostname)` would give.
    pub fn is_at(&self, root: &Path, hostname: &str) -> bool {
        self.root == root && self.hostname == file_name_host(hostname)
    }

    /// Delivers the spooled message, preceded by a Return-Path header; returns the file name.
    pub async fn deliver(&self, mail_from: &str, spool: &mut Spool) -> io::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let name = format!(
            "{}.M{:06}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.sequence.fetch_add(1, Ordering::Relaxed),
            self.hostname
        );
        let tmp = self.root.join("tmp").join(&name);
        let result = self.write(&tmp, mail_from, spool).await;
        if let Err(err) = result {
            let _ = fs::remove_file(&tmp).await;
            return Err(err);
        }
        fs::rename(&tmp, self.root.join("new").join(&name)).await?;
        Ok(name)
    }

    async fn write(&self, path: &Path, mail_from: &str, spool: &mut Spool) -> io::Result<()> {
        let mut file = File::create(path).await?;
        file.write_all(format!("Return-Path: <{mail_from}>\r\n").as_bytes()).await?;
        let mut reader = spool.reader().await?;
        while let Some(chunk) = reader.next_chunk().await? {
            file.write_all(chunk).await?;
        }
        file.sync_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_atomically_into_new() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path(), "gw:test").unwrap();
        let mut spool = Spool::new(1024, crate::spool::SpoolBudget::new(1 << 20), None);
        spool.write(b"Subject: hi\r\n\r\nbody\r\n").await.unwrap();
        let name = maildir.deliver("a@b.c", &mut spool).await.unwrap();
        assert!(name.ends_with("gw\\072test"));
        let content = std::fs::read(dir.path().join("new").join(&name)).unwrap();
        assert_eq!(content, b"Return-Path: <a@b.c>\r\nSubject: hi\r\n\r\nbody\r\n");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let second = maildir.deliver("", &mut spool).await.unwrap();
        assert_ne!(name, second);
    }
}
