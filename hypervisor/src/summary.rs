//! The run summary: one machine-readable line, `ATOLL-SUMMARY {json}`, printed at the end of a
//! run. The harness (`cargo xtask run`) turns it into its own exit status, so every field a test
//! asserts on lives here, and [`Summary::finish`] decides `ok` from the problems found.

use crate::machine::cpu::CoreCaps;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Serialize;

/// The prefix the harness looks for.
pub const SUMMARY_PREFIX: &str = "ATOLL-SUMMARY ";

/// One core's line in the summary.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CoreReport {
    /// Local APIC id.
    pub apic_id: u32,
    /// The boot processor.
    pub bsp: bool,
    /// Checked in.
    pub online: bool,
    /// What it probed on itself (absent when it never came online).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caps: Option<CoreCaps>,
    /// Its per-core counters: commands served, enclaves started, reclaims, refusals, wake-ups,
    /// host interrupts and NMIs it took.
    pub mailbox: crate::machine::percpu::CounterValues,
}

/// Where a nested-page fault hit.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// Guest-physical address.
    pub gpa: u64,
    /// `read`, `write`, `fetch` (joined with `+`).
    pub access: String,
    /// Guest RIP.
    pub rip: u64,
}

/// One enclave's line in the summary.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct EnclaveReport {
    /// Its name.
    pub name: String,
    /// Its cores (APIC ids).
    pub cores: Vec<u32>,
    /// Its RAM.
    pub memory_mib: u64,
    /// `ended` or `not_started`.
    pub state: &'static str,
    /// Why it ended (`exit`, `ept_violation`, `triple_fault`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<&'static str>,
    /// The end reason in words.
    pub detail: String,
    /// The guest's exit code, when it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u64>,
    /// The faulting access, when it ended by an EPT violation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
    /// Exits by kind.
    pub exits: serde_json::Map<String, serde_json::Value>,
    /// Accesses to ports atoll does not emulate.
    pub io_denied: u64,
    /// MSR accesses refused with #GP.
    pub msr_denied: u64,
    /// What the guest reported.
    pub results: serde_json::Map<String, serde_json::Value>,
    /// Bytes of results refused because the enclave's result budget was spent (REPORT
    /// hypercalls and guest-check lines; see [`crate::bounded`]).
    pub report_bytes_dropped: u64,
    /// Bytes of console lines dropped because the enclave's console queue was full (the serial
    /// port stayed busy).
    pub console_bytes_dropped: u64,
    /// When it ended, in microseconds of atoll's clock (the TSC), for ordering ends.
    pub ended_at_us: u64,
    /// vCPUs (Linux enclaves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<usize>,
    /// Exits by class (`timer`, `ipi`, `hlt`, `other`; Linux enclaves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_classes: Option<serde_json::Map<String, serde_json::Value>>,
    /// IPIs whose destination named no vCPU of the enclave (dropped; Linux enclaves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipis_dropped: Option<u64>,
    /// Its virtio devices' counters (`devices`: kind, notifications, chains, bad chains, host
    /// errors, resets, interrupts, dropped, stale) and its channel's host errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtio: Option<serde_json::Value>,
    /// Host-physical base of its RAM, once it was built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_base: Option<u64>,
    /// Its cores were reclaimed and its RAM zeroed and returned to the pool after it ended.
    pub reclaimed: bool,
    /// Enclaves, ended and reclaimed earlier in the run, whose RAM this one's overlaps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ram_reused_from: Vec<String>,
    /// Figures measured between guest console markers: `boot_to_init` {cycles, us} and `idle`
    /// {cycles, us, timer, ipi, hlt, other} (see [`crate::run::vplat`]).
    #[serde(flatten)]
    pub measurements: serde_json::Map<String, serde_json::Value>,
}

/// The root partition's line in the summary: the host's Linux, beside the enclaves.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct HostReport {
    /// Its cores (APIC ids).
    pub cores: Vec<u32>,
    /// Its RAM: every byte of the machine's RAM atoll and the enclave pool do not own.
    pub memory_mib: u64,
    /// Why it ended (`power_off`, `stopped`, `failed`, …); absent while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<&'static str>,
    /// The end reason in words.
    pub detail: String,
    /// How many times atoll restarted it after a reset (reboot, panic, ACPI or port reset).
    pub restarts: u32,
    /// Changes to its second-stage tables that would have mapped a frame outside the window
    /// they were for, or an enclave's (each refused; a non-zero count is atoll's bug).
    pub isolation_violations: u32,
    /// What it reported (`guest_check`, `guest_exit_status`), as an enclave's `results`; the
    /// last boot's, when it was restarted.
    pub results: serde_json::Map<String, serde_json::Value>,
    /// Its reads of memory it does not own (answered with all ones).
    pub refused_reads: u64,
    /// Its writes to memory it does not own (dropped).
    pub refused_writes: u64,
    /// IPIs, INITs and SIPIs it sent to cores not its own (dropped).
    pub ipis_dropped: u64,
    /// MSR accesses refused.
    pub msr_denied: u64,
    /// Exits by kind.
    pub exits: serde_json::Map<String, serde_json::Value>,
    /// Bytes of console lines dropped because its console queue was full.
    pub console_bytes_dropped: u64,
    /// DMA faults of its devices.
    pub dma_faults: u64,
    /// Interrupt-remapping faults of its devices.
    pub interrupt_faults: u64,
    /// The last fault of its devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fault: Option<FaultReport>,
    /// Measured figures of its last boot (`boot_to_init`: TSC cycles and µs from its start to
    /// its first `atoll-init:` line; `idle` and `load`: the length of the windows its console
    /// marked with `ATOLL-IDLE` / `ATOLL-LOAD begin` and `end`, and its exits of each kind in
    /// them, see `atoll::run::host_windows`).
    #[serde(flatten)]
    pub measurements: serde_json::Map<String, serde_json::Value>,
}

/// The whole summary.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Summary {
    /// atoll's version.
    pub version: &'static str,
    /// Whether the run met every check atoll makes of itself.
    pub ok: bool,
    /// What went wrong, one sentence each.
    pub problems: Vec<String>,
    /// Processors atoll tried to run on (the MADT's, plus any forged by `fake_apic_ids`).
    pub cores_total: usize,
    /// Processors that checked in.
    pub cores_online: usize,
    /// APIC ids that did not.
    pub missing_apic_ids: Vec<u32>,
    /// Per core.
    pub cores: Vec<CoreReport>,
    /// `GenuineIntel`, `AuthenticAMD` or `other`.
    pub cpu_vendor: &'static str,
    /// VT-x usable on every online core.
    pub vmx: bool,
    /// EPT on every online core.
    pub ept: bool,
    /// Unrestricted guest on every online core.
    pub unrestricted_guest: bool,
    /// VPID on every online core.
    pub vpid: bool,
    /// AMD-V usable on every online core.
    pub svm: bool,
    /// Nested paging on every online core.
    pub npt: bool,
    /// Usable RAM in the memory map.
    pub memory_usable_bytes: u64,
    /// RAM the frame allocator can hand out (usable minus the first MiB, image, modules, boot info).
    pub memory_free_bytes: u64,
    /// A DMAR table (VT-d) is present.
    pub dmar: bool,
    /// Its remapping units.
    pub dmar_units: usize,
    /// PCIe ECAM windows from the MCFG.
    pub ecam_windows: usize,
    /// ACPI revision.
    pub acpi_revision: u8,
    /// Calibrated TSC frequency.
    pub tsc_hz: u64,
    /// Microseconds the AP bring-up took.
    pub ap_bringup_us: u64,
    /// Multiboot2 modules loaded, by name.
    pub modules: Vec<String>,
    /// The virtualization backend atoll runs enclaves with: `vmx`, `svm` or `none`.
    pub cpu_virt: &'static str,
    /// The enclaves of the run.
    pub enclaves: Vec<EnclaveReport>,
    /// The root partition, when the machine description booted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostReport>,
    /// Whether every device's DMA is confined to its owner's memory: atoll programmed a VT-d
    /// unit for every remapping unit the DMAR lists (false on machines without one).
    pub dma_isolation: bool,
    /// Whether the machine description lets enclaves own devices without DMA isolation.
    pub allow_unsafe_dma: bool,
    /// The IOMMU, when the machine has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iommu: Option<IommuReport>,
    /// A self-IPI went through the host IDT and back at boot.
    pub host_interrupts_ok: bool,
    /// The control device's requests (`atoll` on the host), when the host had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlReport>,
}

/// One fault an IOMMU recorded, as atoll decoded and attributed it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct FaultReport {
    /// The requester (`bb:dd.f`).
    pub source: String,
    /// Its owner (`host`, an enclave's name) or `none` (a blocked function).
    pub owner: String,
    /// `dma` or `interrupt`.
    pub kind: &'static str,
    /// The fault reason's code (VT-d spec Appendix A).
    pub code: u8,
    /// The reason in words.
    pub reason: String,
    /// The faulting address (DMA: the I/O virtual address; interrupt: the IRTE index in the
    /// upper half, as VT-d records it), hex.
    pub address: String,
    /// A DMA write (false: a read).
    pub write: bool,
}

/// The two pages a machine description's `dma_canaries` asks for: whether each still holds
/// the pattern atoll wrote at boot.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct CanaryReport {
    /// The page of atoll's own memory.
    pub atoll_address: String,
    /// Whether it is intact.
    pub atoll_intact: bool,
    /// The page of the enclave pool.
    pub pool_address: String,
    /// Whether it is intact.
    pub pool_intact: bool,
}

/// atoll's IOMMU (VT-d).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct IommuReport {
    /// Remapping units programmed.
    pub units: usize,
    /// DMA remapping on in every unit.
    pub translation: bool,
    /// Interrupt remapping on in every unit (compatibility format blocked).
    pub interrupt_remapping: bool,
    /// Domains (one per partition that owns a device).
    pub domains: usize,
    /// Functions found at boot.
    pub functions: usize,
    /// Functions in the host's domain.
    pub host_functions: usize,
    /// Functions no partition owns (blocked).
    pub blocked: Vec<String>,
    /// The highest bus number atoll gave context entries for.
    pub last_bus: u8,
    /// Second-level and context table pages.
    pub table_pages: usize,
    /// DMA faults recorded.
    pub dma_faults: u64,
    /// Interrupt-remapping faults recorded.
    pub interrupt_faults: u64,
    /// Faults of functions no partition owns.
    pub unowned_faults: u64,
    /// Faults the hardware could not record (its fault registers were full).
    pub lost_faults: u64,
    /// The first faults (at most 32).
    pub fault_log: Vec<FaultReport>,
    /// IRTEs atoll wrote for the host's interrupt sources (I/O APIC entries, MSI, MSI-X).
    pub host_irtes_written: u64,
    /// Host interrupts refused (a destination outside its cores, SMI/INIT, not an interrupt).
    pub host_interrupts_refused: u64,
    /// Functions atoll stopped (bus mastering off) for faulting in a storm.
    pub stopped: Vec<String>,
    /// The DMA canaries, when the machine description asked for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canaries: Option<CanaryReport>,
}

/// What the host asked of atoll through the control device.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct ControlReport {
    /// Requests carried out.
    pub requests_ok: u64,
    /// Requests refused (each with a status and a reason).
    pub requests_refused: u64,
    /// Enclaves created at run time.
    pub created: u64,
    /// Enclaves destroyed at run time.
    pub destroyed: u64,
    /// atoll's share of the last run-time enclaves' lives (at most 16), in TSC cycles.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timings: Vec<ControlTiming>,
}

/// atoll's share of one run-time enclave's creation and destruction, in TSC cycles (of the
/// manager's core; on Bochs, instructions), for `cargo xtask bench lifecycle`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct ControlTiming {
    /// The enclave.
    pub name: String,
    /// Its RAM.
    pub memory_mib: u64,
    /// Carrying out Create: the checks, its cores taken from the host, staging allocated.
    pub create_cycles: u64,
    /// Carrying out every Load (copying the files into staging).
    pub load_cycles: u64,
    /// From Start's doorbell being served to the guest's first instruction: the build (RAM
    /// zeroed, image loaded, tables made) and the cores' start.
    pub start_to_guest_cycles: u64,
    /// Carrying out Destroy: its vCPUs stopped, its cores reclaimed and parked (and given back
    /// to the host), its tables freed and its RAM zeroed into the pool.
    pub destroy_cycles: u64,
    /// The part of it that zeroed the RAM.
    pub zero_cycles: u64,
}

impl Summary {
    /// Derives the machine-wide flags from the online cores and decides `ok`.
    pub fn finish(&mut self) {
        let online: Vec<&CoreCaps> = self
            .cores
            .iter()
            .filter(|c| c.online)
            .filter_map(|c| c.caps.as_ref())
            .collect();
        self.cores_total = self.cores.len();
        self.cores_online = online.len();
        self.missing_apic_ids = self
            .cores
            .iter()
            .filter(|c| !c.online)
            .map(|c| c.apic_id)
            .collect();
        let all = |f: fn(&CoreCaps) -> bool| !online.is_empty() && online.iter().all(|c| f(c));
        self.vmx = all(|c| c.vmx);
        self.ept = all(|c| c.ept);
        self.unrestricted_guest = all(|c| c.unrestricted_guest);
        self.vpid = all(|c| c.vpid);
        self.svm = all(|c| c.svm);
        self.npt = all(|c| c.npt);
        self.cpu_vendor = match online.first() {
            Some(c) if c.intel => "GenuineIntel",
            Some(c) if c.amd => "AuthenticAMD",
            _ => "other",
        };
        for id in &self.missing_apic_ids {
            self.problems
                .push(alloc::format!("core with APIC id {id} did not come online"));
        }
        let any = |f: fn(&CoreCaps) -> bool| online.iter().any(|c| f(c));
        if any(|c| c.vmx) && !self.vmx {
            self.problems.push("cores disagree on VMX support".into());
        }
        if any(|c| c.svm) && !self.svm {
            self.problems.push("cores disagree on SVM support".into());
        }
        if !self.vmx && !self.svm {
            self.problems
                .push("no usable hardware virtualization: neither VMX nor SVM".into());
        }
        for e in &self.enclaves {
            // A guest ending badly is the guest's business; atoll failing to run it is not.
            if e.end_reason == Some("failed") || e.state != "ended" {
                // An enclave that took no exit never ran (it could not be built or entered);
                // one that did failed while it ran (a fault in atoll, say).
                let what = if e.exits.is_empty() {
                    "did not run"
                } else {
                    "failed"
                };
                self.problems
                    .push(alloc::format!("enclave '{}' {what}: {}", e.name, e.detail));
            }
        }
        if let Some(h) = &self.host {
            // The host's own panic or reboot is its business (atoll restarts it); atoll failing
            // to run it is not.
            if h.end_reason == Some("failed") {
                self.problems
                    .push(alloc::format!("the host failed: {}", h.detail));
            }
        }
        self.ok = self.problems.is_empty();
    }

    /// The summary line, prefix included.
    pub fn line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"ok\":false}"));
        alloc::format!("{SUMMARY_PREFIX}{json}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(apic_id: u32, online: bool, caps: CoreCaps) -> CoreReport {
        CoreReport {
            apic_id,
            bsp: apic_id == 0,
            online,
            caps: online.then_some(CoreCaps { apic_id, ..caps }),
            mailbox: Default::default(),
        }
    }

    #[test]
    fn missing_core_fails_the_run_and_is_named() {
        let svm = CoreCaps {
            amd: true,
            svm: true,
            npt: true,
            ..Default::default()
        };
        let mut s = Summary {
            cores: vec![core(0, true, svm), core(1, true, svm), core(7, false, svm)],
            ..Default::default()
        };
        s.finish();
        assert!(!s.ok);
        assert_eq!((s.cores_total, s.cores_online), (3, 2));
        assert_eq!(s.missing_apic_ids, vec![7]);
        assert!(s.svm && s.npt && !s.vmx);
        assert_eq!(
            s.problems,
            vec!["core with APIC id 7 did not come online".to_string()]
        );
        let line = s.line();
        assert!(line.starts_with("ATOLL-SUMMARY {"));
        let v: serde_json::Value = serde_json::from_str(&line[SUMMARY_PREFIX.len()..]).unwrap();
        assert_eq!(v["cores_online"], 2);
        assert_eq!(v["svm"], true);
        assert_eq!(v["cpu_vendor"], "AuthenticAMD");
    }

    #[test]
    fn healthy_vmx_machine_is_ok() {
        let vmx = CoreCaps {
            intel: true,
            vmx: true,
            ept: true,
            vpid: true,
            unrestricted_guest: true,
            ..Default::default()
        };
        let mut s = Summary {
            cores: vec![core(0, true, vmx), core(1, true, vmx)],
            ..Default::default()
        };
        s.finish();
        assert!(s.ok, "{:?}", s.problems);
        assert!(s.vmx && s.ept && s.vpid && s.unrestricted_guest && !s.svm);
    }

    #[test]
    fn enclave_ends_caused_by_guests_are_not_problems() {
        let vmx = CoreCaps {
            intel: true,
            vmx: true,
            ept: true,
            vpid: true,
            unrestricted_guest: true,
            ..Default::default()
        };
        let ended = |name: &str, reason| EnclaveReport {
            name: name.into(),
            state: "ended",
            end_reason: Some(reason),
            ..Default::default()
        };
        let mut s = Summary {
            cores: vec![core(0, true, vmx)],
            enclaves: vec![
                ended("a", "exit"),
                ended("b", "triple_fault"),
                // Stopped at the machine's deadline: what was asked, not a problem.
                ended("s", "stopped"),
            ],
            ..Default::default()
        };
        s.finish();
        assert!(s.ok, "{:?}", s.problems);
        s.enclaves.push(EnclaveReport {
            name: "c".into(),
            state: "ended",
            end_reason: Some("failed"),
            detail: "VMLAUNCH failed".into(),
            ..Default::default()
        });
        s.problems.clear();
        s.finish();
        assert_eq!(
            s.problems,
            vec!["enclave 'c' did not run: VMLAUNCH failed".to_string()]
        );
        // One that ran (it took exits) and then failed, e.g. a fault in atoll.
        let mut ran = ended("d", "failed");
        ran.detail = "atoll fault while handling this enclave: panic".into();
        ran.exits.insert("cpuid".into(), 3.into());
        s.enclaves = vec![ran];
        s.problems.clear();
        s.finish();
        assert_eq!(
            s.problems,
            vec!["enclave 'd' failed: atoll fault while handling this enclave: panic".to_string()]
        );
    }

    #[test]
    fn the_host_appears_only_when_there_is_one() {
        let s = Summary::default();
        let v: serde_json::Value = serde_json::from_str(&s.line()[SUMMARY_PREFIX.len()..]).unwrap();
        assert!(v.get("host").is_none() && v.get("iommu").is_none(), "{v}");
        assert_eq!(v["dma_isolation"], false, "no IOMMU: no isolation, said");
        assert_eq!(v["allow_unsafe_dma"], false);
        let mut results = serde_json::Map::new();
        results.insert("guest_check".into(), serde_json::json!({"ok": true}));
        let s = Summary {
            host: Some(HostReport {
                cores: vec![0, 1],
                end_reason: Some("power_off"),
                restarts: 1,
                isolation_violations: 0,
                refused_reads: 2,
                results,
                ..Default::default()
            }),
            dma_isolation: true,
            iommu: Some(IommuReport {
                units: 1,
                translation: true,
                dma_faults: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&s.line()[SUMMARY_PREFIX.len()..]).unwrap();
        assert_eq!(v["host"]["cores"], serde_json::json!([0, 1]));
        assert_eq!(v["host"]["end_reason"], "power_off");
        assert_eq!(v["host"]["restarts"], 1);
        assert_eq!(v["host"]["refused_reads"], 2);
        assert_eq!(v["host"]["results"]["guest_check"]["ok"], true);
        assert_eq!(v["dma_isolation"], true);
        assert_eq!(v["iommu"]["dma_faults"], 3);
        assert_eq!(v["host"]["dma_faults"], 0);
        assert!(v["host"].get("last_fault").is_none());
    }

    #[test]
    fn a_failed_host_is_a_problem_and_its_own_reset_is_not() {
        let caps = CoreCaps {
            svm: true,
            npt: true,
            ..Default::default()
        };
        let with = |end: &'static str| {
            let mut s = Summary {
                cores: vec![core(0, true, caps)],
                host: Some(HostReport {
                    end_reason: Some(end),
                    detail: "why".into(),
                    restarts: 1,
                    isolation_violations: 0,
                    ..Default::default()
                }),
                ..Default::default()
            };
            s.finish();
            s
        };
        assert!(with("power_off").ok);
        let s = with("failed");
        assert!(!s.ok);
        assert_eq!(s.problems, vec!["the host failed: why".to_string()]);
    }

    #[test]
    fn no_virtualization_is_a_problem() {
        let mut s = Summary {
            cores: vec![core(0, true, CoreCaps::default())],
            ..Default::default()
        };
        s.finish();
        assert!(!s.ok);
        assert!(s.problems[0].contains("neither VMX nor SVM"));
    }
}
