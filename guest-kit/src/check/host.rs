//! `atoll-check --role host`: what the root partition (the host's Linux atoll boots beside its
//! enclaves) checks of the machine it was given, on top of every enclave check. atoll appends
//! the facts to the host kernel's command line; the check compares them with what Linux shows:
//!
//! | word (appended by atoll) | meaning |
//! | --- | --- |
//! | `atoll.role=host` | this Linux is the root partition (`/init` runs `atoll-check --role host`) |
//! | `atoll.cpus=LIST` | the host's logical CPU numbers expected online, a kernel CPU list (`0-1`, `0,2-3`) |
//! | `atoll.memory_mib=M` | the host's RAM in MiB, roughly (judged like `--expect-memory-mib`: ± 10 %) |
//! | `atoll.pool=S-E[,S-E…]` | the enclave pool's host-physical ranges, hex (`0x` optional), `E` the **last byte** (inclusive, as in `/proc/iomem`), each a whole number of 4 KiB pages |
//! | `atoll.restarts=N` | (after a restart of the root partition) how many times atoll restarted it; absent or 0 on the first boot |
//!
//! | check | passes when |
//! | --- | --- |
//! | `host_cmdline` | `atoll.cpus`, `atoll.memory_mib` and `atoll.pool` are present and well formed |
//! | `host_cpus` | the online CPUs are exactly `atoll.cpus` |
//! | `host_memory` | the RAM the kernel saw is within 10 % of `atoll.memory_mib` |
//! | `host_pool_reserved` | the firmware memory map (`/sys/firmware/memmap`, else the top level of `/proc/iomem`) covers every pool range with `Reserved` entries and no `System RAM` entry overlaps one |
//! | `pci` | `/sys/bus/pci/devices` lists at least one device, a host bridge (class 06/00) among them |
//! | `pool_probe` | 4096 bytes read through `/dev/mem` at the start and at the last page of every pool range are all `0xFF` (atoll refuses the host's reads of memory it does not own with all ones, and counts them) |
//!
//! The `/dev/mem` reads: the Debian kernel has `STRICT_DEVMEM`, which refuses RAM but allows a
//! range the E820 marks reserved (the pool is one). The kernel also refuses any `/dev/mem`
//! access past the end of its highest RAM (`valid_phys_addr_range`: `high_memory`), so the
//! probe can only reach a pool range that lies below some host RAM; a read it refuses is
//! reported with its error and fails the check.

use super::{memory_within, Facts, Options};
use serde_json::{json, Value};

/// What atoll told the host on its command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostExpect {
    /// `atoll.cpus`: the logical CPUs that must be online.
    pub cpus: Option<Vec<u32>>,
    /// `atoll.memory_mib`.
    pub memory_mib: Option<u64>,
    /// `atoll.pool`: the pool's ranges, first and last byte.
    pub pool: Vec<PhysRange>,
    /// `atoll.restarts` (0 when absent).
    pub restarts: u32,
    /// Words that were present but malformed, one sentence each.
    pub errors: Vec<String>,
}

/// A range of host-physical addresses, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// Last byte.
    pub end: u64,
}

impl PhysRange {
    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &PhysRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl std::fmt::Display for PhysRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end)
    }
}

/// Page size of the `/dev/mem` probe and of the pool's granularity.
pub const PAGE: u64 = 4096;

fn hex(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Parses `atoll.pool`'s value: `S-E[,S-E…]`, hex, `E` inclusive, page-granular.
pub fn parse_pool(value: &str) -> Result<Vec<PhysRange>, String> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim) {
        let (a, b) = part
            .split_once('-')
            .ok_or_else(|| format!("atoll.pool: '{part}' is not START-END"))?;
        let (start, end) = match (hex(a), hex(b)) {
            (Some(s), Some(e)) => (s, e),
            _ => return Err(format!("atoll.pool: '{part}' is not two hex addresses")),
        };
        if start > end {
            return Err(format!("atoll.pool: '{part}' ends before it starts"));
        }
        if start % PAGE != 0 {
            return Err(format!(
                "atoll.pool: '{part}' does not start on a 4 KiB page"
            ));
        }
        // An end that is page-aligned is most likely an exclusive end: say so rather than
        // check a range one byte long.
        if end % PAGE != PAGE - 1 {
            return Err(format!(
                "atoll.pool: '{part}' does not end on the last byte of a 4 KiB page (END is inclusive: …fff)"
            ));
        }
        let r = PhysRange { start, end };
        if let Some(o) = out.iter().find(|o: &&PhysRange| o.overlaps(&r)) {
            return Err(format!("atoll.pool: '{part}' overlaps {o}"));
        }
        out.push(r);
    }
    Ok(out)
}

/// Reads atoll's words from the kernel command line (see the module docs). A word given twice
/// counts the last time, as the kernel's own parameters do.
pub fn parse_host_cmdline(cmdline: &str) -> HostExpect {
    let mut e = HostExpect::default();
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "atoll.cpus" => match super::parse_cpu_list(value) {
                Ok(c) if !c.is_empty() => e.cpus = Some(c),
                Ok(_) => e.errors.push("atoll.cpus: empty CPU list".into()),
                Err(why) => e.errors.push(format!("atoll.cpus: {why}")),
            },
            "atoll.memory_mib" => match value.parse::<u64>() {
                Ok(m) if m > 0 => e.memory_mib = Some(m),
                _ => e.errors.push(format!(
                    "atoll.memory_mib: '{value}' is not a positive integer"
                )),
            },
            "atoll.pool" => match parse_pool(value) {
                Ok(p) => e.pool = p,
                Err(why) => e.errors.push(why),
            },
            "atoll.restarts" => match value.parse::<u32>() {
                Ok(n) => e.restarts = n,
                Err(_) => e
                    .errors
                    .push(format!("atoll.restarts: '{value}' is not a whole number")),
            },
            _ => {}
        }
    }
    e
}

/// One entry of the firmware memory map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemRegion {
    /// Its range.
    pub range: PhysRange,
    /// Its type as Linux names it (`System RAM`, `Reserved`, `ACPI Tables`, …).
    pub kind: String,
}

/// One `/sys/firmware/memmap/N/` entry from its `start`, `end` (hex, inclusive) and `type`.
pub fn memmap_entry(start: &str, end: &str, kind: &str) -> Option<MemRegion> {
    let (start, end) = (hex(start)?, hex(end)?);
    (start <= end).then(|| MemRegion {
        range: PhysRange { start, end },
        kind: kind.trim().to_string(),
    })
}

/// The top-level entries of `/proc/iomem` (`00100000-3fffffff : System RAM`); the indented
/// lines below an entry are what the kernel placed inside it (its image, devices' claims) and
/// do not change its type.
pub fn parse_iomem(text: &str) -> Vec<MemRegion> {
    text.lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('\t'))
        .filter_map(|l| {
            let (range, kind) = l.split_once(" : ")?;
            let (a, b) = range.split_once('-')?;
            memmap_entry(a, b, kind)
        })
        .collect()
}

/// Whether a memory-map type means RAM Linux may use.
fn is_ram(kind: &str) -> bool {
    kind.eq_ignore_ascii_case("System RAM")
}

fn is_reserved(kind: &str) -> bool {
    kind.eq_ignore_ascii_case("Reserved")
}

/// Checks that every pool range is reserved in `map`: covered end to end by `Reserved`
/// entries (adjacent ones may split it) and overlapped by no `System RAM` entry.
pub fn pool_reserved(map: &[MemRegion], pool: &[PhysRange]) -> Result<(), String> {
    let mut why = Vec::new();
    for r in pool {
        for m in map
            .iter()
            .filter(|m| is_ram(&m.kind) && m.range.overlaps(r))
        {
            why.push(format!("pool {r} overlaps System RAM {}", m.range));
        }
        let mut reserved: Vec<PhysRange> = map
            .iter()
            .filter(|m| is_reserved(&m.kind) && m.range.overlaps(r))
            .map(|m| m.range)
            .collect();
        reserved.sort_by_key(|m| m.start);
        // Walk from the pool's start; each reserved entry must begin at or before the next
        // uncovered byte.
        let mut next = r.start;
        let mut covered = false;
        for m in &reserved {
            if m.start > next {
                break;
            }
            if m.end >= r.end {
                covered = true;
                break;
            }
            next = next.max(m.end + 1);
        }
        if !covered {
            why.push(format!(
                "pool {r} is not reserved in the memory map from {next:#x} on"
            ));
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

/// One PCI function from `/sys/bus/pci/devices/ADDR/{vendor,device,class}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// `0000:00:00.0`.
    pub address: String,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code (base class, subclass, programming interface).
    pub class: u32,
}

impl PciDevice {
    /// From the sysfs files' text (`0x8086\n`); `None` when one is malformed.
    pub fn from_sysfs(address: &str, vendor: &str, device: &str, class: &str) -> Option<Self> {
        Some(PciDevice {
            address: address.to_string(),
            vendor: u16::try_from(hex(vendor)?).ok()?,
            device: u16::try_from(hex(device)?).ok()?,
            class: u32::try_from(hex(class)?).ok()?,
        })
    }

    /// A host bridge: base class 06 (bridge), subclass 00 (PCI Local Bus spec 3.0, appendix D).
    pub fn is_host_bridge(&self) -> bool {
        self.class >> 8 == 0x0600
    }
}

/// One `/dev/mem` read of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRead {
    /// Host-physical address.
    pub addr: u64,
    /// Bytes read.
    pub bytes: usize,
    /// Whether every byte read was 0xFF.
    pub all_ones: bool,
    /// Why the read failed or came up short.
    pub error: Option<String>,
}

/// Where the probe reads: the first and the last page of every pool range (once for a range of
/// one page).
pub fn probe_addrs(pool: &[PhysRange]) -> Vec<u64> {
    let mut out = Vec::new();
    for r in pool {
        out.push(r.start);
        let last = r.end + 1 - PAGE;
        if last != r.start {
            out.push(last);
        }
    }
    out
}

/// Whether `buf` holds bytes and all of them are 0xFF.
pub fn all_ones(buf: &[u8]) -> bool {
    !buf.is_empty() && buf.iter().all(|&b| b == 0xff)
}

/// What the host role gathered, on top of the enclave facts.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// atoll's words from `/proc/cmdline`.
    pub expect: HostExpect,
    /// Where the memory map came from (`/sys/firmware/memmap` or `/proc/iomem`), if anywhere.
    pub memmap_source: Option<String>,
    /// The memory map.
    pub memmap: Vec<MemRegion>,
    /// The PCI functions (`None`: `/sys/bus/pci/devices` unreadable).
    pub pci: Option<Vec<PciDevice>>,
    /// The `/dev/mem` reads of the pool.
    pub pool_probe: Vec<ProbeRead>,
}

/// One check's outcome, as in [`super::checks`].
type CheckResult = super::CheckResult;

/// The host role's checks (see the module docs), in a fixed order.
pub fn checks(f: &Facts, h: &HostFacts, _o: &Options) -> Vec<CheckResult> {
    let fail = |cond: bool, why: String| if cond { Ok(()) } else { Err(why) };
    let e = &h.expect;
    let mut missing: Vec<String> = e.errors.clone();
    if e.cpus.is_none() && !e.errors.iter().any(|w| w.starts_with("atoll.cpus")) {
        missing.push("atoll.cpus missing".into());
    }
    if e.memory_mib.is_none() && !e.errors.iter().any(|w| w.starts_with("atoll.memory_mib")) {
        missing.push("atoll.memory_mib missing".into());
    }
    if e.pool.is_empty() && !e.errors.iter().any(|w| w.starts_with("atoll.pool")) {
        missing.push("atoll.pool missing".into());
    }
    let mut out: Vec<CheckResult> =
        vec![("host_cmdline", fail(missing.is_empty(), missing.join("; ")))];
    let online = f.cpus();
    out.push((
        "host_cpus",
        match &e.cpus {
            None => Err("no atoll.cpus to compare with".into()),
            Some(want) => fail(
                want.as_slice() == online,
                format!(
                    "expected CPUs {} online, found {}",
                    super::format_cpu_list(want),
                    super::format_cpu_list(online)
                ),
            ),
        },
    ));
    out.push((
        "host_memory",
        match e.memory_mib {
            None => Err("no atoll.memory_mib to compare with".into()),
            Some(m) => memory_within(f, m),
        },
    ));
    out.push((
        "host_pool_reserved",
        match (&h.memmap_source, e.pool.is_empty()) {
            (_, true) => Err("no atoll.pool to look for".into()),
            (None, _) => {
                Err("no memory map (/sys/firmware/memmap and /proc/iomem unreadable)".into())
            }
            (Some(_), false) => pool_reserved(&h.memmap, &e.pool),
        },
    ));
    out.push((
        "pci",
        match &h.pci {
            None => Err("/sys/bus/pci/devices unreadable".into()),
            Some(d) if d.is_empty() => Err("no PCI device".into()),
            Some(d) => fail(
                d.iter().any(PciDevice::is_host_bridge),
                format!("{} PCI device(s) but no host bridge (class 06/00)", d.len()),
            ),
        },
    ));
    let probe = {
        let mut why: Vec<String> = Vec::new();
        if h.pool_probe.is_empty() {
            why.push("no /dev/mem read of the pool".into());
        }
        for r in &h.pool_probe {
            match &r.error {
                Some(err) => why.push(format!("{:#x}: {err}", r.addr)),
                None if r.bytes != PAGE as usize => {
                    why.push(format!("{:#x}: read {} of {PAGE} bytes", r.addr, r.bytes));
                }
                None if !r.all_ones => why.push(format!(
                    "{:#x}: read bytes other than 0xFF: the host reached the pool",
                    r.addr
                )),
                None => {}
            }
        }
        fail(why.is_empty(), why.join("; "))
    };
    out.push(("pool_probe", probe));
    out
}

/// The host role's part of the report (merged into the top level of the JSON).
pub fn report_fields(h: &HostFacts) -> serde_json::Map<String, Value> {
    let e = &h.expect;
    let pool_map: Vec<Value> = h
        .memmap
        .iter()
        .filter(|m| e.pool.iter().any(|p| p.overlaps(&m.range)))
        .map(|m| json!({"range": m.range.to_string(), "type": m.kind}))
        .collect();
    let pci: Option<Vec<String>> = h.pci.as_ref().map(|d| {
        d.iter()
            .map(|p| {
                format!(
                    "{} {:04x}:{:04x} class {:06x}",
                    p.address, p.vendor, p.device, p.class
                )
            })
            .collect()
    });
    let reads: Vec<Value> = h
        .pool_probe
        .iter()
        .map(|r| json!({"addr": format!("{:#x}", r.addr), "bytes": r.bytes, "all_ones": r.all_ones, "error": r.error}))
        .collect();
    let bytes: usize = h.pool_probe.iter().map(|r| r.bytes).sum();
    let ones =
        !h.pool_probe.is_empty() && h.pool_probe.iter().all(|r| r.error.is_none() && r.all_ones);
    let mut m = serde_json::Map::new();
    m.insert("restarts".into(), e.restarts.into());
    m.insert(
        "host_expect".into(),
        json!({
            "cpus": e.cpus.as_deref().map(super::format_cpu_list),
            "memory_mib": e.memory_mib,
            "pool": e.pool.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
    );
    m.insert("memmap_source".into(), json!(h.memmap_source));
    m.insert("pool_memmap".into(), Value::Array(pool_map));
    m.insert(
        "pci".into(),
        json!({"count": pci.as_ref().map(Vec::len), "devices": pci}),
    );
    m.insert(
        "pool_probe".into(),
        json!({"bytes": bytes, "all_ones": ones, "reads": reads}),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMDLINE: &str = "console=ttyS0 panic=1 atoll.role=host atoll.cpus=0-1 atoll.memory_mib=1500 atoll.pool=0x40000000-0x5fffffff";

    #[test]
    fn atolls_words_are_read_from_the_command_line() {
        let e = parse_host_cmdline(CMDLINE);
        assert_eq!(e.cpus, Some(vec![0, 1]));
        assert_eq!(e.memory_mib, Some(1500));
        assert_eq!(
            e.pool,
            [PhysRange {
                start: 0x4000_0000,
                end: 0x5fff_ffff
            }]
        );
        assert_eq!(e.restarts, 0);
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        // Several ranges, no 0x, a restart count, the last word winning.
        let e = parse_host_cmdline(
            "atoll.pool=100000-1fffff,40000000-40000fff atoll.restarts=1 atoll.cpus=0,2 atoll.cpus=0,3",
        );
        assert_eq!(e.pool.len(), 2);
        assert_eq!(e.pool[1].to_string(), "0x40000000-0x40000fff");
        assert_eq!(e.restarts, 1);
        assert_eq!(e.cpus, Some(vec![0, 3]));
        // Nothing of atoll's: nothing expected, nothing wrong.
        assert_eq!(
            parse_host_cmdline("console=ttyS0 quiet"),
            HostExpect::default()
        );
    }

    #[test]
    fn malformed_words_are_named() {
        for (word, needle) in [
            ("atoll.cpus=", "empty CPU list"),
            ("atoll.cpus=1-0", "bad range"),
            ("atoll.memory_mib=0", "not a positive integer"),
            ("atoll.memory_mib=lots", "not a positive integer"),
            ("atoll.pool=0x1000", "not START-END"),
            ("atoll.pool=0xg-0x1fff", "not two hex addresses"),
            ("atoll.pool=0x2000-0x1fff", "ends before it starts"),
            ("atoll.pool=0x1800-0x1fff", "does not start on a 4 KiB page"),
            // An exclusive end.
            ("atoll.pool=0x1000-0x2000", "END is inclusive"),
            (
                "atoll.pool=0x1000-0x2fff,0x2000-0x3fff",
                "overlaps 0x1000-0x2fff",
            ),
            ("atoll.restarts=-1", "not a whole number"),
        ] {
            let e = parse_host_cmdline(word);
            assert!(
                e.errors.len() == 1 && e.errors[0].contains(needle),
                "{word}: {:?}",
                e.errors
            );
        }
    }

    /// `/proc/iomem` of QEMU q35 with 2 GiB, a pool reserved at 1 GiB (the shape atoll's E820
    /// gives the host), and a device window.
    const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-3fffffff : System RAM
  01000000-01e00bc6 : Kernel code
40000000-4fffffff : Reserved
50000000-5fffffff : Reserved
60000000-7ffdffff : System RAM
b0000000-bfffffff : PCI MMIO
  b0000000-bfffffff : Reserved
fd000000-fdffffff : PCI Bus 0000:00
";

    fn pool(s: &str) -> Vec<PhysRange> {
        parse_pool(s).unwrap()
    }

    #[test]
    fn iomem_top_level_entries() {
        let map = parse_iomem(IOMEM);
        assert_eq!(map.len(), 10);
        assert_eq!(map[0].kind, "Reserved");
        assert_eq!(map[4].range.to_string(), "0x100000-0x3fffffff");
        assert_eq!(map[4].kind, "System RAM");
        // Indented lines are inside their parent: the nested Reserved under PCI MMIO is not a
        // top-level reservation.
        assert!(map
            .iter()
            .all(|m| m.kind != "Kernel code" && m.kind != "System ROM"));
        assert!(parse_iomem("garbage\nzz-1 : x\n").is_empty());
    }

    #[test]
    fn the_pool_must_be_reserved_and_not_ram() {
        let map = parse_iomem(IOMEM);
        // Two adjacent reserved entries cover the pool together.
        assert_eq!(pool_reserved(&map, &pool("0x40000000-0x5fffffff")), Ok(()));
        assert_eq!(pool_reserved(&map, &pool("0x48000000-0x48000fff")), Ok(()));
        // Spilling into RAM on either side.
        let e = pool_reserved(&map, &pool("0x3ff00000-0x5fffffff")).unwrap_err();
        assert!(e.contains("overlaps System RAM 0x100000-0x3fffffff"), "{e}");
        assert!(e.contains("from 0x3ff00000"), "{e}");
        let e = pool_reserved(&map, &pool("0x40000000-0x60000fff")).unwrap_err();
        assert!(
            e.contains("overlaps System RAM 0x60000000-0x7ffdffff"),
            "{e}"
        );
        // A hole (not in the map at all) is not reserved.
        let e = pool_reserved(&map, &pool("0x80000000-0x80000fff")).unwrap_err();
        assert!(e.contains("not reserved"), "{e}");
        // Every range is judged.
        let e =
            pool_reserved(&map, &pool("0x40000000-0x4fffffff,0x60000000-0x60000fff")).unwrap_err();
        assert!(e.starts_with("pool 0x60000000"), "{e}");
        // A gap between two reserved entries.
        let gap = vec![
            memmap_entry("0x1000", "0x1fff", "Reserved\n").unwrap(),
            memmap_entry("0x3000", "0x3fff", "Reserved").unwrap(),
        ];
        let e = pool_reserved(&gap, &pool("0x1000-0x3fff")).unwrap_err();
        assert!(e.contains("from 0x2000"), "{e}");
        // sysfs memmap entries, in any order, overlapping each other.
        let sysfs = vec![
            memmap_entry("0x3000", "0x3fff", "Reserved").unwrap(),
            memmap_entry("0x1000", "0x2fff", "reserved").unwrap(),
            memmap_entry("0x1000", "0x1fff", "Reserved").unwrap(),
        ];
        assert_eq!(pool_reserved(&sysfs, &pool("0x1000-0x3fff")), Ok(()));
        assert_eq!(memmap_entry("0x2000", "0x1000", "Reserved"), None);
        assert_eq!(memmap_entry("x", "0x1000", "Reserved"), None);
    }

    #[test]
    fn pci_devices_from_sysfs() {
        let hb =
            PciDevice::from_sysfs("0000:00:00.0", "0x8086\n", "0x29c0\n", "0x060000\n").unwrap();
        assert_eq!((hb.vendor, hb.device, hb.class), (0x8086, 0x29c0, 0x060000));
        assert!(hb.is_host_bridge());
        let isa = PciDevice::from_sysfs("0000:00:1f.0", "0x8086", "0x2918", "0x060100").unwrap();
        assert!(!isa.is_host_bridge());
        assert_eq!(PciDevice::from_sysfs("x", "0x18086", "0x0", "0x0"), None);
        assert_eq!(PciDevice::from_sysfs("x", "", "0x0", "0x0"), None);
    }

    #[test]
    fn probe_addresses_and_bytes() {
        assert_eq!(
            probe_addrs(&pool("0x40000000-0x5fffffff,0x1000-0x1fff")),
            [0x4000_0000, 0x5fff_f000, 0x1000]
        );
        assert!(all_ones(&[0xff; 4096]));
        let mut page = [0xffu8; 4096];
        page[4095] = 0xfe;
        assert!(!all_ones(&page));
        assert!(!all_ones(&[]));
    }

    fn healthy() -> (Facts, HostFacts) {
        let mut f = super::super::tests::healthy();
        f.cmdline = Some(CMDLINE.into());
        f.kernel_memory_kib = Some(1480 * 1024);
        let read = |addr| ProbeRead {
            addr,
            bytes: 4096,
            all_ones: true,
            error: None,
        };
        let h = HostFacts {
            expect: parse_host_cmdline(CMDLINE),
            memmap_source: Some("/proc/iomem".into()),
            memmap: parse_iomem(IOMEM),
            pci: Some(vec![PciDevice::from_sysfs(
                "0000:00:00.0",
                "0x8086",
                "0x29c0",
                "0x060000",
            )
            .unwrap()]),
            pool_probe: vec![read(0x4000_0000), read(0x5fff_f000)],
        };
        (f, h)
    }

    /// The whole report of a host-role run with these facts.
    fn report_with(f: &Facts, h: &HostFacts) -> (Value, bool) {
        let f = Facts {
            host: Some(h.clone()),
            ..f.clone()
        };
        let o = Options {
            role: super::super::Role::Host,
            ..Options::default()
        };
        super::super::report(&f, &o)
    }

    fn failed(f: &Facts, h: &HostFacts) -> Vec<&'static str> {
        checks(f, h, &Options::default())
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn host_verdicts() {
        let (f, h) = healthy();
        assert!(
            failed(&f, &h).is_empty(),
            "{:?}",
            checks(&f, &h, &Options::default())
        );

        let mut f2 = f.clone();
        f2.online = Some(vec![0]);
        assert_eq!(failed(&f2, &h), ["host_cpus"]);
        let mut f2 = f.clone();
        f2.online = Some(vec![0, 1, 2]);
        assert_eq!(failed(&f2, &h), ["host_cpus"]);
        let mut f2 = f.clone();
        f2.kernel_memory_kib = Some(1000 * 1024);
        assert_eq!(failed(&f2, &h), ["host_memory"]);

        let mut h2 = h.clone();
        h2.expect = parse_host_cmdline("atoll.role=host");
        assert_eq!(
            failed(&f, &h2),
            [
                "host_cmdline",
                "host_cpus",
                "host_memory",
                "host_pool_reserved"
            ]
        );
        let why = checks(&f, &h2, &Options::default())[0]
            .1
            .clone()
            .unwrap_err();
        assert_eq!(
            why,
            "atoll.cpus missing; atoll.memory_mib missing; atoll.pool missing"
        );
        let mut h2 = h.clone();
        h2.expect = parse_host_cmdline(&format!("{CMDLINE} atoll.restarts=x"));
        assert_eq!(failed(&f, &h2), ["host_cmdline"]);

        let mut h2 = h.clone();
        h2.expect.pool = pool("0x3ff00000-0x3fffffff");
        assert_eq!(failed(&f, &h2), ["host_pool_reserved"]);
        let mut h2 = h.clone();
        h2.memmap_source = None;
        h2.memmap.clear();
        assert_eq!(failed(&f, &h2), ["host_pool_reserved"]);

        let mut h2 = h.clone();
        h2.pci = Some(vec![]);
        assert_eq!(failed(&f, &h2), ["pci"]);
        let mut h2 = h.clone();
        h2.pci = None;
        assert_eq!(failed(&f, &h2), ["pci"]);
        let mut h2 = h.clone();
        h2.pci.as_mut().unwrap()[0].class = 0x020000;
        assert_eq!(failed(&f, &h2), ["pci"]);

        let mut h2 = h.clone();
        h2.pool_probe[1].all_ones = false;
        assert_eq!(failed(&f, &h2), ["pool_probe"]);
        let mut h2 = h.clone();
        h2.pool_probe[0].bytes = 100;
        assert_eq!(failed(&f, &h2), ["pool_probe"]);
        let mut h2 = h.clone();
        h2.pool_probe[0] = ProbeRead {
            addr: 0x4000_0000,
            bytes: 0,
            all_ones: false,
            error: Some("Bad address (os error 14)".into()),
        };
        let (v, ok) = report_with(&f, &h2);
        assert!(!ok);
        assert!(
            v["problems"][0]
                .as_str()
                .unwrap()
                .contains("0x40000000: Bad address"),
            "{v}"
        );
        assert_eq!(v["pool_probe"]["all_ones"], false);
        assert_eq!(v["pool_probe"]["bytes"], 4096);
        let mut h2 = h.clone();
        h2.pool_probe.clear();
        assert_eq!(failed(&f, &h2), ["pool_probe"]);
    }

    #[test]
    fn host_report() {
        let (f, h) = healthy();
        let (v, ok) = report_with(&f, &h);
        assert!(ok, "{v}");
        assert_eq!(v["role"], "host");
        assert_eq!(v["restarts"], 0);
        assert_eq!(v["checks"]["pool_probe"], true);
        assert_eq!(v["checks"]["host_cpus"], true);
        assert_eq!(v["pool_probe"]["bytes"], 8192);
        assert_eq!(v["pool_probe"]["all_ones"], true);
        assert_eq!(v["pool_probe"]["reads"][1]["addr"], "0x5ffff000");
        assert_eq!(v["pci"]["count"], 1);
        assert_eq!(
            v["pci"]["devices"][0],
            "0000:00:00.0 8086:29c0 class 060000"
        );
        assert_eq!(v["host_expect"]["cpus"], "0-1");
        assert_eq!(v["host_expect"]["pool"][0], "0x40000000-0x5fffffff");
        assert_eq!(v["pool_memmap"].as_array().unwrap().len(), 2);
        // The enclave checks run too.
        assert_eq!(v["checks"]["compute"], true);
    }
}
