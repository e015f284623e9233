//! `cargo xtask guest-image`: the Linux guest image — a stock Debian kernel and an initramfs
//! that runs `atoll-check` and powers off — and `--smoke-test`, which boots it in QEMU
//! directly (no atoll) to show the image itself is sound.
//!
//! What it makes, cached under `target/guest-image/`:
//!
//! * `debs/` — the kernel package as `apt-get download` fetched it;
//! * `kernels/PACKAGE_VERSION/` — `vmlinuz` and the kernel's `config`, taken from the package's
//!   `boot/` (only that directory is unpacked: the package's 400 MB of modules are not needed);
//! * `PACKAGE-KEY/` — the image: `vmlinuz`, `initrd.cpio.gz`, the `init` script and
//!   `manifest.json`. KEY hashes every input (package name and version, `/init`, the busybox and
//!   `atoll-check` binaries, the applet list), so a changed input makes a new image (and the
//!   package's older images are removed) and an unchanged one is reused.
//!
//! The initramfs (newc cpio made by GNU `cpio`, gzipped) holds busybox from the host's
//! `busybox-static` package with the applets `/init` uses, `/init` ([`init_script`]) and the
//! static `atoll-check` (`guest-kit`). It has **no kernel modules**: the guest boots without
//! virtio or any other modular driver — the serial console, ACPI, the APIC and the timers it
//! needs are built into Debian's kernel — and finds everything it checks in `/proc` and `/sys`.
//!
//! The default kernel is the newest `linux-image-6.1.0-N-amd64` apt knows (Debian 12's stock
//! series); `--kernel` takes a package name (`linux-image-6.1.0-56-cloud-amd64`, or another
//! series such as a 6.12 one) or a flavour (`amd64`, `cloud`, `rt`) for the newest 6.1 kernel
//! of that flavour.
//!
//! The guest reads its expectations from the kernel command line: `atoll.expect_cpus=N` and
//! `atoll.expect_mem=MiB` become `atoll-check --expect-cpus N --expect-memory-mib MiB`,
//! `atoll.tolerate=ID,…` becomes `--tolerate ID,…` (kernel warnings that do not fail the
//! check), `atoll.iterations=N` sets the compute work; `atoll.idle=N` makes `/init` print
//! `ATOLL-IDLE begin`, sleep N seconds and print `ATOLL-IDLE end` after the check (the window
//! `cargo xtask bench idle` counts exits in); `atoll.idle_timer=MS` runs a periodic timer of MS
//! milliseconds in that window instead of `sleep` (`atoll-check --idle-timer`) and reports its
//! largest gap between wake-ups as `ATOLL-GUEST-IDLE {json}` — atoll's `idle_timer` result; it
//! is not the default because its wake-ups would change what the bench counts. `atoll.shell=1`
//! starts a shell after the check instead of powering off.
//!
//! **One image, both roles.** The same initramfs serves an enclave and the root partition (the
//! host's Linux atoll boots beside its enclaves): `atoll.role=host` (which atoll appends to the
//! host's command line, with `atoll.cpus`, `atoll.memory_mib` and `atoll.pool`; see
//! `guest_kit::check::host`) makes `/init` run `atoll-check --role host`. After the check,
//! `atoll.actions=A,B,…` runs the actions a test needs, in order, each announced on a line
//! `ATOLL-ACTION A` before it happens (`ATOLL-ACTION-FAILED A: why` when it cannot be done,
//! then `ATOLL-ACTIONS end failed=N`): `sleep:N` (seconds), `idle:N` (a sleep between
//! `ATOLL-IDLE begin` and `ATOLL-IDLE end` lines: the window atoll counts the root partition's
//! exits in), `load:N` (N seconds of a build-like load on every CPU between `ATOLL-LOAD begin`
//! and `ATOLL-LOAD end`, then `load: S build steps on C CPUs, F failed`; one step is an `sh -c`
//! that writes a source-like file in a tmpfs with a shell loop, gzips, gunzips and compares it:
//! see [`init_script`]), `offline:N` / `online:N` (logical
//! CPU N through sysfs, read back), `panic` (`echo c > /proc/sysrq-trigger`; with `panic=N`
//! the kernel then resets the machine), `reboot`, `poweroff`. A root partition atoll restarted
//! finds `atoll.restarts=N` (N ≥ 1) on its command line; `atoll.restart_actions=…` then
//! replaces `atoll.actions` (so a host that panicked on its first boot does something else on
//! its second). The SR-IOV actions (issue 13) take their parameters from `atoll.net_*` words:
//! `vf_net` (an enclave: igbvf's interface up, pings to the PF, a file over TCP, one
//! `ATOLL-RESULT vf_net {json}` line, then it stays up until destroyed), `vf_dma_outside` (held
//! back: the VF's receive ring moved outside the enclave's RAM, then pings that must not come
//! back), `vf_host` and `vf_host_outside` (the host: igb on the PF, one VF enabled through
//! `atoll vf`, enclaves created with it; see [`init_script`]). The isolation bench's (issue
//! 15): `work` (wherever the workload runs: `atoll-fwq`, `oslat` when the image has it, and
//! `atoll-hpcg` pinned to `atoll.hpcg_cpus`, else to `atoll.work_cpus`, between `ATOLL-WORK`
//! markers) and `isolation` (the
//! host: the workload solo and under each stress-ng profile of `atoll.iso_loads`, natively, in
//! an enclave or in a KVM guest per `atoll.iso_mode`, each run's reports on `ATOLL-ISO-*`
//! lines); both keep their kernel's messages off the console while they measure (console log
//! level 1, restored after). The initramfs also carries the static `atoll-hpcg` and `atoll-fwq`.
//!
//! The smoke test tolerates [`TCG_TOLERATED`]: timing warnings QEMU's TCG emulation causes
//! by itself — its vCPUs' TSCs are not synchronized, and its timers run in host time while the
//! emulated CPUs run at a varying, slower pace, so Linux's TSC, delay-loop and APIC-timer
//! calibrations disagree with each other (seen here: `tsc: Fast TSC calibration failed`,
//! `Marking TSC unstable due to TSCs unsynchronized`, `calibrate_delay_direct() failed`, `APIC
//! calibration not consistent with PM-Timer`). They stay in the report, under
//! `dmesg_tolerated`; under atoll the same lines are hypervisor bugs and fail the check.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::cmp::Ordering;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The kernel series the default picks (Debian 12's stock kernel).
pub const DEFAULT_SERIES: &str = "6.1";

/// Busybox applets the image links to `/bin/busybox`: what `/init` runs, and a few for a human
/// at `atoll.shell=1`.
pub const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "dmesg",
    "poweroff",
    "reboot",
    "cat",
    "echo",
    "sleep",
    "ls",
    "uname",
    // The build-like load of the `load:N` action.
    "nproc",
    "mkdir",
    "rm",
    "gzip",
    "gunzip",
    "cmp",
    // The lifecycle and soak actions (JSON assembly, output checks).
    "grep",
    "tr",
    "head",
    "printf",
    "sed",
    // Kernel modules (the image's /lib/modules, see KERNEL_MODULES), the DMA action's disk read.
    "insmod",
    "dd",
    "tail",
    // The SR-IOV actions: the interface, pings, sysfs links, the VF's config bytes.
    "ip",
    "ping",
    "readlink",
    "od",
    // The network bench's host-to-host baseline: the second VF in a network namespace.
    "unshare",
    "nsenter",
    // The virtio actions: checksums of the disk's files, flushing them, and their names.
    "sha256sum",
    "sync",
    "rmmod",
    // The isolation bench (issue 15): the workload pinned to its CPUs, the KVM baseline's
    // waits and timestamps.
    "taskset",
    "usleep",
    "cut",
    // Its driver ahead of the load it starts (Debian's busybox has renice, not nice).
    "renice",
];

/// Kernel modules the image carries, as paths under the package's `lib/modules/VERSION/kernel/`,
/// in load order (dependencies first). They go to `/lib/modules/NAME.ko` in a second archive
/// appended to the initramfs (the kernel unpacks concatenated archives in turn), so the
/// kernel-independent part stays shared. `uio_pci_generic` gives the host's DMA probe an
/// `edu` device's interrupts in user space, `ahci` (with the SCSI and ATA cores) drives the
/// machine's AHCI controller with MSI, `virtio_blk` a virtio disk with MSI-X (issue 12);
/// `igb` (which needs `dca` and `i2c-algo-bit`: Debian builds it with `CONFIG_IGB_DCA` and
/// `CONFIG_IGB_HWMON`) drives the host's SR-IOV physical function, `igbvf` (no dependencies)
/// an enclave's virtual function (issue 13). Issue 14: `tun` gives the host's `atoll-channeld`
/// its net backends; an enclave's virtio devices take `virtio_net` (after `failover` and
/// `net_failover`), `virtio_console` and `virtio_blk` with ext4 (after `crc16`, `mbcache`,
/// `jbd2` and `crc32c_generic`, the crc32c that jbd2 and ext4 ask the crypto API for); the host
/// takes `loop` and ext4 to put a file into the disk image it serves and read back the one the
/// enclave wrote (the `virtio_host` action). Debian's
/// 6.1 amd64 kernel builds all of these as modules (`=m`; `CONFIG_HVC_DRIVER=y`), its cloud
/// flavour builds ext4 in, and Debian 12's 6.12 amd64 kernel builds virtio, virtio_pci and
/// virtio_console in (and ships its modules as `.ko.xz`, which this list does not take). `/init`
/// loads them ([`init_script`]).
pub const KERNEL_MODULES: &[&str] = &[
    "drivers/uio/uio.ko",
    "drivers/uio/uio_pci_generic.ko",
    "drivers/scsi/scsi_common.ko",
    "drivers/scsi/scsi_mod.ko",
    "drivers/ata/libata.ko",
    "drivers/ata/libahci.ko",
    "drivers/ata/ahci.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/dca/dca.ko",
    "drivers/i2c/algos/i2c-algo-bit.ko",
    "drivers/net/ethernet/intel/igb/igb.ko",
    "drivers/net/ethernet/intel/igbvf/igbvf.ko",
    "drivers/net/tun.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/char/virtio_console.ko",
    "lib/crc16.ko",
    "fs/mbcache.ko",
    "crypto/crc32c_generic.ko",
    "fs/jbd2/jbd2.ko",
    "fs/ext4/ext4.ko",
    "drivers/block/loop.ko",
    // The isolation bench's KVM baseline (issue 15): a host booted without atoll runs its
    // workload in a KVM guest. kvm needs irqbypass; kvm-amd needs ccp (Debian builds SEV in).
    "virt/lib/irqbypass.ko",
    "arch/x86/kvm/kvm.ko",
    "drivers/crypto/ccp/ccp.ko",
    "arch/x86/kvm/kvm-amd.ko",
    "arch/x86/kvm/kvm-intel.ko",
];

/// The Rust target `atoll-check` is built for.
pub const CHECK_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Kernel warnings QEMU's TCG causes by itself (see the module docs), which the smoke test
/// tolerates (`atoll-check --tolerate`).
pub const TCG_TOLERATED: &[&str] = &[
    "tsc-calibration",
    "tsc-unstable",
    "delay-calibration",
    "apic-calibration",
    "clocksource-unstable",
];

/// The line the guest's check prints.
pub const REPORT_PREFIX: &str = "ATOLL-GUEST-CHECK ";

/// A built guest image.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The kernel package.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The image directory.
    pub dir: PathBuf,
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The gzipped newc initramfs.
    pub initrd: PathBuf,
    /// Size of the downloaded package in bytes.
    pub deb_bytes: u64,
    /// Whether the image came from the cache.
    pub cached: bool,
}

impl GuestImage {
    /// A kernel command line for a serial console and the given expectations.
    pub fn cmdline(cpus: u32, memory_mib: u32) -> String {
        format!("console=ttyS0 atoll.expect_cpus={cpus} atoll.expect_mem={memory_mib}")
    }
}

pub fn progress(msg: impl std::fmt::Display) {
    eprintln!("guest-image: {msg}");
}

// ---------------------------------------------------------------------------------------------
// Pure parts (host-tested).

/// Compares kernel version strings naturally: digit runs as numbers, the rest as text
/// (`6.1.0-9` < `6.1.0-56`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = match (x, y) {
            ((true, n), (true, m)) => {
                let (n, m) = (n.trim_start_matches('0'), m.trim_start_matches('0'));
                n.len().cmp(&m.len()).then_with(|| n.cmp(m))
            }
            ((_, s), (_, t)) => s.cmp(t),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// A kernel image package name taken apart: `linux-image-6.1.0-56-cloud-amd64` →
/// ABI `6.1.0-56`, flavour `cloud`. `None` for anything else (meta-packages such as
/// `linux-image-6.12-amd64`, `-dbg`, `-unsigned`).
pub fn parse_kernel_package(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("linux-image-")?.strip_suffix("-amd64")?;
    let (abi, flavour) = match rest.rsplit_once('-') {
        Some((abi, f)) if f.chars().all(|c| c.is_ascii_lowercase()) => (abi, f),
        _ => (rest, "amd64"),
    };
    // A real kernel's ABI has a patch level after the series: 6.1.0-56, 6.12.43+deb12.
    let mut parts = abi.splitn(3, '.');
    let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !numeric(major) || !numeric(minor) || !patch.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((abi, flavour))
}

/// The names in `apt-cache search` output (`name - description` lines).
pub fn search_names(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split(" - ").next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// The newest kernel of `series` (`6.1`) and `flavour` (`amd64`, `cloud`, `rt`) among `names`.
pub fn pick_kernel(names: &[String], series: &str, flavour: &str) -> Option<String> {
    names
        .iter()
        .filter_map(|n| parse_kernel_package(n).map(|(abi, f)| (n, abi, f)))
        .filter(|(_, abi, f)| {
            *f == flavour && abi.strip_prefix(series).is_some_and(|r| r.starts_with('.'))
        })
        .max_by(|a, b| compare_versions(a.1, b.1))
        .map(|(n, _, _)| n.clone())
}

/// What `--kernel` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// The newest 6.1 kernel of this flavour.
    Newest(String),
    /// Exactly this package.
    Package(String),
}

impl KernelChoice {
    /// Parses `--kernel` (absent: the newest generic 6.1 kernel).
    pub fn parse(arg: Option<&str>) -> Result<Self> {
        match arg.map(str::trim) {
            None | Some("") => Ok(Self::Newest("amd64".into())),
            Some(f @ ("amd64" | "cloud" | "rt")) => Ok(Self::Newest(f.into())),
            Some(p) if parse_kernel_package(p).is_some() => Ok(Self::Package(p.into())),
            Some(p) => bail!(
                "--kernel {p}: expected a kernel image package such as linux-image-6.1.0-56-amd64 \
                 or linux-image-6.1.0-56-cloud-amd64, or a flavour: amd64, cloud, rt"
            ),
        }
    }
}

/// The fields of one `apt-cache show` record that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageInfo {
    /// Version.
    pub version: String,
    /// Download size in bytes.
    pub size: u64,
    /// Pool file name (its last component is what `apt-get download` writes).
    pub filename: String,
}

/// Parses the first record of `apt-cache show --no-all-versions` output.
pub fn parse_package_info(text: &str) -> Option<PackageInfo> {
    let record = text.split("\n\n").next()?;
    let field = |k: &str| {
        record
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    Some(PackageInfo {
        version: field("Version")?,
        size: field("Size")?.parse().ok()?,
        filename: field("Filename")?,
    })
}

/// The guest's `/init`: mount the kernel file systems, run `/atoll-check` with the
/// expectations from the kernel command line, print its status, power off.
pub fn init_script() -> String {
    r#"#!/bin/sh
# /init of the atoll guest image (written by `cargo xtask guest-image`), for an enclave and for
# the root partition alike: mounts the kernel file systems, runs /atoll-check with the
# expectations on the kernel command line (atoll.expect_cpus=N, atoll.expect_mem=MiB,
# atoll.iterations=N, atoll.tolerate=ID,...; atoll.role=host: the root partition's checks),
# runs the actions atoll.actions=A,B,... asks for (atoll.restart_actions=... instead once
# atoll.restarts=N says the root partition was restarted), idles N seconds between
# "ATOLL-IDLE begin" and "ATOLL-IDLE end" lines (atoll.idle=N; with atoll.idle_timer=MS a
# periodic timer of MS milliseconds runs in the window and its largest gap between wake-ups is
# reported as "ATOLL-GUEST-IDLE {json}"), with atoll.echo_input=1
# prompts "ATOLL-GUEST-INPUT?" and echoes the line typed on its console as
# "ATOLL-GUEST-INPUT <line>", and powers off (atoll.shell=1: starts a shell instead). The
# SR-IOV actions (vf_net, vf_dma_outside, vf_host, vf_host_outside) read atoll.net_* words.
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# ptys: atoll-channeld gives an enclave's virtio console one beside its socket.
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
# The console, in case the kernel started init without one.
exec </dev/console >/dev/console 2>&1
set -f
args=""
shell=""
idle=""
idle_timer=""
echo_input=""
actions=""
restart_actions=""
restarts=0
role=""
lc_cores=2,3
# The SR-IOV actions' parameters (vf_net, vf_dma_outside, vf_host; defaults for the scenario).
net_ip=10.0.7.2/24
net_peer=10.0.7.1
net_pings=100
net_port=5001
net_bytes=4194304
net_seed=1
net_pause=0
net_base_ip=10.0.7.3/24
net_then=stay
net_outside=""
dma_canaries=""
# The virtio actions' network (the enclave, the host's tap) and disk (virtio_guest, virtio_host).
virtio_ip=10.9.0.2
virtio_peer=10.9.0.1
virtio_disk=/var/lib/atoll/disk.img
virtio_notify=""
virtio_wait=600
net_words=""
# The isolation bench (issue 15): the workload's parameters, passed on to its enclave or guest.
work_cpus=""
hpcg_size=16,16,16
hpcg_cpus=""
hpcg_rt=0
fwq_samples=2000
fwq_quantum=100
oslat_s=2
work_pause=1
work_words=""
iso_mode=""
iso_loads=none
iso_cores=2,3
iso_load_cpus=0-1
iso_mem=256
work_guest=""
for word in $(cat /proc/cmdline); do
    case "$word" in
        atoll.expect_cpus=*) args="$args --expect-cpus ${word#*=}" ;;
        atoll.expect_mem=*) args="$args --expect-memory-mib ${word#*=}" ;;
        atoll.iterations=*) args="$args --iterations ${word#*=}" ;;
        atoll.tolerate=*) args="$args --tolerate ${word#*=}" ;;
        atoll.role=host) args="$args --role host"; role=host ;;
        atoll.actions=*) actions=${word#*=} ;;
        atoll.restart_actions=*) restart_actions=${word#*=} ;;
        atoll.restarts=*) restarts=${word#*=} ;;
        atoll.lc_args=*) lc_args=$(echo "${word#*=}" | tr '+' ' ') ;;
        atoll.lc_cores=*) lc_cores=${word#*=} ;;
        atoll.net_ip=*) net_ip=${word#*=}; net_words="$net_words $word" ;;
        atoll.net_peer=*) net_peer=${word#*=}; net_words="$net_words $word" ;;
        atoll.net_pings=*) net_pings=${word#*=}; net_words="$net_words $word" ;;
        atoll.net_port=*) net_port=${word#*=}; net_words="$net_words $word" ;;
        atoll.net_bytes=*) net_bytes=${word#*=}; net_words="$net_words $word" ;;
        atoll.net_seed=*) net_seed=${word#*=}; net_words="$net_words $word" ;;
        atoll.net_pause=*) net_pause=${word#*=}; net_words="$net_words $word" ;;
        atoll.net_base_ip=*) net_base_ip=${word#*=} ;;
        atoll.net_then=*) net_then=${word#*=} ;;
        atoll.net_outside=*) net_outside=${word#*=} ;;
        atoll.virtio_notify=*) virtio_notify=${word#*=} ;;
        atoll.virtio_wait=*) virtio_wait=${word#*=} ;;
        atoll.dma_canaries=*) dma_canaries=${word#*=} ;;
        atoll.work_cpus=*) work_cpus=${word#*=} ;;
        atoll.hpcg=*) hpcg_size=${word#*=}; work_words="$work_words $word" ;;
        atoll.hpcg_rt=*) hpcg_rt=${word#*=}; work_words="$work_words $word" ;;
        atoll.hpcg_cpus=*) hpcg_cpus=${word#*=}; work_words="$work_words $word" ;;
        atoll.fwq_samples=*) fwq_samples=${word#*=}; work_words="$work_words $word" ;;
        atoll.fwq_quantum=*) fwq_quantum=${word#*=}; work_words="$work_words $word" ;;
        atoll.oslat_s=*) oslat_s=${word#*=}; work_words="$work_words $word" ;;
        atoll.work_pause=*) work_pause=${word#*=}; work_words="$work_words $word" ;;
        atoll.iso_mode=*) iso_mode=${word#*=} ;;
        atoll.iso_loads=*) iso_loads=${word#*=} ;;
        atoll.iso_cores=*) iso_cores=${word#*=} ;;
        atoll.iso_load_cpus=*) iso_load_cpus=${word#*=} ;;
        atoll.iso_mem=*) iso_mem=${word#*=} ;;
        atoll.work_guest=*) work_guest=$(echo "${word#*=}" | tr '+' ' ') ;;
        atoll.idle=*) idle=${word#*=} ;;
        atoll.idle_timer=*) idle_timer=${word#*=} ;;
        atoll.shell=1) shell=1 ;;
        atoll.echo_input=1) echo_input=1 ;;
    esac
done
case "$idle" in
    *[!0-9]*) echo "init: atoll.idle=$idle ignored: not a whole number of seconds"; idle="" ;;
esac
case "$idle_timer" in
    *[!0-9]*) echo "init: atoll.idle_timer=$idle_timer ignored: not a whole number of milliseconds"; idle_timer="" ;;
esac
case "$restarts" in
    ""|*[!0-9]*) echo "init: atoll.restarts=$restarts ignored: not a whole number"; restarts=0 ;;
esac
if [ "$restarts" -gt 0 ] && [ -n "$restart_actions" ]; then
    actions=$restart_actions
fi
echo "atoll-init: /atoll-check$args"
# Drivers before the check, from the image's /lib/modules (KERNEL_MODULES, named here in
# dependency order; one the kernel has built in, or its flavour lacks, is no file there and is
# skipped). The root partition gets tun (atoll-channeld's net backends open /dev/net/tun) and
# uio_pci_generic (its interrupt on kernels without vfio's no-IOMMU mode): there is no modprobe
# to load them on demand. An enclave gets the drivers of the virtio functions
# on its PCI bus (vendor 0x1af4; device 0x1040 + the virtio id when modern, 0x1000 + id - 1 when
# transitional) and, with a disk, ext4 (jbd2 and ext4 ask the crypto API for crc32c, which
# without modprobe has to be there already: crc32c_generic before them).
load_modules() {
    for m in "$@"; do
        [ -e /lib/modules/$m.ko ] || continue
        insmod /lib/modules/$m.ko || echo "init: insmod $m failed"
    done
}
if [ "$role" = host ]; then
    load_modules tun uio uio_pci_generic
else
    virtio_ids=""
    set +f
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] && virtio_ids="$virtio_ids $(cat "$d/device")"
    done
    set -f
    if [ -n "$virtio_ids" ]; then
        load_modules virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
        case "$virtio_ids" in *0x1041*|*0x1000*) load_modules failover net_failover virtio_net ;; esac
        case "$virtio_ids" in
            *0x1042*|*0x1001*) load_modules virtio_blk crc16 mbcache crc32c_generic jbd2 ext4 ;;
        esac
        case "$virtio_ids" in *0x1043*|*0x1003*) load_modules virtio_console ;; esac
    fi
fi
/atoll-check $args
echo "ATOLL-GUEST-EXIT status=$?"
# The build-like load of load:N, for N seconds: on each CPU (nproc) a worker that, as make
# driving a compiler does, keeps starting short-lived processes on files in a tmpfs. One build
# step is an `sh -c` that writes a 400-line C-like source file with a shell loop (CPU work),
# compresses it (gzip), decompresses it (gunzip), compares the two (cmp) and deletes its files:
# five processes (sh, gzip, gunzip, cmp, rm), 34 KB written and 50 KB read. A worker stops at the end of the first step after
# the stop file appears and leaves its counts of steps and failed steps; ATOLL-LOAD end comes
# once every worker has stopped.
load_dir=/tmp/atoll-load
load_step='d=$1/s$2; i=0
while [ $i -lt 400 ]; do echo "int f$i(int x) { return x * $i + $2; }"; i=$((i + 1)); done > $d.c
gzip -c $d.c > $d.gz && gunzip -c $d.gz > $d.out && cmp -s $d.c $d.out; ok=$?
rm -f $d.c $d.gz $d.out
exit $ok'
load_worker() {
    steps=0
    bad=0
    while :; do
        sh -c "$load_step" step "$1" "$steps" || bad=$((bad + 1))
        steps=$((steps + 1))
        [ -e $load_dir/stop ] && break
    done
    echo "$steps $bad" > "$1.count"
}
load() {
    if ! mkdir -p $load_dir || ! mount -t tmpfs -o size=64m load $load_dir; then
        why="cannot mount a tmpfs at $load_dir"
        return
    fi
    cpus=$(nproc)
    echo "ATOLL-LOAD begin"
    c=0
    while [ "$c" -lt "$cpus" ]; do
        mkdir $load_dir/w$c
        load_worker $load_dir/w$c &
        c=$((c + 1))
    done
    sleep "$1"
    echo > $load_dir/stop
    wait
    echo "ATOLL-LOAD end"
    steps=0
    bad=0
    c=0
    while [ "$c" -lt "$cpus" ]; do
        if read s b < $load_dir/w$c.count; then
            steps=$((steps + s))
            bad=$((bad + b))
        else
            bad=$((bad + 1))
        fi
        c=$((c + 1))
    done
    echo "load: $steps build steps on $cpus CPUs, $bad failed"
    umount $load_dir
    [ "$bad" -eq 0 ] || why="$bad of $steps build steps failed"
}
# The lifecycle action (a host with atoll's control device, and /guest/ from a host-initrd):
# drives /bin/atoll through a Linux enclave's life and every refusal, and prints the outcome of
# each step as a field of "ATOLL-RESULT lifecycle_PART {json}" lines (atoll files each as the
# host's result lifecycle_PART; a console line holds at most 4 KiB). atoll.lc_args=WORDS
# (words joined by '+') are added to the Linux enclave's command line (its tolerations).
lc=""
lc_add() { lc="$lc${lc:+,}\"$1\":$2"; }
lc_flush() {
    echo "ATOLL-RESULT lifecycle_$1 {$lc}"
    lc=""
}
# Text as a JSON string: quotes, backslashes and control characters dropped, lines joined.
lc_str() { printf '"%s"' "$(printf '%s' "$1" | tr -d '"\\\000-\011\013-\037' | tr '\n' ' ')"; }
# Runs a command (after the key); records its exit code and its output (both streams).
lc_run() {
    k=$1
    shift
    out=$("$@" 2>&1)
    rc=$?
    lc_add "$k" "{\"rc\":$rc,\"out\":$(lc_str "$out")}"
    return $rc
}
# Writes an enclave description: file, name, cores, memory, entry, cmdline.
lc_desc() {
    case "$5" in
        linux) files='image = "/guest/vmlinuz"
initrd = "/guest/initrd"' ;;
        *) files='image = "/guest/suite64"' ;;
    esac
    printf 'name = "%s"\ncores = [%s]\nmemory_mib = %s\n%s\nentry = "%s"\ncmdline = "%s"\n' \
        "$2" "$3" "$4" "$files" "$5" "$6" > "$1"
}
# Waits (at most $2 seconds) until enclave $1 is no longer running; prints its state.
# Enclave $1's state as atoll list says it (empty when it is not listed).
lc_state() {
    atoll list --json | tr '{' '\n' | grep "\"name\":\"$1\"" | sed 's/.*"state":"\([a-z]*\)".*/\1/'
}
lc_wait_end() {
    n=0
    while [ "$n" -lt "$2" ]; do
        st=$(lc_state "$1")
        [ "$st" != running ] && [ "$st" != loading ] && break
        sleep 1
        n=$((n + 1))
    done
    echo "$st"
}
lifecycle() {
    d=/tmp/lifecycle
    mkdir -p $d
    # The two host CPUs (= APIC ids) the enclaves use: atoll.lc_cores=A,B (default 2,3).
    a=${lc_cores%,*}
    b=${lc_cores#*,}
    lc_add info_start "$(atoll info --json)"
    # A Linux enclave on two cores the host offlines for it.
    lc_desc $d/linux.toml linux1 "$a, $b" 256 linux \
        "console=ttyS0 loglevel=5 atoll.expect_cpus=2 atoll.expect_mem=256 atoll.echo_input=1 $lc_args"
    lc_run create_linux atoll create $d/linux.toml --offline-cores
    lc_add cpus_online_during "$(lc_str "$(cat /sys/devices/system/cpu/online)")"
    atoll console linux1 --no-input --until ATOLL-GUEST-CHECK --timeout 1800 > $d/linux.out 2>&1
    lc_add console_rc $?
    check=$(grep -a '^ATOLL-GUEST-CHECK ' $d/linux.out | head -n 1 | sed 's/^ATOLL-GUEST-CHECK //' | tr -d '\r')
    echo "ATOLL-RESULT lifecycle_check ${check:-null}"
    # Its console both ways: after its check it asks for a line (atoll.echo_input=1) and
    # echoes it; the line goes in through atoll console's input.
    atoll console linux1 --no-input --until "ATOLL-GUEST-INPUT?" --timeout 1800 > /dev/null 2>&1
    echo typed-through-atoll | atoll console linux1 --until "ATOLL-GUEST-INPUT typed-through-atoll" \
        --timeout 600 > $d/input.out 2>&1
    lc_add console_input_rc $?
    lc_add linux_end "$(lc_str "$(lc_wait_end linux1 600)")"
    echo "ATOLL-RESULT lifecycle_stats $(atoll stats --json)"
    atoll stats --format prometheus > $d/prom
    lc_add prometheus_exits "$(grep -c '^atoll_enclave_exits_total{enclave="linux1"' $d/prom)"
    lc_run destroy_linux atoll destroy linux1
    lc_flush linux
    # The same core and memory again (A is still offline), for a guest that counts every byte
    # that is not zero.
    lc_desc $d/zero.toml zero "$a" 256 long64 zero-check
    lc_run create_zero atoll create $d/zero.toml
    lc_add zero_end "$(lc_str "$(lc_wait_end zero 600)")"
    lc_add zero_list "$(atoll list --json)"
    lc_flush zero
    # B back online in the host for the refusals, each with the list (the ended 'zero' in
    # it) unchanged.
    echo 1 > /sys/devices/system/cpu/cpu$b/online
    before=$(atoll list --json)
    refusals=""
    refused() {
        k=$1
        shift
        out=$("$@" 2>&1)
        rc=$?
        same=false
        [ "$(atoll list --json)" = "$before" ] && same=true
        refusals="$refusals${refusals:+,}\"$k\":{\"rc\":$rc,\"out\":$(lc_str "$out"),\"list_unchanged\":$same}"
    }
    lc_desc $d/bad.toml bad "$b" 0 long64 ""
    refused bad_memory atoll create $d/bad.toml
    printf 'name = "Bad Name"\ncores = [%s]\nmemory_mib = 4\nimage = "/guest/suite64"\nentry = "long64"\n' "$b" > $d/badname.toml
    refused bad_name atoll create $d/badname.toml
    printf 'name = "x"\ncores = [%s]\nmemory_mib = 4\nimage = "/guest/suite64"\nentry = "long64"\ncolour = "red"\n' "$b" > $d/badfield.toml
    refused bad_field atoll create $d/badfield.toml
    lc_desc $d/online.toml online "$b" 4 long64 ""
    refused core_online atoll create $d/online.toml
    lc_desc $d/bsp.toml bsp "0" 4 long64 ""
    refused core_bsp atoll create $d/bsp.toml
    lc_desc $d/taken.toml taken "$a" 4 long64 ""
    refused core_taken atoll create $d/taken.toml
    lc_desc $d/big.toml big "$b" 3000 long64 ""
    refused too_much_memory atoll create $d/big.toml
    # A function to pass through that nothing answers at (on a machine without VT-d the
    # refusal is the missing DMA isolation instead).
    lc_desc $d/dev.toml dev "$b" 4 long64 ""
    printf 'devices = ["0000:00:1e.7"]\n' >> $d/dev.toml
    refused device_absent atoll create $d/dev.toml
    refused garbage atoll raw --slot-garbage
    refused unknown_kind atoll raw --kind 77
    refused no_such_enclave atoll destroy nobody
    echo "ATOLL-RESULT lifecycle_refusals {$refusals}"
    lc_run destroy_zero atoll destroy zero
    # A guest that faults stays listed as failed, with the reason, until destroyed.
    lc_desc $d/crash.toml crash "$b" 4 long64 triple-fault
    lc_run create_crash atoll create $d/crash.toml --offline-cores
    lc_add crash_end "$(lc_str "$(lc_wait_end crash 120)")"
    lc_add crash_list "$(atoll list --json)"
    lc_run destroy_crash atoll destroy crash
    # A vCPU spinning with interrupts masked is still destroyed.
    lc_desc $d/spin.toml spin "$b" 4 long64 spin
    lc_run create_spin atoll create $d/spin.toml
    sleep 1
    lc_run destroy_spin atoll destroy spin
    # Two shells creating and destroying at once, on a core each (both offline now).
    for c in $a $b; do
        (
            i=0
            bad=0
            while [ "$i" -lt 5 ]; do
                lc_desc $d/p$c.toml "par$c-$i" "$c" 4 long64 spin
                atoll create $d/p$c.toml > /dev/null 2>&1 || bad=$((bad + 1))
                atoll destroy "par$c-$i" > /dev/null 2>&1 || bad=$((bad + 1))
                i=$((i + 1))
            done
            echo "$bad" > $d/par$c.bad
        ) &
    done
    wait
    lc_add parallel_failures "$(( $(cat $d/par$a.bad) + $(cat $d/par$b.bad) ))"
    # The host's cores back.
    for c in $a $b; do echo 1 > /sys/devices/system/cpu/cpu$c/online; done
    lc_add cpus_online_end "$(lc_str "$(cat /sys/devices/system/cpu/online)")"
    lc_add list_end "$(atoll list --json)"
    lc_add info_end "$(atoll info --json)"
    lc_flush end
}
# The soak action (soak:N): N create/destroy cycles of a small bare-metal enclave on core 1,
# then atoll's own figures, on one "ATOLL-RESULT soak {json}" line.
# A copy of /proc/interrupts ($2) as "ATOLL-WORK-IRQ $1 ROW" lines, spaces squeezed (b: before
# HPCG, a: after): where the workload's lost cycles went, as the kernel it runs on counts its
# interrupts.
work_irqs() {
    tr -s ' ' < "$2" | while IFS= read -r l; do echo "ATOLL-WORK-IRQ $1 $l"; done
}
# Kernel messages off the console (its log level 1, only emergencies), for the bench's
# measurements: prints the level it had, for console_restore (nothing without the file).
console_quiet() {
    [ -w /proc/sys/kernel/printk ] || return 0
    read -r l _ < /proc/sys/kernel/printk
    echo 1 > /proc/sys/kernel/printk
    echo "$l"
}
# The console's log level back to $1, console_quiet's output (nothing when empty).
console_restore() {
    [ -z "$1" ] || echo "$1" > /proc/sys/kernel/printk
}
# The isolation bench's workload (issue 15), wherever it runs (an enclave, a KVM guest, the
# native host on the workload's CPUs atoll.work_cpus, default all): atoll-fwq's noise probe and
# oslat (when the image has it: the bench tools) on those CPUs, then atoll-hpcg pinned to them,
# each printing its one JSON line (ATOLL-FWQ, ATOLL-OSLAT, ATOLL-HPCG); HPCG on the CPUs
# atoll.hpcg_cpus when given (the bench: the guest's nohz_full ones), else on all of them.
# "ATOLL-WORK hpcg" and "ATOLL-WORK end" bracket HPCG's computation for the host's snapshots
# (atoll's stats, KVM's exits): the first is printed once HPCG has started (its exec and its
# loader's CPUIDs before the window), the second once it has ended, followed by a pause of
# atoll.work_pause seconds in which the host takes its closing snapshot; HPCG prints nothing
# meanwhile (each console byte is an exit): its line and the interrupt rows come after.
work() {
    wc=$work_cpus
    [ -n "$wc" ] || wc=0-$(( $(nproc) - 1 ))
    set -- $(echo "$hpcg_size" | tr ',' ' ')
    mkdir -p /tmp/iso
    hc=${hpcg_cpus:-$wc}
    # With HPCG on chosen CPUs this shell (its forks, execs, console lines: exits in a
    # guest) keeps to the first workload CPU, off HPCG's.
    # (Its own pid: in a subshell $$ is the parent's; /proc/self, opened by the builtin
    # read's redirection, is this process.)
    # (Its affinity comes back at the end: in a guest this is PID 1, which runs on.)
    self=""
    if [ -n "$hpcg_cpus" ]; then
        read -r self _ < /proc/self/stat
        was=$(taskset -p "$self" 2>/dev/null | sed 's/.*: //')
        if ! taskset -p -c "${wc%%[,-]*}" "$self" > /dev/null 2>&1; then
            why="could not keep the workload's shell on CPU ${wc%%[,-]*} (taskset -p)"
            self=""
        fi
    fi
    # Kernel messages off the console while the workload runs (back at the end): each is
    # console output on the workload's CPUs, and one in the middle of a report breaks its
    # line. (A nested KVM guest on a loaded emulator warns about its clock.)
    loglevel=$(console_quiet)
    echo "ATOLL-WORK begin cpus=$wc hpcg_cpus=$hc"
    # What an exit costs this kernel's user space: CPUID's round trip and a timer's wakeup
    # (ATOLL-EXITCOST), on the first workload CPU.
    if ! atoll-fwq --exit-costs --cpu "${wc%%[,-]*}" 2> /tmp/iso/exitcost.err; then
        why="atoll-fwq --exit-costs failed: $(tail -c 300 /tmp/iso/exitcost.err | tr '\n' ' ')"
    fi
    if ! taskset -c "$wc" atoll-fwq --cpus "$wc" --samples "$fwq_samples" --quantum-us "$fwq_quantum" 2> /tmp/iso/fwq.err; then
        why="atoll-fwq failed: $(tail -c 300 /tmp/iso/fwq.err | tr '\n' ' ')"
    fi
    if [ "$oslat_s" -gt 0 ] && command -v oslat > /dev/null; then
        # Its main thread on the first workload CPU too (default: CPU 0, maybe the host's).
        main=${wc%%[,-]*}
        if taskset -c "$wc" oslat --cpu-list "$wc" --cpu-main-thread "$main" --duration "$oslat_s" --quiet --json=/tmp/iso/oslat.json > /tmp/iso/oslat.out 2>&1; then
            # Without its histograms: the line stays short (a console line of atoll's holds
            # 4 KiB) and the maxima are what the bench reads.
            echo "ATOLL-OSLAT $(tr -d '\n' < /tmp/iso/oslat.json | sed 's/, *"histogram": *{[^}]*}//g')"
        else
            why="oslat failed: $(tail -c 300 /tmp/iso/oslat.out | tr '\n' ' ')"
        fi
    fi
    cat /proc/interrupts > /tmp/iso/irq.b
    taskset -c "$hc" atoll-hpcg "$1" "$2" "$3" --rt "$hpcg_rt" > /tmp/iso/hpcg.out 2>&1 &
    hp=$!
    # Its start (exec, the loader's CPUID probes) before the host's first snapshot.
    usleep 200000
    echo "ATOLL-WORK hpcg"
    wait "$hp"
    rc=$?
    cat /proc/interrupts > /tmp/iso/irq.a
    echo "ATOLL-WORK end"
    [ "$work_pause" -gt 0 ] && sleep "$work_pause"
    cat /tmp/iso/hpcg.out
    work_irqs b /tmp/iso/irq.b
    work_irqs a /tmp/iso/irq.a
    [ -n "$self" ] && [ -n "$was" ] && taskset -p "$was" "$self" > /dev/null 2>&1
    console_restore "$loglevel"
    case $rc in
        0) ;;
        1) why="HPCG's validation failed" ;;
        *) why="atoll-hpcg exited $rc" ;;
    esac
}
# The background load of profile $1 (stress-ng, pinned to the host's CPUs atoll.iso_load_cpus,
# one worker per CPU and stressor) started in the background: iso_load_pid, or why.
iso_load_start() {
    iso_load_pid=""
    [ "$1" = none ] && return 0
    n=$(taskset -c "$iso_load_cpus" nproc 2>/dev/null || echo 1)
    case "$1" in
        cpu) sargs="--cpu $n" ;;
        memory) sargs="--vm $n --vm-bytes 32M --fault $n --tlb-shootdown $n" ;;
        timers) sargs="--timer $n --timer-freq 10000 --hrtimers $n" ;;
        # Not stress-ng's affinity stressor: it moves itself off --taskset onto every CPU,
        # the workload's included (sharing a core, not interference).
        ipi) sargs="--membarrier $n" ;;
        io) sargs="--hdd $n --hdd-bytes 8M --temp-path /tmp" ;;
        all) sargs="--cpu $n --vm $n --vm-bytes 32M --fault $n --tlb-shootdown $n --timer $n --timer-freq 10000 --hrtimers $n --membarrier $n --hdd $n --hdd-bytes 8M --temp-path /tmp" ;;
        *) why="unknown load profile '$1' (none, cpu, memory, timers, ipi, io, all)"; return 1 ;;
    esac
    if ! command -v stress-ng > /dev/null; then
        why="no stress-ng in this image (the bench-initrd module has it)"
        return 1
    fi
    stress-ng --taskset "$iso_load_cpus" $sargs --timeout 0 --quiet > /tmp/iso/stress.out 2>&1 &
    iso_load_pid=$!
    # Its workers running before the measurement starts (a second of the machine's time: on
    # Bochs that is minutes of the host's).
    sleep 1
    if ! kill -0 "$iso_load_pid" 2>/dev/null; then
        why="stress-ng $sargs ended at once: $(tail -c 300 /tmp/iso/stress.out | tr '\n' ' ')"
        iso_load_pid=""
        return 1
    fi
}
iso_load_stop() {
    [ -n "$iso_load_pid" ] || return 0
    kill -INT "$iso_load_pid" 2>/dev/null
    wait "$iso_load_pid" 2>/dev/null
    iso_load_pid=""
}
# KVM for the isolation bench's KVM baseline (a host booted without atoll): the modules for
# this CPU's vendor, debugfs for KVM's exit counters. Sets why when /dev/kvm does not appear.
iso_kvm_up() {
    [ -e /dev/kvm ] && return 0
    load_modules irqbypass kvm
    if grep -q AuthenticAMD /proc/cpuinfo; then
        load_modules ccp kvm-amd
    else
        load_modules kvm-intel
    fi
    mkdir -p /sys/kernel/debug
    mount -t debugfs none /sys/kernel/debug 2>/dev/null
    [ -r /sys/kernel/debug/kvm/exits ] || why="no KVM exit counter (debugfs kvm/exits)"
    [ -e /dev/kvm ] || why="no /dev/kvm after loading kvm (does this CPU offer VMX or SVM?): $(dmesg | grep -i kvm | tail -n 2 | tr '\n' ' ')"
}
# KVM's exits so far (all VMs: the bench runs one), from debugfs.
iso_kvm_exits() { cat /sys/kernel/debug/kvm/exits; }
# Waits (at most $3 seconds) until file $2 holds a line starting with $1 or process $4 ended.
iso_wait_line() {
    n=0
    while ! grep -aq "^$1" "$2" 2>/dev/null; do
        kill -0 "$4" 2>/dev/null || return 1
        [ "$n" -ge "$(( $3 * 5 ))" ] && return 1
        usleep 200000
        n=$((n + 1))
    done
}
# The workload in a KVM guest: Debian's qemu-system-x86_64-microvm from the bench tools with
# the same kernel, initramfs and command line an enclave gets, its vCPU threads ("CPU n/KVM")
# pinned one each to the CPUs atoll.iso_cores (the KVM default setup; the tuned one adds
# isolcpus, nohz_full and rcu_nocbs for those CPUs to this host's command line and moves IRQs
# off them). KVM's exits around HPCG go on "ATOLL-ISO-KVM N {exits, seconds}".
iso_kvm_run() {
    iso_kvm_up || return
    [ -n "$why" ] && return
    set -- $(echo "$iso_cores" | tr ',' ' ')
    ncpu=$#
    qemu-system-x86_64-microvm -name work1,debug-threads=on -M microvm,x-option-roms=off \
        -accel kvm -cpu host -nodefaults -no-user-config -display none -no-reboot \
        -bios /usr/share/qemu/qboot.rom -m "$iso_mem" -smp "$ncpu" \
        -kernel /guest/vmlinuz -initrd /guest/initrd -serial stdio \
        -append "console=ttyS0 loglevel=5 $work_guest atoll.actions=work$work_words $lc_args" \
        < /dev/null > $d/work.out 2>&1 &
    qp=$!
    # Pin each vCPU thread as it appears.
    pinned=0; n=0
    while [ "$pinned" -lt "$ncpu" ] && [ "$n" -lt 100 ] && kill -0 "$qp" 2>/dev/null; do
        pinned=0
        set +f
        for t in /proc/$qp/task/*; do
            c=$(cat "$t/comm" 2>/dev/null)
            case "$c" in
                "CPU "*"/KVM")
                    i=${c#CPU }; i=${i%/KVM}
                    set -f; set -- $(echo "$iso_cores" | tr ',' ' ')
                    shift "$i"
                    taskset -p -c "$1" "${t##*/}" > /dev/null 2>&1 && pinned=$((pinned + 1))
                    set +f ;;
            esac
        done
        set -f
        [ "$pinned" -lt "$ncpu" ] && usleep 100000
        n=$((n + 1))
    done
    iso_urgent
    if [ "$pinned" -lt "$ncpu" ]; then
        why="pinned $pinned of the guest's $ncpu vCPU threads: $(tail -c 300 $d/work.out | tr '\r\n' '  ')"
        kill "$qp" 2>/dev/null; wait "$qp" 2>/dev/null
        return
    fi
    if iso_wait_line "ATOLL-WORK hpcg" $d/work.out 3600 "$qp"; then
        e0=$(iso_kvm_exits); t0=$(cut -d' ' -f1 /proc/uptime)
        if grep -aq "^ATOLL-WORK end" $d/work.out; then
            why="KVM's exits were read after HPCG had ended (the host was late)"
        elif iso_wait_line "ATOLL-WORK end" $d/work.out 36000 "$qp"; then
            e1=$(iso_kvm_exits); t1=$(cut -d' ' -f1 /proc/uptime)
            kvm_exits="{\"exits\":$((e1 - e0)),\"uptime_before\":$t0,\"uptime_after\":$t1,\"vcpus\":$ncpu}"
        else
            why="the KVM guest did not end HPCG: $(tail -c 400 $d/work.out | tr '\r\n' '  ')"
        fi
    else
        why="the KVM guest did not reach HPCG: $(tail -c 400 $d/work.out | tr '\r\n' '  ')"
    fi
    # The guest powers off after its actions (-no-reboot ends QEMU then).
    n=0
    while kill -0 "$qp" 2>/dev/null && [ "$n" -lt 600 ]; do usleep 200000; n=$((n + 1)); done
    kill "$qp" 2>/dev/null
    wait "$qp" 2>/dev/null
}
# Waits until the serial console's transmit count (/proc/tty/driver/serial) has not moved for
# a second, at most 60 s; 2 s without that file.
iso_drain() {
    last=""
    n=0
    while [ "$n" -lt 60 ]; do
        now=$(grep -o 'tx:[0-9]*' /proc/tty/driver/serial 2>/dev/null | head -n 1)
        [ -z "$now" ] && [ "$n" -ge 2 ] && return 0
        [ -n "$now" ] && [ "$now" = "$last" ] && return 0
        last=$now
        sleep 1
        n=$((n + 1))
    done
}
# This shell (the isolation driver) ahead of everything it started before: renice -20.
iso_urgent() { renice -20 -p $$ > /dev/null 2>&1; }
# The JSON of line prefix $1 in file $2 (null when absent).
iso_line() {
    l=$(grep -a "^$1 " "$2" | head -n 1 | tr -d '\r')
    if [ -n "$l" ]; then echo "${l#"$1 "}"; else echo null; fi
}
# One measurement of the workload under load $1 (run number $2). Its results go on lines of
# their own, each within the 4 KiB a console line of atoll's holds: "ATOLL-ISO-HPCG N {json}",
# "ATOLL-ISO-FWQ N {json}", "ATOLL-ISO-OSLAT N {json}" (without its histograms), in an enclave
# "ATOLL-ISO-STATS N begin|end {json}" (atoll's stats around HPCG), then
# "ATOLL-ISO-RUN N {mode, load, problem}".
iso_run() {
    d=/tmp/iso
    mkdir -p $d
    rm -f $d/work.out
    why=""
    lc=""
    st_begin=""; st_end=""; kvm_exits=""
    if iso_load_start "$1"; then
        case "$iso_mode" in
            native)
                (work_cpus=$iso_cores; work; [ -z "$why" ] || echo "ATOLL-ACTION-FAILED work: $why") > $d/work.out 2>&1 ;;
            atoll)
                # This driver (its console reads and stats snapshots) ahead of the load: at
                # the default priority a loaded host ran it late, after the workload had
                # ended. The load, started before, keeps the default (as the KVM guest's VMM).
                iso_urgent
                e=work1
                lc_desc $d/$e.toml $e "$iso_cores" "$iso_mem" linux \
                    "console=ttyS0 loglevel=5 $work_guest atoll.actions=work$work_words $lc_args"
                if lc_run create atoll create $d/$e.toml --offline-cores; then
                    if atoll console $e --no-input --until "ATOLL-WORK hpcg" --timeout 3600 >> $d/work.out 2>&1; then
                        st_begin=$(atoll stats $e --json 2>/dev/null)
                        if grep -aq "ATOLL-WORK end" $d/work.out; then
                            why="atoll's stats were read after HPCG had ended (the host was late)"
                        fi
                        atoll console $e --no-input --until "ATOLL-WORK end" --timeout 36000 >> $d/work.out 2>&1
                        st_end=$(atoll stats $e --json 2>/dev/null)
                        if [ -z "$why" ] && [ "$st_begin" = "$st_end" ]; then
                            why="the host's stats of the enclave before and after HPCG are the same (taken too late?)"
                        fi
                        atoll console $e --no-input --until "ATOLL-ACTIONS end" --timeout 120 >> $d/work.out 2>&1
                    else
                        why="the enclave did not reach HPCG: $(tail -c 400 $d/work.out | tr '\r\n' '  ')"
                    fi
                    lc_run destroy atoll destroy $e --online-cores
                else
                    why="atoll create of the workload's enclave failed: $(atoll list 2>&1 | tail -c 200)"
                fi ;;
            kvm) iso_kvm_run ;;
            *) why="atoll.iso_mode='$iso_mode' is not native, atoll or kvm" ;;
        esac
    fi
    # Absolute (busybox's renice -n adds to the current value).
    renice 0 -p $$ > /dev/null 2>&1
    iso_load_stop
    hp=$(iso_line ATOLL-HPCG $d/work.out)
    if [ -z "$why" ] && [ "$hp" = null ]; then
        why="no HPCG result: $(tail -c 400 $d/work.out | tr '\r\n' '  ')"
    fi
    if [ -z "$why" ]; then
        w=$(grep -a "ATOLL-ACTION-FAILED work" $d/work.out | head -n 1 | tr -d '\r')
        [ -n "$w" ] && why="the workload: ${w#*: }"
    fi
    # Every report the workload makes, whole on a line of its own (a kernel message in the
    # middle of one leaves it out: say so, with what the console had).
    for k in ATOLL-FWQ ATOLL-EXITCOST ATOLL-OSLAT; do
        [ "$k" = ATOLL-OSLAT ] && [ "$oslat_s" -eq 0 ] && continue
        if [ -z "$why" ] && [ "$(iso_line $k $d/work.out)" = null ]; then
            why="no $k line: $(grep -a "$k" $d/work.out | head -n 1 | tr -d '\r' | head -c 400)$(tail -c 300 $d/work.out | tr '\r\n' '  ')"
        fi
    done
    # Without the timed sets' residuals: a long --rt would take the line past the 4 KiB of a
    # console line of atoll's (the reference phase's 50 stay).
    echo "ATOLL-ISO-HPCG $2 $(echo "$hp" | sed 's/,"set_residuals":\[[^]]*\]//')"
    echo "ATOLL-ISO-FWQ $2 $(iso_line ATOLL-FWQ $d/work.out)"
    echo "ATOLL-ISO-OSLAT $2 $(iso_line ATOLL-OSLAT $d/work.out | sed 's/, *"histogram": *{[^}]*}//g')"
    echo "ATOLL-ISO-EXITCOST $2 $(iso_line ATOLL-EXITCOST $d/work.out)"
    [ -n "$kvm_exits" ] && echo "ATOLL-ISO-KVM $2 $kvm_exits"
    grep -a "^ATOLL-WORK-IRQ " $d/work.out | tr -d '\r' | sed "s/^ATOLL-WORK-IRQ /ATOLL-ISO-IRQ $2 /"
    [ -n "$st_begin" ] && echo "ATOLL-ISO-STATS $2 begin $st_begin"
    [ -n "$st_end" ] && echo "ATOLL-ISO-STATS $2 end $st_end"
    echo "ATOLL-ISO-RUN $2 {\"mode\":$(lc_str "$iso_mode"),\"load\":$(lc_str "$1"),\"problem\":$(lc_str "$why")}"
    [ -z "$why" ]
}
# The isolation bench's host (issue 15): the workload solo, then under each load profile of
# atoll.iso_loads in turn, natively (atoll.iso_mode=native: the workload pinned to the CPUs
# atoll.iso_cores of this kernel) or in an enclave on those cores (atoll); the loads run on the
# host's CPUs atoll.iso_load_cpus. The workload's guest (enclave or KVM) gets the same command
# line either way, with atoll.work_guest's words ('+' for a space: nohz_full=1+rcu_nocbs=1).
# Ends with "ATOLL-RESULT isolation {runs, failed}".
isolation() {
    iso_failed=0
    iso_n=0
    # This kernel's messages off the console while the runs go (back at the end): each report
    # is one line, which a warning in its middle breaks (a loaded host on an emulator warns
    # about its clocks).
    iso_loglevel=$(console_quiet)
    for load in $(echo "$iso_loads" | tr ',' ' '); do
        iso_run "$load" "$iso_n" || iso_failed=$((iso_failed + 1))
        iso_n=$((iso_n + 1))
    done
    echo "ATOLL-RESULT isolation {\"mode\":$(lc_str "$iso_mode"),\"runs\":$iso_n,\"failed\":$iso_failed}"
    # Let the serial line drain before the power-off: a native Bochs run lost its last lines
    # (kilobytes of interrupt rows behind a slow UART) after a fixed pause of 2 s. The UART's
    # transmit count stops moving once its buffers are empty (at most 60 s).
    iso_drain
    console_restore "$iso_loglevel"
    why=""
    [ "$iso_failed" = 0 ] || why="$iso_failed of the isolation runs failed (see ATOLL-ISO-RUN)"
}
soak() {
    d=/tmp/soak
    mkdir -p $d
    start=$(atoll info --json)
    echo 0 > /sys/devices/system/cpu/cpu1/online
    lc_desc $d/e.toml soak "1" 4 long64 spin
    i=0
    bad=0
    first=""
    while [ "$i" -lt "$1" ]; do
        if ! out=$(atoll create $d/e.toml 2>&1 && atoll destroy soak 2>&1); then
            bad=$((bad + 1))
            [ -z "$first" ] && first=$out
        fi
        i=$((i + 1))
        [ $((i % 100)) -eq 0 ] && echo "soak: $i cycles, $bad failed"
    done
    echo 1 > /sys/devices/system/cpu/cpu1/online
    echo "ATOLL-RESULT soak {\"cycles\":$i,\"failed\":$bad,\"first_failure\":$(lc_str "$first"),\"info_start\":$start,\"info_end\":$(atoll info --json),\"list_end\":$(atoll list --json)}"
}
# The demo action: an operator's session with the atoll command (a bare-metal enclave created
# on a CPU the host offlines for it, listed, its stats and console, destroyed, the CPU back),
# each command and its output on "ATOLL-DEMO" lines for `cargo xtask demo` to show.
demo() {
    d=/tmp/demo
    mkdir -p $d
    lc_desc $d/suite.toml suite "1" 16 long64 spin
    for cmd in "atoll list" "cat $d/suite.toml" "atoll create $d/suite.toml --offline-cores" \
        "atoll list" "atoll stats suite" \
        "atoll console suite --no-input --until hypercall --timeout 60" \
        "atoll destroy suite --online-cores" "atoll list" "atoll info"; do
        echo "ATOLL-DEMO # $cmd"
        $cmd 2>&1 | while IFS= read -r l; do echo "ATOLL-DEMO $l"; done
    done
    echo "ATOLL-DEMO # cat /sys/devices/system/cpu/online"
    echo "ATOLL-DEMO $(cat /sys/devices/system/cpu/online)"
}
# Prints stdin as ATOLL-DEMO lines.
demo_lines() {
    while IFS= read -r l; do echo "ATOLL-DEMO $l"; done
}
# The demo's SR-IOV part (a machine with QEMU's igb): the host's igb drives the PF, `atoll vf`
# readies VF 0, a Linux enclave on CPU 1 gets it (vf = { pf, index }), pings the host 10 times
# and sends it 1 MiB over TCP; the host pings it back; then it is destroyed and the VF is the
# host's again. Prints "ATOLL-RESULT demo_vf {json}".
demo_vf() {
    d=/tmp/demo
    mkdir -p $d
    net_pings=10
    net_bytes=1048576
    dv_pings=0
    dv_recv=null
    if vf_host_setup > $d/vf_setup.out 2>&1; then
        lc_desc $d/net.toml net "1" 256 linux \
            "console=ttyS0 loglevel=5 atoll.actions=vf_net atoll.net_pings=$net_pings atoll.net_bytes=$net_bytes $lc_args"
        printf 'vf = { pf = "%s", index = 0 }\n' "$vf_pf" >> $d/net.toml
        /atoll-check --tcp-recv "$net_port" --timeout 600 --bytes "$net_bytes" --seed "$net_seed" > $d/recv.json &
        dv_rpid=$!
        for cmd in "atoll vf $vf_pf --count 1" "cat $d/net.toml" "atoll create $d/net.toml --offline-cores" "atoll list"; do
            echo "ATOLL-DEMO # $cmd"
            $cmd 2>&1 | demo_lines
        done
        echo "ATOLL-DEMO # atoll console net --no-input --until 'ATOLL-RESULT vf_net'   (the enclave's igbvf)"
        atoll console net --no-input --until "ATOLL-RESULT vf_net" --timeout 900 > $d/net.out 2>&1
        grep -a "ATOLL-RESULT vf_net" $d/net.out | head -n 1 | tr -d '\r' | demo_lines
        wait $dv_rpid
        dv_recv=$(cat $d/recv.json 2>/dev/null)
        echo "ATOLL-DEMO (the host received: ${dv_recv:-nothing})"
        echo "ATOLL-DEMO # ping -c 10 ${net_ip%/*}"
        vf_ping "${net_ip%/*}" 10
        dv_pings=$ping_received
        echo "ATOLL-DEMO 10 packets transmitted, $ping_received packets received, round-trip avg $ping_avg ms"
        for cmd in "atoll stats net" "atoll destroy net --online-cores" "atoll list"; do
            echo "ATOLL-DEMO # $cmd"
            $cmd 2>&1 | demo_lines
        done
        [ "$dv_pings" = 10 ] || why="$dv_pings of 10 pings from the host came back"
        [ "$(vf_field "$dv_recv" matches)" = true ] || why="the enclave's file did not arrive intact"
    fi
    echo "ATOLL-RESULT demo_vf {\"host_pings_received\":$dv_pings,\"recv\":${dv_recv:-null},\"problem\":$(lc_str "$why")}"
}
# The bench_lifecycle action (`cargo xtask bench lifecycle`): bare-metal enclaves of 256 MiB
# and of 2 GiB (bench_lifecycle_small: 256 MiB only, for Bochs), each created on CPU 1 and
# destroyed twice (the first time on memory the
# machine never touched, the second on the same memory again); atoll times its own part.
bench_lifecycle() {
    d=/tmp/bench
    mkdir -p $d
    sizes="256-cold 256-warm 2048-cold 2048-warm"
    [ "$1" = small ] && sizes="256-cold 256-warm"
    for e in $sizes; do
        lc_desc $d/e.toml "e$e" "1" "${e%-*}" long64 spin
        ATOLL_REQUEST_TIMEOUT=3600 atoll create $d/e.toml --offline-cores || why="creating e$e failed"
        sleep 1
        ATOLL_REQUEST_TIMEOUT=3600 atoll destroy "e$e" || why="destroying e$e failed"
    done
    echo 1 > /sys/devices/system/cpu/cpu1/online
}
# The SR-IOV actions (issue 13). In an enclave, vf_net brings up the interface igbvf drives
# (a virtual function of the igb NIC atoll passed through), pings the host's PF
# (atoll.net_peer) atoll.net_pings times, sends atoll.net_bytes of atoll-check's stream
# atoll.net_seed to TCP port atoll.net_port, and prints "ATOLL-RESULT vf_net {json}"; then it
# stays up until the host destroys it (atoll.net_then=poweroff: it goes on instead).
# vf_dma_outside, held back, points the VF's receive ring at atoll.net_outside (a
# guest-physical address outside its RAM; mapping the BAR needs iomem=relaxed) and pings: the
# replies' descriptor fetches must fault in VT-d, so none arrives. In the host, vf_host drives
# the PF (igb) and two enclaves in turn with its VF 0 (see vf_host below).
# Whole numbers only: each goes to ping or atoll-check as an argument.
vf_numbers_ok() {
    for v in "$net_pings" "$net_port" "$net_bytes" "$net_seed" "$net_pause"; do
        case "$v" in ""|*[!0-9]*) why="atoll.net_* parameter '$v' is not a whole number"; return 1 ;; esac
    done
}
# The interface bound to driver $1 (through /sys/class/net/*/device/driver), in $vf_if.
# (The script runs with globbing off, set -f: on for these loops only.)
vf_iface() {
    vf_if=""
    set +f
    for vf_n in /sys/class/net/*; do
        drv=$(readlink "$vf_n/device/driver" 2>/dev/null) || continue
        if [ "${drv##*/}" = "$1" ]; then
            vf_if=${vf_n##*/}
            break
        fi
    done
    set -f
    [ -n "$vf_if" ]
}
# Waits (at most $2 seconds) for carrier on interface $1; the seconds waited in $carrier_s
# ("null" without carrier).
vf_wait_carrier() {
    vf_w=0
    while [ "$vf_w" -lt "$2" ]; do
        if [ "$(cat "/sys/class/net/$1/carrier" 2>/dev/null)" = 1 ]; then
            carrier_s=$vf_w
            return 0
        fi
        sleep 1
        vf_w=$((vf_w + 1))
    done
    carrier_s=null
    return 1
}
# Pings $1 $2 times, 0.2 s apart; the counts and the average round trip from busybox's summary
# in $ping_sent, $ping_received, $ping_avg (null when ping printed no summary). $vf_in, when
# set, is a command prefix ping runs under (the bench's `nsenter -t PID -n`).
vf_ping() {
    out=$($vf_in ping -c "$2" -i 0.2 -W 5 "$1" 2>&1)
    ping_sent=$(printf '%s\n' "$out" | sed -n 's/^\([0-9][0-9]*\) packets transmitted.*/\1/p')
    ping_received=$(printf '%s\n' "$out" | sed -n 's/.* \([0-9][0-9]*\) packets received.*/\1/p')
    ping_avg=$(printf '%s\n' "$out" | sed -n 's/^round-trip .* = [0-9.]*\/\([0-9.]*\)\/.*/\1/p')
    ping_sent=${ping_sent:-0}
    ping_received=${ping_received:-0}
    ping_avg=${ping_avg:-null}
}
# A field of atoll-check's one-line JSON: $1 the JSON, $2 the key (numbers and strings).
vf_field() {
    v=$(printf '%s' "$1" | sed -n "s/.*\"$2\":\\(\"[^\"]*\"\\|[0-9.][0-9.]*\\|true\\|false\\|null\\).*/\\1/p")
    printf '%s' "${v:-null}"
}
# The enclave's part up to a working link: insmods igbvf (and nothing else), finds its
# interface, sets it up with atoll.net_ip, waits for carrier. Sets vf_if, vf_bdf, vf_mac,
# carrier_s and, when something is missing, why.
vf_up() {
    vf_numbers_ok || return 1
    # The network bench's virtio-net enclave (vnet) runs the same with virtio_net, which /init
    # loaded already.
    vf_drv=${vf_driver:-igbvf}
    [ "$vf_drv" = igbvf ] && { insmod /lib/modules/igbvf.ko || echo "vf: insmod igbvf failed"; }
    vf_t=0
    while ! vf_iface "$vf_drv"; do
        vf_t=$((vf_t + 1))
        if [ "$vf_t" -gt 10 ]; then
            why="no interface is bound to $vf_drv"
            return 1
        fi
        sleep 1
    done
    vf_bdf=$(readlink "/sys/class/net/$vf_if/device")
    vf_bdf=${vf_bdf##*/}
    vf_mac=$(cat "/sys/class/net/$vf_if/address")
    ip link set "$vf_if" up
    ip addr add "$net_ip" dev "$vf_if"
    if ! vf_wait_carrier "$vf_if" 30; then
        why="no carrier on $vf_if in 30 s"
        return 1
    fi
}
# Counter $2 of protocol $1 (Tcp, Icmp) in /proc/net/snmp (a line of names, then one of values).
vf_snmp() {
    _hdr=""
    while read -r _p _rest; do
        [ "$_p" = "$1:" ] || continue
        if [ -z "$_hdr" ]; then _hdr=$_rest; continue; fi
        _vals=$_rest
        for _n in $_hdr; do
            _v=${_vals%% *}; _vals=${_vals#* }
            [ "$_n" = "$2" ] && { echo "$_v"; return; }
        done
    done < /proc/net/snmp
    echo null
}
# The interface's packet counters as JSON fields with suffix $2: rx_$2 and tx_$2.
vf_packets() {
    printf '"rx_%s":%s,"tx_%s":%s' "$2" "$(cat "/sys/class/net/$1/statistics/rx_packets" 2>/dev/null || echo null)" \
        "$2" "$(cat "/sys/class/net/$1/statistics/tx_packets" 2>/dev/null || echo null)"
}
# The frames on the wire both ways as the stack counts them, as the JSON field frames_$1: TCP
# segments in and out and ICMP messages in and out (an offloaded 64 KiB packet is one packet
# of the interface's but ~45 segments).
vf_frames() {
    _f=null
    _ti=$(vf_snmp Tcp InSegs); _to=$(vf_snmp Tcp OutSegs)
    _ii=$(vf_snmp Icmp InMsgs); _io=$(vf_snmp Icmp OutMsgs)
    case "$_ti$_to$_ii$_io" in *null*) ;; *) _f=$((_ti + _to + _ii + _io)) ;; esac
    printf '"frames_%s":%s' "$1" "$_f"
}
vf_net() {
    vf_if=""; vf_bdf=""; vf_mac=""; carrier_s=null
    ping_sent=0; ping_received=0; ping_avg=null
    tcp='{"bytes":0,"sha256":null,"seconds":null,"error":"not run"}'
    packets=null
    if vf_up; then
        # The data phase (pings and the transfer) is between these markers: the network bench
        # snapshots atoll's stats of the enclave in the pauses after them
        # (atoll.net_pause=SECONDS, default none) and divides by the packets counted between.
        echo "ATOLL-NET begin"
        [ "$net_pause" -gt 0 ] && sleep "$net_pause"
        packets="{$(vf_packets "$vf_if" before),$(vf_frames before)"
        vf_ping "$net_peer" "$net_pings"
        tcp=$(/atoll-check --tcp-send "$net_peer" "$net_port" --bytes "$net_bytes" --seed "$net_seed" --timeout 300)
        packets="$packets,$(vf_packets "$vf_if" after),$(vf_frames after)}"
        echo "ATOLL-NET end"
        [ "$net_pause" -gt 0 ] && sleep "$net_pause"
        if [ "$ping_received" != "$net_pings" ]; then
            why="$ping_received of $net_pings pings came back"
        elif [ "$(vf_field "$tcp" error)" != null ]; then
            why="the TCP transfer failed"
        fi
    else
        # No data phase: the markers all the same, so a host waiting for them goes on.
        echo "ATOLL-NET begin"
        echo "ATOLL-NET end"
    fi
    echo "ATOLL-RESULT vf_net {\"iface\":$(lc_str "$vf_if"),\"device\":$(lc_str "$vf_bdf"),\"mac\":$(lc_str "$vf_mac"),\"carrier_s\":$carrier_s,\"pings_sent\":$ping_sent,\"pings_received\":$ping_received,\"rtt_avg_ms\":$ping_avg,\"tcp_bytes\":$(vf_field "$tcp" bytes),\"tcp_sha256\":$(vf_field "$tcp" sha256),\"tcp_seconds\":$(vf_field "$tcp" seconds),\"tcp\":$tcp,\"interrupts\":$(/atoll-check --interrupts "${vf_if:-none}"),\"packets\":$packets,\"problem\":$(lc_str "$why")}"
}
vf_dma_outside() {
    vf_if=""; vf_bdf=""; vf_mac=""; carrier_s=null
    ping_sent=0; ping_received=0; ping_avg=null
    regs=null
    first=0
    relaxed=false
    case " $(cat /proc/cmdline) " in *" iomem=relaxed "*) relaxed=true ;; esac
    case "$net_outside" in
        0x*) ;;
        *) why="atoll.net_outside='$net_outside' is not a hex address"; net_outside="" ;;
    esac
    if [ -n "$net_outside" ] && vf_up; then
        vf_ping "$net_peer" 1
        first=$ping_received
        if [ "$first" != 1 ]; then
            why="the link did not work before the ring moved"
        else
            regs=$(/atoll-check --vf-rx-outside "$net_outside" --device "$vf_bdf")
            if [ "$(vf_field "$regs" written)" != true ]; then
                # Without iomem=relaxed Debian's kernel refuses to map a claimed BAR.
                why="the ring was not moved: $(vf_field "$regs" error)"
            else
                vf_ping "$net_peer" "$net_pings"
                [ "$ping_received" = 0 ] || why="$ping_received pings came back after the ring moved"
            fi
        fi
    fi
    echo "ATOLL-RESULT vf_dma_outside {\"iface\":$(lc_str "$vf_if"),\"device\":$(lc_str "$vf_bdf"),\"gpa\":$(lc_str "$net_outside"),\"iomem_relaxed\":$relaxed,\"first_ping_received\":$first,\"registers\":${regs:-null},\"pings_sent\":$ping_sent,\"pings_received\":$ping_received,\"interrupts\":$(/atoll-check --interrupts "${vf_if:-none}"),\"problem\":$(lc_str "$why")}"
}
# After the enclave's result: it stays up until the host destroys it (which ends it), unless
# atoll.net_then=poweroff.
vf_then() {
    [ "$net_then" = poweroff ] && return
    echo "vf: staying up until destroyed"
    while :; do sleep 3600; done
}
# $3 configuration bytes at offset $2 of PCI function $1, as hex.
vf_cfg() {
    dd if="/sys/bus/pci/devices/$1/config" bs=1 skip="$2" count="$3" 2>/dev/null | od -An -tx1 | tr -d ' \n'
}
# Config bytes 8..11 (revision, class) of PCI function $1 as hex: a function atoll hid from
# the host reads all ones there (Linux may answer the vendor and device IDs of a VF from its
# own records, so those prove nothing).
vf_class() {
    dd if="/sys/bus/pci/devices/$1/config" bs=1 skip=8 count=4 2>/dev/null | od -An -tx1 | tr -d ' \n'
}
# The host's side, with the PF: loads igb (after dca and i2c-algo-bit), gives the PF's
# interface atoll.net_peer (with atoll.net_ip's prefix length), enables one VF through atoll
# (`atoll vf`), then twice: listens on atoll.net_port, creates an enclave with VF 0 that runs
# vf_net (the host's atoll.net_* words on its command line), waits for its result, pings it,
# checks the VF reads as absent while the enclave owns it and as present after destroy.
# Prints "ATOLL-RESULT vf_host_enclaveN {the enclave's vf_net result}" for each and
# "ATOLL-RESULT vf_host {json}".
vf_host_cmdline() {
    echo "console=ttyS0 loglevel=5 atoll.expect_cpus=1 atoll.expect_mem=256 atoll.actions=$1$net_words $lc_args"
}
vf_host_setup() {
    vf_numbers_ok || return 1
    for m in dca i2c-algo-bit igb; do
        insmod /lib/modules/$m.ko || echo "vf_host: insmod $m failed"
    done
    vf_pf=""
    set +f
    for vf_d in /sys/bus/pci/devices/*; do
        if [ "$(cat "$vf_d/vendor")" = 0x8086 ] && [ "$(cat "$vf_d/device")" = 0x10c9 ]; then
            vf_pf=${vf_d##*/}
            break
        fi
    done
    set -f
    if [ -z "$vf_pf" ]; then
        why="no igb PF (8086:10c9)"
        return 1
    fi
    vf_pf_if=""
    vf_t=0
    while :; do
        set +f
        for vf_d in /sys/bus/pci/devices/$vf_pf/net/*; do
            [ -e "$vf_d" ] && vf_pf_if=${vf_d##*/}
        done
        set -f
        [ -n "$vf_pf_if" ] && break
        vf_t=$((vf_t + 1))
        if [ "$vf_t" -gt 10 ]; then
            why="igb gave $vf_pf no interface"
            return 1
        fi
        sleep 1
    done
    # Up before any VF exists: igbvf's reset handshake needs the PF driver running.
    ip addr add "$net_peer/${net_ip#*/}" dev "$vf_pf_if"
    ip link set "$vf_pf_if" up
    vf_wait_carrier "$vf_pf_if" 30 || echo "vf_host: no carrier on $vf_pf_if"
    lc_run enable atoll vf "$vf_pf" --count "${1:-1}"
    vf_vf=$(readlink "/sys/bus/pci/devices/$vf_pf/virtfn0")
    vf_vf=${vf_vf##*/}
    if [ -z "$vf_vf" ]; then
        why="$vf_pf has no virtfn0 after atoll vf"
        return 1
    fi
}
# One enclave with the VF: $1 its number, $2 its actions. Adds its fields to $lc.
vf_host_round() {
    d=/tmp/vf
    e=vfnet$1
    rpid=""
    if [ "$2" = vf_net ]; then
        /atoll-check --tcp-recv "$net_port" --timeout 1800 --bytes "$net_bytes" --seed "$net_seed" > $d/recv$1.json &
        rpid=$!
    fi
    lc_desc $d/$e.toml $e "${lc_cores%,*}" 256 linux "$(vf_host_cmdline "$2")"
    printf 'devices = ["%s"]\n' "$vf_vf" >> $d/$e.toml
    lc_run create$1 atoll create $d/$e.toml --offline-cores
    owned=$(vf_class "$vf_vf")
    lc_add class_while_owned$1 "$(lc_str "$owned")"
    hidden=false
    [ "$owned" = ffffffff ] && hidden=true
    lc_add hidden$1 $hidden
    # The PF's SR-IOV control (igb's capability at 0x160): a write clearing VF Enable while an
    # enclave owns a VF must not reach the PF (read back unchanged).
    sriov_guard=null
    if [ "$(vf_cfg "$vf_pf" $((0x160)) 2)" = 1000 ]; then
        ctl_before=$(vf_cfg "$vf_pf" $((0x168)) 2)
        printf '\000\000' | dd of="/sys/bus/pci/devices/$vf_pf/config" bs=1 seek=$((0x168)) count=2 conv=notrunc 2>/dev/null
        ctl_after=$(vf_cfg "$vf_pf" $((0x168)) 2)
        sriov_guard="{\"before\":\"$ctl_before\",\"after\":\"$ctl_after\"}"
    fi
    lc_add sriov_guard$1 "$sriov_guard"
    if [ -n "$vf_bench" ]; then
        # The network bench: atoll's stats of the enclave when its data phase begins and
        # when it ends (it pauses after each marker).
        atoll console $e --no-input --until "ATOLL-NET begin" --timeout 1800 > /dev/null 2>&1
        vf_stats_begin=$(atoll stats $e --json 2>/dev/null)
        atoll console $e --no-input --until "ATOLL-NET end" --timeout 1800 > /dev/null 2>&1
        vf_stats_end=$(atoll stats $e --json 2>/dev/null)
    fi
    atoll console $e --no-input --until "ATOLL-RESULT $2" --timeout 1800 > $d/$e.out 2>&1
    vf_rc=$?
    lc_add console_rc$1 $vf_rc
    if [ "$vf_rc" != 0 ]; then
        # Why the console gave up, on the host's console (its own stderr is in the file). A
        # console that gave up while the enclave still runs is read once more from the start
        # (seen once in CI, cause not found yet: the line makes it visible), and counted.
        echo "vf: atoll console $e exited $vf_rc: $(tail -c 400 $d/$e.out | tr '\r\n' '  ')"
        if [ "$(lc_state $e)" = running ]; then
            atoll console $e --no-input --until "ATOLL-RESULT $2" --timeout 1800 > $d/$e.out 2>&1
            lc_add console_retry_rc$1 $?
        fi
    fi
    res=$(grep -a "^ATOLL-RESULT $2 " $d/$e.out | head -n 1 | sed "s/^ATOLL-RESULT $2 //" | tr -d '\r')
    echo "ATOLL-RESULT ${vf_tag:-vf_host_enclave}$1 ${res:-null}"
    recv=""
    if [ -n "$rpid" ]; then
        # The enclave's sender waits for the receiver to close: with its result printed, the
        # receiver is done; without one it may wait for nothing.
        [ -n "$res" ] || kill $rpid 2>/dev/null
        wait $rpid
        recv=$(cat $d/recv$1.json 2>/dev/null)
    fi
    lc_add recv$1 "${recv:-null}"
    pings=$net_pings
    [ "$2" = vf_net ] || pings=3
    vf_ping "${net_ip%/*}" "$pings"
    lc_add host_pings$1 "{\"sent\":$ping_sent,\"received\":$ping_received,\"rtt_avg_ms\":$ping_avg}"
    lc_add stats$1 "$(atoll stats $e --json 2>/dev/null || echo null)"
    lc_run destroy$1 atoll destroy $e --online-cores
    c=$(vf_class "$vf_vf")
    lc_add class_after_destroy$1 "$(lc_str "$c")"
    # The first failure is the one reported.
    if [ -n "$why" ]; then
        :
    elif [ "$hidden" != true ]; then
        why="the VF's config space read $owned while enclave $1 owned it"
    elif [ "$c" = ffffffff ] || [ -z "$c" ]; then
        why="the VF did not come back after enclave $1"
    elif [ -z "$res" ]; then
        why="enclave $1 printed no $2 result"
    elif [ "$(vf_field "$res" problem)" != '""' ]; then
        why="enclave $1: $(vf_field "$res" problem)"
    elif [ "$2" != vf_net ]; then
        :
    elif [ "$(vf_field "$recv" matches)" != true ]; then
        why="enclave $1's file did not arrive intact"
    elif [ "$ping_received" != "$net_pings" ]; then
        why="$ping_received of $net_pings pings from the host to enclave $1 came back"
    fi
}
vf_host() {
    mkdir -p /tmp/vf
    lc=""
    if vf_host_setup; then
        vf_host_round 1 vf_net
        vf_host_round 2 vf_net
    fi
    lc_add pf "$(lc_str "$vf_pf")"
    lc_add pf_iface "$(lc_str "$vf_pf_if")"
    lc_add vf "$(lc_str "$vf_vf")"
    lc_add problem "$(lc_str "$why")"
    echo "ATOLL-RESULT vf_host {$lc}"
    lc=""
}
# The held-back case from the host: one enclave that runs vf_dma_outside (with iomem=relaxed
# so it can map its VF's BAR); its result and atoll's stats of it. atoll.net_outside=pool-canary
# takes the address of atoll's pool canary page (atoll.dma_canaries=ATOLL,POOL): outside the
# enclave's RAM, and a page atoll checks is unchanged at the end.
vf_host_outside() {
    mkdir -p /tmp/vf
    lc=""
    if [ "$net_outside" = pool-canary ]; then
        net_outside=${dma_canaries#*,}
    fi
    if [ -z "$net_outside" ]; then
        why="no atoll.net_outside=GPA"
    elif vf_host_setup; then
        net_words="$net_words atoll.net_outside=$net_outside atoll.net_pings=10 iomem=relaxed"
        vf_tag=vf_host_outside_enclave
        vf_host_round 1 vf_dma_outside
        vf_tag=""
    fi
    lc_add pf "$(lc_str "$vf_pf")"
    lc_add vf "$(lc_str "$vf_vf")"
    lc_add problem "$(lc_str "$why")"
    echo "ATOLL-RESULT vf_host_outside {$lc}"
    lc=""
}
# The disk bench (`cargo xtask bench blk`, issue 14): fio's 4 KiB sequential and random reads
# and writes (psync, one job at a time, atoll.blk_seconds each, over atoll.blk_mib MiB) on a raw
# image file in the host's memory, first by the host itself, then by an enclave that has the
# same file as its virtio-blk disk /dev/vda, served by atoll-channeld. The enclave's fio uses
# O_DIRECT, so every I/O crosses the channel rather than its page cache. The host's tries
# O_DIRECT too and, when its file system refuses it (the initramfs's root file system), runs buffered:
# that file's pages are its storage, so buffered is the direct path there. The enclave pauses
# atoll.blk_pause seconds after "ATOLL-BLK begin" and "ATOLL-BLK end" around its jobs, and the
# host takes atoll's stats of it in each pause. Lines: "ATOLL-RESULT bench_blk_host {json}",
# "ATOLL-RESULT bench_blk_enclave {the enclave's bench_blk_guest result}", "ATOLL-RESULT
# bench_blk {json}" (the enclave's round, the stats, problem).
blk_dir=/tmp/blk
# name:fio's rw, in the order they run.
blk_jobs="seqread:read seqwrite:write randread:randread randwrite:randwrite"
# The bench's words on the kernel command line (whole numbers); defaults for the scenario.
blk_params() {
    blk_mib=32; blk_seconds=4; blk_pause=2
    for w in $(cat /proc/cmdline); do
        case "$w" in
            atoll.blk_mib=*) blk_mib=${w#*=} ;;
            atoll.blk_seconds=*) blk_seconds=${w#*=} ;;
            atoll.blk_pause=*) blk_pause=${w#*=} ;;
        esac
    done
    for v in "$blk_mib" "$blk_seconds" "$blk_pause"; do
        case "$v" in ""|*[!0-9]*) why="atoll.blk_* parameter '$v' is not a whole number"; return 1 ;; esac
    done
}
# fio's JSON (file $1, one job) cut to what the bench reads, in fio's own layout: one line
# {"jobs":[{"jobname", "error", "read":{...}, "write":{...}}]} where read and write keep the
# numbers that open fio's objects (io_bytes, bw_bytes, iops, runtime, total_ios, ...) and drop
# its latency histograms: the whole document is some 6 KB, more than a console line carries.
blk_reduce() {
    j=$(tr -d ' \n\t' < "$1")
    name=$(printf '%s' "$j" | sed -n 's/.*"jobname":\("[^"]*"\).*/\1/p')
    err=$(printf '%s' "$j" | sed -n 's/.*"jobname":"[^"]*",[^{}]*"error":\([0-9]*\),.*/\1/p')
    rd=$(printf '%s' "$j" | sed -n 's/.*"read":{\([^{}]*\),"[a-z_]*":{.*/\1/p')
    wr=$(printf '%s' "$j" | sed -n 's/.*"write":{\([^{}]*\),"[a-z_]*":{.*/\1/p')
    printf '{"jobname":%s,"error":%s,"read":{%s},"write":{%s}}' "${name:-null}" "${err:-null}" "$rd" "$wr"
}
# Runs the jobs on $1 with --direct=$2: their reduced JSON, comma-separated, in $blk_out; on
# fio's failure returns 1 with the end of what it said in $blk_err.
blk_fio() {
    blk_out=""
    blk_err=""
    mkdir -p $blk_dir
    for jr in $blk_jobs; do
        job=${jr%%:*}
        if ! fio --name="$job" --filename="$1" --rw="${jr#*:}" --bs=4k --size="${blk_mib}M" \
            --direct="$2" --ioengine=psync --runtime="$blk_seconds" --time_based \
            --output-format=json --output="$blk_dir/$job.json" > "$blk_dir/$job.err" 2>&1; then
            blk_err="$job: $(tail -c 300 "$blk_dir/$job.err")"
            return 1
        fi
        blk_out="$blk_out${blk_out:+,}$(blk_reduce "$blk_dir/$job.json")"
    done
}
# In the enclave: waits for vda's capacity (channeld's configuration change may come after the
# driver), runs the jobs on it between the markers, prints "ATOLL-RESULT bench_blk_guest
# {json}" on its console and on hvc0, then stays up until destroyed.
bench_blk_guest() {
    bg_hvc=false
    bg_sectors=null
    blk_out=""; blk_err=""
    if [ -e /sys/class/tty/hvc0 ]; then
        bg_hvc=true
        exec 4<>/dev/hvc0
    fi
    # Markers and the result on both consoles (the host's `atoll console` reads hvc0).
    bg_say() {
        echo "$1"
        [ "$bg_hvc" = true ] && echo "$1" >&4
    }
    if blk_params; then
        bg_t=0
        while [ "$bg_t" -lt 30 ]; do
            bg_sectors=$(cat /sys/block/vda/size 2>/dev/null || echo null)
            [ "$bg_sectors" != null ] && [ "$bg_sectors" != 0 ] && break
            sleep 1
            bg_t=$((bg_t + 1))
        done
        if [ "$bg_sectors" = null ] || [ "$bg_sectors" = 0 ]; then
            why="no disk vda with sectors (size $bg_sectors)"
        fi
    fi
    bg_say "ATOLL-BLK begin"
    sleep "${blk_pause:-0}"
    if [ -z "$why" ]; then
        blk_fio /dev/vda 1 || why="fio on /dev/vda failed"
    fi
    bg_say "ATOLL-BLK end"
    sleep "${blk_pause:-0}"
    bg_say "ATOLL-RESULT bench_blk_guest {\"sectors\":$bg_sectors,\"direct\":1,\"jobs\":[$blk_out],\"fio_error\":$(lc_str "$blk_err"),\"problem\":$(lc_str "$why")}"
}
# In the host: the image, the host's jobs, then the enclave's (see above).
bench_blk() {
    d=$blk_dir
    mkdir -p $d
    lc=""
    e=blk1
    bh_host=null; bh_res=""; bh_stats_begin=""; bh_stats_end=""
    if blk_params; then
        dd if=/dev/zero of=$d/disk.img bs=1048576 count="$blk_mib" 2>/dev/null || why="cannot write $d/disk.img"
    fi
    if [ -z "$why" ]; then
        bh_direct=1
        bh_direct_err=""
        if ! blk_fio $d/disk.img 1; then
            bh_direct=0
            bh_direct_err=$blk_err
            blk_fio $d/disk.img 0 || why="fio on the host's $d/disk.img failed: $blk_err"
        fi
        bh_host="{\"direct\":$bh_direct,\"direct_refused\":$(lc_str "$bh_direct_err"),\"jobs\":[$blk_out],\"fio_error\":$(lc_str "$blk_err")}"
    fi
    echo "ATOLL-RESULT bench_blk_host $bh_host"
    if [ -z "$why" ]; then
        lc_desc $d/$e.toml $e "${lc_cores%,*}" 256 linux \
            "console=ttyS0 console=hvc0 loglevel=5 atoll.expect_cpus=1 atoll.expect_mem=256 atoll.actions=bench_blk_guest atoll.blk_mib=$blk_mib atoll.blk_seconds=$blk_seconds atoll.blk_pause=$blk_pause $lc_args"
        printf '[[virtio]]\nkind = "console"\n\n[[virtio]]\nkind = "blk"\npath = "%s"\n' "$d/disk.img" >> $d/$e.toml
        bench_virtio_notify
        if lc_run create atoll create $d/$e.toml --offline-cores; then
            # Bounded waits (the scenario's timeout is 900 s): an enclave that never begins
            # is not waited for twice more. The jobs take 4 × atoll.blk_seconds.
            bh_rc=1
            if atoll console $e --no-input --until "ATOLL-BLK begin" --timeout 300 > $d/$e.out 2>&1; then
                bh_stats_begin=$(atoll stats $e --json 2>/dev/null)
                atoll console $e --no-input --until "ATOLL-BLK end" --timeout $((blk_seconds * 4 + 240)) > /dev/null 2>&1
                bh_stats_end=$(atoll stats $e --json 2>/dev/null)
                atoll console $e --no-input --until "ATOLL-RESULT bench_blk_guest" --timeout 120 > $d/$e.out 2>&1
                bh_rc=$?
            fi
            lc_add console_rc $bh_rc
            bh_res=$(grep -a "^ATOLL-RESULT bench_blk_guest " $d/$e.out | head -n 1 | sed "s/^ATOLL-RESULT bench_blk_guest //" | tr -d '\r')
            if [ -z "$bh_res" ]; then
                why="the enclave printed no bench_blk_guest result (atoll console exited $bh_rc)"
                echo "bench_blk: atoll console $e: $(tail -c 600 $d/$e.out | tr '\r\n' '  ')"
                while IFS= read -r l; do echo "bench_blk: channeld.log: $l"; done < /run/atoll/$e/channeld.log
            elif [ "$(vf_field "$bh_res" problem)" != '""' ]; then
                why="enclave: $(vf_field "$bh_res" problem): $(vf_field "$bh_res" fio_error)"
            fi
            lc_run destroy atoll destroy $e --online-cores
        else
            why="atoll create failed"
        fi
    fi
    echo "ATOLL-RESULT bench_blk_enclave ${bh_res:-null}"
    lc_add stats_begin "${bh_stats_begin:-null}"
    lc_add stats_end "${bh_stats_end:-null}"
    lc_add problem "$(lc_str "$why")"
    echo "ATOLL-RESULT bench_blk {$lc}"
    lc=""
}
# The benches' atoll.virtio_notify=poll, as virtio_host's: without uio_pci_generic
# atoll-channeld polls the channel (every 10 ms) instead of waiting for its INTx. Adds "notify"
# to $lc.
bench_virtio_notify() {
    if [ "$virtio_notify" = poll ]; then
        rmmod uio_pci_generic 2>/dev/null || echo "bench: rmmod uio_pci_generic failed"
    fi
    lc_add notify "$(lc_str "${virtio_notify:-interrupt}")"
}
# The network bench's virtio-net round (issue 14), after the VF's: an enclave with a virtio-net
# device on the host's tap atl0 (atoll.net_ip's 10.9.0.x: virtio_ip, the tap virtio_peer), served
# by atoll-channeld, runs vf_net over it (the action vnet) with the same pings, transfer and
# pauses, and atoll's stats of it are taken in the pauses. Lines "ATOLL-RESULT
# bench_net_virtio_enclave {its vf_net result}" and "ATOLL-RESULT bench_net_virtio {json}"
# (create, the host's receiver, the stats, problem).
bench_net_virtio() {
    d=/tmp/vf
    mkdir -p $d
    e=vnet1
    vn_why=""; vn_res=""; vn_recv=""; vn_begin=""; vn_end=""
    saved_why=$why
    why=""
    vn=""
    /atoll-check --tcp-recv "$net_port" --timeout 1800 --bytes "$net_bytes" --seed "$net_seed" > $d/vnet_recv.json &
    vn_rpid=$!
    lc_desc $d/$e.toml $e "${lc_cores%,*}" 256 linux \
        "console=ttyS0 loglevel=5 atoll.expect_cpus=1 atoll.expect_mem=256 atoll.actions=vnet atoll.net_ip=$virtio_ip/24 atoll.net_peer=${virtio_peer}$net_words $lc_args"
    printf '[[virtio]]\nkind = "net"\ntap = "atl0"\n' >> $d/$e.toml
    lc=""
    bench_virtio_notify
    if lc_run create atoll create $d/$e.toml --offline-cores; then
        # The tap is channeld's, up once create returns.
        lc_run tap ip addr add "$virtio_peer/24" dev atl0
        # Bounded waits (the scenario's timeout is 900 s, the VF's round took part of it): an
        # enclave that never begins is not waited for twice more.
        vn_rc=1
        if atoll console $e --no-input --until "ATOLL-NET begin" --timeout 240 > $d/$e.out 2>&1; then
            vn_begin=$(atoll stats $e --json 2>/dev/null)
            atoll console $e --no-input --until "ATOLL-NET end" --timeout 300 > /dev/null 2>&1
            vn_end=$(atoll stats $e --json 2>/dev/null)
            atoll console $e --no-input --until "ATOLL-RESULT vf_net" --timeout 120 > $d/$e.out 2>&1
            vn_rc=$?
        fi
        lc_add console_rc $vn_rc
        vn_res=$(grep -a "^ATOLL-RESULT vf_net " $d/$e.out | head -n 1 | sed "s/^ATOLL-RESULT vf_net //" | tr -d '\r')
        lc_add tap_packets "{$(vf_packets atl0 tap)}"
        [ -n "$vn_res" ] || kill $vn_rpid 2>/dev/null
        wait $vn_rpid
        vn_recv=$(cat $d/vnet_recv.json 2>/dev/null)
        if [ -z "$vn_res" ]; then
            vn_why="the virtio-net enclave printed no vf_net result"
            echo "bench_net: atoll console $e: $(tail -c 600 $d/$e.out | tr '\r\n' '  ')"
            while IFS= read -r l; do echo "bench_net: channeld.log: $l"; done < /run/atoll/$e/channeld.log
        elif [ "$(vf_field "$vn_res" problem)" != '""' ]; then
            vn_why="virtio-net enclave: $(vf_field "$vn_res" problem)"
        elif [ "$(vf_field "$vn_recv" matches)" != true ]; then
            vn_why="the virtio-net enclave's file did not arrive intact"
        fi
        lc_run destroy atoll destroy $e --online-cores
    else
        kill $vn_rpid 2>/dev/null
        wait $vn_rpid
        vn_why="atoll create of the virtio-net enclave failed"
    fi
    echo "ATOLL-RESULT bench_net_virtio_enclave ${vn_res:-null}"
    lc_add recv "${vn_recv:-null}"
    lc_add stats_begin "${vn_begin:-null}"
    lc_add stats_end "${vn_end:-null}"
    lc_add problem "$(lc_str "$vn_why")"
    echo "ATOLL-RESULT bench_net_virtio {$lc}"
    lc=""
    why=$saved_why
}
# The network bench (`cargo xtask bench net`): the host enables two VFs. Baseline, host to
# host over the PF: VF 1 bound to the host's own igbvf and moved into a network namespace (so
# its traffic leaves through the NIC's switch to the PF rather than the host's loopback), with
# atoll.net_base_ip; from inside it, the same pings and transfer vf_net does. Then an enclave
# with VF 0 runs vf_net with a pause after its "ATOLL-NET begin" and "ATOLL-NET end" markers,
# and atoll's stats of it are taken in each. One "ATOLL-RESULT bench_net {json}" line: baseline,
# enclave (its vf_net result), stats_begin, stats_end, problem; the enclave round's details
# on "ATOLL-RESULT bench_net_round {json}".
bench_net_baseline() {
    base_if=""; base_holder=""; carrier_s=null
    ping_sent=0; ping_received=0; ping_avg=null
    base_tcp=null; base_recv=null; base_packets=null
    base_vf=$(readlink "/sys/bus/pci/devices/$vf_pf/virtfn1")
    base_vf=${base_vf##*/}
    if [ -z "$base_vf" ]; then
        why="$vf_pf has no virtfn1 after atoll vf --count 2"
        return 1
    fi
    insmod /lib/modules/igbvf.ko || echo "bench_net: insmod igbvf failed"
    # atoll vf leaves "none" in driver_override (no host driver takes a VF by itself).
    echo igbvf > "/sys/bus/pci/devices/$base_vf/driver_override"
    echo "$base_vf" > /sys/bus/pci/drivers/igbvf/bind
    vf_t=0
    while [ -z "$base_if" ]; do
        set +f
        for vf_d in /sys/bus/pci/devices/$base_vf/net/*; do
            [ -e "$vf_d" ] && base_if=${vf_d##*/}
        done
        set -f
        [ -n "$base_if" ] && break
        vf_t=$((vf_t + 1))
        if [ "$vf_t" -gt 10 ]; then
            why="igbvf gave the host's $base_vf no interface"
            return 1
        fi
        sleep 1
    done
    # A process holding a new network namespace; the interface goes there.
    unshare -n sleep 100000 &
    base_holder=$!
    vf_t=0
    while [ "$(readlink /proc/$base_holder/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do
        vf_t=$((vf_t + 1))
        if [ "$vf_t" -gt 50 ]; then
            why="unshare -n made no network namespace"
            return 1
        fi
        sleep 0.1
    done
    vf_in="nsenter -t $base_holder -n"
    if ! ip link set "$base_if" netns "$base_holder"; then
        why="ip link set $base_if netns $base_holder failed"
        vf_in=""
        return 1
    fi
    $vf_in ip addr add "$net_base_ip" dev "$base_if"
    $vf_in ip link set "$base_if" up
    # sysfs shows the namespace it was mounted in: the link's state comes from ip instead.
    vf_t=0
    while :; do
        case "$($vf_in ip link show "$base_if")" in *LOWER_UP*) carrier_s=$vf_t; break ;; esac
        vf_t=$((vf_t + 1))
        if [ "$vf_t" -gt 30 ]; then
            why="no carrier on the host's $base_if in 30 s"
            vf_in=""
            return 1
        fi
        sleep 1
    done
    # /proc/net/dev is the reading process's namespace's: "IF: rx_bytes rx_packets ... tx_bytes tx_packets".
    base_packets() {
        $vf_in cat /proc/net/dev | tr ':' ' ' | while read -r n rb rp x x x x x x tb tp x; do
            [ "$n" = "$base_if" ] && printf '"rx_%s":%s,"tx_%s":%s' "$1" "$rp" "$1" "$tp"
        done
    }
    base_packets=$(base_packets before)
    vf_ping "$net_peer" "$net_pings"
    /atoll-check --tcp-recv "$net_port" --timeout 600 --bytes "$net_bytes" --seed "$net_seed" > /tmp/vf/base_recv.json &
    rpid=$!
    base_tcp=$($vf_in /atoll-check --tcp-send "$net_peer" "$net_port" --bytes "$net_bytes" --seed "$net_seed" --timeout 300)
    wait $rpid
    base_recv=$(cat /tmp/vf/base_recv.json 2>/dev/null)
    base_packets="{$base_packets,$(base_packets after)}"
    vf_in=""
    if [ "$ping_received" != "$net_pings" ]; then
        why="baseline: $ping_received of $net_pings pings came back"
    elif [ "$(vf_field "$base_recv" matches)" != true ]; then
        why="baseline: the file did not arrive intact"
    fi
}
# The baseline's JSON (after bench_net_baseline).
bench_net_base_json() {
    printf '{"vf":%s,"iface":%s,"carrier_s":%s,"pings_sent":%s,"pings_received":%s,"rtt_avg_ms":%s,"tcp":%s,"recv":%s,"packets":%s}' \
        "$(lc_str "$base_vf")" "$(lc_str "$base_if")" "$carrier_s" "$ping_sent" "$ping_received" "$ping_avg" \
        "${base_tcp:-null}" "${base_recv:-null}" "${base_packets:-null}"
}
bench_net() {
    mkdir -p /tmp/vf
    lc=""
    base=null
    res=""
    vf_stats_begin=""
    vf_stats_end=""
    if vf_host_setup 2; then
        bench_net_baseline
        base=$(bench_net_base_json)
        # The baseline's namespace goes (and VF 1 back to the host, down) before the enclave.
        [ -n "$base_holder" ] && kill "$base_holder" && wait "$base_holder" 2>/dev/null
        [ -n "$base_vf" ] && echo "$base_vf" > /sys/bus/pci/drivers/igbvf/unbind 2>/dev/null
        if [ -z "$why" ]; then
            net_words="$net_words atoll.net_pause=2"
            vf_tag=bench_net_enclave
            vf_bench=1
            vf_host_round 1 vf_net
            vf_bench=""
            vf_tag=""
        fi
    fi
    echo "ATOLL-RESULT bench_net_round {$lc}"
    lc=""
    # virtio-net after a VF round that worked (its figures are compared with that round's).
    [ -z "$why" ] && bench_net_virtio
    echo "ATOLL-RESULT bench_net {\"baseline\":$base,\"enclave\":${res:-null},\"stats_begin\":${vf_stats_begin:-null},\"stats_end\":${vf_stats_end:-null},\"problem\":$(lc_str "$why")}"
}
# The virtio actions (issue 14). In an enclave, virtio_guest uses the three virtio devices atoll
# emulates for it, whose host side is the host's atoll-channeld: its console (hvc0: the result
# goes there, for the host's `atoll console`, and a line typed there is echoed back), its disk
# (/dev/vda, ext4: the checksums of the files the host put there, and a new file of random
# bytes with its checksum) and its network (the interface virtio_net drives gets atoll.net_ip,
# pings atoll.net_peer atoll.net_pings times and sends atoll.net_bytes of atoll-check's stream
# atoll.net_seed to TCP port atoll.net_port). Progress goes to its serial console. Prints "ATOLL-RESULT virtio_guest
# {json}" on its serial console and on hvc0, then stays up until destroyed. In the host,
# virtio_host puts a file on the disk image, creates that enclave and checks what it reports
# (see virtio_host below).
virtio_dir=/tmp/virtio
# The checksum field of sha256sum's output for file $1 (empty when unreadable).
virtio_sha() {
    vs=$(sha256sum "$1" 2>/dev/null)
    printf '%s' "${vs%% *}"
}
virtio_guest() {
    vg_hvc=false
    vg_active=""
    vg_if=""; vf_if=""; vf_mac=""; carrier_s=null
    ping_sent=0; ping_received=0; ping_avg=null
    tcp='{"bytes":0,"sha256":null,"seconds":null,"error":"not run"}'
    vg_sectors=null; vg_mounted=false; vg_hello=""; vg_host_sha=""; vg_enclave_sha=""; vg_umount=false
    mkdir -p $virtio_dir/mnt
    # The console: hvc0, held open (so input typed before a read waits in its line discipline).
    [ -e /sys/class/tty/hvc0 ] && vg_hvc=true
    vg_active=$(cat /sys/class/tty/console/active 2>/dev/null)
    if [ "$vg_hvc" = true ]; then
        exec 3<>/dev/hvc0
        echo "ATOLL-VIRTIO console up" >&3
    else
        why="no hvc0"
    fi
    # The disk: its capacity comes from the host's daemon (a configuration change), so vda may
    # show 0 sectors first.
    vg_t=0
    while [ "$vg_t" -lt 30 ]; do
        vg_sectors=$(cat /sys/block/vda/size 2>/dev/null || echo null)
        [ "$vg_sectors" != null ] && [ "$vg_sectors" != 0 ] && break
        sleep 1
        vg_t=$((vg_t + 1))
    done
    if [ "$vg_sectors" = null ] || [ "$vg_sectors" = 0 ]; then
        [ -z "$why" ] && why="no disk vda with sectors (size $vg_sectors)"
    elif ! mount -t ext4 /dev/vda $virtio_dir/mnt; then
        [ -z "$why" ] && why="mount -t ext4 /dev/vda failed"
    else
        vg_mounted=true
        vg_hello=$(cat $virtio_dir/mnt/hello.txt 2>/dev/null)
        vg_host_sha=$(virtio_sha $virtio_dir/mnt/host.bin)
        dd if=/dev/urandom of=$virtio_dir/mnt/enclave.bin bs=4096 count=64 2>/dev/null
        vg_enclave_sha=$(virtio_sha $virtio_dir/mnt/enclave.bin)
        sync
        umount $virtio_dir/mnt && vg_umount=true
        [ -z "$why" ] && [ -z "$vg_enclave_sha" ] && why="writing enclave.bin failed"
        [ -z "$why" ] && [ "$vg_umount" != true ] && why="umount failed"
    fi
    echo "virtio_guest: disk: $vg_sectors sectors, mounted $vg_mounted, enclave.bin $vg_enclave_sha"
    # The network.
    vf_numbers_ok
    vg_t=0
    while ! vf_iface virtio_net; do
        vg_t=$((vg_t + 1))
        if [ "$vg_t" -gt 10 ]; then
            [ -z "$why" ] && why="no interface is bound to virtio_net"
            break
        fi
        sleep 1
    done
    if [ -n "$vf_if" ]; then
        vf_mac=$(cat "/sys/class/net/$vf_if/address")
        ip link set "$vf_if" up
        ip addr add "$net_ip" dev "$vf_if"
        if vf_wait_carrier "$vf_if" 30; then
            vf_ping "$net_peer" "$net_pings"
            echo "virtio_guest: $ping_received of $ping_sent pings came back (average $ping_avg ms)"
            tcp=$(/atoll-check --tcp-send "$net_peer" "$net_port" --bytes "$net_bytes" --seed "$net_seed" --timeout 300)
            echo "virtio_guest: TCP $tcp"
            if [ -n "$why" ]; then
                :
            elif [ "$ping_received" != "$net_pings" ]; then
                why="$ping_received of $net_pings pings came back"
            elif [ "$(vf_field "$tcp" error)" != null ]; then
                why="the TCP transfer failed"
            fi
        else
            [ -z "$why" ] && why="no carrier on $vf_if in 30 s"
        fi
    fi
    vg_res="{\"hvc0\":$vg_hvc,\"consoles\":$(lc_str "$vg_active"),\"iface\":$(lc_str "$vf_if"),\"mac\":$(lc_str "$vf_mac"),\"carrier_s\":$carrier_s,\"pings_sent\":$ping_sent,\"pings_received\":$ping_received,\"rtt_avg_ms\":$ping_avg,\"tcp_bytes\":$(vf_field "$tcp" bytes),\"tcp_sha256\":$(vf_field "$tcp" sha256),\"tcp_seconds\":$(vf_field "$tcp" seconds),\"tcp\":$tcp,\"disk_sectors\":$vg_sectors,\"mounted\":$vg_mounted,\"hello\":$(lc_str "$vg_hello"),\"host_sha256\":$(lc_str "$vg_host_sha"),\"enclave_sha256\":$(lc_str "$vg_enclave_sha"),\"unmounted\":$vg_umount,\"problem\":$(lc_str "$why")}"
    echo "ATOLL-RESULT virtio_guest $vg_res"
    if [ "$vg_hvc" = true ]; then
        echo "ATOLL-RESULT virtio_guest $vg_res" >&3
        # Input: a line typed through the host's `atoll console`, echoed with a prefix.
        echo "ATOLL-VIRTIO-INPUT?" >&3
        if read -t 120 vg_line <&3; then
            echo "ATOLL-VIRTIO-INPUT $vg_line" | tr -d '\r' >&3
        else
            echo "ATOLL-VIRTIO-INPUT none" >&3
        fi
    fi
}
# The host's side: loads loop and ext4, puts host.bin (random bytes) on the disk image
# /var/lib/atoll/disk.img (atoll.virtio_disk=PATH) beside the hello.txt it was built with,
# listens on atoll.net_port, creates enclave virtio1 (on the first of atoll.lc_cores) with a
# virtio console, a net device on tap atl0 and the image as a writable disk, gives the tap
# atoll.net_peer, and reads the enclave's virtio_guest result through `atoll console` (its
# hvc0), types a line there and waits for it to come back; pings the enclave, destroys it and
# loop-mounts the image again for enclave.bin. Prints "ATOLL-RESULT virtio_host_enclave {the
# enclave's result}" and "ATOLL-RESULT virtio_host {json}" (with atoll-channeld's log on a
# failure).
virtio_host() {
    d=$virtio_dir
    mkdir -p $d/mnt
    lc=""
    e=virtio1
    vh_host_sha=""; vh_hello_sha=""; vh_res=""; vh_recv=""; vh_log=""
    # atoll.virtio_notify=poll: without uio_pci_generic atoll-channeld maps the channel through
    # sysfs and polls it (every 10 ms) instead of waiting for its INTx: to tell a notification
    # problem from the rest.
    if [ "$virtio_notify" = poll ]; then
        rmmod uio_pci_generic || echo "virtio_host: rmmod uio_pci_generic failed"
    fi
    lc_add notify "$(lc_str "${virtio_notify:-interrupt}")"
    load_modules loop crc16 mbcache crc32c_generic jbd2 ext4
    if ! mount -o loop "$virtio_disk" $d/mnt; then
        why="cannot loop-mount $virtio_disk"
    else
        dd if=/dev/urandom of=$d/mnt/host.bin bs=4096 count=32 2>/dev/null
        vh_host_sha=$(virtio_sha $d/mnt/host.bin)
        vh_hello_sha=$(virtio_sha $d/mnt/hello.txt)
        umount $d/mnt || why="cannot unmount $virtio_disk"
    fi
    lc_add host_sha256 "$(lc_str "$vh_host_sha")"
    lc_add hello_sha256 "$(lc_str "$vh_hello_sha")"
    if [ -z "$why" ]; then
        /atoll-check --tcp-recv "$net_port" --timeout 700 --bytes "$net_bytes" --seed "$net_seed" > $d/recv.json &
        rpid=$!
        lc_desc $d/$e.toml $e "${lc_cores%,*}" 256 linux \
            "console=ttyS0 console=hvc0 loglevel=5 atoll.expect_cpus=1 atoll.expect_mem=256 atoll.actions=virtio_guest atoll.net_ip=$virtio_ip/24 atoll.net_peer=$virtio_peer atoll.net_bytes=${net_bytes}$net_words $lc_args"
        printf '[[virtio]]\nkind = "console"\n\n[[virtio]]\nkind = "net"\ntap = "atl0"\n\n[[virtio]]\nkind = "blk"\npath = "%s"\n' \
            "$virtio_disk" >> $d/$e.toml
        lc_run create atoll create $d/$e.toml --offline-cores
        # The tap is channeld's, up once create returns.
        lc_run tap ip addr add "$virtio_peer/24" dev atl0
        atoll console $e --no-input --until "ATOLL-RESULT virtio_guest" --timeout "$virtio_wait" > $d/$e.out 2>&1
        vh_rc=$?
        lc_add console_rc $vh_rc
        if [ "$vh_rc" != 0 ]; then
            # On the host's console too: what hvc0 showed and what the daemon logged.
            echo "virtio_host: atoll console $e exited $vh_rc: $(tail -c 600 $d/$e.out | tr '\r\n' '  ')"
            while IFS= read -r l; do echo "virtio_host: channeld.log: $l"; done < /run/atoll/$e/channeld.log
        fi
        vh_res=$(grep -a "^ATOLL-RESULT virtio_guest " $d/$e.out | head -n 1 | sed "s/^ATOLL-RESULT virtio_guest //" | tr -d '\r')
        echo "ATOLL-RESULT virtio_host_enclave ${vh_res:-null}"
        [ -n "$vh_res" ] || kill $rpid 2>/dev/null
        wait $rpid
        vh_recv=$(cat $d/recv.json 2>/dev/null)
        lc_add recv "${vh_recv:-null}"
        # The console's input: a line typed on the host comes back through hvc0. (Not
        # without a result: an enclave that printed none is not listening either.)
        if [ -n "$vh_res" ]; then
            atoll console $e --no-input --until "ATOLL-VIRTIO-INPUT?" --timeout 120 > /dev/null 2>&1
            echo typed-through-virtio | atoll console $e --until "ATOLL-VIRTIO-INPUT typed-through-virtio" \
                --timeout 120 > $d/input.out 2>&1
            lc_add console_input_rc $?
            vf_ping "$virtio_ip" "$net_pings"
            lc_add host_pings "{\"sent\":$ping_sent,\"received\":$ping_received,\"rtt_avg_ms\":$ping_avg}"
        fi
        lc_add tap_stats "{$(vf_packets atl0 tap)}"
        lc_add stats "$(atoll stats $e --json 2>/dev/null || echo null)"
        vh_pings=$ping_received
        if [ -n "$vh_res" ]; then
            # The daemon maps its channel function's BAR0 and BAR2 and nothing else of any
            # device (never /dev/mem).
            vh_pid=$(cat /run/atoll/$e/channeld.pid 2>/dev/null)
            vh_maps=$(grep -oE '(/sys|/dev)/[^ ]*' /proc/$vh_pid/maps 2>/dev/null | sort -u | tr '\n' ' ')
            vh_fn=$(basename "$(dirname "$(echo "$vh_maps" | tr ' ' '\n' | grep resource2 | head -n 1)")")
            vh_maps_ok=false
            [ -n "$vh_fn" ] && vh_maps_ok=true
            for m in $vh_maps; do
                case $m in
                    */$vh_fn/resource0|*/$vh_fn/resource2) ;;
                    *) vh_maps_ok=false ;;
                esac
            done
            lc_add channeld_maps "$(lc_str "$vh_maps")"
            lc_add channeld_maps_ok $vh_maps_ok
            # A hostile host: a producer index past the ring into the console's to-enclave ring
            # (device 0). atoll counts it and resets that device's rings only: the network
            # still answers, and the daemon starts the console over.
            /atoll-check --channel-garbage "$vh_fn" --device 0 --timeout 30 > $d/garbage.json 2>/dev/null
            lc_add garbage "$(tail -n 1 $d/garbage.json 2>/dev/null | grep '^{' || echo null)"
            vf_ping "$virtio_ip" 10
            lc_add pings_after_garbage "{\"sent\":$ping_sent,\"received\":$ping_received}"
            lc_add stats_after_garbage "$(atoll stats $e --json 2>/dev/null || echo null)"
        fi
        vh_log=$(tail -c 2000 /run/atoll/$e/channeld.log 2>/dev/null)
        # The daemon's INTx as the host's kernel counted it (uio), and its error counters.
        lc_add host_interrupts "$(lc_str "$(grep -E 'uio|ERR|MIS' /proc/interrupts)")"
        lc_run destroy atoll destroy $e --online-cores
        lc_add channeld_after_destroy "$(lc_str "$(cat /run/atoll/$e/channeld.pid 2>/dev/null)")"
        # The enclave's file, read back from the image.
        vh_back=""
        if mount -o loop "$virtio_disk" $d/mnt; then
            vh_back=$(virtio_sha $d/mnt/enclave.bin)
            umount $d/mnt
        fi
        lc_add enclave_file_sha256 "$(lc_str "$vh_back")"
        if [ -z "$vh_res" ]; then
            why="the enclave printed no virtio_guest result on hvc0"
        elif [ "$(vf_field "$vh_res" problem)" != '""' ]; then
            why="enclave: $(vf_field "$vh_res" problem)"
        elif [ "$(vf_field "$vh_recv" matches)" != true ]; then
            why="the enclave's TCP stream did not arrive intact"
        elif [ "$(vf_field "$vh_res" host_sha256)" != "\"$vh_host_sha\"" ]; then
            why="the enclave read host.bin as $(vf_field "$vh_res" host_sha256), not $vh_host_sha"
        elif [ -z "$vh_back" ] || [ "$(vf_field "$vh_res" enclave_sha256)" != "\"$vh_back\"" ]; then
            why="enclave.bin reads '$vh_back' in the host, the enclave wrote $(vf_field "$vh_res" enclave_sha256)"
        elif [ "$vh_pings" != "$net_pings" ]; then
            why="$vh_pings of $net_pings pings from the host came back"
        fi
    fi
    lc_add problem "$(lc_str "$why")"
    # atoll-channeld's log (it stays after the daemon exits), or what it said before destroy.
    if [ -n "$why" ]; then
        [ -e /run/atoll/$e/channeld.log ] && vh_log=$(tail -c 2000 /run/atoll/$e/channeld.log)
        lc_add channeld_log "$(lc_str "$vh_log")"
    fi
    echo "ATOLL-RESULT virtio_host {$lc}"
    lc=""
}
# Actions, in order, each announced on one line before it happens; one that cannot be done
# says so on an ATOLL-ACTION-FAILED line and the next one runs.
failed=0
saved_ifs=$IFS
IFS=,
for action in $actions; do
    IFS=$saved_ifs
    echo "ATOLL-ACTION $action"
    why=""
    case "$action" in
        sleep:*|idle:*|load:*)
            n=${action#*:}
            case "$n" in
                ""|*[!0-9]*) why="not a whole number of seconds" ;;
                *) case "$action" in
                       sleep:*) sleep "$n" ;;
                       idle:*) echo "ATOLL-IDLE begin"; sleep "$n"; echo "ATOLL-IDLE end" ;;
                       load:*) load "$n" ;;
                   esac ;;
            esac ;;
        offline:*|online:*)
            cpu=${action#*:}
            want=1
            [ "${action%%:*}" = offline ] && want=0
            f=/sys/devices/system/cpu/cpu$cpu/online
            case "$cpu" in
                ""|*[!0-9]*) why="not a CPU number" ;;
                *) if [ ! -e "$f" ]; then
                       why="no $f"
                   elif ! echo "$want" > "$f"; then
                       why="writing $want to $f failed"
                   elif [ "$(cat "$f")" != "$want" ]; then
                       why="$f reads $(cat "$f") after writing $want"
                   fi ;;
            esac ;;
        lifecycle) lifecycle ;;
        dma) for m in uio uio_pci_generic scsi_common scsi_mod libata libahci ahci \
                     virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
                 insmod /lib/modules/$m.ko || echo "dma: insmod $m failed"
             done
             sleep 2
             [ -e /dev/vda ] && dd if=/dev/vda of=/dev/null bs=65536 count=64 2>&1 | tail -1
             /atoll-check --dma || why="the DMA probe failed (see ATOLL-RESULT dma)" ;;
        demo) demo ;;
        demo_vf) demo_vf ;;
        vf_net) vf_net; vf_then ;;
        vf_dma_outside) vf_dma_outside; vf_then ;;
        vf_host) vf_host ;;
        vf_host_outside) vf_host_outside ;;
        virtio_guest) virtio_guest; vf_then ;;
        virtio_host) virtio_host ;;
        bench_net) bench_net ;;
        bench_lifecycle) bench_lifecycle ;;
        bench_lifecycle_small) bench_lifecycle small ;;
        bench_blk) bench_blk ;;
        vnet) vf_driver=virtio_net; vf_net; vf_then ;;
        bench_blk_guest) bench_blk_guest; vf_then ;;
        work) work ;;
        isolation) isolation ;;
        soak:*)
            n=${action#*:}
            case "$n" in
                ""|*[!0-9]*) why="not a whole number of cycles" ;;
                *) soak "$n" ;;
            esac ;;
        panic) echo c > /proc/sysrq-trigger; why="the kernel did not panic" ;;
        reboot) reboot -f; echo b > /proc/sysrq-trigger; why="the kernel did not reboot" ;;
        poweroff) poweroff -f; echo o > /proc/sysrq-trigger; why="the kernel did not power off" ;;
        *) why="unknown action" ;;
    esac
    if [ -n "$why" ]; then
        echo "ATOLL-ACTION-FAILED $action: $why"
        failed=$((failed + 1))
    fi
done
IFS=$saved_ifs
if [ -n "$actions" ]; then
    echo "ATOLL-ACTIONS end failed=$failed"
fi
if [ -n "$idle" ]; then
    echo "ATOLL-IDLE begin"
    if [ -n "$idle_timer" ]; then
        # Not the default: 1000/MS wake-ups a second would change what an idle window
        # measures (`cargo xtask bench idle` counts its exits).
        /atoll-check --idle-timer "$idle" --period-ms "$idle_timer" ||
            echo "init: atoll-check --idle-timer failed"
    else
        sleep "$idle"
    fi
    echo "ATOLL-IDLE end"
fi
if [ -n "$echo_input" ]; then
    echo "ATOLL-GUEST-INPUT?"
    if read -t 60 line; then
        echo "ATOLL-GUEST-INPUT $line"
    else
        echo "ATOLL-GUEST-INPUT none"
    fi
fi
if [ -n "$shell" ]; then
    exec /bin/sh
fi
poweroff -f
# poweroff returned: ask the kernel directly, and never let init exit (that is a panic).
echo o > /proc/sysrq-trigger
while :; do sleep 60; done
"#
    .to_string()
}

/// FNV-1a over length-prefixed fields, as 16 hex digits: the image's cache key.
pub fn cache_key(fields: &[(&str, &[u8])]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    for (name, value) in fields {
        eat(&(name.len() as u64).to_le_bytes());
        eat(name.as_bytes());
        eat(&(value.len() as u64).to_le_bytes());
        eat(value);
    }
    format!("{h:016x}")
}

/// Whether `name` is an image directory of `package` (`PACKAGE-KEY`, KEY 16 hex digits).
pub fn is_image_dir_of(name: &str, package: &str) -> bool {
    name.strip_prefix(package)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|key| key.len() == 16 && key.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Whether `bytes` is a 64-bit x86 ELF executable without a program interpreter (that is,
/// statically linked, `static-pie` included).
pub fn is_static_elf(bytes: &[u8]) -> Result<bool> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) || bytes.get(4) != Some(&2) {
        bail!("not a 64-bit ELF file");
    }
    if u16_at(18) != Some(62) {
        bail!("not an x86-64 ELF file");
    }
    let phoff = u64_at(32).context("truncated ELF header")? as usize;
    let phentsize = usize::from(u16_at(54).context("truncated ELF header")?);
    let phnum = usize::from(u16_at(56).context("truncated ELF header")?);
    for i in 0..phnum {
        let ty = u32_at(phoff + i * phentsize).context("truncated program headers")?;
        if ty == 3 {
            // PT_INTERP: needs a dynamic loader the initramfs does not have.
            return Ok(false);
        }
    }
    Ok(true)
}

/// What the smoke test read on the console.
#[derive(Clone, Debug)]
pub struct GuestReport {
    /// The parsed report.
    pub report: Value,
    /// Its `ok`.
    pub ok: bool,
    /// `/init`'s `ATOLL-GUEST-EXIT status=` value, if printed.
    pub exit_status: Option<i32>,
}

/// Finds the `ATOLL-GUEST-CHECK` line (and `/init`'s exit line) in console output. The kernel
/// may print in the middle of a line, so the prefix is searched anywhere in a line.
pub fn parse_console(console: &str) -> Result<Option<GuestReport>> {
    let Some(json) = console
        .lines()
        .find_map(|l| l.find(REPORT_PREFIX).map(|i| &l[i + REPORT_PREFIX.len()..]))
    else {
        return Ok(None);
    };
    let report: Value = serde_json::from_str(json.trim())
        .with_context(|| format!("the ATOLL-GUEST-CHECK line is not JSON: {json}"))?;
    let ok = report["ok"]
        .as_bool()
        .context("the report has no boolean 'ok'")?;
    let exit_status = console
        .lines()
        .find_map(|l| l.split("ATOLL-GUEST-EXIT status=").nth(1))
        .and_then(|s| s.trim().parse().ok());
    Ok(Some(GuestReport {
        report,
        ok,
        exit_status,
    }))
}

// ---------------------------------------------------------------------------------------------
// The host side: apt, dpkg, cargo, cpio.

fn tool_exists(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The Debian tools this needs, or a clear error.
fn check_host() -> Result<()> {
    let missing: Vec<&str> = [
        "apt-get",
        "apt-cache",
        "dpkg",
        "dpkg-deb",
        "tar",
        "cpio",
        "gzip",
    ]
    .into_iter()
    .filter(|t| !tool_exists(t))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let debian = std::path::Path::new("/etc/debian_version").exists();
    if !debian
        && missing
            .iter()
            .any(|t| t.starts_with("apt") || t.starts_with("dpkg"))
    {
        bail!(
            "cargo xtask guest-image takes the kernel and busybox from Debian packages and needs a \
             Debian (or derived) host with apt and dpkg; missing here: {}",
            missing.join(", ")
        );
    }
    bail!(
        "missing tools: {} (run `cargo xtask setup`, or apt-get install them)",
        missing.join(", ")
    )
}

fn capture(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resolves `--kernel` to a package apt knows and its record.
fn resolve_kernel(choice: &KernelChoice) -> Result<(String, PackageInfo)> {
    let package =
        match choice {
            KernelChoice::Package(p) => p.clone(),
            KernelChoice::Newest(flavour) => {
                let pattern = format!(
                    r"^linux-image-{}\..*-amd64$",
                    DEFAULT_SERIES.replace('.', r"\.")
                );
                let out = capture(
                    Command::new("apt-cache").args(["search", "--names-only", &pattern]),
                    "apt-cache search",
                )?;
                let names = search_names(&out);
                pick_kernel(&names, DEFAULT_SERIES, flavour).with_context(|| {
                    format!(
                    "apt knows no linux-image-{DEFAULT_SERIES}.*-{}amd64 package ({} other kernel \
                     packages matched): run `apt-get update`, or name one with --kernel",
                    if flavour == "amd64" { String::new() } else { format!("{flavour}-") },
                    names.len()
                )
                })?
            }
        };
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", &package])
        .output()
        .context("running apt-cache show")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let info = parse_package_info(&text)
        .filter(|_| out.status.success())
        .with_context(|| {
            format!(
            "apt does not know the package {package}: run `apt-get update`, or list the kernels \
             with `apt-cache search --names-only '^linux-image-.*-amd64$'`"
        )
        })?;
    Ok((package, info))
}

/// Size of the files in `dir` whose name starts with `prefix`, partial downloads included.
fn bytes_so_far(dir: &Path, prefix: &str) -> u64 {
    let mut total = 0;
    for d in [dir.to_path_buf(), dir.join("partial")] {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Downloads the package into `debs/` (unless there already) and returns the file.
fn download(cache: &Path, package: &str, info: &PackageInfo) -> Result<PathBuf> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let file = info
        .filename
        .rsplit('/')
        .next()
        .unwrap_or(&info.filename)
        .to_string();
    let deb = debs.join(&file);
    if std::fs::metadata(&deb).is_ok_and(|m| m.len() == info.size) {
        progress(format!("{package} {} already downloaded", info.version));
        return Ok(deb);
    }
    let _ = std::fs::remove_file(&deb);
    progress(format!(
        "downloading {package} {} ({}) with apt-get download",
        info.version,
        mb(info.size)
    ));
    let start = Instant::now();
    let mut child = Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .arg(format!("{package}={}", info.version))
        .current_dir(&debs)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running apt-get download")?;
    let mut stderr = child.stderr.take().context("apt-get's stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let prefix = format!("{package}_");
    let mut last = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if last.elapsed() >= Duration::from_secs(3) {
            let got = bytes_so_far(&debs, &prefix);
            progress(format!(
                "  {} of {} ({:.0} s)",
                mb(got),
                mb(info.size),
                start.elapsed().as_secs_f64()
            ));
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let errors = reader.join().unwrap_or_default();
    if !status.success() || !deb.exists() {
        let hint = if errors.contains("Temporary failure resolving")
            || errors.contains("Could not resolve")
            || errors.contains("Could not connect")
            || errors.contains("Failed to fetch")
            || errors.contains("Network is unreachable")
        {
            "no network, or the Debian mirror is unreachable"
        } else if errors.contains("Unable to locate") || errors.contains("Can't select") {
            "the package is not in apt's lists: run `apt-get update`"
        } else {
            "see apt-get's message"
        };
        bail!(
            "cannot download {package} {}: {hint}\napt-get said:\n{}",
            info.version,
            errors.trim()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    progress(format!(
        "downloaded {} in {secs:.1} s ({:.1} MB/s)",
        mb(info.size),
        info.size as f64 / 1e6 / secs.max(0.001)
    ));
    Ok(deb)
}

/// Unpacks `boot/` of the kernel package into `kernels/PACKAGE_VERSION/` (once) and returns
/// that directory, holding `vmlinuz` and `config`.
fn extract_kernel(cache: &Path, package: &str, info: &PackageInfo, deb: &Path) -> Result<PathBuf> {
    let dir = cache
        .join("kernels")
        .join(format!("{package}_{}", info.version.replace(':', "%3a")));
    if dir.join("vmlinuz").exists() {
        return Ok(dir);
    }
    progress(format!("extracting boot/vmlinuz-* from {}", deb.display()));
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    // dpkg-deb -x would unpack the modules too (hundreds of MB); only boot/ is needed.
    let (fsys_status, tar) = unpack_from_deb(deb, &tmp, &["./boot/*".to_string()])?;
    if !fsys_status.success() || !tar.status.success() {
        bail!(
            "cannot unpack {}: {}",
            deb.display(),
            String::from_utf8_lossy(&tar.stderr).trim()
        );
    }
    let boot = tmp.join("boot");
    let mut vmlinuz = None;
    for e in std::fs::read_dir(&boot).with_context(|| format!("{} has no boot/", deb.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz-") {
            vmlinuz = Some(e.path());
        } else if name.starts_with("config-") {
            std::fs::rename(e.path(), tmp.join("config"))?;
        }
    }
    let vmlinuz = vmlinuz.with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    std::fs::rename(vmlinuz, tmp.join("vmlinuz"))?;
    let _ = std::fs::remove_dir_all(&boot);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// Unpacks the members of package `deb` matching `patterns` (tar wildcards) into `into`,
/// without unpacking the rest: `dpkg-deb --fsys-tarfile | tar -x`. Returns dpkg-deb's status
/// and tar's output, for the caller to judge (a missing member is tar's error).
fn unpack_from_deb(
    deb: &Path,
    into: &Path,
    patterns: &[String],
) -> Result<(std::process::ExitStatus, std::process::Output)> {
    let mut fsys = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb --fsys-tarfile")?;
    let tar = Command::new("tar")
        .args(["-x", "-f", "-", "-C"])
        .arg(into)
        .arg("--wildcards")
        .args(patterns)
        .stdin(fsys.stdout.take().context("dpkg-deb's stdout")?)
        .output()
        .context("running tar")?;
    Ok((fsys.wait()?, tar))
}

/// Unpacks [`KERNEL_MODULES`] of the kernel package into `kernels/PACKAGE_VERSION/modules/`
/// (once) and returns that directory, holding `NAME.ko` files and `missing` (the modules the
/// package does not have, one per line: a flavour may lack some, and its image goes without).
fn extract_modules(cache: &Path, package: &str, info: &PackageInfo, deb: &Path) -> Result<PathBuf> {
    let dir = cache
        .join("kernels")
        .join(format!("{package}_{}", info.version.replace(':', "%3a")))
        .join("modules");
    let name_of = |m: &str| m.rsplit('/').next().unwrap_or(m).to_string();
    // Extracted once per list: the directory holds the modules the package has, `missing` the
    // rest and `list` the KERNEL_MODULES it was made for (a directory made for a shorter list
    // would silently leave the new modules out of the image).
    if modules_extracted(&dir) {
        return Ok(dir);
    }
    progress(format!(
        "extracting {} kernel modules from {}",
        KERNEL_MODULES.len(),
        deb.display()
    ));
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let patterns: Vec<String> = KERNEL_MODULES
        .iter()
        .map(|m| format!("./lib/modules/*/kernel/{m}"))
        .collect();
    let (fsys_status, tar) = unpack_from_deb(deb, &tmp, &patterns)?;
    // A flavour may lack some modules (the cloud kernel has no AHCI driver): tar then names
    // them "Not found in archive", which is no error here; anything else is.
    let stderr = String::from_utf8_lossy(&tar.stderr);
    let other_errors = stderr
        .lines()
        .filter(|l| {
            !l.contains("Not found in archive") && !l.contains("Exiting with failure status")
        })
        .count();
    if !fsys_status.success() || (!tar.status.success() && other_errors > 0) {
        bail!(
            "cannot unpack the modules of {}: {}",
            deb.display(),
            stderr.trim()
        );
    }
    let out = tmp.join("out");
    std::fs::create_dir_all(&out)?;
    let versions: Vec<PathBuf> = std::fs::read_dir(tmp.join("lib/modules"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if versions.len() > 1 {
        bail!(
            "{} holds {} module trees, not one",
            deb.display(),
            versions.len()
        );
    }
    let mut missing = Vec::new();
    for m in KERNEL_MODULES {
        match versions.first().map(|root| root.join("kernel").join(m)) {
            Some(from) if from.exists() => std::fs::rename(&from, out.join(name_of(m)))?,
            _ => missing.push(*m),
        }
    }
    if !missing.is_empty() {
        progress(format!(
            "{package} lacks {}: its image goes without",
            missing.join(", ")
        ));
    }
    std::fs::write(out.join("missing"), missing.join("\n"))?;
    std::fs::write(out.join("list"), KERNEL_MODULES.join("\n"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&out, &dir)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dir)
}

/// Whether `dir` holds the modules of the current [`KERNEL_MODULES`] ([`extract_modules`]).
fn modules_extracted(dir: &Path) -> bool {
    dir.join("missing").exists()
        && std::fs::read_to_string(dir.join("list")).is_ok_and(|l| l == KERNEL_MODULES.join("\n"))
}

/// The host's busybox from the `busybox-static` package.
fn busybox() -> Result<PathBuf> {
    let out = Command::new("dpkg")
        .args(["-L", "busybox-static"])
        .output()
        .context("running dpkg -L")?;
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .find(|p| p.ends_with("bin/busybox") && p.is_file());
    match path {
        Some(p) if out.status.success() => Ok(p),
        _ => bail!(
            "busybox-static is not installed (its static busybox runs the guest's /init): run \
             `cargo xtask setup` or `apt-get install busybox-static`"
        ),
    }
}

/// Builds the static `atoll-check` and returns its path.
pub fn build_check() -> Result<PathBuf> {
    build_static("guest-kit", "atoll-check")
}

/// Builds the static `atoll` command (the host's CLI, package `atoll-cli`) and returns its
/// path.
pub fn build_cli() -> Result<PathBuf> {
    build_static("atoll-cli", "atoll")
}

/// Builds the static `atoll-channeld` (the host's daemon of enclaves' virtio devices, package
/// `atoll-cli`), which `atoll create` starts from beside itself, and returns its path.
pub fn build_channeld() -> Result<PathBuf> {
    build_static("atoll-cli", "atoll-channeld")
}

/// Builds `package`'s binary `bin` for [`CHECK_TARGET`], statically linked, and returns its
/// path.
fn build_static(package: &str, bin: &str) -> Result<PathBuf> {
    progress(format!("building {bin} (static, {CHECK_TARGET})"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::root())
        .args(["build", "--quiet", "--release", "-p", package])
        .args(["--bin", bin, "--target", CHECK_TARGET])
        // Static glibc, so the binary runs in an initramfs without a dynamic loader; no debug
        // information (it would be most of the initramfs).
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .with_context(|| format!("running cargo build for {bin}"))?;
    if !status.success() {
        bail!(
            "building {bin} failed (is the {CHECK_TARGET} target installed? `rustup target add {CHECK_TARGET}`)"
        );
    }
    let bin = crate::target_dir()
        .join(CHECK_TARGET)
        .join("release")
        .join(bin);
    let bytes = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if !is_static_elf(&bytes)? {
        bail!(
            "{} is dynamically linked; the initramfs has no loader",
            bin.display()
        );
    }
    Ok(bin)
}

/// The file [`build_disk_image`] puts at the root of the disk image, and its content.
pub const DISK_FILE: (&str, &str) = (
    "hello.txt",
    "atoll virtio-blk: this file was put here when the disk image was built\n",
);

/// Size of the disk image: room for ext4's metadata, its journal and the files the virtio
/// actions write (a few hundred KiB).
pub const DISK_MIB: u64 = 8;

/// Writes `out`: a raw ext4 image of [`DISK_MIB`] with [`DISK_FILE`] at its root, made by
/// `mkfs.ext4 -d` (e2fsprogs, from `cargo xtask setup`). The host's `atoll-channeld` serves it
/// to an enclave as a virtio-blk disk (the `virtio_host` action, `/var/lib/atoll/disk.img`).
/// Made anew for every image: it is small and fast to make.
pub fn build_disk_image(out: &Path) -> Result<()> {
    let src = out.with_extension("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join(DISK_FILE.0), DISK_FILE.1)?;
    let _ = std::fs::remove_file(out);
    std::fs::File::create(out)?.set_len(DISK_MIB << 20)?;
    // Outside root's PATH mkfs.ext4 may only be in /sbin.
    let mkfs = ["mkfs.ext4", "/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|t| {
            Command::new(t)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .context("mkfs.ext4 not found: run `cargo xtask setup` (e2fsprogs)")?;
    // -E root_owner: the files belong to root in the image whoever builds it; no lazy
    // initialisation (nothing would finish it: the disk lives for one run).
    let o = Command::new(mkfs)
        .args(["-q", "-F", "-L", "atoll-disk", "-b", "4096"])
        .args([
            "-E",
            "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
        ])
        .arg("-d")
        .arg(&src)
        .arg(out)
        .output()
        .with_context(|| format!("running {mkfs}"))?;
    std::fs::remove_dir_all(&src)?;
    if !o.status.success() {
        bail!(
            "{mkfs} {} failed: {}",
            out.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// Every path under `root`, relative, sorted (directories before what they hold).
fn tree(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            out.push(path.strip_prefix(root)?.to_path_buf());
            if e.file_type()?.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// Writes `root` as a gzipped newc cpio archive owned by root.
pub fn write_initramfs(root: &Path, out: &Path) -> Result<()> {
    write_cpio(root, out, true)
}

/// Writes `root` as a newc cpio archive owned by root, gzipped if `gzip` (the kernel unpacks
/// either; an archive of files that are compressed already unpacks much faster plain, which
/// matters in Bochs).
pub fn write_cpio(root: &Path, out: &Path, gzip: bool) -> Result<()> {
    let list: Vec<u8> = tree(root)?
        .iter()
        .flat_map(|p| {
            let mut b = p.as_os_str().as_encoded_bytes().to_vec();
            b.push(0);
            b
        })
        .collect();
    let file = std::fs::File::create(out)?;
    let mut cpio = Command::new("cpio")
        .args([
            "--quiet",
            "-o",
            "-H",
            "newc",
            "-0",
            "-R",
            "0:0",
            "--reproducible",
        ])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cpio (run `cargo xtask setup`)")?;
    let gzip = Command::new(if gzip { "gzip" } else { "cat" })
        .args(if gzip { &["-9", "-n"][..] } else { &[][..] })
        .stdin(cpio.stdout.take().context("cpio's stdout")?)
        .stdout(file)
        .spawn()
        .context("running gzip")?;
    cpio.stdin
        .take()
        .context("cpio's stdin")?
        .write_all(&list)?;
    let (c, g) = (cpio.wait()?, gzip.wait_with_output()?);
    if !c.success() || !g.status.success() {
        bail!("cpio | gzip failed ({c}, {})", g.status);
    }
    Ok(())
}

/// A built initramfs (it does not depend on the kernel: it holds no modules).
#[derive(Clone, Debug)]
pub struct Initrd {
    /// The gzipped newc archive.
    pub path: PathBuf,
    /// The hash of its inputs (`/init`, applets, busybox, `atoll-check`).
    pub key: String,
}

/// Builds (or finds in the cache, `target/guest-image/initrd-KEY/`) the initramfs: busybox,
/// `/init` and `atoll-check`. Older initramfs directories are removed.
pub fn build_initrd() -> Result<Initrd> {
    check_host()?;
    let cache = crate::target_dir().join("guest-image");
    std::fs::create_dir_all(&cache)?;
    let busybox = busybox()?;
    let busybox_bytes = std::fs::read(&busybox)?;
    if !is_static_elf(&busybox_bytes)? {
        bail!("{} is not statically linked", busybox.display());
    }
    let check = build_check()?;
    let check_bytes = std::fs::read(&check)?;
    let cli = build_cli()?;
    let cli_bytes = std::fs::read(&cli)?;
    let channeld = build_channeld()?;
    let channeld_bytes = std::fs::read(&channeld)?;
    // The isolation bench's workload and noise probe (issue 15), wherever it runs.
    let hpcg = build_static("atoll-hpcg", "atoll-hpcg")?;
    let hpcg_bytes = std::fs::read(&hpcg)?;
    let fwq = build_static("atoll-fwq", "atoll-fwq")?;
    let fwq_bytes = std::fs::read(&fwq)?;
    // The disk bench's fio (`bench_blk`), in the host and in enclaves alike.
    let fio = crate::fio::build()?;
    let fio_bytes = std::fs::read(&fio)?;
    if !is_static_elf(&fio_bytes)? {
        bail!("{} is not a static executable", fio.display());
    }
    let init = init_script();
    let key = cache_key(&[
        ("init", init.as_bytes()),
        ("applets", APPLETS.join(" ").as_bytes()),
        ("busybox", &busybox_bytes),
        ("atoll-check", &check_bytes),
        ("atoll", &cli_bytes),
        ("atoll-channeld", &channeld_bytes),
        ("atoll-hpcg", &hpcg_bytes),
        ("atoll-fwq", &fwq_bytes),
        ("fio", &fio_bytes),
    ]);
    let dir = cache.join(format!("initrd-{key}"));
    let path = dir.join("initrd.cpio.gz");
    if dir.join("manifest.json").exists() && path.exists() {
        return Ok(Initrd { path, key });
    }
    progress(
        "building the initramfs (busybox, /init, atoll-check, atoll, atoll-channeld, atoll-hpcg, \
         atoll-fwq, fio)",
    );
    let tmp = cache.join(format!("initrd-{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let rootfs = tmp.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy(&busybox, rootfs.join("bin/busybox"))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))?;
    }
    std::fs::copy(&check, rootfs.join("atoll-check"))?;
    std::fs::copy(&cli, rootfs.join("bin/atoll"))?;
    std::fs::copy(&channeld, rootfs.join("bin/atoll-channeld"))?;
    std::fs::copy(&fio, rootfs.join("bin/fio"))?;
    std::fs::copy(&hpcg, rootfs.join("bin/atoll-hpcg"))?;
    std::fs::copy(&fwq, rootfs.join("bin/atoll-fwq"))?;
    std::fs::write(rootfs.join("init"), &init)?;
    std::fs::write(tmp.join("init"), &init)?;
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "init",
        "atoll-check",
        "bin/busybox",
        "bin/atoll",
        "bin/atoll-channeld",
        "bin/fio",
        "bin/atoll-hpcg",
        "bin/atoll-fwq",
    ] {
        std::fs::set_permissions(rootfs.join(f), std::fs::Permissions::from_mode(0o755))?;
    }
    write_initramfs(&rootfs, &tmp.join("initrd.cpio.gz"))?;
    std::fs::remove_dir_all(&rootfs)?;
    let manifest = serde_json::json!({
        "key": key,
        "busybox": busybox,
        "atoll_check": check,
        "applets": APPLETS,
        "initrd_bytes": std::fs::metadata(tmp.join("initrd.cpio.gz"))?.len(),
    });
    std::fs::write(
        tmp.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    for e in std::fs::read_dir(&cache)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_image_dir_of(&name, "initrd") && e.path() != dir {
            progress(format!("removing the stale initramfs {name}"));
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(Initrd { path, key })
}

/// Builds (or finds in the cache) the image for `kernel`.
pub fn build(kernel: &KernelChoice) -> Result<GuestImage> {
    check_host()?;
    let cache = crate::target_dir().join("guest-image");
    std::fs::create_dir_all(&cache)?;
    let (package, info) = resolve_kernel(kernel)?;
    progress(format!("kernel {package} {}", info.version));
    let initrd = build_initrd()?;
    let key = cache_key(&[
        ("package", package.as_bytes()),
        ("version", info.version.as_bytes()),
        ("initrd", initrd.key.as_bytes()),
        ("modules", KERNEL_MODULES.join(" ").as_bytes()),
        ("layout", b"one gzip stream"),
    ]);
    let dir = cache.join(format!("{package}-{key}"));
    let image = |cached| GuestImage {
        package: package.clone(),
        version: info.version.clone(),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.cpio.gz"),
        dir: dir.clone(),
        deb_bytes: info.size,
        cached,
    };
    if dir.join("manifest.json").exists() {
        progress(format!("cached: {}", dir.display()));
        return Ok(image(true));
    }

    let deb = download(&cache, &package, &info)?;
    let kdir = extract_kernel(&cache, &package, &info, &deb)?;
    let mdir = extract_modules(&cache, &package, &info, &deb)?;

    let tmp = cache.join(format!("{package}-{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    // The shared initramfs, then this kernel's modules as a second archive, in one gzip
    // stream: GRUB's module loader decompresses a gzip file itself and, sizing the output by
    // the last stream's trailer, would cut a file of two streams short.
    let root = tmp.join("modules-root");
    std::fs::create_dir_all(root.join("lib/modules"))?;
    for m in KERNEL_MODULES {
        let name = m.rsplit('/').next().unwrap_or(m);
        if mdir.join(name).exists() {
            std::fs::copy(mdir.join(name), root.join("lib/modules").join(name))?;
        }
    }
    write_cpio(&root, &tmp.join("modules.cpio"), false)?;
    std::fs::remove_dir_all(&root)?;
    let joined = Command::new("sh")
        .arg("-c")
        .arg("{ gzip -dc \"$1\" && cat \"$2\"; } | gzip -9 -n > \"$3\"")
        .arg("join")
        .arg(&initrd.path)
        .arg(tmp.join("modules.cpio"))
        .arg(tmp.join("initrd.cpio.gz"))
        .status()
        .context("running gzip")?;
    if !joined.success() {
        bail!("joining the initramfs and the modules archive failed ({joined})");
    }
    std::fs::remove_file(tmp.join("modules.cpio"))?;
    std::fs::write(tmp.join("init"), init_script())?;
    std::fs::copy(kdir.join("vmlinuz"), tmp.join("vmlinuz"))?;
    if kdir.join("config").exists() {
        std::fs::copy(kdir.join("config"), tmp.join("config"))?;
    }
    let manifest = serde_json::json!({
        "package": package,
        "version": info.version,
        "deb": deb,
        "deb_bytes": info.size,
        "key": key,
        "initrd_key": initrd.key,
        "applets": APPLETS,
        "kernel_modules": KERNEL_MODULES,
        "vmlinuz_bytes": std::fs::metadata(tmp.join("vmlinuz"))?.len(),
        "initrd_bytes": std::fs::metadata(tmp.join("initrd.cpio.gz"))?.len(),
        "cmdline_example": GuestImage::cmdline(2, 512),
    });
    std::fs::write(
        tmp.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    // Older images of this kernel are stale (their inputs changed): keep only this one.
    for e in std::fs::read_dir(&cache)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_image_dir_of(&name, &package) && e.path() != dir {
            progress(format!("removing the stale image {name}"));
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(image(false))
}

/// Checks that `bytes` is an x86 Linux kernel the 64-bit boot protocol can start (a bzImage
/// with boot protocol 2.12 or later and `XLF_KERNEL_64`), and returns its protocol version as
/// `major.minor`. atoll's loader makes the full checks; this catches the wrong file early.
pub fn check_bzimage(bytes: &[u8]) -> Result<String> {
    if bytes.len() < 0x240 {
        bail!("{} bytes: too short for a Linux kernel", bytes.len());
    }
    if bytes[0x1fe..0x200] != [0x55, 0xaa] || &bytes[0x202..0x206] != b"HdrS" {
        bail!("no Linux boot header (boot flag 0xaa55 and \"HdrS\" at 0x1fe/0x202): not a bzImage");
    }
    let version = u16::from_le_bytes([bytes[0x206], bytes[0x207]]);
    let v = format!("{}.{}", version >> 8, version & 0xff);
    if version < 0x020c {
        bail!("boot protocol {v}: atoll needs 2.12 or later (a 64-bit kernel of 2013 or newer)");
    }
    if bytes[0x236] & 1 == 0 {
        bail!("boot protocol {v} without XLF_KERNEL_64: not a 64-bit kernel");
    }
    Ok(v)
}

/// Which kernel a scenario's `linux = "kernel"` module holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestKernel {
    /// The guest image's kernel for this package choice.
    Package(KernelChoice),
    /// This bzImage (`--guest-kernel PATH`); the initramfs stays the guest image's.
    File(PathBuf),
}

impl Default for GuestKernel {
    /// The newest stock Debian 6.1 kernel.
    fn default() -> Self {
        GuestKernel::Package(KernelChoice::Newest("amd64".into()))
    }
}

impl GuestKernel {
    /// From `--guest-kernel PATH` and `--guest-kernel-package NAME|FLAVOUR` (at most one).
    /// A path is checked at once ([`GuestKernel::check`]).
    pub fn from_args(path: Option<&Path>, package: Option<&str>) -> Result<Self> {
        let k = match (path, package) {
            (Some(_), Some(_)) => bail!("give --guest-kernel or --guest-kernel-package, not both"),
            (Some(p), None) => GuestKernel::File(p.to_path_buf()),
            (None, Some(p)) => GuestKernel::Package(KernelChoice::parse(Some(p)).map_err(|e| {
                anyhow::anyhow!(
                    "{}",
                    e.to_string().replace("--kernel", "--guest-kernel-package")
                )
            })?),
            (None, None) => GuestKernel::default(),
        };
        k.check()?;
        Ok(k)
    }

    /// For a file: that it exists and is a bzImage ([`check_bzimage`]). Packages are checked
    /// when the guest image is built.
    pub fn check(&self) -> Result<()> {
        let GuestKernel::File(p) = self else {
            return Ok(());
        };
        let bytes = std::fs::read(p)
            .with_context(|| format!("--guest-kernel {}: cannot read the file", p.display()))?;
        check_bzimage(&bytes)
            .with_context(|| format!("--guest-kernel {}", p.display()))
            .map(|_| ())
    }

    /// Whether this is the default (the guest image's stock kernel).
    pub fn is_default(&self) -> bool {
        *self == GuestKernel::default()
    }

    /// Builds what a scenario's Linux modules need: the kernel file (this one, or the guest
    /// image's) and the initramfs; and says which kernel it is, for reports.
    pub fn resolve(&self) -> Result<ResolvedGuest> {
        Ok(match self {
            GuestKernel::File(p) => {
                self.check()?;
                let initrd = build_initrd()?;
                let kernel = std::fs::canonicalize(p)
                    .with_context(|| format!("--guest-kernel {}", p.display()))?;
                ResolvedGuest {
                    describe: kernel.display().to_string(),
                    kernel,
                    initrd: initrd.path,
                }
            }
            GuestKernel::Package(choice) => {
                let img = build(choice)?;
                ResolvedGuest {
                    describe: format!("{} {}", img.package, img.version),
                    kernel: img.kernel,
                    initrd: img.initrd,
                }
            }
        })
    }
}

/// The files a scenario's Linux modules come from.
#[derive(Clone, Debug)]
pub struct ResolvedGuest {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Which kernel: `PACKAGE VERSION`, or the file's path.
    pub describe: String,
}

// ---------------------------------------------------------------------------------------------
// The smoke test: QEMU boots the image directly.

/// What a smoke-test boot showed.
#[derive(Clone, Debug)]
pub struct SmokeOutcome {
    /// The report, if the guest printed one.
    pub report: Option<GuestReport>,
    /// From QEMU's start to the report line.
    pub to_report: Option<Duration>,
    /// From QEMU's start to its exit (power-off), if it exited.
    pub to_poweroff: Option<Duration>,
    /// The timeout struck.
    pub timed_out: bool,
    /// The console.
    pub console: String,
    /// The console log file.
    pub log: PathBuf,
}

impl SmokeOutcome {
    /// The line is there, `ok` is true and the VM powered off.
    pub fn passed(&self) -> bool {
        self.report.as_ref().is_some_and(|r| r.ok) && self.to_poweroff.is_some()
    }

    /// Why it failed, with the console's tail.
    pub fn failure(&self) -> String {
        let mut why = Vec::new();
        match &self.report {
            None => why.push("no ATOLL-GUEST-CHECK line on the console".to_string()),
            Some(r) if !r.ok => {
                for p in r.report["problems"].as_array().into_iter().flatten() {
                    why.push(format!("guest check: {}", p.as_str().unwrap_or_default()));
                }
                for w in r.report["dmesg_warnings"].as_array().into_iter().flatten() {
                    why.push(format!("  kernel: {}", w.as_str().unwrap_or_default()));
                }
            }
            Some(_) => {}
        }
        if self.timed_out {
            why.push("timed out".into());
        } else if self.to_poweroff.is_none() {
            why.push("the VM did not power off".into());
        }
        let lines: Vec<&str> = self.console.lines().collect();
        format!(
            "guest image smoke test failed:\n  {}\nlast lines of the console ({}):\n{}",
            why.join("\n  "),
            self.log.display(),
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }
}

/// The kernel command line of a smoke-test boot.
pub fn smoke_cmdline(cpus: u32, memory: u32) -> String {
    format!(
        "{} atoll.tolerate={}",
        GuestImage::cmdline(cpus, memory),
        TCG_TOLERATED.join(",")
    )
}

fn spawn_qemu(img: &GuestImage, cpus: u32, memory: u32, log: &Path) -> Result<Child> {
    let qemu_log = std::fs::File::create(log.with_file_name("qemu.log"))?;
    Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-cpu", "max", "-accel", "tcg"])
        .args(["-smp", &cpus.to_string(), "-m", &memory.to_string()])
        .arg("-kernel")
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .args(["-append", &smoke_cmdline(cpus, memory)])
        .args([
            "-display", "none", "-vga", "none", "-net", "none", "-monitor", "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-no-reboot")
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone()?)
        .stderr(qemu_log)
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")
}

/// Boots `img` in QEMU (q35, `-cpu max`, TCG) with `cpus` and `memory` MiB, streaming the
/// console to stdout when `stream`, until it powers off or `timeout` passes.
pub fn smoke_test(
    img: &GuestImage,
    cpus: u32,
    memory: u32,
    timeout: Duration,
    stream: bool,
) -> Result<SmokeOutcome> {
    if !(1..=64).contains(&cpus) {
        bail!("--cpus {cpus}: must be between 1 and 64");
    }
    if !(128..=16384).contains(&memory) {
        bail!("--memory {memory}: must be between 128 and 16384 MiB");
    }
    let work = crate::target_dir()
        .join("runs")
        .join(format!("guest-image-{cpus}cpu-{memory}m"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let log = work.join("console.log");
    std::fs::write(&log, "")?;
    progress(format!(
        "booting {} in QEMU ({cpus} CPUs, {memory} MiB, timeout {} s)",
        img.package,
        timeout.as_secs()
    ));
    let mut child = spawn_qemu(img, cpus, memory, &log)?;
    let start = Instant::now();
    let (mut seen, mut console) = (0usize, String::new());
    let mut to_report = None;
    let mut to_poweroff = None;
    let mut timed_out = false;
    let mut read_new = |console: &mut String, partial_too: bool| {
        let bytes = std::fs::read(&log).unwrap_or_default();
        if bytes.len() <= seen {
            return;
        }
        let new = String::from_utf8_lossy(&bytes[seen..]).into_owned();
        let end = if partial_too {
            Some(new.len())
        } else {
            new.rfind('\n').map(|i| i + 1)
        };
        if let Some(end) = end {
            let chunk = &new[..end];
            if stream {
                print!("{}", chunk.replace('\r', ""));
                let _ = std::io::stdout().flush();
            }
            console.push_str(chunk);
            seen += chunk.len();
        }
    };
    loop {
        read_new(&mut console, false);
        if to_report.is_none() && console.contains(REPORT_PREFIX) {
            to_report = Some(start.elapsed());
        }
        if child.try_wait()?.is_some() {
            to_poweroff = Some(start.elapsed());
            read_new(&mut console, true);
            break;
        }
        // After the report the guest only powers off: give it a little while.
        let limit = match to_report {
            Some(t) => timeout.min(t + Duration::from_secs(30)),
            None => timeout,
        };
        if start.elapsed() > limit {
            timed_out = to_report.is_none();
            let _ = child.kill();
            let _ = child.wait();
            read_new(&mut console, true);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let console = console.replace('\r', "");
    if to_report.is_none() && console.contains(REPORT_PREFIX) {
        to_report = to_poweroff;
    }
    Ok(SmokeOutcome {
        report: parse_console(&console)?,
        to_report,
        to_poweroff,
        timed_out,
        console,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn versions_compare_naturally() {
        assert_eq!(compare_versions("6.1.0-9", "6.1.0-56"), Ordering::Less);
        assert_eq!(compare_versions("6.1.0-56", "6.1.0-56"), Ordering::Equal);
        assert_eq!(compare_versions("6.12.9", "6.12.10"), Ordering::Less);
        assert_eq!(
            compare_versions("6.12.90+deb12", "6.12.90+deb12.1"),
            Ordering::Less
        );
        assert_eq!(compare_versions("6.1.0-050", "6.1.0-49"), Ordering::Greater);
        assert_eq!(compare_versions("6.1.0-5", "6.1.0-5a"), Ordering::Less);
    }

    #[test]
    fn kernel_package_names() {
        assert_eq!(
            parse_kernel_package("linux-image-6.1.0-56-amd64"),
            Some(("6.1.0-56", "amd64"))
        );
        assert_eq!(
            parse_kernel_package("linux-image-6.1.0-56-cloud-amd64"),
            Some(("6.1.0-56", "cloud"))
        );
        assert_eq!(
            parse_kernel_package("linux-image-6.12.43+deb12-rt-amd64"),
            Some(("6.12.43+deb12", "rt"))
        );
        assert_eq!(parse_kernel_package("linux-image-6.12-amd64"), None);
        assert_eq!(parse_kernel_package("linux-image-amd64"), None);
        assert_eq!(parse_kernel_package("linux-image-6.1.0-56-amd64-dbg"), None);
        assert_eq!(
            parse_kernel_package("linux-image-6.1.0-56-amd64-unsigned"),
            None
        );
        assert_eq!(parse_kernel_package("linux-headers-6.1.0-56-amd64"), None);
    }

    const SEARCH: &str = "\
linux-image-6.12.43+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.43+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-47-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-47-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-47-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.12-amd64 - Linux for 64-bit PCs (meta-package)
linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-50-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.12.117+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
";

    #[test]
    fn the_newest_kernel_of_the_series_and_flavour_wins() {
        let n = search_names(SEARCH);
        assert_eq!(n.len(), 11);
        assert_eq!(
            pick_kernel(&n, "6.1", "amd64").unwrap(),
            "linux-image-6.1.0-56-amd64"
        );
        assert_eq!(
            pick_kernel(&n, "6.1", "cloud").unwrap(),
            "linux-image-6.1.0-56-cloud-amd64"
        );
        assert_eq!(
            pick_kernel(&n, "6.1", "rt").unwrap(),
            "linux-image-6.1.0-47-rt-amd64"
        );
        assert_eq!(
            pick_kernel(&n, "6.12", "amd64").unwrap(),
            "linux-image-6.12.117+deb12-amd64"
        );
        assert_eq!(pick_kernel(&n, "6.2", "amd64"), None);
        assert_eq!(pick_kernel(&names(&[]), "6.1", "amd64"), None);
        // Never a debug or unsigned image, never a meta-package.
        let odd = names(&[
            "linux-image-6.1.0-99-amd64-dbg",
            "linux-image-6.1.0-99-amd64-unsigned",
            "linux-image-6.1-amd64",
            "linux-image-6.1.0-3-amd64",
        ]);
        assert_eq!(
            pick_kernel(&odd, "6.1", "amd64").unwrap(),
            "linux-image-6.1.0-3-amd64"
        );
    }

    #[test]
    fn kernel_choices() {
        assert_eq!(
            KernelChoice::parse(None).unwrap(),
            KernelChoice::Newest("amd64".into())
        );
        assert_eq!(
            KernelChoice::parse(Some("cloud")).unwrap(),
            KernelChoice::Newest("cloud".into())
        );
        assert_eq!(
            KernelChoice::parse(Some("linux-image-6.1.0-56-cloud-amd64")).unwrap(),
            KernelChoice::Package("linux-image-6.1.0-56-cloud-amd64".into())
        );
        for bad in [
            "linux-image-amd64",
            "bzImage",
            "linux-image-6.1.0-56-amd64-dbg",
            "xen",
        ] {
            let e = KernelChoice::parse(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("--kernel"), "{e}");
        }
    }

    #[test]
    fn package_records() {
        let text = "Package: linux-image-6.1.0-56-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n\
                    Version: 6.1.192-2\nSize: 70550672\n\
                    Filename: pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb\n\
                    Description: Linux 6.1\n\nPackage: other\nVersion: 9\n";
        assert_eq!(
            parse_package_info(text).unwrap(),
            PackageInfo {
                version: "6.1.192-2".into(),
                size: 70_550_672,
                filename: "pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb".into(),
            }
        );
        assert_eq!(parse_package_info("Package: x\nVersion: 1\n"), None);
        assert_eq!(parse_package_info(""), None);
    }

    #[test]
    fn init_script_runs_the_check_and_powers_off() {
        let s = init_script();
        assert!(s.starts_with("#!/bin/sh\n"));
        for needle in [
            "mount -t proc proc /proc",
            "mount -t sysfs sysfs /sys",
            "mount -t devtmpfs devtmpfs /dev",
            "mount -t devpts devpts /dev/pts",
            "atoll.expect_cpus=*) args=\"$args --expect-cpus ${word#*=}\"",
            "atoll.expect_mem=*) args=\"$args --expect-memory-mib ${word#*=}\"",
            "/atoll-check $args\n",
            "echo \"ATOLL-GUEST-EXIT status=$?\"",
            "poweroff -f\n",
        ] {
            assert!(s.contains(needle), "missing: {needle}");
        }
        // The check runs before the power-off, and every applet the script calls is linked.
        assert!(s.find("/atoll-check $args").unwrap() < s.find("poweroff -f").unwrap());
        for applet in ["mount", "cat", "echo", "poweroff", "sleep", "sh"] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
        // No globbing of command-line words.
        assert!(s.find("set -f").unwrap() < s.find("$(cat /proc/cmdline)").unwrap());
    }

    #[test]
    fn init_script_passes_expectations_through() {
        // Run the argument-building part of /init with the host's sh on a sample command line.
        let script = init_script();
        let start = script.find("set -f").unwrap();
        let end = script.find("echo \"atoll-init").unwrap();
        // The drivers /init loads before the check: never the build machine's.
        let fragment = script[start..end]
            .replace("$(cat /proc/cmdline)", "$CMDLINE")
            .replace("/sys/bus/pci/devices", "/nonexistent/atoll-test/pci")
            .replace("/lib/modules", "/nonexistent/atoll-test/modules");
        let out = Command::new("sh")
            .args([
                "-c",
                &format!("{fragment}\nprintf '%s|%s' \"$args\" \"$shell\""),
            ])
            .env(
                "CMDLINE",
                "console=ttyS0 atoll.expect_cpus=2 quiet atoll.expect_mem=512 atoll.shell=1 * \
                 atoll.tolerate=tsc-unstable,tsc-calibration",
            )
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            " --expect-cpus 2 --expect-memory-mib 512 --tolerate tsc-unstable,tsc-calibration|1"
        );
        assert_eq!(
            smoke_cmdline(4, 1024),
            "console=ttyS0 atoll.expect_cpus=4 atoll.expect_mem=1024 \
             atoll.tolerate=tsc-calibration,tsc-unstable,delay-calibration,apic-calibration,\
             clocksource-unstable"
        );
    }

    /// Runs the script from `set -f` up to (not including) the first line starting with
    /// `until` with the host's sh, `$CMDLINE` standing for /proc/cmdline and `sleep` only
    /// recording its argument; returns stdout.
    fn run_init_part(cmdline: &str, until: &str, then: &str) -> String {
        let script = init_script();
        let start = script.find("set -f").unwrap();
        let end = script.find(until).unwrap();
        // The drivers /init loads before the check: never the build machine's.
        let fragment = script[start..end]
            .replace("$(cat /proc/cmdline)", "$CMDLINE")
            .replace("/sys/bus/pci/devices", "/nonexistent/atoll-test/pci")
            .replace("/lib/modules", "/nonexistent/atoll-test/modules");
        let out = Command::new("sh")
            .args([
                "-c",
                &format!("sleep() {{ echo \"slept $1\"; }}\n{fragment}\n{then}"),
            ])
            .env("CMDLINE", cmdline)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// As [`run_init_part`], with `input` on standard input, under bash (the guest's busybox ash
    /// and bash both have `read -t`; dash, Debian's `sh`, does not).
    fn run_init_part_with_input(cmdline: &str, until: &str, then: &str, input: &str) -> String {
        use std::io::Write as _;
        let script = init_script();
        let start = script.find("set -f").unwrap();
        let end = script.find(until).unwrap();
        // The drivers /init loads before the check: never the build machine's.
        let fragment = script[start..end]
            .replace("$(cat /proc/cmdline)", "$CMDLINE")
            .replace("/sys/bus/pci/devices", "/nonexistent/atoll-test/pci")
            .replace("/lib/modules", "/nonexistent/atoll-test/modules");
        let mut child = Command::new("bash")
            .args(["-c", &format!("{fragment}\n{then}")])
            .env("CMDLINE", cmdline)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A fragment that reads no input may exit before the write: a broken pipe then is not
        // an error (what the fragment printed is checked by the caller).
        match child.stdin.take().unwrap().write_all(input.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.unwrap(),
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn init_script_idles_between_markers_after_the_check() {
        let s = init_script();
        // The order on the console: report, exit status, idle window, power-off.
        let exit = s.find("echo \"ATOLL-GUEST-EXIT status=$?\"").unwrap();
        let begin = s.find("echo \"ATOLL-IDLE begin\"").unwrap();
        let end = s.find("echo \"ATOLL-IDLE end\"").unwrap();
        assert!(s.find("/atoll-check $args").unwrap() < exit);
        assert!(exit < begin && begin < end && end < s.rfind("poweroff -f").unwrap());
        // Run everything but the check itself and the power-off.
        let after_check = "echo \"ATOLL-GUEST-EXIT status=0\"\n";
        let tail =
            &s[s.find("if [ -n \"$idle\" ]").unwrap()..s.find("if [ -n \"$shell\" ]").unwrap()];
        let then = format!("{after_check}{tail}");
        assert_eq!(
            run_init_part(
                "console=ttyS0 atoll.idle=7 quiet",
                "echo \"atoll-init",
                &then
            ),
            "ATOLL-GUEST-EXIT status=0\nATOLL-IDLE begin\nslept 7\nATOLL-IDLE end\n"
        );
        // Without the word, or with a word that is not a number of seconds, no idle window.
        assert_eq!(
            run_init_part("console=ttyS0", "echo \"atoll-init", &then),
            "ATOLL-GUEST-EXIT status=0\n"
        );
        assert_eq!(
            run_init_part("atoll.idle=5s", "echo \"atoll-init", &then),
            "init: atoll.idle=5s ignored: not a whole number of seconds\nATOLL-GUEST-EXIT status=0\n"
        );
        assert_eq!(
            run_init_part("atoll.idle=;reboot", "echo \"atoll-init", &then),
            "init: atoll.idle=;reboot ignored: not a whole number of seconds\nATOLL-GUEST-EXIT status=0\n"
        );
        // atoll.idle_timer=MS: the window runs atoll-check's periodic timer instead of sleep
        // (the check stands in for itself here: it says how it was called).
        let timed = format!(
            "atoll_check() {{ echo \"idle-check $*\"; return ${{CHECK_STATUS:-0}}; }}\n{}",
            then.replace("/atoll-check ", "atoll_check ")
        );
        assert_eq!(
            run_init_part("atoll.idle=60 atoll.idle_timer=10", "echo \"atoll-init", &timed),
            "ATOLL-GUEST-EXIT status=0\nATOLL-IDLE begin\nidle-check --idle-timer 60 --period-ms 10\n\
             ATOLL-IDLE end\n"
        );
        assert_eq!(
            run_init_part(
                "atoll.idle=3 atoll.idle_timer=10",
                "echo \"atoll-init",
                &format!("CHECK_STATUS=2\n{timed}")
            ),
            "ATOLL-GUEST-EXIT status=0\nATOLL-IDLE begin\nidle-check --idle-timer 3 --period-ms 10\n\
             init: atoll-check --idle-timer failed\nATOLL-IDLE end\n"
        );
        // A period that is not a number is ignored: the plain window.
        assert_eq!(
            run_init_part(
                "atoll.idle=7 atoll.idle_timer=1e3",
                "echo \"atoll-init",
                &timed
            ),
            "init: atoll.idle_timer=1e3 ignored: not a whole number of milliseconds\n\
             ATOLL-GUEST-EXIT status=0\nATOLL-IDLE begin\nslept 7\nATOLL-IDLE end\n"
        );
        // A timer without a window does nothing.
        assert_eq!(
            run_init_part("atoll.idle_timer=10", "echo \"atoll-init", &timed),
            "ATOLL-GUEST-EXIT status=0\n"
        );
        // atoll.echo_input=1: the prompt, then the line read from the console (stdin here).
        let echo = &s
            [s.find("if [ -n \"$echo_input\" ]").unwrap()..s.find("if [ -n \"$shell\" ]").unwrap()];
        assert_eq!(
            run_init_part_with_input(
                "atoll.echo_input=1",
                "echo \"atoll-init",
                echo,
                "typed here\n"
            ),
            "ATOLL-GUEST-INPUT?\nATOLL-GUEST-INPUT typed here\n"
        );
        assert_eq!(
            run_init_part_with_input("console=ttyS0", "echo \"atoll-init", echo, "typed here\n"),
            ""
        );
        // The boot-to-init mark is the first line /init prints starting with `atoll-init:`.
        assert_eq!(
            run_init_part("atoll.idle=2 atoll.expect_cpus=2", "/atoll-check $args", ""),
            "atoll-init: /atoll-check --expect-cpus 2\n"
        );
    }

    /// Runs the part of /init that loads drivers before the check, as `role` ("" or "host"),
    /// with a fake PCI bus of `(address, vendor, device)` and a modules directory holding the
    /// KERNEL_MODULES not in `builtin`; `insmod` says what it loads (and fails for `failing`).
    fn run_driver_loading(
        role: &str,
        pci: &[(&str, &str, &str)],
        builtin: &[&str],
        failing: &str,
    ) -> String {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            crate::target_dir().join(format!("init-drivers-test-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        std::fs::create_dir_all(dir.join("pci")).unwrap();
        for m in KERNEL_MODULES {
            let name = m.rsplit('/').next().unwrap();
            if !builtin.contains(&name.trim_end_matches(".ko")) {
                std::fs::write(dir.join("modules").join(name), "").unwrap();
            }
        }
        for (addr, vendor, device) in pci {
            let d = dir.join("pci").join(addr);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        }
        let script = init_script();
        let part = &script
            [script.find("load_modules() {").unwrap()..script.find("/atoll-check $args").unwrap()];
        let part = part
            .replace("/sys/bus/pci/devices", &dir.join("pci").to_string_lossy())
            .replace("/lib/modules", &dir.join("modules").to_string_lossy());
        let out = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "insmod() {{ echo \"insmod ${{1##*/}}\"; [ \"${{1##*/}}\" != \"$FAILING.ko\" ]; }}\n\
                     set -f\nrole=\"$ROLE\"\n{part}"
                ),
            ])
            .env("ROLE", role)
            .env("FAILING", failing)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn init_loads_the_drivers_of_the_virtio_devices_it_finds() {
        let core = "insmod virtio_ring.ko\ninsmod virtio.ko\ninsmod virtio_pci_modern_dev.ko\n\
                    insmod virtio_pci_legacy_dev.ko\ninsmod virtio_pci.ko\n";
        let net = "insmod failover.ko\ninsmod net_failover.ko\ninsmod virtio_net.ko\n";
        let blk = "insmod virtio_blk.ko\ninsmod crc16.ko\ninsmod mbcache.ko\n\
                   insmod crc32c_generic.ko\ninsmod jbd2.ko\ninsmod ext4.ko\n";
        let console = "insmod virtio_console.ko\n";
        let igbvf = ("0000:00:05.0", "0x8086", "0x10ca");
        // All three kinds, modern (as atoll offers them), beside another function.
        let all = [
            ("0000:00:02.0", "0x1af4", "0x1041"),
            ("0000:00:03.0", "0x1af4", "0x1042"),
            ("0000:00:04.0", "0x1af4", "0x1043"),
            igbvf,
        ];
        assert_eq!(
            run_driver_loading("", &all, &[], ""),
            format!("{core}{net}{blk}{console}")
        );
        // Each kind alone, transitional ids (QEMU's default) too.
        for (dev, want) in [
            ("0x1041", net),
            ("0x1000", net),
            ("0x1042", blk),
            ("0x1001", blk),
            ("0x1043", console),
            ("0x1003", console),
        ] {
            assert_eq!(
                run_driver_loading("", &[("0000:00:02.0", "0x1af4", dev)], &[], ""),
                format!("{core}{want}"),
                "{dev}"
            );
        }
        // A kernel with some built in: those are skipped.
        assert_eq!(
            run_driver_loading("", &all, &["virtio", "virtio_pci", "virtio_console"], ""),
            format!("{core}{net}{blk}")
                .replace("insmod virtio.ko\n", "")
                .replace("insmod virtio_pci.ko\n", "")
        );
        // No virtio function (or another vendor's 0x1041): nothing.
        assert_eq!(run_driver_loading("", &[igbvf], &[], ""), "");
        assert_eq!(
            run_driver_loading("", &[("0000:00:02.0", "0x8086", "0x1041")], &[], ""),
            ""
        );
        assert_eq!(run_driver_loading("", &[], &[], ""), "");
        // A failed insmod is said, and the rest still loads.
        assert_eq!(
            run_driver_loading("", &all[1..2], &[], "jbd2"),
            format!("{core}{blk}").replace(
                "insmod jbd2.ko\n",
                "insmod jbd2.ko\ninit: insmod jbd2 failed\n"
            )
        );
        // The root partition: tun and uio_pci_generic only, whatever its bus holds.
        assert_eq!(
            run_driver_loading("host", &all, &[], ""),
            "insmod tun.ko\ninsmod uio.ko\ninsmod uio_pci_generic.ko\n"
        );
        assert_eq!(
            run_driver_loading("host", &[], &["tun", "uio", "uio_pci_generic"], ""),
            ""
        );
    }

    #[test]
    fn init_loads_only_modules_the_image_carries() {
        let script = init_script();
        let names: Vec<&str> = KERNEL_MODULES
            .iter()
            .map(|m| m.rsplit('/').next().unwrap().trim_end_matches(".ko"))
            .collect();
        let mut calls = 0;
        for line in script.lines() {
            let Some(at) = line.find("load_modules ") else {
                continue;
            };
            let words = line[at + "load_modules ".len()..]
                .split(" ;;")
                .next()
                .unwrap();
            for w in words.split_whitespace() {
                assert!(names.contains(&w), "/init loads {w}, not in KERNEL_MODULES");
                calls += 1;
            }
        }
        assert!(
            calls >= 15,
            "{calls} modules named: the parse above missed the calls"
        );
    }

    #[test]
    fn extracted_modules_are_reused_only_for_the_same_list() {
        let dir = crate::target_dir().join(format!("modules-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!modules_extracted(&dir), "empty");
        std::fs::write(dir.join("missing"), "").unwrap();
        assert!(!modules_extracted(&dir), "made before lists were recorded");
        std::fs::write(dir.join("list"), KERNEL_MODULES[..3].join("\n")).unwrap();
        assert!(!modules_extracted(&dir), "made for another list");
        std::fs::write(dir.join("list"), KERNEL_MODULES.join("\n")).unwrap();
        assert!(modules_extracted(&dir));
        std::fs::remove_file(dir.join("missing")).unwrap();
        assert!(!modules_extracted(&dir), "not finished");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Runs /init's command-line parsing and its actions (not the check) with the host's sh in
    /// a sandbox: `/proc/sysrq-trigger` and `/sys/devices/system/cpu` point into a scratch
    /// directory, `sleep`, `poweroff` and `reboot` only say they were called, and `PATH` holds
    /// nothing but `cat` — this runs as root on the build machine, where a real sysrq or
    /// reboot would take the machine down. Returns stdout and what was written to sysrq.
    fn run_actions(cmdline: &str, cpus: &[(u32, &str)]) -> (String, String) {
        run_actions_with(cmdline, cpus, &[])
    }

    /// [`run_actions`] with more of the host's commands in the sandbox's `PATH` (`(name, host
    /// command)`: `("gunzip", "false")` links the host's `false` as `gunzip`); `mount` and
    /// `umount` only say they were called, and the load's tmpfs is a scratch directory.
    fn run_actions_with(
        cmdline: &str,
        cpus: &[(u32, &str)],
        tools: &[(&str, &str)],
    ) -> (String, String) {
        run_actions_sandbox(cmdline, cpus, tools, "", |_| {}, |_| {})
    }

    /// [`run_actions_with`] with more: `stubs` (shell functions defined before the script runs;
    /// `$SANDBOX` is the scratch directory), `setup` to fill the scratch directory before and
    /// `inspect` to look at it after. In the sandbox `/sys/class/net` is `SANDBOX/net`,
    /// `/sys/bus/pci/devices` `SANDBOX/pci`, `/tmp/vf` `SANDBOX/vf`, and `/atoll-check` is
    /// the shell function `atoll_check` (which `stubs` defines when the actions call it).
    fn run_actions_sandbox(
        cmdline: &str,
        cpus: &[(u32, &str)],
        tools: &[(&str, &str)],
        stubs: &str,
        setup: impl FnOnce(&Path),
        inspect: impl FnOnce(&Path),
    ) -> (String, String) {
        // One directory per run: tests run in parallel, some with the same command line.
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let script = init_script();
        let dir = crate::target_dir().join(format!(
            "init-actions-test-{}-{run}-{}",
            std::process::id(),
            cache_key(&[("cmdline", cmdline.as_bytes()), ("stubs", stubs.as_bytes())])
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        for (name, host) in [("cat", "cat")].iter().chain(tools) {
            std::os::unix::fs::symlink(
                String::from_utf8(
                    Command::new("sh")
                        .args(["-c", &format!("command -v {host}")])
                        .output()
                        .unwrap()
                        .stdout,
                )
                .unwrap()
                .trim(),
                dir.join("bin").join(name),
            )
            .unwrap();
        }
        for (cpu, state) in cpus {
            let d = dir.join(format!("cpu/cpu{cpu}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("online"), state).unwrap();
        }
        std::fs::write(dir.join("sysrq"), "").unwrap();
        let parse =
            &script[script.find("set -f").unwrap()..script.find("echo \"atoll-init").unwrap()];
        let acts =
            &script[script.find("load_dir=").unwrap()..script.find("if [ -n \"$idle\" ]").unwrap()];
        let fragment = format!("{parse}{acts}")
            .replace("$(cat /proc/cmdline)", "$CMDLINE")
            .replace("/proc/sysrq-trigger", &dir.join("sysrq").to_string_lossy())
            .replace(
                "/sys/devices/system/cpu",
                &dir.join("cpu").to_string_lossy(),
            )
            .replace("/tmp/atoll-load", &dir.join("load").to_string_lossy())
            .replace("/sys/class/net", &dir.join("net").to_string_lossy())
            .replace("/sys/bus/pci/devices", &dir.join("pci").to_string_lossy())
            .replace("/sys/class/tty", &dir.join("tty").to_string_lossy())
            .replace("/sys/block", &dir.join("block").to_string_lossy())
            .replace("/tmp/virtio", &dir.join("virtio").to_string_lossy())
            .replace("/run/atoll", &dir.join("run").to_string_lossy())
            .replace("/dev/hvc0", &dir.join("hvc0").to_string_lossy())
            .replace(
                "/sys/bus/pci/drivers",
                &dir.join("pcidrivers").to_string_lossy(),
            )
            .replace("/tmp/vf", &dir.join("vf").to_string_lossy())
            .replace("/tmp/blk", &dir.join("blk").to_string_lossy())
            .replace("/tmp/iso", &dir.join("iso").to_string_lossy())
            .replace("/sys/kernel/debug", &dir.join("debugfs").to_string_lossy())
            .replace(
                "/proc/sys/kernel/printk",
                &dir.join("printk").to_string_lossy(),
            )
            .replace("/atoll-check ", "atoll_check ")
            // Commands whose names a POSIX shell function cannot take.
            .replace("atoll-hpcg \"", "atoll_hpcg \"")
            .replace("atoll-fwq --", "atoll_fwq --")
            .replace("stress-ng --", "stress_ng --")
            // What is left of /proc (the bench's namespaces and /proc/net/dev).
            .replace(
                "/proc/",
                &format!("{}/", dir.join("fakeproc").to_string_lossy()),
            );
        setup(&dir);
        assert!(
            !fragment.contains("/proc/") && !fragment.contains("/sys/"),
            "{fragment}"
        );
        // By its path: the child's PATH (below) has no sh.
        let out = Command::new("/bin/sh")
            .args([
                "-c",
                &format!(
                    "sleep() {{ echo \"slept $1\"; }}\npoweroff() {{ echo \"poweroff $*\"; }}\n\
                     reboot() {{ echo \"reboot $*\"; }}\nmount() {{ echo \"mount $*\"; }}\n\
                     umount() {{ echo \"umount $*\"; }}\n{stubs}\n{fragment}"
                ),
            ])
            .env_clear()
            .env("PATH", dir.join("bin"))
            .env("CMDLINE", cmdline)
            .env("SANDBOX", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        inspect(&dir);
        let sysrq = std::fs::read_to_string(dir.join("sysrq")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (String::from_utf8_lossy(&out.stdout).into_owned(), sysrq)
    }

    /// Stubs of the isolation bench's programs: each logs its arguments to `calls` and prints
    /// what the real one would (HPCG's validity from `HPCG_RC`).
    const WORK_STUBS: &str = r#"
log() { echo "$*" >> "$SANDBOX/calls"; }
nproc() { echo 4; }
taskset() {
    if [ "$1" = -p ]; then
        [ "$2" = -c ] && { log "taskset -p -c $3 $4"; return 0; }
        [ $# = 2 ] && { echo "pid $2's current affinity mask: f"; return 0; }
        log "taskset -p $2 $3"; return 0
    fi
    log "taskset $1 $2"; shift 2; "$@"
}
usleep() { :; }
renice() { log "renice $*"; }
atoll_fwq() {
    log "atoll-fwq $*"
    if [ "$1" = --exit-costs ]; then
        echo 'ATOLL-EXITCOST {"cpu":2,"cpuid":{"median":1500},"timer":{"overshoot_cycles":{"median":9000}}}'
    else
        echo 'ATOLL-FWQ {"cpus":[{"cpu":2,"max_detour":7}]}'
    fi
}
atoll_hpcg() { log "atoll-hpcg $*"; log "console loglevel: $(cat "$SANDBOX/printk")"; echo 'ATOLL-HPCG {"nx":24,"valid":true,"set_residuals":[1e-3,2e-3],"sets":2}'; return ${HPCG_RC:-0}; }
oslat() { log "oslat $*"; printf '{\n  "thread": {"0": {"max": 9,\n "histogram": {"1": 5,\n "2": 1}}}\n}\n' > "$SANDBOX/iso/oslat.json"; }
stress_ng() { log "stress-ng $*"; exec real_timeout 2 real_sleep 60; }
"#;

    fn run_work(cmdline: &str, env: &str) -> (String, String) {
        let mut calls = String::new();
        let (out, _) = run_actions_sandbox(
            cmdline,
            &[],
            &[
                ("tr", "tr"),
                ("grep", "grep"),
                ("head", "head"),
                ("tail", "tail"),
                ("mkdir", "mkdir"),
                ("rm", "rm"),
                ("sed", "sed"),
                // The load's stand-in lasts 2 s (`sleep` is a stub; an asynchronous list
                // ignores SIGINT, which stress-ng itself catches).
                ("real_sleep", "sleep"),
                ("real_timeout", "timeout"),
            ],
            &format!("{env}\n{WORK_STUBS}"),
            |d| {
                // /proc/interrupts, the same before and after HPCG here; the shell's pid.
                std::fs::create_dir_all(d.join("fakeproc/self")).unwrap();
                std::fs::write(d.join("fakeproc/self/stat"), "4242 (sh) S 1\n").unwrap();
                std::fs::write(d.join("printk"), "7\t4\t1\t7\n").unwrap();
                std::fs::write(
                    d.join("fakeproc/interrupts"),
                    "           CPU0       CPU1\nLOC:          9          5   Local timer interrupts\n",
                )
                .unwrap();
                // Found by `command -v` (the stub function runs it).
                use std::os::unix::fs::PermissionsExt;
                let p = d.join("bin/stress-ng");
                std::fs::write(&p, "#!/bin/sh\n").unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            },
            |d| {
                calls = std::fs::read_to_string(d.join("calls"))
                    .unwrap_or_default()
                    .replace(&d.to_string_lossy().into_owned(), "SANDBOX");
                // The console's log level comes back (the first field is the console's).
                let printk = std::fs::read_to_string(d.join("printk")).unwrap();
                assert_eq!(printk, "7\n", "{calls}");
            },
        );
        (out, calls)
    }

    #[test]
    fn work_probes_the_noise_then_runs_hpcg_pinned_between_its_markers() {
        let (out, calls) = run_work(
            "atoll.actions=work atoll.work_cpus=2,3 atoll.hpcg=24,16,16 atoll.hpcg_rt=5 \
             atoll.fwq_samples=50 atoll.fwq_quantum=20 atoll.oslat_s=1 atoll.work_pause=0",
            "",
        );
        assert_eq!(
            calls,
            "atoll-fwq --exit-costs --cpu 2\n\
             taskset -c 2,3\natoll-fwq --cpus 2,3 --samples 50 --quantum-us 20\n\
             taskset -c 2,3\noslat --cpu-list 2,3 --cpu-main-thread 2 --duration 1 --quiet \
             --json=SANDBOX/iso/oslat.json\n\
             taskset -c 2,3\natoll-hpcg 24 16 16 --rt 5\nconsole loglevel: 1\n"
        );
        let lines: Vec<&str> = out.lines().collect();
        let at = |p: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(p))
                .unwrap_or_else(|| panic!("{p}: {out}"))
        };
        assert!(at("ATOLL-WORK begin cpus=2,3") < at("ATOLL-EXITCOST {"));
        assert!(at("ATOLL-EXITCOST {") < at("ATOLL-FWQ {"));
        assert!(at("ATOLL-FWQ {") < at("ATOLL-OSLAT {"));
        assert!(at("ATOLL-OSLAT {") < at("ATOLL-WORK hpcg"));
        // Nothing on the console while HPCG runs (each byte is an exit): its line and the
        // interrupt rows come after the end marker.
        assert_eq!(at("ATOLL-WORK hpcg") + 1, at("ATOLL-WORK end"), "{out}");
        assert!(at("ATOLL-WORK end") < at("ATOLL-HPCG {"));
        assert!(
            at("ATOLL-HPCG {") < at("ATOLL-WORK-IRQ b  CPU0 CPU1"),
            "{out}"
        );
        assert!(
            out.contains("ATOLL-WORK-IRQ a LOC: 9 5 Local timer interrupts"),
            "{out}"
        );
        assert!(
            out.contains(r#"ATOLL-OSLAT {  "thread": {"0": {"max": 9}}}"#),
            "{out}"
        );
        assert!(!out.contains("ATOLL-ACTION-FAILED"), "{out}");
        // Every CPU by default; an invalid HPCG run fails the action.
        let (out, calls) = run_work(
            "atoll.actions=work atoll.oslat_s=0 atoll.work_pause=0",
            "HPCG_RC=1",
        );
        assert!(
            calls.contains("atoll-fwq --cpus 0-3 --samples 2000 --quantum-us 100\n"),
            "{calls}"
        );
        assert!(
            calls.contains("taskset -c 0-3\natoll-hpcg 16 16 16 --rt 0\n"),
            "{calls}"
        );
        assert!(!calls.contains("oslat"), "{calls}");
        assert!(
            out.contains("ATOLL-ACTION-FAILED work: HPCG's validation failed"),
            "{out}"
        );
        // HPCG on chosen CPUs (the guest's nohz_full one): the shell keeps to the first
        // workload CPU, the probes still cover all of them.
        let (out, calls) = run_work(
            "atoll.actions=work atoll.hpcg_cpus=1 atoll.oslat_s=0 atoll.work_pause=0",
            "",
        );
        assert!(
            calls.starts_with("taskset -p -c 0 4242\n"),
            "the shell first: {calls}"
        );
        assert!(
            calls.ends_with("taskset -p f 4242\n"),
            "its affinity back at the end: {calls}"
        );
        assert!(
            calls.contains("taskset -c 0-3\natoll-fwq --cpus 0-3"),
            "{calls}"
        );
        assert!(
            calls.contains("taskset -c 1\natoll-hpcg 16 16 16 --rt 0\n"),
            "{calls}"
        );
        assert!(
            out.contains("ATOLL-WORK begin cpus=0-3 hpcg_cpus=1"),
            "{out}"
        );
        assert!(!out.contains("ATOLL-ACTION-FAILED"), "{out}");
    }

    #[test]
    fn the_native_isolation_host_measures_solo_then_under_each_load() {
        let (out, calls) = run_work(
            "atoll.actions=isolation atoll.iso_mode=native atoll.iso_loads=none,cpu,bogus \
             atoll.iso_cores=2,3 atoll.iso_load_cpus=0-1 atoll.oslat_s=1 atoll.work_pause=0",
            "",
        );
        let line = |prefix: &str| -> Value {
            let l = out
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix}: {out}"));
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        };
        assert_eq!(
            line("ATOLL-ISO-RUN 0 "),
            serde_json::json!({"mode": "native", "load": "none", "problem": ""})
        );
        assert_eq!(line("ATOLL-ISO-HPCG 0 ")["valid"], true);
        assert_eq!(line("ATOLL-ISO-FWQ 0 ")["cpus"][0]["max_detour"], 7);
        assert_eq!(line("ATOLL-ISO-EXITCOST 0 ")["cpuid"]["median"], 1500);
        // Without its histogram: the line stays within a console line's 4 KiB.
        assert_eq!(
            line("ATOLL-ISO-OSLAT 0 ")["thread"]["0"],
            serde_json::json!({"max": 9})
        );
        assert!(!out.contains("ATOLL-ISO-STATS"), "no atoll here: {out}");
        assert_eq!(line("ATOLL-ISO-RUN 1 ")["problem"], "", "{out}");
        assert_eq!(line("ATOLL-ISO-HPCG 1 ")["nx"], 24);
        // The timed sets' residuals stay off the host's line (its length grows with --rt).
        assert_eq!(
            line("ATOLL-ISO-HPCG 1 "),
            serde_json::json!({"nx": 24, "valid": true, "sets": 2})
        );
        let bogus = line("ATOLL-ISO-RUN 2 ");
        assert!(bogus["problem"]
            .as_str()
            .unwrap()
            .contains("unknown load profile 'bogus'"));
        assert_eq!(
            line("ATOLL-ISO-HPCG 2 "),
            Value::Null,
            "not measured without its load"
        );
        assert_eq!(
            line("ATOLL-RESULT isolation "),
            serde_json::json!({"mode": "native", "runs": 3, "failed": 1})
        );
        // Natively nothing is reniced ahead: the workload runs at the default beside the load.
        assert!(!calls.contains("renice -n -20"), "{calls}");
        // The load ran pinned to the host's CPUs, one worker per CPU, and only around run 1.
        assert!(
            calls.contains("stress-ng --taskset 0-1 --cpu 4 --timeout 0 --quiet\n"),
            "{calls}"
        );
        assert_eq!(calls.matches("atoll-hpcg").count(), 2, "{calls}");
        // The kernel's messages stay off the console through both runs (back after: run_work
        // checks).
        assert_eq!(calls.matches("console loglevel: 1").count(), 2, "{calls}");
        assert!(
            calls.contains("taskset -c 2,3\natoll-hpcg 16 16 16 --rt 0"),
            "{calls}"
        );
        assert!(
            out.contains("ATOLL-ACTION-FAILED isolation: 1 of the isolation runs failed"),
            "{out}"
        );
    }

    #[test]
    fn init_script_runs_the_actions_in_order() {
        let s = init_script();
        // After the check's exit line, before the idle window and the final power-off.
        let actions = s.find("for action in $actions").unwrap();
        assert!(s.find("echo \"ATOLL-GUEST-EXIT").unwrap() < actions);
        assert!(actions < s.find("echo \"ATOLL-IDLE begin").unwrap());
        for applet in ["reboot", "poweroff", "cat", "sleep"] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
        let (out, sysrq) = run_actions(
            "console=ttyS0 atoll.role=host atoll.actions=sleep:5,offline:1,online:1,poweroff",
            &[(1, "1")],
        );
        assert_eq!(
            out,
            "ATOLL-ACTION sleep:5\nslept 5\nATOLL-ACTION offline:1\nATOLL-ACTION online:1\n\
             ATOLL-ACTION poweroff\npoweroff -f\nATOLL-ACTION-FAILED poweroff: the kernel did not power off\n\
             ATOLL-ACTIONS end failed=1\n"
        );
        // The stubbed poweroff returned, so /init fell back to sysrq.
        assert_eq!(sysrq, "o\n");
        // panic writes `c`, reboot tries the applet and then `b`.
        let (out, sysrq) = run_actions("atoll.actions=panic", &[]);
        assert_eq!(sysrq, "c\n");
        assert!(out.starts_with("ATOLL-ACTION panic\n"), "{out}");
        let (out, sysrq) = run_actions("atoll.actions=reboot", &[]);
        assert_eq!(sysrq, "b\n");
        assert!(out.starts_with("ATOLL-ACTION reboot\nreboot -f\n"), "{out}");
        // What cannot be done is said, and the rest still runs.
        let (out, _) = run_actions(
            "atoll.actions=offline:7,sleep:x,offline:;x,dance,sleep:1",
            &[],
        );
        assert_eq!(
            out,
            "ATOLL-ACTION offline:7\nATOLL-ACTION-FAILED offline:7: no CPUDIR/cpu7/online\n\
             ATOLL-ACTION sleep:x\nATOLL-ACTION-FAILED sleep:x: not a whole number of seconds\n\
             ATOLL-ACTION offline:;x\nATOLL-ACTION-FAILED offline:;x: not a CPU number\n\
             ATOLL-ACTION dance\nATOLL-ACTION-FAILED dance: unknown action\n\
             ATOLL-ACTION sleep:1\nslept 1\nATOLL-ACTIONS end failed=4\n"
                .replace(
                    "CPUDIR",
                    &out[out.find("no ").unwrap() + 3..out.find("/cpu7").unwrap()]
                )
        );
        // No actions: nothing printed.
        assert_eq!(run_actions("console=ttyS0", &[]).0, "");
    }

    /// The host's commands the load runs (busybox applets in the image).
    const LOAD_TOOLS: &[(&str, &str)] = &[
        ("sh", "sh"),
        ("nproc", "nproc"),
        ("mkdir", "mkdir"),
        ("rm", "rm"),
        ("gzip", "gzip"),
        ("gunzip", "gunzip"),
        ("cmp", "cmp"),
    ];

    #[test]
    fn idle_and_load_actions_mark_their_windows() {
        let (out, _) = run_actions_with(
            "atoll.role=host atoll.actions=idle:3,load:2,idle:x,load:",
            &[],
            LOAD_TOOLS,
        );
        let lines: Vec<&str> = out.lines().collect();
        let cpus: u64 = String::from_utf8(Command::new("nproc").output().unwrap().stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            lines[..5],
            [
                "ATOLL-ACTION idle:3",
                "ATOLL-IDLE begin",
                "slept 3",
                "ATOLL-IDLE end",
                "ATOLL-ACTION load:2"
            ],
            "{out}"
        );
        assert!(
            lines[5].starts_with("mount -t tmpfs -o size=64m load /")
                && lines[5].ends_with("/load"),
            "{out}"
        );
        assert_eq!(
            lines[6..9],
            ["ATOLL-LOAD begin", "slept 2", "ATOLL-LOAD end"],
            "{out}"
        );
        // Every worker ran at least one step (the sandbox's sleep returns at once), and every
        // step's gunzip gave back what gzip was given.
        let summary = lines[9]
            .strip_prefix("load: ")
            .and_then(|l| l.strip_suffix(&format!(" build steps on {cpus} CPUs, 0 failed")))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(summary.parse::<u64>().unwrap() >= cpus, "{out}");
        assert!(lines[10].starts_with("umount /"), "{out}");
        assert_eq!(
            lines[11..],
            [
                "ATOLL-ACTION idle:x",
                "ATOLL-ACTION-FAILED idle:x: not a whole number of seconds",
                "ATOLL-ACTION load:",
                "ATOLL-ACTION-FAILED load:: not a whole number of seconds",
                "ATOLL-ACTIONS end failed=2"
            ],
            "{out}"
        );
    }

    #[test]
    fn a_load_whose_steps_fail_fails_the_action() {
        // A gunzip that gives nothing back: every step's comparison fails.
        let mut tools = LOAD_TOOLS.to_vec();
        tools.retain(|(name, _)| *name != "gunzip");
        tools.push(("gunzip", "true"));
        let (out, _) = run_actions_with("atoll.actions=load:1", &[], &tools);
        let failed = out
            .lines()
            .find_map(|l| l.strip_prefix("ATOLL-ACTION-FAILED load:1: "))
            .unwrap_or_else(|| panic!("{out}"));
        let (bad, all) = failed
            .strip_suffix(" build steps failed")
            .and_then(|f| f.split_once(" of "))
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(bad, all, "{out}");
        assert!(out.contains("ATOLL-LOAD end\n"), "{out}");
        assert!(out.ends_with("ATOLL-ACTIONS end failed=1\n"), "{out}");
    }

    #[test]
    fn a_restarted_root_partition_runs_its_restart_actions() {
        let cmdline = "panic=1 atoll.role=host atoll.actions=sleep:3,panic \
                       atoll.restart_actions=sleep:9,poweroff";
        let (first, sysrq) = run_actions(cmdline, &[]);
        assert!(
            first.starts_with("ATOLL-ACTION sleep:3\nslept 3\nATOLL-ACTION panic\n"),
            "{first}"
        );
        assert_eq!(sysrq, "c\n");
        for restarts in ["atoll.restarts=0", ""] {
            let (again, _) = run_actions(&format!("{cmdline} {restarts}"), &[]);
            assert_eq!(again, first, "first boot: {restarts}");
        }
        let (second, sysrq) = run_actions(&format!("{cmdline} atoll.restarts=1"), &[]);
        assert!(
            second
                .starts_with("ATOLL-ACTION sleep:9\nslept 9\nATOLL-ACTION poweroff\npoweroff -f\n"),
            "{second}"
        );
        assert_eq!(sysrq, "o\n");
        // Without restart actions, a restart repeats the first boot's.
        let (same, _) = run_actions("atoll.actions=sleep:2 atoll.restarts=3", &[]);
        assert_eq!(
            same,
            "ATOLL-ACTION sleep:2\nslept 2\nATOLL-ACTIONS end failed=0\n"
        );
        let (bad, _) = run_actions(
            "atoll.actions=sleep:2 atoll.restart_actions=sleep:4 atoll.restarts=x",
            &[],
        );
        assert_eq!(
            bad,
            "init: atoll.restarts=x ignored: not a whole number\nATOLL-ACTION sleep:2\nslept 2\nATOLL-ACTIONS end failed=0\n"
        );
        // The role reaches atoll-check.
        assert_eq!(
            run_init_part(
                "atoll.role=host atoll.expect_cpus=2",
                "/atoll-check $args",
                ""
            ),
            "atoll-init: /atoll-check --role host --expect-cpus 2\n"
        );
    }

    /// A minimal bzImage header: boot flag, `HdrS`, protocol `version`, `xloadflags`.
    /// The host's commands the SR-IOV actions run (busybox applets in the image).
    const VF_TOOLS: &[(&str, &str)] = &[
        ("sed", "sed"),
        ("tr", "tr"),
        ("grep", "grep"),
        ("head", "head"),
        ("readlink", "readlink"),
        ("dd", "dd"),
        ("od", "od"),
        ("mkdir", "mkdir"),
        ("cp", "cp"),
    ];

    /// Stubs of what the enclave's SR-IOV actions call: insmod, ip and the atoll-check modes
    /// log their arguments to `SANDBOX/calls`; ping answers `$PING_FIRST` of a single ping and
    /// `$PING_OK` (default: all) of a longer run, with busybox's summary lines.
    const VF_ENCLAVE_STUBS: &str = r#"
log() { echo "$*" >> "$SANDBOX/calls"; }
insmod() { log "insmod $*"; }
ip() { log "ip $*"; }
ping() {
    log "ping $*"
    n=$2
    ok=${PING_OK:-$n}
    [ "$n" = 1 ] && ok=${PING_FIRST:-1}
    echo "PING $7 ($7): 56 data bytes"
    echo ""
    echo "--- $7 ping statistics ---"
    echo "$n packets transmitted, $ok packets received, 0% packet loss"
    [ "$ok" = 0 ] || echo "round-trip min/avg/max = 0.101/0.250/0.900 ms"
}
atoll_check() {
    log "atoll-check $*"
    case "$1" in
        --tcp-send) if [ -n "$TCP_SEND" ]; then echo "$TCP_SEND"; else
                        echo "{\"bytes\":$5,\"error\":null,\"matches\":null,\"seconds\":2.5,\"sha256\":\"5eed\"}"; fi ;;
        --interrupts) echo "{\"$2-tx-0\":4,\"$2-rx-0\":7,\"$2\":1}" ;;
        --vf-rx-outside) if [ -n "$RX_ERROR" ]; then echo "{\"device\":\"$4\",\"error\":\"$RX_ERROR\"}"; else
                             echo "{\"device\":\"$4\",\"gpa\":\"$2\",\"written\":true,\"error\":null}"; fi ;;
    esac
}
"#;

    /// An enclave's sysfs: `eth0` bound to virtio_net, `eth1` to igbvf (PCI 0000:00:03.0, with
    /// `carrier` given), `lo` with no device at all.
    fn vf_enclave_sysfs(dir: &Path, carrier: &str, igbvf: bool) {
        use std::os::unix::fs::symlink;
        let drivers = dir.join("drivers");
        for d in ["virtio_net", "igbvf"] {
            std::fs::create_dir_all(drivers.join(d)).unwrap();
        }
        for (pci, drv) in [
            ("0000:00:02.0", "virtio_net"),
            ("0000:00:03.0", if igbvf { "igbvf" } else { "virtio_net" }),
        ] {
            let p = dir.join("pci").join(pci);
            std::fs::create_dir_all(&p).unwrap();
            symlink(drivers.join(drv), p.join("driver")).unwrap();
        }
        for (name, pci) in [
            ("eth0", Some("0000:00:02.0")),
            ("eth1", Some("0000:00:03.0")),
            ("lo", None),
        ] {
            let n = dir.join("net").join(name);
            std::fs::create_dir_all(&n).unwrap();
            if let Some(pci) = pci {
                symlink(dir.join("pci").join(pci), n.join("device")).unwrap();
            }
            std::fs::write(n.join("address"), "52:54:00:aa:00:01\n").unwrap();
            std::fs::write(n.join("carrier"), format!("{carrier}\n")).unwrap();
            std::fs::create_dir_all(n.join("statistics")).unwrap();
            std::fs::write(n.join("statistics/rx_packets"), "5\n").unwrap();
            std::fs::write(n.join("statistics/tx_packets"), "9\n").unwrap();
        }
        // The stack's counters as /proc/net/snmp has them (a line of names, one of values).
        let snmp = dir.join("fakeproc/net");
        std::fs::create_dir_all(&snmp).unwrap();
        std::fs::write(
            snmp.join("snmp"),
            "Ip: Forwarding DefaultTTL\nIp: 2 64\n\
             Icmp: InMsgs InErrors OutMsgs\nIcmp: 100 1 101\n\
             Tcp: RtoAlgorithm ActiveOpens InSegs OutSegs RetransSegs\nTcp: 1 3 4000 7000 9\n\
             Udp: InDatagrams\nUdp: 55\n",
        )
        .unwrap();
    }

    /// The `ATOLL-RESULT name` line's JSON.
    fn result_of(out: &str, name: &str) -> Value {
        let prefix = format!("ATOLL-RESULT {name} ");
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} result: {out}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"))
    }

    /// Runs the enclave's actions on `cmdline` with the stubs and `env` (`NAME=value` lines
    /// before the stubs); returns stdout and the calls.
    fn run_vf_enclave(cmdline: &str, env: &str, carrier: &str, igbvf: bool) -> (String, String) {
        let mut calls = String::new();
        let (out, _) = run_actions_sandbox(
            cmdline,
            &[],
            VF_TOOLS,
            &format!("{env}\n{VF_ENCLAVE_STUBS}"),
            |d| vf_enclave_sysfs(d, carrier, igbvf),
            |d| calls = std::fs::read_to_string(d.join("calls")).unwrap_or_default(),
        );
        (out, calls)
    }

    #[test]
    fn vf_net_brings_up_the_vf_pings_and_sends_the_file() {
        let (out, calls) = run_vf_enclave(
            "atoll.actions=vf_net atoll.net_ip=10.0.9.2/24 atoll.net_peer=10.0.9.1 \
             atoll.net_pings=50 atoll.net_port=6000 atoll.net_bytes=1048576 atoll.net_seed=3 \
             atoll.net_then=poweroff",
            "",
            "1",
            true,
        );
        let r = result_of(&out, "vf_net");
        assert_eq!(r["iface"], "eth1", "{out}");
        assert_eq!(r["device"], "0000:00:03.0");
        assert_eq!(r["mac"], "52:54:00:aa:00:01");
        assert_eq!(r["carrier_s"], 0);
        assert_eq!(
            (r["pings_sent"].clone(), r["pings_received"].clone()),
            (50.into(), 50.into())
        );
        assert_eq!(r["rtt_avg_ms"], 0.25);
        assert_eq!(r["tcp_bytes"], 1_048_576);
        assert_eq!(r["tcp_sha256"], "5eed");
        assert_eq!(r["tcp_seconds"], 2.5);
        assert_eq!(r["tcp"]["error"], Value::Null);
        assert_eq!(r["interrupts"]["eth1-rx-0"], 7);
        assert_eq!(r["problem"], "");
        // The interface's counters around the data phase, which its markers bracket (no
        // pause without atoll.net_pause).
        assert_eq!(
            r["packets"],
            serde_json::json!({"rx_before": 5, "tx_before": 9, "rx_after": 5, "tx_after": 9,
                "frames_before": 11_201, "frames_after": 11_201}),
            "TCP InSegs + OutSegs + ICMP InMsgs + OutMsgs"
        );
        let (begin, end) = (
            out.find("ATOLL-NET begin\n").unwrap(),
            out.find("ATOLL-NET end\n").unwrap(),
        );
        assert!(
            begin < end && end < out.find("ATOLL-RESULT vf_net").unwrap(),
            "{out}"
        );
        assert!(!out.contains("slept"), "{out}");
        assert!(out.ends_with("ATOLL-ACTIONS end failed=0\n"), "{out}");
        // With a pause, one after each marker.
        let (out, _) = run_vf_enclave(
            "atoll.actions=vf_net atoll.net_pause=3 atoll.net_then=poweroff",
            "",
            "1",
            true,
        );
        assert_eq!(out.matches("slept 3\n").count(), 2, "{out}");
        assert!(out.contains("ATOLL-NET begin\nslept 3\n"), "{out}");
        assert!(out.contains("ATOLL-NET end\nslept 3\n"), "{out}");
        // igbvf and nothing else; the address on the igbvf interface; the parameters reach
        // ping and the sender.
        assert_eq!(
            calls,
            "insmod /lib/modules/igbvf.ko\nip link set eth1 up\nip addr add 10.0.9.2/24 dev eth1\n\
             ping -c 50 -i 0.2 -W 5 10.0.9.1\n\
             atoll-check --tcp-send 10.0.9.1 6000 --bytes 1048576 --seed 3 --timeout 300\n\
             atoll-check --interrupts eth1\n"
        );
        // Without atoll.net_then=poweroff the enclave stays up (the sandbox's sleep returns
        // at once, so that loop is not run here); the defaults fill in the rest.
        assert!(init_script().contains("vf_net) vf_net; vf_then ;;"));
        let (out, calls) = run_vf_enclave(
            "atoll.actions=vf_net atoll.net_then=poweroff",
            "",
            "1",
            true,
        );
        assert_eq!(result_of(&out, "vf_net")["pings_sent"], 100);
        assert!(
            calls.contains("ip addr add 10.0.7.2/24 dev eth1\n"),
            "{calls}"
        );
        assert!(
            calls.contains("--tcp-send 10.0.7.1 5001 --bytes 4194304 --seed 1 "),
            "{calls}"
        );
    }

    #[test]
    fn vf_net_says_what_went_wrong() {
        let fail = |out: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix("ATOLL-ACTION-FAILED vf_net: "))
                .map(String::from)
                .unwrap_or_else(|| panic!("{out}"))
        };
        let cmd = "atoll.actions=vf_net atoll.net_then=poweroff";
        let (out, _) = run_vf_enclave(cmd, "PING_OK=98", "1", true);
        assert_eq!(fail(&out), "98 of 100 pings came back");
        assert_eq!(
            result_of(&out, "vf_net")["problem"],
            "98 of 100 pings came back"
        );
        let (out, _) = run_vf_enclave(
            cmd,
            r#"TCP_SEND='{"bytes":100,"error":"connection reset","sha256":"x","seconds":1.0}'"#,
            "1",
            true,
        );
        assert_eq!(fail(&out), "the TCP transfer failed");
        assert_eq!(result_of(&out, "vf_net")["tcp_bytes"], 100);
        // Every ping lost: no round-trip line, a null average.
        let (out, _) = run_vf_enclave(cmd, "PING_OK=0", "1", true);
        assert_eq!(result_of(&out, "vf_net")["rtt_avg_ms"], Value::Null);
        // No carrier: 30 one-second waits, then nothing is sent.
        let (out, calls) = run_vf_enclave(cmd, "", "0", true);
        assert_eq!(fail(&out), "no carrier on eth1 in 30 s");
        assert_eq!(out.matches("slept 1\n").count(), 30, "{out}");
        assert_eq!(result_of(&out, "vf_net")["carrier_s"], Value::Null);
        assert!(
            !calls.contains("ping") && !calls.contains("--tcp-send"),
            "{calls}"
        );
        // No igbvf interface (the VF is bound to something else): the result says so.
        let (out, _) = run_vf_enclave(cmd, "", "1", false);
        assert_eq!(fail(&out), "no interface is bound to igbvf");
        assert_eq!(result_of(&out, "vf_net")["iface"], "");
        // A parameter that is not a number reaches neither ping nor the sender.
        let (out, calls) =
            run_vf_enclave(&format!("{cmd} atoll.net_pings=5;reboot"), "", "1", true);
        assert_eq!(
            fail(&out),
            "atoll.net_* parameter '5;reboot' is not a whole number"
        );
        assert_eq!(calls, "atoll-check --interrupts none\n");
    }

    #[test]
    fn vf_dma_outside_moves_the_ring_after_a_working_ping() {
        let cmd = "iomem=relaxed atoll.actions=vf_dma_outside atoll.net_outside=0x7f0000000000 \
                   atoll.net_pings=10 atoll.net_then=poweroff";
        let (out, calls) = run_vf_enclave(cmd, "PING_OK=0", "1", true);
        let r = result_of(&out, "vf_dma_outside");
        assert_eq!(r["first_ping_received"], 1, "{out}");
        assert_eq!(r["iomem_relaxed"], true);
        assert_eq!(r["registers"]["written"], true);
        assert_eq!(r["registers"]["device"], "0000:00:03.0");
        assert_eq!(
            (r["pings_sent"].clone(), r["pings_received"].clone()),
            (10.into(), 0.into())
        );
        assert_eq!(r["gpa"], "0x7f0000000000");
        assert!(out.ends_with("ATOLL-ACTIONS end failed=0\n"), "{out}");
        // The ring moves between the first ping and the others.
        let first = calls.find("ping -c 1 ").unwrap();
        let moved = calls
            .find("atoll-check --vf-rx-outside 0x7f0000000000 --device 0000:00:03.0")
            .unwrap();
        let rest = calls.find("ping -c 10 ").unwrap();
        assert!(first < moved && moved < rest, "{calls}");
        // Replies that still arrive fail the case; so does a link that never worked (then
        // the ring is left alone).
        let (out, _) = run_vf_enclave(cmd, "PING_OK=3", "1", true);
        assert!(
            out.contains(
                "ATOLL-ACTION-FAILED vf_dma_outside: 3 pings came back after the ring moved\n"
            ),
            "{out}"
        );
        let (out, calls) = run_vf_enclave(cmd, "PING_FIRST=0 PING_OK=0", "1", true);
        assert!(
            out.contains(
                "ATOLL-ACTION-FAILED vf_dma_outside: the link did not work before the ring moved\n"
            ),
            "{out}"
        );
        assert!(!calls.contains("--vf-rx-outside"), "{calls}");
        let (out, calls) = run_vf_enclave(
            &cmd.replace("0x7f0000000000", "7f0000000000"),
            "",
            "1",
            true,
        );
        assert!(out.contains("is not a hex address"), "{out}");
        assert_eq!(calls, "atoll-check --interrupts none\n");
        // Measured in QEMU: without iomem=relaxed the BAR cannot be mapped; then no pings
        // are judged.
        let (out, calls) = run_vf_enclave(
            &cmd.replace("iomem=relaxed ", ""),
            "RX_ERROR='mapping resource0: Invalid argument'",
            "1",
            true,
        );
        let r = result_of(&out, "vf_dma_outside");
        assert_eq!(r["iomem_relaxed"], false);
        assert_eq!(
            r["problem"],
            "the ring was not moved: mapping resource0: Invalid argument"
        );
        assert!(!calls.contains("ping -c 10"), "{calls}");
    }

    /// Stubs of the host's side: the enclave stubs plus `atoll` (each call logged; `create`
    /// hides the VF's config space unless `$NOT_HIDDEN`, `destroy` shows it again, `console`
    /// prints the enclave's result line with a carriage return) and the receiver.
    const VF_HOST_STUBS: &str = r#"
atoll() {
    log "atoll $*"
    case "$1" in
        vf) echo "enabled 1 VF" ;;
        create) cp "$2" "$SANDBOX/created-$(cat "$SANDBOX/n" 2>/dev/null)"; echo x >> "$SANDBOX/n"
                [ -n "$NOT_HIDDEN" ] || cp "$SANDBOX/config.hidden" "$SANDBOX/pci/0000:01:10.0/config" ;;
        destroy) cp "$SANDBOX/config.present" "$SANDBOX/pci/0000:01:10.0/config" ;;
        console) echo "booting"
                 printf 'ATOLL-RESULT %s {"iface":"eth0","problem":%s}\r\n' "${5#ATOLL-RESULT }" "${ENCLAVE_PROBLEM:-\"\"}" ;;
        stats) echo '{"exits":12}' ;;
    esac
}
"#;

    /// The host's sysfs: a bridge at 00:00.0, the PF at 01:00.0 (interface eth0, carrier up)
    /// with `virtfn0` → 01:10.0, whose config space reads class 02 00 00, revision 01.
    fn vf_host_sysfs(dir: &Path) {
        use std::os::unix::fs::symlink;
        let pci = dir.join("pci");
        for (bdf, vendor, device) in [
            ("0000:00:00.0", "0x8086", "0x29c0"),
            ("0000:01:00.0", "0x8086", "0x10c9"),
        ] {
            std::fs::create_dir_all(pci.join(bdf)).unwrap();
            std::fs::write(pci.join(bdf).join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(pci.join(bdf).join("device"), format!("{device}\n")).unwrap();
        }
        std::fs::create_dir_all(pci.join("0000:01:00.0/net/eth0")).unwrap();
        let vf = pci.join("0000:01:10.0");
        std::fs::create_dir_all(&vf).unwrap();
        symlink(&vf, pci.join("0000:01:00.0/virtfn0")).unwrap();
        let mut present = vec![0u8; 64];
        present[..4].copy_from_slice(&[0x86, 0x80, 0xca, 0x10]);
        present[8..12].copy_from_slice(&[0x01, 0x00, 0x00, 0x02]);
        std::fs::write(dir.join("config.present"), &present).unwrap();
        std::fs::write(dir.join("config.hidden"), [0xffu8; 64]).unwrap();
        std::fs::write(vf.join("config"), &present).unwrap();
        std::fs::create_dir_all(dir.join("net/eth0")).unwrap();
        std::fs::write(dir.join("net/eth0/carrier"), "1\n").unwrap();
    }

    const RECV_STUB: &str = r#"atoll_check() {
    log "atoll-check $*"
    echo "{\"bytes\":$6,\"error\":null,\"matches\":${MATCHES:-true},\"seconds\":3.0,\"sha256\":\"5eed\"}"
}"#;

    /// Runs the host's actions; returns stdout, the calls and the enclave descriptions.
    fn run_vf_host(cmdline: &str, env: &str) -> (String, String, Vec<String>) {
        let (mut calls, mut descs) = (String::new(), Vec::new());
        let (out, _) = run_actions_sandbox(
            cmdline,
            &[],
            VF_TOOLS,
            &format!("{env}\n{VF_ENCLAVE_STUBS}\n{VF_HOST_STUBS}\n{RECV_STUB}"),
            vf_host_sysfs,
            |d| {
                calls = std::fs::read_to_string(d.join("calls")).unwrap_or_default();
                for n in ["", "x"] {
                    if let Ok(t) = std::fs::read_to_string(d.join(format!("created-{n}"))) {
                        descs.push(t);
                    }
                }
            },
        );
        (out, calls, descs)
    }

    #[test]
    fn vf_host_drives_the_pf_and_two_enclaves_with_the_vf() {
        let (out, calls, descs) = run_vf_host(
            "atoll.role=host atoll.actions=vf_host atoll.lc_cores=3,4 atoll.net_pings=20 \
             atoll.net_bytes=65536 atoll.lc_args=atoll.tolerate=x",
            "",
        );
        let r = result_of(&out, "vf_host");
        assert_eq!(r["problem"], "", "{out}");
        assert_eq!(r["pf"], "0000:01:00.0");
        assert_eq!(r["pf_iface"], "eth0");
        assert_eq!(r["vf"], "0000:01:10.0");
        assert_eq!(r["enable"]["rc"], 0);
        for n in [1, 2] {
            assert_eq!(r[format!("hidden{n}")], true, "{out}");
            assert_eq!(r[format!("class_while_owned{n}")], "ffffffff");
            assert_eq!(r[format!("class_after_destroy{n}")], "01000002");
            assert_eq!(r[format!("recv{n}")]["matches"], true);
            assert_eq!(r[format!("recv{n}")]["bytes"], 65536);
            assert_eq!(r[format!("host_pings{n}")]["received"], 20);
            assert_eq!(r[format!("stats{n}")]["exits"], 12);
            assert_eq!(r[format!("create{n}")]["rc"], 0);
            assert_eq!(r[format!("destroy{n}")]["rc"], 0);
            // The enclave's own line, its carriage return gone.
            assert_eq!(
                result_of(&out, &format!("vf_host_enclave{n}"))["iface"],
                "eth0"
            );
        }
        assert!(out.ends_with("ATOLL-ACTIONS end failed=0\n"), "{out}");
        // The PF's modules in order, its address before the VF exists, then per enclave: the
        // receiver, create, console, the host's pings, stats, destroy.
        let order = [
            "insmod /lib/modules/dca.ko",
            "insmod /lib/modules/i2c-algo-bit.ko",
            "insmod /lib/modules/igb.ko",
            "ip addr add 10.0.7.1/24 dev eth0",
            "ip link set eth0 up",
            "atoll vf 0000:01:00.0 --count 1",
            "atoll create ",
            "atoll console vfnet1 --no-input --until ATOLL-RESULT vf_net --timeout 1800",
            "ping -c 20 -i 0.2 -W 5 10.0.7.2",
            "atoll stats vfnet1 --json",
            "atoll destroy vfnet1 --online-cores",
            "atoll console vfnet2 ",
            "atoll destroy vfnet2 --online-cores",
        ];
        // The receiver runs in the background: it logs its start whenever it gets to run.
        assert!(
            calls.contains("atoll-check --tcp-recv 5001 --timeout 1800 --bytes 65536 --seed 1"),
            "{calls}"
        );
        let mut at = 0;
        for step in order {
            at += calls[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{step} after {at}: {calls}"));
        }
        assert_eq!(descs.len(), 2, "{calls}");
        assert!(
            descs[0].contains("name = \"vfnet1\"\ncores = [3]\nmemory_mib = 256\n"),
            "{}",
            descs[0]
        );
        assert!(
            descs[0].ends_with("devices = [\"0000:01:10.0\"]\n"),
            "{}",
            descs[0]
        );
        // The enclave gets the host's atoll.net_* words (not net_then: it stays up until
        // destroyed) and the test's tolerations.
        assert!(
            descs[1].contains(
                "cmdline = \"console=ttyS0 loglevel=5 atoll.expect_cpus=1 atoll.expect_mem=256 \
                 atoll.actions=vf_net atoll.net_pings=20 atoll.net_bytes=65536 atoll.tolerate=x\""
            ),
            "{}",
            descs[1]
        );
    }

    /// Stubs of the network bench's baseline: `unshare` and `nsenter` (logged; nsenter runs
    /// its command here), `ip link show` reporting carrier, and both TCP ends.
    const BENCH_NET_STUBS: &str = r#"
unshare() { log "unshare $*"; }
nsenter() { log "nsenter $1 $2 $3"; shift 3; "$@"; }
ip() {
    log "ip $*"
    [ "$2" = show ] && echo "5: $3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq qlen 1000"
    return 0
}
atoll_check() {
    log "atoll-check $*"
    case "$1" in
        --tcp-recv) echo "{\"bytes\":$6,\"error\":null,\"matches\":true,\"seconds\":3.0,\"sha256\":\"5eed\"}" ;;
        --tcp-send) echo "{\"bytes\":$5,\"error\":null,\"matches\":null,\"seconds\":2.5,\"sha256\":\"5eed\"}" ;;
    esac
}
"#;

    /// The host's sysfs of [`vf_host_sysfs`] plus VF 1 (01:10.2, whose interface is eth1
    /// once bound), igbvf's driver directory, and the /proc the baseline reads: this process's
    /// network namespace and /proc/net/dev with eth1's counters.
    fn bench_net_sysfs(dir: &Path, virtfn1: bool) {
        use std::os::unix::fs::symlink;
        vf_host_sysfs(dir);
        let pci = dir.join("pci");
        let vf1 = pci.join("0000:01:10.2");
        std::fs::create_dir_all(vf1.join("net/eth1")).unwrap();
        std::fs::write(vf1.join("driver_override"), "none\n").unwrap();
        if virtfn1 {
            symlink(&vf1, pci.join("0000:01:00.0/virtfn1")).unwrap();
        }
        std::fs::create_dir_all(dir.join("pcidrivers/igbvf")).unwrap();
        std::fs::create_dir_all(dir.join("fakeproc/self/ns")).unwrap();
        symlink("net:[4026531840]", dir.join("fakeproc/self/ns/net")).unwrap();
        std::fs::create_dir_all(dir.join("fakeproc/net")).unwrap();
        std::fs::write(
            dir.join("fakeproc/net/dev"),
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
             eth1:  123456     345    0    0    0     0          0         0 17000000   11800    0    0    0     0       0          0\n",
        )
        .unwrap();
    }

    /// Runs the host's bench_net; returns stdout, the calls, the enclave descriptions and the
    /// contents of (VF 1's driver_override, igbvf's bind, igbvf's unbind).
    fn run_bench_net(virtfn1: bool) -> (String, String, Vec<String>, [String; 3]) {
        let (mut calls, mut descs, mut files) = (String::new(), Vec::new(), Default::default());
        let (out, _) = run_actions_sandbox(
            "atoll.role=host atoll.actions=bench_net atoll.lc_cores=1,1 atoll.net_pings=20 \
             atoll.net_bytes=65536",
            &[],
            VF_TOOLS,
            &format!("{VF_ENCLAVE_STUBS}\n{VF_HOST_STUBS}\n{BENCH_NET_STUBS}"),
            |d| bench_net_sysfs(d, virtfn1),
            |d| {
                calls = std::fs::read_to_string(d.join("calls")).unwrap_or_default();
                for n in ["", "x"] {
                    if let Ok(t) = std::fs::read_to_string(d.join(format!("created-{n}"))) {
                        descs.push(t);
                    }
                }
                let read = |p: &str| std::fs::read_to_string(d.join(p)).unwrap_or_default();
                files = [
                    read("pci/0000:01:10.2/driver_override"),
                    read("pcidrivers/igbvf/bind"),
                    read("pcidrivers/igbvf/unbind"),
                ];
            },
        );
        (out, calls, descs, files)
    }

    #[test]
    fn bench_net_measures_the_host_over_vf1_then_the_enclave_over_vf0() {
        let (out, calls, descs, files) = run_bench_net(true);
        let r = result_of(&out, "bench_net");
        assert_eq!(r["problem"], "", "{out}");
        let b = &r["baseline"];
        assert_eq!(b["vf"], "0000:01:10.2");
        assert_eq!(b["iface"], "eth1");
        assert_eq!(b["carrier_s"], 0);
        assert_eq!(
            (b["pings_sent"].clone(), b["pings_received"].clone()),
            (20.into(), 20.into())
        );
        assert_eq!(b["rtt_avg_ms"], 0.25);
        assert_eq!(b["recv"]["matches"], true);
        assert_eq!(b["recv"]["bytes"], 65536);
        assert_eq!(b["tcp"]["bytes"], 65536);
        // /proc/net/dev's eth1 line, read in the namespace before and after.
        assert_eq!(
            b["packets"],
            serde_json::json!({"rx_before": 345, "tx_before": 11800, "rx_after": 345, "tx_after": 11800})
        );
        // The enclave's result and the two snapshots of atoll's stats.
        assert_eq!(r["enclave"]["iface"], "eth0");
        assert_eq!(r["stats_begin"]["exits"], 12);
        assert_eq!(r["stats_end"]["exits"], 12);
        assert_eq!(result_of(&out, "bench_net_round")["recv1"]["matches"], true);
        assert!(out.ends_with("ATOLL-ACTIONS end failed=0\n"), "{out}");
        // VF 1 to the host's igbvf (over atoll vf's "none"), then back.
        assert_eq!(files[0].trim(), "igbvf");
        assert_eq!(files[1].trim(), "0000:01:10.2");
        assert_eq!(files[2].trim(), "0000:01:10.2");
        let order = [
            "atoll vf 0000:01:00.0 --count 2",
            "insmod /lib/modules/igbvf.ko",
            "unshare -n sleep 100000",
            "ip link set eth1 netns ",
            "nsenter -t ",
            "ip addr add 10.0.7.3/24 dev eth1",
            "ip link set eth1 up",
            "ip link show eth1",
            "ping -c 20 -i 0.2 -W 5 10.0.7.1",
            "atoll-check --tcp-send 10.0.7.1 5001 --bytes 65536 --seed 1 --timeout 300",
            "atoll create ",
            "atoll console vfnet1 --no-input --until ATOLL-NET begin",
            "atoll stats vfnet1 --json",
            "atoll console vfnet1 --no-input --until ATOLL-NET end",
            "atoll stats vfnet1 --json",
            "atoll console vfnet1 --no-input --until ATOLL-RESULT vf_net",
            "atoll destroy vfnet1 --online-cores",
            // Then virtio-net: the tap gets the host's address once create returns.
            "atoll create ",
            "ip addr add 10.9.0.1/24 dev atl0",
            "atoll console vnet1 --no-input --until ATOLL-NET begin --timeout 240",
            "atoll stats vnet1 --json",
            "atoll console vnet1 --no-input --until ATOLL-NET end",
            "atoll stats vnet1 --json",
            "atoll console vnet1 --no-input --until ATOLL-RESULT vf_net",
            "atoll destroy vnet1 --online-cores",
        ];
        // The receiver runs in the background: it logs its start whenever it gets to run.
        assert!(
            calls.contains("atoll-check --tcp-recv 5001 --timeout 600 --bytes 65536 --seed 1"),
            "{calls}"
        );
        let mut at = 0;
        for step in order {
            at += calls[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{step} after {at}: {calls}"));
        }
        // The baseline's ping and sender ran in the namespace.
        assert!(
            calls.contains("nsenter -t ") && calls.contains(" -n\nping -c 20"),
            "{calls}"
        );
        // The virtio-net round: its receiver (as the VF enclave's), the enclave's result, the
        // snapshots.
        assert_eq!(
            calls
                .matches("atoll-check --tcp-recv 5001 --timeout 1800 --bytes 65536 --seed 1")
                .count(),
            2,
            "{calls}"
        );
        let v = result_of(&out, "bench_net_virtio");
        assert_eq!(v["problem"], "", "{out}");
        assert_eq!(v["create"]["rc"], 0);
        assert_eq!(v["recv"]["matches"], true);
        assert_eq!(v["stats_begin"]["exits"], 12);
        assert_eq!(result_of(&out, "bench_net_virtio_enclave")["iface"], "eth0");
        // The VF's enclave has VF 0, the second a virtio-net device on the tap; both pause
        // after their markers.
        assert_eq!(descs.len(), 2, "{calls}");
        assert!(
            descs[1].ends_with("[[virtio]]\nkind = \"net\"\ntap = \"atl0\"\n"),
            "{}",
            descs[1]
        );
        assert!(
            descs[1].contains(
                "atoll.actions=vnet atoll.net_ip=10.9.0.2/24 atoll.net_peer=10.9.0.1 \
                 atoll.net_pings=20 atoll.net_bytes=65536 atoll.net_pause=2"
            ),
            "{}",
            descs[1]
        );
        assert!(
            descs[0].ends_with("devices = [\"0000:01:10.0\"]\n"),
            "{}",
            descs[0]
        );
        assert!(
            descs[0].contains(
                "atoll.actions=vf_net atoll.net_pings=20 atoll.net_bytes=65536 atoll.net_pause=2"
            ),
            "{}",
            descs[0]
        );
    }

    #[test]
    fn bench_net_without_a_second_vf_says_so_and_creates_nothing() {
        let (out, calls, descs, _) = run_bench_net(false);
        let r = result_of(&out, "bench_net");
        assert_eq!(
            r["problem"],
            "0000:01:00.0 has no virtfn1 after atoll vf --count 2"
        );
        assert_eq!(r["enclave"], Value::Null);
        assert_eq!(r["stats_begin"], Value::Null);
        assert!(
            descs.is_empty() && !calls.contains("atoll create"),
            "{calls}"
        );
        assert!(
            out.contains("ATOLL-ACTION-FAILED bench_net: 0000:01:00.0 has no virtfn1"),
            "{out}"
        );
        // No virtio-net round without the VF's to compare it with.
        assert!(!out.contains("bench_net_virtio"), "{out}");
    }

    /// `fio` for the disk bench's actions: logs its arguments and writes, for `--output`, the
    /// real fio 3.33 document of a read or a write job (xtask/testdata) under the job's name;
    /// with `$NO_DIRECT` it refuses `--direct=1` as fio does on the initramfs, with `$FIO_FAIL` every
    /// job. `dd` logs (the image).
    fn blk_stubs(env: &str) -> String {
        let data = crate::root().join("xtask/testdata");
        format!(
            "{env}\nlog() {{ echo \"$*\" >> \"$SANDBOX/calls\"; }}\n\
             dd() {{ log \"dd $*\"; }}\n\
             fio() {{
    log \"fio $*\"
    for a in \"$@\"; do
        case \"$a\" in --name=*) n=${{a#*=}} ;; --output=*) o=${{a#*=}} ;; --direct=*) dr=${{a#*=}} ;; --rw=*) rw=${{a#*=}} ;; esac
    done
    if [ \"$dr\" = 1 ] && [ -n \"$NO_DIRECT\" ]; then
        echo 'fio: looks like your file system does not support direct=1/buffered=0'
        echo 'fio: destination does not support O_DIRECT'
        return 1
    fi
    [ -n \"$FIO_FAIL\" ] && {{ echo \"fio: $FIO_FAIL\"; return 1; }}
    case \"$rw\" in *read) f={}/fio-randread.json ;; *) f={}/fio-seqwrite.json ;; esac
    sed \"s/\\\"jobname\\\" : \\\"[a-z]*\\\"/\\\"jobname\\\" : \\\"$n\\\"/\" \"$f\" > \"$o\"
}}\n",
            data.display(),
            data.display()
        )
    }

    /// `atoll` for the host's bench_blk: `create` keeps the description, `console` prints the
    /// line it waits for (the enclave's result with no problem), `stats` a stand-in.
    const BLK_HOST_STUBS: &str = r#"
atoll() {
    log "atoll $*"
    case "$1" in
        create) cp "$2" "$SANDBOX/created-" ;;
        console) echo "booting"
                 printf 'ATOLL-RESULT %s {"problem":""}\r\n' "${5#ATOLL-RESULT }" ;;
        stats) echo '{"exits":12}' ;;
    esac
}
"#;

    const BLK_TOOLS: &[(&str, &str)] = &[
        ("sed", "sed"),
        ("tr", "tr"),
        ("grep", "grep"),
        ("head", "head"),
        ("tail", "tail"),
        ("mkdir", "mkdir"),
        ("cp", "cp"),
    ];

    /// Runs the disk bench's actions; returns stdout, the calls, what went to hvc0 and the
    /// enclave descriptions.
    fn run_blk(cmdline: &str, env: &str, host: bool) -> (String, String, String, Vec<String>) {
        let (mut calls, mut hvc0, mut descs) = (String::new(), String::new(), Vec::new());
        let stubs = if host {
            format!("{}\n{BLK_HOST_STUBS}", blk_stubs(env))
        } else {
            blk_stubs(env)
        };
        let (out, _) = run_actions_sandbox(
            cmdline,
            &[],
            BLK_TOOLS,
            &stubs,
            |d| virtio_enclave_sysfs(d, true, Some("65536")),
            |d| {
                calls = std::fs::read_to_string(d.join("calls")).unwrap_or_default();
                hvc0 = std::fs::read_to_string(d.join("hvc0")).unwrap_or_default();
                if let Ok(t) = std::fs::read_to_string(d.join("created-")) {
                    descs.push(t);
                }
            },
        );
        (out, calls, hvc0, descs)
    }

    #[test]
    fn bench_blk_guest_runs_the_four_jobs_on_vda_with_o_direct() {
        let (out, calls, hvc0, _) = run_blk(
            "atoll.actions=bench_blk_guest atoll.blk_mib=8 atoll.blk_seconds=3 atoll.net_then=poweroff",
            "",
            false,
        );
        let r = result_of(&out, "bench_blk_guest");
        assert_eq!(r["problem"], "", "{out}");
        assert_eq!(r["sectors"], 65536);
        assert_eq!(r["direct"], 1);
        // What the bench parses, as it parses it.
        let side = crate::bench_blk::Side::parse(&r, "enclave").unwrap();
        assert!(side.direct && side.rates.len() == 4);
        let fio: Vec<&str> = calls.lines().filter(|l| l.starts_with("fio ")).collect();
        assert_eq!(fio.len(), 4, "{calls}");
        for ((name, rw), line) in [
            ("seqread", "read"),
            ("seqwrite", "write"),
            ("randread", "randread"),
            ("randwrite", "randwrite"),
        ]
        .iter()
        .zip(&fio)
        {
            assert!(
                line.starts_with(&format!(
                    "fio --name={name} --filename=/dev/vda --rw={rw} --bs=4k --size=8M --direct=1 \
                     --ioengine=psync --runtime=3 --time_based --output-format=json --output="
                )),
                "{line}"
            );
        }
        // The jobs run between the markers, each followed by a pause; the markers and the
        // result reach hvc0 too.
        let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s}: {out}"));
        assert!(at("ATOLL-BLK begin\nslept 2\n") < at("ATOLL-BLK end\nslept 2\n"));
        assert!(at("ATOLL-BLK end") < at("ATOLL-RESULT bench_blk_guest"));
        for l in [
            "ATOLL-BLK begin",
            "ATOLL-BLK end",
            "ATOLL-RESULT bench_blk_guest {",
        ] {
            assert!(hvc0.contains(l), "{l}: {hvc0}");
        }
        // It then stays up for the host (atoll.net_then=poweroff here: it goes on).
        assert!(out.contains("ATOLL-ACTIONS end failed=0"), "{out}");
    }

    #[test]
    fn bench_blk_guest_says_what_failed() {
        let cmd = "atoll.actions=bench_blk_guest atoll.net_then=poweroff";
        let (out, _, _, _) = run_blk(cmd, "FIO_FAIL='cannot open /dev/vda'", false);
        let r = result_of(&out, "bench_blk_guest");
        assert_eq!(r["problem"], "fio on /dev/vda failed");
        assert_eq!(r["fio_error"], "seqread: fio: cannot open /dev/vda");
        assert_eq!(r["jobs"], serde_json::json!([]));
        let (out, calls, _, _) = run_blk(
            "atoll.actions=bench_blk_guest atoll.blk_seconds=4s atoll.net_then=poweroff",
            "",
            false,
        );
        let r = result_of(&out, "bench_blk_guest");
        assert_eq!(
            r["problem"],
            "atoll.blk_* parameter '4s' is not a whole number"
        );
        assert!(!calls.contains("fio "), "{calls}");
        // The markers all the same, so the host waiting for them goes on.
        assert!(
            out.contains("ATOLL-BLK begin") && out.contains("ATOLL-BLK end"),
            "{out}"
        );
    }

    #[test]
    fn bench_blk_runs_the_host_then_the_enclave_on_the_same_image() {
        let (out, calls, _, descs) = run_blk(
            "atoll.role=host atoll.actions=bench_blk atoll.lc_cores=1,1 atoll.blk_mib=8 \
             atoll.blk_seconds=3",
            "NO_DIRECT=1",
            true,
        );
        let b = result_of(&out, "bench_blk");
        assert_eq!(b["problem"], "", "{out}");
        assert_eq!(b["create"]["rc"], 0);
        assert_eq!(b["destroy"]["rc"], 0);
        assert_eq!(b["stats_begin"]["exits"], 12);
        assert_eq!(b["stats_end"]["exits"], 12);
        // O_DIRECT refused on the host's file: buffered, and why.
        let h = result_of(&out, "bench_blk_host");
        assert_eq!(h["direct"], 0);
        assert_eq!(
            h["direct_refused"],
            "seqread: fio: looks like your file system does not support direct=1/buffered=0 \
             fio: destination does not support O_DIRECT"
        );
        let side = crate::bench_blk::Side::parse(&h, "host").unwrap();
        assert!(!side.direct && side.rates.len() == 4);
        assert_eq!(result_of(&out, "bench_blk_enclave")["problem"], "");
        let order = [
            "dd if=/dev/zero of=",
            "fio --name=seqread --filename=",
            "--direct=1",
            "fio --name=seqread --filename=",
            "--direct=0",
            "fio --name=randwrite --filename=",
            "--direct=0",
            "atoll create ",
            "atoll console blk1 --no-input --until ATOLL-BLK begin --timeout 300",
            "atoll stats blk1 --json",
            "atoll console blk1 --no-input --until ATOLL-BLK end --timeout 252",
            "atoll stats blk1 --json",
            "atoll console blk1 --no-input --until ATOLL-RESULT bench_blk_guest",
            "atoll destroy blk1 --online-cores",
        ];
        let mut at = 0;
        for step in order {
            at += calls[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{step} after {at}: {calls}"));
        }
        assert!(calls.contains("bs=1048576 count=8"), "{calls}");
        // The enclave gets the host's image as its disk and the bench's words.
        assert_eq!(descs.len(), 1, "{calls}");
        let img = calls
            .lines()
            .find_map(|l| l.strip_prefix("dd if=/dev/zero of="))
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert!(
            descs[0].ends_with(&format!(
                "[[virtio]]\nkind = \"console\"\n\n[[virtio]]\nkind = \"blk\"\npath = \"{img}\"\n"
            )),
            "{}",
            descs[0]
        );
        assert!(
            descs[0].contains(
                "atoll.actions=bench_blk_guest atoll.blk_mib=8 atoll.blk_seconds=3 atoll.blk_pause=2"
            ),
            "{}",
            descs[0]
        );
        assert!(out.contains("ATOLL-ACTIONS end failed=0"), "{out}");
    }

    #[test]
    fn bench_blk_without_fio_on_the_host_creates_nothing() {
        let (out, calls, _, descs) = run_blk(
            "atoll.role=host atoll.actions=bench_blk",
            "FIO_FAIL='no such engine'",
            true,
        );
        let b = result_of(&out, "bench_blk");
        assert!(
            b["problem"]
                .as_str()
                .unwrap()
                .ends_with("failed: seqread: fio: no such engine"),
            "{out}"
        );
        assert_eq!(b["stats_begin"], Value::Null);
        assert_eq!(result_of(&out, "bench_blk_enclave"), Value::Null);
        assert!(
            descs.is_empty() && !calls.contains("atoll create"),
            "{calls}"
        );
        assert!(
            out.contains("ATOLL-ACTION-FAILED bench_blk: fio on the host's"),
            "{out}"
        );
    }

    #[test]
    fn vnet_runs_vf_net_over_virtio_net() {
        // eth0 is virtio_net's, eth1 igbvf's: vnet takes eth0 and loads no igbvf.
        let (out, calls) = run_vf_enclave(
            "atoll.actions=vnet atoll.net_ip=10.9.0.2/24 atoll.net_peer=10.9.0.1 \
             atoll.net_pings=20 atoll.net_bytes=65536 atoll.net_pause=2 atoll.net_then=poweroff",
            "",
            "1",
            true,
        );
        let r = result_of(&out, "vf_net");
        assert_eq!(r["problem"], "", "{out}");
        assert_eq!(r["iface"], "eth0");
        assert_eq!(r["pings_received"], 20);
        assert!(!calls.contains("insmod"), "{calls}");
        for call in [
            "ip addr add 10.9.0.2/24 dev eth0",
            "ping -c 20 -i 0.2 -W 5 10.9.0.1",
            "atoll-check --tcp-send 10.9.0.1 5001 --bytes 65536 --seed 1 --timeout 300",
        ] {
            assert!(calls.contains(call), "{call}: {calls}");
        }
        assert!(
            out.contains("ATOLL-NET begin\nslept 2\n") && out.contains("ATOLL-NET end\nslept 2\n"),
            "{out}"
        );
        // Without a virtio_net interface (both igbvf's here) it says so, and loads no igbvf.
        let mut calls = String::new();
        let (out, _) = run_actions_sandbox(
            "atoll.actions=vnet atoll.net_then=poweroff",
            &[],
            VF_TOOLS,
            VF_ENCLAVE_STUBS,
            |d| {
                vf_enclave_sysfs(d, "1", true);
                let link = d.join("pci/0000:00:02.0/driver");
                std::fs::remove_file(&link).unwrap();
                std::os::unix::fs::symlink(d.join("drivers/igbvf"), link).unwrap();
            },
            |d| calls = std::fs::read_to_string(d.join("calls")).unwrap_or_default(),
        );
        let r = result_of(&out, "vf_net");
        assert_eq!(r["problem"], "no interface is bound to virtio_net", "{out}");
        assert_eq!(r["iface"], "");
        assert!(!calls.contains("insmod"), "{calls}");
    }

    #[test]
    fn vf_host_fails_when_the_vf_stays_visible_or_the_file_differs() {
        let cmd = "atoll.role=host atoll.actions=vf_host";
        let (out, _, _) = run_vf_host(cmd, "NOT_HIDDEN=1");
        let r = result_of(&out, "vf_host");
        assert_eq!(r["hidden1"], false);
        assert_eq!(
            r["problem"],
            "the VF's config space read 01000002 while enclave 1 owned it"
        );
        assert!(
            out.contains("ATOLL-ACTION-FAILED vf_host: the VF's config space read"),
            "{out}"
        );
        let (out, _, _) = run_vf_host(cmd, "MATCHES=false");
        assert_eq!(
            result_of(&out, "vf_host")["problem"],
            "enclave 1's file did not arrive intact"
        );
        let (out, _, _) = run_vf_host(cmd, "PING_OK=99");
        assert_eq!(
            result_of(&out, "vf_host")["problem"],
            "99 of 100 pings from the host to enclave 1 came back"
        );
        let (out, _, _) = run_vf_host(cmd, r#"ENCLAVE_PROBLEM='"no carrier on eth0 in 30 s"'"#);
        assert_eq!(
            result_of(&out, "vf_host")["problem"],
            "enclave 1: no carrier on eth0 in 30 s"
        );
    }

    #[test]
    fn vf_host_outside_runs_the_held_back_enclave() {
        let (out, calls, descs) = run_vf_host(
            "atoll.role=host atoll.actions=vf_host_outside atoll.net_outside=0x7f0000000000",
            "PING_OK=0",
        );
        let r = result_of(&out, "vf_host_outside");
        assert_eq!(r["problem"], "", "{out}");
        assert_eq!(r["hidden1"], true);
        assert_eq!(r["recv1"], Value::Null, "no file in this case");
        assert!(!calls.contains("--tcp-recv"), "{calls}");
        assert!(
            calls.contains("--until ATOLL-RESULT vf_dma_outside "),
            "{calls}"
        );
        assert_eq!(descs.len(), 1);
        assert!(
            descs[0].contains("atoll.actions=vf_dma_outside atoll.net_outside=0x7f0000000000 atoll.net_pings=10 iomem=relaxed"),
            "{}",
            descs[0]
        );
        assert!(
            out.contains("ATOLL-RESULT vf_host_outside_enclave1 "),
            "the enclave's result under its own tag: {out}"
        );
        assert!(!out.contains("ATOLL-RESULT vf_host_enclave1 "), "{out}");
        // pool-canary: the pool canary's address from atoll.dma_canaries=ATOLL,POOL.
        let (_, _, descs) = run_vf_host(
            "atoll.role=host atoll.actions=vf_host_outside atoll.net_outside=pool-canary \
             atoll.dma_canaries=0x1000,0x40e10000",
            "PING_OK=0",
        );
        assert!(
            descs[0].contains("atoll.net_outside=0x40e10000 "),
            "{}",
            descs[0]
        );
        let (out, _, _) = run_vf_host("atoll.role=host atoll.actions=vf_host_outside", "");
        assert!(
            out.contains("ATOLL-ACTION-FAILED vf_host_outside: no atoll.net_outside=GPA\n"),
            "{out}"
        );
    }

    /// The tools of the virtio actions: the SR-IOV ones and checksums.
    const VIRTIO_TOOLS: &[(&str, &str)] = &[
        ("sed", "sed"),
        ("tr", "tr"),
        ("grep", "grep"),
        ("head", "head"),
        ("tail", "tail"),
        ("readlink", "readlink"),
        ("dd", "dd"),
        ("mkdir", "mkdir"),
        ("cp", "cp"),
        ("rm", "rm"),
        ("sha256sum", "sha256sum"),
        ("sync", "true"),
    ];

    /// SHA-256 of a file, by the host's sha256sum.
    fn sha256_of(path: &Path) -> String {
        let o = Command::new("sha256sum").arg(path).output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    }

    /// An enclave with its virtio devices as sysfs shows them (eth0 and eth1 bound to
    /// virtio_net, carrier up): hvc0 among the kernel's consoles when `hvc`, disk vda of
    /// `sectors` when given, and the disk's files in the mount point.
    fn virtio_enclave_sysfs(dir: &Path, hvc: bool, sectors: Option<&str>) {
        vf_enclave_sysfs(dir, "1", false);
        std::fs::create_dir_all(dir.join("tty/console")).unwrap();
        if hvc {
            std::fs::create_dir_all(dir.join("tty/hvc0")).unwrap();
            std::fs::write(dir.join("tty/console/active"), "ttyS0 hvc0\n").unwrap();
            std::fs::write(dir.join("hvc0"), "").unwrap();
        } else {
            std::fs::write(dir.join("tty/console/active"), "ttyS0\n").unwrap();
        }
        if let Some(n) = sectors {
            std::fs::create_dir_all(dir.join("block/vda")).unwrap();
            std::fs::write(dir.join("block/vda/size"), format!("{n}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.join("virtio/mnt")).unwrap();
        std::fs::write(dir.join("virtio/mnt/hello.txt"), "hello from the build\n").unwrap();
        std::fs::write(dir.join("virtio/mnt/host.bin"), "abc").unwrap();
    }

    /// Runs virtio_guest; returns stdout, the calls, what it wrote to hvc0 and the SHA-256 of
    /// the enclave.bin it left.
    fn run_virtio_guest(
        cmdline: &str,
        hvc: bool,
        sectors: Option<&str>,
    ) -> (String, String, String, String) {
        let (mut calls, mut hvc0, mut sha) = (String::new(), String::new(), String::new());
        let (out, _) = run_actions_sandbox(
            cmdline,
            &[],
            VIRTIO_TOOLS,
            VF_ENCLAVE_STUBS,
            |d| virtio_enclave_sysfs(d, hvc, sectors),
            |d| {
                calls = std::fs::read_to_string(d.join("calls")).unwrap_or_default();
                hvc0 = std::fs::read_to_string(d.join("hvc0")).unwrap_or_default();
                if d.join("virtio/mnt/enclave.bin").exists() {
                    sha = sha256_of(&d.join("virtio/mnt/enclave.bin"));
                }
            },
        );
        (out, calls, hvc0, sha)
    }

    #[test]
    fn virtio_guest_uses_its_console_network_and_disk() {
        let (out, calls, hvc0, sha) = run_virtio_guest(
            "atoll.actions=virtio_guest atoll.net_ip=10.9.0.2/24 atoll.net_peer=10.9.0.1 \
             atoll.net_pings=20 atoll.net_bytes=65536 atoll.net_then=poweroff",
            true,
            Some("16384"),
        );
        let r = result_of(&out, "virtio_guest");
        assert_eq!(r["problem"], "", "{out}");
        assert_eq!(r["hvc0"], true);
        assert_eq!(r["consoles"], "ttyS0 hvc0");
        assert_eq!(r["iface"], "eth0");
        assert_eq!(r["pings_received"], 20);
        assert_eq!(r["tcp_bytes"], 65536);
        assert_eq!(r["tcp_sha256"], "5eed");
        assert_eq!(r["disk_sectors"], 16384);
        assert_eq!(r["mounted"], true);
        assert_eq!(r["unmounted"], true);
        assert_eq!(r["hello"], "hello from the build");
        assert_eq!(
            r["host_sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // 256 KiB of random bytes, reported with the checksum they have.
        assert_eq!(sha.len(), 64);
        assert_eq!(r["enclave_sha256"], sha);
        assert!(out.contains("mount -t ext4 /dev/vda "), "{out}");
        assert!(out.contains("umount "), "{out}");
        for step in [
            "ip link set eth0 up",
            "ip addr add 10.9.0.2/24 dev eth0",
            "ping -c 20 -i 0.2 -W 5 10.9.0.1",
            "atoll-check --tcp-send 10.9.0.1 5001 --bytes 65536 --seed 1 --timeout 300",
        ] {
            assert!(calls.contains(step), "{step}: {calls}");
        }
        // hvc0 got the same result line, then the prompt; no input came (EOF): "none".
        let line = format!(
            "ATOLL-RESULT virtio_guest {}",
            out.lines()
                .find_map(|l| l.strip_prefix("ATOLL-RESULT virtio_guest "))
                .unwrap()
        );
        assert!(hvc0.contains(&line), "{hvc0}");
        assert!(
            hvc0.ends_with("ATOLL-VIRTIO-INPUT?\nATOLL-VIRTIO-INPUT none\n"),
            "{hvc0}"
        );
        assert!(out.contains("ATOLL-ACTIONS end failed=0"), "{out}");
    }

    #[test]
    fn virtio_guest_says_what_is_missing() {
        // No hvc0: the first problem; nothing goes to a console that is not there.
        let (out, _, hvc0, _) = run_virtio_guest(
            "atoll.actions=virtio_guest atoll.net_then=poweroff",
            false,
            Some("16384"),
        );
        let r = result_of(&out, "virtio_guest");
        assert_eq!(r["problem"], "no hvc0", "{out}");
        assert_eq!(r["hvc0"], false);
        assert_eq!(r["mounted"], true);
        assert_eq!(hvc0, "");
        // A disk whose capacity never came: 30 s of waiting, then said.
        let (out, _, _, sha) = run_virtio_guest(
            "atoll.actions=virtio_guest atoll.net_then=poweroff",
            true,
            Some("0"),
        );
        let r = result_of(&out, "virtio_guest");
        assert_eq!(r["problem"], "no disk vda with sectors (size 0)", "{out}");
        assert_eq!(r["mounted"], false);
        assert_eq!(out.matches("slept 1").count(), 30, "{out}");
        assert_eq!(sha, "", "nothing written");
        // No disk at all.
        let (out, _, _, _) = run_virtio_guest(
            "atoll.actions=virtio_guest atoll.net_then=poweroff",
            true,
            None,
        );
        assert_eq!(
            result_of(&out, "virtio_guest")["problem"],
            "no disk vda with sectors (size null)",
            "{out}"
        );
    }

    /// `atoll` for virtio_host: create keeps the description, console answers as the enclave
    /// would (host.bin's checksum as found in the mount point; an enclave.bin it writes there,
    /// reported with $ENCLAVE_SHA when set), stats and destroy log.
    const VIRTIO_HOST_STUBS: &str = r#"
load_modules() { log "load_modules $*"; }
atoll() {
    log "atoll $*"
    case "$1" in
        create) cp "$2" "$SANDBOX/created"; mkdir -p "$SANDBOX/run/virtio1"
                echo "daemon started" > "$SANDBOX/run/virtio1/channeld.log"
                echo 99 > "$SANDBOX/run/virtio1/channeld.pid" ;;
        console) case "$5" in
                     "ATOLL-RESULT virtio_guest")
                         echo "enclave bytes" > "$SANDBOX/virtio/mnt/enclave.bin"
                         h=$(sha256sum "$SANDBOX/virtio/mnt/host.bin"); h=${h%% *}
                         w=$(sha256sum "$SANDBOX/virtio/mnt/enclave.bin"); w=${ENCLAVE_SHA:-${w%% *}}
                         printf 'ATOLL-RESULT virtio_guest {"hvc0":true,"host_sha256":"%s","enclave_sha256":"%s","problem":""}\r\n' "$h" "$w" ;;
                     *) echo "$5" ;;
                 esac ;;
        stats) echo '{"exits":12}' ;;
        destroy) rm -f "$SANDBOX/run/virtio1/channeld.pid" ;;
    esac
}
atoll_check() {
    log "atoll-check $*"
    echo "{\"bytes\":$6,\"error\":null,\"matches\":${MATCHES:-true},\"seconds\":3.0,\"sha256\":\"5eed\"}"
}
"#;

    fn run_virtio_host(cmdline: &str, env: &str) -> (String, String, String) {
        let (mut calls, mut desc) = (String::new(), String::new());
        let (out, _) = run_actions_sandbox(
            cmdline,
            &[],
            VIRTIO_TOOLS,
            &format!("{env}\n{VF_ENCLAVE_STUBS}\n{VIRTIO_HOST_STUBS}"),
            |d| {
                std::fs::create_dir_all(d.join("net/atl0/statistics")).unwrap();
                std::fs::write(d.join("net/atl0/statistics/rx_packets"), "240\n").unwrap();
                std::fs::write(d.join("net/atl0/statistics/tx_packets"), "250\n").unwrap();
            },
            |d| {
                calls = std::fs::read_to_string(d.join("calls")).unwrap_or_default();
                desc = std::fs::read_to_string(d.join("created")).unwrap_or_default();
            },
        );
        (out, calls, desc)
    }

    #[test]
    fn virtio_host_serves_an_enclave_and_reads_its_file_back() {
        let (out, calls, desc) = run_virtio_host(
            "atoll.role=host atoll.actions=virtio_host atoll.lc_cores=1,1 atoll.net_pings=30 \
             atoll.lc_args=atoll.tolerate=x",
            "",
        );
        let r = result_of(&out, "virtio_host");
        assert_eq!(r["problem"], "", "{out}");
        assert_eq!(r["create"]["rc"], 0);
        assert_eq!(r["tap"]["rc"], 0);
        assert_eq!(r["console_rc"], 0);
        assert_eq!(r["console_input_rc"], 0);
        assert_eq!(r["recv"]["matches"], true);
        assert_eq!(r["host_pings"]["received"], 30);
        assert_eq!(r["tap_stats"]["rx_tap"], 240);
        assert_eq!(r["destroy"]["rc"], 0);
        assert_eq!(r["channeld_after_destroy"], "");
        assert!(r.get("channeld_log").is_none(), "only on a failure: {r}");
        // host.bin written before create is what the enclave read; its enclave.bin is what the
        // host reads back.
        let host_sha = r["host_sha256"].as_str().unwrap();
        assert_eq!(host_sha.len(), 64);
        assert_eq!(
            result_of(&out, "virtio_host_enclave")["host_sha256"],
            host_sha
        );
        assert_eq!(
            r["enclave_file_sha256"],
            result_of(&out, "virtio_host_enclave")["enclave_sha256"]
        );
        // The description: one core, the three devices, the image writable.
        assert!(
            desc.starts_with("name = \"virtio1\"\ncores = [1]\nmemory_mib = 256\n"),
            "{desc}"
        );
        assert!(desc.contains(
            "cmdline = \"console=ttyS0 console=hvc0 loglevel=5 atoll.expect_cpus=1 atoll.expect_mem=256 \
             atoll.actions=virtio_guest atoll.net_ip=10.9.0.2/24 atoll.net_peer=10.9.0.1 \
             atoll.net_bytes=4194304 atoll.net_pings=30 atoll.tolerate=x\""
        ), "{desc}");
        assert!(
            desc.ends_with(
                "[[virtio]]\nkind = \"console\"\n\n[[virtio]]\nkind = \"net\"\ntap = \"atl0\"\n\n\
             [[virtio]]\nkind = \"blk\"\npath = \"/var/lib/atoll/disk.img\"\n"
            ),
            "{desc}"
        );
        // The receiver runs in the background: its stub logs whenever the shell gets to it.
        assert!(
            calls.contains("atoll-check --tcp-recv 5001 --timeout 700 --bytes 4194304 --seed 1"),
            "{calls}"
        );
        let order = [
            "atoll create ",
            "ip addr add 10.9.0.1/24 dev atl0",
            "atoll console virtio1 --no-input --until ATOLL-RESULT virtio_guest --timeout 600",
            "atoll console virtio1 --no-input --until ATOLL-VIRTIO-INPUT? --timeout 120",
            "atoll console virtio1 --until ATOLL-VIRTIO-INPUT typed-through-virtio --timeout 120",
            "ping -c 30 -i 0.2 -W 5 10.9.0.2",
            "atoll stats virtio1 --json",
            "atoll destroy virtio1 --online-cores",
        ];
        let mut at = 0;
        for step in order {
            at += calls[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{step} after {at}: {calls}"));
        }
        // The image is loop-mounted before create (host.bin) and after destroy (enclave.bin).
        assert_eq!(
            out.matches("mount -o loop /var/lib/atoll/disk.img ")
                .count(),
            2,
            "{out}"
        );
        assert!(out.contains("ATOLL-ACTIONS end failed=0"), "{out}");
    }

    #[test]
    fn virtio_host_says_which_check_failed_with_the_daemons_log() {
        let (out, _, _) = run_virtio_host(
            "atoll.role=host atoll.actions=virtio_host",
            "ENCLAVE_SHA=00ff",
        );
        let r = result_of(&out, "virtio_host");
        let p = r["problem"].as_str().unwrap();
        assert!(
            p.starts_with("enclave.bin reads '") && p.ends_with("the enclave wrote 00ff"),
            "{p}"
        );
        assert_eq!(r["channeld_log"], "daemon started", "{r}");
        assert!(
            out.contains("ATOLL-ACTION-FAILED virtio_host: enclave.bin reads"),
            "{out}"
        );
        let (out, _, _) =
            run_virtio_host("atoll.role=host atoll.actions=virtio_host", "MATCHES=false");
        assert_eq!(
            result_of(&out, "virtio_host")["problem"],
            "the enclave's TCP stream did not arrive intact",
            "{out}"
        );
    }

    fn bzimage(version: u16, xloadflags: u8) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0x1fe] = 0x55;
        b[0x1ff] = 0xaa;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        b[0x236] = xloadflags;
        b
    }

    #[test]
    fn bzimages_are_recognised() {
        assert_eq!(check_bzimage(&bzimage(0x020f, 0x7f)).unwrap(), "2.15");
        let err = |b: &[u8]| check_bzimage(b).unwrap_err().to_string();
        assert!(err(&bzimage(0x020b, 1)).contains("boot protocol 2.11"));
        assert!(err(&bzimage(0x020f, 0)).contains("XLF_KERNEL_64"));
        assert!(err(b"\x7fELF").contains("too short"));
        let mut elf = bzimage(0x020f, 1);
        elf[0x202] = b'X';
        assert!(err(&elf).contains("not a bzImage"));
    }

    #[test]
    fn guest_kernel_arguments() {
        assert_eq!(
            GuestKernel::from_args(None, None).unwrap(),
            GuestKernel::default()
        );
        assert!(GuestKernel::default().is_default());
        assert_eq!(
            GuestKernel::from_args(None, Some("cloud")).unwrap(),
            GuestKernel::Package(KernelChoice::Newest("cloud".into()))
        );
        let e = format!(
            "{:#}",
            GuestKernel::from_args(None, Some("bzImage")).unwrap_err()
        );
        assert!(e.starts_with("--guest-kernel-package bzImage"), "{e}");
        let dir = std::env::temp_dir().join(format!("xtask-gk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("bzImage");
        std::fs::write(&good, bzimage(0x020f, 1)).unwrap();
        let bad = dir.join("config");
        std::fs::write(&bad, "CONFIG_X86_64=y\n").unwrap();
        assert_eq!(
            GuestKernel::from_args(Some(&good), None).unwrap(),
            GuestKernel::File(good.clone())
        );
        let e = format!(
            "{:#}",
            GuestKernel::from_args(Some(&bad), None).unwrap_err()
        );
        assert!(
            e.contains(&format!("--guest-kernel {}", bad.display())) && e.contains("too short"),
            "{e}"
        );
        let missing = dir.join("missing");
        let e = format!(
            "{:#}",
            GuestKernel::from_args(Some(&missing), None).unwrap_err()
        );
        assert!(e.contains("cannot read the file"), "{e}");
        assert!(GuestKernel::from_args(Some(&good), Some("cloud")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cache_keys_change_with_every_input() {
        let base = [("package", b"a".as_slice()), ("init", b"x".as_slice())];
        let k = cache_key(&base);
        assert_eq!(k.len(), 16);
        assert_eq!(k, cache_key(&base));
        assert_ne!(
            k,
            cache_key(&[("package", b"a".as_slice()), ("init", b"y".as_slice())])
        );
        assert_ne!(
            k,
            cache_key(&[("package", b"b".as_slice()), ("init", b"x".as_slice())])
        );
        // Field boundaries count: "ab"+"" differs from "a"+"b".
        assert_ne!(
            cache_key(&[("p", b"ab".as_slice()), ("q", b"".as_slice())]),
            cache_key(&[("p", b"a".as_slice()), ("q", b"b".as_slice())])
        );
    }

    #[test]
    fn image_directories() {
        let p = "linux-image-6.1.0-56-amd64";
        assert!(is_image_dir_of(
            "linux-image-6.1.0-56-amd64-d36d47bfa080ef5e",
            p
        ));
        assert!(!is_image_dir_of(
            "linux-image-6.1.0-56-cloud-amd64-9dbeefe78200af12",
            p
        ));
        assert!(!is_image_dir_of(
            "linux-image-6.1.0-56-amd64-d36d47bfa080ef5e.tmp-12",
            p
        ));
        assert!(!is_image_dir_of("linux-image-6.1.0-56-amd64-xyz", p));
        assert!(!is_image_dir_of("debs", p));
        assert!(!is_image_dir_of("kernels", p));
    }

    #[test]
    fn static_elf_detection() {
        // A minimal ELF64 x86-64 header with one program header of the given type.
        let elf = |ty: u32| {
            let mut b = vec![0u8; 64 + 56];
            b[..4].copy_from_slice(b"\x7fELF");
            b[4] = 2;
            b[18] = 62;
            b[32..40].copy_from_slice(&64u64.to_le_bytes());
            b[54..56].copy_from_slice(&56u16.to_le_bytes());
            b[56..58].copy_from_slice(&1u16.to_le_bytes());
            b[64..68].copy_from_slice(&ty.to_le_bytes());
            b
        };
        assert!(is_static_elf(&elf(1)).unwrap());
        assert!(!is_static_elf(&elf(3)).unwrap());
        assert!(is_static_elf(b"#!/bin/sh\n").is_err());
        let mut arm = elf(1);
        arm[18] = 183;
        assert!(is_static_elf(&arm).is_err());
        assert!(is_static_elf(&elf(1)[..66]).is_err());
        // The host's own shell is dynamic on Debian.
        if let Ok(sh) = std::fs::read("/bin/bash") {
            assert!(!is_static_elf(&sh).unwrap());
        }
    }

    #[test]
    fn console_parsing() {
        let console =
            "[    0.000000] Linux version 6.1.0\natoll-init: /atoll-check --expect-cpus 2\n\
                       ATOLL-GUEST-CHECK {\"ok\":true,\"cpus\":2}\nATOLL-GUEST-EXIT status=0\n\
                       [    3.1] reboot: Power down\n";
        let r = parse_console(console).unwrap().unwrap();
        assert!(r.ok);
        assert_eq!(r.report["cpus"], 2);
        assert_eq!(r.exit_status, Some(0));
        // A kernel message may precede it on the same line.
        let mixed = "[ 1.0] random: crng init doneATOLL-GUEST-CHECK {\"ok\":false}\n";
        let r = parse_console(mixed).unwrap().unwrap();
        assert!(!r.ok);
        assert_eq!(r.exit_status, None);
        assert!(parse_console("no report\n").unwrap().is_none());
        assert!(parse_console("ATOLL-GUEST-CHECK {oops\n").is_err());
        assert!(parse_console("ATOLL-GUEST-CHECK {\"cpus\":1}\n").is_err());
    }
}
