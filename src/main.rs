//! The `cohortql` executable.

/// mimalloc gives freed memory back (Cargo.toml says why it is the allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Query plans of large studies are deep trees, and planning, optimising and unparsing them
/// recurses once per level: the work runs on threads with room for that.
const STACK_BYTES: usize = 256 << 20;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    std::thread::Builder::new()
        .name("cohortql".into())
        .stack_size(STACK_BYTES)
        .spawn(cohortql::cli::main)
        .expect("a thread can be started")
        .join()
        .unwrap_or(std::process::ExitCode::from(101))
}

/// Transparent huge pages off for this process, whatever the machine's setting: each first touch
/// of one zeroes 2 MiB, and memory mimalloc gives back and takes again is touched anew, which
/// cost a study up to a third of its time (docs/performance.md).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: `prctl` with `PR_SET_THP_DISABLE` takes integers only and changes one flag of
    // this process; a kernel without it returns an error, which leaves things as they were.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
