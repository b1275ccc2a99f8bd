//! Snapshots through the agent: create, delete and flatten.

use crate::common;

use common::{TestAgent, create_request};
use tonic::Code;
use wrenn_core::id::SandboxId;
use wrenn_proto::hostagent::v1 as pb;

#[tokio::test]
async fn snapshots_create_delete_and_flatten() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();
    let team = "00000000-0000-0000-0000-0000000000c1";
    let tmpl = "00000000-0000-0000-0000-0000000000d1";
    let size = c
        .create_snapshot(pb::CreateSnapshotRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .size_bytes;
    assert!(size > 0);
    assert_eq!(
        agent.status(id).await,
        Some(pb::SandboxStatus::Running),
        "a running sandbox carries on after the snapshot"
    );
    assert_eq!(agent.sh(id, "echo after").await.unwrap().0, "after\n");
    let err = c
        .create_snapshot(pb::CreateSnapshotRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    for (team_id, template_id) in [
        ("", tmpl),
        (team, "00000000-0000-0000-0000-000000000000"),
        (team, "nope"),
    ] {
        let err = c
            .create_snapshot(pb::CreateSnapshotRequest {
                sandbox_id: id.to_string(),
                team_id: team_id.into(),
                template_id: template_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{team_id:?} {template_id:?}"
        );
    }

    // A new sandbox from the template; the template cannot be deleted while used.
    let child = SandboxId::new();
    let mut req = create_request(child, 0);
    req.template_team_id = team.into();
    req.template_id = tmpl.into();
    c.create_sandbox(req).await.unwrap();
    let err = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.destroy_sandbox(pb::DestroySandboxRequest {
        sandbox_id: child.to_string(),
    })
    .await
    .unwrap();
    let deleted = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert!(deleted);
    let again = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert!(!again);
    let err = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: "00000000-0000-0000-0000-000000000000".into(),
            template_id: "00000000-0000-0000-0000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // FlattenRootfs: validated (a paused sandbox is refused), then UNIMPLEMENTED for
    // this runtime.
    c.pause_sandbox(pb::PauseSandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    let err = c
        .flatten_rootfs(pb::FlattenRootfsRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "paused");
    c.resume_sandbox(pb::ResumeSandboxRequest {
        sandbox_id: id.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .flatten_rootfs(pb::FlattenRootfsRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("CreateSnapshot"));
}
