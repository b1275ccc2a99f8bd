//! envd's `Filesystem` service through the agent: streamed files and file operations.

use crate::common;

use common::{TestAgent, file_data, file_header};
use tonic::Code;
use wrenn_proto::envd::v1 as ev;

#[tokio::test]
async fn files_stream_20_mib_and_fs_operations() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let envd = agent.envd(id);
    let mut fs = envd.fs.clone();
    let path = agent.path("sub/dir/big.bin");

    // 20 MiB of non-trivial content, streamed in FILE_CHUNK_SIZE chunks.
    const SIZE: usize = 20 * 1024 * 1024;
    let content: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let written = envd
        .write_file_with(
            ev::WriteFileHeader {
                path: path.clone(),
                mode: Some(0o600),
                ..Default::default()
            },
            &content,
        )
        .await
        .unwrap();
    assert_eq!(written.size, SIZE as u64);
    assert_eq!(written.path, path);
    assert_eq!(std::fs::read(&path).unwrap(), content, "on disk");

    let messages = envd.read_file_messages(&path).await.unwrap();
    assert!(messages.len() >= SIZE / wrenn_proto::FILE_CHUNK_SIZE);
    assert_eq!(messages[0].total_size, Some(SIZE as u64));
    assert!(messages[1..].iter().all(|m| m.total_size.is_none()));
    let back: Vec<u8> = messages.into_iter().flat_map(|m| m.data).collect();
    assert!(back == content, "read back what was written");

    // Stat, ListDir, MakeDir (AlreadyExists passed through), Move, Remove.
    let st = envd.stat(&path).await.unwrap();
    assert_eq!(st.r#type(), ev::FileType::File);
    assert_eq!(st.size, SIZE as u64);
    assert_eq!(st.mode, 0o600);
    assert!(st.modified_time.is_some_and(|t| t.seconds > 0));
    let dir = agent.path("made");
    let made = fs
        .make_dir(envd.request(ev::MakeDirRequest {
            path: dir.clone(),
            user: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(made.r#type(), ev::FileType::Directory);
    let err = fs
        .make_dir(envd.request(ev::MakeDirRequest {
            path: dir.clone(),
            user: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let moved = fs
        .r#move(envd.request(ev::MoveRequest {
            source: path.clone(),
            destination: format!("{dir}/big.bin"),
        }))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(moved.name, "big.bin");
    let list = fs
        .list_dir(envd.request(ev::ListDirRequest {
            path: agent.scratch.display().to_string(),
            depth: 3,
        }))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"made") && names.contains(&"big.bin") && names.contains(&"sub"),
        "{names:?}"
    );
    fs.remove(envd.request(ev::RemoveRequest { path: dir.clone() }))
        .await
        .unwrap();
    assert!(!std::path::Path::new(&dir).exists());
    let err = envd.stat(&dir).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = envd.read_file(&agent.path("missing")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Malformed write streams.
    let err = envd
        .write_messages(vec![file_data(b"x".to_vec())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let header = file_header(ev::WriteFileHeader {
        path: agent.path("too-big"),
        ..Default::default()
    });
    let err = envd
        .write_messages(vec![
            header.clone(),
            file_data(vec![0; wrenn_proto::FILE_CHUNK_SIZE + 1]),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = envd
        .write_messages(vec![header.clone(), header])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = envd.stat("").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
