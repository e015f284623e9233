//! `cargo xtask`: everything around the atoll image — installing what the emulators need,
//! building the image and a GRUB ISO, booting scenarios in Bochs or QEMU and judging what they
//! print. The emulator tests in `tests/` use this library, so the harness that `cargo xtask run`
//! shows a developer is the one the tests assert with.

pub mod bench_blk;
pub mod bench_host;
pub mod bench_isolation;
pub mod bench_lifecycle;
pub mod bench_net;
pub mod bench_plot;
pub mod bench_tools;
pub mod console;
pub mod fio;
pub mod guest_image;
pub mod image;
pub mod lint;
pub mod run;
pub mod scenario;
pub mod setup;

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `target/` of the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Writes a benchmark's JSON as `target/bench/NAME.json` and returns its path.
pub fn write_bench_json(
    name: &str,
    json: &serde_json::Value,
) -> anyhow::Result<std::path::PathBuf> {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(json)?)?;
    Ok(path)
}
