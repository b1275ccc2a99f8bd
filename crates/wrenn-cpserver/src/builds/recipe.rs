//! The recipe language of template builds: one step per string.
//!
//! | step | meaning |
//! |---|---|
//! | `RUN <shell>` | runs `<shell>` with `/bin/sh -c`; a non-zero exit fails the build |
//! | `RUN --timeout=<n>s\|m\|h <shell>` | the same, killed and failing after that long (default [`DEFAULT_STEP_TIMEOUT`], at most [`MAX_STEP_TIMEOUT`]) |
//! | `<shell>` | a line without a keyword is a `RUN` |
//! | `COPY <src>... <dest>` | copies files from the build's archive (`src` relative to its root, `.` for all of it) to `dest` (relative to `WORKDIR`), owned by the current user; needs an archive |
//! | `ENV <KEY>=<value>` | sets a variable for later steps and in the template's environment |
//! | `WORKDIR <abs dir>` | makes the directory; later steps (and `START`) run in it |
//! | `USER <name>` | later steps run as this user, who becomes the template's default user |
//! | `START <command>` | the template's start command (at most one): started after the last step, before the healthcheck, and in every capsule made from the template |
//!
//! Keywords are upper case and followed by a space. Steps run in order in one
//! capsule; `ENV`, `WORKDIR` and `USER` apply to the steps after them. Like
//! Dockerfile's `COPY`, a `dest` ending in `/` (or any `dest` of several sources) is
//! a directory the sources are copied into; otherwise a single source is copied to
//! `dest` itself (a directory source's contents land in it).

use std::collections::BTreeMap;
use std::time::Duration;

/// Most steps a recipe may have.
pub const MAX_STEPS: usize = 200;
/// Longest step, in bytes.
pub const MAX_STEP_LEN: usize = 16 * 1024;
/// How long a `RUN` step may take unless it says otherwise.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest `--timeout` a `RUN` step may ask for.
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// One parsed recipe step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A shell command.
    Run {
        /// The command.
        script: String,
        /// How long it may take.
        timeout: Duration,
    },
    /// Files from the build's archive.
    Copy {
        /// Paths relative to the archive's root.
        sources: Vec<String>,
        /// Where they go.
        dest: String,
    },
    /// An environment variable.
    Env(String, String),
    /// The working directory of later steps.
    Workdir(String),
    /// The user of later steps and of the template.
    User(String),
    /// The template's start command.
    Start(String),
}

impl Step {
    /// The keyword the step was written with.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Run { .. } => "RUN",
            Self::Copy { .. } => "COPY",
            Self::Env(..) => "ENV",
            Self::Workdir(_) => "WORKDIR",
            Self::User(_) => "USER",
            Self::Start(_) => "START",
        }
    }
}

/// Why a recipe was refused; the message names the step (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    /// No steps at all.
    #[error("recipe must have at least one step")]
    Empty,
    /// More than [`MAX_STEPS`].
    #[error("recipe has {0} steps; at most {MAX_STEPS} are allowed")]
    TooLong(usize),
    /// One step is malformed.
    #[error("recipe step {index} ({step:?}): {reason}")]
    Step {
        /// 1-based position.
        index: usize,
        /// The step as written (shortened).
        step: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A recipe, parsed: its steps and what they leave behind for the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Recipe {
    /// Parses `lines`, one step each.
    pub fn parse(lines: &[String]) -> Result<Self, RecipeError> {
        if lines.is_empty() {
            return Err(RecipeError::Empty);
        }
        if lines.len() > MAX_STEPS {
            return Err(RecipeError::TooLong(lines.len()));
        }
        let mut steps = Vec::with_capacity(lines.len());
        let mut started = false;
        for (i, line) in lines.iter().enumerate() {
            let step = parse_step(line).map_err(|reason| RecipeError::Step {
                index: i + 1,
                step: shorten(line),
                reason,
            })?;
            if matches!(step, Step::Start(_)) {
                if started {
                    return Err(RecipeError::Step {
                        index: i + 1,
                        step: shorten(line),
                        reason: "only one START step is allowed".into(),
                    });
                }
                started = true;
            }
            steps.push(step);
        }
        Ok(Self { steps })
    }

    /// Whether a step reads the build's archive (`COPY`).
    pub fn needs_archive(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Copy { .. }))
    }

    /// The environment after every `ENV`, on top of `base`.
    pub fn env(&self, base: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = base.clone();
        for step in &self.steps {
            if let Step::Env(k, v) = step {
                env.insert(k.clone(), v.clone());
            }
        }
        env
    }

    /// The user after the last `USER`, else `base`.
    pub fn user(&self, base: &str) -> String {
        self.steps
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::User(u) => Some(u.clone()),
                _ => None,
            })
            .unwrap_or_else(|| base.to_owned())
    }

    /// The start command and the working directory it runs in (the last `WORKDIR`
    /// before it; empty: the user's home).
    pub fn start(&self) -> Option<(String, String)> {
        let mut cwd = String::new();
        for step in &self.steps {
            match step {
                Step::Workdir(d) => cwd = d.clone(),
                Step::Start(c) => return Some((c.clone(), cwd)),
                _ => {}
            }
        }
        None
    }
}

fn shorten(line: &str) -> String {
    const MAX: usize = 60;
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_owned(),
    }
}

fn parse_step(line: &str) -> Result<Step, String> {
    if line.len() > MAX_STEP_LEN {
        return Err(format!("longer than {MAX_STEP_LEN} bytes"));
    }
    if line.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let line = line.trim();
    if line.is_empty() {
        return Err("empty step".into());
    }
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    let needs_arg = |what: &str| -> Result<String, String> {
        if rest.is_empty() {
            Err(format!("{word} needs {what}"))
        } else {
            Ok(rest.to_owned())
        }
    };
    match word {
        "RUN" => parse_run(rest),
        "COPY" => parse_copy(rest),
        "START" => needs_arg("a command").map(Step::Start),
        "ENV" => {
            let (k, v) = rest
                .split_once('=')
                .ok_or_else(|| "ENV needs KEY=value".to_owned())?;
            if !valid_env_key(k) {
                return Err(format!(
                    "ENV key {k:?} must be letters, digits and '_', not starting with a digit"
                ));
            }
            Ok(Step::Env(k.to_owned(), v.to_owned()))
        }
        "WORKDIR" => {
            let dir = needs_arg("a directory")?;
            if !dir.starts_with('/') || dir.contains(char::is_whitespace) {
                return Err("WORKDIR needs an absolute path without spaces".into());
            }
            Ok(Step::Workdir(dir))
        }
        "USER" => {
            let user = needs_arg("a user name")?;
            if !valid_user(&user) {
                return Err(format!(
                    "USER {user:?} is not a valid user name (lower-case letters, digits, '_', '-')"
                ));
            }
            Ok(Step::User(user))
        }
        // Any other line is a shell command, unless it starts with what looks like a
        // keyword (shell commands are not all upper case).
        w if w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase()) => Err(format!(
            "unknown step {w:?}; steps are RUN, ENV, WORKDIR, USER, START or a shell command"
        )),
        _ => Ok(Step::Run {
            script: line.to_owned(),
            timeout: DEFAULT_STEP_TIMEOUT,
        }),
    }
}

/// `RUN [--timeout=<duration>] <command>`.
fn parse_run(rest: &str) -> Result<Step, String> {
    let (timeout, script) = match rest.strip_prefix("--timeout=") {
        Some(flagged) => {
            let (value, script) = flagged
                .split_once(char::is_whitespace)
                .unwrap_or((flagged, ""));
            (parse_timeout(value)?, script.trim())
        }
        None => (DEFAULT_STEP_TIMEOUT, rest),
    };
    if script.is_empty() {
        return Err("RUN needs a command".into());
    }
    Ok(Step::Run {
        script: script.to_owned(),
        timeout,
    })
}

/// `90s`, `5m`, `2h` (a whole number and a unit), up to [`MAX_STEP_TIMEOUT`].
fn parse_timeout(value: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "RUN --timeout={value:?} must be a whole number of seconds, minutes or hours \
             (e.g. 90s, 5m, 2h)"
        )
    };
    let unit_at = value.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = value.split_at(unit_at);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(bad)?;
    let timeout = Duration::from_secs(secs);
    if timeout.is_zero() || timeout > MAX_STEP_TIMEOUT {
        return Err(format!(
            "RUN --timeout={value} must be between 1s and {}h",
            MAX_STEP_TIMEOUT.as_secs() / 3600
        ));
    }
    Ok(timeout)
}

/// `COPY <src>... <dest>`.
fn parse_copy(rest: &str) -> Result<Step, String> {
    let mut words: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
    if words.len() < 2 {
        return Err("COPY needs at least one source and a destination".into());
    }
    let dest = words.pop().unwrap_or_default();
    for src in &words {
        let inside = !src.starts_with('/')
            && src
                .split('/')
                .all(|part| part != ".." && !part.starts_with('-'));
        if !inside {
            return Err(format!(
                "COPY source {src:?} must be a path inside the archive (relative, no '..')"
            ));
        }
    }
    if dest.starts_with('-') {
        return Err(format!("COPY destination {dest:?} must not start with '-'"));
    }
    Ok(Step::Copy {
        sources: words,
        dest,
    })
}

fn valid_env_key(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_user(u: &str) -> bool {
    u.len() <= 32
        && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<Recipe, RecipeError> {
        Recipe::parse(&lines.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn every_keyword_parses_and_a_bare_line_is_run() {
        let r = parse(&[
            "ENV GREETING=hello world",
            "WORKDIR /srv/app",
            "RUN echo $GREETING > out",
            "echo bare",
            "RUN --timeout=90s make",
            "COPY app/ config.toml ./",
            "USER wrenn-user",
            "START python3 -m http.server 8000",
        ])
        .unwrap();
        assert_eq!(
            r.steps,
            [
                Step::Env("GREETING".into(), "hello world".into()),
                Step::Workdir("/srv/app".into()),
                Step::Run {
                    script: "echo $GREETING > out".into(),
                    timeout: DEFAULT_STEP_TIMEOUT
                },
                Step::Run {
                    script: "echo bare".into(),
                    timeout: DEFAULT_STEP_TIMEOUT
                },
                Step::Run {
                    script: "make".into(),
                    timeout: Duration::from_secs(90)
                },
                Step::Copy {
                    sources: vec!["app/".into(), "config.toml".into()],
                    dest: "./".into()
                },
                Step::User("wrenn-user".into()),
                Step::Start("python3 -m http.server 8000".into()),
            ]
        );
        assert!(r.needs_archive());
        assert_eq!(r.user("root"), "wrenn-user");
        assert_eq!(r.env(&BTreeMap::new())["GREETING"], "hello world");
        assert_eq!(
            r.start(),
            Some(("python3 -m http.server 8000".into(), "/srv/app".into()))
        );
    }

    #[test]
    fn without_user_or_start_the_base_defaults_stay() {
        let r = parse(&["RUN true"]).unwrap();
        assert!(!r.needs_archive());
        assert_eq!(r.user("wrenn-user"), "wrenn-user");
        assert_eq!(r.start(), None);
        let base = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(r.env(&base), base);
    }

    #[test]
    fn bad_steps_are_refused_by_position() {
        let err = |lines: &[&str]| parse(lines).unwrap_err().to_string();
        assert_eq!(err(&[]), "recipe must have at least one step");
        assert!(
            err(&["RUN true", "  "]).starts_with("recipe step 2"),
            "{}",
            err(&["RUN true", "  "])
        );
        assert!(err(&["ENV NOVALUE"]).contains("ENV needs KEY=value"));
        assert!(err(&["ENV 1A=x"]).contains("must be letters"));
        assert!(err(&["WORKDIR relative"]).contains("absolute path"));
        assert!(err(&["USER Root!"]).contains("not a valid user name"));
        assert!(err(&["RUN"]).contains("RUN needs a command"));
        assert!(err(&["START a", "START b"]).contains("recipe step 2"));
        assert!(err(&["COPY"]).contains("COPY needs"));
        assert!(err(&["COPY only-one"]).contains("COPY needs"));
        assert!(err(&["COPY ../etc/passwd /x"]).contains("inside the archive"));
        assert!(err(&["COPY a/../../b /x"]).contains("inside the archive"));
        assert!(err(&["COPY /etc/passwd /x"]).contains("inside the archive"));
        assert!(err(&["COPY -r /x"]).contains("inside the archive"));
        assert!(err(&["COPY a --target"]).contains("must not start with '-'"));
        assert!(err(&["RUN --timeout=5m"]).contains("RUN needs a command"));
        for bad in ["5", "5d", "m", "-5m", "0s", "7h", "99999999999999999999h"] {
            assert!(
                err(&[&format!("RUN --timeout={bad} true")]).contains("--timeout="),
                "{bad}"
            );
        }
        assert!(err(&["FROM debian"]).contains("unknown step \"FROM\""));
        let many: Vec<&str> = vec!["true"; MAX_STEPS + 1];
        assert!(err(&many).contains("at most"));
    }
}
