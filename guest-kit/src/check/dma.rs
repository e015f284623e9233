//! `atoll-check --dma`: the root partition drives QEMU's `edu` test devices (PCI 1234:11e8, a
//! DMA engine with a 4 KiB buffer) through sysfs and reports what each DMA did, so that a test
//! can set it beside what atoll's IOMMU recorded (issue 12, scenario `vtd-dma`).
//!
//! The program runs as root in the host and needs no kernel driver: it enables each device
//! (`enable` in sysfs), turns bus mastering on in its command register (`config`), maps its
//! BAR 0 (`resource0`) and programs the engine directly. Physical addresses of its own buffers
//! come from `/proc/self/pagemap`; the host's guest-physical addresses are host-physical (the
//! root partition is mapped 1:1), and the IOMMU's I/O virtual addresses are guest-physical.
//!
//! Steps, each a field of the report:
//!
//! | step | what | what the host can see |
//! |---|---|---|
//! | `roundtrip` | the first device copies a page of the host's RAM into its buffer and back into another page | the copy matches (`ok`) |
//! | `pool_write` | the first device writes its buffer to atoll's pool canary (`atoll.dma_canaries`) | nothing: atoll reports the canary and the fault |
//! | `atoll_write` | the same to atoll's own canary page | as above |
//! | `unmapped_write` | the same to [`UNMAPPED_IOVA`], which no partition maps | as above |
//! | `blocked_write` | the second device (no owner: its DMA is blocked) writes into a page of the host's | the page is unchanged (`ok`) |
//! | `forged_interrupt` | the first device writes 4 bytes to the interrupt address range in remappable format, naming IRTE [`FORGED_HANDLE`], which atoll never wrote | nothing: atoll reports an interrupt fault |
//! | `msi` | the host's AHCI controller (the `ahci` module the init script loads) probed its CD-ROM with message-signalled interrupts | `/proc/interrupts` counts `ahci` interrupts of a `PCI-MSI` line (`ok`) |
//! | `msix` | a virtio disk (`virtio_blk`, read by the init script) completed its requests with MSI-X | `/proc/interrupts` counts `virtio0-req` interrupts (`ok`) |
//! | `storm` | the third device writes to the pool canary [`STORM_WRITES`] times, [`STORM_PAUSE_MS`] apart; the machine description stops a device after fewer faults; then bus mastering is turned on again and it writes once more | its command register's bus-master bit reads clear after the storm (`ok`); atoll's log shows the last write blocked at the context entry |
//! | `interrupt` | the first device, bound to `uio_pci_generic` (the init script loads it), raises its interrupt (INTx through the I/O APIC) | `/dev/uioN` reports it within [`INTERRUPT_WAIT_MS`] (`ok`) |
//!
//! Between two DMAs that should fault the program waits [`FAULT_PAUSE_MS`]: QEMU's VT-d has one
//! fault-recording register, and a second fault before atoll has read the first is lost
//! (counted as an overflow).
//!
//! The report is one line, `ATOLL-RESULT dma {json}`, which atoll files as the host's `dma`
//! result. Exit status 0 when every step ran and what the host can see is right, 1 otherwise.

use serde_json::{json, Value};

/// What the report line starts with.
pub const DMA_PREFIX: &str = "ATOLL-RESULT dma ";

/// The flag that selects this mode of `atoll-check`.
pub const DMA_FLAG: &str = "--dma";

/// Whether the arguments ask for the DMA probe.
pub fn wants_dma(args: &[String]) -> bool {
    args.first().map(String::as_str) == Some(DMA_FLAG)
}

/// PCI identity of QEMU's `edu` device.
pub const EDU_VENDOR: u16 = 0x1234;
/// See [`EDU_VENDOR`].
pub const EDU_DEVICE: u16 = 0x11e8;

/// Registers of `edu`'s BAR 0 (QEMU `docs/specs/edu.rst`).
pub mod edu {
    /// Identification: `0xRRrr00edu` — major, minor, `0xed`.
    pub const IDENT: u64 = 0x00;
    /// DMA source address (64 bits).
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination address (64 bits).
    pub const DMA_DST: u64 = 0x88;
    /// DMA byte count (64 bits).
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command: bit 0 start (reads 1 while running), bit 1 direction (1: from the
    /// device's buffer to RAM), bit 2 raise an interrupt when done.
    pub const DMA_CMD: u64 = 0x98;
    /// Start a transfer.
    pub const CMD_START: u64 = 1;
    /// The transfer goes from the device's buffer to RAM.
    pub const CMD_TO_RAM: u64 = 2;
    /// Interrupt status (32 bits): the bits raised and not yet acknowledged.
    pub const INTR_STATUS: u64 = 0x24;
    /// Writing bits here raises them in the status and asserts the interrupt.
    pub const INTR_RAISE: u64 = 0x60;
    /// Writing bits here clears them; the interrupt drops when none is left.
    pub const INTR_ACK: u64 = 0x64;
    /// The device's buffer, in its DMA address space.
    pub const BUFFER: u64 = 0x40000;
    /// Bytes of the buffer.
    pub const BUFFER_LEN: u64 = 4096;
    /// The low byte of [`IDENT`].
    pub const IDENT_MAGIC: u32 = 0xed;
}

/// An I/O virtual address no partition maps: below 2^48 (the address width atoll's IOMMU
/// tables cover) and far above any RAM or MMIO an emulated machine has.
pub const UNMAPPED_IOVA: u64 = 0x7f00_0000_0000;

/// The IRTE index the forged interrupt names (inside atoll's 4096-entry table, never written).
pub const FORGED_HANDLE: u64 = 4000;

/// The forged interrupt's address: the interrupt range (0xFEE0_0000), remappable format (bit
/// 4), handle 14:0 in bits 19:5, SHV (bit 3) clear (VT-d spec §5.1.2.2).
pub const fn forged_interrupt_address(handle: u64) -> u64 {
    0xfee0_0000 | (handle & 0x7fff) << 5 | 1 << 4 | (handle >> 15 & 1) << 2
}

/// Faulting writes of the storm step.
pub const STORM_WRITES: usize = 12;

/// Milliseconds between the storm's writes (each is recorded before the next: one fault
/// register in QEMU).
pub const STORM_PAUSE_MS: u64 = 150;

/// Milliseconds the interrupt step waits for the interrupt.
pub const INTERRUPT_WAIT_MS: i32 = 3000;

/// Milliseconds to wait after a DMA that should fault (see the module documentation).
pub const FAULT_PAUSE_MS: u64 = 300;

/// The two canary pages atoll offers when its machine description sets `dma_canaries = true`:
/// `atoll.dma_canaries=ATOLL,POOL` on the host's command line (hex addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Canaries {
    /// A page of atoll's own memory.
    pub atoll: u64,
    /// A page of the enclave pool.
    pub pool: u64,
}

/// The canaries named on a kernel command line, or why they are missing or malformed.
pub fn parse_canaries(cmdline: &str) -> Result<Canaries, String> {
    let value = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("atoll.dma_canaries="))
        .ok_or("no atoll.dma_canaries= on the command line")?;
    let (a, p) = value
        .split_once(',')
        .ok_or_else(|| format!("atoll.dma_canaries={value}: not ATOLL,POOL"))?;
    let hex = |s: &str| {
        let d = s.strip_prefix("0x").unwrap_or(s);
        u64::from_str_radix(d, 16)
            .ok()
            .filter(|v| v % 4096 == 0)
            .ok_or_else(|| format!("atoll.dma_canaries: '{s}' is not a page-aligned hex address"))
    };
    Ok(Canaries {
        atoll: hex(a)?,
        pool: hex(p)?,
    })
}

/// The physical address behind one entry of `/proc/PID/pagemap` (Linux
/// `Documentation/admin-guide/mm/pagemap.rst`: bit 63 present, bits 54:0 the frame number;
/// root sees real frame numbers), plus the offset in the page.
pub fn pagemap_phys(entry: u64, vaddr: u64) -> Option<u64> {
    const PRESENT: u64 = 1 << 63;
    const PFN_MASK: u64 = (1 << 55) - 1;
    let pfn = entry & PFN_MASK;
    (entry & PRESENT != 0 && pfn != 0).then(|| pfn * 4096 + (vaddr & 0xfff))
}

/// A PCI address as sysfs names it (`0000:00:05.0`), parsed into a sortable tuple.
pub fn parse_bdf(name: &str) -> Option<(u16, u8, u8, u8)> {
    let (seg, rest) = name.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
    Some((
        u16::from_str_radix(seg, 16).ok()?,
        u8::from_str_radix(bus, 16).ok()?,
        dev,
        func,
    ))
}

/// The `edu` devices among sysfs entries `(name, vendor file, device file)`, in address order.
pub fn edu_devices(entries: &[(String, String, String)]) -> Vec<String> {
    let hex = |s: &str| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
    let mut found: Vec<(_, String)> = entries
        .iter()
        .filter(|(_, v, d)| hex(v) == Some(EDU_VENDOR) && hex(d) == Some(EDU_DEVICE))
        .filter_map(|(n, _, _)| Some((parse_bdf(n)?, n.clone())))
        .collect();
    found.sort();
    found.into_iter().map(|(_, n)| n).collect()
}

/// The interrupts a driver named `name` took, from `/proc/interrupts`: the sum of the per-CPU
/// counts over every line naming it (a multi-queue device has a line per queue), and the first
/// such line's chip and type words (`PCI-MSI 512000-edge`, `IO-APIC 21-fasteoi`). `None` when
/// no line names it.
pub fn interrupt_count(proc_interrupts: &str, name: &str) -> Option<(u64, String)> {
    let mut lines = proc_interrupts.lines();
    let cpus = lines.next()?.split_whitespace().count();
    let mut found: Option<(u64, String)> = None;
    for line in lines.filter(|l| l.split_whitespace().any(|w| w.starts_with(name))) {
        let mut words = line.split_whitespace().skip(1);
        let count: u64 = words
            .by_ref()
            .take(cpus)
            .map(|w| w.parse::<u64>().unwrap_or(0))
            .sum();
        let kind: Vec<&str> = words.filter(|w| !w.starts_with(name)).collect();
        let f = found.get_or_insert((0, kind.join(" ")));
        f.0 += count;
    }
    found
}

/// A pattern for a page that no other step writes: byte `i` is `seed + i * 7` (mod 256),
/// never all zeros or all ones.
pub fn pattern(seed: u8) -> Vec<u8> {
    (0..edu::BUFFER_LEN as usize)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(7)))
        .collect()
}

/// One step's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The step's name (a field of the report).
    pub name: &'static str,
    /// Whether the transfer ran (the engine took the command and finished it in time).
    pub ran: bool,
    /// What the host can check about the outcome, if anything: the roundtrip's copy matched,
    /// the blocked device's target page is unchanged.
    pub verdict: Option<bool>,
    /// The device's PCI address.
    pub device: String,
    /// The DMA's target or source address.
    pub address: u64,
    /// Why it did not run, or what differed.
    pub detail: Option<String>,
}

impl Step {
    /// Whether the step passed as far as the host can tell.
    pub fn passed(&self) -> bool {
        self.ran && self.verdict != Some(false)
    }
}

/// The report's JSON and whether everything passed. `problem` is a failure before any step
/// (no devices, no canaries).
pub fn report(devices: &[String], steps: &[Step], problem: Option<&str>) -> (Value, bool) {
    let mut v = json!({
        "devices": devices,
        "problem": problem,
    });
    for s in steps {
        v[s.name] = json!({
            "ran": s.ran,
            "ok": s.verdict,
            "device": s.device,
            "address": format!("{:#x}", s.address),
            "detail": s.detail,
        });
    }
    let ok = problem.is_none() && !steps.is_empty() && steps.iter().all(Step::passed);
    v["ok"] = json!(ok);
    (v, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_is_the_first_argument() {
        assert!(wants_dma(&["--dma".into()]));
        assert!(!wants_dma(&[]));
        assert!(!wants_dma(&["--role".into(), "--dma".into()]));
    }

    #[test]
    fn canaries_from_the_command_line() {
        let c = parse_canaries("quiet atoll.dma_canaries=0x1f000,0x3e000000 x=1").unwrap();
        assert_eq!(
            c,
            Canaries {
                atoll: 0x1f000,
                pool: 0x3e00_0000
            }
        );
        assert_eq!(
            parse_canaries("atoll.dma_canaries=1f000,3e000000")
                .unwrap()
                .atoll,
            0x1f000
        );
        assert!(parse_canaries("quiet")
            .unwrap_err()
            .contains("no atoll.dma_canaries"));
        assert!(parse_canaries("atoll.dma_canaries=0x1000")
            .unwrap_err()
            .contains("ATOLL,POOL"));
        assert!(parse_canaries("atoll.dma_canaries=0x1001,0x2000")
            .unwrap_err()
            .contains("page-aligned"));
        assert!(parse_canaries("atoll.dma_canaries=zz,0x2000").is_err());
    }

    #[test]
    fn pagemap_entries() {
        let present = 1u64 << 63;
        assert_eq!(
            pagemap_phys(present | 0x1234, 0x7fff_0010),
            Some(0x123_4010)
        );
        assert_eq!(pagemap_phys(0x1234, 0), None, "not present");
        assert_eq!(
            pagemap_phys(present, 0),
            None,
            "frame 0: an unprivileged reader's view"
        );
        // Bits 55..62 are flags, not the frame.
        assert_eq!(pagemap_phys(present | 1 << 55 | 5, 0), Some(0x5000));
    }

    #[test]
    fn the_forged_interrupt_is_remappable_format() {
        let a = forged_interrupt_address(FORGED_HANDLE);
        assert_eq!(a & 0xfff0_0000, 0xfee0_0000);
        assert_ne!(a & 0x10, 0, "remappable format");
        assert_eq!(a & 0x8, 0, "no subhandle");
        assert_eq!((a >> 5) & 0x7fff, FORGED_HANDLE);
        assert_eq!(forged_interrupt_address(0x8001) & 0x4, 0x4, "handle bit 15");
    }

    #[test]
    fn interrupt_lines() {
        let text = "           CPU0       CPU1       \n  0:         45          0   IO-APIC   2-edge      timer\n 24:          3          9  PCI-MSI 512000-edge      ahci[0000:00:1f.2]\n 21:          1          0   IO-APIC  21-fasteoi   uio_pci_generic\n";
        assert_eq!(
            interrupt_count(text, "ahci"),
            Some((12, "PCI-MSI 512000-edge".to_string()))
        );
        assert_eq!(interrupt_count(text, "uio").unwrap().0, 1);
        let queues = "   CPU0 CPU1\n 25: 0 0 PCI-MSI 1-edge virtio0-req.0\n 26: 7 25 PCI-MSI 2-edge virtio0-req.1\n";
        assert_eq!(
            interrupt_count(queues, "virtio0-req").unwrap().0,
            32,
            "every queue's line"
        );
        assert_eq!(interrupt_count(text, "virtio"), None);
        assert_eq!(interrupt_count("", "ahci"), None);
    }

    #[test]
    fn pci_addresses() {
        assert_eq!(parse_bdf("0000:00:05.0"), Some((0, 0, 5, 0)));
        assert_eq!(parse_bdf("0000:01:1f.7"), Some((0, 1, 0x1f, 7)));
        assert_eq!(parse_bdf("0000:00:20.0"), None, "device 32");
        assert_eq!(parse_bdf("0000:00:05.8"), None, "function 8");
        assert_eq!(parse_bdf("0000:00:05"), None);
        assert_eq!(parse_bdf("bogus"), None);
    }

    #[test]
    fn edu_devices_in_address_order() {
        let e = |n: &str, v: &str, d: &str| (n.to_string(), v.to_string(), d.to_string());
        let found = edu_devices(&[
            e("0000:00:06.0", "0x1234\n", "0x11e8\n"),
            e("0000:00:1f.2", "0x8086\n", "0x2922\n"),
            e("0000:00:05.0", "0x1234\n", "0x11e8\n"),
            e("0000:00:07.0", "0x1234\n", "0x1111\n"),
        ]);
        assert_eq!(found, ["0000:00:05.0", "0000:00:06.0"]);
    }

    #[test]
    fn patterns_are_distinct_and_never_uniform() {
        let a = pattern(1);
        let b = pattern(2);
        assert_eq!(a.len(), 4096);
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != a[0]));
        assert!(!a.iter().all(|&x| x == 0 || x == 0xff));
    }

    fn step(name: &'static str, ran: bool, verdict: Option<bool>) -> Step {
        Step {
            name,
            ran,
            verdict,
            device: "0000:00:05.0".into(),
            address: 0x1000,
            detail: None,
        }
    }

    #[test]
    fn the_report_passes_only_when_every_step_does() {
        let devices = vec!["0000:00:05.0".to_string()];
        let (v, ok) = report(
            &devices,
            &[
                step("roundtrip", true, Some(true)),
                step("pool_write", true, None),
            ],
            None,
        );
        assert!(ok);
        assert_eq!(v["roundtrip"]["ok"], true);
        assert_eq!(v["pool_write"]["ok"], Value::Null);
        assert_eq!(v["pool_write"]["address"], "0x1000");
        let (_, ok) = report(&devices, &[step("roundtrip", true, Some(false))], None);
        assert!(!ok, "a copy that differs");
        let (_, ok) = report(&devices, &[step("pool_write", false, None)], None);
        assert!(!ok, "a step that did not run");
        let (v, ok) = report(&[], &[], Some("no edu device"));
        assert!(!ok);
        assert_eq!(v["problem"], "no edu device");
    }
}
