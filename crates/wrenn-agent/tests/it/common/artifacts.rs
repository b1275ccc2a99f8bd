//! The envd binary and the default image, built once per test run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `target/<profile>/wrenn-envd`, built (or brought up to date) once per test run: the
/// test binary lives in `target/<profile>/deps/`, so its grandparent is the profile
/// directory whatever `CARGO_TARGET_DIR` says.
pub fn envd_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = profile_dir.join("wrenn-envd");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "wrenn-envd", "--bin", "wrenn-envd"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p wrenn-envd");
        assert!(status.success(), "building wrenn-envd failed");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// The default image for tests that start real sandboxes: built once per machine into
/// `$WRENN_IMAGE_CACHE` (default `/var/cache/wrenn/test-images`) and shared by every
/// test binary (concurrent binaries wait for one build).
pub fn test_image() -> wrenn_agent::image::BuiltImage {
    static IMAGE: OnceLock<wrenn_agent::image::BuiltImage> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            wrenn_agent::image::ensure_shared_for_tests().expect("build the default image")
        })
        .clone()
}

/// Process-runtime options on [`test_image`].
pub async fn process_options() -> wrenn_agent::runtime::process::ProcessRuntimeOptions {
    let image = tokio::task::spawn_blocking(test_image)
        .await
        .expect("image task");
    wrenn_agent::runtime::process::ProcessRuntimeOptions {
        base_image: Some(image.reference()),
        ..Default::default()
    }
}
