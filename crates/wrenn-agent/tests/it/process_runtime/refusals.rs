//! What the runtime refuses or fails to start: bad input, a failing start, a missing
//! default image and templates on the host root, each leaving nothing behind.

use std::path::Path;

use super::{Host, config, loops_under, options, wait_until};
use crate::common::envd_binary;
use wrenn_agent::image::ImageRef;
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::runtime::{Runtime, RuntimeError};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, TeamId, TemplateId};
use wrenn_core::layout::Layout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_leaves_nothing_behind() {
    let host_env = Host::new().await;
    let runtime = &host_env.runtime;
    let unknown = config(TeamId::new(), TemplateId::new());
    let err = runtime.create(&unknown).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::TemplateNotFound(t) if t == unknown.template_id),
        "{err}"
    );
    let id = unknown.id;
    assert!(!host_env.layout().sandbox_dir(id).exists());
    assert!(!runtime.sandbox_cgroup(id).exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );

    let mut no_cpu = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
    no_cpu.vcpus = 0;
    assert!(matches!(
        runtime.create(&no_cpu).await,
        Err(RuntimeError::FailedPrecondition(_))
    ));
    assert!(!host_env.layout().sandbox_dir(no_cpu.id).exists());

    let sb = host_env.sandbox().await;
    let twice = runtime.create(&sb.config).await.unwrap_err();
    assert!(
        matches!(twice, RuntimeError::FailedPrecondition(_)),
        "{twice}"
    );
    assert_eq!(sb.ok("echo unharmed").await, "unharmed\n");

    let missing = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
    assert!(matches!(
        runtime.restore(&missing).await,
        Err(RuntimeError::NotFound(_))
    ));
    runtime.destroy(missing.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_fails_to_start_reports_why_and_leaves_nothing_behind() {
    let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
    let options = ProcessRuntimeOptions {
        // Not an init program: `sh` tries to run a script named after the init argument.
        init_program: Some("/bin/sh".into()),
        ..options().await
    };
    let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
    let runtime = ProcessRuntime::new(Layout::new(dir.path()), envd, options)
        .await
        .unwrap();
    let config = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);

    let err = wrenn_core::report::error_chain(&runtime.create(&config).await.unwrap_err());
    assert!(err.contains("exited during start"), "{err}");
    assert!(
        err.contains("__wrenn-sandbox-init"),
        "the log tail is reported: {err}"
    );
    let id = config.id;
    assert!(!runtime.layout().sandbox_dir(id).exists());
    assert!(
        wait_until(|| loops_under(&runtime.layout().sandbox_dir(id)).is_empty()),
        "the disk's loop device was left bound"
    );
    assert!(!runtime.sandbox_cgroup(id).exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_image_is_required_and_templates_on_the_host_root_are_refused() {
    let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
    let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let err = ProcessRuntime::new(
        layout.clone(),
        envd.clone(),
        ProcessRuntimeOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Unsupported(m) if m.contains("wrenn image build")),
        "{err}"
    );
    let gone = ImageRef {
        hash: "0".repeat(64),
        rootfs: dir.path().join("no-such-build/rootfs"),
    };
    let err = ProcessRuntime::new(
        layout.clone(),
        envd.clone(),
        ProcessRuntimeOptions {
            base_image: Some(gone.clone()),
            ..ProcessRuntimeOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Unsupported(m) if m.contains("gone")),
        "{err}"
    );

    let host_env = Host::new().await;
    let team = TeamId::new();
    let write_template = |template: TemplateId, base: serde_json::Value| {
        let dir = host_env.layout().template_dir(team, template);
        std::fs::create_dir_all(dir.join("layers/0/etc")).unwrap();
        let manifest = serde_json::json!({
            "format": "wrenn-process-template/1",
            "base": base,
            "layers": ["layers/0"],
        });
        std::fs::write(dir.join("template.json"), manifest.to_string()).unwrap();
    };
    let on_host = TemplateId::new();
    write_template(on_host, serde_json::json!("host"));
    let on_gone_image = TemplateId::new();
    write_template(on_gone_image, serde_json::json!({ "image": gone }));
    for (template, expected) in [(on_host, "older Wrenn"), (on_gone_image, "gone")] {
        let config = config(team, template);
        let err = host_env.runtime.create(&config).await.unwrap_err();
        assert!(
            matches!(&err, RuntimeError::FailedPrecondition(m) if m.contains(expected)),
            "{err}"
        );
        assert!(!host_env.layout().sandbox_dir(config.id).exists());
    }
}
