//! `cargo xtask setup`: installs what is missing, and nothing else.
//!
//! Needs: Bochs with its BIOS, VGA BIOS and `term` display; QEMU ≥ 8 with the `igb` and
//! `intel-iommu` devices (on Debian 12 from bookworm-backports); GRUB's BIOS modules, xorriso
//! and mtools for `grub-mkrescue`; busybox-static and cpio for guest initramfs images;
//! `script` (util-linux) to give Bochs a terminal; `iasl` (acpica-tools) for the host tests that
//! disassemble atoll's generated ACPI tables; e2fsprogs for the ext4 images of the virtio-blk
//! tests; stress-ng and rt-tests for the isolation bench's host; the `x86_64-unknown-none`
//! Rust target; rustfmt and clippy for `cargo xtask lint`.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// Debian packages atoll's tooling needs (besides QEMU, handled on its own).
pub const PACKAGES: &[&str] = &[
    "bochs",
    "bochsbios",
    "vgabios",
    "bochs-term",
    "grub-pc-bin",
    "grub-common",
    "xorriso",
    "mtools",
    "busybox-static",
    "cpio",
    "bsdutils",
    "acpica-tools",
    // `mkfs.ext4 -d` (e2fsprogs ≥ 1.43) builds the virtio-blk tests' ext4 images from a
    // directory, with no mount and no root.
    "e2fsprogs",
    // The isolation bench's host tools (issue 15), copied with their libraries into the
    // host's initramfs (`bench-initrd`): the background loads and Debian's latency probe.
    "stress-ng",
    "rt-tests",
    // The benches' plots' font (DejaVu Sans, read by plotters' ab_glyph backend).
    "fonts-dejavu-core",
];

/// The rustup components `cargo xtask lint` runs.
pub const RUST_COMPONENTS: &[&str] = &["rustfmt", "clippy"];

/// The [`RUST_COMPONENTS`] the active toolchain lacks. Without rustup (a distribution's
/// toolchain) nothing is reported missing; cargo then says so itself if a tool is absent.
pub fn missing_rust_components() -> Vec<&'static str> {
    output("rustup", &["component", "list", "--installed"])
        .map(|installed| components_missing_from(&installed))
        .unwrap_or_default()
}

/// The [`RUST_COMPONENTS`] absent from `rustup component list --installed`'s output.
fn components_missing_from(installed: &str) -> Vec<&'static str> {
    RUST_COMPONENTS
        .iter()
        .copied()
        .filter(|c| {
            // Lines are `NAME-HOST_TRIPLE`, e.g. `clippy-x86_64-unknown-linux-gnu`.
            !installed
                .lines()
                .any(|l| l.trim().strip_prefix(c).is_some_and(|r| r.starts_with('-')))
        })
        .collect()
}

/// The Rust target the image is built for.
pub const IMAGE_TARGET: &str = "x86_64-unknown-none";

const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/atoll-bookworm-backports.sources";

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_some_and(|s| s.contains("install ok installed"))
}

/// What is wrong with the installed QEMU, if anything.
pub fn qemu_problem() -> Option<String> {
    let Some(version) = output("qemu-system-x86_64", &["--version"]) else {
        return Some("qemu-system-x86_64 is not installed".into());
    };
    let major: u32 = version
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 8 {
        return Some(format!("QEMU {major} is too old (need 8 or later)"));
    }
    let devices = output("qemu-system-x86_64", &["-device", "help"]).unwrap_or_default();
    for dev in ["igb", "intel-iommu"] {
        if !devices.contains(&format!("name \"{dev}\"")) {
            return Some(format!("QEMU lacks the {dev} device"));
        }
    }
    None
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    eprintln!("setup: {cmd} {}", args.join(" "));
    let status = Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !status.success() {
        bail!("`{cmd} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
}

/// Installs what is missing. Idempotent; says what it does.
pub fn setup() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    let qemu = qemu_problem();
    let target_missing = !output("rustup", &["target", "list", "--installed"])
        .is_some_and(|s| s.lines().any(|l| l.trim() == IMAGE_TARGET));

    if !missing.is_empty() || qemu.is_some() {
        let mut what = missing.join(" ");
        if let Some(q) = &qemu {
            what.push_str(&format!(" qemu-system-x86 ({q})"));
        }
        if !is_root() {
            bail!(
                "cargo xtask setup must run as root to install: {}",
                what.trim()
            );
        }
        if output("apt-get", &["--version"]).is_none() {
            bail!("no apt-get: install by hand: {}", what.trim());
        }
        if qemu.is_some()
            && codename().as_deref() == Some("bookworm")
            && !std::path::Path::new(BACKPORTS_FILE).exists()
        {
            eprintln!("setup: Debian 12's QEMU lacks igb; adding bookworm-backports");
            std::fs::write(
                BACKPORTS_FILE,
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            )
            .with_context(|| format!("writing {BACKPORTS_FILE}"))?;
        }
        run("apt-get", &["update", "-q"])?;
        if !missing.is_empty() {
            let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
            args.extend(&missing);
            run("apt-get", &args).with_context(|| format!("installing {}", missing.join(" ")))?;
        }
        if qemu.is_some() {
            let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
            if codename().as_deref() == Some("bookworm") {
                args.extend(["-t", "bookworm-backports"]);
            }
            args.push("qemu-system-x86");
            run("apt-get", &args).context("installing qemu-system-x86")?;
            if let Some(q) = qemu_problem() {
                bail!("QEMU still unusable after installing: {q}");
            }
        }
    }
    if target_missing {
        run("rustup", &["target", "add", IMAGE_TARGET])?;
    }
    let components = missing_rust_components();
    if !components.is_empty() {
        let mut args = vec!["component", "add"];
        args.extend(&components);
        run("rustup", &args)?;
    }
    let still: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        bail!("packages could not be installed: {}", still.join(" "));
    }
    eprintln!("setup: everything atoll needs is installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_components_are_matched_by_name_and_host_triple() {
        let all = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n\
                   rustfmt-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-none\n";
        assert!(components_missing_from(all).is_empty());
        let no_clippy = "cargo-x86_64-unknown-linux-gnu\nrustfmt-x86_64-unknown-linux-gnu\n";
        assert_eq!(components_missing_from(no_clippy), ["clippy"]);
        // A name that merely begins with the component's, or lacks the triple, is not it.
        assert_eq!(
            components_missing_from("clippyx-x\nrustfmt\n"),
            ["rustfmt", "clippy"]
        );
        assert_eq!(components_missing_from(""), ["rustfmt", "clippy"]);
    }
}
