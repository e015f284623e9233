//! What runs inside atoll's partitions: bare-metal test guests, the host CLI `atoll`, the
//! channel daemon, and in-guest test and benchmark programs.
//!
//! Nothing runs inside a partition yet: atoll so far brings every core online and reports what
//! it found (see the `hypervisor` crate). This crate gains its programs as partitions arrive.
