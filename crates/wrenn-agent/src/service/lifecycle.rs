//! Lifecycle RPCs, each run by the manager on its own task: CreateSandbox,
//! DestroySandbox, PauseSandbox, ResumeSandbox, HibernateSandbox, PingSandbox,
//! ListSandboxes, PauseAll and Terminate; templates: CreateSnapshot, DeleteSnapshot
//! and FlattenRootfs.

use tonic::{Request, Response};
use wrenn_core::id::{TeamId, TemplateId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_proto::hostagent::v1 as pb;

use super::convert::{
    check_range, parse_sandbox_id, parse_template_target, parse_uuid, sandbox_info, value_or,
};
use super::{
    AgentService, DEFAULT_DISK_MB, DEFAULT_MEMORY_MB, DEFAULT_VCPUS, DISK_RANGE_MB, MAX_VCPUS,
    MEMORY_RANGE_MB, Rpc, status_of,
};
use crate::error::AgentError;
use crate::manager::{CreateSpec, HibernateCause};
use crate::runtime::SandboxConfig;

pub(super) async fn create_sandbox(
    svc: &AgentService,
    req: Request<pb::CreateSandboxRequest>,
) -> Rpc<pb::CreateSandboxResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    let team = TeamId::from_uuid(parse_uuid("team_id", &r.team_id, true).map_err(status_of)?);
    let template = TemplateId(parse_uuid("template_id", &r.template_id, true).map_err(status_of)?);
    let template_team = TeamId::from_uuid(
        parse_uuid("template_team_id", &r.template_team_id, true).map_err(status_of)?,
    );
    let vcpus = value_or(r.vcpus, DEFAULT_VCPUS);
    let memory_mb = value_or(r.memory_mb, DEFAULT_MEMORY_MB);
    let disk_size_mb = value_or(r.disk_size_mb, DEFAULT_DISK_MB);
    check_range("vcpus", vcpus, (1, MAX_VCPUS)).map_err(status_of)?;
    check_range("memory_mb", memory_mb, MEMORY_RANGE_MB).map_err(status_of)?;
    check_range("disk_size_mb", disk_size_mb, DISK_RANGE_MB).map_err(status_of)?;
    let spec = CreateSpec {
        config: SandboxConfig {
            id,
            team_id: team,
            template_team_id: template_team,
            template_id: template,
            vcpus,
            memory_mb,
            disk_size_mb,
            default_user: r.default_user,
            default_env: r.default_env.into_iter().collect(),
        },
        template_name: r.template,
        timeout_sec: r.timeout_sec,
        metadata: r.metadata.into_iter().collect(),
    };
    let started = svc
        .manager
        .spawn_op(move |m| async move { m.create(spec).await })
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::CreateSandboxResponse {
        sandbox_id: id.to_string(),
        status: pb::SandboxStatus::Running as i32,
        host_ip: started.host_ip,
        metadata: started.metadata.into_iter().collect(),
    }))
}

pub(super) async fn destroy_sandbox(
    svc: &AgentService,
    req: Request<pb::DestroySandboxRequest>,
) -> Rpc<pb::DestroySandboxResponse> {
    let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
    svc.manager
        .spawn_op(move |m| async move { m.destroy(id).await })
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::DestroySandboxResponse {}))
}

pub(super) async fn pause_sandbox(
    svc: &AgentService,
    req: Request<pb::PauseSandboxRequest>,
) -> Rpc<pb::PauseSandboxResponse> {
    let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
    svc.manager
        .spawn_op(move |m| async move { m.pause(id).await })
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::PauseSandboxResponse {}))
}

pub(super) async fn resume_sandbox(
    svc: &AgentService,
    req: Request<pb::ResumeSandboxRequest>,
) -> Rpc<pb::ResumeSandboxResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    let env = r.default_env.into_iter().collect();
    let (timeout, user) = (r.timeout_sec, r.default_user);
    let started = svc
        .manager
        .spawn_op(move |m| async move { m.resume(id, timeout, user, env).await })
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::ResumeSandboxResponse {
        sandbox_id: id.to_string(),
        status: pb::SandboxStatus::Running as i32,
        host_ip: started.host_ip,
        metadata: started.metadata.into_iter().collect(),
    }))
}

pub(super) async fn hibernate_sandbox(
    svc: &AgentService,
    req: Request<pb::HibernateSandboxRequest>,
) -> Rpc<pb::HibernateSandboxResponse> {
    let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
    let size_bytes = svc
        .manager
        .spawn_op(move |m| async move { m.hibernate(id, HibernateCause::Request).await })
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::HibernateSandboxResponse { size_bytes }))
}

pub(super) async fn ping_sandbox(
    svc: &AgentService,
    req: Request<pb::PingSandboxRequest>,
) -> Rpc<pb::PingSandboxResponse> {
    let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
    svc.manager.ping(id).map_err(status_of)?;
    Ok(Response::new(pb::PingSandboxResponse {}))
}

pub(super) async fn list_sandboxes(
    svc: &AgentService,
    _req: Request<pb::ListSandboxesRequest>,
) -> Rpc<pb::ListSandboxesResponse> {
    let mut resp = pb::ListSandboxesResponse::default();
    let mut all = svc.manager.all();
    all.sort_by_key(|s| s.id());
    for sb in all {
        let id = sb.id();
        let view = sb.view();
        if view.status == SandboxStatus::Stopped {
            continue;
        }
        if view.auto_paused {
            resp.auto_paused_sandbox_ids.push(id.to_string());
        }
        if view.status == SandboxStatus::Hibernated {
            resp.hibernated_sandbox_ids.push(id.to_string());
        }
        resp.sandboxes.push(sandbox_info(id, view));
    }
    Ok(Response::new(resp))
}

pub(super) async fn pause_all(
    svc: &AgentService,
    _req: Request<pb::PauseAllRequest>,
) -> Rpc<pb::PauseAllResponse> {
    let out = svc
        .manager
        .spawn_op(|m| async move { Ok(m.pause_all().await) })
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::PauseAllResponse {
        paused_sandbox_ids: out.paused.iter().map(ToString::to_string).collect(),
        failed: out
            .failed
            .into_iter()
            .map(|(id, e)| (id.to_string(), e))
            .collect(),
    }))
}

pub(super) async fn terminate(
    svc: &AgentService,
    _req: Request<pb::TerminateRequest>,
) -> Rpc<pb::TerminateResponse> {
    tracing::info!("Terminate: graceful shutdown requested");
    svc.terminate.cancel();
    Ok(Response::new(pb::TerminateResponse {}))
}

pub(super) async fn create_snapshot(
    svc: &AgentService,
    req: Request<pb::CreateSnapshotRequest>,
) -> Rpc<pb::CreateSnapshotResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    let (team, template) = parse_template_target(&r.team_id, &r.template_id).map_err(status_of)?;
    let size_bytes = svc
        .manager
        .spawn_op(move |m| async move { m.snapshot(id, team, template).await })
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::CreateSnapshotResponse { size_bytes }))
}

pub(super) async fn delete_snapshot(
    svc: &AgentService,
    req: Request<pb::DeleteSnapshotRequest>,
) -> Rpc<pb::DeleteSnapshotResponse> {
    let r = req.into_inner();
    let (team, template) = parse_template_target(&r.team_id, &r.template_id).map_err(status_of)?;
    let deleted = svc
        .manager
        .spawn_op(move |m| async move { m.delete_template(team, template).await })
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::DeleteSnapshotResponse { deleted }))
}

pub(super) async fn flatten_rootfs(
    svc: &AgentService,
    req: Request<pb::FlattenRootfsRequest>,
) -> Rpc<pb::FlattenRootfsResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    parse_template_target(&r.team_id, &r.template_id).map_err(status_of)?;
    let sb = svc.manager.get(id).map_err(status_of)?;
    let status = sb.status();
    if status != SandboxStatus::Running {
        return Err(status_of(AgentError::WrongState {
            id,
            status,
            what: "flatten needs a running sandbox".into(),
        }));
    }
    Err(status_of(AgentError::Unimplemented(format!(
        "FlattenRootfs is not supported by the {} runtime: use CreateSnapshot, whose template \
         already holds only the sandbox's files",
        svc.manager.runtime().name()
    ))))
}
