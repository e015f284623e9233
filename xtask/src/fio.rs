//! `fio` for the disk benchmark (`cargo xtask bench blk`, issue 14): built once from Debian's
//! source tarball as a static binary and cached under `target/fio/VERSION/fio`.
//!
//! Debian's `fio` package links librbd, libgfapi, librdmacm and more (some hundred megabytes
//! of libraries an initramfs would have to carry); the same source configured with
//! `--build-static` and nothing optional is one self-contained file of a few MiB with the
//! synchronous engines the benchmark uses. The tarball is fetched from Debian's pool (the one
//! network the build machines reach) and checked against its SHA-256 from the package's
//! `.dsc`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fio release (Debian bookworm's).
pub const VERSION: &str = "3.33";
/// Where the source comes from.
pub const URL: &str = "http://deb.debian.org/debian/pool/main/f/fio/fio_3.33.orig.tar.gz";
/// Its SHA-256 (`fio_3.33-3.dsc`, Checksums-Sha256).
pub const SHA256: &str = "d2410e13e0f379d061d077cc5ae325835bb7c6186aa7bafc1df954cbc9b014fc";

/// The cached binary's path (whether or not it exists yet).
pub fn cached() -> PathBuf {
    crate::target_dir().join("fio").join(VERSION).join("fio")
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            s.lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
    Ok(())
}

/// The SHA-256 of `path` as `sha256sum` prints it.
fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Returns the static fio, building it first if it is not cached (about a minute).
pub fn build() -> Result<PathBuf> {
    let bin = cached();
    if bin.is_file() {
        return Ok(bin);
    }
    let dir = bin.parent().context("fio's cache directory")?.to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let tarball = dir.join(format!("fio_{VERSION}.orig.tar.gz"));
    if !tarball.is_file() || sha256(&tarball)? != SHA256 {
        eprintln!("fio: downloading {URL}");
        // Python is on every machine the project builds on; no curl needed.
        run(
            Command::new("python3").args([
                "-c",
                "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])",
                URL,
            ])
            .arg(&tarball),
            "downloading fio's source",
        )?;
    }
    let got = sha256(&tarball)?;
    if got != SHA256 {
        let _ = std::fs::remove_file(&tarball);
        bail!("{}: SHA-256 {got}, expected {SHA256}", tarball.display());
    }
    let src = dir.join(format!("fio-{VERSION}"));
    let _ = std::fs::remove_dir_all(&src);
    run(
        Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dir),
        "unpacking fio",
    )?;
    eprintln!("fio: building {VERSION} statically (about a minute)");
    run(
        Command::new("./configure")
            .args(["--build-static", "--disable-native"])
            .current_dir(&src),
        "configuring fio",
    )?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run(
        Command::new("make")
            .arg(format!("-j{jobs}"))
            .arg("fio")
            .current_dir(&src),
        "building fio",
    )?;
    run(Command::new("strip").arg(src.join("fio")), "stripping fio")?;
    std::fs::copy(src.join("fio"), &bin)?;
    let _ = std::fs::remove_dir_all(&src);
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_pinned() {
        assert!(URL.ends_with(&format!("fio_{VERSION}.orig.tar.gz")));
        assert_eq!(SHA256.len(), 64);
        assert!(SHA256.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(cached().ends_with(format!("fio/{VERSION}/fio")));
    }

    /// The binary the guest image carries: built (or taken from the cache, as every image build
    /// does), fio of the pinned version, and static — no program interpreter, so it runs in an
    /// initramfs without a C library.
    #[test]
    fn builds_a_static_fio() {
        let bin = build().unwrap();
        let out = Command::new(&bin).arg("--version").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("fio-{VERSION}")
        );
        let elf = std::fs::read(&bin).unwrap();
        assert!(
            crate::guest_image::is_static_elf(&elf).unwrap(),
            "fio is not static"
        );
    }
}
