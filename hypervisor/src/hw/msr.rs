//! RDMSR for the capability probes.

use vmx::caps::MsrReader;
use vmx::msr::Msr;

/// Reads MSRs with RDMSR. Only MSRs whose existence CPUID has confirmed may be asked for: the
/// probes in `cpu` and `vmx::caps` guarantee that.
pub struct HwMsrs;

impl MsrReader for HwMsrs {
    fn read(&mut self, msr: Msr) -> Option<u64> {
        // SAFETY: callers only name MSRs that CPUID says exist (see the type's contract); reading
        // an MSR has no side effects for the ones atoll probes.
        Some(unsafe { x86_64::registers::model_specific::Msr::new(msr.0).read() })
    }
}

/// What this core's VMX capability MSRs allow (`cpuid_vmx`: CPUID.1:ECX.VMX; without it no VMX
/// MSR is read).
pub fn vmx_features(cpuid_vmx: bool) -> crate::machine::cpu::VmxFeatures {
    let caps = vmx::caps::VmxCaps::probe(cpuid_vmx, &mut HwMsrs);
    crate::machine::cpu::VmxFeatures {
        usable: caps.usable(),
        ept: caps.ept(),
        vpid: caps.vpid(),
        unrestricted_guest: caps.unrestricted_guest(),
        ept_1g: ept::EptCaps::from_msr(caps.ept_vpid_cap).contains(ept::EptCaps::PAGE_1G),
    }
}

/// VM_CR (only read when CPUID says the core has SVM).
pub fn vm_cr() -> u64 {
    HwMsrs
        .read(Msr(crate::machine::cpu::MSR_VM_CR))
        .unwrap_or(0)
}

/// IA32_MTRRCAP, IA32_MTRR_DEF_TYPE and the first variable-range base (SDM Vol. 3A §11.11.1,
/// §11.11.2.1, §11.11.2.3).
const MTRRCAP: u32 = 0xfe;
/// IA32_MTRR_DEF_TYPE.
pub const MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_PHYS_BASE0: u32 = 0x200;
/// The fixed-range MTRRs (§11.11.2.2).
const MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
];
/// MTRRCAP: the variable-range count (bits 7:0) and fixed ranges supported (bit 8).
const MTRRCAP_VCNT: u64 = 0xff;
const MTRRCAP_FIX: u64 = 1 << 8;
/// At most this many variable ranges are copied (Intel and AMD processors have 8 to 10).
const MAX_VAR: usize = 16;

/// One core's MTRRs, as the boot processor's firmware set them up.
#[derive(Clone, Copy, Debug)]
pub struct Mtrrs {
    def_type: u64,
    var: [(u64, u64); MAX_VAR],
    var_count: usize,
    fixed: Option<[u64; 11]>,
}

fn rd(msr: u32) -> u64 {
    // SAFETY: only called for MTRRs MTRRCAP (checked by the caller through CPUID.1:EDX.MTRR)
    // says exist; reading them has no side effect.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

impl Mtrrs {
    /// This core's MTRRs, or `None` when it has none (CPUID.1:EDX.MTRR clear).
    pub fn read() -> Option<Self> {
        if core::arch::x86_64::__cpuid(1).edx & (1 << 12) == 0 {
            return None;
        }
        let cap = rd(MTRRCAP);
        let var_count = ((cap & MTRRCAP_VCNT) as usize).min(MAX_VAR);
        let mut var = [(0, 0); MAX_VAR];
        for (i, v) in var.iter_mut().enumerate().take(var_count) {
            let base = MTRR_PHYS_BASE0 + 2 * i as u32;
            *v = (rd(base), rd(base + 1));
        }
        let fixed = (cap & MTRRCAP_FIX != 0).then(|| MTRR_FIXED.map(rd));
        Some(Self {
            def_type: rd(MTRR_DEF_TYPE),
            var,
            var_count,
            fixed,
        })
    }

    /// The default-type register's value.
    pub fn def_type(&self) -> u64 {
        self.def_type
    }

    /// Loads these MTRRs into this core, as firmware does on every processor so that all agree
    /// (SDM Vol. 3A §11.11.8: caches disabled and flushed, MTRRs disabled while they change).
    /// atoll starts the application processors itself, so it does what firmware would have.
    pub fn load(&self) {
        use x86_64::registers::control::Cr0;
        // The §11.11.8 sequence on this core with interrupts off (AP bring-up): caches disabled
        // (CD=1, NW=0) and flushed, MTRRs disabled, written, enabled again, caches flushed and
        // enabled. The values are the boot processor's, which the firmware made valid for this
        // machine; every write below is one step of it.
        let wr = |msr: u32, v: u64| {
            // SAFETY: an MTRR that MTRRCAP says exists (read from it by `read`), written with
            // the boot processor's value during the sequence above.
            unsafe { x86_64::registers::model_specific::Msr::new(msr).write(v) }
        };
        let wbinvd = || {
            // SAFETY: write back and invalidate this core's caches: slow, never incorrect.
            unsafe { core::arch::asm!("wbinvd", options(nostack)) }
        };
        let cr0 = Cr0::read_raw();
        // SAFETY: CD set, NW clear: this core's caches off for the update (§11.11.8 step 2).
        unsafe { Cr0::write_raw((cr0 | (1 << 30)) & !(1 << 29)) };
        wbinvd();
        wr(MTRR_DEF_TYPE, self.def_type & !((1 << 11) | (1 << 10)));
        for (i, &(b, m)) in self.var[..self.var_count].iter().enumerate() {
            let base = MTRR_PHYS_BASE0 + 2 * i as u32;
            wr(base, b);
            wr(base + 1, m);
        }
        if let Some(fixed) = self.fixed {
            for (msr, v) in MTRR_FIXED.iter().zip(fixed) {
                wr(*msr, v);
            }
        }
        wr(MTRR_DEF_TYPE, self.def_type);
        wbinvd();
        // SAFETY: caches on again (CD and NW clear), as the boot processor runs.
        unsafe { Cr0::write_raw(cr0 & !((1 << 30) | (1 << 29))) };
    }
}
