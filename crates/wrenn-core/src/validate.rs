//! Input validation for names, emails, capsule metadata, resource sizes and the
//! commands run in capsules.
//!
//! Every check is written by hand (no regex engine), never panics on any input, and
//! returns a [`ValidationError`] whose message names the field and the rule broken.
//! Functions that normalise their input (trim, lowercase) return the normalised value.

use std::collections::BTreeMap;

/// Maximum length of a template, snapshot or channel name.
pub const MAX_SAFE_NAME_LEN: usize = 128;
/// Maximum length of a team name.
pub const MAX_TEAM_NAME_LEN: usize = 128;
/// Maximum length of a user's display name.
pub const MAX_USER_NAME_LEN: usize = 128;
/// Maximum length of an email address.
pub const MAX_EMAIL_LEN: usize = 254;
/// Maximum number of capsule metadata entries.
pub const MAX_METADATA_KEYS: usize = 20;
/// Maximum length of a capsule metadata key.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// Maximum length of a capsule metadata value, in characters.
pub const MAX_METADATA_VALUE_LEN: usize = 64;
/// Metadata keys set by the platform that users may not set.
pub const RESERVED_METADATA_KEYS: [&str; 4] = [
    "kernel_version",
    "vmm_version",
    "agent_version",
    "envd_version",
];
/// Smallest number of vCPUs.
pub const MIN_VCPUS: i64 = 1;
/// Largest number of vCPUs.
pub const MAX_VCPUS: i64 = 16;
/// Smallest memory size, in MiB.
pub const MIN_MEMORY_MB: i64 = 128;
/// Largest memory size, in MiB.
pub const MAX_MEMORY_MB: i64 = 32_768;
/// Smallest disk size, in MiB.
pub const MIN_DISK_SIZE_MB: i64 = 1_024;
/// Largest disk size, in MiB.
pub const MAX_DISK_SIZE_MB: i64 = 102_400;
/// Smallest inactivity timeout in seconds (0 = never auto-pause).
pub const MIN_TIMEOUT_SEC: i64 = 0;
/// Largest inactivity timeout in seconds (fits a 32-bit column).
pub const MAX_TIMEOUT_SEC: i64 = i32::MAX as i64;
/// Longest single argument, environment entry (`KEY=value`) or working directory, in
/// bytes: the kernel's `MAX_ARG_STRLEN` (32 pages) less the terminating NUL.
pub const MAX_COMMAND_STRING_BYTES: usize = 32 * 4096 - 1;
/// Largest command line plus environment, in bytes (well under the kernel's `ARG_MAX`
/// share of the stack, so `execve` never fails with `E2BIG` on what we accepted).
pub const MAX_COMMAND_TOTAL_BYTES: usize = 1 << 20;

const SAFE_NAME_RULE: &str =
    "must start with a letter or digit and contain only letters, digits, '.', '_' or '-'";
const TEAM_NAME_RULE: &str =
    "may contain only letters, digits, spaces and the characters '_', '-', '@' and '''";
const METADATA_KEY_RULE: &str = "must be 1-64 characters, start with a letter or digit and contain only letters, digits, '.', '_' or '-'";

/// Why an input value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The value is empty (after trimming, where the field is trimmed).
    #[error("{field} must not be empty")]
    Empty {
        /// The field, e.g. `name`.
        field: &'static str,
    },
    /// The value is longer than allowed.
    #[error("{field} must be at most {max} characters long")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Maximum length in characters.
        max: usize,
    },
    /// The value breaks a format rule.
    #[error("{field} {rule}")]
    Format {
        /// The field.
        field: &'static str,
        /// The rule, phrased to follow the field name.
        rule: &'static str,
    },
    /// A number is outside its allowed range.
    #[error("{field} must be between {min} and {max} (got {value})")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
        /// The value given.
        value: i64,
    },
    /// Too many metadata entries.
    #[error("metadata may have at most {max} keys (got {count})")]
    TooManyMetadataKeys {
        /// The maximum.
        max: usize,
        /// The number given.
        count: usize,
    },
    /// A metadata key has a bad format.
    #[error("metadata key {key:?} is invalid: it {rule}")]
    InvalidMetadataKey {
        /// The key (truncated to 64 characters).
        key: String,
        /// The rule.
        rule: &'static str,
    },
    /// A metadata key is set by the platform and may not be set by users.
    #[error("metadata key {key:?} is reserved: it is set by the platform")]
    ReservedMetadataKey {
        /// The key.
        key: String,
    },
    /// A command-line string is longer than `execve` accepts.
    #[error("{field} must be at most {max} bytes long (got {len})")]
    TooManyBytes {
        /// The field, e.g. `args`.
        field: &'static str,
        /// The maximum, in bytes.
        max: usize,
        /// The length given, in bytes.
        len: usize,
    },
    /// A metadata value is too long.
    #[error("metadata value for key {key:?} must be at most {max} characters long")]
    MetadataValueTooLong {
        /// The key whose value is too long.
        key: String,
        /// The maximum.
        max: usize,
    },
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,max-1}$`, without naming the field.
fn matches_safe_pattern(value: &str, max: usize) -> bool {
    let bytes = value.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= max
                && first.is_ascii_alphanumeric()
                && rest.iter().all(|&b| is_name_char(b))
        }
        None => false,
    }
}

/// Checks a template, snapshot or channel name: `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`,
/// never `.` or `..`. Such a name is safe as a single path component.
pub fn safe_name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if value.chars().count() > MAX_SAFE_NAME_LEN {
        return Err(ValidationError::TooLong {
            field,
            max: MAX_SAFE_NAME_LEN,
        });
    }
    if value == "." || value == ".." || !matches_safe_pattern(value, MAX_SAFE_NAME_LEN) {
        return Err(ValidationError::Format {
            field,
            rule: SAFE_NAME_RULE,
        });
    }
    Ok(())
}

/// Checks a team name and returns it trimmed: 1-128 characters of
/// `[A-Za-z0-9 _\-@']`.
pub fn team_name(value: &str) -> Result<String, ValidationError> {
    const FIELD: &str = "team name";
    let v = value.trim();
    if v.is_empty() {
        return Err(ValidationError::Empty { field: FIELD });
    }
    if v.chars().count() > MAX_TEAM_NAME_LEN {
        return Err(ValidationError::TooLong {
            field: FIELD,
            max: MAX_TEAM_NAME_LEN,
        });
    }
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'_' | b'-' | b'@' | b'\''));
    if !ok {
        return Err(ValidationError::Format {
            field: FIELD,
            rule: TEAM_NAME_RULE,
        });
    }
    Ok(v.to_owned())
}

/// Checks a user's display name and returns it trimmed: 1-128 characters, no control
/// characters.
pub fn user_name(value: &str) -> Result<String, ValidationError> {
    const FIELD: &str = "name";
    let v = value.trim();
    if v.is_empty() {
        return Err(ValidationError::Empty { field: FIELD });
    }
    if v.chars().count() > MAX_USER_NAME_LEN {
        return Err(ValidationError::TooLong {
            field: FIELD,
            max: MAX_USER_NAME_LEN,
        });
    }
    if v.chars().any(char::is_control) {
        return Err(ValidationError::Format {
            field: FIELD,
            rule: "must not contain control characters",
        });
    }
    Ok(v.to_owned())
}

/// Checks an email address structurally and returns it trimmed and lowercased.
///
/// Rules: at most 254 characters; exactly one `@`; a non-empty local part of at most
/// 64 characters; a domain of at least two non-empty dot-separated labels, each made of
/// letters, digits and `-` and not starting or ending with `-`; no whitespace or
/// control characters anywhere. This is a sanity check, not RFC 5322: deliverability is
/// proven by the activation email.
pub fn email(value: &str) -> Result<String, ValidationError> {
    const FIELD: &str = "email";
    let v = value.trim().to_lowercase();
    if v.is_empty() {
        return Err(ValidationError::Empty { field: FIELD });
    }
    if v.chars().count() > MAX_EMAIL_LEN {
        return Err(ValidationError::TooLong {
            field: FIELD,
            max: MAX_EMAIL_LEN,
        });
    }
    let format = |rule| Err(ValidationError::Format { field: FIELD, rule });
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return format("must not contain spaces or control characters");
    }
    let Some((local, domain)) = v.split_once('@') else {
        return format("must contain an '@'");
    };
    if domain.contains('@') {
        return format("must contain exactly one '@'");
    }
    if local.is_empty() || local.chars().count() > 64 {
        return format("must have 1-64 characters before the '@'");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return format("must have a domain like example.com after the '@'");
    }
    Ok(v)
}

/// Checks user-supplied capsule metadata: at most 20 entries; keys
/// `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$` and not one of [`RESERVED_METADATA_KEYS`];
/// values at most 64 characters.
pub fn capsule_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(ValidationError::TooManyMetadataKeys {
            max: MAX_METADATA_KEYS,
            count: metadata.len(),
        });
    }
    for (key, value) in metadata {
        if !matches_safe_pattern(key, MAX_METADATA_KEY_LEN) {
            return Err(ValidationError::InvalidMetadataKey {
                key: truncated(key),
                rule: METADATA_KEY_RULE,
            });
        }
        if RESERVED_METADATA_KEYS.contains(&key.as_str()) {
            return Err(ValidationError::ReservedMetadataKey { key: key.clone() });
        }
        if value.chars().count() > MAX_METADATA_VALUE_LEN {
            return Err(ValidationError::MetadataValueTooLong {
                key: key.clone(),
                max: MAX_METADATA_VALUE_LEN,
            });
        }
    }
    Ok(())
}

fn in_range(field: &'static str, value: i64, min: i64, max: i64) -> Result<i32, ValidationError> {
    if (min..=max).contains(&value) {
        if let Ok(v) = i32::try_from(value) {
            return Ok(v);
        }
    }
    Err(ValidationError::OutOfRange {
        field,
        min,
        max,
        value,
    })
}

/// Checks a vCPU count: [`MIN_VCPUS`]`..=`[`MAX_VCPUS`] (1-16).
pub fn vcpus(value: i64) -> Result<i32, ValidationError> {
    in_range("vcpus", value, MIN_VCPUS, MAX_VCPUS)
}

/// Checks a memory size in MiB: [`MIN_MEMORY_MB`]`..=`[`MAX_MEMORY_MB`] (128-32768).
pub fn memory_mb(value: i64) -> Result<i32, ValidationError> {
    in_range("memory_mb", value, MIN_MEMORY_MB, MAX_MEMORY_MB)
}

/// Checks a disk size in MiB: [`MIN_DISK_SIZE_MB`]`..=`[`MAX_DISK_SIZE_MB`]
/// (1024-102400).
pub fn disk_size_mb(value: i64) -> Result<i32, ValidationError> {
    in_range("disk_size_mb", value, MIN_DISK_SIZE_MB, MAX_DISK_SIZE_MB)
}

/// Checks an inactivity timeout in seconds: [`MIN_TIMEOUT_SEC`]`..=`[`MAX_TIMEOUT_SEC`]
/// (0 means never auto-pause).
pub fn timeout_sec(value: i64) -> Result<i32, ValidationError> {
    in_range("timeout_sec", value, MIN_TIMEOUT_SEC, MAX_TIMEOUT_SEC)
}

/// Checks a command to run in a capsule before anything is sent to it: the program,
/// its arguments, its environment and its working directory must be what `execve`
/// can take — no NUL bytes, environment names without `=`, each string at most
/// [`MAX_COMMAND_STRING_BYTES`] and all together at most [`MAX_COMMAND_TOTAL_BYTES`].
pub fn command<'a>(
    cmd: &str,
    args: impl IntoIterator<Item = &'a String>,
    envs: impl IntoIterator<Item = (&'a String, &'a String)>,
    cwd: Option<&str>,
) -> Result<(), ValidationError> {
    fn string(field: &'static str, value: &str) -> Result<usize, ValidationError> {
        if value.as_bytes().contains(&0) {
            return Err(ValidationError::Format {
                field,
                rule: "must not contain NUL bytes",
            });
        }
        if value.len() > MAX_COMMAND_STRING_BYTES {
            return Err(ValidationError::TooManyBytes {
                field,
                max: MAX_COMMAND_STRING_BYTES,
                len: value.len(),
            });
        }
        // The kernel counts each string with its NUL and a pointer to it.
        Ok(value.len() + 1 + std::mem::size_of::<usize>())
    }
    let mut total = string("cmd", cmd)?;
    if let Some(cwd) = cwd {
        total += string("cwd", cwd)?;
    }
    for arg in args {
        total += string("args", arg)?;
    }
    for (key, value) in envs {
        if key.is_empty() || key.contains('=') {
            return Err(ValidationError::Format {
                field: "envs",
                rule: "names must be non-empty and must not contain '='",
            });
        }
        total += string("envs", key)? + string("envs", value)?;
        if key.len() + 1 + value.len() > MAX_COMMAND_STRING_BYTES {
            return Err(ValidationError::TooManyBytes {
                field: "envs",
                max: MAX_COMMAND_STRING_BYTES,
                len: key.len() + 1 + value.len(),
            });
        }
    }
    if total > MAX_COMMAND_TOTAL_BYTES {
        return Err(ValidationError::TooManyBytes {
            field: "cmd, args and envs together",
            max: MAX_COMMAND_TOTAL_BYTES,
            len: total,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strings(n: usize, len: usize) -> Vec<String> {
        vec!["a".repeat(len); n]
    }

    #[test]
    fn commands_that_execve_takes_pass() {
        let envs = meta(&[("LANG", "C.UTF-8"), ("EMPTY", "")]);
        assert_eq!(
            command("/bin/sh", &strings(2, 10), &envs, Some("/home/u")),
            Ok(())
        );
        assert_eq!(
            command("x", &strings(1, MAX_COMMAND_STRING_BYTES), &envs, None),
            Ok(())
        );
    }

    #[test]
    fn oversized_or_malformed_commands_are_refused_with_the_field() {
        let none = BTreeMap::new();
        let long = strings(1, MAX_COMMAND_STRING_BYTES + 1);
        assert!(matches!(
            command("sh", &long, &none, None),
            Err(ValidationError::TooManyBytes { field: "args", .. })
        ));
        let many = strings(20, 100_000);
        let err = command("sh", &many, &none, None).unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
        assert!(matches!(
            command("sh\0x", &[], &none, None),
            Err(ValidationError::Format { field: "cmd", .. })
        ));
        assert!(matches!(
            command("sh", &[], &meta(&[("A=B", "1")]), None),
            Err(ValidationError::Format { field: "envs", .. })
        ));
        assert!(matches!(
            command("sh", &[], &meta(&[("", "1")]), None),
            Err(ValidationError::Format { field: "envs", .. })
        ));
        assert!(matches!(
            command("sh", &[], &none, Some("/a\0b")),
            Err(ValidationError::Format { field: "cwd", .. })
        ));
    }

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn safe_names() {
        for good in [
            "a",
            "minimal",
            "my-template_1.0",
            "0",
            "A.b-c_d",
            &"a".repeat(128),
        ] {
            assert_eq!(safe_name("name", good), Ok(()), "{good}");
        }
        assert_eq!(
            safe_name("name", ""),
            Err(ValidationError::Empty { field: "name" })
        );
        assert_eq!(
            safe_name("name", &"a".repeat(129)),
            Err(ValidationError::TooLong {
                field: "name",
                max: 128
            })
        );
        for bad in [
            ".", "..", ".hidden", "-x", "_x", "a/b", "a b", "a\0", "é", "a\n", "../etc",
        ] {
            let err = safe_name("template", bad).unwrap_err();
            assert!(matches!(err, ValidationError::Format { .. }), "{bad}");
            assert!(
                err.to_string().starts_with("template must start with"),
                "{err}"
            );
        }
    }

    #[test]
    fn team_names() {
        assert_eq!(
            team_name("  Ada's Team @home - x_y  ").unwrap(),
            "Ada's Team @home - x_y"
        );
        assert_eq!(team_name(&"a".repeat(128)).unwrap().len(), 128);
        assert!(matches!(
            team_name("   "),
            Err(ValidationError::Empty { .. })
        ));
        assert!(matches!(
            team_name(&"a".repeat(129)),
            Err(ValidationError::TooLong { .. })
        ));
        for bad in ["a/b", "<script>", "tëam", "a\tb", "a.b"] {
            let err = team_name(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("team name may contain only"),
                "{err}"
            );
        }
    }

    #[test]
    fn user_names() {
        assert_eq!(user_name("  Ada Lovelace ").unwrap(), "Ada Lovelace");
        assert_eq!(user_name("José 李").unwrap(), "José 李");
        assert!(matches!(
            user_name(""),
            Err(ValidationError::Empty { field: "name" })
        ));
        assert!(matches!(
            user_name(&"é".repeat(129)),
            Err(ValidationError::TooLong { .. })
        ));
        assert!(user_name(&"é".repeat(128)).is_ok());
        let err = user_name("a\u{7}b").unwrap_err();
        assert_eq!(err.to_string(), "name must not contain control characters");
    }

    #[test]
    fn emails() {
        assert_eq!(email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        assert_eq!(
            email("a.b+tag@sub.example-x.io").unwrap(),
            "a.b+tag@sub.example-x.io"
        );
        assert!(matches!(
            email(""),
            Err(ValidationError::Empty { field: "email" })
        ));
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(matches!(
            email(&long),
            Err(ValidationError::TooLong { max: 254, .. })
        ));
        for bad in [
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a@b@c.com",
            "a b@c.com",
            "a@b..com",
            "a@.b.com",
            "a@b.com.",
            "a@-b.com",
            "a@b_c.com",
            &format!("{}@example.com", "a".repeat(65)),
        ] {
            let err = email(bad).unwrap_err();
            assert!(err.to_string().starts_with("email must"), "{bad}: {err}");
        }
    }

    #[test]
    fn metadata() {
        assert_eq!(capsule_metadata(&BTreeMap::new()), Ok(()));
        assert_eq!(
            capsule_metadata(&meta(&[("env", "prod"), ("team.x-y_z", "")])),
            Ok(())
        );
        let many: BTreeMap<String, String> =
            (0..21).map(|i| (format!("k{i}"), "v".into())).collect();
        let err = capsule_metadata(&many).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata may have at most 20 keys (got 21)"
        );
        let twenty: BTreeMap<String, String> =
            (0..20).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(capsule_metadata(&twenty), Ok(()));

        for bad in ["", "-a", "a b", "a/b", &"k".repeat(65)] {
            let err = capsule_metadata(&meta(&[(bad, "v")])).unwrap_err();
            assert!(
                matches!(err, ValidationError::InvalidMetadataKey { .. }),
                "{bad}"
            );
            assert!(err.to_string().starts_with("metadata key"), "{err}");
        }
        assert_eq!(capsule_metadata(&meta(&[(&"k".repeat(64), "v")])), Ok(()));

        for reserved in RESERVED_METADATA_KEYS {
            let err = capsule_metadata(&meta(&[(reserved, "1")])).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("metadata key \"{reserved}\" is reserved: it is set by the platform")
            );
        }

        let err = capsule_metadata(&meta(&[("k", &"v".repeat(65))])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata value for key \"k\" must be at most 64 characters long"
        );
        assert_eq!(capsule_metadata(&meta(&[("k", &"é".repeat(64))])), Ok(()));
    }

    #[test]
    fn numeric_bounds() {
        assert_eq!(vcpus(1), Ok(1));
        assert_eq!(vcpus(16), Ok(16));
        let err = vcpus(17).unwrap_err();
        assert_eq!(err.to_string(), "vcpus must be between 1 and 16 (got 17)");
        assert!(vcpus(0).is_err() && vcpus(-1).is_err() && vcpus(i64::MAX).is_err());
        assert_eq!(memory_mb(128), Ok(128));
        assert_eq!(memory_mb(32_768), Ok(32_768));
        assert!(memory_mb(127).is_err() && memory_mb(32_769).is_err());
        assert_eq!(disk_size_mb(1024), Ok(1024));
        assert_eq!(disk_size_mb(102_400), Ok(102_400));
        assert!(disk_size_mb(1023).is_err() && disk_size_mb(102_401).is_err());
        assert_eq!(timeout_sec(0), Ok(0));
        assert_eq!(timeout_sec(i64::from(i32::MAX)), Ok(i32::MAX));
        assert!(timeout_sec(-1).is_err() && timeout_sec(i64::from(i32::MAX) + 1).is_err());
        let err = timeout_sec(-5).unwrap_err();
        assert!(
            err.to_string().starts_with("timeout_sec must be between 0"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,300}|.{0,300}", n in any::<i64>()) {
            let _ = safe_name("name", &s);
            let _ = team_name(&s);
            let _ = user_name(&s);
            let _ = email(&s);
            let _ = capsule_metadata(&BTreeMap::from([(s.clone(), s.clone())]));
            let _ = (vcpus(n), memory_mb(n), disk_size_mb(n), timeout_sec(n));
        }

        #[test]
        fn valid_safe_names_pass(s in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}") {
            prop_assert_eq!(safe_name("name", &s), Ok(()));
        }

        #[test]
        fn valid_metadata_passes(
            m in proptest::collection::btree_map("[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}", "\\PC{0,64}", 0..=20)
        ) {
            let reserved = m.keys().any(|k| RESERVED_METADATA_KEYS.contains(&k.as_str()));
            prop_assert_eq!(capsule_metadata(&m).is_ok(), !reserved);
        }

        #[test]
        fn valid_team_names_pass(s in "[A-Za-z0-9_@'-][A-Za-z0-9 _@'-]{0,126}[A-Za-z0-9_@'-]") {
            prop_assert_eq!(team_name(&s), Ok(s.clone()));
        }

        #[test]
        fn valid_emails_pass_lowercased(
            local in "[A-Za-z0-9._+-]{1,64}",
            domain in "[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?",
            tld in "[A-Za-z]{2,10}",
        ) {
            let input = format!("{local}@{domain}.{tld}");
            prop_assert_eq!(email(&input), Ok(input.to_lowercase()));
        }

        #[test]
        fn normalised_outputs_are_fixed_points(s in "\\PC{0,140}") {
            if let Ok(v) = team_name(&s) { prop_assert_eq!(team_name(&v), Ok(v.clone())); }
            if let Ok(v) = user_name(&s) { prop_assert_eq!(user_name(&v), Ok(v.clone())); }
            if let Ok(v) = email(&s) { prop_assert_eq!(email(&v), Ok(v.clone())); }
        }
    }
}
