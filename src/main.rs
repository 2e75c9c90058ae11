//! The `cohortql` executable.

/// mimalloc gives freed memory back (Cargo.toml says why it is the allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Query plans of large studies are deep trees, and planning, optimising and unparsing them
/// recurses once per level: the work runs on threads with room for that.
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
