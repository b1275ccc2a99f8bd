//! The agent's integration tests: one binary, one module per area. Tests that start
//! real capsules need root, cgroups, overlayfs and netns, as the agent does.

// This test binary is the sandbox init program of the process runtimes it starts: like
// every binary embedding the agent, it must run `wrenn_agent::init::main_if_init()`
// before anything else. libtest owns `main`, so a constructor in `.init_array` does it:
// when the runtime starts this binary as a capsule's init step, it sets the capsule up
// and execs envd; otherwise it returns at once.
#[used]
#[allow(unsafe_code)] // `link_section` is an unsafe attribute; the function is plain Rust.
#[unsafe(link_section = ".init_array")]
static SANDBOX_INIT: extern "C" fn() = {
    extern "C" fn sandbox_init() {
        wrenn_agent::init::main_if_init();
    }
    sandbox_init
};

mod common;

mod agent_process_e2e;
mod agent_qemu_e2e;
mod agent_service;
mod firecracker;
mod firecracker_runtime;
mod firecracker_uffd;
mod image;
mod isolation;
mod liveness;
mod metrics;
mod multi_host;
mod network;
mod process_runtime;
mod proxy;
mod registration;
