//! Routing forwarded envd calls: only a known, running capsule is reached, and unknown
//! or malformed ids are refused.

use crate::common;

use super::tagged;
use common::{TestAgent, by_tag, command, create_request, file_data, file_header};
use tonic::Code;
use tonic::metadata::MetadataMap;
use wrenn_core::id::SandboxId;
use wrenn_proto::envd::v1 as ev;
use wrenn_proto::envd::v1::filesystem_client::FilesystemClient;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::process_input::Input;
use wrenn_proto::hostagent::v1 as pb;

/// Every forwarded `Process` and `Filesystem` method, called once with `route` applied
/// to its metadata: the method's name and its outcome. File calls point under the
/// agent's scratch directory (`routing/`), so a call wrongly let through shows there.
async fn every_forwarded_call(
    agent: &TestAgent,
    route: &dyn Fn(&mut MetadataMap),
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    fn req<T>(route: &dyn Fn(&mut MetadataMap), message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        route(request.metadata_mut());
        request
    }
    fn outcome<T>(r: Result<T, tonic::Status>) -> Result<(), tonic::Status> {
        r.map(drop)
    }
    let channel = common::connect_channel(agent.handle.local_addr()).await;
    let mut p = ProcessClient::new(channel.clone());
    let mut f = FilesystemClient::new(channel);
    let path = agent.path("routing/file");
    let sel = by_tag("routing");
    vec![
        (
            "Process.List",
            outcome(p.list(req(route, ev::ListRequest {})).await),
        ),
        (
            "Process.Start",
            outcome(p.start(req(route, command("true", &[]))).await),
        ),
        (
            "Process.Connect",
            outcome(
                p.connect(req(
                    route,
                    ev::ConnectRequest {
                        process: sel.clone(),
                        replay: false,
                    },
                ))
                .await,
            ),
        ),
        (
            "Process.Update",
            outcome(
                p.update(req(
                    route,
                    ev::UpdateRequest {
                        process: sel.clone(),
                        pty: Some(ev::Pty { cols: 1, rows: 1 }),
                    },
                ))
                .await,
            ),
        ),
        (
            "Process.StreamInput",
            outcome(
                p.stream_input(req(
                    route,
                    futures::stream::iter(vec![ev::StreamInputRequest {
                        event: Some(ev::stream_input_request::Event::Start(
                            ev::StreamInputStart {
                                process: sel.clone(),
                            },
                        )),
                    }]),
                ))
                .await,
            ),
        ),
        (
            "Process.SendInput",
            outcome(
                p.send_input(req(
                    route,
                    ev::SendInputRequest {
                        process: sel.clone(),
                        input: Some(ev::ProcessInput {
                            input: Some(Input::Stdin(b"x".to_vec())),
                        }),
                    },
                ))
                .await,
            ),
        ),
        (
            "Process.SendSignal",
            outcome(
                p.send_signal(req(
                    route,
                    ev::SendSignalRequest {
                        process: sel.clone(),
                        signal: ev::Signal::Sigterm as i32,
                    },
                ))
                .await,
            ),
        ),
        (
            "Process.CloseStdin",
            outcome(
                p.close_stdin(req(route, ev::CloseStdinRequest { process: sel }))
                    .await,
            ),
        ),
        (
            "Filesystem.Stat",
            outcome(
                f.stat(req(route, ev::StatRequest { path: path.clone() }))
                    .await,
            ),
        ),
        (
            "Filesystem.ListDir",
            outcome(
                f.list_dir(req(
                    route,
                    ev::ListDirRequest {
                        path: agent.scratch.display().to_string(),
                        depth: 1,
                    },
                ))
                .await,
            ),
        ),
        (
            "Filesystem.MakeDir",
            outcome(
                f.make_dir(req(
                    route,
                    ev::MakeDirRequest {
                        path: agent.path("routing/dir"),
                        user: None,
                    },
                ))
                .await,
            ),
        ),
        (
            "Filesystem.Move",
            outcome(
                f.r#move(req(
                    route,
                    ev::MoveRequest {
                        source: path.clone(),
                        destination: agent.path("routing/moved"),
                    },
                ))
                .await,
            ),
        ),
        (
            "Filesystem.Remove",
            outcome(
                f.remove(req(route, ev::RemoveRequest { path: path.clone() }))
                    .await,
            ),
        ),
        (
            "Filesystem.ReadFile",
            outcome(
                f.read_file(req(route, ev::ReadFileRequest { path: path.clone() }))
                    .await,
            ),
        ),
        (
            "Filesystem.WriteFile",
            outcome(
                f.write_file(req(
                    route,
                    futures::stream::iter(vec![
                        file_header(ev::WriteFileHeader {
                            path,
                            ..Default::default()
                        }),
                        file_data(b"x".to_vec()),
                    ]),
                ))
                .await,
            ),
        ),
    ]
}

/// Asserts every outcome is an error with `code` whose message contains `names`.
fn assert_all_refused(
    outcomes: Vec<(&'static str, Result<(), tonic::Status>)>,
    code: Code,
    names: &str,
    why: &str,
) {
    assert_eq!(outcomes.len(), 15, "every forwarded method");
    for (call, outcome) in outcomes {
        let err = outcome.expect_err(&format!("{call} {why} was accepted"));
        assert_eq!(err.code(), code, "{call} {why}: {err:?}");
        assert!(
            err.message().contains(names),
            "{call} {why}: {:?} does not name {names:?}",
            err.message()
        );
    }
}

#[tokio::test]
async fn forwarded_calls_need_a_known_running_capsule() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;

    // No `wrenn-capsule-id`, or a malformed one.
    let none = every_forwarded_call(&agent, &|_| {}).await;
    assert_all_refused(none, Code::InvalidArgument, "", "without a capsule id");
    for bad in [
        "",
        "cl-short",
        "usr-0000000000000000000000000",
        "cl-ABCDEFGHIJKLMNOPQRSTUVWXY",
        "../../etc",
    ] {
        let route = |m: &mut MetadataMap| {
            m.insert(
                wrenn_proto::routing::CAPSULE_ID_METADATA,
                bad.parse().unwrap(),
            );
        };
        let outcomes = every_forwarded_call(&agent, &route).await;
        assert_all_refused(outcomes, Code::InvalidArgument, "", &format!("to {bad:?}"));
    }

    // A well-formed id this agent does not know: NOT_FOUND naming the sandbox.
    let unknown = SandboxId::new().to_string();
    let route = |m: &mut MetadataMap| {
        m.insert(
            wrenn_proto::routing::CAPSULE_ID_METADATA,
            unknown.parse().unwrap(),
        );
    };
    let outcomes = every_forwarded_call(&agent, &route).await;
    assert_all_refused(outcomes, Code::NotFound, &unknown, "to an unknown sandbox");

    // A paused sandbox: FAILED_PRECONDITION naming its status.
    agent
        .client
        .clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    let route = |m: &mut MetadataMap| {
        m.insert(
            wrenn_proto::routing::CAPSULE_ID_METADATA,
            id.to_string().parse().unwrap(),
        );
    };
    let outcomes = every_forwarded_call(&agent, &route).await;
    assert_all_refused(
        outcomes,
        Code::FailedPrecondition,
        "paused",
        "to a paused sandbox",
    );
    assert!(
        !std::path::Path::new(&agent.path("routing")).exists(),
        "no refused call touched anything"
    );

    // Calls go to the sandbox they name, and only there.
    agent
        .client
        .clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let other = agent.create(0).await;
    let here = agent
        .envd(id)
        .spawn(tagged(command("sleep", &["30"]), "mine"))
        .await
        .unwrap();
    assert!(agent.envd(id).lists(here.pid).await);
    assert!(!agent.envd(other).lists(here.pid).await);
    let err = agent
        .envd(other)
        .connect(by_tag("mine"), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let agent = TestAgent::start().await;
    let mut c = agent.client.clone();
    let unknown = SandboxId::new().to_string();
    let err = agent.envd(&unknown).sh("true").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&unknown));
    for code in [
        c.pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: unknown.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        c.hibernate_sandbox(pb::HibernateSandboxRequest {
            sandbox_id: unknown.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.ping_sandbox(pb::PingSandboxRequest {
            sandbox_id: unknown.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: unknown.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.get_sandbox_metrics(pb::GetSandboxMetricsRequest {
            sandbox_id: unknown.clone(),
            range: String::new(),
        })
        .await
        .unwrap_err()
        .code(),
        agent
            .envd(&unknown)
            .signal(by_tag("x"), ev::Signal::Sigkill)
            .await
            .unwrap_err()
            .code(),
        c.create_snapshot(pb::CreateSnapshotRequest {
            sandbox_id: unknown.clone(),
            team_id: "00000000-0000-0000-0000-000000000001".into(),
            template_id: "00000000-0000-0000-0000-000000000002".into(),
        })
        .await
        .unwrap_err()
        .code(),
    ] {
        assert_eq!(code, Code::NotFound);
    }

    for bad in [
        "",
        "cl-short",
        "usr-0000000000000000000000000",
        "cl-ABCDEFGHIJKLMNOPQRSTUVWXY",
        "../../etc",
    ] {
        let err = c
            .create_sandbox(pb::CreateSandboxRequest {
                sandbox_id: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        let err = c
            .destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        let err = agent.envd(bad).stat("/").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
    let id = SandboxId::new();
    for (team, template) in [
        ("not-a-uuid", ""),
        ("", "12345"),
        ("00000000000000000000000000000001", ""),
    ] {
        let err = c
            .create_sandbox(pb::CreateSandboxRequest {
                sandbox_id: id.to_string(),
                team_id: team.into(),
                template_id: template.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{team:?} {template:?}");
    }
    let err = c
        .create_sandbox(pb::CreateSandboxRequest {
            sandbox_id: id.to_string(),
            vcpus: 1000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A template this host does not have.
    let err = c
        .create_sandbox(pb::CreateSandboxRequest {
            sandbox_id: id.to_string(),
            template_id: "00000000-0000-0000-0000-0000000000aa".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(
        agent.status(id).await,
        None,
        "a failed create leaves nothing"
    );
    // Defaults that envd cannot apply fail the create, and the sandbox is destroyed.
    let mut req = create_request(id, 0);
    req.default_user = "no-such-user-here".into();
    let err = c.create_sandbox(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(agent.status(id).await, None);
    assert!(!agent.layout.sandbox_dir(id).exists());
    // Nothing was touched by any of it.
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.sandboxes.is_empty());
}
