//! Command-line arguments: `atoll-hpcg NX NY NZ [--rt SECONDS] [--threads N]`.
//!
//! The reference silently replaces a side below 16 (by the largest of the
//! other two, or 16) and asserts that every side halves evenly three times
//! (`GenerateCoarseProblem`, active in its standard builds, which define no
//! `NDEBUG`); here such sizes are rejected with a message instead.

use std::fmt;

use crate::par::Par;
use crate::problem::Grid;
use crate::report::Config;

/// Smallest side the reference runs (its `HPCG_Init` raises smaller ones to 16).
pub const MIN_SIDE: usize = 16;
/// Sides must halve evenly for the three coarsenings of the 4-level V-cycle.
pub const SIDE_MULTIPLE: usize = 8;
/// The reference's `CheckAspectRatio(0.125, …)`: min side / max side.
pub const MIN_ASPECT_RATIO: f64 = 0.125;
/// Cap on the fine-grid rows: about 540 bytes per row in all (27 values and
/// column indices, ~16 vectors, the coarse levels), so 2²³ rows ≈ 4.5 GB.
pub const MAX_ROWS: usize = 1 << 23;
/// Approximate bytes of memory per fine-grid row, for the error message.
pub const BYTES_PER_ROW: usize = 540;

pub const USAGE: &str = "usage: atoll-hpcg NX NY NZ [--rt SECONDS] [--threads N]\n\
  NX NY NZ     local grid, each a multiple of 8 and at least 16, min/max ≥ 0.125\n\
  --rt SECONDS benchmark time (default 0: the reference's QuickPath, one set)\n\
  --threads N  threads per kernel (default: the CPUs this process may run on)";

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Run(Config),
    Help,
}

/// A command line that cannot be run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliError {
    MissingSides { given: usize },
    ExtraArgument(String),
    NotANumber { what: &'static str, value: String },
    SideTooSmall { axis: char, value: usize },
    SideNotMultiple { axis: char, value: usize },
    AspectRatio { nx: usize, ny: usize, nz: usize },
    TooLarge { rows: usize },
    MissingValue(&'static str),
    ZeroThreads,
    UnknownOption(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::MissingSides { given } => write!(f, "expected three grid sides NX NY NZ, got {given}"),
            CliError::ExtraArgument(a) => write!(f, "unexpected argument '{a}'"),
            CliError::NotANumber { what, value } => write!(f, "{what} must be a non-negative integer, got '{value}'"),
            CliError::SideTooSmall { axis, value } => {
                write!(f, "n{axis} = {value} is below the minimum of {MIN_SIDE}")
            }
            CliError::SideNotMultiple { axis, value } => write!(
                f,
                "n{axis} = {value} is not a multiple of {SIDE_MULTIPLE} (each side is halved three times for the 4-level multigrid)"
            ),
            CliError::AspectRatio { nx, ny, nz } => write!(
                f,
                "grid {nx}x{ny}x{nz}: min/max side ratio is below {MIN_ASPECT_RATIO} (the reference requires a roughly cubic box)"
            ),
            CliError::TooLarge { rows } => write!(
                f,
                "{rows} grid points exceed the limit of {MAX_ROWS} (about {} MiB; this grid would need about {} MiB)",
                (MAX_ROWS * BYTES_PER_ROW) >> 20,
                rows.saturating_mul(BYTES_PER_ROW) >> 20
            ),
            CliError::MissingValue(opt) => write!(f, "{opt} needs a value"),
            CliError::ZeroThreads => write!(f, "--threads must be at least 1"),
            CliError::UnknownOption(o) => write!(f, "unknown option '{o}'"),
        }
    }
}

impl std::error::Error for CliError {}

fn parse_number(what: &'static str, value: &str) -> Result<usize, CliError> {
    // Digits only: no sign, no spaces, no hex, as a plain %d-like count.
    if value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
        return Err(CliError::NotANumber {
            what,
            value: value.to_owned(),
        });
    }
    value.parse().map_err(|_| CliError::NotANumber {
        what,
        value: value.to_owned(),
    })
}

/// Checks a grid against the reference's requirements and the memory cap.
pub fn check_grid(nx: usize, ny: usize, nz: usize) -> Result<Grid, CliError> {
    for (axis, value) in [('x', nx), ('y', ny), ('z', nz)] {
        if value < MIN_SIDE {
            return Err(CliError::SideTooSmall { axis, value });
        }
        if value % SIDE_MULTIPLE != 0 {
            return Err(CliError::SideNotMultiple { axis, value });
        }
    }
    let min = nx.min(ny).min(nz) as f64;
    let max = nx.max(ny).max(nz) as f64;
    if min / max < MIN_ASPECT_RATIO {
        return Err(CliError::AspectRatio { nx, ny, nz });
    }
    let rows = nx.saturating_mul(ny).saturating_mul(nz);
    if rows > MAX_ROWS {
        return Err(CliError::TooLarge { rows });
    }
    Ok(Grid::new(nx, ny, nz))
}

/// Parses the arguments after the program name; `default_par` is used
/// unless `--threads` is given.
pub fn parse<S: AsRef<str>>(args: &[S], default_par: Par<'static>) -> Result<Command, CliError> {
    let mut sides = Vec::new();
    let mut rt = 0usize;
    let mut threads = None;
    let mut it = args.iter().map(AsRef::as_ref);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "--rt" | "--threads" => {
                let opt: &'static str = if name == "--rt" { "--rt" } else { "--threads" };
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or(CliError::MissingValue(opt))?,
                };
                let n = parse_number(opt, value)?;
                if opt == "--rt" {
                    rt = n;
                } else {
                    threads = Some(n);
                }
            }
            _ if name.starts_with('-') => return Err(CliError::UnknownOption(arg.to_owned())),
            _ => {
                if sides.len() == 3 {
                    return Err(CliError::ExtraArgument(arg.to_owned()));
                }
                let what = ["NX", "NY", "NZ"][sides.len()];
                sides.push(parse_number(what, arg)?);
            }
        }
    }
    let [nx, ny, nz] = sides[..] else {
        return Err(CliError::MissingSides { given: sides.len() });
    };
    let grid = check_grid(nx, ny, nz)?;
    let runtime_seconds = u32::try_from(rt).map_err(|_| CliError::NotANumber {
        what: "--rt",
        value: rt.to_string(),
    })?;
    let par = match threads {
        Some(0) => return Err(CliError::ZeroThreads),
        Some(n) => Par {
            threads: n,
            ..default_par
        },
        None => default_par,
    };
    Ok(Command::Run(Config {
        grid,
        runtime_seconds,
        par,
    }))
}
