//! The dashboard's live feed, `GET /events` as Server-Sent Events: a `hello` with the message
//! lines kept so far, then a `tick` every second with the gateway now (stats, sessions, the
//! chain's stages) and the message lines since the last tick. One task builds each tick once for
//! every listener, and only while someone listens; each listener takes ticks from a bounded
//! queue, and one that falls behind is dropped, never waited for (writes to it also have a
//! deadline: `WriteDeadline`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hyper::body::Frame;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::views::{HelloEvent, StageLive, TickEvent};
use crate::context::Context;

/// Ticks a listener may be behind before it is dropped.
const BEHIND: usize = 4;
const EVERY: Duration = Duration::from_secs(1);

pub struct Feed {
    ticks: broadcast::Sender<Bytes>,
    /// The number of the last message line a tick has sent (`MessageBook`). Held across a tick's
    /// taking of new lines and its sending, and across a listener's subscribing and its hello,
    /// so a line goes to each listener once: in its hello or in a tick, never both.
    sent_upto: Mutex<u64>,
}

impl Feed {
    /// The feed, and its task building ticks (ended when the feed is dropped).
    pub fn start(context: Arc<Context>) -> Arc<Feed> {
        let (ticks, _) = broadcast::channel(BEHIND);
        let feed = Arc::new(Feed { ticks, sent_upto: Mutex::new(0) });
        let weak = Arc::downgrade(&feed);
        tokio::spawn(async move {
            let mut clock = tokio::time::interval(EVERY);
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                clock.tick().await;
                let Some(feed) = weak.upgrade() else { return };
                feed.tick(&context);
            }
        });
        feed
    }

    fn tick(&self, context: &Context) {
        let mut sent_upto = self.sent_upto.lock().unwrap_or_else(|p| p.into_inner());
        let (messages, upto) = context.messages.since(*sent_upto);
        *sent_upto = upto;
        if self.ticks.receiver_count() == 0 {
            return;
        }
        let event = snapshot(context, messages);
        // Nobody left to send to is no failure.
        let _ = self.ticks.send(frame("tick", &event));
    }

    /// A listener's stream: the hello, then every tick until it falls behind.
    pub fn listen(&self, context: &Context) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + use<> {
        let (receiver, hello) = {
            let sent_upto = self.sent_upto.lock().unwrap_or_else(|p| p.into_inner());
            (self.ticks.subscribe(), HelloEvent { messages: context.messages.upto(*sent_upto) })
        };
        Self::stream(hello, receiver)
    }

    fn stream(
        hello: HelloEvent,
        receiver: broadcast::Receiver<Bytes>,
    ) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
        let first = futures_util::stream::once(std::future::ready(frame("hello", &hello)));
        let ticks = futures_util::stream::unfold(receiver, |mut receiver| async move {
            match receiver.recv().await {
                Ok(tick) => Some((tick, receiver)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(target: "sluice::admin", missed, "dashboard client fell behind; dropped");
                    None
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        info!(target: "sluice::admin", "dashboard client listening");
        first.chain(ticks).map(|bytes| Ok(Frame::data(bytes)))
    }
}

/// One SSE frame: `event: NAME`, the JSON on one `data:` line, a blank line.
fn frame(name: &str, event: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(event).unwrap_or_else(|err| format!("{{\"error\":\"cannot encode: {err}\"}}"));
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// The gateway now, as the dashboard shows it.
fn snapshot(context: &Context, messages: Vec<super::views::MessageView>) -> TickEvent {
    let sessions = context.sessions.list();
    let mut queued: HashMap<&str, u64> = HashMap::new();
    for queue in sessions.iter().flat_map(|session| &session.queued) {
        *queued.entry(queue.stage.as_str()).or_default() += queue.bytes;
    }
    let settings = context.settings();
    let generation = settings.generation;
    let stages = settings
        .chain
        .stages()
        .map(|spec| {
            let (verdicts, failures) = context.metrics.stage_outcomes(&spec.name);
            let quantiles = spec.meters.recent_quantiles();
            StageLive {
                name: spec.name.clone(),
                kind: spec.kind,
                generation,
                calls: context.metrics.stage_totals(&spec.name).0,
                p50_ms: quantiles.map(|q| q.0),
                p99_ms: quantiles.map(|q| q.1),
                verdicts,
                failures,
                queued_bytes: queued.get(spec.name.as_str()).copied().unwrap_or(0),
            }
        })
        .collect();
    let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
    TickEvent { at_ms, stats: super::stats_of(context, &settings), sessions, stages, messages }
}

/// A connection whose writes must make progress within `limit`: a client that stops reading is
/// cut off when its socket buffer is full, whatever else happens.
pub struct WriteDeadline<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub fn new(inner: T, limit: Duration) -> WriteDeadline<T> {
        WriteDeadline { inner, limit, stalled: None }
    }

    /// A write's outcome: pending starts (or checks) the deadline, anything else ends it.
    fn progress<R>(&mut self, cx: &mut TaskContext<'_>, outcome: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if outcome.is_ready() {
            self.stalled = None;
            return outcome;
        }
        let limit = self.limit;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the admin client read nothing for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, outcome)
    }

    /// Forwarded, so hyper writes a tick from its own buffer rather than copying it first.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, outcome)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn frames_are_one_event_each() {
        let text = frame("tick", &serde_json::json!({"a": "line\nbreak"}));
        assert_eq!(&text[..], b"event: tick\ndata: {\"a\":\"line\\nbreak\"}\n\n");
    }

    #[tokio::test]
    async fn a_listener_that_falls_behind_is_dropped() {
        let (ticks, receiver) = broadcast::channel(BEHIND);
        let mut stream = Box::pin(Feed::stream(HelloEvent { messages: Vec::new() }, receiver));
        let data = |frame: Option<Result<Frame<Bytes>, Infallible>>| frame.unwrap().unwrap().into_data().unwrap();
        assert!(data(stream.next().await).starts_with(
            b"event: hello
"
        ));
        ticks.send(Bytes::from_static(b"one")).unwrap();
        assert_eq!(&data(stream.next().await)[..], b"one");
        // More ticks than it may be behind, while it takes none: it is dropped, not waited for.
        for n in 0..=BEHIND {
            ticks.send(Bytes::from(format!("tick {n}"))).unwrap();
        }
        assert!(stream.next().await.is_none());
    }

    /// Through hyper, as a dashboard client meets it: a listener that stops reading while ticks
    /// keep coming is cut off, and the ticks never wait for it.
    #[tokio::test]
    async fn a_listener_that_stops_reading_is_cut_off() {
        use http_body_util::{BodyExt, StreamBody};
        use hyper_util::rt::TokioIo;
        let (server, client) = tokio::io::duplex(4096);
        let (_unread, mut requests) = tokio::io::split(client);
        requests.write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let (ticks, receiver) = broadcast::channel(BEHIND);
        let receiver = Mutex::new(Some(receiver));
        let service = hyper::service::service_fn(move |_request| {
            let receiver = receiver.lock().unwrap().take().expect("one request");
            let body = StreamBody::new(Feed::stream(HelloEvent { messages: Vec::new() }, receiver));
            std::future::ready(Ok::<_, Infallible>(hyper::Response::new(body.boxed_unsync())))
        });
        let io = TokioIo::new(WriteDeadline::new(server, Duration::from_millis(200)));
        let connection = tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        let started = std::time::Instant::now();
        while !connection.is_finished() {
            assert!(started.elapsed() < Duration::from_secs(20), "the connection is still open");
            // A send never waits for a listener, however far behind.
            let _ = ticks.send(Bytes::from(vec![b'x'; 16 * 1024]));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(connection.await.unwrap().is_err(), "cut off, not ended as if all was sent");
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_times_out() {
        // A duplex pipe with a 16-byte buffer nobody reads from.
        let (writer, _reader) = tokio::io::duplex(16);
        let mut limited = WriteDeadline::new(writer, Duration::from_millis(50));
        let err = limited.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}
