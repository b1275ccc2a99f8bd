//! `Location` rewriting under the proxy prefix (the hop-by-hop rules are
//! [`wrenn_proto::http_proxy`]'s, shared with the control plane's proxy).

use http::header::{self, HeaderMap, HeaderValue};

/// Rewrites a root-relative or upstream-absolute `Location` under the proxy prefix.
pub fn rewrite_location(headers: &mut HeaderMap, prefix: &str, authority: &str) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let upstream = format!("http://{authority}");
    let new = if let Some(rest) = loc.strip_prefix(&upstream) {
        Some(format!(
            "{prefix}{}",
            if rest.is_empty() { "/" } else { rest }
        ))
    } else if loc.starts_with('/') && !loc.starts_with("//") {
        Some(format!("{prefix}{loc}"))
    } else {
        None
    };
    if let Some(v) = new.and_then(|n| HeaderValue::from_str(&n).ok()) {
        headers.insert(header::LOCATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, HeaderValue::from_static("/login?x=1"));
        rewrite_location(&mut h, "/proxy/cl-a/80", "127.0.0.1:80");
        assert_eq!(h[header::LOCATION], "/proxy/cl-a/80/login?x=1");
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("http://127.0.0.1:80/x"),
        );
        rewrite_location(&mut h, "/proxy/cl-a/80", "127.0.0.1:80");
        assert_eq!(h[header::LOCATION], "/proxy/cl-a/80/x");
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("https://example.com/"),
        );
        rewrite_location(&mut h, "/proxy/cl-a/80", "127.0.0.1:80");
        assert_eq!(h[header::LOCATION], "https://example.com/");
    }
}
