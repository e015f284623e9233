//! The benches' host tools (issue 15): Debian's dynamically linked programs the isolation bench
//! runs in the host partition — `stress-ng` (the background loads), `oslat` (rt-tests, the
//! noise probe beside `atoll-fwq`) and `qemu-system-x86_64-microvm` with its firmware (the KVM
//! baseline's VMM) — copied with the shared libraries `ldd` names, each at its own path, into
//! one uncompressed cpio archive. The scenarios that want them take the
//! `bench-initrd` module: the host's initramfs with this archive appended, so every other boot
//! (and Bochs' GRUB, which reads the modules byte by byte) stays as small as it was.
//!
//! The programs come from the build machine's packages (`cargo xtask setup` installs them),
//! whose C library matches the guest kernel's Debian release. Cached under
//! `target/guest-image/bench-tools-KEY/`, KEY hashing every file that goes in.

use crate::guest_image::{cache_key, is_image_dir_of, progress, write_cpio};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs, by their path on the build machine and in the image, and the package that
/// brings them.
pub const TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/stress-ng", "stress-ng"),
    ("/usr/bin/oslat", "rt-tests"),
    // The KVM baseline's VMM (QEMU's microvm build: 7.8 MB, a dozen libraries).
    ("/usr/bin/qemu-system-x86_64-microvm", "qemu-system-x86"),
];

/// Data files the host's tools need, copied as they are: microvm's firmware.
pub const DATA: &[(&str, &str)] = &[("/usr/share/qemu/qboot.rom", "qemu-system-data")];

/// What the workload's guest (an enclave or a KVM guest started from the host's `/guest/`)
/// gets of them: the noise probe only.
pub const GUEST_TOOLS: &[(&str, &str)] = &[("/usr/bin/oslat", "rt-tests")];

/// The libraries (and the program interpreter) `ldd` lists: every absolute path in its output,
/// in order, once. The vDSO (no path) is the kernel's.
pub fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in ldd.lines() {
        // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)".
        let target = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line.trim(),
        };
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') && !out.iter().any(|p| p == Path::new(path)) {
            out.push(PathBuf::from(path));
        }
    }
    out
}

/// A library `ldd` could not find (`libfoo.so => not found`), if any.
pub fn ldd_missing(ldd: &str) -> Option<String> {
    ldd.lines()
        .find(|l| l.contains("not found"))
        .map(|l| l.trim().to_string())
}

/// Every file an archive of `tools` holds: the programs and their libraries.
fn files(tools: &[(&str, &str)]) -> Result<Vec<PathBuf>> {
    let mut all: Vec<PathBuf> = Vec::new();
    for (prog, package) in tools {
        if !Path::new(prog).exists() {
            bail!(
                "{prog} is missing (package {package}, which the isolation bench runs in the \
                 host): run `cargo xtask setup` or `apt-get install {package}`"
            );
        }
        let out = Command::new("ldd")
            .arg(prog)
            .output()
            .with_context(|| format!("running ldd {prog}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(m) = ldd_missing(&text) {
            bail!("{prog}: a library is missing on this machine: {m}");
        }
        if !out.status.success() {
            bail!(
                "ldd {prog} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for p in std::iter::once(PathBuf::from(prog)).chain(ldd_paths(&text)) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
    }
    Ok(all)
}

/// Builds (or finds in the cache) the host's archive ([`TOOLS`] and [`DATA`]); returns its
/// path.
pub fn build() -> Result<PathBuf> {
    build_of("bench-tools", TOOLS, DATA)
}

/// Builds (or finds in the cache) the workload guest's archive ([`GUEST_TOOLS`]).
pub fn build_guest() -> Result<PathBuf> {
    build_of("bench-guest-tools", GUEST_TOOLS, &[])
}

/// The archive of `tools` and `data`, cached as `target/guest-image/NAME-KEY/tools.cpio`.
fn build_of(name: &str, tools: &[(&str, &str)], data: &[(&str, &str)]) -> Result<PathBuf> {
    let cache = crate::target_dir().join("guest-image");
    std::fs::create_dir_all(&cache)?;
    let mut files = files(tools)?;
    for (f, package) in data {
        if !Path::new(f).exists() {
            bail!("{f} is missing (package {package}): run `cargo xtask setup` or `apt-get install {package}`");
        }
        files.push(PathBuf::from(f));
    }
    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    for f in &files {
        // Symbolic links are followed: the archive holds each library under the name the
        // program asks for.
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        contents.push((f.display().to_string(), bytes));
    }
    let fields: Vec<(&str, &[u8])> = contents
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let key = cache_key(&fields);
    let dir = cache.join(format!("{name}-{key}"));
    let out = dir.join("tools.cpio");
    if out.exists() {
        return Ok(out);
    }
    progress(format!(
        "building {name} ({} files: {})",
        files.len(),
        tools.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
    ));
    let tmp = cache.join(format!("{name}-{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let root = tmp.join("root");
    use std::os::unix::fs::PermissionsExt;
    for (name, bytes) in &contents {
        let dst = root.join(name.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().context("a file at the root")?)?;
        std::fs::write(&dst, bytes)?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
    }
    write_cpio(&root, &tmp.join("tools.cpio"), false)?;
    std::fs::remove_dir_all(&root)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    for e in std::fs::read_dir(&cache)?.flatten() {
        let other = e.file_name().to_string_lossy().into_owned();
        if is_image_dir_of(&other, name) && e.path() != dir {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_interpreter_once() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f45)\n\
                    \tlibnuma.so.1 => /lib/x86_64-linux-gnu/libnuma.so.1 (0x00007f36)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f45)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f45)\n";
        assert_eq!(
            ldd_paths(text),
            [
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libnuma.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(ldd_missing(text), None);
        assert_eq!(
            ldd_missing("\tlibJudy.so.1 => not found\n"),
            Some("libJudy.so.1 => not found".into())
        );
        assert!(ldd_paths("\tstatically linked\n").is_empty());
    }

    #[test]
    fn the_tools_and_their_libraries_are_found_on_this_machine() {
        // The build machine has them after `cargo xtask setup` (CI runs it first).
        let f = files(TOOLS).unwrap();
        for (prog, _) in TOOLS {
            assert!(f.contains(&PathBuf::from(prog)), "{prog}");
        }
        assert!(
            f.iter().any(|p| p.to_string_lossy().contains("ld-linux")),
            "the interpreter: {f:?}"
        );
        assert!(f.iter().all(|p| p.is_absolute() && p.exists()), "{f:?}");
    }
}
