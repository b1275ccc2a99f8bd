//! The Wrenn host agent.

pub mod runtime;
