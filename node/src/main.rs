use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    keep_large_buffers_in_the_heap();
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

/// A transfer allocates and frees buffers of up to 256 KiB per chunk (the chunk read, its
/// message, the frame cut from the stream), thousands a second on several threads. glibc's
/// malloc serves blocks over its mmap threshold (128 KiB at first, later the largest block
/// freed) with `mmap`, and gives free memory at the top of a heap back to the kernel beyond
/// twice that: each chunk then costs page faults and freshly zeroed pages. A 1 MiB threshold
/// and an 8 MiB trim threshold keep those buffers in the heap: about 10 % fewer CPU seconds per
/// GiB on loopback with peak RSS unchanged (BENCHMARKS.md). A 64 MiB trim threshold saved a
/// little more but let 100,000 queued files pass 100 MiB; mimalloc was faster on one file,
/// slower on small files and many peers, and held 131 MiB for 100,000 files.
#[allow(unsafe_code, reason = "one FFI call that sets two malloc parameters")]
fn keep_large_buffers_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets glibc malloc parameters; it is called before any other
    // thread exists, and its result (0 when a value is refused) leaves the defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}
