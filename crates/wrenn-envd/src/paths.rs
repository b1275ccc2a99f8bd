//! Resolution of request paths.
//!
//! Absolute paths are taken as given (lexically cleaned). Relative paths and paths
//! starting with `~` resolve against a home directory; a relative path whose `..`
//! components climb above that home is refused, since it almost always is a client bug.

use std::path::{Component, Path, PathBuf};

use crate::error::{EnvdError, Result};

/// Resolves `path` against `home` (see the module docs).
pub fn resolve(path: &str, home: &Path) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(EnvdError::invalid("path is empty"));
    }
    if path.contains('\0') {
        return Err(EnvdError::invalid("path contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Ok(clean_absolute(Path::new(path)));
    }
    let relative = if path == "~" {
        ""
    } else if let Some(rest) = path.strip_prefix("~/") {
        rest
    } else {
        path
    };
    let mut resolved = clean_absolute(home);
    let mut depth = 0usize;
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => {
                resolved.push(part);
                depth += 1;
            }
            Component::ParentDir => {
                if depth == 0 {
                    return Err(EnvdError::invalid(format!(
                        "relative path {path:?} escapes the home directory {}",
                        home.display()
                    )));
                }
                resolved.pop();
                depth -= 1;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Ok(resolved)
}

/// Removes `.` components, duplicate slashes and `..` (which cannot climb above `/`).
fn clean_absolute(path: &Path) -> PathBuf {
    let mut cleaned = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => cleaned.push(part),
            Component::ParentDir => {
                cleaned.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> PathBuf {
        PathBuf::from("/home/dev")
    }

    #[test]
    fn absolute_paths_are_cleaned() {
        assert_eq!(
            resolve("/a//b/./c/../d", &home()).unwrap(),
            PathBuf::from("/a/b/d")
        );
        assert_eq!(resolve("/..", &home()).unwrap(), PathBuf::from("/"));
    }

    #[test]
    fn relative_and_tilde_paths_resolve_against_home() {
        assert_eq!(
            resolve("x/y", &home()).unwrap(),
            PathBuf::from("/home/dev/x/y")
        );
        assert_eq!(resolve("~", &home()).unwrap(), home());
        assert_eq!(
            resolve("~/x", &home()).unwrap(),
            PathBuf::from("/home/dev/x")
        );
        assert_eq!(
            resolve("a/../b", &home()).unwrap(),
            PathBuf::from("/home/dev/b")
        );
    }

    #[test]
    fn escaping_and_empty_paths_are_invalid() {
        for bad in ["", "../etc/passwd", "a/../../x", "~/../x", "a\0b"] {
            let err = resolve(bad, &home()).unwrap_err();
            assert!(
                matches!(err, EnvdError::InvalidArgument(_)),
                "{bad:?}: {err}"
            );
        }
    }
}
