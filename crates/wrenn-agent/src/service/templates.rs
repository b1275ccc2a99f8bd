//! ExportTemplate and ImportTemplate: a template's directory streamed out of one host
//! and into another (the control plane relays; see `manager::template_transfer`).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::hostagent::v1 as pb;

use super::convert::parse_template_target;
use super::{AgentService, Rpc, status_of};
use crate::error::AgentError;

/// The archive stream ExportTemplate answers with.
pub(super) type ArchiveStream =
    Pin<Box<dyn Stream<Item = Result<pb::TemplateArchiveChunk, Status>> + Send + 'static>>;

pub(super) async fn export_template(
    svc: &AgentService,
    req: Request<pb::ExportTemplateRequest>,
) -> Rpc<ArchiveStream> {
    let r = req.into_inner();
    let (team, template) = parse_template_target(&r.team_id, &r.template_id).map_err(status_of)?;
    let chunks = svc
        .manager
        .export_template(team, template)
        .await
        .map_err(status_of)?;
    let stream = chunks.map(|c| {
        c.map(|data| pb::TemplateArchiveChunk { data })
            .map_err(status_of)
    });
    Ok(Response::new(Box::pin(stream)))
}

pub(super) async fn import_template(
    svc: &AgentService,
    req: Request<Streaming<pb::ImportTemplateRequest>>,
) -> Rpc<pb::ImportTemplateResponse> {
    let mut stream = req.into_inner();
    let first = stream
        .message()
        .await?
        .ok_or_else(|| status_of(AgentError::invalid("ImportTemplate: no message")))?;
    let (team, template) =
        parse_template_target(&first.team_id, &first.template_id).map_err(status_of)?;
    let head = futures::stream::iter([Ok::<_, Status>(first.data)]);
    let rest = stream.map(|m| m.map(|m| m.data));
    let size_bytes = svc
        .manager
        .import_template(team, template, head.chain(rest))
        .await
        .map_err(status_of)?;
    tracing::info!(team_id = %team, template_id = %template, size_bytes, "template imported");
    Ok(Response::new(pb::ImportTemplateResponse { size_bytes }))
}
