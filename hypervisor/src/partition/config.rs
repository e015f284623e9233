//! Enclave descriptions: the TOML file passed to atoll as the Multiboot2 module `enclaves`.
//!
//! ```toml
//! [[enclave]]
//! name = "alpha"          # 1–32 characters: a–z, 0–9, '-'
//! cores = [1]             # APIC ids; each core belongs to at most one enclave
//! memory_mib = 16         # guest RAM, from 1 MiB to 64 GiB
//! image = "suite64"       # the module holding the guest image (an ELF)
//! entry = "long64"        # long64: 64-bit mode with identity paging; real16: real mode
//! cmdline = "suite"       # text handed to the guest
//! io_unknown = "ignore"   # ports other than COM1: ignore (reads all ones), fault (#GP), stop
//!
//! [[enclave]]
//! name = "linux"
//! cores = [1, 2]          # a Linux enclave has one vCPU per core; the first boots
//! memory_mib = 256        # at most 3584 (RAM ends below the platform's MMIO window)
//! image = "vmlinuz"       # the module holding the kernel (a bzImage)
//! initrd = "initrd"       # the module holding the initramfs (optional)
//! entry = "linux"         # the Linux 64-bit boot protocol on the virtual platform
//! cmdline = "console=ttyS0"
//! serial_input = true     # atoll's own COM1 input goes to this enclave's COM1 (at most one)
//! devices = []            # PCI functions to pass through ("0000:01:00.1", a VF's address too):
//!                         #   refused without DMA isolation unless the machine allows it
//! # vf = { pf = "0000:01:00.0", index = 0 }   # or a list: VFs by PF and index, resolved at build
//!
//! [[enclave.virtio]]      # virtio devices (entry = "linux"; at most 6, see [`virtio`]):
//! kind = "console"        #   hvc0, at most one, no options
//! [[enclave.virtio]]
//! kind = "net"            #   mac = "02:…" (optional; default derived from name and index),
//! tap = "atoll0"          #   tap = the host's tap device (optional)
//! [[enclave.virtio]]
//! kind = "blk"            #   path = an image file in the host (absolute), read_only = false
//! path = "/srv/linux.img"
//!
//! [[enclave]]
//! name = "next"
//! cores = [1]             # alpha's core, once alpha has ended
//! after = "alpha"         # built and started when alpha has ended and its core and RAM are
//! memory_mib = 16         #   reclaimed (or when alpha failed)
//! image = "suite64"
//! entry = "long64"
//! ```
//!
//! Bare-metal guests (`long64`, `real16`) have one core each. Enclaves share a core only when
//! one runs `after` the other (directly or through a chain of `after`s): `after` names an
//! earlier enclave that shares a core with this one.
//!
//! Parsing and checking live here, shared by atoll (at boot) and `cargo xtask` (before it builds
//! an image), so both reject a bad description with the same message naming the field.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::Deserialize;

pub mod virtio;
pub use virtio::{VirtioConfig, VirtioDevice};

/// Most enclaves one description may declare.
pub const MAX_ENCLAVES: usize = 64;
/// Most guest RAM per enclave.
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;
/// Longest guest command line.
pub const MAX_CMDLINE: usize = 1024;

/// How the guest is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryMode {
    /// 64-bit mode, paging on with identity tables for the first 4 GiB, at the ELF entry.
    Long64,
    /// Real mode at the ELF entry (needs unrestricted guest on VMX).
    Real16,
    /// A Linux kernel (bzImage) through its 64-bit boot protocol, on the enclave virtual
    /// platform (ACPI, x2APIC, I/O APIC, COM1), one vCPU per core.
    Linux,
}

/// Most vCPUs of one Linux enclave.
pub const MAX_VCPUS: usize = 64;
/// Most RAM of a Linux enclave (its RAM ends below the platform's MMIO window at 3.5 GiB).
pub const MAX_LINUX_MEMORY_MIB: u64 = 3584;

/// What happens when the guest touches an I/O port atoll does not emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoPolicy {
    /// Reads return all ones, writes are dropped (an empty port on a PC).
    Ignore,
    /// The access raises #GP(0) in the guest.
    Fault,
    /// The enclave is stopped.
    Stop,
}

/// One enclave.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnclaveConfig {
    /// Its name, used in reports and console prefixes.
    pub name: String,
    /// The physical cores it owns, by APIC id.
    pub cores: Vec<u32>,
    /// Guest RAM.
    pub memory_mib: u64,
    /// Module holding the guest image.
    pub image: String,
    /// Entry mode.
    pub entry: EntryMode,
    /// Module holding the initial RAM disk (Linux enclaves only).
    #[serde(default)]
    pub initrd: Option<String>,
    /// Whether bytes arriving on atoll's COM1 go to this enclave's COM1 receiver (Linux
    /// enclaves only, at most one).
    #[serde(default)]
    pub serial_input: bool,
    /// Text passed to the guest.
    #[serde(default)]
    pub cmdline: String,
    /// Policy for ports atoll does not emulate.
    #[serde(default = "default_io")]
    pub io_unknown: IoPolicy,
    /// The earlier enclave this one waits for: it is built and started once that one has
    /// ended and been reclaimed (or failed), on cores the two share.
    #[serde(default)]
    pub after: Option<String>,
    /// PCI functions to pass through, as `SSSS:BB:DD.F` (checked: [`device_policy`]).
    #[serde(default)]
    pub devices: Vec<String>,
    /// SR-IOV virtual functions to pass through, by PF and index: `vf = { pf = "…", index = 0 }`
    /// or a list of them (resolved through the PF's SR-IOV capability when the enclave is
    /// built; checked: [`device_policy`] with `devices`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub vf: Vec<VfRef>,
    /// `[[enclave.virtio]]` devices, as written (checked and resolved: [`virtio::devices`]).
    #[serde(default)]
    pub virtio: Vec<VirtioConfig>,
}

/// A virtual function of an SR-IOV physical function.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfRef {
    /// The PF's address, `SSSS:BB:DD.F`.
    pub pf: String,
    /// The VF's index (0 is the first VF).
    pub index: u16,
}

/// One table or an array of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<VfRef>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(VfRef),
        Many(Vec<VfRef>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => alloc::vec![v],
        OneOrMany::Many(v) => v,
    })
}

impl EnclaveConfig {
    /// Whether it names any function to pass through.
    pub fn has_devices(&self) -> bool {
        !self.devices.is_empty() || !self.vf.is_empty()
    }

    /// Whether its platform has a PCI bus (a host bridge in its DSDT): for functions passed
    /// through or virtio devices.
    pub fn has_pci_bus(&self) -> bool {
        self.has_devices() || !self.virtio.is_empty()
    }

    /// Its virtio devices with their defaults (errors name `virtio[k].…`; never one for a
    /// description [`check`] accepted).
    pub fn virtio_devices(&self) -> Result<Vec<VirtioDevice>, ConfigError> {
        virtio::devices(&self.name, &self.virtio)
    }
}

/// Most functions one enclave may name.
pub const MAX_DEVICES: usize = 32;

/// Whether an enclave may be given `devices` on this machine: never without DMA isolation
/// unless the machine description's `[iommu] allow_unsafe_dma` says so (a device a guest
/// drives could otherwise DMA anywhere). Whether each function exists and can be passed
/// through is checked when the enclave is built (`boot_flow::passthrough`).
pub fn device_policy(
    has_devices: bool,
    dma_isolation: bool,
    allow_unsafe_dma: bool,
) -> Result<(), ConfigError> {
    if !has_devices || dma_isolation || allow_unsafe_dma {
        return Ok(());
    }
    Err(err(
        "devices",
        "this machine has no DMA isolation (no VT-d unit atoll drives): a device the \
         enclave controls could DMA anywhere; set allow_unsafe_dma = true in the machine \
         description's [iommu] table to allow it",
    ))
}

/// Whether enclave `j` comes before enclave `i` through a chain of `after`s (`list[..i]` are
/// already checked, so every chain there names earlier enclaves and ends).
fn runs_before(list: &[EnclaveConfig], j: usize, i: usize) -> bool {
    let mut at = i;
    while let Some(prev) = list[at]
        .after
        .as_ref()
        .and_then(|n| list[..at].iter().position(|o| o.name == *n))
    {
        if prev == j {
            return true;
        }
        at = prev;
    }
    false
}

fn default_io() -> IoPolicy {
    IoPolicy::Ignore
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    enclave: Vec<EnclaveConfig>,
}

/// A description atoll refuses, with the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `enclave[1].cores`, or `toml` for syntax errors.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

pub(crate) fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What the checks may know about the machine and the image.
pub struct Context<'a> {
    /// APIC ids of the processors that exist, if known.
    pub cores: Option<&'a [u32]>,
    /// Names of the modules the image carries, if known.
    pub modules: Option<&'a [&'a str]>,
}

/// Parses and checks a description. Every enclave must be valid for any to be accepted.
pub fn parse(text: &str, ctx: &Context) -> Result<Vec<EnclaveConfig>, ConfigError> {
    let file: File = from_toml(text)?;
    let list = file.enclave;
    if list.is_empty() {
        return Err(err("enclave", "no [[enclave]] is described"));
    }
    check(&list, ctx)?;
    Ok(list)
}

/// Largest kernel or bare-metal image a run-time create may announce.
pub const MAX_RUNTIME_IMAGE: u64 = 512 << 20;
/// Largest initrd a run-time create may announce.
pub const MAX_RUNTIME_INITRD: u64 = 2 << 30;

/// Checks the description of one enclave created at run time (`atoll create`): the text is a
/// single enclave's table, with or without an `[[enclave]]` header, and the boot-time rules
/// apply (fields named without the `enclave[0].` prefix), plus these: exactly one enclave, no
/// `after`, no `serial_input` (atoll's COM1 input stays with the host; the enclave's console
/// is `atoll console`), and the announced sizes of the files the client loads: an image of 1
/// byte to [`MAX_RUNTIME_IMAGE`], an initrd exactly when one is named, at most
/// [`MAX_RUNTIME_INITRD`]. `image` and `initrd` are the client's file names, not modules.
pub fn parse_runtime(
    text: &str,
    image_len: u64,
    initrd_len: u64,
    cores: &[u32],
) -> Result<EnclaveConfig, ConfigError> {
    let ctx = Context {
        cores: Some(cores),
        modules: None,
    };
    let unprefix = |e: ConfigError| ConfigError {
        field: e.field.replace("enclave[0].", ""),
        reason: e.reason,
    };
    let mut list = if text.contains("[[enclave]]") {
        parse(text, &ctx).map_err(unprefix)?
    } else {
        // The table itself is the enclave. Parsed as one, not behind a textual `[[enclave]]`
        // header: its own sub-tables (`[[virtio]]`, as the CLI writes them) would otherwise
        // land at the top level.
        let list = alloc::vec![from_toml::<EnclaveConfig>(text)?];
        check(&list, &ctx).map_err(unprefix)?;
        list
    };
    if list.len() != 1 {
        return Err(err(
            "enclave",
            format!("{} enclaves described, one expected", list.len()),
        ));
    }
    let config = list.remove(0);
    if config.after.is_some() {
        return Err(err("after", "not allowed at run time (create it later)"));
    }
    if config.serial_input {
        return Err(err(
            "serial_input",
            "atoll's COM1 input stays with the host; use `atoll console`",
        ));
    }
    if image_len == 0 || image_len > MAX_RUNTIME_IMAGE {
        return Err(err(
            "image",
            format!("{image_len} bytes announced, 1 to {MAX_RUNTIME_IMAGE} allowed"),
        ));
    }
    match (&config.initrd, initrd_len) {
        (Some(_), 0) => return Err(err("initrd", "named but 0 bytes announced")),
        (None, n) if n > 0 => {
            return Err(err("initrd", format!("none named but {n} bytes announced")))
        }
        (_, n) if n > MAX_RUNTIME_INITRD => {
            return Err(err(
                "initrd",
                format!("{n} bytes, at most {MAX_RUNTIME_INITRD}"),
            ))
        }
        _ => {}
    }
    Ok(config)
}

/// Deserializes a TOML module, naming the offending line in the error (shared with the machine
/// description, so both report syntax the same way).
pub(crate) fn from_toml<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, ConfigError> {
    toml_nostd::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        // Name the line and show it, so the field is visible even when the parser's message
        // only names the value.
        let at = e.span().map(|s| {
            let start = s.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let content = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} `{content}`")
        });
        err(at.unwrap_or_else(|| "toml".into()), msg)
    })
}

/// Checks parsed `[[enclave]]` tables (fields named `enclave[i].…`): the `enclaves` module and
/// the boot-time enclaves of the machine description share these rules.
pub fn check(list: &[EnclaveConfig], ctx: &Context) -> Result<(), ConfigError> {
    if list.len() > MAX_ENCLAVES {
        return Err(err(
            "enclave",
            format!("{} enclaves, at most {MAX_ENCLAVES}", list.len()),
        ));
    }
    for (i, e) in list.iter().enumerate() {
        let f = |name: &str| format!("enclave[{i}].{name}");
        let n = &e.name;
        if n.is_empty()
            || n.len() > 32
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err(
                f("name"),
                format!("'{n}' must be 1–32 characters of a–z, 0–9 and '-'"),
            ));
        }
        if let Some(j) = list[..i].iter().position(|o| o.name == *n) {
            return Err(err(
                f("name"),
                format!("'{n}' is also the name of enclave[{j}]"),
            ));
        }
        if e.devices.len() + e.vf.len() > MAX_DEVICES {
            return Err(err(
                f("devices"),
                format!(
                    "{} functions (devices and vf), at most {MAX_DEVICES}",
                    e.devices.len() + e.vf.len()
                ),
            ));
        }
        for (k, v) in e.vf.iter().enumerate() {
            let Some(pf) = super::machine::PciAddress::parse(&v.pf) else {
                return Err(err(
                    f(&format!("vf[{k}].pf")),
                    format!("'{}' is not a PCI address SSSS:BB:DD.F", v.pf),
                ));
            };
            let same = |o: &VfRef| {
                super::machine::PciAddress::parse(&o.pf) == Some(pf) && o.index == v.index
            };
            if e.vf[..k].iter().any(same) {
                return Err(err(
                    f(&format!("vf[{k}]")),
                    format!("VF {} of {pf} is named twice", v.index),
                ));
            }
            if let Some(j) = list[..i].iter().position(|o| o.vf.iter().any(same)) {
                return Err(err(
                    f(&format!("vf[{k}]")),
                    format!("VF {} of {pf} is also enclave[{j}]'s", v.index),
                ));
            }
        }
        for (k, d) in e.devices.iter().enumerate() {
            let Some(a) = super::machine::PciAddress::parse(d) else {
                return Err(err(
                    f(&format!("devices[{k}]")),
                    format!(
                        "'{d}' is not a PCI address SSSS:BB:DD.F (hex, device ≤ 1f, function ≤ 7)"
                    ),
                ));
            };
            let same = |o: &String| super::machine::PciAddress::parse(o) == Some(a);
            if e.devices[..k].iter().any(same) {
                return Err(err(
                    f(&format!("devices[{k}]")),
                    format!("{a} is named twice"),
                ));
            }
            if let Some(j) = list[..i].iter().position(|o| o.devices.iter().any(same)) {
                return Err(err(
                    f(&format!("devices[{k}]")),
                    format!("{a} is also enclave[{j}]'s"),
                ));
            }
        }
        if !e.virtio.is_empty() && e.entry != EntryMode::Linux {
            return Err(err(
                f("virtio"),
                "only entry = \"linux\" enclaves have a PCI bus for virtio devices",
            ));
        }
        e.virtio_devices().map_err(|v| err(f(&v.field), v.reason))?;
        if e.cores.is_empty() {
            return Err(err(f("cores"), "at least one core is needed"));
        }
        if let Some(before) = &e.after {
            let Some(j) = list[..i].iter().position(|o| o.name == *before) else {
                let why = if list.iter().any(|o| o.name == *before) {
                    format!("'{before}' is not described before '{n}' (`after` names an earlier enclave)")
                } else {
                    format!("no enclave is named '{before}'")
                };
                return Err(err(f("after"), why));
            };
            if !list[j].cores.iter().any(|c| e.cores.contains(c)) {
                return Err(err(
                    f("after"),
                    format!(
                        "'{before}' runs on cores {:?}, none of which '{n}' uses: `after` orders enclaves that share cores",
                        list[j].cores
                    ),
                ));
            }
        }
        for (k, c) in e.cores.iter().enumerate() {
            if e.cores[..k].contains(c) {
                return Err(err(f("cores"), format!("core {c} is listed twice")));
            }
            if let Some((j, other)) = list[..i]
                .iter()
                .enumerate()
                .find(|&(j, o)| o.cores.contains(c) && !runs_before(list, j, i))
            {
                return Err(err(
                    f("cores"),
                    format!(
                        "core {c} already belongs to enclave[{j}] '{}' (to share it, run after it: after = \"{}\")",
                        other.name, other.name
                    ),
                ));
            }
            if let Some(cores) = ctx.cores {
                if !cores.contains(c) {
                    return Err(err(
                        f("cores"),
                        format!("no processor with APIC id {c} on this machine (it has {cores:?})"),
                    ));
                }
            }
        }
        if e.cores.len() > 1 && e.entry != EntryMode::Linux {
            return Err(err(
                f("cores"),
                "bare-metal guests (long64, real16) have one core; only entry = \"linux\" enclaves have several",
            ));
        }
        if e.cores.len() > MAX_VCPUS {
            return Err(err(
                f("cores"),
                format!("{} cores, at most {MAX_VCPUS}", e.cores.len()),
            ));
        }
        if e.entry == EntryMode::Linux && e.memory_mib > MAX_LINUX_MEMORY_MIB {
            return Err(err(
                f("memory_mib"),
                format!(
                    "{} MiB; a Linux enclave has at most {MAX_LINUX_MEMORY_MIB} (RAM ends below the MMIO window)",
                    e.memory_mib
                ),
            ));
        }
        if e.initrd.is_some() && e.entry != EntryMode::Linux {
            return Err(err(
                f("initrd"),
                "only entry = \"linux\" enclaves take an initrd",
            ));
        }
        if e.serial_input && e.entry != EntryMode::Linux {
            return Err(err(
                f("serial_input"),
                "only entry = \"linux\" enclaves have a COM1 receiver",
            ));
        }
        if e.serial_input {
            if let Some(j) = list[..i].iter().position(|o| o.serial_input) {
                return Err(err(
                    f("serial_input"),
                    format!(
                        "enclave[{j}] '{}' already takes atoll's serial input",
                        list[j].name
                    ),
                ));
            }
        }
        if e.memory_mib == 0 || e.memory_mib > MAX_MEMORY_MIB {
            return Err(err(
                f("memory_mib"),
                format!("{} is outside 1..={MAX_MEMORY_MIB}", e.memory_mib),
            ));
        }
        if let Some(modules) = ctx.modules {
            for (field, name) in [("image", Some(&e.image)), ("initrd", e.initrd.as_ref())] {
                let Some(name) = name else { continue };
                if !modules.contains(&name.as_str()) {
                    return Err(err(
                        f(field),
                        format!(
                            "no module named '{}' (modules: {})",
                            name,
                            modules.join(", ")
                        ),
                    ));
                }
            }
        }
        if e.cmdline.len() > MAX_CMDLINE {
            return Err(err(
                f("cmdline"),
                format!("{} bytes, at most {MAX_CMDLINE}", e.cmdline.len()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod device_tests {
    use super::*;

    fn one(devices: &str) -> Result<Vec<EnclaveConfig>, ConfigError> {
        let text = alloc::format!(
            "[[enclave]]\nname = \"a\"\ncores = [1]\nmemory_mib = 16\nimage = \"suite64\"\nentry = \"long64\"\ndevices = {devices}\n"
        );
        parse(
            &text,
            &Context {
                cores: Some(&[0, 1, 2]),
                modules: None,
            },
        )
    }

    #[test]
    fn devices_are_pci_addresses_named_once() {
        assert_eq!(
            one("[\"0000:01:00.1\"]").unwrap()[0].devices,
            ["0000:01:00.1"]
        );
        let e = one("[\"01:00.8\"]").unwrap_err().to_string();
        assert!(
            e.contains("enclave[0].devices[0]") && e.contains("not a PCI address"),
            "{e}"
        );
        let e = one("[\"01:00.1\", \"0000:01:00.1\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("devices[1]") && e.contains("twice"), "{e}");
        let many: Vec<String> = (0..=MAX_DEVICES)
            .map(|i| alloc::format!("\"02:{:02x}.0\"", i % 32))
            .collect();
        let e = one(&alloc::format!("[{}]", many.join(",")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn two_enclaves_cannot_share_a_function() {
        let text = "[[enclave]]\nname = \"a\"\ncores = [1]\nmemory_mib = 16\nimage = \"i\"\nentry = \"long64\"\ndevices = [\"00:05.0\"]\n[[enclave]]\nname = \"b\"\ncores = [2]\nmemory_mib = 16\nimage = \"i\"\nentry = \"long64\"\ndevices = [\"0000:00:05.0\"]\n";
        let e = parse(
            text,
            &Context {
                cores: Some(&[0, 1, 2]),
                modules: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("enclave[1].devices[0]") && e.contains("enclave[0]'s"),
            "{e}"
        );
    }

    fn with_vf(vf: &str) -> Result<Vec<EnclaveConfig>, ConfigError> {
        let text = alloc::format!(
            "[[enclave]]\nname = \"a\"\ncores = [1]\nmemory_mib = 16\nimage = \"suite64\"\nentry = \"long64\"\nvf = {vf}\n"
        );
        parse(
            &text,
            &Context {
                cores: Some(&[0, 1, 2]),
                modules: None,
            },
        )
    }

    #[test]
    fn vfs_are_named_by_pf_and_index_one_or_many() {
        let one = with_vf("{ pf = \"0000:01:00.0\", index = 0 }").unwrap();
        assert_eq!(
            one[0].vf,
            [VfRef {
                pf: "0000:01:00.0".into(),
                index: 0
            }]
        );
        assert!(one[0].has_devices());
        let two =
            with_vf("[{ pf = \"01:00.0\", index = 0 }, { pf = \"01:00.0\", index = 1 }]").unwrap();
        assert_eq!(two[0].vf.len(), 2);
        let e = with_vf("{ pf = \"01:00\", index = 0 }")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vf[0].pf") && e.contains("not a PCI address"),
            "{e}"
        );
        let e = with_vf("[{ pf = \"01:00.0\", index = 3 }, { pf = \"0000:01:00.0\", index = 3 }]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vf[1]") && e.contains("twice"), "{e}");
        // Unknown keys and a missing index are refused by the parser.
        assert!(with_vf("{ pf = \"01:00.0\", index = 0, colour = 1 }").is_err());
        assert!(with_vf("{ pf = \"01:00.0\" }").is_err());
        assert!(with_vf("{ pf = \"01:00.0\", index = -1 }").is_err());
        // No devices at all.
        assert!(!one_default().has_devices());
    }

    fn one_default() -> EnclaveConfig {
        one("[]").unwrap().remove(0)
    }

    #[test]
    fn without_dma_isolation_devices_need_the_machine_to_allow_it() {
        assert!(
            device_policy(false, false, false).is_ok(),
            "no devices: nothing to refuse"
        );
        let e = device_policy(true, false, false).unwrap_err().to_string();
        assert!(
            e.contains("no DMA isolation") && e.contains("allow_unsafe_dma"),
            "{e}"
        );
        // Isolated, or allowed: the policy lets them through (whether each function can be
        // passed through is the build's to say).
        for (iso, allow) in [(false, true), (true, false), (true, true)] {
            assert!(device_policy(true, iso, allow).is_ok(), "{iso} {allow}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
        [[enclave]]
        name = "alpha"
        cores = [0]
        memory_mib = 16
        image = "suite64"
        entry = "long64"
        cmdline = "suite"

        [[enclave]]
        name = "beta"
        cores = [1]
        memory_mib = 8
        image = "real16"
        entry = "real16"
        io_unknown = "fault"
    "#;

    fn any() -> Context<'static> {
        Context {
            cores: None,
            modules: None,
        }
    }

    #[test]
    fn good_description() {
        let l = parse(TWO, &any()).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].entry, EntryMode::Long64);
        assert_eq!(l[0].io_unknown, IoPolicy::Ignore);
        assert_eq!(l[1].io_unknown, IoPolicy::Fault);
        assert_eq!(l[1].cmdline, "");
        let ctx = Context {
            cores: Some(&[0, 1]),
            modules: Some(&["suite64", "real16", "enclaves"]),
        };
        assert!(parse(TWO, &ctx).is_ok());
    }

    fn field_of(text: &str, ctx: &Context) -> String {
        let e = parse(text, ctx).unwrap_err();
        format!("{e}")
    }

    #[test]
    fn every_bad_field_is_named() {
        let e = field_of(&TWO.replace("cores = [1]", "cores = [0]"), &any());
        assert_eq!(
            e,
            "enclave[1].cores: core 0 already belongs to enclave[0] 'alpha' (to share it, run after it: after = \"alpha\")"
        );
        let e = field_of(&TWO.replace("\"beta\"", "\"alpha\""), &any());
        assert_eq!(e, "enclave[1].name: 'alpha' is also the name of enclave[0]");
        let e = field_of(&TWO.replace("\"beta\"", "\"Beta!\""), &any());
        assert!(e.starts_with("enclave[1].name: 'Beta!' must be"), "{e}");
        let e = field_of(&TWO.replace("memory_mib = 8", "memory_mib = 0"), &any());
        assert!(e.starts_with("enclave[1].memory_mib: 0 is outside"), "{e}");
        let e = field_of(
            TWO,
            &Context {
                cores: Some(&[0]),
                modules: None,
            },
        );
        assert!(
            e.starts_with("enclave[1].cores: no processor with APIC id 1"),
            "{e}"
        );
        let e = field_of(
            TWO,
            &Context {
                cores: None,
                modules: Some(&["suite64"]),
            },
        );
        assert!(
            e.starts_with("enclave[1].image: no module named 'real16'"),
            "{e}"
        );
        let e = field_of(&TWO.replace("cores = [1]", "cores = []"), &any());
        assert_eq!(e, "enclave[1].cores: at least one core is needed");
        let e = field_of(&TWO.replace("cores = [1]", "cores = [1, 1]"), &any());
        assert_eq!(e, "enclave[1].cores: core 1 is listed twice");
        let e = field_of(&TWO.replace("cores = [1]", "cores = [1, 2]"), &any());
        assert!(e.starts_with("enclave[1].cores: bare-metal guests"), "{e}");
        let e = field_of(
            &TWO.replace("entry = \"real16\"", "entry = \"real16\"\ninitrd = \"x\""),
            &any(),
        );
        assert!(e.starts_with("enclave[1].initrd: only"), "{e}");
    }

    const SEQUENCE: &str = r#"
        [[enclave]]
        name = "a"
        cores = [1]
        memory_mib = 16
        image = "suite64"
        entry = "long64"

        [[enclave]]
        name = "b"
        cores = [1]
        after = "a"
        memory_mib = 16
        image = "suite64"
        entry = "long64"
    "#;

    #[test]
    fn after_sequences_enclaves_on_shared_cores() {
        let l = parse(SEQUENCE, &any()).unwrap();
        assert_eq!(l[0].after, None);
        assert_eq!(l[1].after.as_deref(), Some("a"));
        // Without `after`, the shared core is an error that says how to share it.
        let e = field_of(&SEQUENCE.replace("after = \"a\"\n", ""), &any());
        assert!(
            e.starts_with("enclave[1].cores: core 1 already belongs to enclave[0] 'a'"),
            "{e}"
        );
        // A chain: c after b after a may reuse a's core; c after a alone may not share b's.
        let c = |after: &str| {
            format!(
                "{SEQUENCE}{}",
                SEQUENCE
                    .split("[[enclave]]")
                    .nth(2)
                    .map(|b| format!(
                        "[[enclave]]{}",
                        b.replace("\"b\"", "\"c\"")
                            .replace("\"a\"", &format!("\"{after}\""))
                    ))
                    .unwrap()
            )
        };
        assert_eq!(
            parse(&c("b"), &any()).unwrap()[2].after.as_deref(),
            Some("b")
        );
        let e = field_of(&c("a"), &any());
        assert!(
            e.starts_with("enclave[2].cores: core 1 already belongs to enclave[1] 'b'"),
            "{e}"
        );
        // It must name an earlier enclave that shares a core.
        let e = field_of(&SEQUENCE.replace("after = \"a\"", "after = \"z\""), &any());
        assert_eq!(e, "enclave[1].after: no enclave is named 'z'");
        let e = field_of(&SEQUENCE.replace("after = \"a\"", "after = \"b\""), &any());
        assert_eq!(
            e,
            "enclave[1].after: 'b' is not described before 'b' (`after` names an earlier enclave)"
        );
        let first_after_second =
            SEQUENCE.replacen("cores = [1]\n", "cores = [1]\n        after = \"b\"\n", 1);
        let e = field_of(&first_after_second, &any());
        assert_eq!(
            e,
            "enclave[0].after: 'b' is not described before 'a' (`after` names an earlier enclave)"
        );
        let apart = SEQUENCE.replacen("cores = [1]", "cores = [2]", 1);
        let e = field_of(&apart, &any());
        assert_eq!(
            e,
            "enclave[1].after: 'a' runs on cores [2], none of which 'b' uses: `after` orders enclaves that share cores"
        );
    }

    const LINUX: &str = r#"
        [[enclave]]
        name = "linux"
        cores = [1, 2]
        memory_mib = 256
        image = "vmlinuz"
        initrd = "initrd"
        entry = "linux"
        cmdline = "console=ttyS0"
    "#;

    #[test]
    fn linux_enclaves() {
        let l = parse(LINUX, &any()).unwrap();
        assert_eq!(l[0].entry, EntryMode::Linux);
        assert_eq!(l[0].cores, [1, 2]);
        assert_eq!(l[0].initrd.as_deref(), Some("initrd"));
        let ctx = Context {
            cores: None,
            modules: Some(&["vmlinuz"]),
        };
        assert!(field_of(LINUX, &ctx).starts_with("enclave[0].initrd: no module named 'initrd'"));
        let e = field_of(&LINUX.replace("256", "4096"), &any());
        assert!(
            e.starts_with("enclave[0].memory_mib: 4096 MiB; a Linux enclave"),
            "{e}"
        );
        let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        let e = field_of(
            &LINUX.replace("[1, 2]", &format!("[{}]", many.join(", "))),
            &any(),
        );
        assert_eq!(e, "enclave[0].cores: 65 cores, at most 64");
        let two = format!(
            "{}{}",
            LINUX.replace("cmdline", "serial_input = true\ncmdline"),
            LINUX
                .replace("name = \"linux\"", "name = \"linux2\"")
                .replace("[1, 2]", "[3]")
                .replace("cmdline", "serial_input = true\ncmdline")
        );
        assert_eq!(
            field_of(&two, &any()),
            "enclave[1].serial_input: enclave[0] 'linux' already takes atoll's serial input"
        );
        let no_initrd = LINUX.replace("initrd = \"initrd\"\n", "");
        assert_eq!(parse(&no_initrd, &any()).unwrap()[0].initrd, None);
    }

    #[test]
    fn syntax_and_unknown_fields_name_the_line() {
        let e = field_of(
            &TWO.replace("entry = \"real16\"", "entry = \"protected\""),
            &any(),
        );
        assert!(
            e.starts_with("line 15 `entry = \"protected\"`: unknown variant"),
            "{e}"
        );
        let e = field_of(
            &TWO.replace("cmdline = \"suite\"", "colour = \"red\""),
            &any(),
        );
        assert!(e.contains("colour"), "{e}");
        let e = field_of("[[enclave]\nname=", &any());
        assert!(e.starts_with("line"), "{e}");
        assert_eq!(field_of("", &any()), "enclave: no [[enclave]] is described");
    }

    #[test]
    fn run_time_descriptions_follow_the_boot_rules_and_their_own() {
        let cores = [0, 1, 2, 3];
        let base =
            "name = \"a\"\ncores = [2]\nmemory_mib = 4\nimage = \"/g/s\"\nentry = \"long64\"\n";
        let c = parse_runtime(base, 100, 0, &cores).unwrap();
        assert_eq!(
            (c.name.as_str(), c.cores.as_slice(), c.memory_mib),
            ("a", &[2][..], 4)
        );
        // The [[enclave]] form is the same enclave.
        let c2 = parse_runtime(&format!("[[enclave]]\n{base}"), 100, 0, &cores).unwrap();
        assert_eq!(c, c2);
        let refused = |text: &str, image: u64, initrd: u64| {
            parse_runtime(text, image, initrd, &cores).unwrap_err()
        };
        // Boot-time rules, fields named without the prefix.
        let e = refused(&base.replace("memory_mib = 4", "memory_mib = 0"), 100, 0);
        assert_eq!(e.field, "memory_mib");
        let e = refused(&base.replace("cores = [2]", "cores = [9]"), 100, 0);
        assert_eq!(e.field, "cores", "{e}");
        let e = refused(&format!("{base}colour = 1\n"), 100, 0);
        assert!(e.to_string().contains("colour"), "{e}");
        // Two enclaves.
        let two = format!(
            "[[enclave]]\n{base}[[enclave]]\n{}",
            base.replace("\"a\"", "\"b\"").replace("[2]", "[3]")
        );
        assert_eq!(refused(&two, 100, 0).field, "enclave");
        // Run-time rules.
        assert_eq!(
            refused(&format!("{base}after = \"x\"\n"), 100, 0).field,
            "after"
        );
        assert_eq!(
            refused(&format!("{base}serial_input = true\n"), 100, 0).field,
            "serial_input"
        );
        assert_eq!(refused(base, 0, 0).field, "image");
        assert_eq!(refused(base, MAX_RUNTIME_IMAGE + 1, 0).field, "image");
        assert_eq!(refused(base, 100, 5).field, "initrd", "none named");
        let linux = base
            .replace("long64", "linux")
            .replace("memory_mib = 4", "memory_mib = 64");
        let with_initrd = format!("{linux}initrd = \"/g/i\"\n");
        assert_eq!(
            refused(&with_initrd, 100, 0).field,
            "initrd",
            "named, 0 bytes"
        );
        assert_eq!(
            refused(&with_initrd, 100, MAX_RUNTIME_INITRD + 1).field,
            "initrd"
        );
        assert!(parse_runtime(&with_initrd, 100, 5, &cores).is_ok());
        // Not TOML.
        assert!(parse_runtime("name = ", 100, 0, &cores).is_err());
    }
}
