//! Holds one message's content between receipt and delivery: the header section in memory (it is
//! bounded and changed by stages after the body passed), the body in memory up to a bound and in
//! an anonymous temporary file beyond it, so a session's memory never grows with the message size.

use std::io;
use std::path::PathBuf;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Read-back granularity when the content is in a file.
const READ_CHUNK: usize = 64 * 1024;

pub struct Spool {
    head: Vec<u8>,
    memory: Vec<u8>,
    file: Option<File>,
    memory_limit: usize,
    directory: Option<PathBuf>,
    len: u64,
}

impl Spool {
    pub fn new(memory_limit: usize, directory: Option<PathBuf>) -> Spool {
        Spool { head: Vec::new(), memory: Vec::new(), file: None, memory_limit, directory, len: 0 }
    }

    /// Total size: header section and body.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.len
    }

    /// Sets the header section, which is sent before the body.
    pub fn set_head(&mut self, head: Vec<u8>) {
        self.head = head;
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends body bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.memory.len() + chunk.len() > self.memory_limit {
            let std_file = match &self.directory {
                Some(dir) => tempfile::tempfile_in(dir)?,
                None => tempfile::tempfile()?,
            };
            let mut file = File::from_std(std_file);
            file.write_all(&self.memory).await?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(chunk).await?,
            None => self.memory.extend_from_slice(chunk),
        }
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Forgets the content (the file, if any, is deleted by dropping it).
    pub fn clear(&mut self) {
        self.head = Vec::new();
        self.memory = Vec::new();
        self.file = None;
        self.len = 0;
    }

    /// Starts reading the content (header section, then body) from the beginning.
    pub async fn reader(&mut self) -> io::Result<SpoolReader<'_>> {
        let body = match &mut self.file {
            Some(file) => {
                file.flush().await?;
                file.rewind().await?;
                Body::File { file, buf: vec![0; READ_CHUNK] }
            }
            None => Body::Memory(Some(&self.memory)),
        };
        Ok(SpoolReader { head: Some(&self.head), body })
    }
}

pub struct SpoolReader<'a> {
    head: Option<&'a [u8]>,
    body: Body<'a>,
}

enum Body<'a> {
    Memory(Option<&'a [u8]>),
    File { file: &'a mut File, buf: Vec<u8> },
}

impl SpoolReader<'_> {
    /// The next piece of content; None at the end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        if let Some(head) = self.head.take().filter(|h| !h.is_empty()) {
            return Ok(Some(head));
        }
        match &mut self.body {
            Body::Memory(content) => Ok(content.take().filter(|c| !c.is_empty())),
            Body::File { file, buf } => {
                let n = file.read(buf).await?;
                Ok((n > 0).then(|| &buf[..n]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(spool: &mut Spool) -> Vec<u8> {
        let mut reader = spool.reader().await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().await.unwrap() {
            out.extend_from_slice(chunk);
        }
        out
    }

    #[tokio::test]
    async fn stays_in_memory_below_the_limit() {
        let mut spool = Spool::new(100, None);
        spool.write(b"hello ").await.unwrap();
        spool.write(b"world").await.unwrap();
        assert!(!spool.is_spilled());
        assert_eq!(read_all(&mut spool).await, b"hello world");
        spool.set_head(b"Subject: x\r\n\r\n".to_vec());
        assert_eq!(read_all(&mut spool).await, b"Subject: x\r\n\r\nhello world");
        assert_eq!(spool.len(), 25);
    }

    #[tokio::test]
    async fn spills_to_a_file_and_reads_back_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(10, Some(dir.path().to_path_buf()));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(777) {
            spool.write(piece).await.unwrap();
        }
        assert!(spool.is_spilled());
        assert_eq!(spool.len(), data.len() as u64);
        assert_eq!(read_all(&mut spool).await, data);
        assert_eq!(read_all(&mut spool).await, data);
        spool.clear();
        assert!(spool.is_empty() && !spool.is_spilled());
    }
}
