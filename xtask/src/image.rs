//! `cargo xtask build` and `cargo xtask image`: the atoll ELF and a GRUB ISO carrying it, the
//! scenario's modules and its command line.

use crate::scenario::Scenario;
use crate::setup::IMAGE_TARGET;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Runs `cargo build --release --target x86_64-unknown-none` with `what` (package and targets)
/// and returns the output directory.
fn build_bare_metal(what: &[&str], name: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::root())
        .args(["build", "--quiet", "--release", "--target", IMAGE_TARGET])
        .args(what)
        .status()
        .with_context(|| format!("running cargo build for {name}"))?;
    if !status.success() {
        bail!("building {name} failed");
    }
    Ok(crate::target_dir().join(IMAGE_TARGET).join("release"))
}

/// Builds the image (release profile) and returns the ELF's path.
pub fn build() -> Result<PathBuf> {
    let elf =
        build_bare_metal(&["-p", "hypervisor", "--bin", "atoll"], "the atoll image")?.join("atoll");
    if !elf.exists() {
        bail!("cargo built, but {} is missing", elf.display());
    }
    Ok(elf)
}

/// Builds the `guest-kit` guests (release, bare-metal) and returns their directory.
pub fn build_guests() -> Result<PathBuf> {
    build_bare_metal(&["-p", "guest-kit", "--bins"], "the guest-kit guests")
}

/// Checks every enclave description the scenario carries (modules named `enclaves`) with
/// atoll's own parser, against the run's processors (APIC ids 0..cpus on QEMU and Bochs).
pub fn check_enclaves(scenario: &Scenario, cpus: Option<u32>) -> Result<()> {
    let names: Vec<&str> = scenario.modules.iter().map(|m| m.name.as_str()).collect();
    let cores: Option<Vec<u32>> = cpus.map(|n| (0..n).collect());
    for m in scenario.modules.iter().filter(|m| m.name == "enclaves") {
        let Some(path) = &m.path else {
            bail!("module 'enclaves' must be a file (path = …)")
        };
        let file = crate::root().join(path);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let ctx = atoll::config::Context {
            cores: cores.as_deref(),
            modules: Some(&names),
        };
        atoll::config::parse(&text, &ctx)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    }
    Ok(())
}

/// The GRUB configuration for `scenario` with extra boot options `extra`.
pub fn grub_cfg(scenario: &Scenario, extra: &str) -> String {
    let cmdline = format!("{} {}", scenario.cmdline, extra).trim().to_string();
    let mut cfg = String::from(
        "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n",
    );
    cfg.push_str(&format!("menuentry \"atoll ({})\" {{\n", scenario.name));
    cfg.push_str(&format!("    multiboot2 /boot/atoll.elf {cmdline}\n"));
    for m in &scenario.modules {
        cfg.push_str(&format!(
            "    module2 /boot/modules/{} {}\n",
            m.name, m.name
        ));
    }
    cfg.push_str("    boot\n}\n");
    cfg
}

/// Builds the image and a bootable ISO for `scenario`; returns the ISO's path.
pub fn iso(scenario: &Scenario, extra_cmdline: &str) -> Result<PathBuf> {
    check_enclaves(scenario, None)?;
    let elf = build()?;
    let guests = if scenario.modules.iter().any(|m| m.guest.is_some()) {
        Some(build_guests()?)
    } else {
        None
    };
    let tag = if extra_cmdline.trim().is_empty() {
        String::new()
    } else {
        format!("-{:016x}", fnv(extra_cmdline))
    };
    let work = crate::target_dir()
        .join("images")
        .join(format!("{}{tag}", scenario.name));
    let tree = work.join("iso");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("boot/grub"))?;
    std::fs::create_dir_all(tree.join("boot/modules"))?;
    std::fs::copy(&elf, tree.join("boot/atoll.elf")).context("copying the image")?;
    for m in &scenario.modules {
        let src = match (&m.path, &m.guest, &guests) {
            (Some(p), _, _) => crate::root().join(p),
            (None, Some(g), Some(dir)) => dir.join(g),
            _ => bail!("module '{}' has no source", m.name),
        };
        std::fs::copy(&src, tree.join("boot/modules").join(&m.name))
            .with_context(|| format!("module '{}': cannot copy {}", m.name, src.display()))?;
    }
    std::fs::write(
        tree.join("boot/grub/grub.cfg"),
        grub_cfg(scenario, extra_cmdline),
    )?;
    let iso = work.join("atoll.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(&tree)
        .output()
        .context("running grub-mkrescue (run `cargo xtask setup` to install it)")?;
    if !out.status.success() {
        bail!(
            "grub-mkrescue failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(iso)
}

/// FNV-1a, to name ISOs built with extra options apart.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_carries_cmdline_and_modules() {
        let s = Scenario::parse(
            "demo",
            "description='d'\ncmdline='log=info'\ntimeout_s={qemu=1,bochs=1}\n[[module]]\nname='config'\npath='x.toml'",
        )
        .unwrap();
        let cfg = grub_cfg(&s, "fake_apic_ids=7");
        assert!(cfg.contains("multiboot2 /boot/atoll.elf log=info fake_apic_ids=7\n"));
        assert!(cfg.contains("module2 /boot/modules/config config\n"));
        assert!(cfg.contains("terminal_output serial"));
    }
}
