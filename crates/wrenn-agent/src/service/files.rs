//! Filesystem RPCs: WriteFileStream and ReadFileStream (64 KiB chunks, never buffered
//! whole), Stat, ListDir, MakeDir, Move and RemovePath.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::hostagent::v1 as pb;

use super::convert::{entry_or_internal, file_entry, parse_sandbox_id, require_path};
use super::{AgentService, Rpc, STREAM_BUFFER, status_of};
use crate::error::{AgentError, AgentResult};

impl AgentService {
    async fn write_file_inner(
        &self,
        mut inbound: Streaming<pb::WriteFileStreamRequest>,
    ) -> AgentResult<pb::WriteFileStreamResponse> {
        use pb::write_file_stream_request::Msg;
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| AgentError::invalid("empty stream: the first message must be `meta`"))?;
        let meta = match first.msg {
            Some(Msg::Meta(m)) => m,
            _ => return Err(AgentError::invalid("the first message must be `meta`")),
        };
        let id = parse_sandbox_id(&meta.sandbox_id)?;
        require_path("path", &meta.path)?;
        let (sb, envd) = self
            .manager
            .envd_for(id, "writing files needs a running sandbox")?;
        let (tx, rx) = mpsc::channel::<envd::WriteFileRequest>(8);
        let header = envd::WriteFileRequest {
            msg: Some(envd::write_file_request::Msg::Header(
                envd::WriteFileHeader {
                    path: meta.path,
                    mode: meta.mode,
                    user: meta.user,
                    append: false,
                },
            )),
        };
        tx.send(header)
            .await
            .map_err(|_| AgentError::internal("write stream closed"))?;
        let mut fs = envd.fs.clone();
        let call = fs.write_file(ReceiverStream::new(rx));
        tokio::pin!(call);
        let pump = async move {
            while let Some(msg) = inbound.message().await? {
                match msg.msg {
                    Some(Msg::Chunk(chunk)) => {
                        if chunk.len() > wrenn_proto::FILE_CHUNK_SIZE {
                            return Err(AgentError::InvalidArgument(format!(
                                "chunk of {} bytes is larger than the {} KiB limit",
                                chunk.len(),
                                wrenn_proto::FILE_CHUNK_SIZE / 1024
                            )));
                        }
                        if chunk.is_empty() {
                            continue;
                        }
                        sb.touch();
                        let data = envd::WriteFileRequest {
                            msg: Some(envd::write_file_request::Msg::Data(chunk)),
                        };
                        if tx.send(data).await.is_err() {
                            // envd ended the call; its answer says why.
                            return Ok(());
                        }
                    }
                    Some(Msg::Meta(_)) => {
                        return Err(AgentError::invalid("a second `meta` message"));
                    }
                    None => return Err(AgentError::invalid("a message without content")),
                }
            }
            Ok::<_, AgentError>(())
        };
        tokio::pin!(pump);
        let mut pump_done = false;
        loop {
            tokio::select! {
                res = &mut call => {
                    let resp = res?.into_inner();
                    let entry = resp.entry.ok_or_else(|| AgentError::internal("guest agent returned no entry"))?;
                    return Ok(pb::WriteFileStreamResponse { path: entry.path, size: entry.size });
                }
                r = &mut pump, if !pump_done => {
                    // An invalid stream aborts the envd call (the file may be partial).
                    r?;
                    pump_done = true;
                }
            }
        }
    }
}

pub(super) async fn write_file_stream(
    svc: &AgentService,
    req: Request<Streaming<pb::WriteFileStreamRequest>>,
) -> Rpc<pb::WriteFileStreamResponse> {
    let resp = svc
        .write_file_inner(req.into_inner())
        .await
        .map_err(status_of)?;
    Ok(Response::new(resp))
}

pub(super) async fn read_file_stream(
    svc: &AgentService,
    req: Request<pb::ReadFileStreamRequest>,
) -> Rpc<ReceiverStream<Result<pb::ReadFileStreamResponse, Status>>> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    require_path("path", &r.path).map_err(status_of)?;
    let (sb, envd) = svc
        .manager
        .envd_for(id, "reading files needs a running sandbox")
        .map_err(status_of)?;
    let mut fs = envd.fs.clone();
    let mut stream = fs
        .read_file(envd::ReadFileRequest { path: r.path })
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    // Errors before the first chunk are the call's status.
    let first = stream
        .message()
        .await
        .map_err(|s| status_of(s.into()))?
        .ok_or_else(|| status_of(AgentError::Unavailable("guest agent sent no data".into())))?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let _ = tx
        .send(Ok(pb::ReadFileStreamResponse {
            chunk: first.data,
            total_size: first.total_size,
        }))
        .await;
    tokio::spawn(async move {
        let mut stream = stream;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                msg = stream.message() => match msg {
                    Ok(Some(m)) => {
                        sb.touch();
                        let out = pb::ReadFileStreamResponse { chunk: m.data, total_size: None };
                        if tx.send(Ok(out)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(s) => {
                        let _ = tx.send(Err(status_of(s.into()))).await;
                        return;
                    }
                }
            }
        }
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}

pub(super) async fn stat(
    svc: &AgentService,
    req: Request<pb::StatRequest>,
) -> Rpc<pb::StatResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    require_path("path", &r.path).map_err(status_of)?;
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "stat needs a running sandbox")
        .map_err(status_of)?;
    let mut fs = envd.fs.clone();
    let resp = fs
        .stat(envd::StatRequest { path: r.path })
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    Ok(Response::new(pb::StatResponse {
        entry: Some(entry_or_internal(resp.entry).map_err(status_of)?),
    }))
}

pub(super) async fn list_dir(
    svc: &AgentService,
    req: Request<pb::ListDirRequest>,
) -> Rpc<pb::ListDirResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    require_path("path", &r.path).map_err(status_of)?;
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "listing files needs a running sandbox")
        .map_err(status_of)?;
    let mut fs = envd.fs.clone();
    let resp = fs
        .list_dir(envd::ListDirRequest {
            path: r.path,
            depth: r.depth,
        })
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    Ok(Response::new(pb::ListDirResponse {
        entries: resp.entries.into_iter().map(file_entry).collect(),
    }))
}

pub(super) async fn make_dir(
    svc: &AgentService,
    req: Request<pb::MakeDirRequest>,
) -> Rpc<pb::MakeDirResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    require_path("path", &r.path).map_err(status_of)?;
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "creating directories needs a running sandbox")
        .map_err(status_of)?;
    let mut fs = envd.fs.clone();
    let resp = fs
        .make_dir(envd::MakeDirRequest {
            path: r.path,
            user: None,
        })
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    Ok(Response::new(pb::MakeDirResponse {
        entry: Some(entry_or_internal(resp.entry).map_err(status_of)?),
    }))
}

pub(super) async fn r#move(
    svc: &AgentService,
    req: Request<pb::MoveRequest>,
) -> Rpc<pb::MoveResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    require_path("source", &r.source).map_err(status_of)?;
    require_path("destination", &r.destination).map_err(status_of)?;
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "moving files needs a running sandbox")
        .map_err(status_of)?;
    let mut fs = envd.fs.clone();
    let resp = fs
        .r#move(envd::MoveRequest {
            source: r.source,
            destination: r.destination,
        })
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    Ok(Response::new(pb::MoveResponse {
        entry: Some(entry_or_internal(resp.entry).map_err(status_of)?),
    }))
}

pub(super) async fn remove_path(
    svc: &AgentService,
    req: Request<pb::RemovePathRequest>,
) -> Rpc<pb::RemovePathResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    require_path("path", &r.path).map_err(status_of)?;
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "removing files needs a running sandbox")
        .map_err(status_of)?;
    let mut fs = envd.fs.clone();
    fs.remove(envd::RemoveRequest { path: r.path })
        .await
        .map_err(|s| status_of(s.into()))?;
    Ok(Response::new(pb::RemovePathResponse {}))
}
