//! `wrenn image build`: builds (or finds) the default capsule image.
//!
//! The image lives in `$WRENN_DIR/images/base/` (`--dir`), or in `$WRENN_IMAGE_CACHE`
//! when that is set (a store shared between directories: tests and CI build once per
//! machine). See `wrenn_agent::image` for what a build contains.

use std::path::Path;
use std::time::Instant;

use wrenn_agent::image::{self, BuildOptions, BuiltImage, LogProgress};
use wrenn_core::layout::Layout;

/// The default image for the `$WRENN_DIR` `dir`: the cached build, or a new one.
/// Returns the image and, when it had to be built, how long that took.
pub async fn ensure(
    dir: &Path,
    force: bool,
) -> Result<(BuiltImage, Option<std::time::Duration>), String> {
    let store = image::store_dir(&Layout::new(dir));
    tokio::task::spawn_blocking(move || {
        if !force {
            if let Some(found) = image::find_default(&store).map_err(|e| report(&e))? {
                return Ok((found, None));
            }
        }
        let started = Instant::now();
        let options = BuildOptions {
            force,
            ..BuildOptions::from_env()
        };
        let built = image::ensure_default(&store, &options, &LogProgress).map_err(|e| {
            format!(
                "cannot build the default image in {}: {}",
                store.display(),
                report(&e)
            )
        })?;
        Ok((built, Some(started.elapsed())))
    })
    .await
    .map_err(|e| format!("the image build task failed: {e}"))?
}

/// An error with its chain of causes.
fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// `wrenn image build [--dir DIR] [--force]`.
pub async fn build(dir: &Path, force: bool) -> Result<(), String> {
    let (image, took) = ensure(dir, force).await?;
    let m = &image.manifest;
    match took {
        Some(t) => println!("built the default image in {:.0} s", t.as_secs_f64()),
        None => println!("the default image is already built (use --force to rebuild)"),
    }
    println!("  build     {}", image.dir.display());
    println!(
        "  recipe    {} (Debian {}, {} packages)",
        m.hash,
        m.recipe.suite,
        m.packages.len()
    );
    println!("  rootfs/   {} MiB", m.rootfs_bytes >> 20);
    println!(
        "  ext4      {} ({} MiB, sparse)",
        image.ext4().display(),
        m.ext4.bytes >> 20
    );
    if let (Some(k), Some(vmlinux)) = (&m.kernel, image.vmlinux()) {
        println!("  kernel    {} ({})", vmlinux.display(), k.release);
    }
    Ok(())
}

/// Whether the `$WRENN_DIR` `dir` has no build of the default image yet.
pub fn needs_build(dir: &Path) -> bool {
    let store = image::store_dir(&Layout::new(dir));
    !matches!(image::find_default(&store), Ok(Some(_)))
}
