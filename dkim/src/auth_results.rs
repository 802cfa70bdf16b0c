//! The value of an `Authentication-Results` field (RFC 8601) for the `dkim` method, with
//! `header.d`, `header.s`, `header.a` and `header.b` (RFC 6008) per signature.

use crate::signature::{Algorithm, Signature};

/// The result values of the `dkim` method (RFC 8601 §2.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimResult {
    None,
    Pass,
    Fail,
    Policy,
    Neutral,
    TempError,
    PermError,
}

impl DkimResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimResult::None => "none",
            DkimResult::Pass => "pass",
            DkimResult::Fail => "fail",
            DkimResult::Policy => "policy",
            DkimResult::Neutral => "neutral",
            DkimResult::TempError => "temperror",
            DkimResult::PermError => "permerror",
        }
    }
}

/// One `dkim=` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultInfo {
    pub result: DkimResult,
    pub reason: Option<String>,
    pub domain: Option<String>,
    pub selector: Option<String>,
    pub algorithm: Option<Algorithm>,
    /// The first characters of `b=`, telling several signatures of one domain apart.
    pub b_prefix: Option<String>,
}

/// RFC 6008 suggests 8 characters of `b=` for `header.b`.
const B_PREFIX_LEN: usize = 8;

impl ResultInfo {
    /// A result for a parsed signature, naming its domain, selector, algorithm and `b=`.
    pub fn for_signature(signature: &Signature, result: DkimResult, reason: Option<String>) -> ResultInfo {
        ResultInfo {
            result,
            reason,
            domain: Some(signature.domain.clone()),
            selector: Some(signature.selector.clone()),
            algorithm: Some(signature.algorithm),
            b_prefix: Some(signature.b_prefix(B_PREFIX_LEN)),
        }
    }

    /// A result with no signature to name (e.g. permerror for a field that does not parse).
    pub fn bare(result: DkimResult, reason: Option<String>) -> ResultInfo {
        ResultInfo { result, reason, domain: None, selector: None, algorithm: None, b_prefix: None }
    }
}

/// `<authserv-id>; dkim=… …; dkim=… …`, or `<authserv-id>; none` without results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticationResults {
    pub authserv_id: String,
    pub results: Vec<ResultInfo>,
}

impl std::fmt::Display for AuthenticationResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.authserv_id)?;
        if self.results.is_empty() {
            return f.write_str("; none");
        }
        for info in &self.results {
            write!(f, "; dkim={}", info.result.as_str())?;
            if let Some(reason) = &info.reason {
                write!(f, " reason={}", value(reason))?;
            }
            let properties = [
                ("header.d", info.domain.as_deref()),
                ("header.s", info.selector.as_deref()),
                ("header.a", info.algorithm.map(Algorithm::as_str)),
                ("header.b", info.b_prefix.as_deref()),
            ];
            for (property, text) in properties {
                if let Some(text) = text {
                    write!(f, " {property}={}", value(text))?;
                }
            }
        }
        Ok(())
    }
}

/// A token as it is, anything else (spaces, tspecials such as the "/" of base64) quoted.
fn value(text: &str) -> String {
    let token = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b));
    // header.d is a domain-name, which RFC 8601 allows bare (dots are token characters).
    if token {
        text.to_string()
    } else {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_results() {
        let none = AuthenticationResults { authserv_id: "gw.example.org".into(), results: vec![] };
        assert_eq!(none.to_string(), "gw.example.org; none");

        let signature = Signature::parse_field(
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; h=from; bh=AAAA; b=ab/cdEfGhIjk\r\n",
        )
        .unwrap();
        let results = AuthenticationResults {
            authserv_id: "gw.example.org".into(),
            results: vec![
                ResultInfo::for_signature(&signature, DkimResult::Pass, None),
                ResultInfo::for_signature(&signature, DkimResult::Fail, Some("body hash mismatch".into())),
                ResultInfo::bare(DkimResult::PermError, Some("h= does not include \"From\"".into())),
            ],
        };
        assert_eq!(
            results.to_string(),
            "gw.example.org; dkim=pass header.d=example.com header.s=s1 header.a=rsa-sha256 header.b=\"ab/cdEfG\"; \
             dkim=fail reason=\"body hash mismatch\" header.d=example.com header.s=s1 header.a=rsa-sha256 header.b=\"ab/cdEfG\"; \
             dkim=permerror reason=\"h= does not include \\\"From\\\"\""
        );
    }
}
