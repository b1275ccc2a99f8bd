//! The Filesystem service on real files: streamed writes and reads, atomic uploads,
//! directories, symlinks, moves, removal, path resolution and bad input.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{Envd, within};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use wrenn_proto::FILE_CHUNK_SIZE;
use wrenn_proto::envd::v1::{
    EntryInfo, FileType, ListDirRequest, MakeDirRequest, MoveRequest, ReadFileRequest,
    RemoveRequest, StatRequest, WriteFileHeader, WriteFileRequest, write_file_request,
};

fn header(path: &str) -> WriteFileRequest {
    WriteFileRequest {
        msg: Some(write_file_request::Msg::Header(WriteFileHeader {
            path: path.to_owned(),
            ..Default::default()
        })),
    }
}

fn data(bytes: &[u8]) -> WriteFileRequest {
    WriteFileRequest {
        msg: Some(write_file_request::Msg::Data(bytes.to_vec().into())),
    }
}

/// Writes `content` to `path` in 64 KiB chunks.
async fn write(envd: &mut Envd, path: &str, content: &[u8]) -> EntryInfo {
    write_with(envd, header(path), content)
        .await
        .expect("write succeeds")
}

async fn write_with(
    envd: &mut Envd,
    header: WriteFileRequest,
    content: &[u8],
) -> Result<EntryInfo, tonic::Status> {
    let mut messages = vec![header];
    messages.extend(content.chunks(FILE_CHUNK_SIZE).map(data));
    let response = envd.fs.write_file(futures::stream::iter(messages)).await?;
    Ok(response.into_inner().entry.expect("entry"))
}

/// Reads `path`, checking the chunking rules on the way.
async fn read(envd: &mut Envd, path: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = envd
        .fs
        .read_file(ReadFileRequest {
            path: path.to_owned(),
        })
        .await?
        .into_inner();
    let mut content = Vec::new();
    let mut total = None;
    let mut first = true;
    while let Some(message) = within(stream.next()).await {
        let message = message?;
        assert!(message.data.len() <= FILE_CHUNK_SIZE);
        if first {
            total = Some(message.total_size.expect("size on the first message"));
            first = false;
        } else {
            assert_eq!(message.total_size, None, "size only on the first message");
        }
        content.extend(message.data);
    }
    assert_eq!(total, Some(content.len() as u64));
    Ok(content)
}

async fn stat(envd: &mut Envd, path: &str) -> Result<EntryInfo, tonic::Status> {
    Ok(envd
        .fs
        .stat(StatRequest {
            path: path.to_owned(),
        })
        .await?
        .into_inner()
        .entry
        .expect("entry"))
}

async fn mkdir(envd: &mut Envd, path: &str) -> Result<EntryInfo, tonic::Status> {
    Ok(envd
        .fs
        .make_dir(MakeDirRequest {
            path: path.to_owned(),
            user: None,
        })
        .await?
        .into_inner()
        .entry
        .expect("entry"))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".wrenn-"))
        .collect()
}

#[tokio::test]
async fn a_3_mib_file_written_in_chunks_reads_back_equal() {
    let mut envd = Envd::unix().await;
    let path = envd.path("data/blob.bin");
    let content = pattern(3 * 1024 * 1024 + 17);
    let entry = write(&mut envd, &path, &content).await;
    assert_eq!(entry.path, path);
    assert_eq!(entry.size, content.len() as u64);
    assert_eq!(entry.r#type, FileType::File as i32);
    assert_eq!(entry.mode, 0o644, "default mode, umask not applied");
    assert_eq!(entry.permissions, "-rw-r--r--");
    assert_eq!(read(&mut envd, &path).await.unwrap(), content);
    assert!(leftovers(&envd.dir.path().join("data")).is_empty());
}

#[tokio::test]
async fn an_empty_file_reads_as_one_empty_message() {
    let mut envd = Envd::unix().await;
    let path = envd.path("empty");
    write(&mut envd, &path, b"").await;
    let messages: Vec<_> = envd
        .fs
        .read_file(ReadFileRequest { path: path.clone() })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(messages.len(), 1);
    let only = messages.into_iter().next().unwrap().unwrap();
    assert!(only.data.is_empty());
    assert_eq!(only.total_size, Some(0));
}

#[tokio::test]
async fn writes_honour_mode_owner_and_append() {
    let mut envd = Envd::unix().await;
    let path = envd.path("script.sh");
    let mut with_mode = header(&path);
    if let Some(write_file_request::Msg::Header(h)) = &mut with_mode.msg {
        h.mode = Some(0o750);
        h.user = Some("nobody".into());
    }
    let entry = write_with(&mut envd, with_mode, b"#!/bin/sh\n")
        .await
        .unwrap();
    assert_eq!(entry.mode, 0o750);
    assert_eq!(entry.permissions, "-rwxr-x---");
    assert_eq!(entry.owner, "nobody");

    let mut append = header(&path);
    if let Some(write_file_request::Msg::Header(h)) = &mut append.msg {
        h.append = true;
    }
    let entry = write_with(&mut envd, append, b"echo hi\n").await.unwrap();
    assert_eq!(
        read(&mut envd, &path).await.unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        (entry.mode, entry.owner.as_str()),
        (0o750, "nobody"),
        "an existing file keeps its mode and owner"
    );

    write(&mut envd, &path, b"replaced\n").await;
    assert_eq!(read(&mut envd, &path).await.unwrap(), b"replaced\n");
}

/// A channel over its own unix connection, plus a handle that can cut that connection
/// the way a crashed client or a broken network would.
async fn cuttable_channel(
    socket: std::path::PathBuf,
) -> (
    tonic::transport::Channel,
    std::sync::Arc<std::sync::Mutex<Option<std::os::unix::net::UnixStream>>>,
) {
    let cut = std::sync::Arc::new(std::sync::Mutex::new(None));
    let handle = std::sync::Arc::clone(&cut);
    let channel = tonic::transport::Endpoint::from_static("http://envd.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            let handle = std::sync::Arc::clone(&handle);
            async move {
                let stream = std::os::unix::net::UnixStream::connect(socket)?;
                *handle.lock().unwrap() = Some(stream.try_clone()?);
                stream.set_nonblocking(true)?;
                let stream = tokio::net::UnixStream::from_std(stream)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    (channel, cut)
}

#[tokio::test]
async fn a_cancelled_upload_leaves_neither_a_partial_file_nor_temporary_files() {
    let mut envd = Envd::unix().await;
    let fresh = envd.path("fresh.bin");
    let existing = envd.path("existing.txt");
    write(&mut envd, &existing, b"original").await;

    for path in [&fresh, &existing] {
        let (channel, cut) = cuttable_channel(envd.dir.path().join("envd.sock")).await;
        let (tx, rx) = mpsc::channel(16);
        tx.send(header(path)).await.unwrap();
        for _ in 0..8 {
            tx.send(data(&[b'x'; FILE_CHUNK_SIZE])).await.unwrap();
        }
        let mut client = wrenn_proto::envd::v1::filesystem_client::FilesystemClient::new(channel);
        let upload = tokio::spawn(async move { client.write_file(ReceiverStream::new(rx)).await });
        // Wait until envd holds a temporary file with the data, then vanish mid-upload.
        within(async {
            while leftovers(envd.dir.path()).is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stream = cut.lock().unwrap().take().expect("connected");
        stream.shutdown(std::net::Shutdown::Both).unwrap();
        let _ = within(upload).await;
        drop(tx);
    }
    within(async {
        while !leftovers(envd.dir.path()).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!std::path::Path::new(&fresh).exists());
    assert_eq!(std::fs::read(&existing).unwrap(), b"original");
}

#[tokio::test]
async fn malformed_upload_streams_are_invalid_argument() {
    let mut envd = Envd::unix().await;
    let path = envd.path("bad");
    let cases: Vec<(&str, Vec<WriteFileRequest>)> = vec![
        ("no messages", vec![]),
        ("data before header", vec![data(b"x"), header(&path)]),
        (
            "two headers",
            vec![header(&path), data(b"x"), header(&path)],
        ),
        (
            "oversized chunk",
            vec![header(&path), data(&vec![0; FILE_CHUNK_SIZE + 1])],
        ),
        (
            "empty message",
            vec![header(&path), WriteFileRequest { msg: None }],
        ),
        ("empty path", vec![header("")]),
        ("a directory", vec![header(&envd.path(""))]),
    ];
    for (what, messages) in cases {
        let err = envd
            .fs
            .write_file(futures::stream::iter(messages))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    assert!(!std::path::Path::new(&path).exists());
}

#[tokio::test]
async fn mkdir_creates_parents_and_an_existing_path_is_already_exists() {
    let mut envd = Envd::unix().await;
    let deep = envd.path("a/b/c");
    let entry = mkdir(&mut envd, &deep).await.unwrap();
    assert_eq!(entry.r#type, FileType::Directory as i32);
    assert_eq!(entry.name, "c");
    assert!(entry.permissions.starts_with('d'));

    assert_eq!(
        mkdir(&mut envd, &deep).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let file = envd.path("file");
    write(&mut envd, &file, b"x").await;
    assert_eq!(
        mkdir(&mut envd, &file).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let under_file = envd.path("file/sub");
    assert_eq!(
        mkdir(&mut envd, &under_file).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn mkdir_gives_new_directories_to_the_user() {
    let mut envd = Envd::unix().await;
    let path = envd.path("owned/by/nobody");
    let entry = envd
        .fs
        .make_dir(MakeDirRequest {
            path: path.clone(),
            user: Some("nobody".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(entry.owner, "nobody");
    let parent = std::fs::metadata(envd.dir.path().join("owned")).unwrap();
    assert_eq!(
        parent.uid(),
        65534,
        "created parents belong to the user too"
    );
}

#[tokio::test]
async fn list_descends_to_the_requested_depth_parents_first_without_following_links() {
    let mut envd = Envd::unix().await;
    let root = envd.dir.path().join("tree");
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/one.txt"), "1").unwrap();
    std::fs::write(root.join("a/b/two.txt"), "22").unwrap();
    std::fs::write(root.join("top.txt"), "top").unwrap();
    std::os::unix::fs::symlink(root.join("a"), root.join("link-to-a")).unwrap();
    let list = |depth| {
        let mut fs = envd.fs.clone();
        let path = root.display().to_string();
        let prefix = format!("{path}/");
        async move {
            fs.list_dir(ListDirRequest { path, depth })
                .await
                .unwrap()
                .into_inner()
                .entries
                .into_iter()
                .map(|e| e.path.strip_prefix(&prefix).unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(0).await, ["a", "link-to-a", "top.txt"]);
    assert_eq!(list(1).await, ["a", "link-to-a", "top.txt"]);
    assert_eq!(
        list(2).await,
        ["a", "a/b", "a/one.txt", "link-to-a", "top.txt"]
    );
    assert_eq!(
        list(3).await,
        [
            "a",
            "a/b",
            "a/b/c",
            "a/b/two.txt",
            "a/one.txt",
            "link-to-a",
            "top.txt"
        ]
    );

    let err = envd
        .fs
        .list_dir(ListDirRequest {
            path: root.join("top.txt").display().to_string(),
            depth: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "a file is not a directory"
    );
}

#[tokio::test]
async fn a_symlink_is_reported_as_symlink_with_its_target_as_stored() {
    let mut envd = Envd::unix().await;
    std::fs::write(envd.dir.path().join("target.txt"), "hello").unwrap();
    std::os::unix::fs::symlink("target.txt", envd.dir.path().join("link")).unwrap();
    let link = envd.path("link");
    let entry = stat(&mut envd, &link).await.unwrap();
    assert_eq!(entry.r#type, FileType::Symlink as i32);
    assert_eq!(entry.symlink_target.as_deref(), Some("target.txt"));
    assert_eq!(entry.permissions, "lrwxrwxrwx");
    assert_eq!(entry.size, "target.txt".len() as u64);

    let target_path = envd.path("target.txt");
    let target = stat(&mut envd, &target_path).await.unwrap();
    assert_eq!(target.symlink_target, None);
    assert_eq!(
        (target.owner.as_str(), target.group.as_str()),
        ("root", "root")
    );
    let modified = target.modified_time.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - modified.seconds).abs() < 60);

    assert_eq!(
        read(&mut envd, &link).await.unwrap(),
        b"hello",
        "reads follow links"
    );
}

#[tokio::test]
async fn move_renames_and_creates_the_destinations_parents() {
    let mut envd = Envd::unix().await;
    let source = envd.path("from.txt");
    write(&mut envd, &source, b"moving").await;
    let destination = envd.path("new/parent/to.txt");
    let entry = envd
        .fs
        .r#move(MoveRequest {
            source: source.clone(),
            destination: destination.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(entry.path, destination);
    assert_eq!(read(&mut envd, &destination).await.unwrap(), b"moving");
    assert_eq!(
        stat(&mut envd, &source).await.unwrap_err().code(),
        Code::NotFound
    );

    let missing = envd
        .fs
        .r#move(MoveRequest {
            source: source.clone(),
            destination: envd.path("x"),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let full_dir = envd.path("full");
    write(&mut envd, &format!("{full_dir}/inside"), b"x").await;
    let dir = envd.path("some-dir");
    mkdir(&mut envd, &dir).await.unwrap();
    let onto_full = envd
        .fs
        .r#move(MoveRequest {
            source: dir,
            destination: full_dir,
        })
        .await
        .unwrap_err();
    assert_eq!(onto_full.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn move_across_file_systems_copies_the_tree() {
    let mut envd = Envd::unix().await;
    let shm = std::path::Path::new("/dev/shm");
    let same_device = std::fs::metadata(shm).map(|m| m.dev()).ok()
        == Some(std::fs::metadata(envd.dir.path()).unwrap().dev());
    if !shm.is_dir() || same_device {
        eprintln!("skipped: no second file system at /dev/shm");
        return;
    }
    let source = envd.dir.path().join("tree");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    std::fs::write(source.join("sub/file"), "content").unwrap();
    std::fs::set_permissions(
        source.join("sub/file"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/file", source.join("link")).unwrap();
    let destination = tempfile::tempdir_in(shm).unwrap();
    let target = destination.path().join("moved");
    envd.fs
        .r#move(MoveRequest {
            source: source.display().to_string(),
            destination: target.display().to_string(),
        })
        .await
        .unwrap();
    assert!(!source.exists());
    assert_eq!(
        std::fs::read_to_string(target.join("sub/file")).unwrap(),
        "content"
    );
    assert_eq!(
        std::fs::metadata(target.join("sub/file")).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_link(target.join("link")).unwrap().to_str(),
        Some("sub/file")
    );
    assert!(leftovers(destination.path()).is_empty());
}

#[tokio::test]
async fn remove_deletes_files_links_and_whole_trees() {
    let mut envd = Envd::unix().await;
    let tree = envd.path("tree");
    write(&mut envd, &format!("{tree}/a/b/file"), b"x").await;
    let outside = envd.path("keep.txt");
    write(&mut envd, &outside, b"keep").await;
    std::os::unix::fs::symlink(&outside, envd.dir.path().join("tree/link")).unwrap();

    envd.fs
        .remove(RemoveRequest {
            path: format!("{tree}/link"),
        })
        .await
        .unwrap();
    assert!(
        std::path::Path::new(&outside).exists(),
        "removing a link keeps its target"
    );
    envd.fs
        .remove(RemoveRequest { path: tree.clone() })
        .await
        .unwrap();
    assert!(!std::path::Path::new(&tree).exists());

    let again = envd
        .fs
        .remove(RemoveRequest { path: tree })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let root = envd
        .fs
        .remove(RemoveRequest { path: "/".into() })
        .await
        .unwrap_err();
    assert_eq!(root.code(), Code::InvalidArgument);
    let empty = envd
        .fs
        .remove(RemoveRequest {
            path: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn missing_paths_are_not_found() {
    let mut envd = Envd::unix().await;
    let missing = envd.path("missing/file");
    assert_eq!(
        stat(&mut envd, &missing).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        read(&mut envd, &missing).await.unwrap_err().code(),
        Code::NotFound
    );
    let listed = envd
        .fs
        .list_dir(ListDirRequest {
            path: missing,
            depth: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::NotFound);
}

#[tokio::test]
async fn relative_and_tilde_paths_resolve_against_home_and_may_not_escape_it() {
    let mut envd = Envd::unix().await;
    let name = format!("wrenn-envd-test-{}.txt", std::process::id());
    write(&mut envd, &name, b"in home").await;
    let absolute = format!("/root/{name}");
    assert_eq!(std::fs::read(&absolute).unwrap(), b"in home");
    assert_eq!(
        read(&mut envd, &format!("~/{name}")).await.unwrap(),
        b"in home"
    );
    envd.fs
        .remove(RemoveRequest { path: name.clone() })
        .await
        .unwrap();
    assert!(!std::path::Path::new(&absolute).exists());

    for escaping in ["../etc/passwd", "~/../etc", "a/../../b"] {
        let err = stat(&mut envd, escaping).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{escaping}");
    }
    assert_eq!(
        stat(&mut envd, "").await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn reading_a_directory_is_invalid_argument() {
    let mut envd = Envd::unix().await;
    let dir = envd.path("");
    let err = read(&mut envd, &dir).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
