//! File routes, against a host agent that writes real files.

use crate::data_plane;

use data_plane::{Env, Opts, TestUser, assert_error, json};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;

/// `n` pseudo-random bytes (xorshift), so corruption cannot hide in a pattern.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn form(path: &str, data: Vec<u8>) -> Form {
    Form::new()
        .text("path", path.to_owned())
        .part("file", Part::bytes(data).file_name("upload"))
}

/// A form whose file part has no declared length (the body goes out chunked).
fn chunked_form(path: &str, data: Vec<u8>) -> Form {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    Form::new()
        .text("path", path.to_owned())
        .part("file", Part::stream(body).file_name("upload.bin"))
}

fn files(id: SandboxId, op: &str) -> String {
    format!("/v1/capsules/{id}/files/{op}")
}

async fn post(env: &Env, u: &TestUser, id: SandboxId, op: &str, body: Value) -> (u16, Value) {
    json(
        env.as_user(u, Method::POST, &files(id, op))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn read(env: &Env, u: &TestUser, id: SandboxId, op: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = env
        .as_user(u, Method::POST, &files(id, op))
        .json(&json!({ "path": path }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_20_mib_file_written_with_multipart_reads_back_identically() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let data = noise(20 << 20);
    let resp = env
        .as_user(&u, Method::POST, &files(id, "write"))
        .multipart(form("/data/nested/big.bin", data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{:?}", resp.text().await);
    assert!(
        *env.agent.max_chunk.lock().unwrap() <= wrenn_proto::FILE_CHUNK_SIZE,
        "relayed in chunks of at most FILE_CHUNK_SIZE"
    );

    let (status, back) = read(&env, &u, id, "read", "/data/nested/big.bin").await;
    assert_eq!(status, 200);
    assert!(
        back == data,
        "read returns the same bytes ({} vs {})",
        back.len(),
        data.len()
    );
    let resp = env
        .as_user(&u, Method::POST, &files(id, "stream/read"))
        .json(&json!({"path": "/data/nested/big.bin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let back = resp.bytes().await.unwrap();
    assert!(
        back.as_ref() == data.as_slice(),
        "stream/read returns the same bytes"
    );

    // Overwriting truncates; an empty file reads back empty.
    let resp = env
        .as_user(&u, Method::POST, &files(id, "write"))
        .multipart(form("/data/nested/big.bin", b"small".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        read(&env, &u, id, "read", "/data/nested/big.bin").await,
        (200, b"small".to_vec())
    );
    let resp = env
        .as_user(&u, Method::POST, &files(id, "write"))
        .multipart(form("empty.txt", Vec::new()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        read(&env, &u, id, "read", "/root/empty.txt").await,
        (200, Vec::new()),
        "relative paths are under the home"
    );
    env.stop().await;
}

#[tokio::test]
async fn stream_write_accepts_a_chunked_body_of_any_size() {
    let env = Env::start_with(Opts {
        max_body_bytes: Some(1 << 20),
        ..Default::default()
    })
    .await
    .unwrap();
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let data = noise(3 << 20);
    let resp = env
        .as_user(&u, Method::POST, &files(id, "stream/write"))
        .multipart(chunked_form("/big/streamed.bin", data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{:?}", resp.text().await);
    let (status, back) = read(&env, &u, id, "stream/read", "/big/streamed.bin").await;
    assert_eq!(status, 200);
    assert!(
        back == data,
        "streamed upload round-trips past the body limit"
    );
    env.stop().await;
}

#[tokio::test]
async fn uploads_over_the_limit_are_413_and_leave_no_file() {
    let env = Env::start_with(Opts {
        max_body_bytes: Some(1 << 20),
        ..Default::default()
    })
    .await
    .unwrap();
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let root = env.agent.sandbox_root(id);

    let got = json(
        env.as_user(&u, Method::POST, &files(id, "write"))
            .multipart(form("/over.bin", noise(2 << 20)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 413, "too_large");
    assert!(
        !root.join("over.bin").exists(),
        "a declared oversize upload writes nothing"
    );

    let got = json(
        env.as_user(&u, Method::POST, &files(id, "write"))
            .multipart(chunked_form("/chunked-over.bin", noise(2 << 20)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 413, "too_large");
    assert!(
        !root.join("chunked-over.bin").exists(),
        "a chunked oversize upload is removed"
    );

    let resp = env
        .as_user(&u, Method::POST, &files(id, "write"))
        .multipart(form("/fits.bin", noise(1 << 19)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    env.stop().await;
}

#[tokio::test]
async fn the_default_upload_limit_is_100_mib() {
    let env = Env::start().await;
    assert_eq!(env.ctx.config.max_body_bytes, 100 * 1024 * 1024);
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    // Declare a 101 MiB body and send none of it: refused on the declaration alone.
    let mut stream = tokio::net::TcpStream::connect(env.authority())
        .await
        .unwrap();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {}\r\n\r\n",
        files(id, "write"),
        env.authority(),
        u.token,
        101u64 << 20
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    assert_eq!(env.agent.calls_for(id), 0);
    env.stop().await;
}

#[tokio::test]
async fn malformed_uploads_are_400_and_write_nothing() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    for op in ["write", "stream/write"] {
        let got = json(
            env.as_user(&u, Method::POST, &files(id, op))
                .json(&json!({"path": "/x"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
        let file_first = Form::new()
            .part("file", Part::bytes(b"data".to_vec()).file_name("upload"))
            .text("path", "/x");
        let got = json(
            env.as_user(&u, Method::POST, &files(id, op))
                .multipart(file_first)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
        let no_file = Form::new().text("path", "/x");
        let got = json(
            env.as_user(&u, Method::POST, &files(id, op))
                .multipart(no_file)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
        let got = json(
            env.as_user(&u, Method::POST, &files(id, op))
                .multipart(form("  ", b"data".to_vec()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(env.agent.calls_for(id), 0, "nothing reached the agent");
    env.stop().await;
}

#[tokio::test]
async fn list_mkdir_and_remove() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;

    let (status, body) = post(&env, &u, id, "mkdir", json!({"path": "/a/b"})).await;
    assert_eq!(status, 200, "{body}");
    let entry = &body["entry"];
    assert_eq!(entry["name"], "b");
    assert_eq!(entry["path"], "/a/b");
    assert_eq!(entry["type"], "directory");
    assert!(entry["permissions"].as_str().unwrap().starts_with('d'));
    for field in ["size", "mode", "owner", "group", "modified_at"] {
        assert!(!entry[field].is_null(), "{field} in {entry}");
    }
    assert_error(
        &post(&env, &u, id, "mkdir", json!({"path": "/a/b"})).await,
        409,
        "conflict",
    );

    let resp = env
        .as_user(&u, Method::POST, &files(id, "write"))
        .multipart(form("/a/b/f.txt", b"hello".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, body) = post(&env, &u, id, "list", json!({"path": "/a"})).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["/a/b"], "depth defaults to 1");
    let (_, body) = post(&env, &u, id, "list", json!({"path": "/a", "depth": 2})).await;
    let entries = body["entries"].as_array().unwrap();
    let file = entries
        .iter()
        .find(|e| e["path"] == "/a/b/f.txt")
        .expect("depth 2 reaches the file");
    assert_eq!(file["type"], "file");
    assert_eq!(file["size"], 5);
    let (_, body) = post(&env, &u, id, "list", json!({"path": "/a/b", "depth": 0})).await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 1);

    let resp = env
        .as_user(&u, Method::POST, &files(id, "remove"))
        .json(&json!({"path": "/a/b/f.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (_, body) = post(&env, &u, id, "list", json!({"path": "/a/b"})).await;
    assert_eq!(body["entries"], json!([]), "always an array");
    assert_error(
        &post(&env, &u, id, "remove", json!({"path": "/a/b/f.txt"})).await,
        404,
        "not_found",
    );
    // Recursive remove.
    assert_eq!(
        env.as_user(&u, Method::POST, &files(id, "remove"))
            .json(&json!({"path": "/a"}))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );

    // Missing paths are 404 (what the SDK's exists() relies on).
    assert_error(
        &post(&env, &u, id, "list", json!({"path": "/a"})).await,
        404,
        "not_found",
    );
    assert_error(
        &post(&env, &u, id, "read", json!({"path": "/nope.txt"})).await,
        404,
        "not_found",
    );
    assert_error(
        &post(&env, &u, id, "stream/read", json!({"path": "/nope.txt"})).await,
        404,
        "not_found",
    );
    // Bad bodies.
    assert_error(
        &post(&env, &u, id, "list", json!({"path": "/", "depth": -1})).await,
        400,
        "invalid_request",
    );
    for op in ["read", "stream/read", "list", "mkdir", "remove"] {
        assert_error(
            &post(&env, &u, id, op, json!({})).await,
            400,
            "invalid_request",
        );
        assert_error(
            &post(&env, &u, id, op, json!({"path": ""})).await,
            400,
            "invalid_request",
        );
        let got = json(
            env.as_user(&u, Method::POST, &files(id, op))
                .body("not json")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    env.stop().await;
}

#[tokio::test]
async fn file_routes_check_credentials_team_and_state() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let paused = env.capsule(&u, SandboxStatus::Paused).await;
    let theirs = env.capsule(&other, SandboxStatus::Running).await;
    let resp = env
        .as_user(&other, Method::POST, &files(theirs, "write"))
        .multipart(form("/secret.txt", b"theirs".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let before = env.agent.calls_for(theirs);

    for op in ["read", "stream/read", "list", "mkdir", "remove"] {
        let body = json!({"path": "/secret.txt"});
        let got = json(
            env.req(Method::POST, &files(id, op))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 401, "unauthorized");
        let got = json(
            env.as_user(&u, Method::POST, &format!("/v1/capsules/cl-x/files/{op}"))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
        assert_error(
            &post(&env, &u, theirs, op, body.clone()).await,
            404,
            "not_found",
        );
        assert_error(
            &post(&env, &u, paused, op, body.clone()).await,
            409,
            "invalid_state",
        );
    }
    for op in ["write", "stream/write"] {
        let got = json(
            env.req(Method::POST, &files(id, op))
                .multipart(form("/x", b"x".to_vec()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 401, "unauthorized");
        let got = json(
            env.as_user(&u, Method::POST, &files(theirs, op))
                .multipart(form("/secret.txt", b"mine".to_vec()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 404, "not_found");
        let got = json(
            env.as_user(&u, Method::POST, &files(paused, op))
                .multipart(form("/x", b"x".to_vec()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 409, "invalid_state");
    }
    assert_eq!(
        env.agent.calls_for(theirs),
        before,
        "another team's capsule was never touched"
    );
    assert_eq!(env.agent.calls_for(paused), 0);
    assert_eq!(
        read(&env, &other, theirs, "read", "/secret.txt").await,
        (200, b"theirs".to_vec())
    );
    env.stop().await;
}

#[tokio::test]
async fn files_round_trip_on_postgres() {
    let Some(env) = Env::start_with(Opts {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        eprintln!("skipped: WRENN_TEST_POSTGRES_URL is not set");
        return;
    };
    let u = env.user("pg@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let data = noise(1 << 20);
    let resp = env
        .as_user(&u, Method::POST, &files(id, "write"))
        .multipart(form("/pg/f.bin", data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, back) = read(&env, &u, id, "read", "/pg/f.bin").await;
    assert_eq!(status, 200);
    assert!(back == data);
    assert_error(
        &post(&env, &u, id, "mkdir", json!({"path": "/pg"})).await,
        409,
        "conflict",
    );
    env.stop().await;
}
