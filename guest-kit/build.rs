//! Links the bare-metal guests with their linker scripts (only for `x86_64-unknown-none`).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=guest64.ld");
    println!("cargo:rerun-if-changed=real16.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bin=guest-suite=-T{dir}/guest64.ld");
        println!("cargo:rustc-link-arg-bin=guest-adversary=-T{dir}/guest64.ld");
        println!("cargo:rustc-link-arg-bin=guest-real16=-T{dir}/real16.ld");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
