//! The dashboard page and its assets, built into the binary: nothing is fetched from elsewhere
//! at run time. `dashboard/README.md` says what each file is and where uPlot comes from. The
//! page holds no data itself (it asks for the token, then reads `/events` with it), so it is
//! served without one, under a Content-Security-Policy that allows no inline script.

/// Scripts, styles and connections from this origin only; nothing inline, nothing framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The file `name` under `/dashboard/` ("" for the page itself).
pub fn asset(name: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match name {
        "" | "index.html" => ("text/html; charset=utf-8", include_bytes!("dashboard/index.html")),
        "app.js" => ("text/javascript; charset=utf-8", include_bytes!("dashboard/app.js")),
        "app.css" => ("text/css; charset=utf-8", include_bytes!("dashboard/app.css")),
        "uPlot.iife.min.js" => ("text/javascript; charset=utf-8", include_bytes!("dashboard/uPlot.iife.min.js")),
        "uPlot.min.css" => ("text/css; charset=utf-8", include_bytes!("dashboard/uPlot.min.css")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        let page = String::from_utf8(asset("").unwrap().body.to_vec()).unwrap();
        for needed in
            ["/dashboard/app.js", "/dashboard/app.css", "/dashboard/uPlot.iife.min.js", "/dashboard/uPlot.min.css"]
        {
            assert!(page.contains(needed), "{needed}");
            let name = needed.trim_start_matches("/dashboard/");
            assert!(asset(name).is_some(), "{name} is served");
        }
        // Nothing from elsewhere, nothing inline (the policy would block it anyway).
        assert!(!page.contains("http://") && !page.contains("https://"), "no external URL");
        assert!(!page.contains("<script>") && !page.contains(" style=\""), "no inline script or style");
        assert!(asset("../mod.rs").is_none() && asset("LICENSE").is_none());
    }
}
