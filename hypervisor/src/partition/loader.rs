//! Loading a bare-metal guest image into an enclave and describing the CPU state it starts in.
//!
//! The image is an ELF64 (x86-64) file whose `PT_LOAD` segments are copied to their physical
//! addresses in guest RAM (GPA 0 is the start of the enclave's RAM). For `long64` entry atoll
//! also writes, below 32 KiB, identity page tables for the first 4 GiB (2 MiB pages), a GDT and
//! the command line; the guest starts in 64-bit mode at the ELF entry with
//! RDI = RAM bytes, RSI = command line GPA, RDX = its length, RSP = top of RAM. For `real16`
//! entry the guest starts in real mode at the entry (CS = entry >> 4 & 0xf000, IP = the rest),
//! with the same registers' low halves. Both fit any later vendor backend: [`BootState`] is
//! vendor-neutral.

use crate::partition::config::EntryMode;
use atoll_vcpu::GuestMemory;
use boot::GuestPhysAddr;
use core::fmt;
use elf::endian::AnyEndian;
use elf::ElfBytes;

/// Guest RAM below this is atoll's (tables, GDT, command line) in `long64` mode.
pub const RESERVED_LOW: u64 = 0x8000;
/// PML4 of the identity tables.
pub const PML4_GPA: u64 = 0x1000;
const PDPT_GPA: u64 = 0x2000;
const PD_GPA: u64 = 0x3000; // four PDs: 0x3000..0x7000
/// The guest GDT.
pub const GDT_GPA: u64 = 0x7000;
/// Where the command line is written.
pub const CMDLINE_GPA: u64 = 0x7800;
const CMDLINE_MAX: u64 = RESERVED_LOW - CMDLINE_GPA;

/// GDT selectors of the `long64` guest.
pub const CODE64_SELECTOR: u16 = 0x08;
/// Data selector.
pub const DATA_SELECTOR: u16 = 0x10;
/// The GDT: null, 64-bit code (L, P, DPL0, execute/read), data (P, read/write).
const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// How the vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootState {
    /// Entry mode.
    pub mode: EntryMode,
    /// First instruction (linear address; real mode: CS base + IP).
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Arguments: RDI = RAM bytes, RSI = command line GPA, RDX = command line length.
    pub rdi: u64,
    /// See `rdi`.
    pub rsi: u64,
    /// See `rdi`.
    pub rdx: u64,
    /// CR0 (guest view).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 (guest view).
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// GDT base and limit (long64).
    pub gdt: (u64, u16),
    /// CS selector: the GDT's code segment in long mode, the real-mode segment otherwise.
    pub cs_selector: u16,
    /// DS/ES/SS/FS/GS selector (0 in real mode).
    pub ds_selector: u16,
}

/// Why an image cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Not an ELF file (or a malformed one).
    NotElf(&'static str),
    /// An ELF, but not 64-bit x86-64.
    WrongMachine,
    /// A segment does not fit in guest RAM, or overlaps atoll's low area.
    SegmentOutside { paddr: u64, memsz: u64, ram: u64 },
    /// A segment's file bytes lie outside the file.
    SegmentTruncated { offset: u64, filesz: u64 },
    /// No loadable segment.
    NothingToLoad,
    /// Entry outside what real mode can reach (below 1 MiB).
    EntryUnreachable(u64),
    /// The command line does not fit.
    CmdlineTooLong(usize),
    /// Guest RAM too small for the layout.
    RamTooSmall(u64),
    /// The entry mode is not an ELF one (`linux` enclaves load through [`crate::partition::linux`]).
    NotElfEntry,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotElf(why) => write!(f, "guest image is not a valid ELF file: {why}"),
            LoadError::WrongMachine => write!(f, "guest image is not an x86-64 ELF64 file"),
            LoadError::SegmentOutside { paddr, memsz, ram } => write!(
                f,
                "segment [{paddr:#x}, {:#x}) lies outside guest RAM [{RESERVED_LOW:#x}, {ram:#x})",
                paddr.saturating_add(*memsz)
            ),
            LoadError::SegmentTruncated { offset, filesz } => {
                write!(
                    f,
                    "segment bytes [{offset:#x}+{filesz:#x}) run past the end of the file"
                )
            }
            LoadError::NothingToLoad => write!(f, "guest image has no loadable segment"),
            LoadError::EntryUnreachable(e) => write!(
                f,
                "entry {e:#x} is not reachable in real mode (must be below 1 MiB)"
            ),
            LoadError::CmdlineTooLong(n) => write!(
                f,
                "command line of {n} bytes does not fit ({CMDLINE_MAX} at most)"
            ),
            LoadError::RamTooSmall(r) => write!(
                f,
                "guest RAM of {r:#x} bytes is too small (need at least 1 MiB)"
            ),
            LoadError::NotElfEntry => write!(f, "entry = \"linux\" takes a kernel, not an ELF"),
        }
    }
}

const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;

/// Loads `image` into `mem` (RAM of `ram` bytes) and returns the boot state.
pub fn load(
    image: &[u8],
    mode: EntryMode,
    cmdline: &str,
    ram: u64,
    mem: &mut impl GuestMemory,
) -> Result<BootState, LoadError> {
    if mode == EntryMode::Linux {
        return Err(LoadError::NotElfEntry);
    }
    if ram < 0x10_0000 {
        return Err(LoadError::RamTooSmall(ram));
    }
    let file =
        ElfBytes::<AnyEndian>::minimal_parse(image).map_err(|_| LoadError::NotElf("bad header"))?;
    if file.ehdr.class != elf::file::Class::ELF64 || file.ehdr.e_machine != EM_X86_64 {
        return Err(LoadError::WrongMachine);
    }
    if cmdline.len() as u64 > CMDLINE_MAX {
        return Err(LoadError::CmdlineTooLong(cmdline.len()));
    }
    let segments = file.segments().ok_or(LoadError::NothingToLoad)?;
    // Check every segment before writing any, so a bad image leaves RAM untouched.
    let mut loads = 0;
    for ph in segments
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
    {
        let end = ph.p_paddr.checked_add(ph.p_memsz);
        if ph.p_paddr < RESERVED_LOW || end.is_none_or(|e| e > ram) || ph.p_filesz > ph.p_memsz {
            return Err(LoadError::SegmentOutside {
                paddr: ph.p_paddr,
                memsz: ph.p_memsz,
                ram,
            });
        }
        if ph
            .p_offset
            .checked_add(ph.p_filesz)
            .is_none_or(|e| e > image.len() as u64)
        {
            return Err(LoadError::SegmentTruncated {
                offset: ph.p_offset,
                filesz: ph.p_filesz,
            });
        }
        loads += 1;
    }
    if loads == 0 {
        return Err(LoadError::NothingToLoad);
    }
    let entry = file.ehdr.e_entry;
    if mode == EntryMode::Real16 && entry >= 0x10_0000 {
        return Err(LoadError::EntryUnreachable(entry));
    }
    let mut put = |gpa: u64, bytes: &[u8]| mem.write(GuestPhysAddr::new(gpa), bytes);
    for ph in segments
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
    {
        let bytes = &image[ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize];
        put(ph.p_paddr, bytes).ok_or(LoadError::SegmentOutside {
            paddr: ph.p_paddr,
            memsz: ph.p_memsz,
            ram,
        })?;
        // Zero the rest (.bss) in page-sized chunks.
        let zeros = [0u8; 4096];
        let mut at = ph.p_paddr + ph.p_filesz;
        let end = ph.p_paddr + ph.p_memsz;
        while at < end {
            let n = (end - at).min(4096);
            put(at, &zeros[..n as usize]).ok_or(LoadError::SegmentOutside {
                paddr: ph.p_paddr,
                memsz: ph.p_memsz,
                ram,
            })?;
            at += n;
        }
    }
    put(CMDLINE_GPA, cmdline.as_bytes()).ok_or(LoadError::RamTooSmall(ram))?;

    let mut state = BootState {
        mode,
        rip: entry,
        rsp: ram & !0xf,
        rdi: ram,
        rsi: CMDLINE_GPA,
        rdx: cmdline.len() as u64,
        cr0: 0x10, // ET
        cr3: 0,
        cr4: 0,
        efer: 0,
        gdt: (0, 0xffff),
        cs_selector: 0,
        ds_selector: 0,
    };
    match mode {
        EntryMode::Long64 => {
            write_identity_tables(&mut put).ok_or(LoadError::RamTooSmall(ram))?;
            let mut gdt = [0u8; 24];
            for (i, d) in GDT.iter().enumerate() {
                gdt[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
            }
            put(GDT_GPA, &gdt).ok_or(LoadError::RamTooSmall(ram))?;
            // PE | MP | ET | NE | WP | PG; PAE | OSFXSR | OSXMMEXCPT; LME | LMA.
            state.cr0 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
            state.cr3 = PML4_GPA;
            state.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
            state.efer = (1 << 8) | (1 << 10);
            state.gdt = (GDT_GPA, (GDT.len() * 8 - 1) as u16);
            state.cs_selector = CODE64_SELECTOR;
            state.ds_selector = DATA_SELECTOR;
        }
        EntryMode::Real16 => {
            // Real mode addresses are 20 bits: segment in CS, offset in IP.
            state.cs_selector = ((entry >> 4) & 0xf000) as u16;
            state.rsp = RESERVED_LOW - 0x10;
        }
        EntryMode::Linux => return Err(LoadError::NotElfEntry),
    }
    Ok(state)
}

/// PML4 → PDPT → four PDs of 2 MiB pages mapping [0, 4 GiB) one to one, at 0x1000–0x6fff
/// (shared with the Linux loader).
pub(crate) fn write_identity_tables(put: &mut impl FnMut(u64, &[u8]) -> Option<()>) -> Option<()> {
    const P_RW: u64 = 0x3;
    const PS: u64 = 1 << 7;
    put(PML4_GPA, &(PDPT_GPA | P_RW).to_le_bytes())?;
    for i in 0..4u64 {
        put(
            PDPT_GPA + i * 8,
            &((PD_GPA + i * 0x1000) | P_RW).to_le_bytes(),
        )?;
    }
    let mut pd = [0u8; 4096];
    for t in 0..4u64 {
        for e in 0..512u64 {
            let page = (t * 512 + e) << 21;
            pd[(e * 8) as usize..(e * 8 + 8) as usize]
                .copy_from_slice(&(page | P_RW | PS).to_le_bytes());
        }
        put(PD_GPA + t * 0x1000, &pd)?;
    }
    Some(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use atoll_vcpu::SliceMemory;

    /// A minimal ELF64 x86-64 file with one PT_LOAD segment of `code` at `paddr` (memsz `memsz`).
    pub fn tiny_elf(paddr: u64, code: &[u8], memsz: u64, entry: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELF64
        f[5] = 1; // little endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // offset
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn long64_image_tables_and_registers() {
        let mut ram = vec![0xccu8; 2 << 20];
        let elf = tiny_elf(0x10_0000, &[0xf4, 0x90], 0x2000, 0x10_0000);
        let s = load(
            &elf,
            EntryMode::Long64,
            "suite",
            ram.len() as u64,
            &mut SliceMemory(&mut ram),
        )
        .unwrap();
        assert_eq!(s.rip, 0x10_0000);
        assert_eq!(&ram[0x10_0000..0x10_0002], &[0xf4, 0x90]);
        assert!(
            ram[0x10_0002..0x10_2000].iter().all(|&b| b == 0),
            ".bss zeroed"
        );
        assert_eq!(ram[0x10_2000], 0xcc, "nothing written past memsz");
        assert_eq!(
            (s.rdi, s.rsi, s.rdx, s.rsp),
            (2 << 20, CMDLINE_GPA, 5, 2 << 20)
        );
        assert_eq!(
            &ram[CMDLINE_GPA as usize..CMDLINE_GPA as usize + 5],
            b"suite"
        );
        assert_eq!(s.cr3, PML4_GPA);
        assert_ne!(s.cr0 & (1 << 31), 0);
        assert_ne!(s.efer & (1 << 10), 0);
        // Walk the tables for a few addresses: each maps to itself with a 2 MiB page.
        let rd = |a: u64| u64::from_le_bytes(ram[a as usize..a as usize + 8].try_into().unwrap());
        for va in [0u64, 0x10_0000, 0x1234_5678, 0xffff_f000] {
            let pdpt = rd(PML4_GPA) & !0xfff;
            let pd = rd(pdpt + ((va >> 30) & 511) * 8) & !0xfff;
            let pde = rd(pd + ((va >> 21) & 511) * 8);
            assert_eq!(pde & 0x83, 0x83);
            assert_eq!((pde & !0x1f_ffff) | (va & 0x1f_ffff), va);
        }
        assert_eq!(rd(GDT_GPA + 8), GDT[1]);
    }

    #[test]
    fn real16_entry() {
        let mut ram = vec![0u8; 1 << 20];
        let elf = tiny_elf(0x8000, &[0xf4], 1, 0x8000);
        let s = load(
            &elf,
            EntryMode::Real16,
            "",
            ram.len() as u64,
            &mut SliceMemory(&mut ram),
        )
        .unwrap();
        assert_eq!((s.rip, s.cs_selector, s.cr0), (0x8000, 0, 0x10));
        assert_eq!(ram[0x1000], 0, "no page tables in real mode");
        let elf = tiny_elf(0x10_0000, &[0xf4], 1, 0x10_0000);
        let mut ram = vec![0u8; 2 << 20];
        assert_eq!(
            load(
                &elf,
                EntryMode::Real16,
                "",
                2 << 20,
                &mut SliceMemory(&mut ram)
            ),
            Err(LoadError::EntryUnreachable(0x10_0000))
        );
    }

    #[test]
    fn bad_images_are_refused_and_ram_untouched() {
        let mut ram = vec![0xaau8; 1 << 20];
        let mut m = SliceMemory(&mut ram);
        assert!(matches!(
            load(b"not an elf", EntryMode::Long64, "", 1 << 20, &mut m),
            Err(LoadError::NotElf(_))
        ));
        let mut bad = tiny_elf(0x10_0000, &[1], 1, 0);
        bad[18] = 3; // EM_386
        assert_eq!(
            load(&bad, EntryMode::Long64, "", 1 << 20, &mut m),
            Err(LoadError::WrongMachine)
        );
        let big = tiny_elf(0xf_f000, &[1, 2], 0x2000, 0);
        assert!(matches!(
            load(&big, EntryMode::Long64, "", 1 << 20, &mut m),
            Err(LoadError::SegmentOutside { .. })
        ));
        let low = tiny_elf(0x1000, &[1], 1, 0);
        assert!(matches!(
            load(&low, EntryMode::Long64, "", 1 << 20, &mut m),
            Err(LoadError::SegmentOutside { .. })
        ));
        let mut trunc = tiny_elf(0x10000, &[1, 2, 3], 3, 0);
        trunc.truncate(trunc.len() - 2);
        assert!(matches!(
            load(&trunc, EntryMode::Long64, "", 1 << 20, &mut m),
            Err(LoadError::SegmentTruncated { .. })
        ));
        let ok = tiny_elf(0x10000, &[1], 1, 0x10000);
        assert_eq!(
            load(&ok, EntryMode::Long64, &"x".repeat(5000), 1 << 20, &mut m),
            Err(LoadError::CmdlineTooLong(5000))
        );
        assert_eq!(
            load(&ok, EntryMode::Long64, "", 0x8_0000, &mut m),
            Err(LoadError::RamTooSmall(0x8_0000))
        );
        assert!(
            ram.iter().all(|&b| b == 0xaa),
            "refused images write nothing"
        );
    }
}
