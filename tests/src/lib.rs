//! Emulator tests live in `tests/`; see `cargo xtask test`.
