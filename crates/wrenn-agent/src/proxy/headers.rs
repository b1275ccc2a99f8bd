//! Header rules of the proxy: hop-by-hop headers, upgrade detection, and `Location`
//! rewriting under the proxy prefix.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that belong to one connection and are never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes hop-by-hop headers (and those `Connection` names); with `keep_upgrade`,
/// puts `Connection: upgrade` and the `Upgrade` header back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| t != "upgrade")
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let upgrade = headers.get(header::UPGRADE).cloned();
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if keep_upgrade {
        if let Some(u) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u);
        }
    }
}

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

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get(header::TRANSFER_ENCODING).is_none());
        assert!(h.get("x-keep").is_some());
    }
}
