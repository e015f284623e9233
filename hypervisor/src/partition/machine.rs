//! The machine description: the TOML file passed to atoll as the Multiboot2 module `machine`.
//! It names the host's Linux (the root partition: the real machine minus what atoll and the
//! enclaves own), the enclave memory pool and the boot-time enclaves.
//!
//! ```toml
//! [host]
//! kernel = "host-vmlinuz"   # the module holding the host's kernel (a bzImage)
//! initrd = "host-initrd"    # the module holding its initramfs (optional)
//! cmdline = "console=ttyS0" # its command line (optional, at most 1024 bytes)
//! cores = "rest"            # "rest": every core no boot-time enclave owns (the default);
//!                           #   or a list of APIC ids, the first boots
//! serial_input = false      # atoll's COM1 input goes to the host (at most one partition)
//!
//! [pool]
//! memory_mib = 512          # the enclave memory pool, carved out of RAM at boot: a multiple
//!                           #   of 2 (whole 2 MiB pages), at least the boot-time enclaves' RAM
//!
//! [iommu]                   # optional
//! blocked = ["0000:00:06.0"] # PCI functions no partition owns: their DMA is blocked
//! allow_unsafe_dma = false  # (on a machine without VT-d) let enclaves own devices anyway
//! dma_canaries = false      # test aid: two pages (atoll's, the pool's) whose contents atoll
//!                           #   checks at the end; their addresses go on the host's cmdline
//! storm_faults = 64         # a function with this many IOMMU faults within storm_window_ms
//! storm_window_ms = 1000    #   is stopped (bus mastering off, DMA blocked)
//!
//! [[enclave]]               # boot-time enclaves, as in the `enclaves` module (optional)
//! name = "alpha"
//! cores = [1]
//! memory_mib = 16
//! image = "suite64"
//! entry = "long64"
//! ```
//!
//! The `[[enclave]]` tables follow exactly the rules of [`super::config`] (checked by the same
//! code, errors named `enclave[i].…`), except that a machine may have none: the host alone.
//! No enclave may be named `host`, the root partition's name in console lines and reports.
//!
//! This is the description, parsed and checked; `boot_flow::host` boots it.

use super::config::{self, err, ConfigError, Context, EnclaveConfig, MAX_CMDLINE};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// Largest enclave pool: 1 TiB, far beyond any machine atoll runs on, and small enough that
/// byte counts derived from it never overflow.
pub const MAX_POOL_MIB: u64 = 1 << 20;
/// The pool's granule: enclave RAM is 2 MiB-aligned ([`super::RAM_ALIGN`]) and the host's
/// second-stage tables map around the pool with 2 MiB pages, so the pool is whole 2 MiB pages.
pub const POOL_GRANULE_MIB: u64 = super::RAM_ALIGN >> 20;
/// The name the root partition goes by (console prefix `[host]`, the summary's `host`).
pub const HOST_NAME: &str = "host";

/// The root partition: the host's Linux.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Module holding its kernel (a bzImage).
    pub kernel: String,
    /// Module holding its initial RAM disk.
    pub initrd: Option<String>,
    /// Its kernel command line.
    pub cmdline: String,
    /// The physical cores it runs on, by APIC id; the first boots, the others are its APs.
    pub cores: Vec<u32>,
    /// Whether bytes arriving on atoll's COM1 go to the host's COM1 receiver.
    pub serial_input: bool,
}

/// A checked machine description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineDescription {
    /// The root partition.
    pub host: HostConfig,
    /// Size of the enclave memory pool, a whole number of 2 MiB pages.
    pub pool_bytes: u64,
    /// Boot-time enclaves, in description order.
    pub enclaves: Vec<EnclaveConfig>,
    /// What the IOMMU is told beyond the partitions' ownership.
    pub iommu: IommuConfig,
}

/// A PCI function's address: segment, bus, device (0–31), function (0–7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0–31.
    pub device: u8,
    /// Function number, 0–7.
    pub function: u8,
}

impl PciAddress {
    /// The requester id the function's DMA and interrupts carry (PCIe Base §2.2.6.2): bus in
    /// bits 15:8, device 7:3, function 2:0.
    pub fn requester_id(&self) -> u16 {
        u16::from(self.bus) << 8 | u16::from(self.device) << 3 | u16::from(self.function)
    }

    /// Parses `SSSS:BB:DD.F` (hex; the segment may be left out: `BB:DD.F`).
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let (seg, bus, df) = match parts.as_slice() {
            [seg, bus, df] => (*seg, *bus, *df),
            [bus, df] => ("0", *bus, *df),
            _ => return None,
        };
        let (dev, func) = df.split_once('.')?;
        let hex = |x: &str, max: u32| {
            (!x.is_empty() && x.len() <= 4)
                .then(|| u32::from_str_radix(x, 16).ok())
                .flatten()
                .filter(|v| *v <= max)
        };
        Some(Self {
            segment: hex(seg, 0xffff)? as u16,
            bus: hex(bus, 0xff)? as u8,
            device: hex(dev, 31)? as u8,
            function: hex(func, 7)? as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// The `[iommu]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuConfig {
    /// Functions no partition owns: blocked (their DMA faults, their interrupts are dropped).
    pub blocked: Vec<PciAddress>,
    /// Whether devices may be given to enclaves on a machine without an IOMMU.
    pub allow_unsafe_dma: bool,
    /// Whether atoll sets up the two DMA canary pages (a test aid).
    pub dma_canaries: bool,
    /// Faults within [`IommuConfig::storm_window_ms`] that stop a function.
    pub storm_faults: u32,
    /// The storm window, in milliseconds.
    pub storm_window_ms: u64,
}

impl Default for IommuConfig {
    fn default() -> Self {
        Self {
            blocked: Vec::new(),
            allow_unsafe_dma: false,
            dma_canaries: false,
            storm_faults: DEFAULT_STORM_FAULTS,
            storm_window_ms: DEFAULT_STORM_WINDOW_MS,
        }
    }
}

/// Default `iommu.storm_faults`.
pub const DEFAULT_STORM_FAULTS: u32 = 64;
/// Default `iommu.storm_window_ms`.
pub const DEFAULT_STORM_WINDOW_MS: u64 = 1000;

/// Most functions `iommu.blocked` may name.
pub const MAX_BLOCKED: usize = 256;

/// `host.cores` as written.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
enum HostCores {
    /// Every online core no boot-time enclave owns.
    #[default]
    Rest,
    /// These APIC ids.
    List(Vec<u32>),
}

impl<'de> Deserialize<'de> for HostCores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HostCores;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"rest\" or a list of APIC ids")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HostCores, E> {
                if s == "rest" {
                    Ok(HostCores::Rest)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HostCores, A::Error> {
                let mut cores = Vec::new();
                while let Some(c) = seq.next_element::<u32>()? {
                    cores.push(c);
                }
                Ok(HostCores::List(cores))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostTable {
    kernel: String,
    #[serde(default)]
    initrd: Option<String>,
    #[serde(default)]
    cmdline: String,
    #[serde(default)]
    cores: HostCores,
    #[serde(default)]
    serial_input: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolTable {
    memory_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IommuTable {
    #[serde(default)]
    blocked: Vec<String>,
    #[serde(default)]
    allow_unsafe_dma: bool,
    #[serde(default)]
    dma_canaries: bool,
    #[serde(default = "default_storm_faults")]
    storm_faults: u32,
    #[serde(default = "default_storm_window_ms")]
    storm_window_ms: u64,
}

fn default_storm_faults() -> u32 {
    DEFAULT_STORM_FAULTS
}

fn default_storm_window_ms() -> u64 {
    DEFAULT_STORM_WINDOW_MS
}

impl Default for IommuTable {
    fn default() -> Self {
        Self {
            blocked: Vec::new(),
            allow_unsafe_dma: false,
            dma_canaries: false,
            storm_faults: DEFAULT_STORM_FAULTS,
            storm_window_ms: DEFAULT_STORM_WINDOW_MS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    host: HostTable,
    pool: PoolTable,
    #[serde(default)]
    iommu: IommuTable,
    #[serde(default)]
    enclave: Vec<EnclaveConfig>,
}

fn check_iommu(t: IommuTable) -> Result<IommuConfig, ConfigError> {
    if t.blocked.len() > MAX_BLOCKED {
        return Err(err(
            "iommu.blocked",
            format!("{} functions; at most {MAX_BLOCKED}", t.blocked.len()),
        ));
    }
    let mut blocked: Vec<PciAddress> = Vec::new();
    for (i, s) in t.blocked.iter().enumerate() {
        let a = PciAddress::parse(s).ok_or_else(|| {
            err(
                format!("iommu.blocked[{i}]"),
                format!("'{s}' is not a PCI address SSSS:BB:DD.F (hex, device ≤ 1f, function ≤ 7)"),
            )
        })?;
        if blocked.contains(&a) {
            return Err(err(
                format!("iommu.blocked[{i}]"),
                format!("{a} is named twice"),
            ));
        }
        blocked.push(a);
    }
    if t.storm_faults == 0 || t.storm_faults > 1_000_000 {
        return Err(err(
            "iommu.storm_faults",
            format!("{}: between 1 and 1000000", t.storm_faults),
        ));
    }
    if t.storm_window_ms == 0 || t.storm_window_ms > 3_600_000 {
        return Err(err(
            "iommu.storm_window_ms",
            format!("{}: between 1 and 3600000 (an hour)", t.storm_window_ms),
        ));
    }
    Ok(IommuConfig {
        blocked,
        allow_unsafe_dma: t.allow_unsafe_dma,
        dma_canaries: t.dma_canaries,
        storm_faults: t.storm_faults,
        storm_window_ms: t.storm_window_ms,
    })
}

/// Parses and checks a machine description against what `ctx` knows of the machine and image.
///
/// `host.cores = "rest"` is resolved against `ctx.cores`, so it needs them: with `ctx.cores`
/// unknown only an explicit list is accepted.
pub fn parse(text: &str, ctx: &Context) -> Result<MachineDescription, ConfigError> {
    let file: File = config::from_toml(text)?;
    let enclaves = file.enclave;
    config::check(&enclaves, ctx)?;
    if let Some(i) = enclaves.iter().position(|e| e.name == HOST_NAME) {
        return Err(err(
            format!("enclave[{i}].name"),
            format!("'{HOST_NAME}' is the root partition's name"),
        ));
    }
    let host = check_host(file.host, &enclaves, ctx)?;
    let pool_bytes = check_pool(file.pool.memory_mib, &enclaves)?;
    let iommu = check_iommu(file.iommu)?;
    Ok(MachineDescription {
        host,
        pool_bytes,
        enclaves,
        iommu,
    })
}

/// The enclave owning `core` (any of the boot-time ones, those that run `after` another too:
/// a core stays the enclaves' for the whole run).
fn owner(enclaves: &[EnclaveConfig], core: u32) -> Option<&EnclaveConfig> {
    enclaves.iter().find(|e| e.cores.contains(&core))
}

fn check_host(
    host: HostTable,
    enclaves: &[EnclaveConfig],
    ctx: &Context,
) -> Result<HostConfig, ConfigError> {
    for (field, name) in [
        ("kernel", Some(&host.kernel)),
        ("initrd", host.initrd.as_ref()),
    ] {
        let Some(name) = name else { continue };
        let field = format!("host.{field}");
        if name.is_empty() {
            return Err(err(field, "names no module"));
        }
        if let Some(modules) = ctx.modules {
            if !modules.contains(&name.as_str()) {
                return Err(err(
                    field,
                    format!("no module named '{name}' (modules: {})", modules.join(", ")),
                ));
            }
        }
    }
    if host.cmdline.len() > MAX_CMDLINE {
        return Err(err(
            "host.cmdline",
            format!("{} bytes, at most {MAX_CMDLINE}", host.cmdline.len()),
        ));
    }
    let cores = match host.cores {
        HostCores::Rest => {
            let Some(online) = ctx.cores else {
                return Err(err(
                    "host.cores",
                    "\"rest\" needs the machine's processors, which are not known here: list the APIC ids",
                ));
            };
            let rest: Vec<u32> = online
                .iter()
                .copied()
                .filter(|&c| owner(enclaves, c).is_none())
                .collect();
            if rest.is_empty() {
                return Err(err(
                    "host.cores",
                    format!("no core is left for the host: the enclaves own every processor ({online:?})"),
                ));
            }
            rest
        }
        HostCores::List(list) => {
            if list.is_empty() {
                return Err(err("host.cores", "at least one core is needed"));
            }
            for (k, &c) in list.iter().enumerate() {
                if list[..k].contains(&c) {
                    return Err(err("host.cores", format!("core {c} is listed twice")));
                }
                if let Some(e) = owner(enclaves, c) {
                    return Err(err(
                        "host.cores",
                        format!("core {c} belongs to enclave '{}'", e.name),
                    ));
                }
                if let Some(online) = ctx.cores {
                    if !online.contains(&c) {
                        return Err(err(
                            "host.cores",
                            format!(
                                "no processor with APIC id {c} on this machine (it has {online:?})"
                            ),
                        ));
                    }
                }
            }
            list
        }
    };
    if host.serial_input {
        if let Some((j, e)) = enclaves.iter().enumerate().find(|(_, e)| e.serial_input) {
            return Err(err(
                "host.serial_input",
                format!(
                    "enclave[{j}] '{}' takes atoll's serial input too: at most one partition takes it",
                    e.name
                ),
            ));
        }
    }
    Ok(HostConfig {
        kernel: host.kernel,
        initrd: host.initrd,
        cmdline: host.cmdline,
        cores,
        serial_input: host.serial_input,
    })
}

/// Checks the pool's size and that it holds every boot-time enclave's RAM at once. Enclaves
/// that run `after` another count too: the check is a conservative bound that does not model
/// RAM reused after a reclaim. Each enclave counts whole 2 MiB pages, as it is 2 MiB-aligned.
fn check_pool(mib: u64, enclaves: &[EnclaveConfig]) -> Result<u64, ConfigError> {
    const FIELD: &str = "pool.memory_mib";
    if mib == 0 {
        return Err(err(FIELD, "0 is too small"));
    }
    if mib > MAX_POOL_MIB {
        return Err(err(
            FIELD,
            format!("{mib} is too large, at most {MAX_POOL_MIB}"),
        ));
    }
    if !mib.is_multiple_of(POOL_GRANULE_MIB) {
        return Err(err(
            FIELD,
            format!(
                "{mib} is not a multiple of {POOL_GRANULE_MIB}: the pool is whole {POOL_GRANULE_MIB} MiB pages"
            ),
        ));
    }
    // Each enclave's memory_mib is at most config::MAX_MEMORY_MIB and there are at most
    // config::MAX_ENCLAVES of them (both checked), so the sum cannot overflow.
    let need: u64 = enclaves
        .iter()
        .map(|e| e.memory_mib.div_ceil(POOL_GRANULE_MIB) * POOL_GRANULE_MIB)
        .sum();
    if need > mib {
        return Err(err(
            FIELD,
            format!(
                "{mib} MiB cannot hold the boot-time enclaves' {need} MiB (each in whole {POOL_GRANULE_MIB} MiB pages)"
            ),
        ));
    }
    Ok(mib << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in this module's documentation, so the docs cannot drift from the parser.
    fn doc_example() -> String {
        let src = include_str!("machine.rs");
        let start = src.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
        let end = start + src[start..].find("//! ```\n").unwrap();
        src[start..end]
            .lines()
            .map(|l| l.strip_prefix("//!").unwrap().trim_start())
            .collect::<Vec<_>>()
            .join("\n")
    }

    const MODULES: &[&str] = &[
        "host-vmlinuz",
        "host-initrd",
        "suite64",
        "vmlinuz",
        "machine",
    ];

    fn ctx<'a>(cores: &'a [u32]) -> Context<'a> {
        Context {
            cores: Some(cores),
            modules: Some(MODULES),
        }
    }

    const BASE: &str = r#"
        [host]
        kernel = "host-vmlinuz"
        cmdline = "console=ttyS0"

        [pool]
        memory_mib = 64

        [[enclave]]
        name = "alpha"
        cores = [2]
        memory_mib = 16
        image = "suite64"
        entry = "long64"

        [[enclave]]
        name = "linux"
        cores = [4, 5]
        memory_mib = 32
        image = "vmlinuz"
        entry = "linux"
    "#;

    fn error(text: &str, ctx: &Context) -> String {
        format!("{}", parse(text, ctx).unwrap_err())
    }

    #[test]
    fn documented_example_parses() {
        let m = parse(&doc_example(), &ctx(&[0, 1, 2, 3])).unwrap();
        assert_eq!(m.host.kernel, "host-vmlinuz");
        assert_eq!(m.host.initrd.as_deref(), Some("host-initrd"));
        assert_eq!(m.host.cmdline, "console=ttyS0");
        assert_eq!(m.host.cores, [0, 2, 3]);
        assert!(!m.host.serial_input);
        assert_eq!(m.pool_bytes, 512 << 20);
        assert_eq!(m.enclaves.len(), 1);
        assert_eq!(m.enclaves[0].name, "alpha");
        assert_eq!(m.iommu.blocked.len(), 1);
        assert_eq!(m.iommu.blocked[0].to_string(), "0000:00:06.0");
        assert!(!m.iommu.allow_unsafe_dma && !m.iommu.dma_canaries);
    }

    #[test]
    fn pci_addresses() {
        let a = PciAddress::parse("0000:00:06.0").unwrap();
        assert_eq!(a.requester_id(), 0x30);
        let b = PciAddress::parse("01:1f.7").unwrap();
        assert_eq!((b.segment, b.bus, b.device, b.function), (0, 1, 0x1f, 7));
        assert_eq!(b.requester_id(), 0x1ff);
        assert_eq!(b.to_string(), "0000:01:1f.7");
        for bad in [
            "",
            "00:20.0",
            "00:05.8",
            "100:05.0",
            "0:0:0:0.0",
            "00:05",
            "xx:05.0",
            "00:.0",
        ] {
            assert_eq!(PciAddress::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_iommu_table_is_checked() {
        let base = "[host]\nkernel = \"host-vmlinuz\"\ncores = [0]\n[pool]\nmemory_mib = 2\n";
        let m = parse(base, &ctx(&[0])).unwrap();
        assert_eq!(
            m.iommu,
            IommuConfig::default(),
            "absent: nothing blocked, nothing allowed"
        );
        let with = |t: &str| format!("{base}[iommu]\n{t}\n");
        let m = parse(&with("blocked = [\"00:05.0\", \"0001:02:03.4\"]\ndma_canaries = true\nallow_unsafe_dma = true"), &ctx(&[0])).unwrap();
        assert_eq!(m.iommu.blocked.len(), 2);
        assert!(m.iommu.dma_canaries && m.iommu.allow_unsafe_dma);
        let e = error(&with("blocked = [\"00:05.9\"]"), &ctx(&[0]));
        assert!(
            e.contains("iommu.blocked[0]") && e.contains("not a PCI address"),
            "{e}"
        );
        let e = error(
            &with("blocked = [\"00:05.0\", \"0000:00:05.0\"]"),
            &ctx(&[0]),
        );
        assert!(e.contains("iommu.blocked[1]") && e.contains("twice"), "{e}");
        let m = parse(
            &with("storm_faults = 8\nstorm_window_ms = 10000"),
            &ctx(&[0]),
        )
        .unwrap();
        assert_eq!((m.iommu.storm_faults, m.iommu.storm_window_ms), (8, 10_000));
        let e = error(&with("storm_faults = 0"), &ctx(&[0]));
        assert!(e.contains("iommu.storm_faults"), "{e}");
        let e = error(&with("storm_window_ms = 0"), &ctx(&[0]));
        assert!(e.contains("iommu.storm_window_ms"), "{e}");
        let e = error(&with("bogus = 1"), &ctx(&[0]));
        assert!(e.contains("bogus"), "{e}");
        let many: Vec<String> = (0..=MAX_BLOCKED)
            .map(|i| format!("\"{:02x}:{:02x}.0\"", i / 32, i % 32))
            .collect();
        let e = error(
            &with(&format!("blocked = [{}]", many.join(","))),
            &ctx(&[0]),
        );
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn rest_is_every_online_core_no_enclave_owns() {
        let m = parse(BASE, &ctx(&[0, 1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(m.host.cores, [0, 1, 3, 6]);
        assert_eq!(m.host.initrd, None);
        assert_eq!(m.pool_bytes, 64 << 20);
        assert_eq!(m.enclaves.len(), 2);
        // In the order the machine lists its processors (the boot processor first).
        let m = parse(BASE, &ctx(&[6, 0, 2, 1, 3, 4, 5])).unwrap();
        assert_eq!(m.host.cores, [6, 0, 1, 3]);
        // An enclave that runs after another keeps its core from the host too.
        let after = format!(
            "{BASE}{}",
            r#"
            [[enclave]]
            name = "next"
            cores = [2, 3]
            after = "alpha"
            memory_mib = 8
            image = "vmlinuz"
            entry = "linux"
            "#
        );
        let m = parse(&after, &ctx(&[0, 1, 2, 3, 4, 5])).unwrap();
        assert_eq!(m.host.cores, [0, 1]);
        // "rest" is the default, and with no enclaves it is every core.
        let alone = BASE.split("[[enclave]]").next().unwrap();
        assert_eq!(parse(alone, &ctx(&[0, 1])).unwrap().host.cores, [0, 1]);
        assert!(parse(alone, &ctx(&[0])).unwrap().enclaves.is_empty());
        let explicit = alone.replace("[host]", "[host]\ncores = \"rest\"");
        assert_eq!(parse(&explicit, &ctx(&[3, 1])).unwrap().host.cores, [3, 1]);
    }

    #[test]
    fn an_explicit_list_is_kept_in_its_order() {
        let text = BASE.replace("[host]", "[host]\ncores = [3, 0]");
        let m = parse(&text, &ctx(&[0, 1, 2, 3, 4, 5])).unwrap();
        assert_eq!(m.host.cores, [3, 0], "core 1 stays parked");
        // Without the machine's processors, a list is taken as written.
        let unknown = Context {
            cores: None,
            modules: None,
        };
        assert_eq!(parse(&text, &unknown).unwrap().host.cores, [3, 0]);
    }

    #[test]
    fn host_errors_name_the_field() {
        let all = [0, 1, 2, 3, 4, 5];
        let c = ctx(&all);
        let host = |extra: &str| BASE.replace("[host]", &format!("[host]\n{extra}"));
        assert_eq!(
            error(&BASE.replace("\"host-vmlinuz\"", "\"x\""), &c),
            format!(
                "host.kernel: no module named 'x' (modules: {})",
                MODULES.join(", ")
            )
        );
        assert_eq!(
            error(&BASE.replace("\"host-vmlinuz\"", "\"\""), &c),
            "host.kernel: names no module"
        );
        assert!(error(&host("initrd = \"y\""), &c).starts_with("host.initrd: no module named 'y'"),);
        assert_eq!(
            error(&host("initrd = \"\""), &c),
            "host.initrd: names no module"
        );
        let long = "a".repeat(MAX_CMDLINE + 1);
        assert_eq!(
            error(&BASE.replace("console=ttyS0", &long), &c),
            "host.cmdline: 1025 bytes, at most 1024"
        );
        assert_eq!(
            error(&host("cores = [1, 2]"), &c),
            "host.cores: core 2 belongs to enclave 'alpha'"
        );
        assert_eq!(
            error(&host("cores = [5]"), &c),
            "host.cores: core 5 belongs to enclave 'linux'"
        );
        assert_eq!(
            error(&host("cores = [0, 1, 0]"), &c),
            "host.cores: core 0 is listed twice"
        );
        assert_eq!(
            error(&host("cores = []"), &c),
            "host.cores: at least one core is needed"
        );
        assert_eq!(
            error(&host("cores = [9]"), &c),
            "host.cores: no processor with APIC id 9 on this machine (it has [0, 1, 2, 3, 4, 5])"
        );
        // "rest" with nothing left, and "rest" on a machine not known.
        assert_eq!(
            error(BASE, &ctx(&[2, 4, 5])),
            "host.cores: no core is left for the host: the enclaves own every processor ([2, 4, 5])"
        );
        let unknown = Context {
            cores: None,
            modules: Some(MODULES),
        };
        assert!(error(BASE, &unknown).starts_with("host.cores: \"rest\" needs"));
        // Neither another word nor a negative APIC id.
        let e = error(&host("cores = \"all\""), &c);
        assert!(e.contains("\"rest\" or a list of APIC ids"), "{e}");
        assert!(e.starts_with("line 3 `cores = \"all\"`"), "{e}");
        assert!(error(&host("cores = [-1]"), &c).starts_with("line 3"));
    }

    #[test]
    fn serial_input_goes_to_one_partition() {
        let all = [0, 1, 2, 3, 4, 5];
        let host = BASE.replace("[host]", "[host]\nserial_input = true");
        let m = parse(&host, &ctx(&all)).unwrap();
        assert!(m.host.serial_input);
        let enclave = BASE.replace(
            "entry = \"linux\"",
            "entry = \"linux\"\nserial_input = true",
        );
        let m = parse(&enclave, &ctx(&all)).unwrap();
        assert!(!m.host.serial_input && m.enclaves[1].serial_input);
        let both = enclave.replace("[host]", "[host]\nserial_input = true");
        assert_eq!(
            error(&both, &ctx(&all)),
            "host.serial_input: enclave[1] 'linux' takes atoll's serial input too: at most one partition takes it"
        );
    }

    #[test]
    fn pool_errors_name_the_field() {
        let all = [0, 1, 2, 3, 4, 5];
        let pool = |mib: &str| BASE.replace("memory_mib = 64", &format!("memory_mib = {mib}"));
        assert_eq!(
            error(&pool("0"), &ctx(&all)),
            "pool.memory_mib: 0 is too small"
        );
        assert_eq!(
            error(&pool("1048578"), &ctx(&all)),
            "pool.memory_mib: 1048578 is too large, at most 1048576"
        );
        assert_eq!(
            error(&pool("63"), &ctx(&all)),
            "pool.memory_mib: 63 is not a multiple of 2: the pool is whole 2 MiB pages"
        );
        // alpha 16 + linux 32 = 48 MiB: 48 fits exactly, 46 does not.
        assert_eq!(parse(&pool("48"), &ctx(&all)).unwrap().pool_bytes, 48 << 20);
        assert_eq!(
            error(&pool("46"), &ctx(&all)),
            "pool.memory_mib: 46 MiB cannot hold the boot-time enclaves' 48 MiB (each in whole 2 MiB pages)"
        );
        // An odd-sized enclave takes a whole 2 MiB page: 17 + 32 needs 50.
        let odd = pool("48").replace("memory_mib = 16", "memory_mib = 17");
        assert!(error(&odd, &ctx(&all))
            .ends_with("boot-time enclaves' 50 MiB (each in whole 2 MiB pages)"));
        assert!(parse(
            &odd.replace("memory_mib = 48", "memory_mib = 50"),
            &ctx(&all)
        )
        .is_ok());
        // A negative size is not a u64: the parser names the line.
        assert!(error(&pool("-2"), &ctx(&all)).starts_with("line 7 `memory_mib = -2`"));
    }

    #[test]
    fn enclaves_are_checked_by_the_enclave_rules() {
        let all = [0, 1, 2, 3, 4, 5];
        // A rule from config.rs, with config.rs's field name.
        let shared = BASE.replace("cores = [4, 5]", "cores = [2]");
        assert!(error(&shared, &ctx(&all))
            .starts_with("enclave[1].cores: core 2 already belongs to enclave[0] 'alpha'"),);
        assert!(error(&BASE.replace("\"suite64\"", "\"nope\""), &ctx(&all))
            .starts_with("enclave[0].image: no module named 'nope'"));
        assert!(error(BASE, &ctx(&[0, 1, 2, 3, 4]))
            .starts_with("enclave[1].cores: no processor with APIC id 5"));
        // The root partition's name is taken.
        assert_eq!(
            error(&BASE.replace("\"alpha\"", "\"host\""), &ctx(&all)),
            "enclave[0].name: 'host' is the root partition's name"
        );
    }

    #[test]
    fn missing_tables_and_unknown_fields_are_refused() {
        let all = [0, 1, 2, 3, 4, 5];
        for (from, to, word) in [
            (
                "cmdline = ",
                "command_line = ",
                "unknown field `command_line`",
            ),
            (
                "[pool]\n",
                "[pool]\n        colour = 1\n",
                "unknown field `colour`",
            ),
            ("[host]\n", "[gpu]\nx = 1\n[host]\n", "unknown field `gpu`"),
            (
                "entry = \"long64\"",
                "entry = \"long64\"\nweight = 3",
                "unknown field `weight`",
            ),
        ] {
            let e = error(&BASE.replace(from, to), &ctx(&all));
            assert!(e.contains(word), "{word}: {e}");
        }
        let no_pool = BASE.replace("[pool]\n        memory_mib = 64\n", "");
        assert!(error(&no_pool, &ctx(&all)).ends_with("missing field `pool`"));
        let no_host = BASE.replace("[host]\n", "[other]\n");
        assert!(error(&no_host, &ctx(&all)).contains("unknown field `other`"));
        let no_host = BASE.replace(
            "[host]\n        kernel = \"host-vmlinuz\"\n        cmdline = \"console=ttyS0\"\n",
            "",
        );
        assert!(error(&no_host, &ctx(&all)).ends_with("missing field `host`"));
        let no_kernel = BASE.replace("kernel = \"host-vmlinuz\"\n", "");
        assert!(error(&no_kernel, &ctx(&all)).ends_with("missing field `kernel`"));
    }
}
