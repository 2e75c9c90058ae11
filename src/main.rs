//! The `cohortql` executable.

fn main() -> std::process::ExitCode {
    cohortql::cli::main()
}
