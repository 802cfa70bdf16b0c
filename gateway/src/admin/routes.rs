//! The admin API's routing table, pure: (method, path) → route, wrong method, or not found.

use hyper::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    Stats,
    Sessions,
    Session(String),
    Reload,
    Trace(String, bool),
    /// The dashboard page ("") or one of its assets.
    Dashboard(String),
    /// The dashboard's live feed.
    Events,
    Favicon,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Routing {
    Found(Route),
    /// The path exists for these methods only (the `Allow` header).
    WrongMethod(&'static str),
    NotFound,
}

pub fn route(method: &Method, path: &str) -> Routing {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (route, allowed) = match segments.as_slice() {
        [] | ["dashboard"] => (Route::Dashboard(String::new()), "GET"),
        // What a browser asks for beside the page; answered with no content, not an error.
        ["favicon.ico"] => (Route::Favicon, "GET"),
        ["dashboard", asset] => (Route::Dashboard(asset.to_string()), "GET"),
        ["events"] => (Route::Events, "GET"),
        ["healthz"] => (Route::Healthz, "GET"),
        ["readyz"] => (Route::Readyz, "GET"),
        ["metrics"] => (Route::Metrics, "GET"),
        ["stats"] => (Route::Stats, "GET"),
        ["sessions"] => (Route::Sessions, "GET"),
        ["sessions", id] if !id.is_empty() => (Route::Session(id.to_string()), "GET"),
        ["reload"] => (Route::Reload, "POST"),
        ["trace", subsystem, "on"] => (Route::Trace(subsystem.to_string(), true), "POST"),
        ["trace", subsystem, "off"] => (Route::Trace(subsystem.to_string(), false), "POST"),
        _ => return Routing::NotFound,
    };
    match method.as_str() == allowed || (allowed == "GET" && method == Method::HEAD) {
        true => Routing::Found(route),
        false => Routing::WrongMethod(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(route(&Method::GET, "/metrics"), Routing::Found(Route::Metrics));
        assert_eq!(route(&Method::GET, "/sessions/0000000a"), Routing::Found(Route::Session("0000000a".into())));
        assert_eq!(route(&Method::POST, "/trace/flow/on"), Routing::Found(Route::Trace("flow".into(), true)));
        assert_eq!(route(&Method::POST, "/stats"), Routing::WrongMethod("GET"));
        assert_eq!(route(&Method::GET, "/reload"), Routing::WrongMethod("POST"));
        assert_eq!(route(&Method::GET, "/nope"), Routing::NotFound);
        assert_eq!(route(&Method::GET, "/trace/flow/maybe"), Routing::NotFound);
        assert_eq!(route(&Method::GET, "/"), Routing::Found(Route::Dashboard(String::new())));
        assert_eq!(route(&Method::GET, "/dashboard/"), Routing::Found(Route::Dashboard(String::new())));
        assert_eq!(route(&Method::GET, "/dashboard/app.js"), Routing::Found(Route::Dashboard("app.js".into())));
        assert_eq!(route(&Method::GET, "/events"), Routing::Found(Route::Events));
        assert_eq!(route(&Method::POST, "/events"), Routing::WrongMethod("GET"));
    }
}
