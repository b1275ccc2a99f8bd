//! envd's integration tests (one binary, a module per area): processes, terminals,
//! files, transport and tunnels against a real envd server.

mod common;

mod filesystem;
mod large_file;
mod process;
mod pty;
mod system;
mod transport;
mod tunnel;
