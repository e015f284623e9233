//! The enclave's COM1: an 8250/16550A UART model with transmit, receive and its interrupt line.
//!
//! Registers (offsets from the base, National Semiconductor PC16550D data sheet, Table II):
//! RBR/THR (0), IER (1), IIR/FCR (2), LCR (3), MCR (4), LSR (5), MSR (6), SCR (7); with LCR.DLAB
//! set, 0 and 1 are the divisor latch (DLL/DLM). Transmission is instantaneous: a byte written
//! to THR is on the line at once (LSR.THRE and TEMT stay set), and the line goes to atoll's
//! console, one text line at a time. Received bytes wait in a 16-byte FIFO (RBR reads pop it).
//!
//! Interrupts (data sheet "Interrupt Identification Register", priorities highest first):
//! receiver line status (an overrun, IER bit 2), received data available (IER bit 0), THR empty
//! (IER bit 1), modem status (IER bit 3, never raised: the modem lines do not change). The THR
//! empty interrupt is raised when THR empties (after each write, and when IER bit 1 is set with
//! THR empty) and cleared by reading IIR while it is the highest source, or by writing THR —
//! which, transmission being instantaneous, raises it again. [`Uart16550::irq`] is the level of
//! the interrupt line; the platform hands its changes to the I/O APIC (ISA IRQ 4, edge).
//!
//! What Linux's 8250 driver checks when it probes the port holds: IER keeps its low four bits,
//! the scratch register keeps a byte, loopback (MCR bit 4) maps RTS/DTR/OUT1/OUT2 to
//! CTS/DSR/RI/DCD and sends transmitted bytes to the receiver, and FCR bit 0 turns the FIFOs on
//! (IIR bits 7:6 = 11, a 16550A).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Register offsets.
pub mod reg {
    /// Receiver buffer (read) / transmitter holding (write); DLL with DLAB.
    pub const DATA: u16 = 0;
    /// Interrupt enable; DLM with DLAB.
    pub const IER: u16 = 1;
    /// Interrupt identification (read) / FIFO control (write).
    pub const IIR_FCR: u16 = 2;
    /// Line control.
    pub const LCR: u16 = 3;
    /// Modem control.
    pub const MCR: u16 = 4;
    /// Line status.
    pub const LSR: u16 = 5;
    /// Modem status.
    pub const MSR: u16 = 6;
    /// Scratch.
    pub const SCR: u16 = 7;
}

const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_RLS: u8 = 1 << 2;
const LCR_DLAB: u8 = 1 << 7;
const MCR_LOOP: u8 = 1 << 4;
const LSR_DR: u8 = 1 << 0;
const LSR_OE: u8 = 1 << 1;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
const IIR_NONE: u8 = 0x01;
const IIR_RLS: u8 = 0x06;
const IIR_RDA: u8 = 0x04;
const IIR_THRE: u8 = 0x02;
const IIR_FIFO: u8 = 0xc0;
const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;

/// Bytes the receive FIFO holds.
pub const RX_FIFO: usize = 16;
/// Longest console line kept before it is flushed.
pub const LINE_MAX: usize = 4096;

/// One 16550A.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    rx: VecDeque<u8>,
    overrun: bool,
    thre_pending: bool,
    /// The line being sent, and the last completed one as text: both sized at creation
    /// (`text` 3 bytes per byte, for U+FFFD), so that a write never allocates.
    line: Vec<u8>,
    text: Box<[u8]>,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// The power-up state: interrupts off, 8N1 latch values of zero, FIFOs off.
    pub fn new() -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 0,
            dlm: 0,
            fifo: false,
            rx: VecDeque::with_capacity(RX_FIFO),
            overrun: false,
            thre_pending: false,
            line: Vec::with_capacity(LINE_MAX),
            text: alloc::vec![0; 3 * LINE_MAX].into_boxed_slice(),
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// A guest write of `value` to register `offset` (0–7). Returns a console line when this
    /// write completed one (a newline, or [`LINE_MAX`] bytes), valid UTF-8 as
    /// `String::from_utf8_lossy` makes it; it lives in the UART until the next write.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<&str> {
        match offset {
            reg::DATA if self.dlab() => self.dll = value,
            reg::DATA => {
                // Sent at once: THR is empty again (and its interrupt pending anew).
                self.thre_pending = true;
                if self.mcr & MCR_LOOP != 0 {
                    self.receive_byte(value);
                    return None;
                }
                return self.transmit(value);
            }
            reg::IER if self.dlab() => self.dlm = value,
            reg::IER => {
                let was = self.ier & IER_THRE != 0;
                self.ier = value & 0x0f;
                if !was && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                }
            }
            reg::IIR_FCR => {
                self.fifo = value & FCR_ENABLE != 0;
                if value & FCR_CLEAR_RX != 0 {
                    self.rx.clear();
                }
            }
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & 0x1f,
            reg::SCR => self.scr = value,
            // LSR and MSR are read-only (writes are for factory test).
            _ => {}
        }
        None
    }

    fn transmit(&mut self, value: u8) -> Option<&str> {
        let full = value == b'\n' || self.line.len() >= LINE_MAX;
        // A completed line moves to `text`; the byte that completed it (unless a line end)
        // starts the next one.
        let done = full && !self.line.is_empty();
        let mut n = 0;
        if done {
            n = crate::bounded::lossy_utf8_into(&self.line, &mut self.text).len();
            self.line.clear();
        }
        if value != b'\n' && value != b'\r' {
            self.line.push(value);
        }
        // Only whole characters went into `text`.
        done.then(|| core::str::from_utf8(&self.text[..n]).unwrap_or(""))
    }

    fn take_line(&mut self) -> Option<&str> {
        if self.line.is_empty() {
            return None;
        }
        let Self { line, text, .. } = self;
        let s = crate::bounded::lossy_utf8_into(line, text);
        line.clear();
        Some(s)
    }

    /// A guest read of register `offset` (0–7). Reading RBR pops a received byte, reading IIR
    /// acknowledges a THR-empty interrupt, reading LSR clears the overrun bit.
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.dll,
            reg::DATA => self.rx.pop_front().unwrap_or(0),
            reg::IER if self.dlab() => self.dlm,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let id = self.identify();
                if id == IIR_THRE {
                    self.thre_pending = false;
                }
                id | if self.fifo { IIR_FIFO } else { 0 }
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let v = self.lsr();
                self.overrun = false;
                v
            }
            reg::MSR => self.modem_status(),
            reg::SCR => self.scr,
            _ => 0xff,
        }
    }

    fn lsr(&self) -> u8 {
        let mut v = LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            v |= LSR_DR;
        }
        if self.overrun {
            v |= LSR_OE;
        }
        v
    }

    fn modem_status(&self) -> u8 {
        if self.mcr & MCR_LOOP != 0 {
            // Loopback: DTR→DSR (5), RTS→CTS (4), OUT1→RI (6), OUT2→DCD (7).
            let m = self.mcr;
            ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
        } else {
            // A terminal is attached: DCD, DSR and CTS.
            0xb0
        }
    }

    /// The highest-priority pending interrupt's IIR code (bits 3:0).
    fn identify(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.overrun {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            IIR_RDA
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else {
            IIR_NONE
        }
    }

    /// The interrupt line: asserted while any enabled interrupt is pending.
    pub fn irq(&self) -> bool {
        self.identify() != IIR_NONE
    }

    fn receive_byte(&mut self, b: u8) -> bool {
        if self.rx.len() >= RX_FIFO {
            self.overrun = true;
            false
        } else {
            self.rx.push_back(b);
            true
        }
    }

    /// Free places in the receive FIFO.
    pub fn room(&self) -> usize {
        RX_FIFO - self.rx.len()
    }

    /// Bytes arriving on the receive line (input for the guest). Returns how many fit in the
    /// FIFO; the rest are lost and flagged as an overrun, as on the real part.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        bytes.iter().take_while(|&&b| self.receive_byte(b)).count()
    }

    /// The partial line not yet printed, if any (flushed when the enclave ends).
    pub fn flush(&mut self) -> Option<&str> {
        self.take_line()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole() {
        let mut u = Uart16550::new();
        let mut lines = Vec::new();
        for b in b"hello\r\nworld\n" {
            lines.extend(u.write(reg::DATA, *b).map(String::from));
        }
        assert_eq!(lines, ["hello", "world"]);
        u.write(reg::DATA, b'x');
        assert_eq!(u.flush(), Some("x"));
        assert_eq!(u.flush(), None);
    }

    #[test]
    fn lines_are_lossy_utf8_and_the_buffers_never_grow() {
        let mut u = Uart16550::new();
        let (line, text) = (u.line.as_ptr(), u.text.as_ptr());
        let mut lines = Vec::new();
        for b in b"caf\xc3\xa9 \xff!\n" {
            lines.extend(u.write(reg::DATA, *b).map(String::from));
        }
        assert_eq!(lines, ["caf\u{e9} \u{fffd}!"]);
        // Invalid bytes only, a full line: every byte becomes U+FFFD, nothing is cut.
        for _ in 0..LINE_MAX + 1 {
            if let Some(l) = u.write(reg::DATA, 0xff) {
                assert_eq!(l.chars().count(), LINE_MAX);
                assert!(l.chars().all(|c| c == '\u{fffd}'));
            }
        }
        assert_eq!(u.flush().map(str::len), Some(3));
        assert_eq!((u.line.as_ptr(), u.text.as_ptr()), (line, text));
        assert_eq!(u.line.capacity(), LINE_MAX);
    }

    #[test]
    fn long_lines_are_split() {
        let mut u = Uart16550::new();
        let mut lines = Vec::new();
        for _ in 0..LINE_MAX + 5 {
            lines.extend(u.write(reg::DATA, b'a').map(String::from));
        }
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), LINE_MAX);
    }

    #[test]
    fn linux_probe_sees_a_16550a() {
        let mut u = Uart16550::new();
        // IER keeps its low four bits.
        u.write(reg::IER, 0);
        assert_eq!(u.read(reg::IER) & 0x0f, 0);
        u.write(reg::IER, 0xff);
        assert_eq!(u.read(reg::IER), 0x0f);
        u.write(reg::IER, 0);
        // Scratch.
        u.write(reg::SCR, 0xa5);
        assert_eq!(u.read(reg::SCR), 0xa5);
        // Loopback with RTS and OUT2: CTS and DCD.
        u.write(reg::MCR, MCR_LOOP | 0x0a);
        assert_eq!(u.read(reg::MSR) & 0xf0, 0x90);
        u.write(reg::MCR, 0);
        assert_eq!(u.read(reg::MSR), 0xb0);
        // FIFO enabled: IIR bits 7:6 set, no interrupt pending.
        u.write(reg::IIR_FCR, FCR_ENABLE);
        assert_eq!(u.read(reg::IIR_FCR), 0xc1);
        // Divisor latch is separate from THR/IER.
        u.write(reg::LCR, LCR_DLAB | 3);
        u.write(reg::DATA, 1);
        u.write(reg::IER, 0);
        assert_eq!(u.read(reg::DATA), 1);
        u.write(reg::LCR, 3);
        assert_eq!(u.read(reg::IER), 0);
        assert_eq!(u.read(reg::LSR), LSR_THRE | LSR_TEMT);
    }

    #[test]
    fn thre_interrupt_follows_the_data_sheet() {
        let mut u = Uart16550::new();
        assert!(!u.irq());
        // Enabling it with THR empty raises it.
        u.write(reg::IER, IER_THRE);
        assert!(u.irq());
        // Reading IIR while it is the source clears it.
        assert_eq!(u.read(reg::IIR_FCR) & 0x0f, IIR_THRE);
        assert!(!u.irq());
        assert_eq!(u.read(reg::IIR_FCR) & 0x0f, IIR_NONE);
        // A write empties THR at once and raises it again.
        u.write(reg::DATA, b'a');
        assert!(u.irq());
        // Disabling it drops the line.
        u.write(reg::IER, 0);
        assert!(!u.irq());
    }

    #[test]
    fn receive_raises_data_available_and_overruns() {
        let mut u = Uart16550::new();
        u.write(reg::IER, IER_RDA | IER_RLS);
        assert!(!u.irq());
        assert_eq!(u.receive(b"ab"), 2);
        assert!(u.irq());
        assert_eq!(u.read(reg::IIR_FCR) & 0x0f, IIR_RDA);
        assert_eq!(u.read(reg::LSR) & LSR_DR, LSR_DR);
        assert_eq!(u.read(reg::DATA), b'a');
        assert_eq!(u.read(reg::DATA), b'b');
        assert!(!u.irq());
        assert_eq!(u.read(reg::LSR) & LSR_DR, 0);
        // More than the FIFO holds: the rest is lost, overrun flagged (highest priority).
        assert_eq!(u.receive(&[0u8; RX_FIFO + 3]), RX_FIFO);
        assert_eq!(u.read(reg::IIR_FCR) & 0x0f, IIR_RLS);
        assert_eq!(u.read(reg::LSR) & LSR_OE, LSR_OE);
        assert_eq!(u.read(reg::LSR) & LSR_OE, 0);
        assert_eq!(u.read(reg::IIR_FCR) & 0x0f, IIR_RDA);
        // FCR can clear the receive FIFO.
        u.write(reg::IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX);
        assert!(!u.irq());
    }

    #[test]
    fn loopback_sends_to_the_receiver() {
        let mut u = Uart16550::new();
        u.write(reg::MCR, MCR_LOOP);
        assert_eq!(u.write(reg::DATA, b'\n'), None);
        assert_eq!(u.read(reg::DATA), b'\n');
        assert_eq!(u.flush(), None);
    }
}
