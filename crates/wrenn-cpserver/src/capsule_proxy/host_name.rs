//! Which capsule port a `Host` names: `{port}-{capsule_id}.{domain}[:listen port]`.

use wrenn_core::id::SandboxId;

/// A capsule port named by a `Host` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapsulePort {
    /// The port inside the capsule.
    pub port: u16,
    /// The capsule.
    pub id: SandboxId,
}

/// What a `Host` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    /// Not a capsule URL: the API serves it.
    Api,
    /// A port of a capsule.
    Capsule(CapsulePort),
    /// Shaped like a capsule URL, but its port or id is malformed (400).
    Malformed(String),
}

/// Routes `host` (a `Host` header or `:authority`, any port stripped). With `domain`
/// (`WRENN_PROXY_DOMAIN`, its port ignored) only names directly under it are capsule
/// URLs; without, any name whose first label is `{digits}-cl-{…}` is, as in the
/// original control plane.
pub(crate) fn route(host: &str, domain: Option<&str>) -> Routed {
    // An IPv6 literal is never a capsule URL.
    if host.starts_with('[') {
        return Routed::Api;
    }
    let name = host.split_once(':').map_or(host, |(name, _)| name);
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some((label, parent)) = name.split_once('.') else {
        return Routed::Api;
    };
    let Some((port, id)) = label.split_once('-') else {
        return Routed::Api;
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || !id.starts_with("cl-") {
        return Routed::Api;
    }
    if let Some(domain) = domain {
        let domain = domain.split_once(':').map_or(domain, |(name, _)| name);
        if parent != domain {
            return Routed::Api;
        }
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Routed::Malformed(format!("invalid port {port}: expected 1 to 65535")),
    };
    match id.parse::<SandboxId>() {
        Ok(id) => Routed::Capsule(CapsulePort { port, id }),
        Err(_) => Routed::Malformed(format!("invalid capsule id {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capsule(host: &str, domain: Option<&str>) -> CapsulePort {
        match route(host, domain) {
            Routed::Capsule(c) => c,
            other => panic!("{host}: {other:?}"),
        }
    }

    #[test]
    fn a_capsule_url_names_its_port_and_capsule() {
        let id = SandboxId::new();
        let c = capsule(&format!("8000-{id}.localhost:8080"), None);
        assert_eq!((c.port, c.id), (8000, id));
        let c = capsule(
            &format!("8888-{id}.Sandbox.Example.com"),
            Some("sandbox.example.com"),
        );
        assert_eq!((c.port, c.id), (8888, id));
        let c = capsule(&format!("1-{id}.localhost"), Some("localhost:9000"));
        assert_eq!(c.port, 1);
    }

    #[test]
    fn other_names_go_to_the_api() {
        let id = SandboxId::new();
        for host in [
            "127.0.0.1:8000",
            "localhost",
            "api.example.com",
            "[::1]:8000",
            "8000.localhost",
            "x8000-cl-abc.localhost",
            "8000-host-abc.localhost",
            &format!("8000-{id}"),
        ] {
            assert_eq!(route(host, None), Routed::Api, "{host}");
        }
        assert_eq!(
            route(
                &format!("8000-{id}.elsewhere.com"),
                Some("sandbox.example.com")
            ),
            Routed::Api
        );
        assert_eq!(
            route(
                &format!("8000-{id}.a.sandbox.example.com"),
                Some("sandbox.example.com")
            ),
            Routed::Api
        );
    }

    #[test]
    fn a_bad_port_or_id_is_malformed() {
        let id = SandboxId::new();
        for host in [
            format!("0-{id}.localhost"),
            format!("65536-{id}.localhost"),
            format!("99999999999999999999-{id}.localhost"),
            "8000-cl-short.localhost".to_owned(),
            "8000-cl-.localhost".to_owned(),
        ] {
            assert!(matches!(route(&host, None), Routed::Malformed(_)), "{host}");
        }
    }
}
