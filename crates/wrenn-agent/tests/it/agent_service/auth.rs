//! The agent's auth token: required, when configured, on its own calls and the envd
//! calls it forwards.

use crate::common;

use std::time::Duration;

use common::{Setup, TestAgent, create_request, shell};
use tonic::Code;
use wrenn_core::id::SandboxId;
use wrenn_proto::hostagent::v1 as pb;

#[tokio::test]
async fn auth_token_is_required_when_configured() {
    let agent = TestAgent::start_with(Setup {
        auth_token: Some("s3cret".into()),
        ..Setup::default()
    })
    .await;
    let err = agent
        .client
        .clone()
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ListSandboxesRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        agent
            .client
            .clone()
            .list_sandboxes(req)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut req = tonic::Request::new(pb::ListSandboxesRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    agent.client.clone().list_sandboxes(req).await.unwrap();

    // The forwarded envd calls are the agent's calls too: refused without the token,
    // whatever sandbox they name, before anything reaches envd.
    let id = SandboxId::new();
    let mut req = tonic::Request::new(create_request(id, 0));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    agent.client.clone().create_sandbox(req).await.unwrap();
    let marker = agent.path("unauthenticated");
    for envd in [agent.envd(id), agent.envd(id).with_bearer("wrong")] {
        let refused = [
            envd.list().await.map(drop),
            envd.start(shell(&format!("touch {marker}")))
                .await
                .map(drop),
            envd.write_file(&marker, b"no").await.map(drop),
            envd.read_file(&agent.path("none")).await.map(drop),
            envd.stat("/").await.map(drop),
        ];
        for outcome in refused {
            assert_eq!(outcome.unwrap_err().code(), Code::Unauthenticated);
        }
    }
    let err = agent.envd(SandboxId::new()).stat("/").await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "auth comes before routing"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!std::path::Path::new(&marker).exists());
    let authorized = agent.envd(id).with_bearer("s3cret");
    assert_eq!(authorized.sh("echo in").await.unwrap().stdout, "in\n");
    authorized.write_file(&marker, b"yes").await.unwrap();
    assert_eq!(authorized.read_file(&marker).await.unwrap(), b"yes");
}
