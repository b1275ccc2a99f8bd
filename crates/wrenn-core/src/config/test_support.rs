//! Helpers shared by the configuration's unit tests: parse a configuration from a
//! list of variables, and name the variable an error blames.

use std::collections::HashMap;

use super::{AgentConfig, Config, ConfigError};

pub(super) fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

pub(super) fn agent(pairs: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    AgentConfig::from_lookup(|k| map.get(k).cloned())
}

pub(super) fn err_var(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Invalid { var, .. }
        | ConfigError::InvalidSecret { var, .. }
        | ConfigError::Incomplete { var, .. } => var,
    }
}

pub(super) const SECRET: &str = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
pub(super) const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
