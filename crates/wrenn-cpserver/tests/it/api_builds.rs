//! Template builds over REST: `/v1/admin/builds` (platform admins), `/v1/builds`
//! (team owners and admins), `DELETE /v1/admin/templates/{name}`, and creating a
//! capsule from a template that is still building. These servers have no real host,
//! so a queued build fails when it asks for its capsule; builds that run end to end
//! are tested with `wrenn dev` (tests/it/template_build.rs of the root package).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, TestUser, assert_error, make_key, member_of, send};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use wrenn_core::audit::{AuditQuery, AuditScope};
use wrenn_core::auth::Role;
use wrenn_core::id::{BuildId, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{BuildStatus, NewSandbox, Resources, TemplateBuild, TemplateKind};
use wrenn_core::repo::{NewTemplate, Store};
use wrenn_db::testing::TestStores;

fn recipe() -> Value {
    json!({
        "name": "py-tools",
        "recipe": ["ENV A=1", "WORKDIR /srv", "RUN echo hi > out", "START python3 -m http.server 8000"],
        "healthcheck": "test -f /srv/out",
        "vcpus": 2,
        "memory_mb": 1024,
    })
}

/// A build row straight in the store, in `status` (the worker only runs builds it
/// claims from `pending`).
async fn stored_build(s: &TestServer, team: TeamId, name: &str, status: BuildStatus) -> BuildId {
    build_in(&s.store(), team, name, status).await
}

/// A build stored straight in `store`.
async fn build_in(
    store: &Arc<dyn Store>,
    team: TeamId,
    name: &str,
    status: BuildStatus,
) -> BuildId {
    let b = store
        .create_build(
            TemplateBuild {
                id: BuildId::new(),
                team_id: team,
                name: name.into(),
                base_template: "minimal".into(),
                recipe: vec!["RUN true".into(); 5],
                healthcheck: String::new(),
                skip_pre_post: false,
                default_user: "wrenn-user".into(),
                default_env: Default::default(),
                vcpus: 1,
                memory_mb: 512,
                status,
                current_step: 3,
                total_steps: 5,
                logs: vec!["step 3/5: RUN true".into()],
                error: String::new(),
                sandbox_id: None,
                host_id: None,
                template_id: None,
                created_at: chrono::Utc::now(),
                started_at: None,
                completed_at: None,
            },
            None,
        )
        .await
        .unwrap();
    b.id
}

/// A server whose builds worker has taken the builds over: a build left `running`
/// before it started (as a dead control plane leaves one) has been failed, so builds
/// the test stores from now on are not taken for leftovers. Keep the store and the
/// directory alive as long as the server.
async fn server_after_build_takeover()
-> (TestServer, wrenn_db::testing::TestStore, tempfile::TempDir) {
    let db = TestStores::sqlite().await;
    let store = db.store();
    let leftover = build_in(
        &store,
        PLATFORM_TEAM_ID,
        "left-running",
        BuildStatus::Running,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_on(store, dir.path(), &[], None).await;
    for _ in 0..200 {
        if s.store().get_build(leftover).await.unwrap().status == BuildStatus::Failed {
            return (s, db, dir);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the builds worker never took the builds over");
}

async fn wait_for_status(s: &TestServer, root: &TestUser, id: &str, want: &str) -> Value {
    let path = format!("/v1/admin/builds/{id}");
    for _ in 0..100 {
        let (status, body) = send(s.as_user(root, Method::GET, &path)).await;
        assert_eq!(status, 200, "{body}");
        if body["status"] == want {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("build {id} never became {want}");
}

#[tokio::test]
async fn build_routes_need_a_platform_admin_and_team_routes_a_team_admin() {
    let s = TestServer::start().await;
    let plain = s.user("plain@x.io").await;
    let id = BuildId::new();
    for (method, path) in [
        (Method::POST, "/v1/admin/builds".to_owned()),
        (Method::GET, "/v1/admin/builds".to_owned()),
        (Method::GET, format!("/v1/admin/builds/{id}")),
        (Method::POST, format!("/v1/admin/builds/{id}/cancel")),
        (Method::DELETE, "/v1/admin/templates/minimal".to_owned()),
    ] {
        let got = send(s.req(method.clone(), &path).json(&recipe())).await;
        assert_error(&got, 401, "unauthorized");
        let got = send(s.as_user(&plain, method, &path).json(&recipe())).await;
        assert_error(&got, 403, "forbidden");
    }
    let member = member_of(&s, plain.team, "member@x.io", Role::Member).await;
    let key = make_key(&s.store(), plain.team, plain.id).await;
    for (method, path) in [
        (Method::POST, "/v1/builds".to_owned()),
        (Method::GET, "/v1/builds".to_owned()),
        (Method::GET, format!("/v1/builds/{id}")),
        (Method::POST, format!("/v1/builds/{id}/cancel")),
    ] {
        let got = send(s.as_user(&member, method.clone(), &path).json(&recipe())).await;
        assert_error(&got, 403, "forbidden");
        // Team builds need a signed-in user, not an API key.
        let got = send(
            s.req(method, &path)
                .header("X-API-Key", key.expose_secret())
                .json(&recipe()),
        )
        .await;
        assert_eq!(got.0, 401, "{}", got.1);
    }
    assert!(s.store().list_builds(10).await.unwrap().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn bad_build_requests_are_refused_and_nothing_is_queued() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({ "recipe": ["RUN true"] }), 400, "name"),
        (json!({ "name": "x" }), 400, "recipe"),
        (
            json!({ "name": "../etc", "recipe": ["RUN true"] }),
            400,
            "name",
        ),
        (
            json!({ "name": "x", "recipe": [] }),
            400,
            "at least one step",
        ),
        (
            json!({ "name": "x", "recipe": ["RUN true", "ENV NOVALUE"] }),
            400,
            "recipe step 2",
        ),
        (
            json!({ "name": "x", "recipe": ["WORKDIR relative/dir"] }),
            400,
            "recipe step 1",
        ),
        (
            json!({ "name": "x", "recipe": ["COPY a b"] }),
            400,
            "COPY steps need an archive",
        ),
        (
            json!({ "name": "x", "recipe": ["COPY ../../etc/shadow /x"] }),
            400,
            "inside the archive",
        ),
        (
            json!({ "name": "x", "recipe": ["RUN --timeout=2d true"] }),
            400,
            "--timeout",
        ),
        (
            json!({ "name": "x", "recipe": ["RUN true"], "healthcheck": "--timeout=9h true" }),
            400,
            "healthcheck --timeout",
        ),
        (
            json!({ "name": "x", "recipe": ["START a", "START b"] }),
            400,
            "only one START",
        ),
        (
            json!({ "name": "x", "recipe": ["RUN true"], "vcpus": 999 }),
            400,
            "vcpus",
        ),
        (
            json!({ "name": "x", "recipe": ["RUN true"], "base_template": "nope" }),
            400,
            "base template \"nope\" not found",
        ),
        (
            json!({ "name": "x", "recipe": ["RUN true"], "bogus": 1 }),
            400,
            "bogus",
        ),
        (
            json!({ "name": "minimal", "recipe": ["RUN true"] }),
            409,
            "already exists",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, resp) = send(
            s.as_user(&root, Method::POST, "/v1/admin/builds")
                .json(&body),
        )
        .await;
        assert_eq!(got, status, "{body} -> {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body} -> {resp}");
    }
    assert!(s.store().list_builds(10).await.unwrap().is_empty());
    s.stop().await;
}

/// A build as a multipart form: `config` (JSON) and, if given, `archive`.
fn form(config: &Value, archive: Option<Vec<u8>>) -> Form {
    let form = Form::new().text("config", config.to_string());
    match archive {
        Some(data) => form.part("archive", Part::bytes(data).file_name("ctx.tar.gz")),
        None => form,
    }
}

/// A gzip-compressed tar holding `files` (made by the system's `tar`).
fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join("src").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let out = dir.path().join("ctx.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(dir.path().join("src"))
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

#[tokio::test]
async fn a_build_form_carries_its_archive_and_bad_forms_are_refused() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let copy =
        json!({ "name": "with-files", "recipe": ["COPY app /opt/app"], "skip_pre_post": true });
    let mut tar = vec![0u8; 1024];
    tar[257..262].copy_from_slice(b"ustar");
    let oversized = vec![0x1f_u8; 100 * 1024 * 1024 + 1];
    let cases: Vec<(Form, u16, &str)> = vec![
        (Form::new(), 400, "multipart"),
        (Form::new().text("archive", ""), 400, "config field"),
        (form(&copy, None), 400, "COPY steps need an archive"),
        (form(&copy, Some(Vec::new())), 400, "archive is empty"),
        (
            form(&copy, Some(b"PK\x03\x04zipped".to_vec())),
            400,
            "zip archives are not supported",
        ),
        (
            form(&copy, Some(b"plain text".to_vec())),
            400,
            "not a tar file",
        ),
        (
            Form::new().text("config", "{not json"),
            400,
            "config field is not a valid build",
        ),
        (
            form(&copy, Some(tar.clone())).text("extra", "x"),
            400,
            "unknown form field \"extra\"",
        ),
        (form(&copy, Some(oversized)), 413, "larger than 100 MiB"),
    ];
    for (body, status, needle) in cases {
        let (got, resp) = send(
            s.as_user(&root, Method::POST, "/v1/admin/builds")
                .multipart(body),
        )
        .await;
        assert_eq!(got, status, "{needle}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle}: {resp}");
    }
    assert!(s.store().list_builds(10).await.unwrap().is_empty());

    // A good form: the archive is stored with the build, byte for byte, for whichever
    // control plane runs it; a plain tar is accepted as well as a compressed one.
    let archive = tar_gz(&[("app/main.py", "print('hi')\n")]);
    let (status, created) = send(
        s.as_user(&root, Method::POST, "/v1/admin/builds")
            .multipart(form(&copy, Some(archive.clone()))),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id: BuildId = created["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(created["skip_pre_post"], true);
    // No host here: the build fails, and its archive goes with it.
    wait_for_status(&s, &root, &id.to_string(), "failed").await;
    assert_eq!(s.store().build_archive(id).await.unwrap(), None);

    let team_copy = json!({ "name": "team-files", "recipe": ["COPY . /srv"] });
    let (status, created) = send(
        s.as_user(&root, Method::POST, "/v1/builds")
            .multipart(form(&team_copy, Some(tar))),
    )
    .await;
    assert_eq!(status, 201, "team builds take forms too: {created}");
    s.stop().await;
}

#[tokio::test]
async fn builds_are_queued_listed_read_and_audited_and_fail_without_a_host() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let (status, created) = send(
        s.as_user(&root, Method::POST, "/v1/admin/builds")
            .json(&recipe()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("bld-"), "{created}");
    assert_eq!(created["name"], "py-tools");
    assert_eq!(created["base_template"], "minimal");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["total_steps"], 4);
    assert_eq!(created["current_step"], 0);
    assert_eq!(created["vcpus"], 2);
    assert_eq!(created["memory_mb"], 1024);
    assert_eq!(created["healthcheck"], "test -f /srv/out");
    assert_eq!(created["team_id"], PLATFORM_TEAM_ID.to_string());
    // The template's defaults: the base template's user, plus the recipe's ENV.
    assert_eq!(created["default_user"], "wrenn-user");
    assert_eq!(created["default_env"], json!({ "A": "1" }));

    // A second build of the same name while the first is unfinished is refused.
    let (status, again) = send(
        s.as_user(&root, Method::POST, "/v1/admin/builds")
            .json(&recipe()),
    )
    .await;
    if status != 201 {
        assert_error(&(status, again.clone()), 409, "template_name_taken");
    }

    let (status, list) = send(s.as_user(&root, Method::GET, "/v1/admin/builds")).await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == id.as_str())
    );

    // No host can take the build capsule: the worker fails the build, saying why.
    let failed = wait_for_status(&s, &root, &id, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("creating the build capsule"), "{failed}");
    assert!(
        failed["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("build failed:"))
    );
    assert!(failed["completed_at"].is_string(), "{failed}");

    // A finished build cannot be cancelled.
    let got = send(s.as_user(
        &root,
        Method::POST,
        &format!("/v1/admin/builds/{id}/cancel"),
    ))
    .await;
    assert_error(&got, 409, "build_finished");

    let got = send(s.as_user(
        &root,
        Method::GET,
        &format!("/v1/admin/builds/{}", BuildId::new()),
    ))
    .await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(&root, Method::GET, "/v1/admin/builds/not-a-build")).await;
    assert_eq!(got.0, 400, "{}", got.1);

    let audit = s
        .store()
        .list_audit_logs(&AuditQuery {
            team_id: PLATFORM_TEAM_ID,
            scopes: vec![AuditScope::Admin],
            resource_type: Some("build".into()),
            action: Some("create".into()),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    // (The second POST above made a build too when the first had already failed.)
    let entry = audit
        .iter()
        .find(|a| a.entry.resource_id.as_deref() == Some(id.as_str()))
        .expect("the build's creation is audited");
    assert_eq!(entry.entry.metadata["name"], "py-tools");
    s.stop().await;
}

#[tokio::test]
async fn cancelling_a_running_build_marks_it_cancelled_once() {
    let (s, _db, _dir) = server_after_build_takeover().await;
    let root = s.user_with("root@x.io", true).await;
    let id = stored_build(&s, PLATFORM_TEAM_ID, "slow", BuildStatus::Running).await;
    let path = format!("/v1/admin/builds/{id}/cancel");
    let resp = s.as_user(&root, Method::POST, &path).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let b = s.store().get_build(id).await.unwrap();
    assert_eq!(b.status, BuildStatus::Cancelled);
    assert!(b.completed_at.is_some());
    let got = send(s.as_user(&root, Method::POST, &path)).await;
    assert_error(&got, 409, "build_finished");
    let got = send(s.as_user(
        &root,
        Method::POST,
        &format!("/v1/admin/builds/{}/cancel", BuildId::new()),
    ))
    .await;
    assert_error(&got, 404, "not_found");
    let cancels = s
        .store()
        .list_audit_logs(&AuditQuery {
            team_id: PLATFORM_TEAM_ID,
            scopes: vec![AuditScope::Admin],
            resource_type: Some("build".into()),
            action: Some("cancel".into()),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(cancels.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn team_admins_build_team_templates_that_other_teams_do_not_see() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    let admin = member_of(&s, ada.team, "admin@x.io", Role::Admin).await;
    let bob = s.user("bob@x.io").await;
    let (status, created) = send(
        s.as_user(&admin, Method::POST, "/v1/builds")
            .json(&recipe()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["team_id"], ada.team.to_string());
    let id = created["id"].as_str().unwrap();

    let (status, mine) = send(s.as_user(&ada, Method::GET, "/v1/builds")).await;
    assert_eq!(status, 200);
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let (_, theirs) = send(s.as_user(&bob, Method::GET, "/v1/builds")).await;
    assert!(theirs.as_array().unwrap().is_empty(), "{theirs}");
    let got = send(s.as_user(&bob, Method::GET, &format!("/v1/builds/{id}"))).await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(&bob, Method::POST, &format!("/v1/builds/{id}/cancel"))).await;
    assert_error(&got, 404, "not_found");
    let (status, one) = send(s.as_user(&ada, Method::GET, &format!("/v1/builds/{id}"))).await;
    assert_eq!((status, one["id"].as_str()), (200, Some(id)));
    // Platform admins see every team's builds.
    let (_, all) = send(s.as_user(&root, Method::GET, "/v1/admin/builds")).await;
    assert!(all.as_array().unwrap().iter().any(|b| b["id"] == id));
    // A team cannot build a template under a platform template's name.
    let mut body = recipe();
    body["name"] = json!("minimal");
    let got = send(s.as_user(&ada, Method::POST, "/v1/builds").json(&body)).await;
    assert_error(&got, 409, "template_name_taken");
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("platform template")
    );
    s.stop().await;
}

#[tokio::test]
async fn a_capsule_from_a_template_still_building_is_a_conflict() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    // Stored after the builds worker took over: it fails builds left running before.
    wait_until_builds_run(&s).await;
    stored_build(&s, PLATFORM_TEAM_ID, "cooking", BuildStatus::Running).await;
    let got = send(
        s.as_user(&ada, Method::POST, "/v1/capsules")
            .json(&json!({ "template": "cooking" })),
    )
    .await;
    assert_error(&got, 409, "template_building");
    assert_eq!(
        got.1["error"]["message"],
        "template cooking is still building (step 3/5); try again shortly"
    );
    let got = send(
        s.as_user(&ada, Method::POST, "/v1/capsules")
            .json(&json!({ "template": "never-built" })),
    )
    .await;
    assert_error(&got, 404, "not_found");
    assert!(s.store().list_sandboxes(ada.team).await.unwrap().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn platform_templates_are_deleted_only_when_no_capsule_uses_them() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    let store = s.store();
    let template = store
        .create_template(NewTemplate {
            id: TemplateId::new(),
            team_id: PLATFORM_TEAM_ID,
            name: "old-tools".into(),
            kind: TemplateKind::Snapshot,
            vcpus: 1,
            memory_mb: 512,
            size_bytes: 1,
            default_user: "root".into(),
            default_env: Default::default(),
            metadata: Default::default(),
            start_command: String::new(),
            start_cwd: String::new(),
        })
        .await
        .unwrap();
    let host = common::online_host(&store).await;
    let user = store
        .insert_sandbox(NewSandbox {
            id: SandboxId::new(),
            team_id: ada.team,
            host_id: host,
            template: template.name.clone(),
            template_id: template.id,
            template_team_id: PLATFORM_TEAM_ID,
            status: SandboxStatus::Paused,
            resources: Resources {
                vcpus: 1,
                memory_mb: 512,
                disk_size_mb: 20480,
            },
            timeout_sec: 0,
            metadata: Default::default(),
        })
        .await
        .unwrap();

    let got = send(s.as_user(&root, Method::DELETE, "/v1/admin/templates/old-tools")).await;
    assert_error(&got, 409, "template_in_use");
    assert_eq!(got.1["error"]["sandbox_ids"], json!([user.id.to_string()]));
    store
        .status_if(user.id, SandboxStatus::Paused, SandboxStatus::Stopped)
        .await
        .unwrap()
        .unwrap();
    let resp = s
        .as_user(&root, Method::DELETE, "/v1/admin/templates/old-tools")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(store.get_template(template.id).await.is_err());
    let got = send(s.as_user(&root, Method::DELETE, "/v1/admin/templates/old-tools")).await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(&root, Method::DELETE, "/v1/admin/templates/minimal")).await;
    assert_error(&got, 403, "forbidden");
    s.stop().await;
}

/// The lease of the build worker.
const BUILDS_LEASE: &str = "worker:template-builds";

/// A capsule on `host` in the platform team, `running` (a build's).
async fn build_capsule(store: &Arc<dyn Store>, host: HostId) -> SandboxId {
    store
        .insert_sandbox(NewSandbox {
            id: SandboxId::new(),
            team_id: PLATFORM_TEAM_ID,
            host_id: host,
            template: "minimal".into(),
            template_id: wrenn_core::id::BUILTIN_TEMPLATE_ID,
            template_team_id: PLATFORM_TEAM_ID,
            status: SandboxStatus::Running,
            resources: Resources {
                vcpus: 1,
                memory_mb: 512,
                disk_size_mb: 20480,
            },
            timeout_sec: 0,
            metadata: Default::default(),
        })
        .await
        .unwrap()
        .id
}

/// Waits until the build worker of `s` (or of a replica) has taken the builds over
/// — failed what was left running, and claims pending builds — by queueing a
/// build and waiting for it to end (at once: there is no host yet).
async fn wait_until_builds_run(s: &TestServer) {
    let canary = stored_build(s, PLATFORM_TEAM_ID, "canary", BuildStatus::Pending).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while matches!(
        s.store().get_build(canary).await.unwrap().status,
        BuildStatus::Pending | BuildStatus::Running
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "no build worker runs builds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to 10 s for `build` to be failed as left running by a stopped control
/// plane, and its capsule to be destroyed.
async fn wait_failed_as_left_running(store: &Arc<dyn Store>, build: BuildId, capsule: SandboxId) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let b = store.get_build(build).await.unwrap();
        let status = store.get_sandbox(capsule).await.unwrap().status;
        if b.status == BuildStatus::Failed
            && matches!(status, SandboxStatus::Stopping | SandboxStatus::Stopped)
        {
            assert_eq!(b.error, "the control plane restarted while the build ran");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build is {} ({:?}), its capsule {status}",
            b.status,
            b.error
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_restart_fails_builds_left_running_destroys_their_capsules_and_runs_pending_ones() {
    let db = TestStores::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let store = db.store();
    let mut first = TestServer::start_on(store.clone(), dir.path(), &[], None).await;
    let root = first.user_with("root@x.io", true).await;
    wait_until_builds_run(&first).await;
    let host = common::online_host(&store).await;
    // A build that was running in a control plane that stopped, with its capsule.
    let capsule = build_capsule(&store, host).await;
    let running = stored_build(
        &first,
        PLATFORM_TEAM_ID,
        "interrupted",
        BuildStatus::Running,
    )
    .await;
    store
        .set_build_sandbox(running, capsule, host)
        .await
        .unwrap();
    first.halt().await;
    assert_eq!(
        store.lease_holder(BUILDS_LEASE).await.unwrap(),
        None,
        "a control plane that stops releases the builds' lease"
    );
    assert_eq!(
        store.get_build(running).await.unwrap().status,
        BuildStatus::Running
    );
    // A build queued while no control plane ran builds.
    let queued = stored_build(&first, PLATFORM_TEAM_ID, "queued", BuildStatus::Pending).await;

    // The next control plane on the same database takes the builds over.
    let restarted = TestServer::start_on(store.clone(), dir.path(), &[], None).await;
    wait_failed_as_left_running(&store, running, capsule).await;
    let got =
        send(restarted.as_user(&root, Method::GET, &format!("/v1/admin/builds/{running}"))).await;
    assert_eq!(got.1["status"], "failed", "{}", got.1);
    // The pending build is run, not failed as left behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let b = store.get_build(queued).await.unwrap();
        assert_ne!(b.error, "the control plane restarted while the build ran");
        if b.status != BuildStatus::Pending {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the queued build never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restarted.stop().await;
}

/// A control plane starting while another runs builds leaves them alone; when the
/// one running them stops, it takes them over.
async fn a_replica_starting_while_another_runs_builds_leaves_them_running(postgres: bool) {
    let Some(mut a) = TestServer::start_with_vars(
        common::Options {
            postgres,
            ..Default::default()
        },
        &[("WRENN_WORKER_LEASE_SECS", "3")],
    )
    .await
    else {
        return;
    };
    let store = a.store();
    common::wait_for_lease(
        &store,
        BUILDS_LEASE,
        &a.ctx.replica_id,
        Duration::from_secs(5),
    )
    .await;
    wait_until_builds_run(&a).await;
    // A build `a` runs (as far as the database tells), with its capsule.
    let host = common::online_host(&store).await;
    let capsule = build_capsule(&store, host).await;
    let running = stored_build(&a, PLATFORM_TEAM_ID, "in-flight", BuildStatus::Running).await;
    store
        .set_build_sandbox(running, capsule, host)
        .await
        .unwrap();

    let b = a.replica().await;
    // `b`'s build worker asks for the lease every second: give it a few tries.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let build = store.get_build(running).await.unwrap();
    assert_eq!(
        (build.status, build.error.as_str()),
        (BuildStatus::Running, ""),
        "a starting replica does not fail builds another one runs"
    );
    assert_eq!(
        store.get_sandbox(capsule).await.unwrap().status,
        SandboxStatus::Running
    );
    assert_eq!(
        store.lease_holder(BUILDS_LEASE).await.unwrap().as_deref(),
        Some(&*a.ctx.replica_id)
    );

    // `a` stops: `b` takes the builds over and fails what `a` left running.
    a.halt().await;
    common::wait_for_lease(
        &store,
        BUILDS_LEASE,
        &b.ctx.replica_id,
        Duration::from_secs(3),
    )
    .await;
    wait_failed_as_left_running(&store, running, capsule).await;
    b.stop().await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_starting_while_another_runs_builds_leaves_them_running_on_sqlite() {
    a_replica_starting_while_another_runs_builds_leaves_them_running(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_starting_while_another_runs_builds_leaves_them_running_on_postgres() {
    a_replica_starting_while_another_runs_builds_leaves_them_running(true).await;
}
