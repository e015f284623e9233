//! Moving cores between the host's Linux and atoll: APIC ids (what descriptions and atoll
//! name) to Linux CPU numbers (what sysfs names), and the `online` files.
//!
//! An offline CPU vanishes from `/proc/cpuinfo`, so the mapping is learnt while CPUs are
//! online and remembered in a small file (`/run/atoll/cpus`, "APIC-id CPU" a line) for
//! `atoll destroy --online-cores` to find the CPUs of cores the host gave away.

use crate::client::{Error, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

/// APIC id → Linux CPU number.
pub type CpuMap = BTreeMap<u32, u32>;

/// Parses `/proc/cpuinfo` (x86): every block's `processor` and `apicid` lines.
pub fn parse_cpuinfo(text: &str) -> Result<CpuMap> {
    let mut map = CpuMap::new();
    let mut processor = None;
    let mut apicid = None;
    let mut flush = |p: &mut Option<u32>, a: &mut Option<u32>| -> Result<()> {
        match (p.take(), a.take()) {
            // The guard records the pair; only a second record of the APIC id fails.
            (Some(p), Some(a)) if map.insert(a, p).is_some() => {
                return Err(Error::Other(format!(
                    "/proc/cpuinfo lists APIC id {a} twice"
                )));
            }
            (Some(p), None) => {
                return Err(Error::Other(format!(
                    "/proc/cpuinfo has no apicid for processor {p}"
                )))
            }
            _ => {}
        }
        Ok(())
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            if line.trim().is_empty() {
                flush(&mut processor, &mut apicid)?;
            }
            continue;
        };
        let num = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| Error::Other(format!("/proc/cpuinfo: bad line {line:?}")))
        };
        match key.trim() {
            "processor" => {
                flush(&mut processor, &mut apicid)?;
                processor = Some(num()?);
            }
            "apicid" => apicid = Some(num()?),
            _ => {}
        }
    }
    flush(&mut processor, &mut apicid)?;
    Ok(map)
}

/// Where the host's files are: `/` on a machine, a temporary directory in tests.
#[derive(Clone, Debug)]
pub struct Root(pub PathBuf);

impl Root {
    fn cpuinfo(&self) -> PathBuf {
        self.0.join("proc/cpuinfo")
    }
    fn state(&self) -> PathBuf {
        self.0.join("run/atoll/cpus")
    }
    /// The `online` file of Linux CPU `cpu`.
    pub fn online_file(&self, cpu: u32) -> PathBuf {
        self.0
            .join(format!("sys/devices/system/cpu/cpu{cpu}/online"))
    }
    /// The sysfs root.
    pub fn sys(&self) -> PathBuf {
        self.0.join("sys")
    }

    /// The mapping of the CPUs online now, merged into the remembered one (which is updated).
    fn learn(&self) -> Result<(CpuMap, CpuMap)> {
        let path = self.cpuinfo();
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let online = parse_cpuinfo(&text)?;
        let mut all = self.remembered();
        all.extend(online.iter().map(|(a, c)| (*a, *c)));
        // Best effort: a read-only /run only loses the memory for onlining later.
        let st = self.state();
        if let Some(dir) = st.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let text: String = all.iter().map(|(a, c)| format!("{a} {c}\n")).collect();
        let _ = fs::write(&st, text);
        Ok((online, all))
    }

    fn remembered(&self) -> CpuMap {
        let text = fs::read_to_string(self.state()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (a, c) = l.split_once(' ')?;
                Some((a.parse().ok()?, c.parse().ok()?))
            })
            .collect()
    }

    fn set_online(&self, cpu: u32, on: bool) -> Result<()> {
        let f = self.online_file(cpu);
        fs::write(&f, if on { "1" } else { "0" }).map_err(|e| Error::io(&f, e))
    }

    /// Offlines the Linux CPUs of the cores with these APIC ids; says what it did on `log`.
    /// A core that is not among the online CPUs is left as it is (offlined before, or not a
    /// core at all: atoll refuses that one with its reason).
    pub fn offline(&self, apic_ids: &[u32], log: &mut dyn Write) -> Result<Vec<u32>> {
        let (online, _) = self.learn()?;
        let mut done = Vec::new();
        for a in apic_ids {
            match online.get(a) {
                Some(&cpu) => {
                    self.set_online(cpu, false)?;
                    let _ = writeln!(log, "offlined CPU {cpu} (APIC id {a})");
                    done.push(cpu);
                }
                None => {
                    let _ = writeln!(
                        log,
                        "APIC id {a} is not an online CPU in /proc/cpuinfo: not offlining it"
                    );
                }
            }
        }
        Ok(done)
    }

    /// Onlines Linux CPUs by number (giving back what [`Root::offline`] took when atoll
    /// refused the enclave).
    pub fn online_cpus(&self, cpus: &[u32], log: &mut dyn Write) -> Result<()> {
        for &cpu in cpus {
            self.set_online(cpu, true)?;
            let _ = writeln!(log, "onlined CPU {cpu} again");
        }
        Ok(())
    }

    /// Onlines the Linux CPUs of the cores with these APIC ids.
    pub fn online(&self, apic_ids: &[u32], log: &mut dyn Write) -> Result<Vec<u32>> {
        let (online, all) = self.learn()?;
        let mut done = Vec::new();
        for a in apic_ids {
            if online.contains_key(a) {
                continue;
            }
            let cpu = *all.get(a).ok_or_else(|| {
                Error::Other(format!(
                    "APIC id {a}: its Linux CPU number is unknown (it was offline before atoll \
                     saw it); write 1 to /sys/devices/system/cpu/cpuN/online yourself"
                ))
            })?;
            self.set_online(cpu, true)?;
            let _ = writeln!(log, "onlined CPU {cpu} (APIC id {a})");
            done.push(cpu);
        }
        Ok(done)
    }
}
