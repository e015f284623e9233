//! Machine discovery from ACPI: processors (MADT), PCI ECAM windows (MCFG), whether a DMAR
//! (VT-d) exists, and how to power off (FADT + the DSDT's `\_S5` package).
//!
//! The `acpi` crate finds and validates the tables; this module turns them into [`Platform`],
//! plain data the rest of atoll uses. Memory access goes through an [`acpi::AcpiHandler`], so
//! the same code runs on the identity map at boot and on captured tables in host tests.

use acpi::madt::{Madt, MadtEntry};
use acpi::mcfg::Mcfg;
use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiHandler, AcpiTable, AcpiTables};
use boot::HostPhysAddr;
use core::fmt;

/// Most processors atoll manages.
pub const MAX_CPUS: usize = 256;
/// Most ECAM windows recorded.
pub const MAX_ECAM: usize = 8;

/// Flags bit 0 of Local APIC / Local x2APIC structures: Enabled (ACPI 6.5 §5.2.12.2).
const LAPIC_ENABLED: u32 = 1 << 0;
/// APIC id 0xFF in a Local APIC structure means "not present" (ACPI 6.5 §5.2.12.2).
const XAPIC_ID_NONE: u32 = 0xff;

/// One processor the MADT lists as enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Its local APIC id (x2APIC id when listed by an x2APIC structure).
    pub apic_id: u32,
    /// ACPI processor UID.
    pub uid: u32,
    /// Listed by a Local x2APIC structure (type 9) rather than a Local APIC one (type 0).
    pub x2apic_entry: bool,
}

/// A PCI Express ECAM window (MCFG, PCI Firmware spec §4.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecam {
    /// Physical base of bus 0 of the window.
    pub base: HostPhysAddr,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub bus_start: u8,
    /// Last bus decoded.
    pub bus_end: u8,
}

/// An I/O-port power-management register (FADT PM1x_CNT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmControl {
    /// PM1a control port.
    pub pm1a: u16,
    /// PM1b control port, if the machine has one.
    pub pm1b: Option<u16>,
    /// SLP_TYPa/SLP_TYPb for S5 from the DSDT's `\_S5` package.
    pub s5: Option<(u8, u8)>,
}

/// What atoll learned about the machine from ACPI.
#[derive(Clone, Debug)]
pub struct Platform {
    cpus: [Cpu; MAX_CPUS],
    cpu_count: usize,
    /// Enabled processors beyond [`MAX_CPUS`], which atoll leaves alone.
    pub cpus_ignored: usize,
    /// Physical base of the local APIC (MADT, or its address override).
    pub local_apic_base: HostPhysAddr,
    /// I/O APICs listed.
    pub ioapic_count: usize,
    ecam: [Option<Ecam>; MAX_ECAM],
    /// Whether a DMAR table (VT-d) is present.
    pub dmar_present: bool,
    /// The DMAR's remapping-unit count, when it parsed.
    pub dmar_units: usize,
    /// The DMAR, when it parsed.
    pub dmar: Option<iommu::Dmar>,
    /// ACPI revision from the RSDP (0 for ACPI 1.0).
    pub acpi_revision: u8,
    /// How to enter S5, if the FADT says.
    pub power: Option<PmControl>,
}

/// Why discovery failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// The RSDP or root table is invalid.
    Acpi(&'static str),
    /// No MADT: atoll cannot find the other processors.
    NoMadt,
    /// A MADT entry has a length that runs past the table or is below 2.
    MalformedMadt { offset: usize },
    /// The MADT lists no enabled processor.
    NoProcessors,
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Acpi(what) => write!(f, "ACPI tables unusable: {what}"),
            Self::NoMadt => write!(f, "no MADT (APIC) table: cannot find the processors"),
            Self::MalformedMadt { offset } => {
                write!(f, "MADT entry at offset {offset} has a bad length")
            }
            Self::NoProcessors => write!(f, "the MADT lists no enabled processor"),
        }
    }
}

fn acpi_error(e: acpi::AcpiError) -> PlatformError {
    PlatformError::Acpi(match e {
        acpi::AcpiError::NoValidRsdp => "no valid RSDP",
        acpi::AcpiError::RsdpIncorrectSignature => "RSDP signature wrong",
        acpi::AcpiError::RsdpInvalidOemId => "RSDP OEM id invalid",
        acpi::AcpiError::RsdpInvalidChecksum => "RSDP checksum wrong",
        acpi::AcpiError::SdtInvalidSignature(_) => "table signature wrong",
        acpi::AcpiError::SdtInvalidOemId(_) => "table OEM id invalid",
        acpi::AcpiError::SdtInvalidTableId(_) => "table id invalid",
        acpi::AcpiError::SdtInvalidChecksum(_) => "table checksum wrong",
        acpi::AcpiError::TableMissing(_) => "table missing",
        _ => "unexpected table contents",
    })
}

/// The DMAR, for `find_table` (its body is parsed by the `iommu` crate).
#[repr(C, packed)]
struct DmarHeader {
    header: SdtHeader,
}

// SAFETY: `DmarHeader` is exactly the SDT header that starts every DMAR (VT-d spec §8.1).
unsafe impl AcpiTable for DmarHeader {
    const SIGNATURE: Signature = Signature::DMAR;
    fn header(&self) -> &SdtHeader {
        &self.header
    }
}

/// The bytes of a table the handler has mapped whole.
///
/// # Safety
///
/// The mapping must cover `header.length` bytes.
unsafe fn table_bytes<H: AcpiHandler, T: AcpiTable>(m: &acpi::PhysicalMapping<H, T>) -> &[u8] {
    let len = m.get().header().length as usize;
    // SAFETY: `find_table` maps the whole table (its header's length), per the caller's contract.
    unsafe { core::slice::from_raw_parts(m.virtual_start().as_ptr().cast::<u8>(), len) }
}

impl Platform {
    /// Reads the ACPI tables reachable from the RSDP at `rsdp`.
    ///
    /// # Safety
    ///
    /// `rsdp` must be the address of an RSDP under `handler`'s mapping, and the tables it leads
    /// to must be mappable by `handler`.
    pub unsafe fn discover<H: AcpiHandler>(
        handler: H,
        rsdp: HostPhysAddr,
    ) -> Result<Self, PlatformError> {
        // SAFETY: forwarded from the caller.
        let tables = unsafe { AcpiTables::from_rsdp(handler.clone(), rsdp.as_u64() as usize) }
            .map_err(acpi_error)?;
        let mut p = Platform {
            cpus: [Cpu {
                apic_id: 0,
                uid: 0,
                x2apic_entry: false,
            }; MAX_CPUS],
            cpu_count: 0,
            cpus_ignored: 0,
            local_apic_base: HostPhysAddr::new(0xfee0_0000),
            ioapic_count: 0,
            ecam: [None; MAX_ECAM],
            dmar_present: false,
            dmar_units: 0,
            dmar: None,
            acpi_revision: tables.revision(),
            power: None,
        };

        let madt = tables
            .find_table::<Madt>()
            .map_err(|_| PlatformError::NoMadt)?;
        // SAFETY: `find_table` mapped the whole MADT.
        p.read_madt(unsafe { table_bytes(&madt) }, madt.get())?;

        if let Ok(mcfg) = tables.find_table::<Mcfg>() {
            for (slot, e) in p.ecam.iter_mut().zip(mcfg.get().entries()) {
                *slot = Some(Ecam {
                    base: HostPhysAddr::new(e.base_address),
                    segment: e.pci_segment_group,
                    bus_start: e.bus_number_start,
                    bus_end: e.bus_number_end,
                });
            }
        }

        if let Ok(dmar) = tables.find_table::<DmarHeader>() {
            p.dmar_present = true;
            // SAFETY: `find_table` mapped the whole DMAR.
            match iommu::Dmar::parse(unsafe { table_bytes(&dmar) }) {
                Ok(d) => {
                    p.dmar_units = d.units().count();
                    p.dmar = Some(d);
                }
                Err(e) => log::warn!("DMAR present but unreadable: {e}"),
            }
        }

        if let Ok(fadt) = tables.find_table::<acpi::fadt::Fadt>() {
            let io_port = |g: acpi::address::GenericAddress| {
                (g.address_space == acpi::address::AddressSpace::SystemIo
                    && g.address != 0
                    && g.address <= 0xffff)
                    .then_some(g.address as u16)
            };
            if let Some(pm1a) = fadt.pm1a_control_block().ok().and_then(io_port) {
                let pm1b = fadt.pm1b_control_block().ok().flatten().and_then(io_port);
                let s5 = tables.dsdt().ok().and_then(|aml| {
                    // SAFETY: the DSDT's AML stream is `length` bytes at `address`, per the FADT.
                    let m = unsafe {
                        handler.map_physical_region::<u8>(aml.address, aml.length as usize)
                    };
                    // SAFETY: the mapping covers `length` bytes.
                    let bytes = unsafe {
                        core::slice::from_raw_parts(m.virtual_start().as_ptr(), aml.length as usize)
                    };
                    find_s5(bytes)
                });
                p.power = Some(PmControl { pm1a, pm1b, s5 });
            }
        }
        Ok(p)
    }

    /// Records the processors and interrupt controllers of a MADT whose bytes are `bytes`.
    fn read_madt(
        &mut self,
        bytes: &[u8],
        madt: core::pin::Pin<&Madt>,
    ) -> Result<(), PlatformError> {
        // The `acpi` iterator trusts entry lengths; check them first so a bad table cannot make
        // it loop or read past the end.
        let mut offset = core::mem::size_of::<Madt>();
        while offset < bytes.len() {
            let len = *bytes
                .get(offset + 1)
                .ok_or(PlatformError::MalformedMadt { offset })? as usize;
            if len < 2 || offset + len > bytes.len() {
                return Err(PlatformError::MalformedMadt { offset });
            }
            offset += len;
        }
        self.local_apic_base = HostPhysAddr::new(madt.local_apic_address.into());
        for entry in madt.entries() {
            match entry {
                MadtEntry::LocalApic(e) => {
                    let (id, flags) = (u32::from(e.apic_id), { e.flags });
                    if flags & LAPIC_ENABLED != 0 && id != XAPIC_ID_NONE {
                        self.add_cpu(Cpu {
                            apic_id: id,
                            uid: e.processor_id.into(),
                            x2apic_entry: false,
                        });
                    }
                }
                MadtEntry::LocalX2Apic(e) => {
                    let (id, flags, uid) = ({ e.x2apic_id }, { e.flags }, { e.processor_uid });
                    if flags & LAPIC_ENABLED != 0 && id != u32::MAX {
                        self.add_cpu(Cpu {
                            apic_id: id,
                            uid,
                            x2apic_entry: true,
                        });
                    }
                }
                MadtEntry::IoApic(_) => self.ioapic_count += 1,
                MadtEntry::LocalApicAddressOverride(e) => {
                    self.local_apic_base = HostPhysAddr::new(e.local_apic_address);
                }
                _ => {}
            }
        }
        if self.cpu_count == 0 {
            return Err(PlatformError::NoProcessors);
        }
        Ok(())
    }

    /// Adds a processor once (firmware may list one CPU in both structure types).
    pub fn add_cpu(&mut self, cpu: Cpu) {
        if self.cpus().iter().any(|c| c.apic_id == cpu.apic_id) {
            return;
        }
        if self.cpu_count == MAX_CPUS {
            self.cpus_ignored += 1;
            return;
        }
        self.cpus[self.cpu_count] = cpu;
        self.cpu_count += 1;
    }

    /// Enabled processors, in MADT order.
    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus[..self.cpu_count]
    }

    /// The ECAM windows.
    pub fn ecam(&self) -> impl Iterator<Item = &Ecam> {
        self.ecam.iter().flatten()
    }
}

/// Calls `f` with the signature and bytes of every table the root table (XSDT, or RSDT for
/// ACPI 1.0) lists, and of the DSDT the FADT points to. Tables with an implausible length
/// (below 36 bytes or above 16 MiB) are skipped.
///
/// # Safety
///
/// As for [`Platform::discover`].
pub unsafe fn for_each_table<H: AcpiHandler>(
    handler: H,
    rsdp: HostPhysAddr,
    mut f: impl FnMut([u8; 4], &[u8]),
) -> Result<(), PlatformError> {
    const MAX_TABLE: usize = 16 << 20;
    let read = |addr: usize, len: usize| {
        // SAFETY: the caller vouches that the tables are mappable by `handler`.
        let m = unsafe { handler.map_physical_region::<u8>(addr, len) };
        // SAFETY: the mapping covers `len` bytes.
        let v = unsafe { core::slice::from_raw_parts(m.virtual_start().as_ptr(), len) }.to_vec();
        v
    };
    let table = |addr: usize| -> Option<alloc::vec::Vec<u8>> {
        let head = read(addr, 36);
        let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
        (36..=MAX_TABLE).contains(&len).then(|| read(addr, len))
    };
    let r = read(rsdp.as_u64() as usize, 20);
    if &r[0..8] != b"RSD PTR " {
        return Err(PlatformError::Acpi("RSDP signature wrong"));
    }
    let (root, entry_size) = if r[15] >= 2 {
        let x = read(rsdp.as_u64() as usize, 36);
        (
            u64::from_le_bytes(x[24..32].try_into().unwrap_or([0; 8])) as usize,
            8,
        )
    } else {
        (
            u32::from_le_bytes(r[16..20].try_into().unwrap_or([0; 4])) as usize,
            4,
        )
    };
    let root = table(root).ok_or(PlatformError::Acpi("root table length implausible"))?;
    for entry in root[36..].chunks_exact(entry_size) {
        let mut raw = [0u8; 8];
        raw[..entry_size].copy_from_slice(entry);
        let addr = u64::from_le_bytes(raw) as usize;
        let Some(t) = table(addr) else { continue };
        let sig: [u8; 4] = t[0..4].try_into().unwrap_or(*b"????");
        if &sig == b"FACP" && t.len() >= 44 {
            // DSDT: X_DSDT (offset 140, ACPI 2.0+) if set, else the 32-bit DSDT field (offset 40).
            let x = t
                .get(140..148)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            let d = if x != 0 {
                x as usize
            } else {
                u32::from_le_bytes(t[40..44].try_into().unwrap_or([0; 4])) as usize
            };
            if let Some(dsdt) = table(d) {
                f(*b"DSDT", &dsdt);
            }
        }
        f(sig, &t);
    }
    Ok(())
}

/// Finds SLP_TYPa/SLP_TYPb in the DSDT's `\_S5` package (ACPI 6.5 §7.4.2.5 and §20.2.5.4):
/// `NameOp "_S5_" PackageOp PkgLength NumElements <elem> <elem> …`, where an element is ZeroOp,
/// OneOp, or BytePrefix followed by the byte.
pub fn find_s5(aml: &[u8]) -> Option<(u8, u8)> {
    let at = aml.windows(4).position(|w| w == b"_S5_")?;
    let mut i = at + 4;
    if *aml.get(i)? != 0x12 {
        return None; // not a PackageOp
    }
    i += 1;
    // PkgLength: the top two bits of the lead byte give how many more bytes follow.
    let follow = (*aml.get(i)? >> 6) as usize;
    i += 1 + follow + 1; // PkgLength bytes, then NumElements
    let element = |i: &mut usize| -> Option<u8> {
        match *aml.get(*i)? {
            0x0a => {
                let v = *aml.get(*i + 1)?;
                *i += 2;
                Some(v)
            }
            0x00 => {
                *i += 1;
                Some(0)
            }
            0x01 => {
                *i += 1;
                Some(1)
            }
            _ => None,
        }
    };
    let a = element(&mut i)?;
    let b = element(&mut i).unwrap_or(0);
    Some((a, b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::ptr::NonNull;
    use std::sync::Arc;

    /// Fake physical memory: tables placed at made-up addresses, mapped by lookup.
    #[derive(Clone)]
    pub struct FixtureMemory(Arc<Vec<(usize, Vec<u8>)>>);

    impl AcpiHandler for FixtureMemory {
        unsafe fn map_physical_region<T>(
            &self,
            phys: usize,
            size: usize,
        ) -> acpi::PhysicalMapping<Self, T> {
            let (base, bytes) = self
                .0
                .iter()
                .find(|(b, v)| *b <= phys && phys + size <= b + v.len())
                .unwrap_or_else(|| panic!("fixture has no bytes at {phys:#x}+{size:#x}"));
            let ptr = bytes[phys - base..].as_ptr() as *mut T;
            // SAFETY: the fixture bytes live as long as the Arc held by the handler clone.
            unsafe {
                acpi::PhysicalMapping::new(
                    phys,
                    NonNull::new(ptr).unwrap(),
                    size,
                    size,
                    self.clone(),
                )
            }
        }
        fn unmap_physical_region<T>(_region: &acpi::PhysicalMapping<Self, T>) {}
    }

    fn checksum_fix(table: &mut [u8], at: usize) {
        table[at] = 0;
        let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        table[at] = 0u8.wrapping_sub(sum);
    }

    /// Builds an RSDP (rev 2) and XSDT pointing at `tables`, and returns the memory and the
    /// RSDP address.
    pub fn machine(tables: &[&[u8]]) -> (FixtureMemory, HostPhysAddr) {
        const RSDP: usize = 0xe_0000;
        const XSDT: usize = 0x10_0000;
        let mut regions = Vec::new();
        const DSDT: usize = 0x1f_0000;
        let mut xsdt = vec![0u8; 36];
        xsdt[0..4].copy_from_slice(b"XSDT");
        xsdt[8] = 1;
        xsdt[10..16].copy_from_slice(b"ATOLL ");
        for (i, t) in tables.iter().enumerate() {
            let mut t = t.to_vec();
            if &t[0..4] == b"DSDT" {
                // Reached through the FADT, not the XSDT.
                regions.push((DSDT, t));
                continue;
            }
            if &t[0..4] == b"FACP" {
                // Point the captured FADT at where this fixture machine keeps the DSDT.
                t[40..44].copy_from_slice(&(DSDT as u32).to_le_bytes());
                if t.len() >= 148 {
                    t[140..148].copy_from_slice(&0u64.to_le_bytes());
                }
                checksum_fix(&mut t, 9);
            }
            let addr = 0x20_0000 + i * 0x1_0000;
            xsdt.extend_from_slice(&(addr as u64).to_le_bytes());
            regions.push((addr, t));
        }
        let len = xsdt.len() as u32;
        xsdt[4..8].copy_from_slice(&len.to_le_bytes());
        checksum_fix(&mut xsdt, 9);
        let mut rsdp = vec![0u8; 36];
        rsdp[0..8].copy_from_slice(b"RSD PTR ");
        rsdp[9..15].copy_from_slice(b"ATOLL ");
        rsdp[15] = 2;
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&(XSDT as u64).to_le_bytes());
        checksum_fix(&mut rsdp[..20], 8);
        checksum_fix(&mut rsdp, 32);
        regions.push((RSDP, rsdp));
        regions.push((XSDT, xsdt));
        (
            FixtureMemory(Arc::new(regions)),
            HostPhysAddr::new(RSDP as u64),
        )
    }

    pub fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../tests/fixtures/acpi/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn discover(tables: &[&[u8]]) -> Result<Platform, PlatformError> {
        let (mem, rsdp) = machine(tables);
        // SAFETY: the fixture memory holds the RSDP and every table it leads to.
        unsafe { Platform::discover(mem, rsdp) }
    }

    /// A MADT with the given (type, body) entries, checksum fixed.
    pub fn madt(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut t = vec![0u8; 44];
        t[0..4].copy_from_slice(b"APIC");
        t[8] = 4;
        t[10..16].copy_from_slice(b"ATOLL ");
        t[36..40].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        for e in entries {
            t.extend_from_slice(e);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        checksum_fix(&mut t, 9);
        t
    }

    pub fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    pub fn x2apic(uid: u32, id: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![9, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&uid.to_le_bytes());
        e
    }

    #[test]
    fn captured_firecracker_tables() {
        // Captured from /sys/firmware/acpi/tables of a Firecracker VM with 2 vCPUs.
        let (apic, mcfg) = (fixture("firecracker/APIC"), fixture("firecracker/MCFG"));
        let p = discover(&[&apic, &mcfg]).unwrap();
        let ids: Vec<u32> = p.cpus().iter().map(|c| c.apic_id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(p.ioapic_count, 1);
        assert_eq!(p.local_apic_base, HostPhysAddr::new(0xfee0_0000));
        assert!(!p.dmar_present);
        assert_eq!(p.ecam().count(), 1);
    }

    fn captured(dir: &str) -> Platform {
        let names: Vec<String> = std::fs::read_dir(format!(
            "{}/../tests/fixtures/acpi/{dir}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
        let tables: Vec<Vec<u8>> = names
            .iter()
            .map(|n| fixture(&format!("{dir}/{n}")))
            .collect();
        let refs: Vec<&[u8]> = tables.iter().map(Vec::as_slice).collect();
        discover(&refs).unwrap()
    }

    #[test]
    fn captured_qemu_q35_tables() {
        // `cargo xtask capture-acpi --emulator qemu --cpus 4`: QEMU 10 q35.
        let p = captured("boot-qemu-4cpu");
        let ids: Vec<u32> = p.cpus().iter().map(|c| c.apic_id).collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
        assert_eq!(p.ioapic_count, 1);
        assert_eq!(p.local_apic_base, HostPhysAddr::new(0xfee0_0000));
        let ecam: Vec<&Ecam> = p.ecam().collect();
        assert_eq!(ecam.len(), 1);
        assert_eq!(ecam[0].base, HostPhysAddr::new(0xb000_0000));
        assert!(!p.dmar_present);
        // ICH9 PM base 0x600: PM1a_CNT at 0x604; the DSDT's \_S5 is {0, 0}.
        assert_eq!(
            p.power,
            Some(PmControl {
                pm1a: 0x604,
                pm1b: None,
                s5: Some((0, 0))
            })
        );
    }

    #[test]
    fn captured_qemu_vtd_tables() {
        // `cargo xtask capture-acpi --scenario boot-vtd --emulator qemu --cpus 2`.
        let p = captured("boot-vtd-qemu-2cpu");
        assert_eq!(p.cpus().len(), 2);
        assert!(p.dmar_present);
        assert_eq!(p.dmar_units, 1);
    }

    #[test]
    fn captured_bochs_tables() {
        // `cargo xtask capture-acpi --emulator bochs --cpus 2`: Bochs i440fx, no MCFG.
        let p = captured("boot-bochs-2cpu");
        let ids: Vec<u32> = p.cpus().iter().map(|c| c.apic_id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(p.ecam().count(), 0);
        assert!(!p.dmar_present);
        // PIIX4 PM base 0xb000: PM1a_CNT at 0xb004.
        assert_eq!(
            p.power,
            Some(PmControl {
                pm1a: 0xb004,
                pm1b: None,
                s5: Some((0, 0))
            })
        );
    }

    #[test]
    fn disabled_and_absent_processors_are_skipped_and_duplicates_merged() {
        let t = madt(&[
            lapic(0, 0, 1),
            lapic(1, 1, 0),    // disabled
            lapic(2, 0xff, 1), // "not present" id
            lapic(3, 2, 1),
            x2apic(3, 2, 1),   // same CPU listed again as x2APIC
            x2apic(4, 300, 1), // only reachable in x2APIC mode
            x2apic(5, 301, 0), // disabled
        ]);
        let p = discover(&[&t]).unwrap();
        let ids: Vec<(u32, bool)> = p
            .cpus()
            .iter()
            .map(|c| (c.apic_id, c.x2apic_entry))
            .collect();
        assert_eq!(ids, vec![(0, false), (2, false), (300, true)]);
    }

    #[test]
    fn malformed_madt_is_an_error() {
        let mut t = madt(&[lapic(0, 0, 1), lapic(1, 1, 1)]);
        t[44 + 8 + 1] = 0; // second entry has length 0
        checksum_fix(&mut t, 9);
        assert_eq!(
            discover(&[&t]).unwrap_err(),
            PlatformError::MalformedMadt { offset: 52 }
        );
        let none = madt(&[lapic(0, 0, 0)]);
        assert_eq!(discover(&[&none]).unwrap_err(), PlatformError::NoProcessors);
        assert_eq!(discover(&[]).unwrap_err(), PlatformError::NoMadt);
    }

    #[test]
    fn every_listed_table_is_visited() {
        let (apic, mcfg) = (fixture("firecracker/APIC"), fixture("firecracker/MCFG"));
        let (mem, rsdp) = machine(&[&apic, &mcfg]);
        let mut seen = Vec::new();
        // SAFETY: the fixture memory holds every table.
        unsafe { for_each_table(mem, rsdp, |sig, bytes| seen.push((sig, bytes.to_vec()))) }
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(&seen[0].0, b"APIC");
        assert_eq!(seen[0].1, apic);
        assert_eq!(&seen[1].0, b"MCFG");
    }

    #[test]
    fn s5_package_forms() {
        // Name(_S5, Package(4) {5, 0, 0, 0}) with BytePrefix
        assert_eq!(
            find_s5(b"\x08_S5_\x12\x0a\x04\x0a\x05\x00\x00\x00"),
            Some((5, 0))
        );
        // ZeroOp / OneOp elements
        assert_eq!(find_s5(b"\x08_S5_\x12\x06\x02\x00\x01"), Some((0, 1)));
        // Not a package
        assert_eq!(find_s5(b"\x08_S5_\x14\x00"), None);
        assert_eq!(find_s5(b"no sleep object"), None);
    }
}
