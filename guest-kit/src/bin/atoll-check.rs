//! `atoll-check`: the in-guest check a Linux guest runs from its initramfs (static Linux
//! binary; see `guest_kit::check` for what it checks and how it decides). It gathers the facts
//! — online CPUs, memory, APIC mode, clocksource, TSC frequency, command line, the hypervisor's
//! CPUID signature, a pinned compute run on every CPU, the kernel log — prints one line
//! `ATOLL-GUEST-CHECK {json}` (on the console, where atoll's serial model files it as the
//! partition's `guest_check` result) and exits 0 when every check passed, 1 when one failed, 2 on a
//! usage error.
//!
//! `atoll-check --idle-timer SECONDS [--period-ms MS]` instead idles for SECONDS with a periodic
//! timer and prints `ATOLL-GUEST-IDLE {json}`: the largest gap between its wake-ups by the TSC
//! (`guest_kit::check::idle`), which atoll files as the partition's `idle_timer` result.
//!
//! Build it static for an initramfs:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p guest-kit --bin atoll-check --target x86_64-unknown-linux-gnu`
//! (`cargo xtask guest-image` does).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

// Built for the bare-metal target along with the other guest-kit binaries (`--bins`), it is an
// empty image: the program needs Linux.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(all(not(target_os = "linux"), not(target_os = "none")))]
fn main() {
    eprintln!("atoll-check runs on Linux only");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use guest_kit::check::dma;
    use guest_kit::check::host::{self, HostFacts, MemRegion, PciDevice, ProbeRead};
    use guest_kit::check::idle;
    use guest_kit::check::net;
    use guest_kit::check::{self, CpuRun, Facts, Options, Role};
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::{Arc, Barrier};
    use std::time::Instant;

    pub fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if idle::wants_idle(&args) {
            idle_timer(&args);
            return;
        }
        if dma::wants_dma(&args) {
            std::process::exit(dma_probe::run());
        }
        if net::wants_net(&args) {
            std::process::exit(net_io::run(&args));
        }
        if guest_kit::check::channel::wants_channel(&args) {
            std::process::exit(channel_garbage(&args));
        }
        let opts = match check::parse_args(&args) {
            Ok(Some(o)) => o,
            Ok(None) => {
                println!("{}", check::USAGE);
                return;
            }
            Err(e) => {
                eprintln!("atoll-check: {e}\n{}", check::USAGE);
                std::process::exit(2);
            }
        };
        let facts = gather(&opts);
        let (report, ok) = check::report(&facts, &opts);
        println!("{}{report}", check::REPORT_PREFIX);
        std::process::exit(if ok { 0 } else { 1 });
    }

    /// `--channel-garbage` (`guest_kit::check::channel`): a hostile host's write into one
    /// device's ring, and atoll's count of it.
    fn channel_garbage(args: &[String]) -> i32 {
        use atoll_abi::channel::{layout, reg, REGISTERS_SIZE, WINDOW_SIZE};
        use guest_kit::check::channel;
        let g = match channel::parse_args(args) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("atoll-check: {e}\n{}", channel::USAGE);
                return 2;
            }
        };
        let dev = std::path::Path::new("/sys/bus/pci/devices").join(&g.function);
        let map = |n: u8, len: usize| -> Result<*mut u8, String> {
            let path = dev.join(format!("resource{n}"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            use std::os::fd::AsRawFd;
            // SAFETY: a fresh shared mapping of `len` bytes of the BAR's resource file.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(format!(
                    "mmap {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
            Ok(p.cast())
        };
        let start = Instant::now();
        let result = (|| -> Result<(u32, u32), String> {
            let regs = map(0, REGISTERS_SIZE as usize)?;
            let win = map(2, WINDOW_SIZE as usize)?;
            let rd = |off: u64| {
                // SAFETY: an aligned 32-bit register inside the 4 KiB BAR0 mapping (an MMIO
                // access atoll answers).
                unsafe { core::ptr::read_volatile(regs.wrapping_add(off as usize).cast::<u32>()) }
            };
            let before = rd(reg::HOST_ERRORS);
            let mut entry = [0u8; layout::DEVICE_STRIDE];
            let at = layout::DEVICE0 + g.device * layout::DEVICE_STRIDE;
            for (k, b) in entry.iter_mut().enumerate() {
                // SAFETY: a byte of the header page inside the BAR2 mapping.
                *b = unsafe { core::ptr::read_volatile(win.wrapping_add(at + k)) };
            }
            let prod = channel::to_enclave_prod(&entry)
                .ok_or(format!("device {} has no ring in the header", g.device))?;
            // SAFETY: the ring's producer word, 4-aligned inside the BAR2 mapping: the write
            // a hostile host makes (more than the ring holds).
            unsafe { core::ptr::write_volatile(win.wrapping_add(prod).cast::<u32>(), 0xffff_fff8) };
            // SAFETY: the doorbell register inside the BAR0 mapping.
            unsafe {
                core::ptr::write_volatile(
                    regs.wrapping_add(reg::DOORBELL as usize).cast::<u32>(),
                    1 << g.device,
                )
            };
            let deadline = Instant::now() + std::time::Duration::from_secs(g.timeout_s);
            loop {
                let now = rd(reg::HOST_ERRORS);
                if now > before || Instant::now() >= deadline {
                    return Ok((before, now));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })();
        let ms = start.elapsed().as_millis() as u64;
        match result {
            Ok((before, after)) => {
                let timeout = (after <= before).then_some("atoll counted no error in time");
                println!("{}", channel::report(&g, before, after, ms, timeout));
                i32::from(after <= before)
            }
            Err(e) => {
                println!("{}", channel::report(&g, 0, 0, ms, Some(&e)));
                1
            }
        }
    }

    /// The idle window with a periodic timer (`guest_kit::check::idle`): sleeps the period
    /// until the window is over, stamps every wake-up, prints `ATOLL-GUEST-IDLE {json}`.
    fn idle_timer(args: &[String]) {
        let opts = match idle::parse_idle_args(args) {
            Ok(Some(o)) => o,
            Ok(None) => {
                println!("{}", idle::USAGE);
                return;
            }
            Err(e) => {
                eprintln!("atoll-check: {e}\n{}", idle::USAGE);
                std::process::exit(2);
            }
        };
        let (_, log) = kernel_log();
        let clock = match tsc_khz(&log) {
            (Some(khz), Some(source)) if khz > 0 => idle::Clock::Tsc {
                khz,
                khz_source: source.into(),
            },
            _ => idle::Clock::MonotonicRaw,
        };
        // One CPU's TSC throughout: the TSCs of two CPUs need not agree.
        let cpu = current_cpu().filter(|&c| pin(c).is_ok());
        let now = || match clock {
            idle::Clock::Tsc { .. } => {
                // SAFETY: RDTSC only reads the time-stamp counter; the kernel leaves it
                // readable from user mode (CR4.TSD clear) on x86-64 Linux.
                unsafe { core::arch::x86_64::_rdtsc() }
            }
            idle::Clock::MonotonicRaw => monotonic_ns(libc::CLOCK_MONOTONIC_RAW),
        };
        let period = libc::timespec {
            tv_sec: (opts.period_ms / 1000) as libc::time_t,
            tv_nsec: ((opts.period_ms % 1000) * 1_000_000) as libc::c_long,
        };
        // The window is measured as `sleep` measures it (CLOCK_MONOTONIC), so it lasts as
        // long as the plain idle window whatever the TSC frequency figure says.
        let end = monotonic_ns(libc::CLOCK_MONOTONIC).saturating_add(opts.seconds * 1_000_000_000);
        let mut meter = idle::GapMeter::new(now());
        let mut late_lines = 0;
        while monotonic_ns(libc::CLOCK_MONOTONIC) < end {
            // SAFETY: clock_nanosleep reads `period`, which we own; a null remainder is
            // allowed for a relative sleep. An interrupted sleep (EINTR) just wakes early.
            unsafe {
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &period, std::ptr::null_mut())
            };
            if let Some((gap, end)) = meter.wake(now()) {
                if idle::is_late(&clock, gap, opts.period_ms) && late_lines < idle::MAX_LATE_LINES {
                    late_lines += 1;
                    println!("{}", idle::late_line(&clock, gap, end));
                }
            }
        }
        println!(
            "{}{}",
            idle::IDLE_PREFIX,
            meter.report(&clock, opts.period_ms, cpu)
        );
    }

    /// `clock_gettime(clock)` in nanoseconds (0 if the clock cannot be read).
    fn monotonic_ns(clock: libc::clockid_t) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return 0;
        }
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }

    /// The kernel's TSC frequency in kHz and where it came from: sysfs (not mainline), else
    /// the calibration in the kernel log.
    fn tsc_khz(log: &[String]) -> (Option<u64>, Option<&'static str>) {
        match read("/sys/devices/system/cpu/cpu0/tsc_freq_khz").and_then(|s| s.trim().parse().ok())
        {
            Some(k) => (Some(k), Some("/sys/devices/system/cpu/cpu0/tsc_freq_khz")),
            None => match check::tsc_khz_from_log(log.iter().map(String::as_str)) {
                Some(k) => (Some(k), Some("kernel log")),
                None => (None, None),
            },
        }
    }

    fn read(path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn gather(opts: &Options) -> Facts {
        let online =
            read("/sys/devices/system/cpu/online").and_then(|s| check::parse_cpu_list(&s).ok());
        let affinity = affinity();
        let (log_source, log) = kernel_log();
        let log_lines = || log.iter().map(String::as_str);
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let x2 = log_source.map(|_| check::x2apic_log(log_lines()));
        let (apic_mode, apic_evidence) = check::apic_mode(&cpuinfo, x2.as_ref());
        let (tsc_khz, tsc_source) = tsc_khz(&log);
        let (hypervisor, hypervisor_max_leaf) = hypervisor();
        let mut facts = Facts {
            online,
            affinity,
            mem_total_kib: read("/proc/meminfo").and_then(|m| check::meminfo_kib(&m, "MemTotal")),
            kernel_memory_kib: check::kernel_memory_total_kib(log_lines()),
            apic_mode: apic_mode.into(),
            apic_mode_evidence: apic_evidence,
            clocksource: read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                .map(|s| s.trim().to_string()),
            tsc_khz,
            tsc_khz_source: tsc_source.map(Into::into),
            cmdline: read("/proc/cmdline").map(|s| s.trim().to_string()),
            hypervisor,
            hypervisor_max_leaf,
            kernel_log_source: log_source.map(Into::into),
            dmesg_warnings: check::dmesg_warnings(log_lines()),
            ..Facts::default()
        };
        if opts.role == Role::Host {
            facts.host = Some(gather_host(facts.cmdline.as_deref().unwrap_or_default()));
        }
        let cpus = facts.cpus().to_vec();
        let start = Instant::now();
        facts.compute = compute(&cpus, opts.iterations);
        facts.compute_wall_ms = start.elapsed().as_secs_f64() * 1000.0;
        facts
    }

    /// The root partition's facts (see `guest_kit::check::host`).
    fn gather_host(cmdline: &str) -> HostFacts {
        let expect = host::parse_host_cmdline(cmdline);
        let (memmap_source, memmap) = match firmware_memmap() {
            Some(m) => (Some("/sys/firmware/memmap".to_string()), m),
            None => match read("/proc/iomem") {
                Some(t) => (Some("/proc/iomem".to_string()), host::parse_iomem(&t)),
                None => (None, Vec::new()),
            },
        };
        let pool_probe = host::probe_addrs(&expect.pool)
            .into_iter()
            .map(probe)
            .collect();
        HostFacts {
            expect,
            memmap_source,
            memmap,
            pci: pci_devices(),
            pool_probe,
        }
    }

    /// `/sys/firmware/memmap/N/{start,end,type}`: the memory map the kernel was booted with
    /// (atoll's E820 for the host), before the kernel's own changes. `None` when absent or
    /// empty.
    fn firmware_memmap() -> Option<Vec<MemRegion>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/sys/firmware/memmap").ok()?.flatten() {
            let p = e.path();
            let f = |n: &str| read(&p.join(n).to_string_lossy());
            if let (Some(s), Some(en), Some(t)) = (f("start"), f("end"), f("type")) {
                out.extend(host::memmap_entry(&s, &en, &t));
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Every PCI function in `/sys/bus/pci/devices`, by address.
    fn pci_devices() -> Option<Vec<PciDevice>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/sys/bus/pci/devices").ok()?.flatten() {
            let p = e.path();
            let f = |n: &str| read(&p.join(n).to_string_lossy()).unwrap_or_default();
            let name = e.file_name().to_string_lossy().into_owned();
            out.extend(PciDevice::from_sysfs(
                &name,
                &f("vendor"),
                &f("device"),
                &f("class"),
            ));
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Some(out)
    }

    /// Reads one page at host-physical `addr` through `/dev/mem`.
    fn probe(addr: u64) -> ProbeRead {
        use std::os::unix::fs::FileExt;
        let failed = |e: String| ProbeRead {
            addr,
            bytes: 0,
            all_ones: false,
            error: Some(e),
        };
        let f = match std::fs::File::open("/dev/mem") {
            Ok(f) => f,
            Err(e) => return failed(format!("open /dev/mem: {e}")),
        };
        let mut buf = vec![0u8; host::PAGE as usize];
        // One pread: /dev/mem copies the whole request or fails, so a short count is the
        // kernel stopping at a boundary it refuses to cross.
        match f.read_at(&mut buf, addr) {
            Ok(n) => ProbeRead {
                addr,
                bytes: n,
                all_ones: host::all_ones(&buf[..n]),
                error: None,
            },
            Err(e) => failed(format!("pread /dev/mem: {e}")),
        }
    }

    /// The CPUs this process may run on.
    fn affinity() -> Vec<u32> {
        // SAFETY: cpu_set_t is plain data (a bit array), valid when zeroed.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: sched_getaffinity writes at most the size we pass into the set we own.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET only reads the set we own; `c` < CPU_SETSIZE keeps it inside.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .map(|c| c as u32)
            .collect()
    }

    /// Pins the calling thread to `cpu`.
    fn pin(cpu: u32) -> Result<(), String> {
        if cpu as usize >= libc::CPU_SETSIZE as usize {
            return Err(format!("CPU {cpu} is beyond CPU_SETSIZE"));
        }
        // SAFETY: as in `affinity`: cpu_set_t is valid when zeroed.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET only writes the set we own; `cpu` < CPU_SETSIZE (checked) keeps it
        // inside.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        // SAFETY: sched_setaffinity only reads the set we own, of the size we pass; pid 0 is
        // the calling thread.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            ))
        }
    }

    fn current_cpu() -> Option<u32> {
        // SAFETY: sched_getcpu has no preconditions.
        let c = unsafe { libc::sched_getcpu() };
        u32::try_from(c).ok()
    }

    /// One thread pinned to each CPU, all starting together, each doing `iterations` of work.
    fn compute(cpus: &[u32], iterations: u64) -> Vec<CpuRun> {
        let barrier = Arc::new(Barrier::new(cpus.len()));
        let handles: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                let barrier = Arc::clone(&barrier);
                std::thread::Builder::new()
                    .name(format!("compute-{cpu}"))
                    .spawn(move || {
                        let pinned = pin(cpu);
                        barrier.wait();
                        if let Err(e) = pinned {
                            return CpuRun {
                                cpu,
                                ran_on: None,
                                iterations: 0,
                                ms: 0.0,
                                checksum: 0,
                                error: Some(e),
                            };
                        }
                        let start = Instant::now();
                        let checksum = check::compute_work(iterations);
                        let ms = start.elapsed().as_secs_f64() * 1000.0;
                        CpuRun {
                            cpu,
                            ran_on: current_cpu(),
                            iterations,
                            ms,
                            checksum,
                            error: None,
                        }
                    })
            })
            .collect();
        handles
            .into_iter()
            .zip(cpus)
            .map(|(h, &cpu)| {
                let failed = |e: String| CpuRun {
                    cpu,
                    ran_on: None,
                    iterations: 0,
                    ms: 0.0,
                    checksum: 0,
                    error: Some(e),
                };
                match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| failed("compute thread panicked".into())),
                    // A thread that could not start never reaches the barrier; the others
                    // would wait forever, so this cannot be recovered into a report.
                    Err(e) => {
                        eprintln!("atoll-check: cannot start a compute thread: {e}");
                        std::process::exit(1);
                    }
                }
            })
            .collect()
    }

    /// CPUID.1:ECX[31] and, when set, leaf 0x4000_0000's signature and highest leaf.
    fn hypervisor() -> (Option<String>, Option<u32>) {
        use core::arch::x86_64::__cpuid;
        if __cpuid(1).ecx & (1 << 31) == 0 {
            return (None, None);
        }
        let r = __cpuid(0x4000_0000);
        (
            Some(check::hypervisor_signature(r.ebx, r.ecx, r.edx)),
            Some(r.eax),
        )
    }

    /// The kernel log's messages: `/dev/kmsg` read without blocking, else `syslog(2)`.
    fn kernel_log() -> (Option<&'static str>, Vec<String>) {
        if let Some(lines) = kmsg() {
            return (Some("/dev/kmsg"), lines);
        }
        if let Some(lines) = syslog() {
            return (Some("syslog"), lines);
        }
        (None, Vec::new())
    }

    fn kmsg() -> Option<Vec<String>> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        let mut lines = Vec::new();
        // Each read returns one record; a record is at most about 8 KiB with its dictionary.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    lines.extend(check::kmsg_message(&rec).unwrap_or_default());
                }
                // The end of the buffer.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // Records were overwritten while we read: carry on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) if lines.is_empty() => return None,
                Err(_) => break,
            }
        }
        Some(lines)
    }

    fn syslog() -> Option<Vec<String>> {
        const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
        const SYSLOG_ACTION_SIZE_BUFFER: libc::c_int = 10;
        // SAFETY: SIZE_BUFFER ignores the buffer arguments.
        let size = unsafe { libc::klogctl(SYSLOG_ACTION_SIZE_BUFFER, std::ptr::null_mut(), 0) };
        if size <= 0 {
            return None;
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: READ_ALL writes at most `size` bytes into `buf`, which holds that many.
        let n = unsafe { libc::klogctl(SYSLOG_ACTION_READ_ALL, buf.as_mut_ptr().cast(), size) };
        if n < 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&buf[..n as usize]);
        Some(
            text.lines()
                .map(|l| check::syslog_message(l).to_string())
                .collect(),
        )
    }

    /// `atoll-check --dma` (`guest_kit::check::dma`): drives the `edu` devices from sysfs.
    mod dma_probe {
        use super::dma::{self, edu, Step};
        use std::fs::{File, OpenOptions};
        use std::os::unix::fs::FileExt;
        use std::time::{Duration, Instant};

        const SYSFS: &str = "/sys/bus/pci/devices";

        /// One `edu` device: its BAR 0 mapped.
        struct Edu {
            name: String,
            regs: *mut u8,
        }

        impl Edu {
            fn open(name: &str) -> Result<Edu, String> {
                let dir = format!("{SYSFS}/{name}");
                // Memory decoding on (pci_enable_device), then bus mastering (command bit 2).
                std::fs::write(format!("{dir}/enable"), "1")
                    .map_err(|e| format!("{dir}/enable: {e}"))?;
                let config = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("{dir}/config"))
                    .map_err(|e| format!("{dir}/config: {e}"))?;
                let mut cmd = [0u8; 2];
                config
                    .read_exact_at(&mut cmd, 4)
                    .map_err(|e| format!("{dir}/config: {e}"))?;
                let v = u16::from_le_bytes(cmd) | 0x6;
                config
                    .write_all_at(&v.to_le_bytes(), 4)
                    .map_err(|e| format!("{dir}/config: {e}"))?;
                let bar = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("{dir}/resource0"))
                    .map_err(|e| format!("{dir}/resource0: {e}"))?;
                // SAFETY: a fresh shared mapping of the device's 4 KiB of registers (edu's BAR
                // is 1 MiB; the registers used are in its first page); nothing else refers to
                // it, and it stays mapped for the life of the process.
                let regs = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        std::os::fd::AsRawFd::as_raw_fd(&bar),
                        0,
                    )
                };
                if regs == libc::MAP_FAILED {
                    return Err(format!(
                        "mapping {dir}/resource0: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                let e = Edu {
                    name: name.to_string(),
                    regs: regs.cast(),
                };
                let ident = e.read32(edu::IDENT);
                if ident & 0xff != edu::IDENT_MAGIC {
                    return Err(format!("{name}: identification {ident:#x} is not edu's"));
                }
                Ok(e)
            }

            fn read32(&self, off: u64) -> u32 {
                // SAFETY: `off` is one of edu's register offsets, inside the mapped page and
                // 4-byte aligned; the device answers 32-bit reads there.
                unsafe {
                    std::ptr::read_volatile(self.regs.wrapping_add(off as usize).cast::<u32>())
                }
            }

            fn read64(&self, off: u64) -> u64 {
                // SAFETY: as for `read32`; the DMA registers are 64 bits wide, 8-byte aligned.
                unsafe {
                    std::ptr::read_volatile(self.regs.wrapping_add(off as usize).cast::<u64>())
                }
            }

            fn write32(&self, off: u64, v: u32) {
                // SAFETY: as for `read32`.
                unsafe {
                    std::ptr::write_volatile(self.regs.wrapping_add(off as usize).cast::<u32>(), v)
                }
            }

            fn write64(&self, off: u64, v: u64) {
                // SAFETY: as for `read64`.
                unsafe {
                    std::ptr::write_volatile(self.regs.wrapping_add(off as usize).cast::<u64>(), v)
                }
            }

            /// One transfer of a page; whether the engine finished it within 5 s.
            fn dma(&self, src: u64, dst: u64, to_ram: bool) -> bool {
                self.dma_len(src, dst, to_ram, edu::BUFFER_LEN)
            }

            /// One transfer of `len` bytes.
            fn dma_len(&self, src: u64, dst: u64, to_ram: bool, len: u64) -> bool {
                self.write64(edu::DMA_SRC, src);
                self.write64(edu::DMA_DST, dst);
                self.write64(edu::DMA_COUNT, len);
                let dir = if to_ram { edu::CMD_TO_RAM } else { 0 };
                self.write64(edu::DMA_CMD, edu::CMD_START | dir);
                let start = Instant::now();
                while self.read64(edu::DMA_CMD) & edu::CMD_START != 0 {
                    if start.elapsed() > Duration::from_secs(5) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                true
            }
        }

        /// A locked page of the process and its physical address.
        struct Page {
            ptr: *mut u8,
            phys: u64,
        }

        impl Page {
            fn new() -> Result<Page, String> {
                // SAFETY: a fresh private anonymous mapping, locked and populated so that its
                // frame stays put while a device writes it.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE
                            | libc::MAP_ANONYMOUS
                            | libc::MAP_LOCKED
                            | libc::MAP_POPULATE,
                        -1,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(format!(
                        "a locked page: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                let vaddr = p as u64;
                let pagemap =
                    File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
                let mut entry = [0u8; 8];
                pagemap
                    .read_exact_at(&mut entry, vaddr / 4096 * 8)
                    .map_err(|e| format!("pagemap: {e}"))?;
                let phys = dma::pagemap_phys(u64::from_le_bytes(entry), vaddr)
                    .ok_or("pagemap gives no frame (not root?)")?;
                Ok(Page {
                    ptr: p.cast(),
                    phys,
                })
            }

            fn fill(&self, bytes: &[u8]) {
                for (i, b) in bytes.iter().enumerate().take(4096) {
                    // SAFETY: inside the page this process mapped; volatile because a device
                    // writes it behind the compiler's back.
                    unsafe { std::ptr::write_volatile(self.ptr.wrapping_add(i), *b) };
                }
            }

            fn bytes(&self) -> Vec<u8> {
                // SAFETY: as for `fill`.
                (0..4096)
                    .map(|i| unsafe { std::ptr::read_volatile(self.ptr.wrapping_add(i)) })
                    .collect()
            }
        }

        fn step(name: &'static str, e: &Edu, address: u64) -> Step {
            Step {
                name,
                ran: false,
                verdict: None,
                device: e.name.clone(),
                address,
                detail: None,
            }
        }

        fn differs(got: &[u8], want: &[u8]) -> Option<String> {
            let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
            (n > 0).then(|| format!("{n} of {} bytes differ", want.len()))
        }

        fn probe(devices: &[String]) -> Result<Vec<Step>, String> {
            let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| e.to_string())?;
            let canaries = dma::parse_canaries(&cmdline)?;
            let owned = Edu::open(devices.first().ok_or("no edu device")?)?;
            let blocked = Edu::open(
                devices
                    .get(1)
                    .ok_or("no second edu device (the blocked one)")?,
            )?;
            let (a, b, c) = (Page::new()?, Page::new()?, Page::new()?);
            let pause = || std::thread::sleep(Duration::from_millis(dma::FAULT_PAUSE_MS));
            let mut steps = Vec::new();

            let want = dma::pattern(0x5a);
            a.fill(&want);
            b.fill(&[0u8; 4096]);
            let mut s = step("roundtrip", &owned, a.phys);
            s.ran = owned.dma(a.phys, edu::BUFFER, false) && owned.dma(edu::BUFFER, b.phys, true);
            let d = differs(&b.bytes(), &want);
            s.verdict = Some(d.is_none());
            s.detail = d;
            steps.push(s);

            for (name, address) in [
                ("pool_write", canaries.pool),
                ("atoll_write", canaries.atoll),
                ("unmapped_write", dma::UNMAPPED_IOVA),
            ] {
                let mut s = step(name, &owned, address);
                s.ran = owned.dma(edu::BUFFER, address, true);
                steps.push(s);
                pause();
            }

            // The blocked device's buffer holds zeros (it never received anything): a
            // write that got through would replace the pattern.
            let before = dma::pattern(0xa5);
            c.fill(&before);
            let mut s = step("blocked_write", &blocked, c.phys);
            s.ran = blocked.dma(edu::BUFFER, c.phys, true);
            let d = differs(&c.bytes(), &before);
            s.verdict = Some(d.is_none());
            s.detail = d;
            steps.push(s);
            pause();

            let forged = dma::forged_interrupt_address(dma::FORGED_HANDLE);
            let mut s = step("forged_interrupt", &owned, forged);
            s.ran = owned.dma_len(edu::BUFFER, forged, true, 4);
            steps.push(s);
            pause();

            steps.push(interrupt(&owned));
            steps.push(msi("msi", "ahci", "ahci"));
            steps.push(msi("msix", "virtio-blk", "virtio0-req"));
            match devices.get(2) {
                Some(name) => steps.push(storm(name, canaries.pool)),
                None => return Err("no third edu device (the storm's)".into()),
            }
            Ok(steps)
        }

        /// The third device faults [`dma::STORM_WRITES`] times; atoll should stop it (its
        /// bus-master bit cleared).
        fn storm(name: &str, target: u64) -> Step {
            let e = match Edu::open(name) {
                Ok(e) => e,
                Err(why) => {
                    return Step {
                        name: "storm",
                        ran: false,
                        verdict: None,
                        device: name.into(),
                        address: target,
                        detail: Some(why),
                    }
                }
            };
            let mut s = step("storm", &e, target);
            s.ran = (0..dma::STORM_WRITES).all(|_| {
                let ok = e.dma(edu::BUFFER, target, true);
                std::thread::sleep(Duration::from_millis(dma::STORM_PAUSE_MS));
                ok
            });
            std::thread::sleep(Duration::from_millis(dma::FAULT_PAUSE_MS));
            let mut cmd = [0u8; 2];
            let read = File::open(format!("{SYSFS}/{name}/config"))
                .and_then(|f| f.read_exact_at(&mut cmd, 4));
            match read {
                Ok(()) => {
                    let cmd = u16::from_le_bytes(cmd);
                    s.verdict = Some(cmd & 0x4 == 0);
                    s.detail = Some(format!("command register {cmd:#06x} after the storm"));
                    // Bus mastering on again (as a careless driver would): the next write must
                    // still fault, now at the context entry atoll cleared (nothing stale of
                    // its old domain left in the unit's caches).
                    let again = OpenOptions::new()
                        .write(true)
                        .open(format!("{SYSFS}/{name}/config"))
                        .and_then(|f| f.write_all_at(&(cmd | 0x4).to_le_bytes(), 4));
                    if again.is_ok() {
                        let _ = e.dma(edu::BUFFER, target, true);
                        std::thread::sleep(Duration::from_millis(dma::FAULT_PAUSE_MS));
                    }
                }
                Err(err) => s.detail = Some(format!("reading its command register: {err}")),
            }
            s
        }

        /// A driver of the host's (`line`: its name in `/proc/interrupts`) took
        /// message-signalled interrupts (through the IRTEs atoll wrote for its trapped MSI
        /// capability or MSI-X table).
        fn msi(name: &'static str, device: &str, line: &str) -> Step {
            let mut s = Step {
                name,
                ran: false,
                verdict: None,
                device: device.into(),
                address: 0,
                detail: None,
            };
            let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
            match dma::interrupt_count(&text, line) {
                Some((count, kind)) => {
                    s.ran = true;
                    s.verdict = Some(count > 0 && kind.contains("MSI"));
                    s.detail = Some(format!("{count} interrupt(s), {kind}"));
                }
                None => {
                    s.detail = Some(format!(
                        "no {line} line in /proc/interrupts (driver not loaded?)"
                    ))
                }
            }
            s
        }

        /// Binds `e` to `uio_pci_generic`, raises its interrupt and waits for `/dev/uioN` to
        /// report it.
        fn interrupt(e: &Edu) -> Step {
            let mut s = step("interrupt", e, 0);
            match raise_and_wait(e) {
                Ok((count, irq)) => {
                    s.ran = true;
                    s.verdict = Some(count > 0);
                    s.detail = Some(format!("irq {irq}, {count} interrupt(s)"));
                }
                Err(why) => s.detail = Some(why),
            }
            s
        }

        fn raise_and_wait(e: &Edu) -> Result<(u32, String), String> {
            let dir = format!("{SYSFS}/{}", e.name);
            std::fs::write(format!("{dir}/driver_override"), "uio_pci_generic")
                .map_err(|err| format!("{dir}/driver_override: {err}"))?;
            std::fs::write("/sys/bus/pci/drivers_probe", &e.name)
                .map_err(|err| format!("binding uio_pci_generic (drivers_probe): {err}"))?;
            let uio = std::fs::read_dir(format!("{dir}/uio"))
                .map_err(|err| format!("{dir}/uio: {err} (uio_pci_generic not bound)"))?
                .flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .next()
                .ok_or("no uio device")?;
            let irq = std::fs::read_to_string(format!("{dir}/irq"))
                .unwrap_or_default()
                .trim()
                .to_string();
            let mut dev = OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/dev/{uio}"))
                .map_err(|err| format!("/dev/{uio}: {err}"))?;
            e.write32(edu::INTR_RAISE, 1);
            let mut fds = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&dev),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut fds, 1, dma::INTERRUPT_WAIT_MS) };
            let mut count = 0u32;
            if n > 0 {
                let mut b = [0u8; 4];
                use std::io::{Read, Write};
                dev.read_exact(&mut b)
                    .map_err(|err| format!("/dev/{uio}: {err}"))?;
                count = u32::from_ne_bytes(b);
                e.write32(edu::INTR_ACK, e.read32(edu::INTR_STATUS));
                // Unmask INTx again (uio_pci_generic masked it in its handler).
                let _ = dev.write_all(&1u32.to_ne_bytes());
            } else {
                e.write32(edu::INTR_ACK, e.read32(edu::INTR_STATUS));
            }
            Ok((count, irq))
        }

        pub fn run() -> i32 {
            let entries: Vec<(String, String, String)> = std::fs::read_dir(SYSFS)
                .map(|d| {
                    d.flatten()
                        .map(|e| {
                            let n = e.file_name().to_string_lossy().into_owned();
                            let f = |x: &str| {
                                std::fs::read_to_string(e.path().join(x)).unwrap_or_default()
                            };
                            (n, f("vendor"), f("device"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let devices = dma::edu_devices(&entries);
            let (steps, problem) = match probe(&devices) {
                Ok(s) => (s, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            let (v, ok) = dma::report(&devices, &steps, problem.as_deref());
            println!("{}{v}", dma::DMA_PREFIX);
            if ok {
                0
            } else {
                1
            }
        }
    }

    /// The network modes (`guest_kit::check::net`): the TCP ends of the SR-IOV test, the VF's
    /// receive ring pointed elsewhere, an interface's interrupt counts. Each prints one JSON
    /// object; the exit status is 0 when the mode did what it was asked (for a receiver with
    /// `--bytes/--seed`: exactly that stream arrived).
    mod net_io {
        use super::net::{self, igbvf, NetCommand, Sha256, Stream, StreamCheck};
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
        use std::time::{Duration, Instant};

        pub fn run(args: &[String]) -> i32 {
            let cmd = match net::parse_net_args(args) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    println!("{}", net::USAGE);
                    return 2;
                }
                Err(e) => {
                    eprintln!("atoll-check: {e}\n{}", net::USAGE);
                    return 2;
                }
            };
            match cmd {
                NetCommand::Send {
                    host,
                    port,
                    bytes,
                    seed,
                    timeout_s,
                } => send(&host, port, bytes, seed, timeout_s),
                NetCommand::Recv {
                    port,
                    timeout_s,
                    expect,
                } => recv(port, timeout_s, expect),
                NetCommand::RxOutside { gpa, device } => rx_outside(gpa, &device),
                NetCommand::Interrupts { name } => {
                    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
                    println!(
                        "{}",
                        net::interrupts_json(&net::interrupt_lines(&text, &name))
                    );
                    0
                }
            }
        }

        /// Connects, retrying until `deadline` (the receiver may not listen yet).
        fn connect(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, String> {
            let addr = (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("{host}:{port}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host}:{port}: no address"))?;
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => return Ok(s),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("connecting to {addr}: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }

        fn send(host: &str, port: u16, bytes: u64, seed: u64, timeout_s: u64) -> i32 {
            let deadline = Instant::now() + Duration::from_secs(timeout_s);
            let mut hash = Sha256::new();
            let mut sent = 0u64;
            let mut start = Instant::now();
            let result = (|| -> Result<(), String> {
                let mut sock = connect(host, port, deadline)?;
                start = Instant::now();
                let limit = Some(Duration::from_secs(timeout_s.max(1)));
                sock.set_write_timeout(limit).map_err(|e| e.to_string())?;
                sock.set_read_timeout(limit).map_err(|e| e.to_string())?;
                let mut stream = Stream::new(seed);
                let mut buf = vec![0u8; 65536];
                while sent < bytes {
                    let n = (bytes - sent).min(buf.len() as u64) as usize;
                    stream.fill(&mut buf[..n]);
                    sock.write_all(&buf[..n])
                        .map_err(|e| format!("after {sent} bytes: {e}"))?;
                    hash.update(&buf[..n]);
                    sent += n as u64;
                }
                sock.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                // The receiver closes once it has read everything: its end of file is the
                // sign the bytes arrived, not only that they left.
                let mut rest = Vec::new();
                sock.read_to_end(&mut rest)
                    .map_err(|e| format!("waiting for the receiver to close: {e}"))?;
                Ok(())
            })();
            let seconds = start.elapsed().as_secs_f64();
            let error = result.err();
            println!(
                "{}",
                net::tcp_report(sent, &hash.hex(), seconds, None, error.as_deref())
            );
            i32::from(error.is_some())
        }

        fn recv(port: u16, timeout_s: u64, expect: Option<(u64, u64)>) -> i32 {
            let deadline = Instant::now() + Duration::from_secs(timeout_s);
            let mut hash = Sha256::new();
            let mut check = expect.map(|(_, seed)| StreamCheck::new(seed));
            let mut got = 0u64;
            let mut start = Instant::now();
            let result = (|| -> Result<(), String> {
                let listener = TcpListener::bind(("0.0.0.0", port))
                    .map_err(|e| format!("listening on port {port}: {e}"))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                let mut sock = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if Instant::now() >= deadline {
                                return Err(format!(
                                    "no connection on port {port} in {timeout_s} s"
                                ));
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => return Err(format!("accepting on port {port}: {e}")),
                    }
                };
                start = Instant::now();
                sock.set_nonblocking(false).map_err(|e| e.to_string())?;
                sock.set_read_timeout(Some(Duration::from_secs(timeout_s.max(1))))
                    .map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = sock
                        .read(&mut buf)
                        .map_err(|e| format!("after {got} bytes: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    if let Some(c) = check.as_mut() {
                        c.update(&buf[..n]);
                    }
                    got += n as u64;
                }
                Ok(())
            })();
            let seconds = start.elapsed().as_secs_f64();
            let matches = check.zip(expect).map(|(c, (bytes, _))| c.matches(bytes));
            let error = result.err();
            println!(
                "{}",
                net::tcp_report(got, &hash.hex(), seconds, matches, error.as_deref())
            );
            i32::from(error.is_some() || matches == Some(false))
        }

        /// The VF's BAR 0, mapped through sysfs.
        struct Bar {
            regs: *mut u8,
        }

        impl Bar {
            fn open(device: &str) -> Result<Bar, String> {
                let path = format!("/sys/bus/pci/devices/{device}/resource0");
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("{path}: {e}"))?;
                // SAFETY: a fresh shared mapping of the VF's register window (16 KiB, the
                // size of an igbvf BAR 0); nothing else in this process refers to it, and it
                // stays mapped until the process exits.
                let regs = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        igbvf::BAR0_MAP,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        std::os::fd::AsRawFd::as_raw_fd(&file),
                        0,
                    )
                };
                if regs == libc::MAP_FAILED {
                    let e = std::io::Error::last_os_error();
                    // Debian's CONFIG_IO_STRICT_DEVMEM: a BAR a driver claimed maps only
                    // with iomem=relaxed (pci_mmap_resource → iomem_is_exclusive).
                    let hint = if e.raw_os_error() == Some(libc::EINVAL) {
                        " (a BAR the driver claimed: boot with iomem=relaxed)"
                    } else {
                        ""
                    };
                    return Err(format!("mapping {path}: {e}{hint}"));
                }
                Ok(Bar { regs: regs.cast() })
            }

            fn read32(&self, off: u64) -> u32 {
                // SAFETY: `off` is one of igbvf's register offsets (net::igbvf), 4-byte
                // aligned and inside the mapped window; the device answers 32-bit reads.
                unsafe {
                    std::ptr::read_volatile(self.regs.wrapping_add(off as usize).cast::<u32>())
                }
            }

            fn write32(&self, off: u64, v: u32) {
                // SAFETY: as for `read32`.
                unsafe {
                    std::ptr::write_volatile(self.regs.wrapping_add(off as usize).cast::<u32>(), v)
                }
            }

            fn shown(&self) -> serde_json::Value {
                let values: Vec<(&str, u32)> = igbvf::SHOWN
                    .iter()
                    .map(|(n, off)| (*n, self.read32(*off)))
                    .collect();
                net::registers_json(&values)
            }
        }

        fn rx_outside(gpa: u64, device: &str) -> i32 {
            let mut v = serde_json::json!({
                "device": device,
                "gpa": format!("{gpa:#x}"),
            });
            match Bar::open(device) {
                Ok(bar) => {
                    v["before"] = bar.shown();
                    // High half first: the ring never points at the low half of the new
                    // address combined with the old high half while the NIC may fetch.
                    bar.write32(igbvf::RDBAH0, (gpa >> 32) as u32);
                    bar.write32(igbvf::RDBAL0, gpa as u32);
                    v["after"] = bar.shown();
                    let took = bar.read32(igbvf::RDBAL0) == gpa as u32
                        && bar.read32(igbvf::RDBAH0) == (gpa >> 32) as u32;
                    v["written"] = serde_json::json!(took);
                    v["error"] = serde_json::Value::Null;
                    println!("{v}");
                    i32::from(!took)
                }
                Err(e) => {
                    v["error"] = serde_json::json!(e);
                    println!("{v}");
                    1
                }
            }
        }
    }
}
