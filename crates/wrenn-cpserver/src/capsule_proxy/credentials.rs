//! Who may use a capsule URL: the owning team (its API key or a member's JWT, as on
//! the API), or — for capsules whose team opted in — whoever holds the capsule's access
//! token (public URLs). Whatever credential was used is removed from the request before
//! it reaches the capsule.
//!
//! The access token travels in the `X-Wrenn-Access-Token` header, the
//! `wrenn_access_token` query parameter (for links; the proxy then sets it as an
//! HTTP-only cookie of the capsule URL's host, so a browser's next requests carry it),
//! or that cookie.

use axum::http::request::Parts;
use http::Uri;
use http::header::{self, HeaderMap, HeaderValue};
use wrenn_extension::auth::API_KEY_HEADER;

/// Header carrying a capsule's access token.
pub const ACCESS_TOKEN_HEADER: &str = "x-wrenn-access-token";
/// Query parameter (and cookie) carrying a capsule's access token.
pub const ACCESS_TOKEN_PARAM: &str = "wrenn_access_token";

/// The credential a request presents.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// `X-API-Key` or `Authorization: Bearer`: the team's, checked as on the API.
    Team,
    /// A capsule access token, and whether it came in the query (a link).
    AccessToken {
        /// The token.
        token: String,
        /// It came as the query parameter.
        from_query: bool,
    },
    /// Nothing usable.
    None,
}

/// What `parts` presents: an API key first, then an access token, then a bearer token
/// (an app behind a public URL may use `Authorization` for itself).
pub(crate) fn presented(parts: &Parts) -> Presented {
    let headers = &parts.headers;
    if headers.contains_key(API_KEY_HEADER) {
        return Presented::Team;
    }
    if let Some(token) = headers
        .get(ACCESS_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Presented::AccessToken {
            token: token.trim().to_owned(),
            from_query: false,
        };
    }
    if let Some(token) = query_token(&parts.uri) {
        return Presented::AccessToken {
            token,
            from_query: true,
        };
    }
    if let Some(token) = cookie_token(headers) {
        return Presented::AccessToken {
            token,
            from_query: false,
        };
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return Presented::Team;
    }
    Presented::None
}

/// Removes the team credential the proxy authenticated with: the API key, or the
/// bearer token when there was no API key (it was then the credential).
pub(crate) fn strip_team_credential(headers: &mut HeaderMap) {
    if headers.remove(API_KEY_HEADER).is_none() {
        headers.remove(header::AUTHORIZATION);
    }
}

/// Removes every trace of an access token: header, query parameter, cookie.
pub(crate) fn strip_access_token(parts: &mut Parts) {
    parts.headers.remove(ACCESS_TOKEN_HEADER);
    if let Some(query) = parts.uri.query() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| kv.split('=').next() != Some(ACCESS_TOKEN_PARAM))
            .collect();
        let pq = if kept.is_empty() {
            parts.uri.path().to_owned()
        } else {
            format!("{}?{}", parts.uri.path(), kept.join("&"))
        };
        if let Ok(uri) = pq.parse::<Uri>() {
            parts.uri = uri;
        }
    }
    let cookies: Vec<String> = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(ACCESS_TOKEN_PARAM))
        .map(str::to_owned)
        .collect();
    parts.headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        parts.headers.insert(header::COOKIE, v);
    }
}

/// The `Set-Cookie` that keeps a token from a link for the capsule URL's host.
pub(crate) fn token_cookie(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{ACCESS_TOKEN_PARAM}={token}; Path=/; HttpOnly; SameSite=Lax"
    ))
    .ok()
}

fn query_token(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == ACCESS_TOKEN_PARAM)
        .map(|(_, v)| v.to_owned())
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == ACCESS_TOKEN_PARAM)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_api_key_wins_then_the_access_token_then_a_bearer_token() {
        let p = parts("/", &[("x-api-key", "k"), (ACCESS_TOKEN_HEADER, "t")]);
        assert_eq!(presented(&p), Presented::Team);
        let p = parts(
            "/",
            &[("authorization", "Basic app"), (ACCESS_TOKEN_HEADER, "t")],
        );
        assert_eq!(
            presented(&p),
            Presented::AccessToken {
                token: "t".into(),
                from_query: false
            }
        );
        let p = parts("/a?x=1&wrenn_access_token=q", &[]);
        assert_eq!(
            presented(&p),
            Presented::AccessToken {
                token: "q".into(),
                from_query: true
            }
        );
        let p = parts("/", &[("cookie", "a=b; wrenn_access_token=c")]);
        assert_eq!(
            presented(&p),
            Presented::AccessToken {
                token: "c".into(),
                from_query: false
            }
        );
        assert_eq!(
            presented(&parts("/", &[("authorization", "Bearer j")])),
            Presented::Team
        );
        assert_eq!(presented(&parts("/", &[])), Presented::None);
    }

    #[test]
    fn the_access_token_never_reaches_the_capsule() {
        let mut p = parts(
            "/a/b?x=1&wrenn_access_token=q&y=2",
            &[
                (ACCESS_TOKEN_HEADER, "t"),
                ("cookie", "a=b; wrenn_access_token=c; d=e"),
            ],
        );
        strip_access_token(&mut p);
        assert_eq!(p.uri, "/a/b?x=1&y=2");
        assert!(p.headers.get(ACCESS_TOKEN_HEADER).is_none());
        assert_eq!(p.headers[header::COOKIE], "a=b; d=e");
        let mut p = parts(
            "/?wrenn_access_token=q",
            &[("cookie", "wrenn_access_token=c")],
        );
        strip_access_token(&mut p);
        assert_eq!(p.uri, "/");
        assert!(p.headers.get(header::COOKIE).is_none());
    }

    #[test]
    fn team_credentials_never_reach_the_capsule() {
        let mut h = HeaderMap::new();
        h.insert(API_KEY_HEADER, HeaderValue::from_static("wrn_secret"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app-token"),
        );
        strip_team_credential(&mut h);
        assert!(h.get(API_KEY_HEADER).is_none());
        assert_eq!(
            h[header::AUTHORIZATION],
            "Bearer app-token",
            "the app's own"
        );
        strip_team_credential(&mut h);
        assert!(
            h.get(header::AUTHORIZATION).is_none(),
            "the JWT it authenticated with"
        );
    }
}
