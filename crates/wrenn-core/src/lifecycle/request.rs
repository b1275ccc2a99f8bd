//! What a caller asks for when it creates a sandbox ([`CreateSandbox`]), and the one
//! place a requested shape ([`ResourceRequest`]) settles into [`Resources`].

use crate::model::{Metadata, Resources, Template, TemplateKind};
use crate::validate::{self, ValidationError};

/// Default vCPUs.
pub const DEFAULT_VCPUS: i32 = 1;
/// Default memory (MiB).
pub const DEFAULT_MEMORY_MB: i32 = 512;
/// Default disk (MiB).
pub const DEFAULT_DISK_SIZE_MB: i32 = 20480;

/// A request to create a sandbox. `None` fields take the template's or the
/// platform's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSandbox {
    /// Template name (default `minimal`).
    pub template: Option<String>,
    /// Requested machine shape.
    pub resources: ResourceRequest,
    /// Idle timeout in seconds before auto-pause (default 0 = never).
    pub timeout_sec: Option<i64>,
    /// User metadata.
    pub metadata: Metadata,
}

/// A requested machine shape, unchecked: the fields of [`Resources`], each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceRequest {
    /// vCPUs (default 1, or the snapshot template's).
    pub vcpus: Option<i64>,
    /// Memory in MiB (default 512, or the snapshot template's).
    pub memory_mb: Option<i64>,
    /// Disk in MiB (default 20480).
    pub disk_size_mb: Option<i64>,
}

impl ResourceRequest {
    /// The shape a sandbox from `template` gets: a snapshot template forces its vCPUs
    /// and memory (the request's are ignored, unchecked); otherwise each given value
    /// is range-checked ([`validate`]) and each missing one takes
    /// [`Resources::DEFAULT`]. Fields are checked in declaration order.
    pub fn resolve(self, template: &Template) -> Result<Resources, ValidationError> {
        let (vcpus, memory_mb) = if template.kind == TemplateKind::Snapshot {
            (template.vcpus, template.memory_mb)
        } else {
            (
                self.vcpus
                    .map(validate::vcpus)
                    .transpose()?
                    .unwrap_or(Resources::DEFAULT.vcpus),
                self.memory_mb
                    .map(validate::memory_mb)
                    .transpose()?
                    .unwrap_or(Resources::DEFAULT.memory_mb),
            )
        };
        let disk_size_mb = self
            .disk_size_mb
            .map(validate::disk_size_mb)
            .transpose()?
            .unwrap_or(Resources::DEFAULT.disk_size_mb);
        Ok(Resources {
            vcpus,
            memory_mb,
            disk_size_mb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{TeamId, TemplateId};

    fn template(kind: TemplateKind) -> Template {
        Template {
            id: TemplateId::new(),
            team_id: TeamId::new(),
            name: "t".into(),
            kind,
            vcpus: 4,
            memory_mb: 2048,
            size_bytes: 0,
            default_user: "root".into(),
            default_env: Default::default(),
            metadata: Metadata::new(),
            start_command: String::new(),
            start_cwd: String::new(),
            protected: false,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn an_empty_request_takes_the_defaults() {
        let base = template(TemplateKind::Base);
        assert_eq!(
            ResourceRequest::default().resolve(&base),
            Ok(Resources::DEFAULT)
        );
        assert_eq!(
            Resources::DEFAULT,
            Resources {
                vcpus: DEFAULT_VCPUS,
                memory_mb: DEFAULT_MEMORY_MB,
                disk_size_mb: DEFAULT_DISK_SIZE_MB
            }
        );
    }

    #[test]
    fn given_values_are_checked_and_a_snapshot_forces_cpu_and_memory() {
        let ask = ResourceRequest {
            vcpus: Some(2),
            memory_mb: Some(1024),
            disk_size_mb: Some(4096),
        };
        let shape = |vcpus, memory_mb| Resources {
            vcpus,
            memory_mb,
            disk_size_mb: 4096,
        };
        assert_eq!(
            ask.resolve(&template(TemplateKind::Base)),
            Ok(shape(2, 1024))
        );
        let snapshot = template(TemplateKind::Snapshot);
        assert_eq!(ask.resolve(&snapshot), Ok(shape(4, 2048)));
        let too_many = ResourceRequest {
            vcpus: Some(99),
            ..ask
        };
        assert_eq!(too_many.resolve(&snapshot), Ok(shape(4, 2048)));
        let err = too_many.resolve(&template(TemplateKind::Base)).unwrap_err();
        assert!(err.to_string().contains("vcpus"), "{err}");
    }
}
