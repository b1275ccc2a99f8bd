//! Team roles, their permissions and the owner invariants.
//!
//! Every team has exactly one `owner` (assigned at team creation, never transferred),
//! any number of `admin`s and `member`s. Callers must re-read the actor's role from the
//! database before applying these rules; the role inside a JWT is only a hint.
//!
//! Rules:
//! - rename the team, add/remove members, change roles: owner or admin;
//! - delete the team: owner only;
//! - manage API keys and notification channels: every member;
//! - the owner can never be removed, demoted or leave ("delete the team instead");
//! - no one can be made owner (there is no ownership transfer);
//! - removing an admin or changing an admin's role needs the owner: admins can only act
//!   on members (an admin may promote a member to admin).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A member's role in a team. Serialised lowercase: `owner`, `admin`, `member`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created the team; can do everything, including deleting it.
    Owner,
    /// Manages the team's name and members.
    Admin,
    /// Uses the team's resources.
    Member,
}

/// Why a role could not be parsed or an action on a role is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The string is not `owner`, `admin` or `member`.
    #[error("invalid role {input:?}: expected one of \"owner\", \"admin\", \"member\"")]
    Unknown {
        /// The offending input (truncated to 64 chars).
        input: String,
    },
    /// The actor's role does not allow the action.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// What is required, e.g. `only the team owner or an admin can manage members`.
        reason: &'static str,
    },
    /// The owner cannot be removed from their team.
    #[error("forbidden: the team owner cannot be removed")]
    OwnerCannotBeRemoved,
    /// The owner's role cannot be changed.
    #[error("forbidden: the team owner's role cannot be changed")]
    OwnerRoleImmutable,
    /// The requested new role is `owner`; only `admin` or `member` may be assigned.
    #[error("invalid role: a member's role can only be set to \"admin\" or \"member\"")]
    CannotAssignOwner,
    /// The owner tried to leave their team.
    #[error("forbidden: the team owner cannot leave the team; delete the team instead")]
    OwnerCannotLeave,
}

impl Role {
    /// Every role, highest first.
    pub const ALL: [Role; 3] = [Role::Owner, Role::Admin, Role::Member];

    /// Wire value: `owner`, `admin` or `member`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Whether this role may rename the team (owner or admin).
    pub const fn can_rename_team(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// Whether this role may add, remove and change members (owner or admin), subject to
    /// [`check_remove_member`] and [`check_role_change`].
    pub const fn can_manage_members(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// Whether this role may delete the team (owner only).
    pub const fn can_delete_team(self) -> bool {
        matches!(self, Role::Owner)
    }

    /// Whether this role may create and revoke the team's API keys (every member).
    pub const fn can_manage_api_keys(self) -> bool {
        true
    }

    /// Whether this role may create, change, test and delete the team's notification
    /// channels (every member, as for API keys).
    pub const fn can_manage_channels(self) -> bool {
        true
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Self, RoleError> {
        match s {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            _ => Err(RoleError::Unknown {
                input: s.chars().take(64).collect(),
            }),
        }
    }
}

const NEED_MANAGER: &str = "only the team owner or an admin can manage members";
const NEED_OWNER_FOR_ADMIN: &str = "only the team owner can remove or change the role of an admin";

/// Checks that `actor` may remove a member whose role is `target`.
///
/// The owner is never removable; an admin may remove members; only the owner may
/// remove an admin. Leaving one's own team goes through [`check_leave`].
pub fn check_remove_member(actor: Role, target: Role) -> Result<(), RoleError> {
    if target == Role::Owner {
        return Err(RoleError::OwnerCannotBeRemoved);
    }
    match (actor, target) {
        (Role::Member, _) => Err(RoleError::Forbidden {
            reason: NEED_MANAGER,
        }),
        (Role::Admin, Role::Admin) => Err(RoleError::Forbidden {
            reason: NEED_OWNER_FOR_ADMIN,
        }),
        _ => Ok(()),
    }
}

/// Checks that `actor` may change a member's role from `target_current` to `new_role`.
///
/// The new role must be `admin` or `member`; the owner's role never changes; only the
/// owner or an admin may change roles, and only the owner may change an admin's role.
/// Setting the role a member already has is allowed (a no-op).
pub fn check_role_change(
    actor: Role,
    target_current: Role,
    new_role: Role,
) -> Result<(), RoleError> {
    if new_role == Role::Owner {
        return Err(RoleError::CannotAssignOwner);
    }
    if target_current == Role::Owner {
        return Err(RoleError::OwnerRoleImmutable);
    }
    match (actor, target_current) {
        (Role::Member, _) => Err(RoleError::Forbidden {
            reason: NEED_MANAGER,
        }),
        (Role::Admin, Role::Admin) => Err(RoleError::Forbidden {
            reason: NEED_OWNER_FOR_ADMIN,
        }),
        _ => Ok(()),
    }
}

/// Checks that a member with `role` may leave the team: everyone but the owner.
pub fn check_leave(role: Role) -> Result<(), RoleError> {
    match role {
        Role::Owner => Err(RoleError::OwnerCannotLeave),
        Role::Admin | Role::Member => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::{Admin, Member, Owner};

    #[test]
    fn wire_form_round_trips() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
        }
    }

    #[test]
    fn unknown_role_is_a_clear_error() {
        for bad in ["", "Owner", "ADMIN", "superuser", " member"] {
            let err = bad.parse::<Role>().unwrap_err();
            assert!(matches!(err, RoleError::Unknown { .. }), "{bad}");
            assert!(
                err.to_string().contains("\"owner\", \"admin\", \"member\""),
                "{err}"
            );
        }
        assert!(serde_json::from_str::<Role>("\"owner \"").is_err());
        let long = "x".repeat(1000);
        let RoleError::Unknown { input } = long.parse::<Role>().unwrap_err() else {
            panic!("expected Unknown");
        };
        assert_eq!(input.len(), 64);
    }

    #[test]
    fn permission_predicates() {
        assert!(Owner.can_rename_team() && Admin.can_rename_team() && !Member.can_rename_team());
        assert!(Owner.can_manage_members() && Admin.can_manage_members());
        assert!(!Member.can_manage_members());
        assert!(Owner.can_delete_team() && !Admin.can_delete_team() && !Member.can_delete_team());
        assert!(Role::ALL.iter().all(|r| r.can_manage_api_keys()));
    }

    #[test]
    fn owner_can_never_be_removed() {
        for actor in Role::ALL {
            assert_eq!(
                check_remove_member(actor, Owner),
                Err(RoleError::OwnerCannotBeRemoved)
            );
        }
    }

    #[test]
    fn removal_rules() {
        assert_eq!(check_remove_member(Owner, Admin), Ok(()));
        assert_eq!(check_remove_member(Owner, Member), Ok(()));
        assert_eq!(check_remove_member(Admin, Member), Ok(()));
        let err = check_remove_member(Admin, Admin).unwrap_err();
        assert!(err.to_string().contains("only the team owner"), "{err}");
        for target in [Admin, Member] {
            assert!(matches!(
                check_remove_member(Member, target),
                Err(RoleError::Forbidden { .. })
            ));
        }
    }

    #[test]
    fn nobody_can_become_owner() {
        for actor in Role::ALL {
            for current in Role::ALL {
                assert_eq!(
                    check_role_change(actor, current, Owner),
                    Err(RoleError::CannotAssignOwner)
                );
            }
        }
    }

    #[test]
    fn owner_role_is_immutable() {
        for actor in Role::ALL {
            for new_role in [Admin, Member] {
                assert_eq!(
                    check_role_change(actor, Owner, new_role),
                    Err(RoleError::OwnerRoleImmutable)
                );
            }
        }
    }

    #[test]
    fn role_change_rules() {
        // Owner may change anyone but themself.
        for current in [Admin, Member] {
            for new_role in [Admin, Member] {
                assert_eq!(check_role_change(Owner, current, new_role), Ok(()));
            }
        }
        // Admin may promote a member (or keep them member), but not touch an admin.
        assert_eq!(check_role_change(Admin, Member, Admin), Ok(()));
        assert_eq!(check_role_change(Admin, Member, Member), Ok(()));
        for new_role in [Admin, Member] {
            assert!(matches!(
                check_role_change(Admin, Admin, new_role),
                Err(RoleError::Forbidden { .. })
            ));
        }
        // Members may change nothing.
        for current in [Admin, Member] {
            for new_role in [Admin, Member] {
                assert!(matches!(
                    check_role_change(Member, current, new_role),
                    Err(RoleError::Forbidden { .. })
                ));
            }
        }
    }

    #[test]
    fn leave_rules() {
        let err = check_leave(Owner).unwrap_err();
        assert_eq!(err, RoleError::OwnerCannotLeave);
        assert!(err.to_string().contains("delete the team instead"), "{err}");
        assert_eq!(check_leave(Admin), Ok(()));
        assert_eq!(check_leave(Member), Ok(()));
    }
}
