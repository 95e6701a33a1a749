use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fsnode::cli::Cli::parse();
    let _log_guard = fsnode::shell::run::init_logging(cli.verbose);
    match fsnode::commands::dispatch(cli) {
        Ok(()) => ExitCode::from(fsnode::exit::OK),
        Err(error) => {
            if is_broken_pipe(&error) {
                // `fsnode journal show | head` is not an error (ripgrep's rule).
                return ExitCode::from(fsnode::exit::OK);
            }
            eprintln!("fsnode: {error:#}");
            ExitCode::from(fsnode::exit::code_for(&error))
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
