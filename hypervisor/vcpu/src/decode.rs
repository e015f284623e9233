//! Reading and decoding the guest instruction behind an exit, for backends that are not told
//! its length or operands (AMD SVM without NRIP save and decode assists, as QEMU emulates it;
//! later MMIO exits on both backends).
//!
//! [`fetch`] walks the guest's own page tables (real mode, 32-bit paging off, or 4-level long
//! mode with 2 MiB and 1 GiB pages, AMD64 APM Vol. 2 §5.3) to read up to 15 bytes at a linear
//! address from guest RAM; [`decode`] runs them through `iced-x86`. Guest-controlled bytes and
//! tables never cause a panic: anything unreadable or undecodable is `None`.

use crate::{Gpr, GuestMemory};
use boot::GuestPhysAddr;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Longest x86 instruction.
pub const MAX_INSTRUCTION: usize = 15;

/// How the guest translates linear addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paging {
    /// Paging off (real mode, or protected mode without CR0.PG): linear = physical.
    Off,
    /// 4-level long-mode paging rooted at CR3.
    Long4 { cr3: u64 },
}

const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Guest-physical address of `linear`, or `None` if it is not mapped (or the tables lie outside
/// guest RAM).
pub fn translate(mem: &impl GuestMemory, paging: Paging, linear: u64) -> Option<GuestPhysAddr> {
    let Paging::Long4 { cr3 } = paging else {
        return Some(GuestPhysAddr::new(linear));
    };
    let mut table = cr3 & ADDR;
    // Levels: PML4 (39), PDPT (30), PD (21), PT (12).
    for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
        let index = (linear >> shift) & 0x1ff;
        let mut e = [0u8; 8];
        mem.read(GuestPhysAddr::new(table + index * 8), &mut e)?;
        let entry = u64::from_le_bytes(e);
        if entry & PRESENT == 0 {
            return None;
        }
        if level == 1 || (entry & LARGE != 0 && (level == 2 || level == 3)) {
            let page_mask = (1u64 << shift) - 1;
            let base = entry & ADDR & !page_mask;
            return Some(GuestPhysAddr::new(base | (linear & page_mask)));
        }
        table = entry & ADDR;
    }
    None
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Its length in bytes.
    pub len: u8,
    /// MOV to or from a control register: (CR number, general register, write to CR).
    pub mov_cr: Option<(u8, Gpr, bool)>,
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
