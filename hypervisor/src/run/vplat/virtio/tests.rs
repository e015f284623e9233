//! Tests of the virtio link (below).
