//! `atoll-fwq`: see the library's documentation (`atoll_fwq`).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap prints its own errors (and --help) and exits with status 2.
    let args = atoll_fwq::args::Args::parse();
    match atoll_fwq::main_with(args, &mut std::io::stdout().lock(), &mut std::io::stderr()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atoll-fwq: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
