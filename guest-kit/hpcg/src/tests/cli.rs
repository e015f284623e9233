use crate::cli::{check_grid, parse, CliError, Command, MAX_ROWS};
use crate::par::Par;
use crate::problem::Grid;

fn run(args: &[&str]) -> Result<Command, CliError> {
    parse(args, Par::with_threads(4))
}

fn config(args: &[&str]) -> crate::report::Config {
    match run(args) {
        Ok(Command::Run(c)) => c,
        other => panic!("{args:?}: {other:?}"),
    }
}

#[test]
fn accepts_the_reference_forms() {
    let c = config(&["16", "16", "16"]);
    assert_eq!(c.grid, Grid::new(16, 16, 16));
    assert_eq!(c.runtime_seconds, 0, "no --rt: the reference's QuickPath");
    assert_eq!(c.par, Par::with_threads(4));
    assert_eq!(
        config(&["24", "32", "16", "--rt", "60"]).runtime_seconds,
        60
    );
    assert_eq!(config(&["--rt=5", "16", "16", "16"]).runtime_seconds, 5);
    let c = config(&["16", "16", "16", "--threads", "3"]);
    assert_eq!(c.par.threads, 3);
    assert_eq!(c.par.min_items, Par::with_threads(4).min_items);
    assert_eq!(config(&["128", "16", "64"]).grid, Grid::new(128, 16, 64));
    assert_eq!(run(&["--help"]), Ok(Command::Help));
    assert_eq!(run(&["16", "-h"]), Ok(Command::Help));
}

#[test]
fn rejects_bad_arguments_with_specific_errors() {
    assert_eq!(run(&[]), Err(CliError::MissingSides { given: 0 }));
    assert_eq!(run(&["16", "16"]), Err(CliError::MissingSides { given: 2 }));
    assert_eq!(
        run(&["16", "16", "16", "16"]),
        Err(CliError::ExtraArgument("16".into()))
    );
    assert_eq!(
        run(&["16", "x", "16"]),
        Err(CliError::NotANumber {
            what: "NY",
            value: "x".into()
        })
    );
    assert_eq!(
        run(&["16", "16", "+16"]),
        Err(CliError::NotANumber {
            what: "NZ",
            value: "+16".into()
        })
    );
    assert_eq!(
        run(&["16", "16", "16", "--rt", "-1"]),
        Err(CliError::NotANumber {
            what: "--rt",
            value: "-1".into()
        })
    );
    assert_eq!(
        run(&["16", "16", "16", "--rt", "1.5"]),
        Err(CliError::NotANumber {
            what: "--rt",
            value: "1.5".into()
        })
    );
    assert_eq!(
        run(&["16", "16", "16", "--rt"]),
        Err(CliError::MissingValue("--rt"))
    );
    assert_eq!(
        run(&["16", "16", "16", "--threads", "0"]),
        Err(CliError::ZeroThreads)
    );
    assert_eq!(
        run(&["16", "16", "16", "--nx=16"]),
        Err(CliError::UnknownOption("--nx=16".into()))
    );
    assert_eq!(
        run(&["8", "16", "16"]),
        Err(CliError::SideTooSmall {
            axis: 'x',
            value: 8
        })
    );
    assert_eq!(
        run(&["16", "20", "16"]),
        Err(CliError::SideNotMultiple {
            axis: 'y',
            value: 20
        })
    );
    assert_eq!(
        run(&["16", "16", "136"]),
        Err(CliError::AspectRatio {
            nx: 16,
            ny: 16,
            nz: 136
        })
    );
    assert_eq!(
        run(&["16", "16", "99999999999999999999999"]).map(|_| ()),
        Err(CliError::NotANumber {
            what: "NZ",
            value: "99999999999999999999999".into()
        })
    );
    // Errors render as sentences naming the offending value.
    let msg = run(&["16", "20", "16"]).unwrap_err().to_string();
    assert!(
        msg.contains("ny = 20") && msg.contains("multiple of 8"),
        "{msg}"
    );
}

#[test]
fn grid_limits_are_the_documented_ones() {
    // 128·... : exactly the aspect limit (16/128 = 0.125) is allowed.
    assert!(check_grid(16, 16, 128).is_ok());
    // The memory cap: 2²³ points pass, one plane more does not.
    assert!(check_grid(256, 256, 128).is_ok());
    assert_eq!(256 * 256 * 128, MAX_ROWS);
    assert_eq!(
        check_grid(256, 256, 136),
        Err(CliError::TooLarge {
            rows: 256 * 256 * 136
        })
    );
    let msg = check_grid(512, 512, 512).unwrap_err().to_string();
    assert!(msg.contains("MiB"), "{msg}");
}

#[test]
fn the_allowed_cpus_come_from_proc_status() {
    use crate::report::cpus_allowed;
    let status = "Name:\tatoll-hpcg\nCpus_allowed:\t2\nCpus_allowed_list:\t1\nMems_allowed:\t1\n";
    assert_eq!(cpus_allowed(status).as_deref(), Some("1"));
    assert_eq!(
        cpus_allowed("Cpus_allowed_list:\t0-3,8\n").as_deref(),
        Some("0-3,8")
    );
    assert_eq!(cpus_allowed("Name:\tx\n"), None, "no such line");
    assert_eq!(cpus_allowed("Cpus_allowed_list:\t\n"), None, "empty");
}
