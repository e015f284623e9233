//! The local x2APIC of one enclave vCPU, as a pure model.
//!
//! [`X2Apic`] owns the architectural state of one local APIC in x2APIC mode (Intel SDM Vol. 3A
//! chapter 11, "Advanced Programmable Interrupt Controller (APIC)", §11.12 "Extended XAPIC
//! (x2APIC)"): the registers behind MSRs 0x800–0x8FF and IA32_TSC_DEADLINE, the IRR/ISR/TMR
//! vectors with their priority logic, and the APIC timer. It touches no hardware and keeps no
//! global state: time comes in as TSC values, and what the rest of the machine has to do (send an
//! IPI, tell the I/O APIC about an EOI, re-arm a host timer) goes back to the caller as an
//! [`ApicEffect`]. The exit handlers own the routing: they resolve IPI destinations (and drop and
//! count those outside the enclave), deliver into the target's [`X2Apic::accept`], and inject
//! what [`X2Apic::ack`] hands them.
//!
//! Every guest-controlled input either takes effect or returns an [`ApicError`] (which the
//! handler turns into #GP(0)) and then changes nothing; nothing here panics.
//!
//! Model choices, where the SDM leaves room:
//! * Version 0x0006_0014 ([`VERSION`]): version 0x14 (an integrated xAPIC-or-later, so Linux
//!   skips the arbitration-priority register), seven LVT entries (CMCI, timer, thermal,
//!   performance counters, LINT0, LINT1, error; "max LVT entry" = 6, §11.4.8) and no directed EOI
//!   (bit 24 clear, so SVR bit 12 is reserved).
//! * Fixed interrupts arriving while the APIC is software-disabled (SVR bit 8 clear) are dropped;
//!   what is already in IRR/ISR is kept (§11.4.7.2).
//! * Lowest-priority IPIs are not sent: in x2APIC mode the ICR with lowest-priority delivery
//!   mode sets ESR bit 4 "redirectable IPI" and the interrupt is not processed (§11.5.3). Linux
//!   never sends them in x2APIC mode.
//! * Read-only bits inside writable registers (delivery status, LINT remote IRR) are ignored on
//!   writes rather than faulted, so read-modify-write code works; they read as 0 since delivery
//!   is instantaneous. Reserved bits fault (§11.12.1.3).
//! * The SELF IPI register (§11.12.11) delivers into this APIC directly; ICR writes always go out
//!   as [`ApicEffect::Ipi`], self shorthands included, and the caller routes them back.

use core::fmt;

/// The x2APIC MSRs (SDM Vol. 3A §11.12.1.2, Table 11-6) and IA32_TSC_DEADLINE (§11.5.4.1).
pub mod reg {
    /// Local x2APIC ID (read-only).
    pub const ID: u32 = 0x802;
    /// Version (read-only).
    pub const VERSION: u32 = 0x803;
    /// Task priority.
    pub const TPR: u32 = 0x808;
    /// Processor priority (read-only, derived).
    pub const PPR: u32 = 0x80a;
    /// End of interrupt (write-only, zero only).
    pub const EOI: u32 = 0x80b;
    /// Logical destination (read-only in x2APIC mode, derived from the ID).
    pub const LDR: u32 = 0x80d;
    /// Spurious-interrupt vector register.
    pub const SVR: u32 = 0x80f;
    /// In-service register, bits 31:0 (vectors 0–31); 0x810–0x817.
    pub const ISR0: u32 = 0x810;
    /// Trigger-mode register, bits 31:0; 0x818–0x81F.
    pub const TMR0: u32 = 0x818;
    /// Interrupt-request register, bits 31:0; 0x820–0x827.
    pub const IRR0: u32 = 0x820;
    /// Error status.
    pub const ESR: u32 = 0x828;
    /// LVT corrected machine-check interrupt.
    pub const LVT_CMCI: u32 = 0x82f;
    /// Interrupt command (64 bits; a write sends).
    pub const ICR: u32 = 0x830;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x832;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x833;
    /// LVT performance-monitoring counters.
    pub const LVT_PMC: u32 = 0x834;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x835;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x836;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x837;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x838;
    /// Timer current count (read-only).
    pub const TIMER_CURRENT: u32 = 0x839;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x83e;
    /// SELF IPI (write-only).
    pub const SELF_IPI: u32 = 0x83f;
    /// IA32_TSC_DEADLINE.
    pub const TSC_DEADLINE: u32 = 0x6e0;
}

/// The value of the version register: version 0x14, max LVT entry 6, no directed EOI (SDM Vol.
/// 3A §11.4.8, Figure 11-7).
pub const VERSION: u32 = 0x0006_0014;

/// The x2APIC broadcast destination (SDM Vol. 3A §11.12.9): every APIC, physical or logical.
pub const BROADCAST: u32 = 0xffff_ffff;

/// ESR bits (SDM Vol. 3A §11.5.3, Figure 11-9).
pub mod esr {
    /// An IPI with lowest-priority delivery mode, which this APIC does not send.
    pub const REDIRECTABLE_IPI: u32 = 1 << 4;
    /// An IPI this APIC tried to send had a vector 0–15.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// An interrupt this APIC received or generated had a vector 0–15.
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
}

/// Whether `msr` belongs to the x2APIC model (the 0x800–0x8FF range or IA32_TSC_DEADLINE), so a
/// handler knows to send the access here.
pub fn is_apic_msr(msr: u32) -> bool {
    (0x800..=0x8ff).contains(&msr) || msr == reg::TSC_DEADLINE
}

/// The logical x2APIC ID of the APIC with x2APIC ID `apic_id` (SDM Vol. 3A §11.12.10.2): cluster
/// ID = ID bits 19:4 in bits 31:16, and the bit numbered by ID bits 3:0 set in the 16-bit member
/// mask.
pub fn logical_id(apic_id: u32) -> u32 {
    ((apic_id >> 4) << 16) | (1 << (apic_id & 0xf))
}

/// Whether the APIC with x2APIC ID `apic_id` is named by `dest` in destination mode `mode` (SDM
/// Vol. 3A §11.12.9 and §11.12.10).
pub fn destination_matches(apic_id: u32, dest: u32, mode: DestMode) -> bool {
    if dest == BROADCAST {
        return true;
    }
    match mode {
        DestMode::Physical => dest == apic_id,
        DestMode::Logical => {
            let own = logical_id(apic_id);
            dest >> 16 == own >> 16 && dest & own & 0xffff != 0
        }
    }
}

/// Why an access was refused; the handler injects #GP(0) and nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// Not a register: a reserved address in 0x800–0x8FF (such as DFR 0x80E or 0x831) or an MSR
    /// outside the APIC (SDM Vol. 3A §11.12.1.2).
    NoSuchRegister { msr: u32 },
    /// WRMSR to a read-only register.
    ReadOnly { msr: u32 },
    /// RDMSR of a write-only register (EOI, SELF IPI).
    WriteOnly { msr: u32 },
    /// A value with reserved bits set, or a non-zero write where only zero is allowed (EOI, ESR)
    /// (SDM Vol. 3A §11.12.1.3).
    ReservedBits { msr: u32, value: u64 },
}

impl fmt::Display for ApicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApicError::NoSuchRegister { msr } => write!(f, "MSR {msr:#x} is no x2APIC register"),
            ApicError::ReadOnly { msr } => write!(f, "x2APIC register {msr:#x} is read-only"),
            ApicError::WriteOnly { msr } => write!(f, "x2APIC register {msr:#x} is write-only"),
            ApicError::ReservedBits { msr, value } => {
                write!(
                    f,
                    "value {value:#x} sets reserved bits of x2APIC register {msr:#x}"
                )
            }
        }
    }
}

/// How an IPI's destination field is read (ICR bit 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestMode {
    /// An x2APIC ID.
    Physical,
    /// A logical x2APIC ID: cluster in bits 31:16, member mask in bits 15:0.
    Logical,
}

/// The ICR destination shorthand (bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// The destination field names the targets.
    None,
    /// The sender only.
    SelfOnly,
    /// Every APIC, the sender included.
    AllIncludingSelf,
    /// Every APIC but the sender.
    AllExcludingSelf,
}

impl Shorthand {
    /// The shorthand in ICR bits 19:18, given those two bits (higher bits ignored).
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        }
    }
}

/// Trigger mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Edge,
    Level,
}

/// What an IPI asks the target to do (ICR bits 10:8 with the vector where it matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiMode {
    /// A fixed interrupt with this vector (16–255).
    Fixed(u8),
    /// SMI (the vector field must be 0 and is ignored).
    Smi,
    /// NMI.
    Nmi,
    /// INIT (see [`Ipi::is_init_deassert`]).
    Init,
    /// STARTUP with this vector: the target starts at `vector << 12`.
    Startup(u8),
}

/// An IPI the guest sent by writing the ICR (SDM Vol. 3A §11.6.1, §11.12.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// The destination: ICR bits 63:32 when `shorthand` is [`Shorthand::None`] ([`BROADCAST`] is
    /// every APIC); with a shorthand, filled in as the sender's own ID for
    /// [`Shorthand::SelfOnly`] and [`BROADCAST`] for the two "all" shorthands.
    pub dest: u32,
    /// How `dest` is read.
    pub dest_mode: DestMode,
    /// The shorthand.
    pub shorthand: Shorthand,
    /// What to deliver.
    pub mode: IpiMode,
    /// ICR bit 14: assert (true) or de-assert.
    pub level: bool,
    /// ICR bit 15.
    pub trigger: Trigger,
}

impl Ipi {
    /// INIT level de-assert (INIT, level-triggered, level 0): a synchronization message that
    /// Pentium 4 and later processors ignore; Linux still sends it after INIT assert.
    pub fn is_init_deassert(&self) -> bool {
        self.mode == IpiMode::Init && self.trigger == Trigger::Level && !self.level
    }

    /// Whether the APIC with ID `target` receives this IPI sent by the APIC with ID `sender`.
    /// The caller still checks that `target` belongs to the sender's enclave.
    pub fn targets(&self, sender: u32, target: u32) -> bool {
        match self.shorthand {
            Shorthand::None => destination_matches(target, self.dest, self.dest_mode),
            Shorthand::SelfOnly => target == sender,
            Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => target != sender,
        }
    }
}

/// What the caller must do after a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicEffect {
    /// Nothing beyond the register update (the caller still looks at [`X2Apic::pending`] before
    /// entering the guest, since a write can make an interrupt deliverable).
    None,
    /// Route this IPI (the sender included when the IPI targets it).
    Ipi(Ipi),
    /// A level-triggered interrupt was completed: tell the I/O APIC(s) so they clear Remote IRR
    /// for this vector (SDM Vol. 3A §11.8.5).
    Eoi { vector: u8 },
    /// The timer's next expiry is at this TSC value: (re)arm the host timer for it and call
    /// [`X2Apic::tick`] then.
    TimerArmed { at_tsc: u64 },
    /// The timer is disarmed.
    TimerCancelled,
}

/// The timer modes (LVT timer bits 18:17, SDM Vol. 3A §11.5.1, §11.5.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// LVT register indices into [`X2Apic::lvt`], in MSR order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lvt {
    Cmci = 0,
    Timer = 1,
    Thermal = 2,
    Pmc = 3,
    Lint0 = 4,
    Lint1 = 5,
    Error = 6,
}

impl Lvt {
    fn from_msr(msr: u32) -> Option<Self> {
        Some(match msr {
            reg::LVT_CMCI => Lvt::Cmci,
            reg::LVT_TIMER => Lvt::Timer,
            reg::LVT_THERMAL => Lvt::Thermal,
            reg::LVT_PMC => Lvt::Pmc,
            reg::LVT_LINT0 => Lvt::Lint0,
            reg::LVT_LINT1 => Lvt::Lint1,
            reg::LVT_ERROR => Lvt::Error,
            _ => return None,
        })
    }

    /// The bits software may set (SDM Vol. 3A §11.5.1, Figure 11-8): vector 7:0 and mask 16
    /// everywhere; delivery mode 10:8 except on timer and error; timer mode 18:17; polarity 13
    /// and trigger mode 15 on LINT0/LINT1.
    fn writable(self) -> u32 {
        const VECTOR: u32 = 0xff;
        const DELIVERY_MODE: u32 = 0x700;
        const POLARITY: u32 = 1 << 13;
        const TRIGGER: u32 = 1 << 15;
        const TIMER_MODE: u32 = 0b11 << 17;
        VECTOR
            | LVT_MASKED
            | match self {
                Lvt::Timer => TIMER_MODE,
                Lvt::Error => 0,
                Lvt::Cmci | Lvt::Thermal | Lvt::Pmc => DELIVERY_MODE,
                Lvt::Lint0 | Lvt::Lint1 => DELIVERY_MODE | POLARITY | TRIGGER,
            }
    }

    /// Read-only status bits, ignored on writes: delivery status 12, and remote IRR 14 on LINTs.
    fn read_only(self) -> u32 {
        match self {
            Lvt::Lint0 | Lvt::Lint1 => (1 << 12) | (1 << 14),
            _ => 1 << 12,
        }
    }
}

/// LVT mask bit 16.
const LVT_MASKED: u32 = 1 << 16;
/// LVT reset value: masked, everything else 0 (SDM Vol. 3A §11.4.7.1).
const LVT_RESET: u32 = LVT_MASKED;
/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// SVR bits software may set: vector 7:0, enable 8, focus processor checking 9 (bit 12, EOI
/// broadcast suppression, needs directed EOI, which [`VERSION`] does not offer) (SDM Vol. 3A
/// §11.9, Figure 11-23).
const SVR_WRITABLE: u32 = 0x3ff;
/// SVR reset value (SDM Vol. 3A §11.4.7.1).
const SVR_RESET: u32 = 0xff;
/// Divide configuration bits 0, 1 and 3 (SDM Vol. 3A §11.5.4, Figure 11-10).
const DIVIDE_WRITABLE: u32 = 0b1011;
/// ICR bits software may set in x2APIC mode (SDM Vol. 3A §11.12.9, Figure 11-28): vector 7:0,
/// delivery mode 10:8, destination mode 11, level 14, trigger mode 15, shorthand 19:18,
/// destination 63:32. Bit 12 (delivery status) is reserved in x2APIC mode.
const ICR_WRITABLE: u64 = 0xffff_ffff_000c_cfff;

/// A 256-bit vector register (IRR, ISR, TMR; SDM Vol. 3A §11.8.4, Figure 11-20).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Vectors([u64; 4]);

impl Vectors {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 6)] |= 1 << (v & 63);
    }

    fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 6)] &= !(1 << (v & 63));
    }

    fn test(&self, v: u8) -> bool {
        self.0[usize::from(v >> 6)] & (1 << (v & 63)) != 0
    }

    fn highest(&self) -> Option<u8> {
        (0..4).rev().find_map(|i| {
            let w = self.0[i];
            (w != 0).then(|| (i as u32 * 64 + 63 - w.leading_zeros()) as u8)
        })
    }

    /// The 32-bit register `n` (0–7) as the MSRs show it: bit `v % 32` of register `v / 32`.
    fn word(&self, n: u32) -> u32 {
        let n = (n & 7) as usize;
        (self.0[n / 2] >> ((n % 2) * 32)) as u32
    }
}

/// A running one-shot or periodic countdown.
///
/// The count is derived from elapsed TSC ticks since `anchor`, never accumulated, so periodic
/// expiries do not drift: counts elapsed at TSC `t` = ⌊(t − anchor) · timer_hz / (tsc_hz ·
/// divisor)⌋.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Countdown {
    /// TSC when counting (re)started.
    anchor: u64,
    /// The count at `anchor` (1 and above).
    start: u32,
    /// Expiries already delivered since `anchor` (periodic mode).
    expired: u128,
}

/// The local x2APIC of one vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X2Apic {
    id: u32,
    tsc_hz: u64,
    timer_hz: u64,
    tpr: u8,
    svr: u32,
    irr: Vectors,
    isr: Vectors,
    tmr: Vectors,
    /// ESR as the guest last latched it.
    esr: u32,
    /// Errors seen since the last ESR write.
    esr_pending: u32,
    icr: u64,
    lvt: [u32; 7],
    initial_count: u32,
    divide: u32,
    countdown: Option<Countdown>,
    tsc_deadline: u64,
}

impl X2Apic {
    /// The APIC of the vCPU with x2APIC ID `apic_id`, in its power-up state (SDM Vol. 3A
    /// §11.4.7.1): LVTs masked, SVR 0xFF (software-disabled until bit 8 is set), timer stopped.
    ///
    /// The timer counts at `timer_hz` (the APIC timer's base clock, before the divider); time is
    /// given as TSC values of a TSC running at `tsc_hz`. A frequency of 0 is taken as 1 Hz.
    pub fn new(apic_id: u32, tsc_hz: u64, timer_hz: u64) -> Self {
        Self {
            id: apic_id,
            tsc_hz: tsc_hz.max(1),
            timer_hz: timer_hz.max(1),
            tpr: 0,
            svr: SVR_RESET,
            irr: Vectors::default(),
            isr: Vectors::default(),
            tmr: Vectors::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [LVT_RESET; 7],
            initial_count: 0,
            divide: 0,
            countdown: None,
            tsc_deadline: 0,
        }
    }

    /// Back to the power-up state but for the ID, as an INIT does (SDM Vol. 3A §11.4.7.3).
    pub fn reset(&mut self) {
        *self = Self::new(self.id, self.tsc_hz, self.timer_hz);
    }

    /// Its x2APIC ID.
    pub fn apic_id(&self) -> u32 {
        self.id
    }

    /// Whether software enabled it (SVR bit 8).
    pub fn is_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The task priority (CR8 is its bits 7:4).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets the task priority, as a MOV to CR8 does with `cr8 << 4` (SDM Vol. 3A §11.8.6).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// The processor priority (SDM Vol. 3A §11.8.3.1): the higher of the TPR and the highest
    /// in-service vector by class; the TPR's sub-class only when the TPR's class wins.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The timer mode the LVT timer selects.
    pub fn timer_mode(&self) -> TimerMode {
        match (self.lvt[Lvt::Timer as usize] >> 17) & 0b11 {
            0 => TimerMode::OneShot,
            1 => TimerMode::Periodic,
            // 0b11 is refused on write.
            _ => TimerMode::TscDeadline,
        }
    }

    /// RDMSR of `msr` at TSC `now_tsc`.
    pub fn read(&self, msr: u32, now_tsc: u64) -> Result<u64, ApicError> {
        let value: u32 = match msr {
            reg::ID => self.id,
            reg::VERSION => VERSION,
            reg::TPR => self.tpr.into(),
            reg::PPR => self.ppr().into(),
            reg::LDR => logical_id(self.id),
            reg::SVR => self.svr,
            0x810..=0x817 => self.isr.word(msr - reg::ISR0),
            0x818..=0x81f => self.tmr.word(msr - reg::TMR0),
            0x820..=0x827 => self.irr.word(msr - reg::IRR0),
            reg::ESR => self.esr,
            reg::ICR => return Ok(self.icr),
            reg::TIMER_INITIAL => self.initial_count,
            reg::TIMER_CURRENT => self.current_count(now_tsc),
            reg::TIMER_DIVIDE => self.divide,
            reg::TSC_DEADLINE => {
                // Reads 0 in the other timer modes (SDM Vol. 3A §11.5.4.1).
                return Ok(if self.timer_mode() == TimerMode::TscDeadline {
                    self.tsc_deadline
                } else {
                    0
                });
            }
            reg::EOI | reg::SELF_IPI => return Err(ApicError::WriteOnly { msr }),
            _ => match Lvt::from_msr(msr) {
                Some(lvt) => self.lvt[lvt as usize],
                None => return Err(ApicError::NoSuchRegister { msr }),
            },
        };
        Ok(value.into())
    }

    /// WRMSR of `value` to `msr` at TSC `now_tsc`. On error nothing changed.
    pub fn write(&mut self, msr: u32, value: u64, now_tsc: u64) -> Result<ApicEffect, ApicError> {
        let reserved = Err(ApicError::ReservedBits { msr, value });
        match msr {
            reg::ID | reg::VERSION | reg::PPR | reg::LDR | reg::TIMER_CURRENT => {
                return Err(ApicError::ReadOnly { msr })
            }
            0x810..=0x827 => return Err(ApicError::ReadOnly { msr }),
            reg::ICR => return self.write_icr(value),
            reg::TSC_DEADLINE => {
                if self.timer_mode() != TimerMode::TscDeadline {
                    // Ignored in the other timer modes (SDM Vol. 3A §11.5.4.1).
                    return Ok(ApicEffect::None);
                }
                self.tick(now_tsc);
                self.tsc_deadline = value;
                return Ok(self.timer_effect());
            }
            _ => {}
        }
        if !is_apic_msr(msr) {
            return Err(ApicError::NoSuchRegister { msr });
        }
        // Every other register is 32 bits wide; bits 63:32 are reserved (SDM Vol. 3A
        // §11.12.1.2).
        let Ok(v) = u32::try_from(value) else {
            return if Self::is_register(msr) {
                reserved
            } else {
                Err(ApicError::NoSuchRegister { msr })
            };
        };
        match msr {
            reg::TPR => {
                let Ok(tpr) = u8::try_from(v) else {
                    return reserved;
                };
                self.tpr = tpr;
            }
            reg::EOI => {
                if v != 0 {
                    return reserved;
                }
                return Ok(self.eoi());
            }
            reg::SVR => {
                if v & !SVR_WRITABLE != 0 {
                    return reserved;
                }
                self.svr = v;
                if v & SVR_ENABLE == 0 {
                    // Software-disabling masks every LVT entry (SDM Vol. 3A §11.4.7.2).
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
            }
            reg::ESR => {
                // Only 0 may be written in x2APIC mode; the write latches the errors seen since
                // the last one (SDM Vol. 3A §11.5.3).
                if v != 0 {
                    return reserved;
                }
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            reg::TIMER_INITIAL => {
                if self.timer_mode() == TimerMode::TscDeadline {
                    // Ignored in TSC-deadline mode (SDM Vol. 3A §11.5.4.1).
                    return Ok(ApicEffect::None);
                }
                self.tick(now_tsc);
                self.initial_count = v;
                // Writing the initial count (re)starts counting; 0 stops the timer (§11.5.4).
                self.countdown = (v != 0).then_some(Countdown {
                    anchor: now_tsc,
                    start: v,
                    expired: 0,
                });
                return Ok(self.timer_effect());
            }
            reg::TIMER_DIVIDE => {
                if v & !DIVIDE_WRITABLE != 0 {
                    return reserved;
                }
                // Count what elapsed at the old rate, then go on from the current count at the
                // new one.
                self.tick(now_tsc);
                let current = self.current_count(now_tsc);
                self.divide = v;
                if let Some(cd) = &mut self.countdown {
                    *cd = Countdown {
                        anchor: now_tsc,
                        start: current,
                        expired: 0,
                    };
                }
                return Ok(self.timer_effect());
            }
            reg::SELF_IPI => {
                // Bits 31:8 reserved; the vector is logged in this APIC's IRR as an edge-triggered
                // fixed interrupt (SDM Vol. 3A §11.12.11). Vectors 0–15 are a send error, as
                // through the ICR (§11.5.3).
                let Ok(vector) = u8::try_from(v) else {
                    return reserved;
                };
                if vector < 16 {
                    self.record_error(esr::SEND_ILLEGAL_VECTOR);
                } else {
                    self.accept(vector, false);
                }
            }
            _ => {
                let Some(lvt) = Lvt::from_msr(msr) else {
                    return Err(ApicError::NoSuchRegister { msr });
                };
                if v & !(lvt.writable() | lvt.read_only()) != 0 {
                    return reserved;
                }
                let mut new = v & lvt.writable();
                if !self.is_enabled() {
                    // Masks cannot be cleared while software-disabled (SDM Vol. 3A §11.4.7.2).
                    new |= LVT_MASKED;
                }
                if lvt != Lvt::Timer {
                    self.lvt[lvt as usize] = new;
                    return Ok(ApicEffect::None);
                }
                if (new >> 17) & 0b11 == 0b11 {
                    return reserved; // timer mode 11b is reserved
                }
                self.tick(now_tsc);
                let old_mode = self.timer_mode();
                self.lvt[Lvt::Timer as usize] = new;
                if self.timer_mode() != old_mode {
                    // "A write to the LVT Timer Register that changes the timer mode disarms the
                    // local APIC timer" (SDM Vol. 3A §11.5.4.1).
                    self.countdown = None;
                    self.initial_count = 0;
                    self.tsc_deadline = 0;
                }
                return Ok(self.timer_effect());
            }
        }
        Ok(ApicEffect::None)
    }

    /// Whether `msr` is a register (as opposed to a reserved address) — for the error kind only.
    fn is_register(msr: u32) -> bool {
        matches!(
            msr,
            reg::TPR
                | reg::EOI
                | reg::SVR
                | reg::ESR
                | reg::TIMER_INITIAL
                | reg::TIMER_DIVIDE
                | reg::SELF_IPI
        ) || Lvt::from_msr(msr).is_some()
    }

    fn write_icr(&mut self, value: u64) -> Result<ApicEffect, ApicError> {
        let reserved = Err(ApicError::ReservedBits {
            msr: reg::ICR,
            value,
        });
        if value & !ICR_WRITABLE != 0 {
            return reserved;
        }
        let vector = value as u8;
        let delivery_mode = (value >> 8) & 0b111;
        if matches!(delivery_mode, 0b011 | 0b111) {
            return reserved; // reserved delivery modes
        }
        self.icr = value;
        let mode = match delivery_mode {
            0b000 => IpiMode::Fixed(vector),
            0b001 => {
                // Lowest priority is not processed in x2APIC mode: ESR "redirectable IPI", and
                // that alone even with an illegal vector (SDM Vol. 3A §11.5.3).
                self.record_error(esr::REDIRECTABLE_IPI);
                return Ok(ApicEffect::None);
            }
            0b010 => IpiMode::Smi,
            0b100 => IpiMode::Nmi,
            0b101 => IpiMode::Init,
            _ => IpiMode::Startup(vector),
        };
        if let IpiMode::Fixed(v) = mode {
            if v < 16 {
                self.record_error(esr::SEND_ILLEGAL_VECTOR);
                return Ok(ApicEffect::None);
            }
        }
        let shorthand = Shorthand::from_bits((value >> 18) as u8);
        let dest = match shorthand {
            Shorthand::None => (value >> 32) as u32,
            Shorthand::SelfOnly => self.id,
            Shorthand::AllIncludingSelf | Shorthand::AllExcludingSelf => BROADCAST,
        };
        Ok(ApicEffect::Ipi(Ipi {
            dest,
            dest_mode: if value & (1 << 11) != 0 {
                DestMode::Logical
            } else {
                DestMode::Physical
            },
            shorthand,
            mode,
            level: value & (1 << 14) != 0,
            trigger: if value & (1 << 15) != 0 {
                Trigger::Level
            } else {
                Trigger::Edge
            },
        }))
    }

    /// EOI: retires the highest in-service vector (SDM Vol. 3A §11.8.5).
    fn eoi(&mut self) -> ApicEffect {
        let Some(vector) = self.isr.highest() else {
            return ApicEffect::None;
        };
        self.isr.clear(vector);
        if self.tmr.test(vector) {
            // Level-triggered: the EOI is broadcast to the I/O APICs (no directed EOI here).
            ApicEffect::Eoi { vector }
        } else {
            ApicEffect::None
        }
    }

    /// Logs errors in the ESR and, unless the LVT error entry is masked, raises its interrupt
    /// (SDM Vol. 3A §11.5.3).
    fn record_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[Lvt::Error as usize];
        if lvt & LVT_MASKED == 0 && self.is_enabled() {
            let vector = lvt as u8;
            if vector < 16 {
                // No recursion: the error interrupt itself is illegal.
                self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
            } else {
                self.irr.set(vector);
                self.tmr.clear(vector);
            }
        }
    }

    /// A fixed interrupt arrives (from an IPI, the I/O APIC, an MSI or a local source): `vector`
    /// is set in IRR and its trigger mode in TMR (SDM Vol. 3A §11.8.4). Vectors 0–15 are illegal:
    /// ESR "received illegal vector" and dropped (§11.5.3). Dropped too while the APIC is
    /// software-disabled. Returns whether it was accepted (an already-pending vector coalesces).
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if vector < 16 {
            self.record_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        if !self.is_enabled() {
            return false;
        }
        self.irr.set(vector);
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
        true
    }

    /// The interrupt the APIC would present to the processor now: the highest IRR vector whose
    /// priority class is above the PPR's (SDM Vol. 3A §11.8.3.1, §11.8.4). Whether the vCPU can
    /// take it (RFLAGS.IF, interrupt shadow) is the caller's question.
    pub fn pending(&self) -> Option<u8> {
        let v = self.irr.highest()?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The processor takes the pending interrupt: it moves from IRR to ISR and is returned for
    /// injection. `None` when nothing is deliverable.
    pub fn ack(&mut self) -> Option<u8> {
        let v = self.pending()?;
        self.irr.clear(v);
        self.isr.set(v);
        Some(v)
    }

    /// The divisor the divide configuration selects (SDM Vol. 3A §11.5.4, Figure 11-10): bits
    /// 3,1:0 = 000 → 2, 001 → 4, … 110 → 128, 111 → 1.
    pub fn timer_divisor(&self) -> u32 {
        let code = (self.divide & 0b11) | ((self.divide >> 1) & 0b100);
        if code == 0b111 {
            1
        } else {
            2 << code
        }
    }

    /// TSC ticks per `counts` timer counts, times `timer_hz`: the common numerator.
    fn tsc_per_count_scaled(&self) -> u128 {
        u128::from(self.tsc_hz) * u128::from(self.timer_divisor())
    }

    /// Timer counts elapsed between `anchor` and `now`.
    fn counts_between(&self, anchor: u64, now: u64) -> u128 {
        u128::from(now.saturating_sub(anchor)) * u128::from(self.timer_hz)
            / self.tsc_per_count_scaled()
    }

    /// The first TSC at which `counts` counts have elapsed since `anchor` (saturating at
    /// `u64::MAX` for absurd configurations).
    fn tsc_after(&self, anchor: u64, counts: u128) -> u64 {
        let Some(scaled) = counts.checked_mul(self.tsc_per_count_scaled()) else {
            return u64::MAX;
        };
        let hz = u128::from(self.timer_hz);
        let ticks = scaled / hz + u128::from(scaled % hz != 0);
        u64::try_from(ticks).map_or(u64::MAX, |t| anchor.saturating_add(t))
    }

    /// The current-count register at `now_tsc` (SDM Vol. 3A §11.5.4): counts down from the
    /// initial count, reloads in periodic mode, stays 0 after a one-shot expiry, always 0 in
    /// TSC-deadline mode.
    pub fn current_count(&self, now_tsc: u64) -> u32 {
        let Some(cd) = self.countdown else {
            return 0;
        };
        let elapsed = self.counts_between(cd.anchor, now_tsc);
        let start = u128::from(cd.start);
        if elapsed < start {
            return (start - elapsed) as u32;
        }
        match self.timer_mode() {
            TimerMode::Periodic => {
                let initial = u128::from(self.initial_count);
                (elapsed - start)
                    .checked_rem(initial)
                    .map_or(0, |into_period| (initial - into_period) as u32)
            }
            _ => 0,
        }
    }

    /// The TSC value at which the timer fires next, if it is armed.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.timer_mode() == TimerMode::TscDeadline {
            return (self.tsc_deadline != 0).then_some(self.tsc_deadline);
        }
        let cd = self.countdown?;
        let counts = match self.timer_mode() {
            TimerMode::Periodic => cd
                .expired
                .checked_mul(self.initial_count.into())
                .and_then(|c| c.checked_add(cd.start.into())),
            _ => Some(cd.start.into()),
        };
        Some(counts.map_or(u64::MAX, |c| self.tsc_after(cd.anchor, c)))
    }

    /// The timer at `now_tsc`: if it is due, it expires — a one-shot stops, a periodic timer
    /// rearms for its next period counted from the first start (expiries the caller was too late
    /// for collapse into this one), a TSC deadline clears IA32_TSC_DEADLINE — and the LVT timer
    /// vector is accepted unless masked. Returns whether an interrupt was accepted.
    pub fn tick(&mut self, now_tsc: u64) -> bool {
        let Some(due) = self.next_deadline() else {
            return false;
        };
        if now_tsc < due {
            return false;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => self.tsc_deadline = 0,
            TimerMode::OneShot => self.countdown = None,
            TimerMode::Periodic => {
                let initial = u128::from(self.initial_count.max(1));
                let elapsed = self
                    .countdown
                    .map_or(0, |cd| self.counts_between(cd.anchor, now_tsc));
                if let Some(cd) = &mut self.countdown {
                    // Expiries up to now: at start, start + initial, start + 2·initial, …
                    let upto_now =
                        (elapsed.saturating_sub(cd.start.into()) / initial).saturating_add(1);
                    cd.expired = upto_now.max(cd.expired.saturating_add(1));
                }
            }
        }
        let lvt = self.lvt[Lvt::Timer as usize];
        lvt & LVT_MASKED == 0 && self.accept(lvt as u8, false)
    }

    fn timer_effect(&self) -> ApicEffect {
        match self.next_deadline() {
            Some(at_tsc) => ApicEffect::TimerArmed { at_tsc },
            None => ApicEffect::TimerCancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 GHz TSC, 100 MHz APIC timer clock: 10 TSC ticks per count at divisor 1.
    const TSC_HZ: u64 = 1_000_000_000;
    const TIMER_HZ: u64 = 100_000_000;
    /// Divide configuration values for 1, 2, 4, … 128.
    const DIVIDE_BY: [(u32, u64); 8] = [
        (0b1011, 1),
        (0b0000, 2),
        (0b0001, 4),
        (0b0010, 8),
        (0b0011, 16),
        (0b1000, 32),
        (0b1001, 64),
        (0b1010, 128),
    ];

    fn enabled(id: u32) -> X2Apic {
        let mut a = X2Apic::new(id, TSC_HZ, TIMER_HZ);
        a.write(reg::SVR, 0x1ff, 0).unwrap();
        a
    }

    fn ipi(a: &mut X2Apic, icr: u64) -> Ipi {
        match a.write(reg::ICR, icr, 0) {
            Ok(ApicEffect::Ipi(i)) => i,
            other => panic!("ICR {icr:#x}: {other:?}"),
        }
    }

    #[test]
    fn reset_state() {
        let a = X2Apic::new(3, TSC_HZ, TIMER_HZ);
        assert_eq!(a.read(reg::ID, 0), Ok(3));
        assert_eq!(a.read(reg::VERSION, 0), Ok(0x60014));
        assert_eq!(a.read(reg::SVR, 0), Ok(0xff));
        assert!(!a.is_enabled());
        for msr in [
            reg::LVT_CMCI,
            reg::LVT_TIMER,
            reg::LVT_THERMAL,
            reg::LVT_PMC,
            reg::LVT_LINT0,
            reg::LVT_LINT1,
            reg::LVT_ERROR,
        ] {
            assert_eq!(a.read(msr, 0), Ok(0x10000), "{msr:#x}");
        }
        for msr in [
            reg::TPR,
            reg::PPR,
            reg::ESR,
            reg::ICR,
            reg::TIMER_INITIAL,
            reg::TIMER_CURRENT,
            reg::TIMER_DIVIDE,
            reg::TSC_DEADLINE,
        ] {
            assert_eq!(a.read(msr, 0), Ok(0), "{msr:#x}");
        }
        for msr in 0x810..=0x827 {
            assert_eq!(a.read(msr, 0), Ok(0));
        }
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.pending(), None);
    }

    #[test]
    fn ldr_follows_the_cluster_model() {
        for (id, ldr) in [
            (0, 0x0000_0001),
            (1, 0x0000_0002),
            (15, 0x0000_8000),
            (16, 0x0001_0001),
            (0x23, 0x0002_0008),
            (0xf_ffff, 0xffff_8000),
        ] {
            assert_eq!(
                X2Apic::new(id, 1, 1).read(reg::LDR, 0),
                Ok(ldr),
                "id {id:#x}"
            );
            assert_eq!(u64::from(logical_id(id)), ldr);
        }
    }

    #[test]
    fn read_only_registers_refuse_writes() {
        let mut a = enabled(5);
        let before = a.clone();
        for msr in [
            reg::ID,
            reg::VERSION,
            reg::PPR,
            reg::LDR,
            reg::TIMER_CURRENT,
        ]
        .into_iter()
        .chain(0x810..=0x827)
        {
            for value in [0, 1, 5, u64::MAX] {
                assert_eq!(
                    a.write(msr, value, 0),
                    Err(ApicError::ReadOnly { msr }),
                    "{msr:#x}"
                );
            }
        }
        assert_eq!(a, before, "refused writes change nothing");
        assert_eq!(a.read(reg::ID, 0), Ok(5), "the x2APIC ID stays");
    }

    #[test]
    fn write_only_registers_refuse_reads() {
        let a = enabled(0);
        for msr in [reg::EOI, reg::SELF_IPI] {
            assert_eq!(a.read(msr, 0), Err(ApicError::WriteOnly { msr }));
        }
    }

    #[test]
    fn reserved_addresses_fault_both_ways() {
        let mut a = enabled(0);
        let before = a.clone();
        // Table 11-6 gaps: 0x800-0x801, 0x804-0x807, APR 0x809, RRD 0x80C, DFR 0x80E,
        // 0x829-0x82E, ICR high 0x831, 0x83A-0x83D, 0x840-0x8FF; and MSRs beyond the range.
        let gaps = [
            0x800, 0x801, 0x804, 0x807, 0x809, 0x80c, 0x80e, 0x829, 0x82e, 0x831, 0x83a, 0x83d,
            0x840, 0x8ff, 0x7ff, 0x900, 0x1b, 0x6e1,
        ];
        for msr in gaps {
            assert_eq!(a.read(msr, 0), Err(ApicError::NoSuchRegister { msr }));
            for value in [0, 1 << 40] {
                assert_eq!(
                    a.write(msr, value, 0),
                    Err(ApicError::NoSuchRegister { msr }),
                    "{msr:#x}"
                );
            }
        }
        assert_eq!(a, before);
        assert!(is_apic_msr(0x800) && is_apic_msr(0x8ff) && is_apic_msr(0x6e0));
        assert!(!is_apic_msr(0x7ff) && !is_apic_msr(0x900) && !is_apic_msr(0x1b));
    }

    #[test]
    fn reserved_bits_fault_and_change_nothing() {
        let mut a = enabled(0);
        let before = a.clone();
        let cases: &[(u32, u64)] = &[
            (reg::TPR, 0x100),
            (reg::TPR, 1 << 32),
            (reg::EOI, 1),
            (reg::EOI, 1 << 32),
            (reg::SVR, 1 << 12), // EOI-broadcast suppression needs directed EOI
            (reg::SVR, 1 << 10),
            (reg::SVR, 0x1ff | (1 << 32)),
            (reg::ESR, 1),
            (reg::ESR, 0x80),
            (reg::LVT_TIMER, 0x6_0020), // mode 11b
            (reg::LVT_TIMER, 1 << 8),   // no delivery mode on the timer
            (reg::LVT_TIMER, 1 << 19),
            (reg::LVT_TIMER, 1 << 13),
            (reg::LVT_ERROR, 0x100),
            (reg::LVT_ERROR, 1 << 15),
            (reg::LVT_THERMAL, 1 << 13), // no polarity on thermal
            (reg::LVT_PMC, 1 << 15),
            (reg::LVT_CMCI, 1 << 17),
            (reg::LVT_LINT0, 1 << 17),
            (reg::LVT_LINT1, 1 << 11),
            (reg::LVT_LINT1, 1 << 32),
            (reg::TIMER_INITIAL, 1 << 32),
            (reg::TIMER_DIVIDE, 0b0100),
            (reg::TIMER_DIVIDE, 0x10),
            (reg::SELF_IPI, 0x100),
            (reg::SELF_IPI, 1 << 32),
        ];
        for &(msr, value) in cases {
            assert_eq!(
                a.write(msr, value, 0),
                Err(ApicError::ReservedBits { msr, value }),
                "{msr:#x} <- {value:#x}"
            );
        }
        assert_eq!(a, before, "refused writes change nothing");
    }

    #[test]
    fn icr_reserved_bits_and_modes_fault() {
        let mut a = enabled(0);
        let before = a.clone();
        for value in [
            1u64 << 12, // delivery status is reserved in x2APIC mode
            1 << 13,
            1 << 16,
            1 << 17,
            1 << 20,
            1 << 31,
            0x330, // delivery mode 011b
            0x730, // delivery mode 111b
        ] {
            assert_eq!(
                a.write(reg::ICR, value | 0x30, 0),
                Err(ApicError::ReservedBits {
                    msr: reg::ICR,
                    value: value | 0x30
                }),
                "{value:#x}"
            );
        }
        assert_eq!(a, before);
    }

    #[test]
    fn writable_registers_round_trip() {
        let mut a = enabled(0);
        for (msr, value, back) in [
            (reg::TPR, 0x5a, 0x5a),
            (reg::SVR, 0x3ff, 0x3ff),
            (reg::LVT_TIMER, 0x4_10ef, 0x4_00ef), // delivery status ignored
            (reg::LVT_LINT0, 0x1_f7ff, 0x1_a7ff), // delivery status and remote IRR ignored
            (reg::LVT_LINT1, 0x400, 0x400),
            (reg::LVT_ERROR, 0x1_00fe, 0x1_00fe),
            (reg::LVT_THERMAL, 0x7ff, 0x7ff),
            (reg::LVT_PMC, 0x400, 0x400),
            (reg::LVT_CMCI, 0x1_00f0, 0x1_00f0),
            (reg::TIMER_DIVIDE, 0b1011, 0b1011),
        ] {
            a.write(msr, value, 0).unwrap();
            assert_eq!(a.read(msr, 0), Ok(back), "{msr:#x}");
        }
        a.write(reg::ICR, 0x0000_0007_0004_40fe, 0).unwrap();
        assert_eq!(a.read(reg::ICR, 0), Ok(0x0000_0007_0004_40fe));
    }

    #[test]
    fn software_disable_masks_the_lvt_and_keeps_it_masked() {
        let mut a = enabled(0);
        a.write(reg::LVT_TIMER, 0x40, 0).unwrap();
        a.write(reg::LVT_LINT0, 0x700, 0).unwrap();
        a.write(reg::SVR, 0xff, 0).unwrap();
        assert_eq!(a.read(reg::LVT_TIMER, 0), Ok(0x1_0040));
        assert_eq!(a.read(reg::LVT_LINT0, 0), Ok(0x1_0700));
        a.write(reg::LVT_TIMER, 0x41, 0).unwrap();
        assert_eq!(a.read(reg::LVT_TIMER, 0), Ok(0x1_0041), "mask stays set");
        // Fixed interrupts are dropped while disabled.
        assert!(!a.accept(0x50, false));
        assert_eq!(a.pending(), None);
        a.write(reg::SVR, 0x1ff, 0).unwrap();
        a.write(reg::LVT_TIMER, 0x41, 0).unwrap();
        assert_eq!(a.read(reg::LVT_TIMER, 0), Ok(0x41));
        assert!(a.accept(0x50, false));
        assert_eq!(a.pending(), Some(0x50));
    }

    #[test]
    fn irr_isr_tmr_registers_show_vectors() {
        let mut a = enabled(0);
        a.accept(0x20, false);
        a.accept(0x3f, true);
        a.accept(0xff, true);
        assert_eq!(a.read(reg::IRR0 + 1, 0), Ok(0x8000_0001));
        assert_eq!(a.read(reg::IRR0 + 7, 0), Ok(0x8000_0000));
        assert_eq!(a.read(reg::TMR0 + 1, 0), Ok(0x8000_0000));
        assert_eq!(a.read(reg::TMR0 + 7, 0), Ok(0x8000_0000));
        assert_eq!(a.ack(), Some(0xff));
        assert_eq!(a.read(reg::ISR0 + 7, 0), Ok(0x8000_0000));
        assert_eq!(a.read(reg::IRR0 + 7, 0), Ok(0));
    }

    #[test]
    fn illegal_vectors_are_dropped_and_logged() {
        let mut a = enabled(0);
        for v in 0..16 {
            assert!(!a.accept(v, false));
        }
        assert_eq!(a.pending(), None);
        assert_eq!(a.read(reg::ESR, 0), Ok(0), "errors show after an ESR write");
        a.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(
            a.read(reg::ESR, 0),
            Ok(u64::from(esr::RECEIVE_ILLEGAL_VECTOR))
        );
        a.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(a.read(reg::ESR, 0), Ok(0), "a second write clears");
        // With the error LVT unmasked, the error raises its interrupt.
        a.write(reg::LVT_ERROR, 0xfe, 0).unwrap();
        a.accept(3, false);
        assert_eq!(a.pending(), Some(0xfe));
        // An illegal error vector cannot recurse.
        let mut b = enabled(0);
        b.write(reg::LVT_ERROR, 0x05, 0).unwrap();
        b.accept(3, false);
        assert_eq!(b.pending(), None);
    }

    #[test]
    fn tpr_masks_by_priority_class() {
        let mut a = enabled(0);
        a.write(reg::TPR, 0x50, 0).unwrap();
        a.accept(0x55, false);
        assert_eq!(a.pending(), None, "same class as the TPR is held");
        assert_eq!(a.ack(), None);
        a.accept(0x4f, false);
        assert_eq!(a.pending(), None);
        a.accept(0x60, false);
        assert_eq!(a.pending(), Some(0x60));
        a.write(reg::TPR, 0x60, 0).unwrap();
        assert_eq!(a.pending(), None);
        a.write(reg::TPR, 0, 0).unwrap();
        assert_eq!(a.ack(), Some(0x60));
        a.set_tpr(0xf0);
        assert_eq!((a.tpr(), a.pending()), (0xf0, None));
    }

    #[test]
    fn ppr_is_the_higher_of_tpr_and_isr() {
        let mut a = enabled(0);
        a.write(reg::TPR, 0x35, 0).unwrap();
        assert_eq!(a.read(reg::PPR, 0), Ok(0x35), "TPR wins with its sub-class");
        a.accept(0x82, false);
        assert_eq!(a.ack(), Some(0x82));
        assert_eq!(a.read(reg::PPR, 0), Ok(0x80), "ISR class, sub-class 0");
        a.write(reg::TPR, 0x8f, 0).unwrap();
        assert_eq!(a.read(reg::PPR, 0), Ok(0x8f), "equal classes: the TPR");
        a.write(reg::TPR, 0x95, 0).unwrap();
        assert_eq!(a.read(reg::PPR, 0), Ok(0x95));
        a.write(reg::TPR, 0, 0).unwrap();
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.read(reg::PPR, 0), Ok(0));
    }

    #[test]
    fn nesting_and_eoi_order() {
        let mut a = enabled(0);
        a.accept(0x41, false);
        assert_eq!(a.ack(), Some(0x41));
        // A vector in the same class as the one in service waits; a higher class nests.
        a.accept(0x45, false);
        assert_eq!(a.pending(), None);
        a.accept(0x61, false);
        assert_eq!(a.ack(), Some(0x61));
        a.accept(0x90, false);
        assert_eq!(a.ack(), Some(0x90));
        assert_eq!(a.read(reg::ISR0 + 2, 0), Ok(1 << 1));
        assert_eq!(a.read(reg::ISR0 + 3, 0), Ok(1 << 1));
        assert_eq!(a.read(reg::ISR0 + 4, 0), Ok(1 << 16));
        // EOIs retire the highest in-service vector first.
        assert_eq!(a.write(reg::EOI, 0, 0), Ok(ApicEffect::None));
        assert_eq!(a.read(reg::ISR0 + 4, 0), Ok(0));
        assert_eq!(a.pending(), None, "0x61 still in service");
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.read(reg::ISR0 + 3, 0), Ok(0));
        assert_eq!(a.pending(), None, "0x41 still in service blocks 0x45");
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.ack(), Some(0x45));
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.write(reg::EOI, 0, 0), Ok(ApicEffect::None), "empty ISR");
        assert_eq!(a.ppr(), 0);
    }

    #[test]
    fn pending_prefers_the_highest_vector() {
        let mut a = enabled(0);
        for v in [0x31, 0xe0, 0x70, 0xe1] {
            a.accept(v, false);
        }
        assert_eq!(a.ack(), Some(0xe1));
        // 0xe0 is in the same class as 0xe1, in service: blocked until the EOI.
        assert_eq!(a.pending(), None);
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.ack(), Some(0xe0));
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.ack(), Some(0x70));
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.ack(), Some(0x31));
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.ack(), None);
    }

    #[test]
    fn level_triggered_eoi_is_reported() {
        let mut a = enabled(0);
        a.accept(0x51, true);
        a.accept(0x62, false);
        assert_eq!(a.ack(), Some(0x62));
        assert_eq!(a.write(reg::EOI, 0, 0), Ok(ApicEffect::None), "edge");
        assert_eq!(a.ack(), Some(0x51));
        assert_eq!(
            a.write(reg::EOI, 0, 0),
            Ok(ApicEffect::Eoi { vector: 0x51 })
        );
        // Re-accepted as edge, the TMR bit follows.
        a.accept(0x51, false);
        a.ack();
        assert_eq!(a.write(reg::EOI, 0, 0), Ok(ApicEffect::None));
    }

    #[test]
    fn fixed_ipi() {
        let mut a = enabled(2);
        let i = ipi(&mut a, 0x0000_0005_0000_00fd);
        assert_eq!(
            i,
            Ipi {
                dest: 5,
                dest_mode: DestMode::Physical,
                shorthand: Shorthand::None,
                mode: IpiMode::Fixed(0xfd),
                level: false,
                trigger: Trigger::Edge,
            }
        );
        assert!(i.targets(2, 5) && !i.targets(2, 2) && !i.targets(2, 6));
        // Logical: cluster 1, members 0 and 3 = APIC IDs 16 and 19.
        let i = ipi(&mut a, 0x0001_0009_0000_08fd);
        assert_eq!(i.dest_mode, DestMode::Logical);
        assert!(i.targets(2, 16) && i.targets(2, 19));
        assert!(!i.targets(2, 17) && !i.targets(2, 0) && !i.targets(2, 3));
    }

    #[test]
    fn nmi_init_and_sipi() {
        let mut a = enabled(0);
        let nmi = ipi(&mut a, 0x0000_0001_0000_0400);
        assert_eq!((nmi.mode, nmi.dest), (IpiMode::Nmi, 1));
        // INIT assert, level-triggered (as Linux sends it), then de-assert.
        let init = ipi(&mut a, 0x0000_0001_0000_c500);
        assert_eq!((init.mode, init.level), (IpiMode::Init, true));
        assert!(!init.is_init_deassert());
        let deassert = ipi(&mut a, 0x0000_0001_0000_8500);
        assert!(deassert.is_init_deassert());
        let sipi = ipi(&mut a, 0x0000_0001_0000_0608);
        assert_eq!((sipi.mode, sipi.dest), (IpiMode::Startup(0x08), 1));
        // SIPI and NMI carry vectors below 16 legally.
        let sipi0 = ipi(&mut a, 0x0000_0001_0000_0600);
        assert_eq!(sipi0.mode, IpiMode::Startup(0));
        let smi = ipi(&mut a, 0x0000_0001_0000_0200);
        assert_eq!(smi.mode, IpiMode::Smi);
        a.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(a.read(reg::ESR, 0), Ok(0));
    }

    #[test]
    fn shorthands_and_broadcast() {
        let mut a = enabled(7);
        let s = ipi(&mut a, 0x0000_0003_0004_0040);
        assert_eq!((s.shorthand, s.dest), (Shorthand::SelfOnly, 7));
        assert!(s.targets(7, 7) && !s.targets(7, 3));
        let all = ipi(&mut a, 0x0008_0040);
        assert_eq!(
            (all.shorthand, all.dest),
            (Shorthand::AllIncludingSelf, BROADCAST)
        );
        assert!(all.targets(7, 7) && all.targets(7, 0));
        let others = ipi(&mut a, 0x000c_0500);
        assert_eq!(
            (others.shorthand, others.mode),
            (Shorthand::AllExcludingSelf, IpiMode::Init)
        );
        assert!(!others.targets(7, 7) && others.targets(7, 1));
        let bcast = ipi(&mut a, 0xffff_ffff_0000_0040);
        assert_eq!(bcast.dest, BROADCAST);
        assert!(bcast.targets(7, 0) && bcast.targets(7, 7) && bcast.targets(7, 123_456));
        let lbcast = ipi(&mut a, 0xffff_ffff_0000_0840);
        assert!(lbcast.targets(7, 99));
    }

    #[test]
    fn illegal_and_lowest_priority_ipis_are_not_sent() {
        let mut a = enabled(0);
        assert_eq!(
            a.write(reg::ICR, 0x0000_0001_0000_000f, 0),
            Ok(ApicEffect::None)
        );
        a.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(a.read(reg::ESR, 0), Ok(u64::from(esr::SEND_ILLEGAL_VECTOR)));
        assert_eq!(
            a.write(reg::ICR, 0x0000_0001_0000_0140, 0),
            Ok(ApicEffect::None)
        );
        assert_eq!(
            a.write(reg::ICR, 0x0000_0001_0000_0105, 0),
            Ok(ApicEffect::None)
        );
        a.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(a.read(reg::ESR, 0), Ok(u64::from(esr::REDIRECTABLE_IPI)));
    }

    #[test]
    fn self_ipi_lands_in_irr() {
        let mut a = enabled(0);
        assert_eq!(a.write(reg::SELF_IPI, 0x93, 0), Ok(ApicEffect::None));
        assert_eq!(a.pending(), Some(0x93));
        assert_eq!(a.read(reg::TMR0 + 4, 0), Ok(0), "edge");
        a.write(reg::SELF_IPI, 0x03, 0).unwrap();
        a.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(a.read(reg::ESR, 0), Ok(u64::from(esr::SEND_ILLEGAL_VECTOR)));
        assert_eq!(a.read(reg::IRR0, 0), Ok(0));
    }

    #[test]
    fn divisor_encodings() {
        let mut a = enabled(0);
        for (code, div) in DIVIDE_BY {
            a.write(reg::TIMER_DIVIDE, code.into(), 0).unwrap();
            assert_eq!(u64::from(a.timer_divisor()), div, "{code:#b}");
        }
    }

    #[test]
    fn one_shot_fires_once_at_the_computed_tsc() {
        for (code, div) in DIVIDE_BY {
            let mut a = enabled(0);
            a.write(reg::TIMER_DIVIDE, code.into(), 0).unwrap();
            a.write(reg::LVT_TIMER, 0xec, 0).unwrap();
            let start = 1_000;
            // 10 TSC ticks per count at divisor 1.
            let due = start + 1_000 * 10 * div;
            assert_eq!(
                a.write(reg::TIMER_INITIAL, 1_000, start),
                Ok(ApicEffect::TimerArmed { at_tsc: due })
            );
            assert_eq!(a.next_deadline(), Some(due));
            assert!(!a.tick(due - 1));
            assert_eq!(a.pending(), None);
            assert!(a.tick(due), "divisor {div}");
            assert_eq!(a.ack(), Some(0xec));
            assert_eq!(a.next_deadline(), None);
            assert!(!a.tick(due * 10), "once only");
            assert_eq!(a.read(reg::TIMER_CURRENT, due * 10), Ok(0));
            assert_eq!(a.read(reg::TIMER_INITIAL, due), Ok(1_000));
        }
    }

    #[test]
    fn current_count_decreases_with_time() {
        let mut a = enabled(0);
        a.write(reg::TIMER_DIVIDE, 0b0001, 0).unwrap(); // divide by 4: 40 TSC ticks per count
        a.write(reg::LVT_TIMER, 0x1_00ec, 0).unwrap();
        a.write(reg::TIMER_INITIAL, 500, 100).unwrap();
        assert_eq!(a.read(reg::TIMER_CURRENT, 100), Ok(500));
        assert_eq!(a.read(reg::TIMER_CURRENT, 139), Ok(500));
        assert_eq!(a.read(reg::TIMER_CURRENT, 140), Ok(499));
        assert_eq!(a.read(reg::TIMER_CURRENT, 100 + 40 * 250), Ok(250));
        assert_eq!(a.read(reg::TIMER_CURRENT, 100 + 40 * 499), Ok(1));
        assert_eq!(a.read(reg::TIMER_CURRENT, 100 + 40 * 500), Ok(0));
        assert_eq!(a.read(reg::TIMER_CURRENT, u64::MAX), Ok(0));
        // Time before the start (a confused caller) reads the full count, never panics.
        assert_eq!(a.read(reg::TIMER_CURRENT, 0), Ok(500));
    }

    #[test]
    fn periodic_rearms_without_drift() {
        // A period that is not a whole number of TSC ticks: a 1 GHz TSC and a 300 MHz timer
        // clock make 10/3 TSC ticks per count at divide-by-1.
        let mut a = X2Apic::new(0, 1_000_000_000, 300_000_000);
        a.write(reg::SVR, 0x1ff, 0).unwrap();
        a.write(reg::TIMER_DIVIDE, 0b1011, 0).unwrap();
        a.write(reg::LVT_TIMER, 0x2_00ec, 0).unwrap();
        // 1000 counts = 3333.33… TSC ticks.
        a.write(reg::TIMER_INITIAL, 1_000, 0).unwrap();
        for n in 1..=1_000u64 {
            let due = (n * 10_000).div_ceil(3);
            assert_eq!(a.next_deadline(), Some(due), "period {n}");
            assert!(!a.tick(due - 1));
            assert!(a.tick(due));
            assert_eq!(a.ack(), Some(0xec));
            a.write(reg::EOI, 0, due).unwrap();
        }
        // Late by two and a half periods: one interrupt, and the phase is kept.
        let due = (1_001u64 * 10_000).div_ceil(3);
        assert!(a.tick(due + 8_400));
        assert_eq!(a.next_deadline(), Some((1_004u64 * 10_000).div_ceil(3)));
        assert_eq!(a.ack(), Some(0xec));
        assert_eq!(a.pending(), None);
    }

    #[test]
    fn periodic_current_count_reloads() {
        let mut a = enabled(0);
        a.write(reg::TIMER_DIVIDE, 0b1011, 0).unwrap(); // 10 TSC ticks per count
        a.write(reg::LVT_TIMER, 0x2_00ec, 0).unwrap();
        a.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        assert_eq!(a.read(reg::TIMER_CURRENT, 990), Ok(1));
        assert_eq!(a.read(reg::TIMER_CURRENT, 1_000), Ok(100));
        assert_eq!(a.read(reg::TIMER_CURRENT, 1_010), Ok(99));
        assert_eq!(a.read(reg::TIMER_CURRENT, 5_500), Ok(50));
        // Ticking does not disturb the count.
        assert!(a.tick(5_500));
        assert_eq!(a.read(reg::TIMER_CURRENT, 5_500), Ok(50));
        assert_eq!(a.next_deadline(), Some(6_000));
    }

    #[test]
    fn initial_count_zero_stops_and_rewrite_restarts() {
        let mut a = enabled(0);
        a.write(reg::TIMER_DIVIDE, 0b1011, 0).unwrap();
        a.write(reg::LVT_TIMER, 0x2_00ec, 0).unwrap();
        a.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        assert_eq!(
            a.write(reg::TIMER_INITIAL, 0, 500),
            Ok(ApicEffect::TimerCancelled)
        );
        assert_eq!(a.next_deadline(), None);
        assert!(!a.tick(10_000));
        assert_eq!(a.read(reg::TIMER_CURRENT, 10_000), Ok(0));
        assert_eq!(
            a.write(reg::TIMER_INITIAL, 10, 10_000),
            Ok(ApicEffect::TimerArmed { at_tsc: 10_100 })
        );
    }

    #[test]
    fn divide_change_keeps_the_current_count() {
        let mut a = enabled(0);
        a.write(reg::TIMER_DIVIDE, 0b1011, 0).unwrap(); // 10 ticks per count
        a.write(reg::LVT_TIMER, 0xec, 0).unwrap();
        a.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        // At 500, 50 counts remain; at divide-by-2 (20 ticks per count) they take 1000 ticks.
        assert_eq!(
            a.write(reg::TIMER_DIVIDE, 0b0000, 500),
            Ok(ApicEffect::TimerArmed { at_tsc: 1_500 })
        );
        assert_eq!(a.read(reg::TIMER_CURRENT, 500), Ok(50));
        assert_eq!(a.read(reg::TIMER_CURRENT, 520), Ok(49));
        assert!(a.tick(1_500));
    }

    #[test]
    fn masked_timer_expires_without_an_interrupt() {
        for mode in [0u64, 1] {
            let mut a = enabled(0);
            a.write(reg::TIMER_DIVIDE, 0b1011, 0).unwrap();
            a.write(reg::LVT_TIMER, 0x1_00ec | (mode << 17), 0).unwrap();
            a.write(reg::TIMER_INITIAL, 10, 0).unwrap();
            assert!(!a.tick(100));
            assert_eq!(a.pending(), None);
            assert_eq!(a.read(reg::IRR0 + 7, 100), Ok(0));
        }
        let mut a = enabled(0);
        a.write(reg::LVT_TIMER, 0x5_00ec, 0).unwrap();
        a.write(reg::TSC_DEADLINE, 50, 0).unwrap();
        assert!(!a.tick(50));
        assert_eq!(a.pending(), None);
        assert_eq!(a.read(reg::TSC_DEADLINE, 50), Ok(0), "expired anyway");
    }

    #[test]
    fn tsc_deadline_fires_at_the_msr_value_and_clears_it() {
        let mut a = enabled(0);
        // Ignored outside TSC-deadline mode.
        assert_eq!(a.write(reg::TSC_DEADLINE, 5_000, 0), Ok(ApicEffect::None));
        assert_eq!(a.read(reg::TSC_DEADLINE, 0), Ok(0));
        assert_eq!(a.next_deadline(), None);
        a.write(reg::LVT_TIMER, 0x4_00ef, 0).unwrap();
        assert_eq!(a.timer_mode(), TimerMode::TscDeadline);
        assert_eq!(
            a.write(reg::TSC_DEADLINE, 5_000, 10),
            Ok(ApicEffect::TimerArmed { at_tsc: 5_000 })
        );
        assert_eq!(a.read(reg::TSC_DEADLINE, 10), Ok(5_000));
        // Initial count is ignored and the current count reads 0 in this mode.
        assert_eq!(a.write(reg::TIMER_INITIAL, 77, 10), Ok(ApicEffect::None));
        assert_eq!(a.read(reg::TIMER_INITIAL, 10), Ok(0));
        assert_eq!(a.read(reg::TIMER_CURRENT, 10), Ok(0));
        assert!(!a.tick(4_999));
        assert!(a.tick(5_000));
        assert_eq!(a.read(reg::TSC_DEADLINE, 5_000), Ok(0));
        assert_eq!(a.next_deadline(), None);
        assert!(!a.tick(6_000));
        assert_eq!(a.ack(), Some(0xef));
        // Writing 0 disarms; a deadline in the past fires at the next tick.
        a.write(reg::TSC_DEADLINE, 9_000, 6_000).unwrap();
        assert_eq!(
            a.write(reg::TSC_DEADLINE, 0, 6_000),
            Ok(ApicEffect::TimerCancelled)
        );
        assert!(!a.tick(10_000));
        a.write(reg::TSC_DEADLINE, 1, 10_000).unwrap();
        assert!(a.tick(10_000));
    }

    #[test]
    fn mode_switch_disarms() {
        // One-shot → TSC-deadline.
        let mut a = enabled(0);
        a.write(reg::LVT_TIMER, 0xec, 0).unwrap();
        a.write(reg::TIMER_INITIAL, 1_000, 0).unwrap();
        assert_eq!(
            a.write(reg::LVT_TIMER, 0x4_00ec, 10),
            Ok(ApicEffect::TimerCancelled)
        );
        assert_eq!(a.read(reg::TIMER_INITIAL, 10), Ok(0));
        assert!(!a.tick(u64::MAX));
        // TSC-deadline → periodic.
        a.write(reg::TSC_DEADLINE, 100, 10).unwrap();
        assert_eq!(
            a.write(reg::LVT_TIMER, 0x2_00ec, 20),
            Ok(ApicEffect::TimerCancelled)
        );
        assert_eq!(a.read(reg::TSC_DEADLINE, 20), Ok(0));
        assert!(!a.tick(200));
        // Periodic → one-shot.
        a.write(reg::TIMER_INITIAL, 10, 200).unwrap();
        assert_eq!(
            a.write(reg::LVT_TIMER, 0xec, 210),
            Ok(ApicEffect::TimerCancelled)
        );
        assert_eq!(a.read(reg::TIMER_CURRENT, 210), Ok(0));
        // Same mode, other vector or mask: the timer keeps running.
        a.write(reg::TIMER_INITIAL, 10, 300).unwrap();
        assert_eq!(
            a.write(reg::LVT_TIMER, 0x1_00ed, 310),
            Ok(ApicEffect::TimerArmed {
                at_tsc: 300 + 10 * 20
            })
        );
    }

    #[test]
    fn a_timer_write_delivers_an_expiry_that_was_due() {
        let mut a = enabled(0);
        a.write(reg::LVT_TIMER, 0xec, 0).unwrap();
        a.write(reg::TIMER_DIVIDE, 0b1011, 0).unwrap();
        a.write(reg::TIMER_INITIAL, 10, 0).unwrap();
        // The host timer was late: the guest rewrites the count after the expiry.
        a.write(reg::TIMER_INITIAL, 10, 500).unwrap();
        assert_eq!(a.pending(), Some(0xec));
        assert_eq!(a.next_deadline(), Some(600));
    }

    #[test]
    fn reset_keeps_the_id() {
        let mut a = enabled(9);
        a.accept(0x40, false);
        a.write(reg::TPR, 0x20, 0).unwrap();
        a.reset();
        assert_eq!(a, X2Apic::new(9, TSC_HZ, TIMER_HZ));
    }

    #[test]
    fn extreme_clocks_do_not_overflow() {
        for (tsc, timer) in [(1, u64::MAX), (u64::MAX, 1), (0, 0), (u64::MAX, u64::MAX)] {
            let mut a = X2Apic::new(0, tsc, timer);
            a.write(reg::SVR, 0x100, 0).unwrap();
            for code in [0b1011u64, 0b1010] {
                a.write(reg::TIMER_DIVIDE, code, 0).unwrap();
                for mode in [0u64, 1] {
                    a.write(reg::LVT_TIMER, 0x20 | (mode << 17), 0).unwrap();
                    a.write(reg::TIMER_INITIAL, u64::from(u32::MAX), 5).unwrap();
                    let _ = a.next_deadline();
                    for now in [0, 6, u64::MAX / 2, u64::MAX] {
                        let _ = a.read(reg::TIMER_CURRENT, now);
                        a.tick(now);
                        if let Some(next) = a.next_deadline() {
                            assert!(next > now || next == u64::MAX);
                        }
                    }
                }
            }
        }
    }

    /// Deterministic xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            // The high half: the low bits of xorshift64* are its weakest.
            (self.next() >> 32) % n
        }
    }

    #[test]
    fn random_accesses_never_panic_and_keep_the_invariants() {
        let mut rng = Rng(0x5eed_a7011);
        let (mut writes_taken, mut fired, mut acked) = (0u32, 0u32, 0u32);
        for round in 0..40 {
            let clocks = [
                (TSC_HZ, TIMER_HZ),
                (3_000_000_000, 25_000_000),
                (1, u64::MAX),
                (u64::MAX, 1),
                (rng.next(), rng.next()),
            ];
            let (tsc, timer) = clocks[round % clocks.len()];
            let mut a = X2Apic::new(rng.next() as u32, tsc, timer);
            if round % 2 == 0 {
                a.write(reg::SVR, 0x1ff, 0).unwrap();
            }
            let mut now = 0u64;
            for _ in 0..5_000 {
                now = match rng.below(20) {
                    0 => rng.next(),
                    1 => now.saturating_sub(rng.below(1_000)),
                    _ => now.saturating_add(rng.below(100_000)),
                };
                // Mostly the registers with behaviour, some of the whole range, a few stray MSRs.
                const BUSY: [u32; 10] = [
                    reg::SVR,
                    reg::LVT_TIMER,
                    reg::TIMER_INITIAL,
                    reg::TIMER_DIVIDE,
                    reg::TSC_DEADLINE,
                    reg::TPR,
                    reg::ICR,
                    reg::SELF_IPI,
                    reg::ESR,
                    reg::LVT_ERROR,
                ];
                let msr = match rng.below(10) {
                    0 => rng.next() as u32,
                    1..=4 => 0x7f0 + rng.below(0x120) as u32,
                    _ => BUSY[rng.below(BUSY.len() as u64) as usize],
                };
                let value = match rng.below(6) {
                    0 => rng.next(),
                    1 => rng.below(0x100),
                    2 => 0,
                    3 => (rng.below(4) << 17) | rng.below(0x200) | (rng.below(2) << 16),
                    4 => rng.below(0x1_0000_0000),
                    _ => rng.next() & 0xffff_ffff_000c_cfff,
                };
                match rng.below(8) {
                    0 | 1 => {
                        let before = a.clone();
                        match a.write(msr, value, now) {
                            Ok(_) => writes_taken += 1,
                            Err(_) => assert_eq!(a, before, "a refused write changed state"),
                        }
                    }
                    2 => {
                        let _ = a.read(msr, now);
                    }
                    3 => {
                        a.accept(rng.next() as u8, rng.below(2) == 0);
                    }
                    4 => {
                        if let Some(v) = a.ack() {
                            assert!(a.isr.test(v) && !a.irr.test(v));
                            acked += 1;
                        }
                    }
                    5 => {
                        let _ = a.write(reg::EOI, 0, now);
                    }
                    6 => {
                        fired += u32::from(a.tick(now));
                        if let Some(next) = a.next_deadline() {
                            assert!(next > now || next == u64::MAX, "{next} <= {now}");
                        }
                    }
                    _ => a.set_tpr(rng.next() as u8),
                }
                if let Some(v) = a.pending() {
                    assert!(v >> 4 > a.ppr() >> 4 && v >= 16);
                }
                if a.timer_mode() == TimerMode::TscDeadline {
                    assert_eq!(a.current_count(now), 0);
                }
            }
        }
        // The run reached the interesting paths, not only the refusals.
        assert!(
            writes_taken > 1_000 && fired > 10 && acked > 1_000,
            "{writes_taken} {fired} {acked}"
        );
    }
}
