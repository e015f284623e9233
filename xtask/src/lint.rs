//! `cargo xtask lint` (and the first step of `cargo xtask test`): rustfmt and clippy with
//! warnings denied, on the host and for the bare-metal builds.
//!
//! The host check (`--workspace --all-targets`) never compiles the `cfg(target_os = "none")`
//! code — the hardware layer, the entry path, the guests — so the atoll image and the guest-kit
//! guests are checked again for `x86_64-unknown-none`, with the flags `cargo xtask build` uses
//! ([`crate::image::BARE_METAL_FLAGS`]). The lints themselves (e.g. one unsafe operation per
//! documented `unsafe` block) live in the workspace's `Cargo.toml`, so an editor's clippy and
//! this command agree.

use crate::image::{BARE_METAL_FLAGS, GUESTS_PACKAGE, IMAGE_PACKAGE};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

/// One lint step: a name for messages and the `cargo` arguments it runs.
pub struct Step {
    /// What the step checks, as named in progress and failure messages.
    pub name: &'static str,
    /// The arguments after `cargo`.
    pub args: Vec<&'static str>,
}

/// The steps, in order: formatting first (cheapest), then clippy on the host, on the image and on
/// the guests.
pub fn steps() -> Vec<Step> {
    let deny = ["--", "-D", "warnings"];
    let bare_metal = |what: &[&'static str]| {
        let mut args = vec!["clippy"];
        args.extend(BARE_METAL_FLAGS);
        args.extend(what);
        args.extend(deny);
        args
    };
    let mut host = vec!["clippy", "--workspace", "--all-targets"];
    host.extend(deny);
    vec![
        Step {
            name: "rustfmt",
            args: vec!["fmt", "--all", "--check"],
        },
        Step {
            name: "clippy (host, all targets)",
            args: host,
        },
        Step {
            name: "clippy (atoll image, x86_64-unknown-none)",
            args: bare_metal(&IMAGE_PACKAGE),
        },
        Step {
            name: "clippy (atoll image with its test features, x86_64-unknown-none)",
            args: bare_metal(&[&IMAGE_PACKAGE[..], &["--features", "fault-injection"]].concat()),
        },
        Step {
            name: "clippy (guest-kit guests, x86_64-unknown-none)",
            args: bare_metal(&GUESTS_PACKAGE),
        },
    ]
}

/// Runs every step; fails on the first that fails, naming it. Returns the time taken.
pub fn lint() -> Result<Duration> {
    let missing = crate::setup::missing_rust_components();
    if !missing.is_empty() {
        bail!(
            "the Rust components {} are not installed: run `cargo xtask setup` \
             (or `rustup component add {}`)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    let start = Instant::now();
    for step in steps() {
        eprintln!("xtask: lint: {}: cargo {}", step.name, step.args.join(" "));
        let t = Instant::now();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(crate::root())
            .args(&step.args)
            .status()
            .with_context(|| format!("running the lint step {}", step.name))?;
        if !status.success() {
            let hint = if step.name == "rustfmt" {
                " (run `cargo fmt --all`)"
            } else {
                ""
            };
            bail!("lint step {} failed ({status}){hint}", step.name);
        }
        eprintln!(
            "xtask: lint: {} passed in {:.1} s",
            step.name,
            t.elapsed().as_secs_f64()
        );
    }
    let took = start.elapsed();
    eprintln!("xtask: lint passed in {:.1} s", took.as_secs_f64());
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clippy_step_denies_warnings() {
        for step in steps().iter().filter(|s| s.args[0] == "clippy") {
            let tail = &step.args[step.args.len() - 3..];
            assert_eq!(tail, ["--", "-D", "warnings"], "{}", step.name);
        }
    }

    #[test]
    fn bare_metal_steps_use_the_image_build_flags() {
        let steps = steps();
        let bare: Vec<_> = steps
            .iter()
            .filter(|s| s.args.contains(&"x86_64-unknown-none"))
            .collect();
        assert_eq!(
            bare.len(),
            3,
            "the image, the image with its test features, the guests"
        );
        for step in bare {
            let flags = &step.args[1..1 + BARE_METAL_FLAGS.len()];
            assert_eq!(flags, BARE_METAL_FLAGS, "{}", step.name);
        }
        assert!(steps
            .iter()
            .any(|s| s.args.windows(4).any(|w| w == IMAGE_PACKAGE)));
        assert!(steps
            .iter()
            .any(|s| s.args.windows(3).any(|w| w == GUESTS_PACKAGE)));
    }

    #[test]
    fn formatting_is_checked_not_rewritten() {
        let fmt = &steps()[0];
        assert_eq!(fmt.args, ["fmt", "--all", "--check"]);
    }
}
