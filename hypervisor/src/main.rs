//! The atoll image (see the `atoll` library for what each part does).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod boot_flow;

/// On the host the image has nothing to run; `cargo xtask build` builds it for
/// `x86_64-unknown-none`.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("atoll is a bare-metal image: build it with `cargo xtask build` and boot it with `cargo xtask run`");
    std::process::exit(2);
}
