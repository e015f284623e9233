//! Which of the host's accesses ask to reset or power off the machine (issue 10, item 6).
//!
//! The root partition's exit policy ([`crate::run::host`]) shows every intercepted port write
//! (and every write to an unmapped page) to the detector: a reset the host asks for restarts
//! only the root partition while enclaves run on, so atoll must recognise every way Linux resets
//! (`reboot=acpi|pci|kbd|triple`, and `panic=N`, which ends in one of them) and powers off.
//!
//! [`ResetDetector::classify`] takes one [`HostAccess`] and answers `Some(`[`HostEvent`]`)`
//! when the access is one of:
//!
//! * **The FADT's reset register** (ACPI 6.5 §4.8.3.6; FADT fields RESET_REG and RESET_VALUE,
//!   §5.2.9 Table 5.9): a write of RESET_VALUE to the register's address in its address space,
//!   with the register's width (always a byte in I/O space, as ACPICA writes it), when the FADT
//!   sets RESET_REG_SUP. Linux (`reboot=acpi`, and the first thing its default `reboot` tries)
//!   uses it only when that flag is set.
//! * **0xCF9**, the Reset Control Register of Intel's PCHs (and AMD's FCHs, which copy it): a
//!   byte write with RST_CPU (bit 2) set resets; SYS_RST (bit 1) picks a hard reset over a
//!   soft (CPU-only) one. A write with RST_CPU clear only latches SYS_RST and FULL_RST (bit 3),
//!   which later reads return: Linux's `reboot=pci` reads the port, writes SYS_RST alone
//!   (`0x02`) and then SYS_RST | RST_CPU (`0x06`), because the chipset resets on RST_CPU's
//!   0-to-1 edge. [`ResetDetector::cf9_read`] gives the latched value.
//! * **The keyboard controller** (8042): command byte `0xFE` to port 0x64. The 8042's "pulse
//!   output port" commands `0xF0`–`0xFF` pulse low for ~6 µs each output-port line whose bit in
//!   the command's low nibble is 0; output-port bit 0 is the CPU reset line (IBM PC AT Technical
//!   Reference, keyboard controller commands). So every even command in that range resets;
//!   Linux (`reboot=kbd`) sends `0xFE`.
//! * **A triple fault** (Intel SDM Vol. 3 §6.15 "Exception 8 — Double Fault": a fault while
//!   delivering a double fault shuts the processor down; chipsets turn the shutdown cycle into
//!   a reset). Linux's `reboot=triple` loads an empty IDT and raises an exception.
//! * **Power off**: a write with SLP_EN set and S5's SLP_TYP to a PM1 control register
//!   (ACPI 6.5 §4.8.3.2.1, Table 4.16: SLP_TYP bits 12:10, SLP_EN bit 13; PM1a and PM1b each
//!   take their own element of the DSDT's `\_S5` package, §7.4.2) or to the hardware-reduced
//!   sleep control register (§4.8.3.7, decoded by [`atoll_devices::acpi::requested_sleep_type`]).
//!
//! Everything else is `None`, including reset registers in PCI configuration space (which a
//! port or MMIO write does not reach directly: they need the PCI configuration decoder) and
//! System Control Port A (0x92), which Linux does not use to reboot.

use boot::HostPhysAddr;

/// The address space of a register the FADT names (ACPI 6.5 §5.2.3.2, Table 5.1: Address
/// Space ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    /// Space ID 1: an I/O port.
    SystemIo,
    /// Space ID 0: a physical memory address.
    SystemMemory,
    /// Space ID 2: PCI configuration space. Allowed for the reset register (bus 0 only), but
    /// a port or MMIO write alone never matches it.
    PciConfig,
}

/// One register the FADT describes with a Generic Address Structure (ACPI 6.5 §5.2.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    /// Where it lives.
    pub space: AddressSpace,
    /// The port (I/O space) or physical address (memory space).
    pub address: u64,
    /// How many bytes an access to it is (the GAS's register bit width / 8).
    pub width: u8,
}

impl Register {
    /// An 8-bit register at an I/O port.
    pub const fn io_byte(port: u16) -> Self {
        Register {
            space: AddressSpace::SystemIo,
            address: port as u64,
            width: 1,
        }
    }

    /// Whether an access of `size` bytes at `address` in `space` is exactly this register.
    fn is(&self, space: AddressSpace, address: u64, size: u8) -> bool {
        self.space == space && self.address == address && self.width == size
    }
}

/// The FADT's reset register and the value that resets (ACPI 6.5 §4.8.3.6). The FADT field
/// description requires a bit width of 8 and a bit offset of 0, so [`Register::width`] is 1 on
/// conforming firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRegister {
    /// RESET_REG.
    pub register: Register,
    /// RESET_VALUE.
    pub value: u8,
}

impl ResetRegister {
    /// Whether an access is a write to this register. In I/O space the width is always one
    /// byte, whatever the GAS says: ACPICA's `AcpiReset` (which Linux calls) writes I/O reset
    /// registers with its fixed 8-bit width so that firmware with a wrong bit width still
    /// resets. Address 0 is "no register": ACPICA then does not write at all.
    fn is(&self, space: AddressSpace, address: u64, size: u8) -> bool {
        let width = match self.register.space {
            AddressSpace::SystemIo => 1,
            _ => self.register.width,
        };
        self.register.address != 0
            && Register {
                width,
                ..self.register
            }
            .is(space, address, size)
    }
}

/// Where the host asks to sleep, and what S5 is there (ACPI 6.5 §4.8.3.2.1, §4.8.3.7, §7.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleepControl {
    /// Fixed-hardware ACPI: the PM1a and optional PM1b control registers
    /// (X_PM1a_CNT_BLK / X_PM1b_CNT_BLK, PM1_CNT_LEN bytes, normally 2).
    Pm1 {
        /// PM1a_CNT.
        a: Register,
        /// PM1b_CNT, when the FADT has one.
        b: Option<Register>,
        /// `\_S5`'s first element: the SLP_TYP written to PM1a.
        s5_slp_typ_a: u8,
        /// `\_S5`'s second element: the SLP_TYP written to PM1b.
        s5_slp_typ_b: u8,
    },
    /// Hardware-reduced ACPI: the FADT's SLEEP_CONTROL_REG (8 bits).
    HardwareReduced {
        /// SLEEP_CONTROL_REG.
        register: Register,
        /// `\_S5`'s SLP_TYP.
        s5_slp_typ: u8,
    },
}

/// PM1 control: SLP_TYP in bits 12:10 (ACPI 6.5 §4.8.3.2.1, Table 4.16).
const PM1_SLP_TYP_SHIFT: u32 = 10;
/// PM1 control: SLP_EN, bit 13 (same table).
const PM1_SLP_EN: u64 = 1 << 13;

/// What the host's machine looks like to the detector: what its FADT (and DSDT, for `\_S5`)
/// say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPlatform {
    /// RESET_REG and RESET_VALUE; `None` when the FADT has none (revision 1, or all zero).
    pub reset_register: Option<ResetRegister>,
    /// The FADT's RESET_REG_SUP flag (§5.2.9, Table 5.10, bit 10). Without it Linux does not
    /// use the reset register, so a write there is an ordinary write.
    pub reset_supported: bool,
    /// Where and how the host powers off; `None` when the DSDT has no `\_S5`.
    pub sleep: Option<SleepControl>,
}

/// One thing the host did that might reset or power off the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAccess {
    /// `out` of `size` bytes (1, 2 or 4) to `port`.
    PortWrite { port: u16, size: u8, value: u32 },
    /// A write of `size` bytes (1, 2, 4 or 8) to physical `address`.
    MmioWrite {
        address: HostPhysAddr,
        size: u8,
        value: u64,
    },
    /// The host's core shut down on a triple fault (a VM exit on both VMX and SVM).
    TripleFault,
}

/// What asked for the reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSource {
    /// The FADT's reset register.
    AcpiResetRegister,
    /// The chipset's reset control register at 0xCF9; `hard` when SYS_RST was set.
    Port0xCf9 { hard: bool },
    /// The 8042 pulsed the CPU reset line.
    KeyboardController,
    /// A triple fault (shutdown).
    TripleFault,
    /// An INIT signal reached a host core from outside the host's own (filtered) IPIs: the
    /// chipset's CPU-only reset or another agent of the platform.
    InitSignal,
}

/// What the host asked the machine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// Restart.
    Reset { source: ResetSource },
    /// Enter S5 (soft off).
    PowerOff,
}

/// The chipset's reset control port.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// Reset Control Register: SYS_RST — a hard reset rather than a CPU-only one.
pub const CF9_SYS_RST: u8 = 1 << 1;
/// Reset Control Register: RST_CPU — setting it starts the reset.
pub const CF9_RST_CPU: u8 = 1 << 2;
/// Reset Control Register: FULL_RST — a hard reset also cycles power.
pub const CF9_FULL_RST: u8 = 1 << 3;
/// The 8042's command/status port.
pub const KBC_COMMAND_PORT: u16 = 0x64;
/// The 8042 command Linux sends to reset: pulse output-port bit 0 only.
pub const KBC_PULSE_RESET: u8 = 0xfe;

/// Classifies the host's accesses; holds the 0xCF9 latch between them.
#[derive(Clone, Debug)]
pub struct ResetDetector {
    platform: HostPlatform,
    /// SYS_RST and FULL_RST as last written with RST_CPU clear.
    cf9_latch: u8,
}

impl ResetDetector {
    /// A detector for `platform`, with the reset control register at its power-on value (0).
    pub fn new(platform: HostPlatform) -> Self {
        ResetDetector {
            platform,
            cf9_latch: 0,
        }
    }

    /// The platform it was built for (which ports and addresses it watches).
    pub fn platform(&self) -> &HostPlatform {
        &self.platform
    }

    /// What a byte read of 0xCF9 returns: the latched SYS_RST and FULL_RST.
    pub fn cf9_read(&self) -> u8 {
        self.cf9_latch
    }

    /// Whether `access` resets or powers off the machine, and how. After a reset the 0xCF9
    /// latch is back at 0, as the chipset's is.
    pub fn classify(&mut self, access: HostAccess) -> Option<HostEvent> {
        let event = self.event(access);
        if let Some(HostEvent::Reset { .. }) = event {
            self.cf9_latch = 0;
        }
        event
    }

    fn event(&mut self, access: HostAccess) -> Option<HostEvent> {
        let (space, address, size, value) = match access {
            HostAccess::TripleFault => {
                return Some(HostEvent::Reset {
                    source: ResetSource::TripleFault,
                });
            }
            HostAccess::PortWrite { port, size, value } => (
                AddressSpace::SystemIo,
                u64::from(port),
                size,
                u64::from(value),
            ),
            HostAccess::MmioWrite {
                address,
                size,
                value,
            } => (AddressSpace::SystemMemory, address.as_u64(), size, value),
        };
        // Only the written bytes count: an exit may hand over all of RAX for a byte `out`.
        let value = match size {
            1 | 2 | 4 => value & ((1u64 << (u32::from(size) * 8)) - 1),
            8 => value,
            _ => return None,
        };
        // The FADT's register first: firmware often names 0xCF9 itself (value 0x06), and then
        // the host asked for an ACPI reset.
        if let (true, Some(reset)) = (self.platform.reset_supported, self.platform.reset_register) {
            if reset.is(space, address, size) && value == u64::from(reset.value) {
                return Some(HostEvent::Reset {
                    source: ResetSource::AcpiResetRegister,
                });
            }
        }
        if self.is_power_off(space, address, size, value) {
            return Some(HostEvent::PowerOff);
        }
        if space != AddressSpace::SystemIo || size != 1 {
            return None;
        }
        // Both legacy ports are byte registers; a wider access is something else (a dword at
        // 0xCF8 is PCI CONFIG_ADDRESS).
        let byte = value as u8;
        match address {
            a if a == u64::from(RESET_CONTROL_PORT) => {
                if byte & CF9_RST_CPU != 0 {
                    // The type comes from the byte that sets RST_CPU (Linux writes SYS_RST
                    // again with it).
                    return Some(HostEvent::Reset {
                        source: ResetSource::Port0xCf9 {
                            hard: byte & CF9_SYS_RST != 0,
                        },
                    });
                }
                self.cf9_latch = byte & (CF9_SYS_RST | CF9_FULL_RST);
                None
            }
            // 0xF0–0xFF pulse the output-port lines whose bits are 0; bit 0 is reset.
            a if a == u64::from(KBC_COMMAND_PORT) && byte & 0xf0 == 0xf0 && byte & 1 == 0 => {
                Some(HostEvent::Reset {
                    source: ResetSource::KeyboardController,
                })
            }
            _ => None,
        }
    }

    /// Whether a write enters S5 through the platform's sleep control.
    fn is_power_off(&self, space: AddressSpace, address: u64, size: u8, value: u64) -> bool {
        match self.platform.sleep {
            Some(SleepControl::Pm1 {
                a,
                b,
                s5_slp_typ_a,
                s5_slp_typ_b,
            }) => {
                let pm1_s5 = |typ: u8| {
                    value & PM1_SLP_EN != 0
                        && (value >> PM1_SLP_TYP_SHIFT) & 0b111 == u64::from(typ)
                };
                (a.is(space, address, size) && pm1_s5(s5_slp_typ_a))
                    || b.is_some_and(|b| b.is(space, address, size) && pm1_s5(s5_slp_typ_b))
            }
            Some(SleepControl::HardwareReduced {
                register,
                s5_slp_typ,
            }) => {
                register.is(space, address, size)
                    && atoll_devices::acpi::requested_sleep_type(value as u8) == Some(s5_slp_typ)
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typical Intel desktop: reset register = 0xCF9 / 0x06, PM1a_CNT at 0x1804, `\_S5` 7.
    fn intel_desktop() -> HostPlatform {
        HostPlatform {
            reset_register: Some(ResetRegister {
                register: Register::io_byte(RESET_CONTROL_PORT),
                value: 0x06,
            }),
            reset_supported: true,
            sleep: Some(SleepControl::Pm1 {
                a: Register {
                    space: AddressSpace::SystemIo,
                    address: 0x1804,
                    width: 2,
                },
                b: None,
                s5_slp_typ_a: 7,
                s5_slp_typ_b: 0,
            }),
        }
    }

    /// A platform whose reset register is elsewhere, so 0xCF9 is only the chipset's.
    fn io_reset_at_b2() -> HostPlatform {
        HostPlatform {
            reset_register: Some(ResetRegister {
                register: Register::io_byte(0xb2),
                value: 0x0f,
            }),
            ..intel_desktop()
        }
    }

    fn no_reset_register() -> HostPlatform {
        HostPlatform {
            reset_register: None,
            reset_supported: false,
            sleep: None,
        }
    }

    fn out(port: u16, size: u8, value: u32) -> HostAccess {
        HostAccess::PortWrite { port, size, value }
    }

    fn mmio(address: u64, size: u8, value: u64) -> HostAccess {
        HostAccess::MmioWrite {
            address: HostPhysAddr::new(address),
            size,
            value,
        }
    }

    fn reset(source: ResetSource) -> Option<HostEvent> {
        Some(HostEvent::Reset { source })
    }

    #[test]
    fn acpi_reset_register_in_io_space() {
        let mut d = ResetDetector::new(io_reset_at_b2());
        assert_eq!(
            d.classify(out(0xb2, 1, 0x0f)),
            reset(ResetSource::AcpiResetRegister)
        );
        assert_eq!(d.classify(out(0xb2, 1, 0x0e)), None, "wrong value");
        assert_eq!(d.classify(out(0xb2, 2, 0x0f)), None, "wrong width");
        assert_eq!(d.classify(out(0xb3, 1, 0x0f)), None, "wrong port");
        assert_eq!(d.classify(mmio(0xb2, 1, 0x0f)), None, "wrong space");
    }

    #[test]
    fn acpi_reset_register_in_memory_space() {
        let mut d = ResetDetector::new(HostPlatform {
            reset_register: Some(ResetRegister {
                register: Register {
                    space: AddressSpace::SystemMemory,
                    address: 0xfed0_3000,
                    width: 1,
                },
                value: 0x01,
            }),
            reset_supported: true,
            sleep: None,
        });
        assert_eq!(
            d.classify(mmio(0xfed0_3000, 1, 1)),
            reset(ResetSource::AcpiResetRegister)
        );
        assert_eq!(d.classify(mmio(0xfed0_3000, 4, 1)), None, "wrong width");
        assert_eq!(d.classify(mmio(0xfed0_3000, 1, 0x02)), None, "wrong value");
        assert_eq!(d.classify(mmio(0xfed0_3001, 1, 1)), None, "wrong address");
        // The port with the same number is not the register.
        assert_eq!(
            d.classify(HostAccess::PortWrite {
                port: 0x3000,
                size: 1,
                value: 1
            }),
            None
        );
    }

    #[test]
    fn memory_reset_register_uses_the_gas_width() {
        let mut d = ResetDetector::new(HostPlatform {
            reset_register: Some(ResetRegister {
                register: Register {
                    space: AddressSpace::SystemMemory,
                    address: 0xfe00_0000,
                    width: 4,
                },
                value: 0x0e,
            }),
            reset_supported: true,
            sleep: None,
        });
        assert_eq!(
            d.classify(mmio(0xfe00_0000, 4, 0x0e)),
            reset(ResetSource::AcpiResetRegister)
        );
        assert_eq!(
            d.classify(mmio(0xfe00_0000, 1, 0x0e)),
            None,
            "narrower than the GAS"
        );
        assert_eq!(
            d.classify(mmio(0xfe00_0000, 4, 0x10e)),
            None,
            "more than RESET_VALUE"
        );
    }

    #[test]
    fn io_reset_register_is_a_byte_whatever_the_gas_width() {
        let mut d = ResetDetector::new(HostPlatform {
            reset_register: Some(ResetRegister {
                register: Register {
                    space: AddressSpace::SystemIo,
                    address: 0xb2,
                    width: 2,
                },
                value: 0x0f,
            }),
            reset_supported: true,
            sleep: None,
        });
        assert_eq!(
            d.classify(out(0xb2, 1, 0x0f)),
            reset(ResetSource::AcpiResetRegister)
        );
        assert_eq!(d.classify(out(0xb2, 2, 0x0f)), None);
    }

    #[test]
    fn reset_register_at_address_zero_is_absent() {
        let mut d = ResetDetector::new(HostPlatform {
            reset_register: Some(ResetRegister {
                register: Register::io_byte(0),
                value: 0,
            }),
            reset_supported: true,
            sleep: None,
        });
        assert_eq!(d.classify(out(0, 1, 0)), None);
    }

    #[test]
    fn only_the_written_bytes_count() {
        let mut d = ResetDetector::new(io_reset_at_b2());
        // A byte `out` whose exit reports stale upper bits of RAX.
        assert_eq!(
            d.classify(out(0xb2, 1, 0xdead_be0f)),
            reset(ResetSource::AcpiResetRegister)
        );
        assert_eq!(
            d.classify(out(0x64, 1, 0x1234_56fe)),
            reset(ResetSource::KeyboardController)
        );
        assert_eq!(d.classify(out(0x64, 3, 0xfe)), None, "no 3-byte access");
        assert_eq!(d.classify(mmio(0x1000, 16, 0)), None, "no 16-byte access");
    }

    #[test]
    fn reset_register_needs_reset_reg_sup() {
        let mut platform = io_reset_at_b2();
        platform.reset_supported = false;
        let mut d = ResetDetector::new(platform);
        assert_eq!(d.classify(out(0xb2, 1, 0x0f)), None);
    }

    #[test]
    fn reset_register_in_pci_config_space_never_matches_a_port_or_mmio_write() {
        let mut d = ResetDetector::new(HostPlatform {
            reset_register: Some(ResetRegister {
                register: Register {
                    space: AddressSpace::PciConfig,
                    address: 0x44,
                    width: 1,
                },
                value: 0x02,
            }),
            reset_supported: true,
            sleep: None,
        });
        assert_eq!(d.classify(out(0x44, 1, 0x02)), None);
        assert_eq!(d.classify(mmio(0x44, 1, 0x02)), None);
    }

    #[test]
    fn reset_register_at_cf9_is_reported_as_acpi() {
        let mut d = ResetDetector::new(intel_desktop());
        assert_eq!(
            d.classify(out(0xcf9, 1, 0x06)),
            reset(ResetSource::AcpiResetRegister)
        );
        // Another RST_CPU value is still the chipset's reset.
        assert_eq!(
            d.classify(out(0xcf9, 1, 0x0e)),
            reset(ResetSource::Port0xCf9 { hard: true })
        );
    }

    #[test]
    fn linux_reboot_pci_sequence() {
        let mut d = ResetDetector::new(no_reset_register());
        // Linux: cf9 = inb(0xcf9) & ~6; outb(cf9 | 2); udelay(50); outb(cf9 | 6).
        let cf9 = d.cf9_read() & !0x06;
        assert_eq!(
            d.classify(out(0xcf9, 1, u32::from(cf9 | 0x02))),
            None,
            "latches only"
        );
        assert_eq!(d.cf9_read(), 0x02);
        assert_eq!(
            d.classify(out(0xcf9, 1, u32::from(cf9 | 0x06))),
            reset(ResetSource::Port0xCf9 { hard: true })
        );
        assert_eq!(d.cf9_read(), 0, "the reset clears the latch");
    }

    #[test]
    fn cf9_soft_reset_and_latch() {
        let mut d = ResetDetector::new(no_reset_register());
        assert_eq!(
            d.classify(out(0xcf9, 1, 0x04)),
            reset(ResetSource::Port0xCf9 { hard: false })
        );
        // FULL_RST and SYS_RST latch; RST_CPU and reserved bits do not.
        assert_eq!(d.classify(out(0xcf9, 1, 0xfa)), None);
        assert_eq!(d.cf9_read(), CF9_FULL_RST | CF9_SYS_RST);
        assert_eq!(d.classify(out(0xcf9, 1, 0x00)), None);
        assert_eq!(d.cf9_read(), 0);
        // The reset type comes from the byte that sets RST_CPU, not from the latch.
        d.classify(out(0xcf9, 1, 0x02));
        assert_eq!(
            d.classify(out(0xcf9, 1, 0x04)),
            reset(ResetSource::Port0xCf9 { hard: false })
        );
    }

    #[test]
    fn cf9_wrong_size_or_port() {
        let mut d = ResetDetector::new(no_reset_register());
        assert_eq!(d.classify(out(0xcf9, 2, 0x06)), None, "word write");
        assert_eq!(
            d.classify(out(0xcf8, 4, 0x0000_0600)),
            None,
            "CONFIG_ADDRESS"
        );
        assert_eq!(d.classify(out(0xcf8, 1, 0x06)), None);
        assert_eq!(d.classify(out(0xcfa, 1, 0x06)), None);
        assert_eq!(d.classify(mmio(0xcf9, 1, 0x06)), None, "memory, not I/O");
        assert_eq!(d.cf9_read(), 0, "none of these touched the latch");
    }

    #[test]
    fn keyboard_controller_pulse() {
        let mut d = ResetDetector::new(no_reset_register());
        assert_eq!(
            d.classify(out(0x64, 1, 0xfe)),
            reset(ResetSource::KeyboardController)
        );
        assert_eq!(
            d.classify(out(0x64, 1, 0xf0)),
            reset(ResetSource::KeyboardController)
        );
        assert_eq!(d.classify(out(0x64, 1, 0xff)), None, "pulses no line");
        assert_eq!(
            d.classify(out(0x64, 1, 0xfd)),
            None,
            "pulses line 1, not reset"
        );
        assert_eq!(
            d.classify(out(0x64, 1, 0xd1)),
            None,
            "write output port command"
        );
        assert_eq!(
            d.classify(out(0x64, 1, 0xee)),
            None,
            "below the pulse range"
        );
        assert_eq!(d.classify(out(0x60, 1, 0xfe)), None, "data port");
        assert_eq!(d.classify(out(0x64, 2, 0xfe)), None, "word write");
    }

    #[test]
    fn triple_fault_always_resets() {
        let mut d = ResetDetector::new(no_reset_register());
        d.classify(out(0xcf9, 1, 0x0a));
        assert_eq!(
            d.classify(HostAccess::TripleFault),
            reset(ResetSource::TripleFault)
        );
        assert_eq!(d.cf9_read(), 0);
    }

    #[test]
    fn pm1a_s5_powers_off() {
        let mut d = ResetDetector::new(intel_desktop());
        let s5 = (7 << 10) as u32;
        // ACPICA writes SLP_TYP first, then SLP_TYP | SLP_EN.
        assert_eq!(d.classify(out(0x1804, 2, s5 | 1)), None, "SLP_EN clear");
        assert_eq!(
            d.classify(out(0x1804, 2, s5 | (1 << 13) | 1)),
            Some(HostEvent::PowerOff)
        );
        assert_eq!(
            d.classify(out(0x1804, 2, (5 << 10) | (1 << 13))),
            None,
            "S3, not S5"
        );
        assert_eq!(
            d.classify(out(0x1804, 1, s5 | (1 << 13))),
            None,
            "byte write"
        );
        assert_eq!(
            d.classify(out(0x1805, 2, s5 | (1 << 13))),
            None,
            "wrong port"
        );
    }

    #[test]
    fn pm1b_uses_its_own_slp_typ() {
        let mut d = ResetDetector::new(HostPlatform {
            sleep: Some(SleepControl::Pm1 {
                a: Register {
                    space: AddressSpace::SystemIo,
                    address: 0x404,
                    width: 2,
                },
                b: Some(Register {
                    space: AddressSpace::SystemIo,
                    address: 0x408,
                    width: 2,
                }),
                s5_slp_typ_a: 5,
                s5_slp_typ_b: 3,
            }),
            ..no_reset_register()
        });
        let write = |typ: u32| (typ << 10) | (1 << 13);
        assert_eq!(
            d.classify(out(0x408, 2, write(3))),
            Some(HostEvent::PowerOff)
        );
        assert_eq!(
            d.classify(out(0x408, 2, write(5))),
            None,
            "PM1a's value on PM1b"
        );
        assert_eq!(
            d.classify(out(0x404, 2, write(5))),
            Some(HostEvent::PowerOff)
        );
        assert_eq!(
            d.classify(out(0x404, 2, write(3))),
            None,
            "PM1b's value on PM1a"
        );
    }

    #[test]
    fn hardware_reduced_sleep_control() {
        let mut d = ResetDetector::new(HostPlatform {
            sleep: Some(SleepControl::HardwareReduced {
                register: Register::io_byte(atoll_devices::acpi::SLEEP_CONTROL_PORT),
                s5_slp_typ: atoll_devices::acpi::S5_SLP_TYP,
            }),
            ..no_reset_register()
        });
        let port = atoll_devices::acpi::SLEEP_CONTROL_PORT;
        let s5 = u32::from(atoll_devices::acpi::S5_SLEEP_CONTROL_VALUE);
        assert_eq!(d.classify(out(port, 1, s5)), Some(HostEvent::PowerOff));
        assert_eq!(d.classify(out(port, 1, s5 & !0x20)), None, "SLP_EN clear");
        assert_eq!(
            d.classify(out(port, 1, 0x20 | (3 << 2))),
            None,
            "another sleep type"
        );
        assert_eq!(d.classify(out(port, 2, s5)), None, "word write");
    }

    #[test]
    fn without_sleep_control_nothing_powers_off() {
        let mut d = ResetDetector::new(no_reset_register());
        assert_eq!(d.classify(out(0x1804, 2, (7 << 10) | (1 << 13))), None);
        assert_eq!(d.classify(out(0x600, 1, 0x34)), None);
    }

    #[test]
    fn other_writes_are_nothing() {
        let mut d = ResetDetector::new(intel_desktop());
        assert_eq!(d.classify(out(0x80, 1, 0xfe)), None, "POST code");
        assert_eq!(
            d.classify(out(0x92, 1, 0x01)),
            None,
            "port A is not modelled"
        );
        assert_eq!(
            d.classify(mmio(0xfee0_0300, 4, 0x000c_4500)),
            None,
            "an IPI"
        );
    }
}
