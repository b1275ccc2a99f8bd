//! Header rules shared by the two HTTP proxies on the way to a capsule's port: the
//! control plane's capsule proxy and the host agent's `/proxy/{id}/{port}`. Both drop
//! hop-by-hop headers and pass protocol upgrades (WebSockets) through.

use tonic::codegen::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `headers` ask for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Drops hop-by-hop headers and those `Connection` names; with `keep_upgrade`, puts
/// `Connection: upgrade` and the `Upgrade` header back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().to_ascii_lowercase().as_bytes()).ok())
        .filter(|n| n != header::UPGRADE)
        .collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if keep_upgrade && let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get(header::TRANSFER_ENCODING).is_none());
        assert!(h.get(header::CONNECTION).is_none() && h.get("x-keep").is_some());
    }

    #[test]
    fn upgrades_stay_when_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, x-secret"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(h.get("x-secret").is_none());
        strip_hop_by_hop(&mut h, false);
        assert!(h.get(header::UPGRADE).is_none() && h.get(header::CONNECTION).is_none());
    }
}
