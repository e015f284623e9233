//! `atoll-hpcg NX NY NZ [--rt SECONDS] [--threads N]`: runs the HPCG
//! reference algorithm and prints one `ATOLL-HPCG {…}` JSON line.

use std::process::ExitCode;

use atoll_hpcg::cli::{parse, Command, USAGE};
use atoll_hpcg::par::Par;
use atoll_hpcg::report::run;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args, Par::from_affinity()) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("atoll-hpcg: error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(mut report) => {
            report.cpus_allowed = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| atoll_hpcg::report::cpus_allowed(&s));
            println!("{}", report.line());
            if report.valid {
                ExitCode::SUCCESS
            } else {
                eprintln!("atoll-hpcg: the run is INVALID (see spectral/symmetry/norms/tolerance_failures)");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("atoll-hpcg: error: cannot generate the problem: {e:?}");
            ExitCode::from(2)
        }
    }
}
