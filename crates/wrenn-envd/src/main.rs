//! The `wrenn-envd` binary: the guest agent of a Wrenn sandbox.

fn main() -> std::process::ExitCode {
    wrenn_envd::cli::main()
}
