//! Disks: the writable layer lives on a sized ext4 file on a loop device.

mod capacity;
mod devices;
mod lifecycle;

use crate::process_runtime::Sandbox;

/// `df -B1 /` inside: (size, used) in bytes.
async fn df_root(sb: &Sandbox) -> (u64, u64) {
    let out = sb.ok("df -B1 / | tail -n 1").await;
    let fields: Vec<&str> = out.split_whitespace().collect();
    (fields[1].parse().unwrap(), fields[2].parse().unwrap())
}
