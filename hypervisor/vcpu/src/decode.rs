//! Reading and decoding the guest instruction behind an exit, for backends that are not told
//! its length or operands (AMD SVM without NRIP save and decode assists, as QEMU emulates it;
//! later MMIO exits on both backends).
//!
//! [`instruction_site`] says where the current instruction is (paging mode from CR0/CR4/EFER,
//! code size from CS, linear address CS base + RIP); [`fetch`] walks the guest's own page
//! tables (paging off, 32-bit with 4 MiB pages, PAE, 4- and 5-level long mode with 2 MiB and
//! 1 GiB pages; SDM Vol. 3A ch. 4, APM Vol. 2 §5.3) to read up to 15 bytes there from guest
//! RAM; [`decode`] runs them through `iced-x86`. Guest-controlled bytes and
//! tables never cause a panic: anything unreadable or undecodable is `None`.

use crate::{Gpr, GuestMemory};
use boot::GuestPhysAddr;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Longest x86 instruction.
pub const MAX_INSTRUCTION: usize = 15;

/// How the guest translates linear addresses (Intel SDM Vol. 3A §4.1.1 and Table 4-1; AMD APM
/// Vol. 2 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paging {
    /// Paging off (real mode, or protected mode without CR0.PG): linear = physical.
    Off,
    /// 32-bit paging (CR0.PG, CR4.PAE clear): two levels of 4-byte entries; 4 MiB pages when
    /// CR4.PSE is set (SDM §4.3), with PSE-36's high address bits.
    Legacy32 { cr3: u64, pse: bool },
    /// PAE paging (CR4.PAE, not long mode): four PDPTEs at CR3[31:5], then two levels of
    /// 8-byte entries with 2 MiB pages (SDM §4.4).
    Pae { cr3: u64 },
    /// 4-level paging (long mode, CR4.LA57 clear; SDM §4.5).
    Long4 { cr3: u64 },
    /// 5-level paging (long mode, CR4.LA57 set; SDM §4.5).
    Long5 { cr3: u64 },
}

/// CR0.PE.
const CR0_PE: u64 = 1;
/// CR0.PG.
const CR0_PG: u64 = 1 << 31;
/// CR4.PSE.
const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE.
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57.
const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA.
const EFER_LMA: u64 = 1 << 10;

impl Paging {
    /// The paging mode the control registers select (SDM Vol. 3A Table 4-1).
    pub fn from_registers(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Self {
        if cr0 & CR0_PG == 0 {
            Paging::Off
        } else if efer & EFER_LMA != 0 {
            if cr4 & CR4_LA57 != 0 {
                Paging::Long5 { cr3 }
            } else {
                Paging::Long4 { cr3 }
            }
        } else if cr4 & CR4_PAE != 0 {
            Paging::Pae { cr3 }
        } else {
            Paging::Legacy32 {
                cr3,
                pse: cr4 & CR4_PSE != 0,
            }
        }
    }
}

/// The guest's code segment as instruction fetch needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeSegment {
    /// Its base (ignored in 64-bit mode, where it is 0 for CS).
    pub base: u64,
    /// The L bit: a 64-bit code segment (meaningful with EFER.LMA).
    pub long: bool,
    /// The D bit: 32-bit default operand size.
    pub default32: bool,
}

/// Where the guest's current instruction is and how to read it: the paging mode, the code
/// size (16, 32 or 64) and the linear address of RIP (CS base + RIP outside 64-bit mode).
/// The one helper both the SVM backend's instruction fetch and MMIO decoding use.
pub fn instruction_site(
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    cs: CodeSegment,
    rip: u64,
) -> (Paging, u32, u64) {
    let paging = Paging::from_registers(cr0, cr3, cr4, efer);
    let bitness = if efer & EFER_LMA != 0 && cs.long {
        64
    } else if cr0 & CR0_PE != 0 && cs.default32 {
        32
    } else {
        16
    };
    let linear = if bitness == 64 {
        rip
    } else {
        // Outside 64-bit mode the linear address wraps at 4 GiB (and EIP/IP is what counts).
        let ip = if bitness == 32 {
            rip & 0xffff_ffff
        } else {
            rip & 0xffff
        };
        cs.base.wrapping_add(ip) & 0xffff_ffff
    };
    (paging, bitness, linear)
}

/// [`instruction_site`] of a vCPU's current instruction.
pub fn site_of(vcpu: &impl crate::Vcpu) -> (Paging, u32, u64) {
    instruction_site(
        vcpu.cr(0),
        vcpu.cr(3),
        vcpu.cr(4),
        vcpu.efer(),
        vcpu.code_segment(),
        vcpu.rip(),
    )
}

const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Reads the `size`-byte little-endian entry at `gpa`.
fn entry(mem: &impl GuestMemory, gpa: u64, size: usize) -> Option<u64> {
    let mut e = [0u8; 8];
    mem.read(GuestPhysAddr::new(gpa), &mut e[..size])?;
    Some(u64::from_le_bytes(e))
}

/// Walks 8-byte-entry levels from `table`: `levels` are the shifts of the levels to walk, and
/// a level whose shift is in `large_at` may map a page (PS set). Every level's entries are read
/// from guest RAM; nothing recurses.
fn walk64(
    mem: &impl GuestMemory,
    mut table: u64,
    levels: &[u32],
    large_at: &[u32],
    linear: u64,
) -> Option<GuestPhysAddr> {
    for (i, &shift) in levels.iter().enumerate() {
        let index = (linear >> shift) & 0x1ff;
        let e = entry(mem, table + index * 8, 8)?;
        if e & PRESENT == 0 {
            return None;
        }
        let last = i + 1 == levels.len();
        if last || (e & LARGE != 0 && large_at.contains(&shift)) {
            let page_mask = (1u64 << shift) - 1;
            let base = e & ADDR & !page_mask;
            return Some(GuestPhysAddr::new(base | (linear & page_mask)));
        }
        table = e & ADDR;
    }
    None
}

/// Guest-physical address of `linear`, or `None` if it is not mapped (or the tables lie outside
/// guest RAM).
pub fn translate(mem: &impl GuestMemory, paging: Paging, linear: u64) -> Option<GuestPhysAddr> {
    match paging {
        Paging::Off => Some(GuestPhysAddr::new(linear)),
        Paging::Long4 { cr3 } => walk64(mem, cr3 & ADDR, &[39, 30, 21, 12], &[30, 21], linear),
        Paging::Long5 { cr3 } => walk64(mem, cr3 & ADDR, &[48, 39, 30, 21, 12], &[30, 21], linear),
        Paging::Pae { cr3 } => {
            let linear = linear & 0xffff_ffff;
            // The four PDPTEs sit at CR3[31:5] (SDM §4.4.1).
            let pdpte = entry(mem, (cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8, 8)?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            walk64(mem, pdpte & ADDR, &[21, 12], &[21], linear)
        }
        Paging::Legacy32 { cr3, pse } => {
            let linear = linear & 0xffff_ffff;
            let pde = entry(mem, (cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4, 4)?;
            if pde & PRESENT == 0 {
                return None;
            }
            if pse && pde & LARGE != 0 {
                // A 4 MiB page: bits 31:22 of the address from the PDE, bits 39:32 from PDE
                // bits 20:13 (PSE-36, SDM §4.3 Table 4-4).
                let base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
                return Some(GuestPhysAddr::new(base | (linear & 0x3f_ffff)));
            }
            let pte = entry(mem, (pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4, 4)?;
            if pte & PRESENT == 0 {
                return None;
            }
            Some(GuestPhysAddr::new((pte & 0xffff_f000) | (linear & 0xfff)))
        }
    }
}

/// Reads up to 15 bytes of instruction at `linear`, stopping at the first unmapped byte.
/// Returns the bytes and how many were read.
pub fn fetch(
    mem: &impl GuestMemory,
    paging: Paging,
    linear: u64,
) -> ([u8; MAX_INSTRUCTION], usize) {
    let mut buf = [0u8; MAX_INSTRUCTION];
    let mut n = 0;
    while n < MAX_INSTRUCTION {
        let at = linear.wrapping_add(n as u64);
        // Bytes up to the end of this 4 KiB page translate together.
        let in_page = (4096 - (at & 0xfff)) as usize;
        let take = in_page.min(MAX_INSTRUCTION - n);
        let Some(gpa) = translate(mem, paging, at) else {
            break;
        };
        if mem.read(gpa, &mut buf[n..n + take]).is_none() {
            break;
        }
        n += take;
    }
    (buf, n)
}

/// A decoded guest instruction, as far as exit handling needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Its length in bytes.
    pub len: u8,
    /// MOV to or from a control register: (CR number, general register, write to CR).
    pub mov_cr: Option<(u8, Gpr, bool)>,
    /// CLTS, or LMSW with its source already read ([`cr0_write`] fills it: it needs the
    /// guest's registers and memory, which [`decode`] does not see).
    pub cr0_write: Option<Cr0Write>,
}

/// The 64-bit register behind `reg`, as a [`Gpr`].
fn gpr(reg: Register) -> Option<Gpr> {
    let full = reg.full_register();
    let n = (full as u32).checked_sub(Register::RAX as u32)?;
    if n < 16 {
        Gpr::from_index(n as u8)
    } else {
        None
    }
}

/// Decodes the instruction in `bytes` for a `bitness` (16, 32 or 64) code segment.
pub fn decode(bytes: &[u8], bitness: u32) -> Option<Decoded> {
    let mut decoder = Decoder::try_new(bitness, bytes, DecoderOptions::NONE).ok()?;
    let mut ins = Instruction::default();
    decoder.decode_out(&mut ins);
    if ins.code() == Code::INVALID {
        return None;
    }
    let mut mov_cr = None;
    if ins.mnemonic() == Mnemonic::Mov
        && ins.op_count() == 2
        && ins.op0_kind() == OpKind::Register
        && ins.op1_kind() == OpKind::Register
    {
        let (a, b) = (ins.op0_register(), ins.op1_register());
        if a.is_cr() {
            mov_cr = gpr(b).map(|g| (a.number() as u8, g, true));
        } else if b.is_cr() {
            mov_cr = gpr(a).map(|g| (b.number() as u8, g, false));
        }
    }
    Some(Decoded {
        len: ins.len() as u8,
        mov_cr,
        cr0_write: None,
    })
}

/// A write to CR0 by an instruction other than MOV (for backends that are not told which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cr0Write {
    /// CLTS (clears CR0.TS).
    Clts,
    /// LMSW with this 16-bit source (already read from its register or memory operand).
    Lmsw(u16),
}

/// Decodes the instruction at the guest's RIP as CLTS or LMSW and reads LMSW's source: a
/// register through `gpr`, or memory through the guest's page tables (`paging`; segment bases
/// are taken as 0 for DS/ES/SS, as in 64-bit mode — a based segment or FS/GS is refused). Also
/// returns the instruction's length. `None` for anything else or an unreadable operand.
pub fn cr0_write(
    mem: &impl GuestMemory,
    paging: Paging,
    bitness: u32,
    linear_rip: u64,
    gpr: impl Fn(Gpr) -> u64,
) -> Option<(Cr0Write, u8)> {
    let (bytes, n) = fetch(mem, paging, linear_rip);
    let mut decoder = Decoder::try_new(bitness, &bytes[..n], DecoderOptions::NONE).ok()?;
    decoder.set_ip(linear_rip);
    let mut ins = Instruction::default();
    decoder.decode_out(&mut ins);
    let len = ins.len() as u8;
    match ins.mnemonic() {
        Mnemonic::Clts => Some((Cr0Write::Clts, len)),
        Mnemonic::Lmsw => {
            let value = match ins.op0_kind() {
                OpKind::Register => gpr(self::gpr(ins.op0_register())?),
                OpKind::Memory => {
                    let seg = ins.memory_segment();
                    if bitness != 64 && !matches!(seg, Register::DS | Register::ES | Register::SS) {
                        return None;
                    }
                    if matches!(seg, Register::FS | Register::GS) {
                        return None;
                    }
                    let linear = ins.virtual_address(0, 0, |reg, _, _| match reg {
                        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
                        Register::RIP => Some(ins.next_ip()),
                        r => self::gpr(r).map(&gpr).map(|v| match r.size() {
                            4 => v & 0xffff_ffff,
                            2 => v & 0xffff,
                            _ => v,
                        }),
                    })?;
                    let mut word = [0u8; 2];
                    for (i, b) in word.iter_mut().enumerate() {
                        let gpa = translate(mem, paging, linear.wrapping_add(i as u64))?;
                        let mut one = [0u8; 1];
                        mem.read(gpa, &mut one)?;
                        *b = one[0];
                    }
                    u64::from(u16::from_le_bytes(word))
                }
                _ => return None,
            };
            Some((Cr0Write::Lmsw(value as u16), len))
        }
        _ => None,
    }
}

/// What INS/OUTS need beyond what the I/O exit reports: the address size (which of RSI/RDI,
/// ESI/EDI, SI/DI and RCX/ECX/CX count) and the memory operand's segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIo {
    /// 2, 4 or 8 bytes.
    pub address_size: u8,
    /// OUTS reads DS:rSI unless overridden; INS always writes ES:rDI.
    pub segment: Segment,
    /// A REP prefix.
    pub rep: bool,
    /// The instruction's length.
    pub len: u8,
}

/// A segment register, as an instruction names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// Decodes `bytes` as INS or OUTS (any size); `None` for anything else.
pub fn string_io(bytes: &[u8], bitness: u32) -> Option<StringIo> {
    let mut decoder = Decoder::try_new(bitness, bytes, DecoderOptions::NONE).ok()?;
    let mut ins = Instruction::default();
    decoder.decode_out(&mut ins);
    let (mem_op, out) = match ins.mnemonic() {
        Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => (1, true),
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => (0, false),
        _ => return None,
    };
    let address_size = match ins.op_kind(mem_op) {
        OpKind::MemorySegSI | OpKind::MemoryESDI => 2,
        OpKind::MemorySegESI | OpKind::MemoryESEDI => 4,
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => 8,
        _ => return None,
    };
    let segment = if out {
        match ins.memory_segment() {
            Register::ES => Segment::Es,
            Register::CS => Segment::Cs,
            Register::SS => Segment::Ss,
            Register::FS => Segment::Fs,
            Register::GS => Segment::Gs,
            _ => Segment::Ds,
        }
    } else {
        Segment::Es
    };
    Some(StringIo {
        address_size,
        segment,
        rep: ins.has_rep_prefix(),
        len: ins.len() as u8,
    })
}

/// A memory access by a MOV-family instruction, as an MMIO exit needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Bytes accessed (1, 2, 4 or 8).
    pub size: u8,
    /// A store (the guest writes the device).
    pub write: bool,
    /// What is stored or where the load goes.
    pub operand: MmioOperand,
    /// Loads into a 32-bit register zero the upper half; MOVZX zero-extends to the register's
    /// size; this is that size in bytes (for loads).
    pub dest_size: u8,
    /// The instruction's length.
    pub len: u8,
}

/// The register or immediate side of an MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOperand {
    /// A general register; `high_byte` for AH/CH/DH/BH.
    Register { gpr: Gpr, high_byte: bool },
    /// An immediate (stores only), already sign-extended as the instruction does.
    Immediate(u64),
}

/// Decodes the instruction in `bytes` as an MMIO access: MOV between a register or an immediate
/// and memory (88/89/8A/8B/C6/C7), MOVZX loads (0F B6/B7) — the forms Linux's `readb/w/l/q` and
/// `writeb/w/l/q` compile to. Anything else is `None` (the caller refuses the access).
pub fn decode_mmio(bytes: &[u8], bitness: u32) -> Option<MmioAccess> {
    let mut decoder = Decoder::try_new(bitness, bytes, DecoderOptions::NONE).ok()?;
    let mut ins = Instruction::default();
    decoder.decode_out(&mut ins);
    if ins.code() == Code::INVALID || ins.op_count() != 2 {
        return None;
    }
    let mem_first = ins.op0_kind() == OpKind::Memory;
    let mem_second = ins.op1_kind() == OpKind::Memory;
    if mem_first == mem_second {
        return None;
    }
    let size = ins.memory_size().size() as u8;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return None;
    }
    let reg_operand = |r: Register| {
        let high = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
        let base = match r {
            Register::AH => Register::AL,
            Register::CH => Register::CL,
            Register::DH => Register::DL,
            Register::BH => Register::BL,
            other => other,
        };
        gpr(base).map(|g| MmioOperand::Register {
            gpr: g,
            high_byte: high,
        })
    };
    let len = ins.len() as u8;
    match (ins.mnemonic(), mem_first) {
        (Mnemonic::Mov, true) => {
            let operand = match ins.op1_kind() {
                OpKind::Register => reg_operand(ins.op1_register())?,
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64 => MmioOperand::Immediate(ins.immediate(1)),
                _ => return None,
            };
            Some(MmioAccess {
                size,
                write: true,
                operand,
                dest_size: size,
                len,
            })
        }
        (Mnemonic::Mov | Mnemonic::Movzx, false) if ins.op0_kind() == OpKind::Register => {
            let r = ins.op0_register();
            let dest_size = r.size() as u8;
            Some(MmioAccess {
                size,
                write: false,
                operand: reg_operand(r)?,
                dest_size,
                len,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SliceMemory;

    fn put32(m: &mut [u8], at: u64, v: u32) {
        m[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(m: &mut [u8], at: u64, v: u64) {
        m[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn at(m: &mut [u8], p: Paging, linear: u64) -> Option<u64> {
        translate(&SliceMemory(m), p, linear).map(|g| g.as_u64())
    }

    #[test]
    fn ins_and_outs_forms() {
        let s = |b: &[u8], bits| string_io(b, bits);
        // rep outsb (64-bit: DS:RSI)
        assert_eq!(
            s(&[0xf3, 0x6e], 64),
            Some(StringIo {
                address_size: 8,
                segment: Segment::Ds,
                rep: true,
                len: 2
            })
        );
        // outsd with a GS override and a 32-bit address size
        assert_eq!(
            s(&[0x65, 0x67, 0x6f], 64),
            Some(StringIo {
                address_size: 4,
                segment: Segment::Gs,
                rep: false,
                len: 3
            })
        );
        // insw (16-bit code: ES:DI)
        assert_eq!(
            s(&[0x6d], 16),
            Some(StringIo {
                address_size: 2,
                segment: Segment::Es,
                rep: false,
                len: 1
            })
        );
        assert_eq!(
            s(&[0xee], 64),
            None,
            "OUT DX, AL is not a string instruction"
        );
        assert_eq!(s(&[], 64), None);
    }

    #[test]
    fn clts_and_lmsw_are_decoded_with_their_source() {
        let mut ram = vec![0u8; 0x4000];
        let regs = |g: Gpr| match g {
            Gpr::Rax => 0xdead_0033,
            Gpr::Rbx => 0x2000,
            _ => 0,
        };
        // clts
        ram[0x1000..0x1002].copy_from_slice(&[0x0f, 0x06]);
        // lmsw ax (0F 01 /6, mod=11 rm=0)
        ram[0x1002..0x1005].copy_from_slice(&[0x0f, 0x01, 0xf0]);
        // lmsw [rbx+8] (0F 01 /6, mod=01 rm=3, disp8 8)
        ram[0x1005..0x1009].copy_from_slice(&[0x0f, 0x01, 0x73, 0x08]);
        ram[0x2008..0x200a].copy_from_slice(&0x0011u16.to_le_bytes());
        // cpuid: neither
        ram[0x1009..0x100b].copy_from_slice(&[0x0f, 0xa2]);
        let m = SliceMemory(&mut ram);
        let at = |rip| cr0_write(&m, Paging::Off, 64, rip, regs);
        assert_eq!(at(0x1000), Some((Cr0Write::Clts, 2)));
        assert_eq!(at(0x1002), Some((Cr0Write::Lmsw(0x0033), 3)));
        assert_eq!(at(0x1005), Some((Cr0Write::Lmsw(0x0011), 4)));
        assert_eq!(at(0x1009), None);
        // An operand outside guest RAM is unreadable, not a panic.
        let far = |g: Gpr| if g == Gpr::Rbx { 0x10_0000 } else { 0 };
        assert_eq!(cr0_write(&m, Paging::Off, 64, 0x1005, far), None);
    }

    #[test]
    fn paging_modes_follow_the_control_registers() {
        let pg = CR0_PG | CR0_PE;
        assert_eq!(Paging::from_registers(CR0_PE, 7, 0, 0), Paging::Off);
        assert_eq!(
            Paging::from_registers(pg, 0x1000, 0, 0),
            Paging::Legacy32 {
                cr3: 0x1000,
                pse: false
            }
        );
        assert_eq!(
            Paging::from_registers(pg, 0x1000, CR4_PSE, 0),
            Paging::Legacy32 {
                cr3: 0x1000,
                pse: true
            }
        );
        assert_eq!(
            Paging::from_registers(pg, 0x1020, CR4_PAE | CR4_PSE, 0),
            Paging::Pae { cr3: 0x1020 }
        );
        assert_eq!(
            Paging::from_registers(pg, 0x1000, CR4_PAE, EFER_LMA),
            Paging::Long4 { cr3: 0x1000 }
        );
        assert_eq!(
            Paging::from_registers(pg, 0x1000, CR4_PAE | CR4_LA57, EFER_LMA),
            Paging::Long5 { cr3: 0x1000 }
        );
    }

    #[test]
    fn thirty_two_bit_paging_with_small_and_four_mebibyte_pages() {
        let mut m = vec![0u8; 0x10_000];
        // PD at 0x1000: entry 1 -> PT at 0x2000; entry 2 -> 4 MiB page at 0x0080_0000 with
        // PSE-36 bits 0x12 (physical 0x12_0080_0000).
        put32(&mut m, 0x1000 + 4, 0x2000 | 1);
        put32(&mut m, 0x2000 + 3 * 4, 0x5000 | 1);
        put32(&mut m, 0x1000 + 2 * 4, 0x0080_0000 | (0x12 << 13) | 0x81);
        let small = Paging::Legacy32 {
            cr3: 0x1000,
            pse: false,
        };
        assert_eq!(at(&mut m, small, 0x0040_3abc), Some(0x5abc));
        assert_eq!(at(&mut m, small, 0x0040_4000), None, "PTE not present");
        let pse = Paging::Legacy32 {
            cr3: 0x1000,
            pse: true,
        };
        assert_eq!(at(&mut m, pse, 0x0080_1234), Some(0x12_0080_1234));
        // Without CR4.PSE the PS bit is ignored: the entry points at a page table.
        assert_eq!(
            at(&mut m, small, 0x0080_1234),
            None,
            "the PT at 0x800000 is outside RAM"
        );
        // Bits above 31 of the linear address do not exist in 32-bit paging.
        assert_eq!(at(&mut m, small, 0xdead_0000_0040_3abc), Some(0x5abc));
    }

    #[test]
    fn pae_paging_with_pdptes_and_two_mebibyte_pages() {
        let mut m = vec![0u8; 0x10_000];
        // CR3 = 0x1020 (32-byte aligned PDPT); PDPTE 1 -> PD at 0x2000.
        put64(&mut m, 0x1020 + 8, 0x2000 | 1);
        put64(&mut m, 0x2000 + 8, 0x3000 | 1); // PDE 1 -> PT at 0x3000
        put64(&mut m, 0x3000 + 2 * 8, 0x7000 | 1); // PTE 2 -> 0x7000
        put64(&mut m, 0x2000 + 2 * 8, 0x0060_0000 | 0x81); // PDE 2: a 2 MiB page
        let p = Paging::Pae { cr3: 0x1020 };
        assert_eq!(at(&mut m, p, 0x4020_2345), Some(0x7345));
        assert_eq!(at(&mut m, p, 0x4040_0010), Some(0x0060_0010));
        assert_eq!(at(&mut m, p, 0x0000_0010), None, "PDPTE 0 not present");
    }

    #[test]
    fn five_level_paging() {
        let mut m = vec![0u8; 0x10_000];
        let linear: u64 = (1 << 48) | (2 << 39) | (3 << 30) | (4 << 21) | (5 << 12) | 0x678;
        put64(&mut m, 0x1000 + 8, 0x2000 | 1); // PML5[1]
        put64(&mut m, 0x2000 + 2 * 8, 0x3000 | 1); // PML4[2]
        put64(&mut m, 0x3000 + 3 * 8, 0x4000 | 1); // PDPT[3]
        put64(&mut m, 0x4000 + 4 * 8, 0x5000 | 1); // PD[4]
        put64(&mut m, 0x5000 + 5 * 8, 0x9000 | 1); // PT[5]
        assert_eq!(
            at(&mut m, Paging::Long5 { cr3: 0x1000 }, linear),
            Some(0x9678)
        );
        // The same address under 4-level paging uses PML4 index 2 from CR3 0x2000.
        assert_eq!(
            at(&mut m, Paging::Long4 { cr3: 0x2000 }, linear),
            Some(0x9678)
        );
        // A 1 GiB page at the PDPT level.
        put64(&mut m, 0x3000 + 3 * 8, 0x4000_0000 | 0x81);
        assert_eq!(
            at(&mut m, Paging::Long5 { cr3: 0x1000 }, linear),
            Some(0x4000_0000 | (4 << 21) | (5 << 12) | 0x678)
        );
    }

    #[test]
    fn the_instruction_site_takes_the_code_segment_into_account() {
        let real = CodeSegment {
            base: 0xf_0000,
            long: false,
            default32: false,
        };
        // Real mode: CS base + IP (16 bits).
        assert_eq!(
            instruction_site(0, 0, 0, 0, real, 0x1_fff0),
            (Paging::Off, 16, 0xf_fff0)
        );
        // 32-bit protected mode with a based segment, wrapping at 4 GiB.
        let flat32 = CodeSegment {
            base: 0xffff_f000,
            long: false,
            default32: true,
        };
        assert_eq!(
            instruction_site(CR0_PE, 0, 0, 0, flat32, 0x2000),
            (Paging::Off, 32, 0x1000)
        );
        // 64-bit mode: RIP is the linear address.
        let long = CodeSegment {
            base: 0x1234,
            long: true,
            default32: false,
        };
        let (p, bits, lin) = instruction_site(
            CR0_PE | CR0_PG,
            0x1000,
            CR4_PAE,
            EFER_LMA,
            long,
            0xffff_8000_0000_1000,
        );
        assert_eq!(
            (p, bits, lin),
            (Paging::Long4 { cr3: 0x1000 }, 64, 0xffff_8000_0000_1000)
        );
        // Compatibility mode (long mode, L clear): 32-bit code with a base.
        let compat = CodeSegment {
            base: 0x100,
            long: false,
            default32: true,
        };
        assert_eq!(
            instruction_site(CR0_PE | CR0_PG, 0x1000, CR4_PAE, EFER_LMA, compat, 0x10),
            (Paging::Long4 { cr3: 0x1000 }, 32, 0x110)
        );
    }

    #[test]
    fn lengths_of_the_instructions_that_exit() {
        for (bytes, bits, len) in [
            (&[0x0f, 0xa2][..], 64, 2),         // cpuid
            (&[0xf4], 64, 1),                   // hlt
            (&[0x0f, 0x32], 64, 2),             // rdmsr
            (&[0x0f, 0x30], 64, 2),             // wrmsr
            (&[0x0f, 0x01, 0xd9], 64, 3),       // vmmcall
            (&[0x0f, 0x01, 0xc1], 16, 3),       // vmcall in real mode
            (&[0x0f, 0x01, 0xd1], 64, 3),       // xsetbv
            (&[0x66, 0x0f, 0xa2, 0x90], 16, 3), // cpuid with a prefix, then nop
            (&[0x0f, 0xa2, 0xcc, 0xcc, 0xcc], 32, 2),
        ] {
            assert_eq!(
                decode(bytes, bits).map(|d| d.len),
                Some(len),
                "{bytes:02x?}"
            );
        }
        assert_eq!(decode(&[0x0f, 0xff], 64), None, "invalid opcode");
        assert_eq!(decode(&[0x0f], 64), None, "truncated");
        assert_eq!(decode(&[], 64), None);
        assert_eq!(decode(&[0x90], 8), None, "bad bitness");
    }

    #[test]
    fn mmio_forms_linux_uses() {
        let r = |gpr| MmioOperand::Register {
            gpr,
            high_byte: false,
        };
        // mov dword [rdi+0x10], eax  (writel)
        assert_eq!(
            decode_mmio(&[0x89, 0x47, 0x10], 64),
            Some(MmioAccess {
                size: 4,
                write: true,
                operand: r(Gpr::Rax),
                dest_size: 4,
                len: 3
            })
        );
        // mov eax, dword [rdi]  (readl)
        assert_eq!(
            decode_mmio(&[0x8b, 0x07], 64),
            Some(MmioAccess {
                size: 4,
                write: false,
                operand: r(Gpr::Rax),
                dest_size: 4,
                len: 2
            })
        );
        // movzx eax, word [rsi]  (readw)
        assert_eq!(
            decode_mmio(&[0x0f, 0xb7, 0x06], 64),
            Some(MmioAccess {
                size: 2,
                write: false,
                operand: r(Gpr::Rax),
                dest_size: 4,
                len: 3
            })
        );
        // movzx ecx, byte [rdx]  (readb)
        assert_eq!(
            decode_mmio(&[0x0f, 0xb6, 0x0a], 64).map(|a| (a.size, a.write, a.operand)),
            Some((1, false, r(Gpr::Rcx)))
        );
        // mov byte [rdi], r9b  (writeb with REX)
        assert_eq!(
            decode_mmio(&[0x44, 0x88, 0x0f], 64).map(|a| (a.size, a.operand)),
            Some((1, r(Gpr::R9)))
        );
        // mov word [rdi], ax (0x66 prefix)
        assert_eq!(
            decode_mmio(&[0x66, 0x89, 0x07], 64).map(|a| (a.size, a.write)),
            Some((2, true))
        );
        // mov qword [rdi], rax  (writeq)
        assert_eq!(
            decode_mmio(&[0x48, 0x89, 0x07], 64).map(|a| a.size),
            Some(8)
        );
        // mov dword [rdi+0x300], 0x4500  (immediate store)
        assert_eq!(
            decode_mmio(&[0xc7, 0x87, 0x00, 0x03, 0, 0, 0x00, 0x45, 0, 0], 64).map(|a| a.operand),
            Some(MmioOperand::Immediate(0x4500))
        );
        // mov ah, [rbx]: the high byte is named
        assert_eq!(
            decode_mmio(&[0x8a, 0x23], 64).map(|a| a.operand),
            Some(MmioOperand::Register {
                gpr: Gpr::Rax,
                high_byte: true
            })
        );
        // The exact forms of Debian's 6.1 kernel for the xAPIC page (fixmap at
        // 0xffffffffff5fd000, register offset in RDI): native_apic_mem_read is
        // `mov eax, [rdi-0xa03000]`, native_apic_mem_write `mov [rdi-0xa03000], esi`.
        assert_eq!(
            decode_mmio(&[0x8b, 0x87, 0x00, 0xd0, 0x5f, 0xff], 64),
            Some(MmioAccess {
                size: 4,
                write: false,
                operand: r(Gpr::Rax),
                dest_size: 4,
                len: 6
            })
        );
        assert_eq!(
            decode_mmio(&[0x89, 0xb7, 0x00, 0xd0, 0x5f, 0xff], 64),
            Some(MmioAccess {
                size: 4,
                write: true,
                operand: r(Gpr::Rsi),
                dest_size: 4,
                len: 6
            })
        );
        // Not MMIO-shaped: register to register, string moves, arithmetic on memory.
        assert_eq!(decode_mmio(&[0x89, 0xc0], 64), None);
        assert_eq!(decode_mmio(&[0xa5], 64), None);
        assert_eq!(decode_mmio(&[0x01, 0x07], 64), None);
        assert_eq!(decode_mmio(&[], 64), None);
    }

    #[test]
    fn mov_to_and_from_control_registers() {
        // mov cr0, rax ; mov rbx, cr4 ; mov cr3, r9 (REX.B) ; mov cr8, rcx (REX.R)
        assert_eq!(
            decode(&[0x0f, 0x22, 0xc0], 64).unwrap().mov_cr,
            Some((0, Gpr::Rax, true))
        );
        assert_eq!(
            decode(&[0x0f, 0x20, 0xe3], 64).unwrap().mov_cr,
            Some((4, Gpr::Rbx, false))
        );
        assert_eq!(
            decode(&[0x41, 0x0f, 0x22, 0xd9], 64).unwrap().mov_cr,
            Some((3, Gpr::R9, true))
        );
        assert_eq!(
            decode(&[0x44, 0x0f, 0x22, 0xc1], 64).unwrap().mov_cr,
            Some((8, Gpr::Rcx, true))
        );
        // 32-bit operand in real mode: mov cr0, eax
        assert_eq!(
            decode(&[0x0f, 0x22, 0xc0], 16).unwrap().mov_cr,
            Some((0, Gpr::Rax, true))
        );
        assert_eq!(decode(&[0x0f, 0xa2], 64).unwrap().mov_cr, None);
    }

    fn put(ram: &mut [u8], at: u64, v: u64) {
        ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn walks_long_mode_tables_and_fetches_across_pages() {
        let mut ram = vec![0u8; 4 << 20];
        // PML4 at 0x1000 → PDPT 0x2000 → PD 0x3000: 2 MiB page at VA 0 → PA 0x20_0000;
        // PD entry 1 → PT 0x4000: VA 0x20_0000 → PA 0x5000, VA 0x20_1000 → PA 0x9000.
        put(&mut ram, 0x1000, 0x2000 | 3);
        put(&mut ram, 0x2000, 0x3000 | 3);
        put(&mut ram, 0x3000, 0x20_0000 | 0x83);
        put(&mut ram, 0x3008, 0x4000 | 3);
        put(&mut ram, 0x4000, 0x5000 | 3);
        put(&mut ram, 0x4008, 0x9000 | 3);
        let p = Paging::Long4 { cr3: 0x1000 };
        let m = SliceMemory(&mut ram);
        assert_eq!(
            translate(&m, p, 0x1234),
            Some(GuestPhysAddr::new(0x20_1234))
        );
        assert_eq!(
            translate(&m, p, 0x20_0010),
            Some(GuestPhysAddr::new(0x5010))
        );
        assert_eq!(translate(&m, p, 0x40_0000), None, "not present");
        assert_eq!(
            translate(&m, Paging::Off, 0x40_0000),
            Some(GuestPhysAddr::new(0x40_0000))
        );
        // An instruction split across two pages that map to distant frames.
        ram[0x5ffe] = 0x0f;
        ram[0x5fff] = 0x01;
        ram[0x9000] = 0xd9;
        {
            let m = SliceMemory(&mut ram);
            let (bytes, n) = fetch(&m, p, 0x20_0ffe);
            assert_eq!(n, 15);
            assert_eq!(&bytes[..3], &[0x0f, 0x01, 0xd9]);
            assert_eq!(decode(&bytes[..n], 64).unwrap().len, 3);
        }
        // Tables pointing outside RAM: no panic, nothing read.
        put(&mut ram, 0x1008, 0xffff_f000 | 3);
        let m = SliceMemory(&mut ram);
        assert_eq!(translate(&m, p, 1 << 39), None);
        assert_eq!(fetch(&m, p, 1 << 39).1, 0);
        // Fetch stops at the end of what is mapped.
        let (_, n) = fetch(&m, Paging::Off, (4 << 20) - 4);
        assert_eq!(n, 4);
    }
}
