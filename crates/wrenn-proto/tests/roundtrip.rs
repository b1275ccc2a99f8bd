//! Round-trip tests of the generated code: a real tonic server and client over loopback
//! TCP, prost encoding of the process event oneofs, and the exported descriptor set.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf};

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::envd::v1::{
    filesystem_client::FilesystemClient,
    filesystem_server::{Filesystem, FilesystemServer},
    system_client::SystemClient,
    system_server::{System, SystemServer},
};
use wrenn_proto::{FILE_CHUNK_SIZE, FILE_DESCRIPTOR_SET};

// ---------------------------------------------------------------------------------------
// A minimal envd: System.Health and Filesystem.{WriteFile, ReadFile} on real files.
// ---------------------------------------------------------------------------------------

struct TestSystem;

#[tonic::async_trait]
impl System for TestSystem {
    async fn health(
        &self,
        _request: Request<envd::HealthRequest>,
    ) -> Result<Response<envd::HealthResponse>, Status> {
        Ok(Response::new(envd::HealthResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_sec: 0,
        }))
    }

    async fn init(
        &self,
        _request: Request<envd::InitRequest>,
    ) -> Result<Response<envd::InitResponse>, Status> {
        Err(Status::unimplemented("init"))
    }

    async fn prepare_snapshot(
        &self,
        _request: Request<envd::PrepareSnapshotRequest>,
    ) -> Result<Response<envd::PrepareSnapshotResponse>, Status> {
        Err(Status::unimplemented("prepare_snapshot"))
    }

    async fn metrics(
        &self,
        _request: Request<envd::MetricsRequest>,
    ) -> Result<Response<envd::MetricsResponse>, Status> {
        Err(Status::unimplemented("metrics"))
    }

    async fn get_envs(
        &self,
        _request: Request<envd::GetEnvsRequest>,
    ) -> Result<Response<envd::GetEnvsResponse>, Status> {
        Err(Status::unimplemented("get_envs"))
    }
}

/// Serves files below `root`; request paths are relative to it.
struct TestFilesystem {
    root: PathBuf,
}

impl TestFilesystem {
    fn resolve(&self, path: &str) -> Result<PathBuf, Status> {
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(Status::invalid_argument(format!("bad path {path:?}")));
        }
        Ok(self.root.join(path))
    }
}

fn io_status(err: std::io::Error) -> Status {
    match err.kind() {
        std::io::ErrorKind::NotFound => Status::not_found(err.to_string()),
        _ => Status::internal(err.to_string()),
    }
}

#[tonic::async_trait]
impl Filesystem for TestFilesystem {
    async fn stat(
        &self,
        _request: Request<envd::StatRequest>,
    ) -> Result<Response<envd::StatResponse>, Status> {
        Err(Status::unimplemented("stat"))
    }

    async fn list_dir(
        &self,
        _request: Request<envd::ListDirRequest>,
    ) -> Result<Response<envd::ListDirResponse>, Status> {
        Err(Status::unimplemented("list_dir"))
    }

    async fn make_dir(
        &self,
        _request: Request<envd::MakeDirRequest>,
    ) -> Result<Response<envd::MakeDirResponse>, Status> {
        Err(Status::unimplemented("make_dir"))
    }

    async fn r#move(
        &self,
        _request: Request<envd::MoveRequest>,
    ) -> Result<Response<envd::MoveResponse>, Status> {
        Err(Status::unimplemented("move"))
    }

    async fn remove(
        &self,
        _request: Request<envd::RemoveRequest>,
    ) -> Result<Response<envd::RemoveResponse>, Status> {
        Err(Status::unimplemented("remove"))
    }

    type ReadFileStream = ReceiverStream<Result<envd::ReadFileResponse, Status>>;

    async fn read_file(
        &self,
        request: Request<envd::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let path = self.resolve(&request.into_inner().path)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(io_status)?;
        let total = file.metadata().await.map_err(io_status)?.len();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; FILE_CHUNK_SIZE];
            let mut first = true;
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(err) => {
                        let _ = tx.send(Err(io_status(err))).await;
                        return;
                    }
                };
                if n == 0 && !first {
                    return;
                }
                let msg = envd::ReadFileResponse {
                    data: buf[..n].to_vec().into(),
                    total_size: first.then_some(total),
                };
                first = false;
                if tx.send(Ok(msg)).await.is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<envd::WriteFileRequest>>,
    ) -> Result<Response<envd::WriteFileResponse>, Status> {
        use envd::write_file_request::Msg;

        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(envd::WriteFileRequest {
                msg: Some(Msg::Header(header)),
            }) => header,
            _ => return Err(Status::invalid_argument("first message must be a header")),
        };
        let path = self.resolve(&header.path)?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(header.append)
            .truncate(!header.append)
            .open(&path)
            .await
            .map_err(io_status)?;
        while let Some(msg) = stream.message().await? {
            match msg.msg {
                Some(Msg::Data(data)) if data.len() <= FILE_CHUNK_SIZE => {
                    file.write_all(&data).await.map_err(io_status)?;
                }
                Some(Msg::Data(data)) => {
                    return Err(Status::invalid_argument(format!(
                        "chunk of {} bytes exceeds {FILE_CHUNK_SIZE}",
                        data.len()
                    )));
                }
                _ => return Err(Status::invalid_argument("expected a data chunk")),
            }
        }
        file.flush().await.map_err(io_status)?;
        let size = file.metadata().await.map_err(io_status)?.len();
        Ok(Response::new(envd::WriteFileResponse {
            entry: Some(envd::EntryInfo {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                r#type: envd::FileType::File as i32,
                path: path.to_string_lossy().into_owned(),
                size,
                ..Default::default()
            }),
        }))
    }
}

/// Starts the test envd on an ephemeral loopback port and returns its address.
async fn start_server(root: PathBuf) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        Server::builder()
            .add_service(SystemServer::new(TestSystem))
            .add_service(FilesystemServer::new(TestFilesystem { root }))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
    addr
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn header(path: &str) -> envd::WriteFileRequest {
    envd::WriteFileRequest {
        msg: Some(envd::write_file_request::Msg::Header(
            envd::WriteFileHeader {
                path: path.to_owned(),
                mode: Some(0o644),
                user: None,
                append: false,
            },
        )),
    }
}

fn data(bytes: &[u8]) -> envd::WriteFileRequest {
    envd::WriteFileRequest {
        msg: Some(envd::write_file_request::Msg::Data(bytes.to_vec().into())),
    }
}

#[tokio::test]
async fn grpc_over_loopback_health_and_streamed_file_roundtrip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = start_server(dir.path().to_path_buf()).await;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");

    // System.Health reports the crate version.
    let mut system = SystemClient::new(channel.clone());
    let health = system
        .health(envd::HealthRequest {})
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

    // WriteFile: header, then 3 chunks of exactly FILE_CHUNK_SIZE bytes.
    let content = pattern(3 * FILE_CHUNK_SIZE);
    let mut messages = vec![header("blob.bin")];
    messages.extend(content.chunks(FILE_CHUNK_SIZE).map(data));
    assert_eq!(messages.len(), 4);
    let mut fs = FilesystemClient::new(channel.clone());
    let written = fs
        .write_file(tokio_stream::iter(messages))
        .await
        .expect("write_file")
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!(written.size, content.len() as u64);
    assert_eq!(written.name, "blob.bin");
    assert_eq!(written.r#type(), envd::FileType::File);
    let on_disk = std::fs::read(dir.path().join("blob.bin")).expect("read back from disk");
    assert_eq!(on_disk, content, "bytes on disk differ from bytes sent");

    // ReadFile: streamed back in chunks no larger than FILE_CHUNK_SIZE; only the first
    // message carries the total size.
    let mut stream = fs
        .read_file(envd::ReadFileRequest {
            path: "blob.bin".to_owned(),
        })
        .await
        .expect("read_file")
        .into_inner();
    let mut read = Vec::new();
    let mut chunks = 0;
    while let Some(msg) = stream.message().await.expect("read chunk") {
        assert!(msg.data.len() <= FILE_CHUNK_SIZE, "oversized chunk");
        if chunks == 0 {
            assert_eq!(msg.total_size, Some(content.len() as u64));
        } else {
            assert_eq!(msg.total_size, None);
        }
        chunks += 1;
        read.extend_from_slice(&msg.data);
    }
    assert!(
        chunks >= 3,
        "expected a streamed read, got {chunks} message(s)"
    );
    assert_eq!(read, content, "bytes read back differ from bytes written");

    // Bad input travels back as the right status code.
    let err = fs
        .write_file(tokio_stream::iter(vec![data(b"no header first")]))
        .await
        .expect_err("data before header must fail");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("header"), "{err:?}");
    let oversized = vec![0u8; FILE_CHUNK_SIZE + 1];
    let err = fs
        .write_file(tokio_stream::iter(vec![
            header("big.bin"),
            data(&oversized),
        ]))
        .await
        .expect_err("oversized chunk must fail");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("exceeds"), "{err:?}");
    let err = fs
        .read_file(envd::ReadFileRequest {
            path: "missing.bin".to_owned(),
        })
        .await
        .expect_err("missing file must fail");
    assert_eq!(err.code(), Code::NotFound);
    let err = system
        .metrics(envd::MetricsRequest {})
        .await
        .expect_err("metrics is not implemented by the test server");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn empty_file_reads_as_one_message_with_size_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = start_server(dir.path().to_path_buf()).await;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut fs = FilesystemClient::new(channel);
    let written = fs
        .write_file(tokio_stream::iter(vec![header("empty")]))
        .await
        .expect("write empty file")
        .into_inner();
    assert_eq!(written.entry.expect("entry").size, 0);
    let mut stream = fs
        .read_file(envd::ReadFileRequest {
            path: "empty".to_owned(),
        })
        .await
        .expect("read_file")
        .into_inner();
    let first = stream.message().await.expect("first").expect("one message");
    assert_eq!(first.total_size, Some(0));
    assert!(first.data.is_empty());
    assert!(stream.message().await.expect("end").is_none());
}

// ---------------------------------------------------------------------------------------
// prost encoding of the ProcessEvent oneofs.
// ---------------------------------------------------------------------------------------

fn roundtrip(event: &envd::ProcessEvent) -> envd::ProcessEvent {
    let bytes = event.encode_to_vec();
    envd::ProcessEvent::decode(bytes.as_slice()).expect("decode")
}

#[test]
fn process_event_oneofs_roundtrip() {
    use envd::data_event::Output;
    use envd::process_event::Event;

    let start = envd::ProcessEvent {
        event: Some(Event::Start(envd::StartEvent {
            pid: 4242,
            tag: "proc-0badcafe".to_owned(),
        })),
    };
    match roundtrip(&start).event {
        Some(Event::Start(s)) => {
            assert_eq!(s.pid, 4242);
            assert_eq!(s.tag, "proc-0badcafe");
        }
        other => panic!("expected start, got {other:?}"),
    }

    for output in [
        Output::Stdout(b"out\n".to_vec()),
        Output::Stderr(vec![0xff, 0x00, 0xfe]),
        Output::Pty(b"\x1b[31mred\x1b[0m".to_vec()),
    ] {
        let event = envd::ProcessEvent {
            event: Some(Event::Data(envd::DataEvent {
                output: Some(output.clone()),
            })),
        };
        match roundtrip(&event).event {
            Some(Event::Data(d)) => assert_eq!(d.output, Some(output)),
            other => panic!("expected data, got {other:?}"),
        }
    }

    let end = envd::ProcessEvent {
        event: Some(Event::End(envd::EndEvent {
            exit_code: -1,
            exited: false,
            status: "signal: killed".to_owned(),
            error: None,
        })),
    };
    let decoded = roundtrip(&end);
    assert_eq!(decoded, end);
    match decoded.event {
        Some(Event::End(e)) => {
            assert_eq!(e.exit_code, -1);
            assert!(!e.exited);
            assert_eq!(e.status, "signal: killed");
            assert_eq!(e.error, None);
        }
        other => panic!("expected end, got {other:?}"),
    }
    // exit_code is sint32: -1 is zigzag-encoded in a single byte, not ten.
    let only_code = envd::EndEvent {
        exit_code: -1,
        ..Default::default()
    };
    assert_eq!(only_code.encode_to_vec(), vec![0x08, 0x01]);

    let keepalive = envd::ProcessEvent {
        event: Some(Event::Keepalive(envd::KeepAlive {})),
    };
    assert!(matches!(
        roundtrip(&keepalive).event,
        Some(Event::Keepalive(_))
    ));

    // An unset oneof stays unset; it is distinguishable from every variant.
    let empty = envd::ProcessEvent { event: None };
    assert!(empty.encode_to_vec().is_empty());
    assert_eq!(roundtrip(&empty).event, None);

    // Decoding garbage fails instead of producing an event.
    assert!(envd::ProcessEvent::decode(&[0x0a, 0xff][..]).is_err());
}

// ---------------------------------------------------------------------------------------
// The exported descriptor set.
// ---------------------------------------------------------------------------------------

#[test]
fn descriptor_set_contains_both_packages_and_every_service() {
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set");
    let packages: BTreeSet<&str> = fds.file.iter().map(|f| f.package()).collect();
    assert!(packages.contains("hostagent.v1"), "{packages:?}");
    assert!(packages.contains("envd.v1"), "{packages:?}");

    let methods = |package: &str, service: &str| -> BTreeSet<String> {
        fds.file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == service)
            .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
            .collect()
    };
    let expect = |package: &str, service: &str, names: &[&str]| {
        let got = methods(package, service);
        assert!(!got.is_empty(), "service {package}.{service} missing");
        let want: BTreeSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(got, want, "methods of {package}.{service}");
    };

    expect(
        "hostagent.v1",
        "HostAgentService",
        &[
            "CreateSandbox",
            "DestroySandbox",
            "PauseSandbox",
            "ResumeSandbox",
            "HibernateSandbox",
            "PingSandbox",
            "ListSandboxes",
            "PauseAll",
            "Terminate",
            "CreateSnapshot",
            "DeleteSnapshot",
            "ExportTemplate",
            "ImportTemplate",
            "FlattenRootfs",
            "GetSandboxMetrics",
            "FlushSandboxMetrics",
            "GetHostMetrics",
        ],
    );
    expect(
        "envd.v1",
        "Process",
        &[
            "List",
            "Start",
            "Connect",
            "Update",
            "StreamInput",
            "SendInput",
            "SendSignal",
            "CloseStdin",
        ],
    );
    expect(
        "envd.v1",
        "Filesystem",
        &[
            "Stat",
            "ListDir",
            "MakeDir",
            "Move",
            "Remove",
            "ReadFile",
            "WriteFile",
        ],
    );
    expect(
        "envd.v1",
        "System",
        &["Health", "Init", "PrepareSnapshot", "Metrics", "GetEnvs"],
    );
    expect("envd.v1", "Tunnel", &["Connect"]);

    // Streaming shapes are part of the contract.
    let method = |package: &str, service: &str, name: &str| {
        fds.file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == service)
            .flat_map(|s| s.method.iter())
            .find(|m| m.name() == name)
            .cloned()
            .unwrap_or_else(|| panic!("{package}.{service}/{name} missing"))
    };
    let streaming =
        |m: prost_types::MethodDescriptorProto| (m.client_streaming(), m.server_streaming());
    assert_eq!(
        streaming(method("envd.v1", "Process", "Start")),
        (false, true)
    );
    assert_eq!(
        streaming(method("envd.v1", "Process", "Connect")),
        (false, true)
    );
    assert_eq!(
        streaming(method("envd.v1", "Process", "StreamInput")),
        (true, false)
    );
    assert_eq!(
        streaming(method("envd.v1", "Filesystem", "ReadFile")),
        (false, true)
    );
    assert_eq!(
        streaming(method("envd.v1", "Filesystem", "WriteFile")),
        (true, false)
    );
    assert_eq!(
        streaming(method("envd.v1", "Tunnel", "Connect")),
        (true, true)
    );
    assert_eq!(
        streaming(method("hostagent.v1", "HostAgentService", "ExportTemplate")),
        (false, true)
    );
    assert_eq!(
        streaming(method("hostagent.v1", "HostAgentService", "ImportTemplate")),
        (true, false)
    );

    // The sandbox status enum carries every state, with its wire names.
    let status_values: BTreeSet<&str> = fds
        .file
        .iter()
        .filter(|f| f.package() == "hostagent.v1")
        .flat_map(|f| f.enum_type.iter())
        .filter(|e| e.name() == "SandboxStatus")
        .flat_map(|e| e.value.iter().map(|v| v.name()))
        .collect();
    for state in [
        "UNSPECIFIED",
        "STARTING",
        "RUNNING",
        "PAUSING",
        "PAUSED",
        "HIBERNATED",
        "RESUMING",
        "STOPPING",
        "STOPPED",
        "ERROR",
    ] {
        let name = format!("SANDBOX_STATUS_{state}");
        assert!(status_values.contains(name.as_str()), "{name} missing");
    }
}

#[test]
fn signal_enums_use_linux_numbers() {
    assert_eq!(envd::Signal::Sigterm as i32, 15);
    assert_eq!(envd::Signal::Sigkill as i32, 9);
    assert_eq!(envd::Signal::Sigint as i32, 2);
    assert_eq!(envd::Signal::Sighup as i32, 1);
    assert_eq!(envd::Signal::Unspecified as i32, 0);
    assert_eq!(envd::Signal::try_from(3), Err(prost::UnknownEnumValue(3)));
}
