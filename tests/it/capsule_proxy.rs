//! The capsule proxy through `wrenn dev`: `http://{port}-{capsule_id}.localhost:{port}`
//! reaches a real server inside a real capsule — HTTP, streaming both ways, upgrades,
//! redirects, credentials, errors, and a paused capsule that resumes on a request.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dev::{Dev, start_dev_with};

/// The app the capsule runs (`server.py PORT ECHO_PORT BIND`).
const SERVER: &str = include_str!("capsule_proxy/server.py");
/// Its HTTP port.
const HTTP: u16 = 8000;
/// Its `Upgrade` echo port.
const ECHO: u16 = 8001;
/// The same app's ports when bound to the capsule's loopback only.
const LOOPBACK_HTTP: u16 = 8002;
/// Its echo port there.
const LOOPBACK_ECHO: u16 = 8003;

/// The capsule URL host of `port` in `id`.
fn host(dev: &Dev, id: &str, port: u16) -> String {
    format!("{port}-{id}.localhost:{}", dev.port)
}

/// A client that resolves `*.localhost` to the dev server (as browsers do) and the URL
/// of `port` in `id`.
fn capsule(dev: &Dev, id: &str, port: u16) -> (Client, String) {
    let name = format!("{port}-{id}.localhost");
    let addr: SocketAddr = ([127, 0, 0, 1], dev.port).into();
    let client = Client::builder()
        .resolve(&name, addr)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (client, format!("http://{}", host(dev, id, port)))
}

/// Starts the app inside `id` on `http` and `echo`, bound to `bind`, and waits until it
/// answers through the proxy.
async fn serve(dev: &Dev, id: &str, http: u16, echo: u16, bind: &str) {
    dev.sh(
        id,
        &format!("test -e /tmp/server.py || cat > /tmp/server.py <<'PY'\n{SERVER}\nPY"),
    )
    .await;
    let (s, v) = dev
        .call(
            Method::POST,
            &format!("/v1/capsules/{id}/exec"),
            Some(json!({"cmd": "python3", "args": ["/tmp/server.py", http.to_string(), echo.to_string(), bind], "background": true})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let (client, url) = capsule(dev, id, http);
    for _ in 0..100 {
        if let Ok(r) = client.get(&url).header("X-API-Key", &dev.key).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the app in {id} on {bind}:{http} never answered through the proxy");
}

/// Opens an `Upgrade: echo` connection to `port` of `id` through the proxy and checks
/// bytes come back as sent.
async fn echo_through(dev: &Dev, id: &str, port: u16) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", dev.port))
        .await
        .unwrap();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        host(dev, id, port),
        dev.key
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        answer.push(b[0]);
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    for msg in [&b"ping"[..], b"second message"] {
        tcp.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tcp.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}

/// `GET path` on `port` of `id` with the dev API key: status and body.
async fn get(dev: &Dev, id: &str, port: u16, path: &str) -> (StatusCode, String) {
    let (client, url) = capsule(dev, id, port);
    let r = client
        .get(format!("{url}{path}"))
        .header("X-API-Key", &dev.key)
        .send()
        .await
        .expect("request");
    (r.status(), r.text().await.unwrap_or_default())
}

/// The proxy's JSON error code of a body.
fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_urls_reach_servers_inside_capsules() {
    let dev = start_dev_with(&[("WRENN_PROXY_UPSTREAM_TIMEOUT_SECS", "3")]);
    let id = dev.create(json!({})).await;
    serve(&dev, &id, HTTP, ECHO, "0.0.0.0").await;

    // A plain request, with its path and query; the capsule sees who asked (forwarded
    // headers) but never the Wrenn API key.
    let (s, body) = get(&dev, &id, HTTP, "/headers?x=1&y=two").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("path=/headers?x=1&y=two\n"), "{body}");
    assert!(
        body.contains(&format!("x-forwarded-host: {}", host(&dev, &id, HTTP))),
        "{body}"
    );
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(
        !body.contains(&dev.key) && !body.contains("x-api-key"),
        "{body}"
    );

    // Redirects point into the capsule's URL space, not the agent's.
    let (client, url) = capsule(&dev, &id, HTTP);
    let r = client
        .get(format!("{url}/redirect"))
        .header("X-API-Key", &dev.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/target");

    // Responses stream: chunks arrive as the capsule writes them. The first one is
    // read before the app is told (through a file) to write the rest.
    dev.sh(&id, "rm -f /tmp/go").await;
    let mut r = client
        .get(format!("{url}/stream"))
        .header("X-API-Key", &dev.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().expect("a first chunk");
    assert_eq!(&first[..], b"chunk-0\n");
    dev.sh(&id, "touch /tmp/go").await;
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"chunk-1\nchunk-2\n");

    // Request bodies stream too: 48 MiB arrive whole.
    let big: Vec<u8> = (0..48 << 20).map(|i: u32| (i % 251) as u8).collect();
    let want = format!("{} {}", big.len(), hex::encode(Sha256::digest(&big)));
    let r = client
        .post(format!("{url}/upload"))
        .header("X-API-Key", &dev.key)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), want);

    // Upgrades (WebSockets and any other protocol) are spliced byte for byte.
    echo_through(&dev, &id, ECHO).await;

    // Servers bound to the capsule's loopback only are reachable too (as E2B users
    // expect): HTTP and upgrades.
    serve(&dev, &id, LOOPBACK_HTTP, LOOPBACK_ECHO, "127.0.0.1").await;
    let (s, body) = get(&dev, &id, LOOPBACK_HTTP, "/").await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::OK, "hello from the capsule\n")
    );
    echo_through(&dev, &id, LOOPBACK_ECHO).await;

    // Credentials: none, or a wrong key, is 401; the URL never reveals the capsule.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&url)
        .header("X-API-Key", "wrn_0000000000000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Public URLs: the team gives the capsule an access token; whoever holds it gets
    // in without a team credential, and the capsule never sees it.
    let (s, v) = dev
        .call(
            Method::POST,
            &format!("/v1/capsules/{id}/access-token"),
            None,
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["header"], "x-wrenn-access-token");
    let public = |path: &str| client.get(format!("{url}{path}"));
    let r = public("/headers")
        .header("X-Wrenn-Access-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(!body.contains(&token), "{body}");
    // A link carries it in the query; the answer keeps it in a cookie for the next
    // requests, and the capsule sees neither.
    let r = public(&format!("/headers?a=1&wrenn_access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("wrenn_access_token={token};")) && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.starts_with("path=/headers?a=1\n") && !body.contains(&token),
        "{body}"
    );
    let r = public("/headers")
        .header("Cookie", format!("theme=dark; wrenn_access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("cookie: theme=dark\n") && !body.contains(&token),
        "{body}"
    );
    // A wrong token, or the token on another capsule, gets nothing.
    let r = public("/")
        .header("X-Wrenn-Access-Token", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let other = dev.create(json!({})).await;
    let (other_client, other_url) = capsule(&dev, &other, HTTP);
    let r = other_client
        .get(&other_url)
        .header("X-Wrenn-Access-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a token opens its own capsule only");
    // Revoked: at once.
    let (s, _) = dev
        .call(
            Method::DELETE,
            &format!("/v1/capsules/{id}/access-token"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let r = public("/")
        .header("X-Wrenn-Access-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = dev
        .call(Method::DELETE, &format!("/v1/capsules/{other}"), None)
        .await;
    assert!(s.is_success());

    // Malformed and unknown addresses, closed and hanging ports.
    let plain = Client::new();
    for bad in [
        format!("0-{id}.localhost"),
        format!("70000-{id}.localhost"),
        "8000-cl-nope.localhost".to_owned(),
    ] {
        let r = plain
            .get(format!("{}/", dev.base))
            .header("Host", &bad)
            .header("X-API-Key", &dev.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let unknown = "cl-0000000000000000000000001";
    let (s, body) = get(&dev, unknown, HTTP, "/").await;
    assert_eq!(
        (s, code(&body).as_str()),
        (StatusCode::NOT_FOUND, "not_found"),
        "{body}"
    );
    let (s, body) = get(&dev, &id, 9999, "/").await;
    assert_eq!(s, 502, "nothing listens on 9999: {body}");
    let (s, body) = get(&dev, &id, HTTP, "/hang").await;
    assert_eq!(
        (s, code(&body).as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        "{body}"
    );
    let (s, body) = get(&dev, &id, wrenn_proto::ENVD_PORT, "/").await;
    assert_eq!(s, 403, "the guest agent's port is never proxied: {body}");

    // The API is still the API on its own host name.
    let (s, _) = dev
        .call(Method::GET, &format!("/v1/capsules/{id}"), None)
        .await;
    assert_eq!(s, 200);

    // A paused capsule resumes on a request (the target cached by the first request
    // is stale by then), and its server (a process kept across the pause) answers.
    let (s, _) = get(&dev, &id, HTTP, "/").await;
    assert_eq!(s, 200);
    let (s, v) = dev
        .call(Method::POST, &format!("/v1/capsules/{id}/pause"), None)
        .await;
    assert_eq!(s, 202, "{v}");
    dev.wait_for(&id, "paused", Duration::from_secs(30)).await;
    let (s, body) = get(&dev, &id, HTTP, "/").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body, "hello from the capsule\n");
    assert_eq!(dev.status(&id).await, "running");

    // A destroyed capsule is not running: 409, never a stale target.
    let (s, v) = dev
        .call(Method::DELETE, &format!("/v1/capsules/{id}"), None)
        .await;
    assert!(s.is_success(), "{v}");
    dev.wait_for(&id, "stopped", Duration::from_secs(30)).await;
    let (s, body) = get(&dev, &id, HTTP, "/").await;
    assert_eq!(
        (s, code(&body).as_str()),
        (StatusCode::CONFLICT, "capsule_not_running"),
        "{body}"
    );
}
