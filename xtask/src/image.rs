//! `cargo xtask build` and `cargo xtask image`: the atoll ELF and a GRUB ISO carrying it, the
//! scenario's modules and its command line.
//!
//! A scenario's `linux = "kernel"` and `linux = "initrd"` modules come from the Linux guest
//! image ([`crate::guest_image`]), built (downloaded) on first use; the kernel is a parameter
//! of the run ([`ImageOptions::guest_kernel`]). The ISO's directory,
//! `target/images/SCENARIO[-TAG]/`, is named apart for every non-default option: TAG hashes the
//! extra boot options, the enclave command-line additions and the kernel file's bytes.

use crate::guest_image::GuestKernel;
use crate::scenario::{LinuxPart, Scenario};
use crate::setup::IMAGE_TARGET;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// How every bare-metal build is configured; `cargo xtask lint` checks with the same flags so
/// clippy sees the code (and `cfg`s) the image is built from.
pub const BARE_METAL_FLAGS: [&str; 3] = ["--release", "--target", IMAGE_TARGET];
/// The package and target of the atoll image.
pub const IMAGE_PACKAGE: [&str; 4] = ["-p", "hypervisor", "--bin", "atoll"];
/// The package and targets of the bare-metal guests.
pub const GUESTS_PACKAGE: [&str; 3] = ["-p", "guest-kit", "--bins"];

/// Runs `cargo build --release --target x86_64-unknown-none` with `what` (package and targets)
/// and returns the output directory.
fn build_bare_metal(what: &[&str], name: &str) -> Result<PathBuf> {
    build_bare_metal_in(what, name, &crate::target_dir())
}

/// [`build_bare_metal`] with its own target directory (images with test features are built
/// apart, so they never replace the normal image another run is using).
fn build_bare_metal_in(what: &[&str], name: &str, target: &std::path::Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::root())
        .args(["build", "--quiet"])
        .args(BARE_METAL_FLAGS)
        .arg("--target-dir")
        .arg(target)
        .args(what)
        .status()
        .with_context(|| format!("running cargo build for {name}"))?;
    if !status.success() {
        bail!("building {name} failed");
    }
    Ok(target.join(IMAGE_TARGET).join("release"))
}

/// The test-only image features `cargo xtask` knows.
pub const TEST_FEATURES: &[&str] = &["fault-injection"];

/// Builds the image (release profile) and returns the ELF's path.
pub fn build() -> Result<PathBuf> {
    build_with(&[])
}

/// Builds the image with test-only `features` (see [`TEST_FEATURES`]); with none, the normal
/// image.
pub fn build_with(features: &[String]) -> Result<PathBuf> {
    if let Some(f) = features
        .iter()
        .find(|f| !TEST_FEATURES.contains(&f.as_str()))
    {
        bail!(
            "unknown atoll feature '{f}' (known: {})",
            TEST_FEATURES.join(", ")
        );
    }
    let dir = if features.is_empty() {
        build_bare_metal(&IMAGE_PACKAGE, "the atoll image")?
    } else {
        let list = features.join(",");
        let target = crate::target_dir()
            .join("features")
            .join(features.join("+"));
        build_bare_metal_in(
            &[&IMAGE_PACKAGE[..], &["--features", &list]].concat(),
            &format!("the atoll image with {list}"),
            &target,
        )?
    };
    let elf = dir.join("atoll");
    if !elf.exists() {
        bail!("cargo built, but {} is missing", elf.display());
    }
    Ok(elf)
}

/// Builds the `guest-kit` guests (release, bare-metal) and returns their directory.
pub fn build_guests() -> Result<PathBuf> {
    build_bare_metal(&GUESTS_PACKAGE, "the guest-kit guests")
}

/// What a run changes in the scenario's image.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// Boot options added to the scenario's atoll command line.
    pub extra_cmdline: String,
    /// The kernel of the scenario's `linux = "kernel"` module.
    pub guest_kernel: GuestKernel,
    /// Words appended to an enclave's `cmdline`, by enclave name.
    pub enclave_cmdline: Vec<(String, String)>,
}

impl ImageOptions {
    /// Checks the options against the scenario before anything is built: a `--guest-kernel`
    /// file must be a bzImage and the scenario must have a kernel module for it; enclave
    /// command-line additions must name enclaves of the scenario.
    pub fn check(&self, scenario: &Scenario) -> Result<()> {
        if !self.guest_kernel.is_default() && scenario.linux_module(LinuxPart::Kernel).is_none() {
            bail!(
                "scenario '{}' has no linux = \"kernel\" module, so a guest kernel does not apply",
                scenario.name
            );
        }
        self.guest_kernel.check()?;
        enclaves_text(scenario, &self.enclave_cmdline)?;
        Ok(())
    }
}

/// The module names that hold partition descriptions: `machine` (the host and boot-time
/// enclaves, `atoll::partition::machine`) and `enclaves` (enclaves alone,
/// `atoll::partition::config`).
pub const DESCRIPTION_MODULES: [&str; 2] = ["machine", "enclaves"];

/// The scenario's partition description — module `machine` if it has one, else `enclaves` —
/// with `additions` appended to the named partitions' command lines (`host` is the machine
/// description's `[host]`): `(module name, file, text)`, or `None` when the scenario has
/// neither module.
pub fn description_text(
    scenario: &Scenario,
    additions: &[(String, String)],
) -> Result<Option<(&'static str, PathBuf, String)>> {
    let Some((module, m)) = DESCRIPTION_MODULES.iter().find_map(|&name| {
        scenario
            .modules
            .iter()
            .find(|m| m.name == name)
            .map(|m| (name, m))
    }) else {
        if let Some((name, _)) = additions.first() {
            bail!(
                "scenario '{}' has no machine or enclaves module, so there is no partition '{name}' to add to",
                scenario.name
            );
        }
        return Ok(None);
    };
    let Some(path) = &m.path else {
        bail!("module '{module}' must be a file (path = …)")
    };
    let file = crate::root().join(path);
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    if additions.is_empty() {
        return Ok(Some((module, file, text)));
    }
    let mut doc: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not TOML", file.display()))?;
    for (name, words) in additions {
        let table = if module == "machine" && name == "host" {
            doc.get_mut("host")
                .and_then(toml::Value::as_table_mut)
                .with_context(|| format!("{} has no [host]", file.display()))?
        } else {
            let list = doc
                .get_mut("enclave")
                .and_then(toml::Value::as_array_mut)
                .with_context(|| format!("{} has no [[enclave]] (no '{name}')", file.display()))?;
            let mut names: Vec<String> = list
                .iter()
                .filter_map(|e| e.get("name").and_then(toml::Value::as_str))
                .map(String::from)
                .collect();
            if module == "machine" {
                names.push("host".into());
            }
            list.iter_mut()
                .filter_map(toml::Value::as_table_mut)
                .find(|e| e.get("name").and_then(toml::Value::as_str) == Some(name.as_str()))
                .with_context(|| {
                    format!(
                        "no enclave named '{name}' in {} (partitions: {})",
                        file.display(),
                        names.join(", ")
                    )
                })?
        };
        let old = table
            .get("cmdline")
            .and_then(toml::Value::as_str)
            .unwrap_or_default();
        let joined = format!("{old} {words}").trim().to_string();
        table.insert("cmdline".into(), toml::Value::String(joined));
    }
    Ok(Some((module, file, toml::to_string(&doc)?)))
}

/// The scenario's enclave description with `additions` (see [`description_text`]):
/// `(file, text)`.
pub fn enclaves_text(
    scenario: &Scenario,
    additions: &[(String, String)],
) -> Result<Option<(PathBuf, String)>> {
    Ok(description_text(scenario, additions)?.map(|(_, f, t)| (f, t)))
}

/// Checks the partition description the scenario carries (module `machine` or `enclaves`)
/// with atoll's own parser, against the run's processors (APIC ids 0..cpus on QEMU and Bochs).
pub fn check_enclaves(scenario: &Scenario, cpus: Option<u32>) -> Result<()> {
    check_enclaves_with(scenario, cpus, &[])
}

/// [`check_enclaves`] of the description with command-line `additions` applied. A machine
/// description's `host.cores = "rest"` needs the processors: without `cpus`, the scenario's
/// default count stands in.
pub fn check_enclaves_with(
    scenario: &Scenario,
    cpus: Option<u32>,
    additions: &[(String, String)],
) -> Result<()> {
    let names: Vec<&str> = scenario.modules.iter().map(|m| m.name.as_str()).collect();
    let cores: Option<Vec<u32>> = cpus.map(|n| (0..n).collect());
    match description_text(scenario, additions)? {
        None => {}
        Some(("machine", file, text)) => {
            let cores: Vec<u32> = cores.unwrap_or_else(|| (0..scenario.cpus).collect());
            let ctx = atoll::partition::config::Context {
                cores: Some(&cores),
                modules: Some(&names),
            };
            atoll::partition::machine::parse(&text, &ctx)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
        Some((_, file, text)) => {
            let ctx = atoll::partition::config::Context {
                cores: cores.as_deref(),
                modules: Some(&names),
            };
            atoll::partition::config::parse(&text, &ctx)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
    }
    Ok(())
}

/// The GRUB configuration for `scenario` with extra boot options `extra`.
pub fn grub_cfg(scenario: &Scenario, extra: &str) -> String {
    let cmdline = format!("{} {}", scenario.cmdline, extra).trim().to_string();
    let mut cfg = String::from(
        "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n",
    );
    if let (true, Ok((kernel, initrd))) = (scenario.native, scenario.native_parts()) {
        cfg.push_str(&format!(
            "menuentry \"Linux without atoll ({})\" {{\n    linux /boot/modules/{} {cmdline}\n    initrd /boot/modules/{}\n    boot\n}}\n",
            scenario.name, kernel.name, initrd.name
        ));
        return cfg;
    }
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

/// A built ISO.
#[derive(Clone, Debug)]
pub struct Iso {
    /// The ISO file.
    pub path: PathBuf,
    /// `-HASH` for an image with non-default options, else empty: runs name their directories
    /// with it too.
    pub tag: String,
    /// Which Linux kernel the image carries (`PACKAGE VERSION` or a path), if any.
    pub guest_kernel: Option<String>,
}

/// The guest image's initramfs with `/guest/vmlinuz`, `/guest/initrd` and `/guest/suite64`
/// added: the files the host's `atoll create` starts enclaves from; and
/// `/var/lib/atoll/disk.img`, an ext4 image for enclaves' virtio-blk disks. The image's archives as they
/// are (the shared one and the kernel modules', decompressed), then one more with `/guest/`: the
/// kernel unpacks concatenated archives in turn. Not compressed: its files are compressed already
/// (the bzImage, the inner initramfs), and a gzipped archive took Bochs minutes to unpack.
fn host_initrd_file(
    work: &std::path::Path,
    linux: &crate::guest_image::ResolvedGuest,
    guests: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let root = work.join("host-initrd");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("guest"))?;
    std::fs::copy(&linux.kernel, root.join("guest/vmlinuz"))?;
    std::fs::copy(&linux.initrd, root.join("guest/initrd"))?;
    std::fs::copy(guests.join("guest-suite"), root.join("guest/suite64"))?;
    // The virtio-blk disk the host serves to an enclave (the virtio scenario).
    std::fs::create_dir_all(root.join("var/lib/atoll"))?;
    crate::guest_image::build_disk_image(&root.join("var/lib/atoll/disk.img"))?;
    let extra = work.join("host-initrd-guest.cpio");
    crate::guest_image::write_cpio(&root, &extra, false)?;
    std::fs::remove_dir_all(&root)?;
    let out = work.join("host-initrd.cpio");
    let joined = Command::new("sh")
        .arg("-c")
        .arg("{ gzip -dc \"$1\" && cat \"$2\"; } > \"$3\"")
        .arg("sh")
        .arg(&linux.initrd)
        .arg(&extra)
        .arg(&out)
        .status()
        .context("joining the guest image's initramfs and /guest/ (gzip, cat)")?;
    if !joined.success() {
        bail!("joining {} and /guest/ failed", linux.initrd.display());
    }
    std::fs::remove_file(&extra)?;
    Ok(out)
}

/// The host's initramfs ([`host_initrd_file`]) with the benches' host tools' archive
/// ([`crate::bench_tools`]) appended, and one more that replaces `/guest/initrd` with the guest
/// image's initramfs followed by the guest's tools (oslat): the kernel unpacks concatenated
/// archives in turn, a later file replacing an earlier one of the same name.
fn bench_initrd_file(
    work: &std::path::Path,
    linux: &crate::guest_image::ResolvedGuest,
    guests: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let host = host_initrd_file(work, linux, guests)?;
    let tools = crate::bench_tools::build()?;
    let root = work.join("bench-guest");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("guest"))?;
    let mut guest_initrd = std::fs::read(&linux.initrd)?;
    // The kernel takes an uncompressed archive only at a 4-byte boundary of the file and
    // skips zeroes before it (`unpack_to_rootfs`); a gzip stream ends anywhere.
    guest_initrd.resize(guest_initrd.len().next_multiple_of(512), 0);
    guest_initrd.extend(std::fs::read(crate::bench_tools::build_guest()?)?);
    std::fs::write(root.join("guest/initrd"), guest_initrd)?;
    let guest = work.join("bench-guest.cpio");
    crate::guest_image::write_cpio(&root, &guest, false)?;
    std::fs::remove_dir_all(&root)?;
    let out = work.join("bench-initrd.cpio");
    let mut dst = std::fs::File::create(&out)?;
    for part in [&host, &tools, &guest] {
        let mut src =
            std::fs::File::open(part).with_context(|| format!("opening {}", part.display()))?;
        std::io::copy(&mut src, &mut dst)?;
    }
    std::fs::remove_file(&host)?;
    std::fs::remove_file(&guest)?;
    Ok(out)
}

/// Builds the image and a bootable ISO for `scenario` with `opts`.
pub fn iso(scenario: &Scenario, opts: &ImageOptions) -> Result<Iso> {
    opts.check(scenario)?;
    check_enclaves_with(scenario, None, &opts.enclave_cmdline)?;
    let elf = build_with(&scenario.atoll_features)?;
    let host_initrd = scenario
        .modules
        .iter()
        .any(|m| m.linux == Some(LinuxPart::HostInitrd) || m.linux == Some(LinuxPart::BenchInitrd));
    let guests = if host_initrd || scenario.modules.iter().any(|m| m.guest.is_some()) {
        Some(build_guests()?)
    } else {
        None
    };
    let linux = if scenario.modules.iter().any(|m| m.linux.is_some()) {
        Some(opts.guest_kernel.resolve()?)
    } else {
        None
    };
    // Name the image apart for every option that changes it.
    let mut key = Vec::new();
    if !opts.extra_cmdline.trim().is_empty() {
        key.extend(opts.extra_cmdline.trim().bytes());
    }
    for (name, words) in &opts.enclave_cmdline {
        key.extend(format!("\0enclave {name}={words}").bytes());
    }
    if let (Some(l), false) = (&linux, opts.guest_kernel.is_default()) {
        key.extend(b"\0kernel ");
        key.extend(
            std::fs::read(&l.kernel).with_context(|| format!("reading {}", l.kernel.display()))?,
        );
    }
    let tag = if key.is_empty() {
        String::new()
    } else {
        format!("-{:016x}", fnv(&key))
    };
    let work = crate::target_dir()
        .join("images")
        .join(format!("{}{tag}", scenario.name));
    // Built in a directory of this build's own and renamed into place whole: two builds of the
    // same image at once (parallel test groups, a bench beside a test) never mix their files,
    // and an emulator already booting the old ISO keeps reading the file it opened.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let stage = work.join(format!(
        "build-{}-{}",
        std::process::id(),
        BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&stage);
    // Removed however the build ends (its archives are large).
    struct Staging(PathBuf);
    impl Drop for Staging {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _staging = Staging(stage.clone());
    let tree = stage.join("iso");
    std::fs::create_dir_all(tree.join("boot/grub"))?;
    std::fs::create_dir_all(tree.join("boot/modules"))?;
    std::fs::copy(&elf, tree.join("boot/atoll.elf")).context("copying the image")?;
    let description = description_text(scenario, &opts.enclave_cmdline)?;
    for m in &scenario.modules {
        let dst = tree.join("boot/modules").join(&m.name);
        if let Some((module, _, text)) = &description {
            if *module == m.name {
                std::fs::write(&dst, text)?;
                continue;
            }
        }
        let src = match (&m.path, &m.guest, m.linux, &guests, &linux) {
            (Some(p), _, _, _, _) => crate::root().join(p),
            (None, Some(g), _, Some(dir), _) => dir.join(g),
            (None, None, Some(LinuxPart::Kernel), _, Some(l)) => l.kernel.clone(),
            (None, None, Some(LinuxPart::Initrd), _, Some(l)) => l.initrd.clone(),
            (None, None, Some(LinuxPart::HostInitrd), Some(g), Some(l)) => {
                host_initrd_file(&stage, l, g)?
            }
            (None, None, Some(LinuxPart::BenchInitrd), Some(g), Some(l)) => {
                bench_initrd_file(&stage, l, g)?
            }
            _ => bail!("module '{}' has no source", m.name),
        };
        std::fs::copy(&src, &dst)
            .with_context(|| format!("module '{}': cannot copy {}", m.name, src.display()))?;
    }
    std::fs::write(
        tree.join("boot/grub/grub.cfg"),
        grub_cfg(scenario, &opts.extra_cmdline),
    )?;
    let iso = work.join("atoll.iso");
    if linux.is_some() {
        eprintln!("xtask: writing {} (grub-mkrescue)", iso.display());
    }
    let built = stage.join("atoll.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&built)
        .arg(&tree)
        .output()
        .context("running grub-mkrescue (run `cargo xtask setup` to install it)")?;
    if !out.status.success() {
        bail!(
            "grub-mkrescue failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&built, &iso)
        .with_context(|| format!("moving {} to {}", built.display(), iso.display()))?;
    Ok(Iso {
        path: iso,
        tag,
        guest_kernel: linux.map(|l| l.describe),
    })
}

/// FNV-1a, to name ISOs built with extra options apart.
fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
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

    #[test]
    fn a_native_scenario_boots_linux_without_atoll() {
        let s = Scenario::parse(
            "nat",
            "description='d'\nnative=true\ncmdline='console=ttyS0'\ntimeout_s={qemu=1,bochs=1}\n\
             [[module]]\nname='vmlinuz'\nlinux='kernel'\n[[module]]\nname='initrd'\nlinux='initrd'",
        )
        .unwrap();
        let cfg = grub_cfg(&s, "atoll.actions=x");
        assert!(
            cfg.contains("    linux /boot/modules/vmlinuz console=ttyS0 atoll.actions=x\n    initrd /boot/modules/initrd\n"),
            "{cfg}"
        );
        assert!(!cfg.contains("multiboot2"), "{cfg}");
    }

    #[test]
    fn enclave_command_lines_can_be_extended() {
        let s = Scenario::load("linux-enclave").unwrap();
        let (_, text) = enclaves_text(&s, &[]).unwrap().unwrap();
        assert!(!text.contains("atoll.idle"));
        let add = vec![("linux".to_string(), "atoll.idle=10".to_string())];
        let (_, text) = enclaves_text(&s, &add).unwrap().unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let enclaves = doc["enclave"].as_array().unwrap();
        let cmdline = |name: &str| {
            enclaves
                .iter()
                .find(|e| e["name"].as_str() == Some(name))
                .unwrap()["cmdline"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(cmdline("linux").starts_with("console=ttyS0 "));
        assert!(cmdline("linux").ends_with(" atoll.idle=10"));
        assert_eq!(cmdline("suite"), "suite", "other enclaves stay as they are");
        let e = enclaves_text(&s, &[("linu".into(), "x".into())]).unwrap_err();
        assert!(
            format!("{e:#}").contains("no enclave named 'linu'")
                && format!("{e:#}").contains("suite, linux"),
            "{e:#}"
        );
        // A scenario without enclaves has none to extend.
        let boot = Scenario::load("boot").unwrap();
        assert!(enclaves_text(&boot, &add).is_err());
    }

    #[test]
    fn machine_descriptions_take_host_and_enclave_additions() {
        let s = Scenario::load("root-partition").unwrap();
        let (module, _, text) = description_text(&s, &[]).unwrap().unwrap();
        assert_eq!(module, "machine");
        assert!(text.contains("atoll.actions="));
        let add = vec![
            ("host".to_string(), "atoll.shell=1".to_string()),
            ("linux".to_string(), "atoll.idle=3".to_string()),
        ];
        let (_, _, text) = description_text(&s, &add).unwrap().unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let host = doc["host"]["cmdline"].as_str().unwrap();
        assert!(
            host.starts_with("console=ttyS0 ") && host.ends_with(" atoll.shell=1"),
            "{host}"
        );
        let linux = doc["enclave"][0]["cmdline"].as_str().unwrap();
        assert!(linux.ends_with(" atoll.idle=3"), "{linux}");
        // Still a machine description atoll accepts, on the scenario's machine only.
        check_enclaves_with(&s, Some(3), &add).unwrap();
        check_enclaves_with(&s, None, &add).unwrap();
        let e = format!("{:#}", check_enclaves_with(&s, Some(2), &[]).unwrap_err());
        assert!(e.contains("APIC id 2") || e.contains("core 2"), "{e}");
        let e = format!(
            "{:#}",
            description_text(&s, &[("beta".into(), "x".into())]).unwrap_err()
        );
        assert!(
            e.contains("no enclave named 'beta'") && e.contains("linux, host"),
            "{e}"
        );
        // In an enclaves module, `host` is just a name that is not there.
        let linux = Scenario::load("linux-enclave").unwrap();
        assert!(description_text(&linux, &[("host".into(), "x".into())]).is_err());
    }

    #[test]
    fn a_guest_kernel_needs_a_kernel_module() {
        let boot = Scenario::load("boot").unwrap();
        let opts = ImageOptions {
            guest_kernel: GuestKernel::Package(crate::guest_image::KernelChoice::Newest(
                "cloud".into(),
            )),
            ..ImageOptions::default()
        };
        let e = format!("{:#}", opts.check(&boot).unwrap_err());
        assert!(e.contains("has no linux = \"kernel\" module"), "{e}");
        assert!(ImageOptions::default().check(&boot).is_ok());
        let linux = Scenario::load("linux-enclave").unwrap();
        assert!(opts.check(&linux).is_ok());
        let missing = ImageOptions {
            guest_kernel: GuestKernel::File("/nonexistent/vmlinuz".into()),
            ..ImageOptions::default()
        };
        assert!(format!("{:#}", missing.check(&linux).unwrap_err()).contains("cannot read"));
    }
}
