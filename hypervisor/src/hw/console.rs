//! The COM1 console and the `log` backend.
//!
//! Every core prints through one lock. Exit paths never wait for it: an enclave's lines go
//! through [`try_line`] (queued in the enclave's own buffer when the port is busy), debug and
//! trace records through [`try_print`] (dropped when it is busy). Lines that wait for the lock
//! come from boot, the manager, and the start and end of a vCPU's run.

use core::fmt::Write;
use spin::Mutex;
use uart_16550::SerialPort;

/// COM1's I/O base.
const COM1: u16 = 0x3f8;

// SAFETY: 0x3f8 is COM1 on every PC atoll targets; nothing else in atoll drives it.
static PORT: Mutex<SerialPort> = Mutex::new(unsafe { SerialPort::new(COM1) });

/// Programs the UART (115200 8N1, FIFOs on).
pub fn init() {
    PORT.lock().init();
}

/// Writes `s` followed by a newline, atomically with respect to other cores.
pub fn line(s: &str) {
    let mut port = PORT.lock();
    let _ = port.write_str(s);
    let _ = port.write_str("\n");
}

/// Writes `s` and a newline if no other core holds the port right now; false (nothing written)
/// otherwise. For exit paths, which must never wait on another core.
pub fn try_line(s: &str) -> bool {
    let Some(mut port) = PORT.try_lock() else {
        return false;
    };
    let _ = port.write_str(s);
    let _ = port.write_str("\n");
    true
}

/// The next byte COM1 received, if one is waiting and no other core holds the port (LSR bit 0,
/// data ready; then RBR). Never waits.
pub fn try_read_byte() -> Option<u8> {
    let _port = PORT.try_lock()?;
    let mut lsr: x86_64::instructions::port::Port<u8> =
        x86_64::instructions::port::Port::new(COM1 + 5);
    let mut rbr: x86_64::instructions::port::Port<u8> = x86_64::instructions::port::Port::new(COM1);
    // SAFETY: COM1's line status register; the port lock is held, so no other core is
    // programming the UART, and reading LSR has no side effect on the receive path.
    let ready = unsafe { lsr.read() } & 1 != 0;
    // SAFETY: COM1's receive buffer register, under the port lock; reading RBR only takes the
    // received byte.
    ready.then(|| unsafe { rbr.read() })
}

/// Writes formatted text, atomically with respect to other cores.
pub fn print(args: core::fmt::Arguments) {
    let _ = PORT.lock().write_fmt(args);
}

/// Writes formatted text if no other core holds the port right now; false (nothing written)
/// otherwise.
pub fn try_print(args: core::fmt::Arguments) -> bool {
    let Some(mut port) = PORT.try_lock() else {
        return false;
    };
    let _ = port.write_fmt(args);
    true
}

/// Writes formatted text even if the lock is held (for panics, which may strike while printing).
pub fn print_unlocked(args: core::fmt::Arguments) {
    // SAFETY: a second handle to COM1 only interleaves bytes with a holder of the lock; the
    // UART itself tolerates that, and this is used only on the way to stopping the machine.
    let mut port = unsafe { SerialPort::new(COM1) };
    let _ = port.write_fmt(args);
}

/// Waits (bounded) until the UART has shifted out every byte, so nothing is lost when the
/// machine powers off right after printing (LSR bit 6, transmitter empty).
pub fn flush() {
    let mut lsr: x86_64::instructions::port::Port<u8> =
        x86_64::instructions::port::Port::new(COM1 + 5);
    for _ in 0..10_000_000 {
        // SAFETY: reading COM1's line status register has no side effect on transmission.
        if unsafe { lsr.read() } & 0x40 != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = format_args!("[{:<5}] {}\n", record.level(), record.args());
        // Debug and trace records come from exit paths too (a refused port, a PCI BAR move, a
        // vCPU's periodic state): they never wait for another core's line. When the port is
        // busy they are dropped; `log=debug` is for looking, not for counting.
        if record.level() >= log::Level::Debug {
            let _ = try_print(text);
        } else {
            print(text);
        }
    }

    fn flush(&self) {}
}

/// Installs the console as the `log` backend at `level`.
pub fn init_logger(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// COM1's interrupt enable register: received data available (bit 0), transmitter holding
/// register empty (bit 1) (PC16550D data sheet, IER).
const IER_RDI: u8 = 1 << 0;
const IER_THRI: u8 = 1 << 1;

/// Mirrors the host's COM1 model's interrupt line on the real COM1's IRQ 4, which the host owns
/// (its I/O APIC entry routes it): the host's serial driver runs on the model (every port
/// access exits), but its interrupt arrives natively, with no injection. A high level becomes
/// a fresh edge — the real UART's IER is cleared and then THRI enabled while its transmitter is
/// idle, which raises IRQ 4 again; a low level leaves only the receive interrupt on when the
/// host takes serial input (a byte arriving then raises IRQ 4, and the host's read of the
/// model's IIR is the exit that passes the byte in).
pub fn host_uart_irq(level: bool, host_takes_input: bool) {
    let _port = PORT.lock();
    let mut ier: x86_64::instructions::port::Port<u8> =
        x86_64::instructions::port::Port::new(COM1 + 1);
    let rx = if host_takes_input { IER_RDI } else { 0 };
    let mut write = |v: u8| {
        // SAFETY: COM1's IER under the port lock; the interrupt enables only decide when the
        // UART raises IRQ 4, which atoll itself never takes (it polls), so no other user is
        // affected.
        unsafe { ier.write(v) }
    };
    if level {
        write(0);
        write(IER_THRI | rx);
    } else {
        write(rx);
    }
}
