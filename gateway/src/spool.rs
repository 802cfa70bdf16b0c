//! Holds one message's content between receipt and delivery: the header section in memory (it is
//! bounded and changed by stages after the body passed), the body in memory up to a bound and in
//! an anonymous temporary file beyond it, so a session's memory never grows with the message size.
//! All spools share one memory budget (`SpoolBudget`): beyond it a message spills to its file even
//! below its own bound, so the memory spools hold is bounded however many sessions are receiving.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Read-back granularity when the content is in a file.
const READ_CHUNK: usize = 64 * 1024;

/// The first in-memory block; each next one doubles, up to `MAX_BLOCK`. Growing by new blocks
/// rather than by reallocating one buffer copies nothing and never holds two copies at once
/// (a doubling `Vec` briefly holds 1.5× its content, and leaves the allocator ever larger holes).
const FIRST_BLOCK: usize = 4 * 1024;
const MAX_BLOCK: usize = 64 * 1024;

/// Bytes of memory all spools together may hold; shared by every session of the gateway.
#[derive(Clone, Debug)]
pub struct SpoolBudget(Arc<Budget>);

#[derive(Debug)]
struct Budget {
    /// Set again by each reload; lowered, new content spills to files until enough is released.
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl SpoolBudget {
    pub fn new(limit: usize) -> SpoolBudget {
        SpoolBudget(Arc::new(Budget { limit: AtomicUsize::new(limit), used: AtomicUsize::new(0) }))
    }

    /// A reload's new limit; spools holding more than it keep what they hold.
    pub fn set_limit(&self, limit: usize) {
        self.0.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes reserved by spools now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget if they fit.
    fn reserve(&self, bytes: usize) -> bool {
        let limit = self.0.limit.load(Ordering::Relaxed);
        let fits = |used: usize| used.checked_add(bytes).filter(|&total| total <= limit);
        self.0.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).is_ok()
    }

    fn release(&self, bytes: usize) {
        self.0.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

pub struct Spool {
    head: Vec<u8>,
    /// The body while in memory, in blocks filled in order (see `FIRST_BLOCK`).
    blocks: Vec<Vec<u8>>,
    /// Capacity of `blocks`, all of it reserved from `budget`.
    reserved: usize,
    file: Option<File>,
    memory_limit: usize,
    budget: SpoolBudget,
    directory: Option<PathBuf>,
    len: u64,
}

impl Spool {
    pub fn new(memory_limit: usize, budget: SpoolBudget, directory: Option<PathBuf>) -> Spool {
        Spool { head: Vec::new(), blocks: Vec::new(), reserved: 0, file: None, memory_limit, budget, directory, len: 0 }
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
        if self.file.is_none() && !self.make_room(chunk.len()) {
            self.spill().await?;
        }
        match &mut self.file {
            Some(file) => file.write_all(chunk).await?,
            None => self.append(chunk),
        }
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Adds blocks until `bytes` more fit in memory, within the message's bound and the budget.
    fn make_room(&mut self, bytes: usize) -> bool {
        let mut spare: usize = self.blocks.iter().map(|b| b.capacity() - b.len()).sum();
        while spare < bytes {
            let size = (FIRST_BLOCK << self.blocks.len().min(4)).min(MAX_BLOCK).min(self.memory_limit - self.reserved);
            if size == 0 || !self.budget.reserve(size) {
                return false;
            }
            self.blocks.push(Vec::with_capacity(size));
            self.reserved += size;
            spare += size;
        }
        true
    }

    /// Copies `chunk` into the blocks' room (made by `make_room`).
    fn append(&mut self, mut chunk: &[u8]) {
        for block in self.blocks.iter_mut().skip_while(|b| b.len() == b.capacity()) {
            let n = chunk.len().min(block.capacity() - block.len());
            block.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if chunk.is_empty() {
                return;
            }
        }
    }

    /// Moves the body to a new temporary file and gives its memory back.
    async fn spill(&mut self) -> io::Result<()> {
        let std_file = match &self.directory {
            Some(dir) => tempfile::tempfile_in(dir)?,
            None => tempfile::tempfile()?,
        };
        let mut file = File::from_std(std_file);
        for block in &self.blocks {
            file.write_all(block).await?;
        }
        self.free_memory();
        self.file = Some(file);
        Ok(())
    }

    fn free_memory(&mut self) {
        self.blocks = Vec::new();
        self.budget.release(std::mem::take(&mut self.reserved));
    }

    /// Forgets the content (the file, if any, is deleted by dropping it).
    pub fn clear(&mut self) {
        self.head = Vec::new();
        self.free_memory();
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
            None => Body::Memory(self.blocks.iter()),
        };
        Ok(SpoolReader { head: Some(&self.head), body })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.free_memory();
    }
}

pub struct SpoolReader<'a> {
    head: Option<&'a [u8]>,
    body: Body<'a>,
}

enum Body<'a> {
    Memory(std::slice::Iter<'a, Vec<u8>>),
    File { file: &'a mut File, buf: Vec<u8> },
}

impl SpoolReader<'_> {
    /// The next piece of content; None at the end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        if let Some(head) = self.head.take().filter(|h| !h.is_empty()) {
            return Ok(Some(head));
        }
        match &mut self.body {
            Body::Memory(blocks) => Ok(blocks.find(|b| !b.is_empty()).map(Vec::as_slice)),
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

    fn budget() -> SpoolBudget {
        SpoolBudget::new(usize::MAX)
    }

    #[tokio::test]
    async fn stays_in_memory_below_the_limit() {
        let mut spool = Spool::new(100, budget(), None);
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
        let mut spool = Spool::new(10, budget(), Some(dir.path().to_path_buf()));
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

    #[tokio::test]
    async fn memory_grows_in_blocks_up_to_the_limit_then_spills_intact() {
        let shared = budget();
        let mut spool = Spool::new(300_000, shared.clone(), None);
        let data: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
        let (kept, rest) = data.split_at(290_000);
        for piece in kept.chunks(10_000) {
            spool.write(piece).await.unwrap();
        }
        assert!(!spool.is_spilled());
        assert!(shared.used() >= kept.len() && shared.used() <= 300_000, "reserved {}", shared.used());
        assert_eq!(read_all(&mut spool).await, kept);
        for piece in rest.chunks(10_000) {
            spool.write(piece).await.unwrap();
        }
        assert!(spool.is_spilled());
        assert_eq!(shared.used(), 0, "spilled memory is given back");
        assert_eq!(read_all(&mut spool).await, data);
    }

    #[tokio::test]
    async fn the_shared_budget_bounds_memory_across_spools_and_comes_back() {
        let shared = SpoolBudget::new(200_000);
        let (mut first, mut second) =
            (Spool::new(1 << 20, shared.clone(), None), Spool::new(1 << 20, shared.clone(), None));
        first.write(&[b'a'; 90_000]).await.unwrap();
        assert!(!first.is_spilled() && shared.used() <= 200_000);
        second.write(&[b'b'; 80_000]).await.unwrap();
        assert!(second.is_spilled(), "over the shared budget: to a file, though below its own limit");
        assert_eq!(read_all(&mut second).await, vec![b'b'; 80_000]);
        drop(first);
        assert_eq!(shared.used(), 0, "a dropped spool gives its memory back");
        let mut third = Spool::new(1 << 20, shared.clone(), None);
        third.write(&[b'c'; 30_000]).await.unwrap();
        assert!(!third.is_spilled());
    }
}
