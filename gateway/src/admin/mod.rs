//! The admin HTTP API (hyper, loopback by default): health and readiness, Prometheus metrics,
//! stats, sessions with their flow state, chain reload and run-time trace switches, and the live
//! dashboard (`dashboard`: the page, `events`: its feed). Handlers only read shared state and
//! never hold a lock an SMTP session waits on; reload compiles filters off the async workers.
//! With a token configured every endpoint but the health probes and the page's static files
//! requires `Authorization: Bearer TOKEN`; requests from other web pages are refused (`origin`).
//! Every write to a client has a deadline.

mod dashboard;
mod events;
mod origin;
mod routes;
pub mod views;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::context::Context;
use crate::server::Shutdown;
use events::{Feed, WriteDeadline};
use routes::{route, Route, Routing};
use views::{ByteCounts, ErrorView, FlowCounts, SessionCounts, StageStats, StatsView, TraceView, TransactionCounts};

struct State {
    token: Option<String>,
    /// Whether the API listens on loopback (requests must then name it in `Host`).
    loopback: bool,
    context: Arc<Context>,
    shutdown: Shutdown,
    feed: Arc<Feed>,
}

/// What every handler answers: a whole body, or the feed's stream.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A write to an admin client that makes no progress for this long ends its connection.
const WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct AdminApi {
    listener: TcpListener,
    state: Arc<State>,
}

impl AdminApi {
    pub async fn bind(
        address: SocketAddr,
        token: Option<String>,
        context: Arc<Context>,
        shutdown: Shutdown,
    ) -> anyhow::Result<AdminApi> {
        let listener = TcpListener::bind(address).await.with_context(|| {
            format!(
                "cannot listen on {address} for the admin API: is another sluice running? Stop it, or set \
                     [admin] listen to a free address in the config (the embedded default uses 127.0.0.1:8025: \
                     run with --config FILE to choose another)"
            )
        })?;
        info!(target: "sluice::admin", address = %listener.local_addr()?, "admin API listening");
        let feed = Feed::start(context.clone());
        let loopback = address.ip().is_loopback();
        Ok(AdminApi { listener, state: Arc::new(State { token, loopback, context, shutdown, feed }) })
    }

    pub async fn run(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(target: "sluice::admin", error = %err, "accept failed");
                    continue;
                }
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(state.clone(), request));
                let io = TokioIo::new(WriteDeadline::new(stream, WRITE_LIMIT));
                if let Err(err) = http1::Builder::new().serve_connection(io, service).await {
                    debug!(target: "sluice::admin", %peer, error = %err, "admin connection ended");
                }
            });
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, view: impl Serialize) -> Response<Body> {
    match serde_json::to_string_pretty(&view) {
        Ok(text) => respond(status, "application/json", text + "\n"),
        // Views are plain data; this would be a bug, not a condition to recover from.
        Err(err) => {
            respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("cannot encode the answer: {err}\n"))
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, ErrorView { error: message.to_string() })
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = match route(&method, &path) {
        Routing::Found(route) => route,
        Routing::WrongMethod(allowed) => {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, &format!("{method} is not allowed on {path}"));
            response.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
            return Ok(response);
        }
        Routing::NotFound => return Ok(error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}"))),
    };
    if !matches!(route, Route::Healthz | Route::Readyz) {
        let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        if let Err(refusal) = origin::check(header("host"), header("origin"), state.loopback) {
            warn!(target: "sluice::admin", %path, "{refusal}");
            return Ok(error(StatusCode::FORBIDDEN, &refusal.to_string()));
        }
    }
    match &route {
        Route::Dashboard(name) => return Ok(page(name)),
        Route::Favicon => return Ok(respond(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new())),
        _ => {}
    }
    if !matches!(route, Route::Healthz | Route::Readyz) && !authorized(&state, &request) {
        warn!(target: "sluice::admin", %path, "request with a missing or wrong token");
        return Ok(error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
    }
    debug!(target: "sluice::admin", %method, %path, "request");
    let context = &state.context;
    Ok(match route {
        Route::Healthz => respond(StatusCode::OK, "text/plain", "ok\n"),
        Route::Readyz => match state.shutdown.draining.is_cancelled() {
            false => respond(StatusCode::OK, "text/plain", "ready\n"),
            true => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n"),
        },
        Route::Metrics => {
            let flow = context.flows.report();
            context.metrics.flow_paused_now.set(flow.paused_now as i64);
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                context.metrics.encode(),
            )
        }
        Route::Stats => json(StatusCode::OK, stats(context)),
        Route::Sessions => json(StatusCode::OK, context.sessions.list()),
        Route::Session(id) => match u64::from_str_radix(&id, 16).ok().and_then(|id| context.sessions.get(id)) {
            Some(session) => json(StatusCode::OK, session),
            None => error(StatusCode::NOT_FOUND, &format!("no session {id}")),
        },
        Route::Reload => match context.reload().await {
            Ok(report) => json(StatusCode::OK, &report),
            Err(err) => error(StatusCode::UNPROCESSABLE_ENTITY, &format!("{err:#}")),
        },
        Route::Events => {
            let mut response = Response::new(StreamBody::new(state.feed.listen(context)).boxed_unsync());
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Route::Dashboard(_) | Route::Favicon => unreachable!("served above, without a token"),
        Route::Trace(subsystem, enabled) => match crate::logging::set_trace(&subsystem, enabled) {
            Ok(filter) => json(StatusCode::OK, TraceView { subsystem, enabled, filter }),
            Err(err @ crate::logging::TraceError::Unknown(_)) => error(StatusCode::NOT_FOUND, &err.to_string()),
            Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        },
    })
}

/// The dashboard's page or asset, under its Content-Security-Policy.
fn page(name: &str) -> Response<Body> {
    let Some(asset) = dashboard::asset(name) else {
        return error(StatusCode::NOT_FOUND, &format!("no such dashboard file: {name}"));
    };
    let mut response = respond(StatusCode::OK, asset.content_type, Bytes::from_static(asset.body));
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(dashboard::CONTENT_SECURITY_POLICY));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn authorized(state: &State, request: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else { return true };
    let given =
        request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token is a secret.
    given.is_some_and(|given| {
        given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

fn stats(context: &Context) -> StatsView {
    stats_of(context, &context.settings())
}

/// `/stats` for this settings generation (one read of it, so generation and chain agree).
fn stats_of(context: &Context, settings: &crate::settings::Settings) -> StatsView {
    let metrics = &context.metrics;
    let flow = context.flows.report();
    let stages = settings
        .chain
        .stages()
        .map(|spec| {
            let (calls, failures) = metrics.stage_totals(&spec.name);
            StageStats { name: spec.name.clone(), kind: spec.kind, calls, failures }
        })
        .collect();
    let by = |result| metrics.transactions_by(result);
    StatsView {
        uptime_seconds: context.started.elapsed().as_secs(),
        chain_generation: settings.generation,
        sessions: SessionCounts { current: context.sessions.len() as u64, total: metrics.sessions_total.get() },
        transactions: TransactionCounts {
            accepted: by("accepted"),
            rejected: by("rejected"),
            tempfailed: by("tempfailed"),
            discarded: by("discarded"),
            refused: by("refused"),
        },
        bytes: ByteCounts { received: metrics.bytes_in.get(), sent: metrics.bytes_out.get() },
        flow: FlowCounts { pauses: flow.pauses, resumes: flow.resumes, paused_now: flow.paused_now },
        stages,
    }
}
