//! User and group lookup from `/etc/passwd` and `/etc/group`.
//!
//! envd reads the files on every lookup (a sandbox may add users at any time) and does
//! not go through NSS, so it works in a static binary and inside any root file system.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{EnvdError, Result};

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// A user account from `/etc/passwd`, with its groups from `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory as listed (it may not exist, for example `/nonexistent`).
    pub home: PathBuf,
    /// Every group the user is in: the primary group first, then the supplementary ones.
    pub groups: Vec<u32>,
}

/// Looks up a user by name (or by numeric uid, if that uid has an entry).
/// An unknown user is `INVALID_ARGUMENT`, as the protos specify.
pub fn lookup(name: &str) -> Result<User> {
    let passwd = std::fs::read_to_string(PASSWD)
        .map_err(|err| EnvdError::internal(format!("reading {PASSWD}: {err}")))?;
    let group = std::fs::read_to_string(GROUP).unwrap_or_default();
    find_user(&passwd, &group, name)
        .ok_or_else(|| EnvdError::invalid(format!("unknown user {name:?}")))
}

/// Finds `name` in the text of a passwd file and collects its groups from a group file.
pub(crate) fn find_user(passwd: &str, group: &str, name: &str) -> Option<User> {
    if name.is_empty() {
        return None;
    }
    let numeric = name.parse::<u32>().ok();
    let mut user = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || line.starts_with('#') {
            return None;
        }
        let uid = fields[2].parse::<u32>().ok()?;
        let gid = fields[3].parse::<u32>().ok()?;
        (fields[0] == name || numeric == Some(uid)).then(|| User {
            name: fields[0].to_owned(),
            uid,
            gid,
            home: PathBuf::from(if fields[5].is_empty() { "/" } else { fields[5] }),
            groups: vec![gid],
        })
    })?;
    for line in group.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            continue;
        }
        let Ok(gid) = fields[2].parse::<u32>() else {
            continue;
        };
        if fields[3]
            .split(',')
            .any(|member| member.trim() == user.name)
            && !user.groups.contains(&gid)
        {
            user.groups.push(gid);
        }
    }
    Some(user)
}

/// Numeric id to name maps for owners and groups, loaded once per request.
#[derive(Debug, Default, Clone)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// Reads `/etc/passwd` and `/etc/group` (missing files give empty maps).
    pub fn load() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Self {
            users: id_map(&read(PASSWD)),
            groups: id_map(&read(GROUP)),
        }
    }

    /// The user name of `uid`, or the number as text.
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// The group name of `gid`, or the number as text.
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

/// `name:x:id:...` lines to an id → name map (the first name of an id wins).
fn id_map(text: &str) -> HashMap<u32, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>() {
            map.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    map
}

/// The directory a user's processes start in when none is given: the home if it is a
/// directory, else `/` (accounts such as `nobody` have a home that does not exist).
pub fn default_dir(user: &User) -> PathBuf {
    if Path::new(&user.home).is_dir() {
        user.home.clone()
    } else {
        PathBuf::from("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        dev:x:1000:1000::/home/dev:/bin/sh\n";
    const GROUP_TEXT: &str = "root:x:0:\nsudo:x:27:dev,other\ndocker:x:999:dev\ndev:x:1000:\n";

    #[test]
    fn finds_a_user_with_its_supplementary_groups() {
        let dev = find_user(PASSWD_TEXT, GROUP_TEXT, "dev").unwrap();
        assert_eq!((dev.uid, dev.gid), (1000, 1000));
        assert_eq!(dev.home, PathBuf::from("/home/dev"));
        assert_eq!(dev.groups, vec![1000, 27, 999]);
    }

    #[test]
    fn finds_a_user_by_numeric_uid() {
        let nobody = find_user(PASSWD_TEXT, GROUP_TEXT, "65534").unwrap();
        assert_eq!(nobody.name, "nobody");
    }

    #[test]
    fn unknown_and_empty_names_are_not_found() {
        assert!(find_user(PASSWD_TEXT, GROUP_TEXT, "ghost").is_none());
        assert!(find_user(PASSWD_TEXT, GROUP_TEXT, "").is_none());
    }

    #[test]
    fn names_fall_back_to_numbers() {
        let names = Names {
            users: id_map(PASSWD_TEXT),
            groups: id_map(GROUP_TEXT),
        };
        assert_eq!(names.user(0), "root");
        assert_eq!(names.group(27), "sudo");
        assert_eq!(names.user(4242), "4242");
    }
}
