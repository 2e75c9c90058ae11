//! The `cohortql` executable.

/// Query plans of large studies are deep trees, and planning, optimising and unparsing them
/// recurses once per level: the work runs on threads with room for that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STACK_BYTES: usize = 256 << 20;

fn main() -> std::process::ExitCode {
    std::thread::Builder::new()
        .name("cohortql".into())
        .stack_size(STACK_BYTES)
        .spawn(cohortql::cli::main)
        .expect("a thread can be started")
        .join()
        .unwrap_or(std::process::ExitCode::from(101))
}
