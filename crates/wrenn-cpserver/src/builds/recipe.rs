//! The recipe language of template builds: one step per string.
//!
//! | step | meaning |
//! |---|---|
//! | `RUN <shell>` | runs `<shell>` with `/bin/sh -c`; a non-zero exit fails the build |
//! | `<shell>` | a line without a keyword is a `RUN` |
//! | `ENV <KEY>=<value>` | sets a variable for later steps and in the template's environment |
//! | `WORKDIR <abs dir>` | makes the directory; later steps (and `START`) run in it |
//! | `USER <name>` | later steps run as this user, who becomes the template's default user |
//! | `START <command>` | the template's start command (at most one): started after the last step, before the healthcheck, and in every capsule made from the template |
//!
//! Keywords are upper case and followed by a space. Steps run in order in one
//! capsule; `ENV`, `WORKDIR` and `USER` apply to the steps after them.

use std::collections::BTreeMap;

/// Most steps a recipe may have.
pub const MAX_STEPS: usize = 200;
/// Longest step, in bytes.
pub const MAX_STEP_LEN: usize = 16 * 1024;

/// One parsed recipe step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A shell command.
    Run(String),
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
            Self::Run(_) => "RUN",
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
        "RUN" => needs_arg("a command").map(Step::Run),
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
        _ => Ok(Step::Run(line.to_owned())),
    }
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
            "USER wrenn-user",
            "START python3 -m http.server 8000",
        ])
        .unwrap();
        assert_eq!(
            r.steps,
            [
                Step::Env("GREETING".into(), "hello world".into()),
                Step::Workdir("/srv/app".into()),
                Step::Run("echo $GREETING > out".into()),
                Step::Run("echo bare".into()),
                Step::User("wrenn-user".into()),
                Step::Start("python3 -m http.server 8000".into()),
            ]
        );
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
        assert!(err(&["COPY"]).contains("unknown step \"COPY\""));
        assert!(err(&["FROM debian"]).contains("unknown step \"FROM\""));
        let many: Vec<&str> = vec!["true"; MAX_STEPS + 1];
        assert!(err(&many).contains("at most"));
    }
}
