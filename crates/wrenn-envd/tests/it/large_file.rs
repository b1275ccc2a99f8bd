//! A 200 MiB file goes through envd and back while envd's memory stays bounded.
//! (Its own test binary, so no other test's allocations disturb the measurement.)

use crate::common;

use common::Envd;
use futures::StreamExt;
use wrenn_proto::FILE_CHUNK_SIZE;
use wrenn_proto::envd::v1::{
    ReadFileRequest, WriteFileHeader, WriteFileRequest, write_file_request,
};

const CHUNKS: usize = 200 * 1024 * 1024 / FILE_CHUNK_SIZE;

/// Chunk `i` of the file: its index, then a fixed pattern.
fn chunk(i: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..FILE_CHUNK_SIZE).map(|b| (b % 253) as u8).collect();
    data[..8].copy_from_slice(&(i as u64).to_le_bytes());
    data
}

/// A field of /proc/self/status in KiB. The server runs in this process.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resets the peak RSS counter (VmHWM) so it measures only what follows.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_is_written_and_read_back_with_bounded_envd_memory() {
    let mut envd = Envd::unix().await;
    let path = envd.path("big.bin");

    // Warm up allocator pools and connection buffers before the baseline.
    let warmup = vec![
        WriteFileRequest {
            msg: Some(write_file_request::Msg::Header(WriteFileHeader {
                path: envd.path("warm"),
                ..Default::default()
            })),
        },
        WriteFileRequest {
            msg: Some(write_file_request::Msg::Data(chunk(0).into())),
        },
    ];
    envd.fs
        .write_file(futures::stream::iter(warmup))
        .await
        .unwrap();

    let peak_resets = reset_peak_rss();
    let before = status_kib("VmRSS:");

    let header = WriteFileRequest {
        msg: Some(write_file_request::Msg::Header(WriteFileHeader {
            path: path.clone(),
            ..Default::default()
        })),
    };
    let messages = futures::stream::once(async move { header }).chain(futures::stream::iter(
        (0..CHUNKS).map(|i| WriteFileRequest {
            msg: Some(write_file_request::Msg::Data(chunk(i).into())),
        }),
    ));
    let entry = envd
        .fs
        .write_file(messages)
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(entry.size, (CHUNKS * FILE_CHUNK_SIZE) as u64);
    let after_write = status_kib(if peak_resets { "VmHWM:" } else { "VmRSS:" });

    let mut stream = envd
        .fs
        .read_file(ReadFileRequest { path })
        .await
        .unwrap()
        .into_inner();
    let mut index = 0;
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        assert!(message.data == chunk(index), "chunk {index} differs");
        index += 1;
    }
    assert_eq!(index, CHUNKS);
    let after_read = status_kib(if peak_resets { "VmHWM:" } else { "VmRSS:" });

    let growth_mib = (after_write.max(after_read).saturating_sub(before)) / 1024;
    eprintln!(
        "RSS before {before} KiB, {} after write {after_write} KiB, after read {after_read} KiB",
        if peak_resets { "peak" } else { "current" }
    );
    assert!(
        growth_mib < 64,
        "envd grew by {growth_mib} MiB moving a 200 MiB file"
    );
}
