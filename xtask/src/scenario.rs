//! Scenarios: files under `tests/scenarios/NAME.toml` naming what the image carries and what a
//! run must show.
//!
//! ```toml
//! description = "…"
//! cmdline = "log=info"               # atoll's boot options
//! cpus = 2                            # defaults for `run`
//! memory_mib = 256
//! timeout_s = { qemu = 60, bochs = 600 }
//! emulators = ["qemu"]                # where it can run (default: both)
//! qemu_args = ["-device", "intel-iommu,intremap=on"]
//! [[module]]                          # files GRUB loads as Multiboot2 modules
//! name = "config"
//! path = "tests/scenarios/files/x.toml"   # relative to the workspace
//! [[module]]
//! name = "suite64"
//! guest = "guest-suite"               # a guest-kit bare-metal binary
//! [[module]]
//! name = "vmlinuz"
//! linux = "kernel"                    # the Linux guest image's kernel (or --guest-kernel)
//! [[module]]
//! name = "initrd"
//! linux = "initrd"                    # the guest image's initramfs (/init runs atoll-check)
//!                                     # ("host-initrd": with /guest/{vmlinuz,initrd,suite64}
//!                                     # added, for the host's `atoll create`)
//! [[module]]
//! name = "machine"                    # a machine description: the host (root partition),
//! path = "tests/scenarios/machines/x.toml"  # the pool, boot-time enclaves; its [host] and
//!                                     # [[enclave]]s may name the same kernel and initrd
//!                                     # modules (one initramfs: /init reads atoll.role=host)
//! [expect]                            # summary fields every run must show
//! ok = true
//! cores_online = "$cpus"              # "$cpus" and "$cpus+N" stand for the run's CPU count
//! "host.refused_reads" = ">= 1"       # a number compared: ">= N", "<= N", "> N", "< N"
//! [expect.qemu]                       # only on QEMU
//! svm = true
//! [expect.bochs]                      # only on Bochs
//! vmx = true
//! ```

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which emulator boots the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emulator {
    /// Bochs: VMX with EPT, slow.
    Bochs,
    /// QEMU (software emulation): SVM with nested paging, VT-d, igb, fast.
    Qemu,
}

impl Emulator {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Emulator::Bochs => "bochs",
            Emulator::Qemu => "qemu",
        }
    }
}

/// A file of the Linux guest image (`cargo xtask guest-image`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinuxPart {
    /// The kernel (bzImage): the guest image's, or the run's `--guest-kernel`.
    Kernel,
    /// The initramfs whose `/init` runs `atoll-check`.
    Initrd,
    /// That initramfs with the files the host's `atoll` command starts enclaves from added
    /// under `/guest/`: `vmlinuz` and `initrd` (the two above) and `suite64` (the guest-kit
    /// suite, bare metal).
    #[serde(rename = "host-initrd")]
    HostInitrd,
    /// The host's initramfs with the benches' host tools appended (`stress-ng`, `oslat`: see
    /// [`crate::bench_tools`]), for the isolation bench's scenarios.
    #[serde(rename = "bench-initrd")]
    BenchInitrd,
}

/// A module GRUB loads: a file of the repository, a guest built from `guest-kit`, or a file of
/// the Linux guest image.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    /// Name atoll finds it by.
    pub name: String,
    /// File, relative to the workspace root.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A `guest-kit` binary, built for `x86_64-unknown-none`.
    #[serde(default)]
    pub guest: Option<String>,
    /// A file of the Linux guest image.
    #[serde(default)]
    pub linux: Option<LinuxPart>,
}

/// Per-emulator timeouts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Seconds on QEMU.
    pub qemu: u64,
    /// Seconds on Bochs.
    pub bochs: u64,
}

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (the file stem), filled in by [`Scenario::load`].
    #[serde(skip)]
    pub name: String,
    /// What it shows.
    pub description: String,
    /// atoll's boot options (Linux's command line when [`Scenario::native`]).
    #[serde(default)]
    pub cmdline: String,
    /// Boots the scenario's Linux kernel (its `linux = "kernel"` module) directly with its one
    /// initramfs module, without atoll: the isolation bench's native and KVM baselines. Such a
    /// run prints no summary, so it expects nothing of one.
    #[serde(default)]
    pub native: bool,
    /// Default CPU count.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Default RAM.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Hard timeouts.
    pub timeout_s: Timeouts,
    /// Extra QEMU arguments (devices the scenario needs, e.g. `-device intel-iommu`).
    #[serde(default)]
    pub qemu_args: Vec<String>,
    /// QEMU's `-cpu` model (default `max`: SVM with nested paging).
    #[serde(default = "default_qemu_cpu")]
    pub qemu_cpu: String,
    /// Emulators the scenario can run on (default: both).
    #[serde(default = "both_emulators")]
    pub emulators: Vec<String>,
    /// Modules the image carries.
    #[serde(default, rename = "module")]
    pub modules: Vec<Module>,
    /// Words appended to a partition's command line on one emulator only:
    /// `[enclave_cmdline.qemu] linux = "…"` (for what that emulator cannot do the way hardware
    /// does, documented where it is used); in a scenario with a `machine` module, `host` names
    /// the root partition.
    #[serde(default)]
    pub enclave_cmdline: BTreeMap<String, BTreeMap<String, String>>,
    /// What the summary must say.
    #[serde(default)]
    pub expect: BTreeMap<String, toml::Value>,
    /// Test-only features of the atoll image the scenario needs (`fault-injection`); such an
    /// image is built apart, under `target/features/`.
    #[serde(default)]
    pub atoll_features: Vec<String>,
}

fn default_qemu_cpu() -> String {
    "max".into()
}

fn both_emulators() -> Vec<String> {
    vec!["qemu".into(), "bochs".into()]
}

fn default_cpus() -> u32 {
    2
}
fn default_memory() -> u32 {
    256
}

impl Scenario {
    /// Directory of scenario files.
    pub fn dir() -> PathBuf {
        crate::root().join("tests/scenarios")
    }

    /// Names of every scenario.
    pub fn names() -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(Self::dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.path()
                    .file_stem()
                    .filter(|_| e.path().extension().is_some_and(|x| x == "toml"))
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Loads and checks `tests/scenarios/NAME.toml`.
    pub fn load(name: &str) -> Result<Self> {
        let path = Self::dir().join(format!("{name}.toml"));
        if !path.exists() {
            bail!(
                "no scenario '{name}' (no file {}); scenarios: {}",
                path.display(),
                Self::names()?.join(", ")
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(name, &text).with_context(|| format!("scenario file {}", path.display()))
    }

    /// Parses scenario text.
    pub fn parse(name: &str, text: &str) -> Result<Self> {
        let mut s: Scenario = toml::from_str(text)?;
        s.name = name.to_string();
        let field = |key: &str| key.split('.').next().unwrap_or_default().to_string();
        for key in s.expect.keys() {
            if key != "qemu" && key != "bochs" && !SUMMARY_FIELDS.contains(&field(key).as_str()) {
                bail!(
                    "expect.{key}: not a summary field (known: {})",
                    SUMMARY_FIELDS.join(", ")
                );
            }
        }
        for emu in ["qemu", "bochs"] {
            if let Some(v) = s.expect.get(emu) {
                let table = v
                    .as_table()
                    .with_context(|| format!("expect.{emu} must be a table"))?;
                for key in table.keys() {
                    if !SUMMARY_FIELDS.contains(&field(key).as_str()) {
                        bail!("expect.{emu}.{key}: not a summary field");
                    }
                }
            }
        }
        for f in &s.atoll_features {
            if !crate::image::TEST_FEATURES.contains(&f.as_str()) {
                bail!(
                    "atoll_features: '{f}' is not a test feature of the image (known: {})",
                    crate::image::TEST_FEATURES.join(", ")
                );
            }
        }
        for e in &s.emulators {
            if e != "qemu" && e != "bochs" {
                bail!("emulators: '{e}' is not qemu or bochs");
            }
        }
        for m in &s.modules {
            if m.name.is_empty() || m.name.contains(char::is_whitespace) {
                bail!("module name '{}' must be one word", m.name);
            }
            let sources = usize::from(m.path.is_some())
                + usize::from(m.guest.is_some())
                + usize::from(m.linux.is_some());
            if sources != 1 {
                bail!(
                    "module '{}': give exactly one of path, guest or linux",
                    m.name
                );
            }
            if let Some(part) = m.linux {
                if let Some(other) = s
                    .modules
                    .iter()
                    .find(|o| o.name != m.name && o.linux == Some(part))
                {
                    bail!(
                        "modules '{}' and '{}' both hold the guest image's {part:?}",
                        m.name,
                        other.name
                    );
                }
            }
        }
        for (i, m) in s.modules.iter().enumerate() {
            if s.modules[..i].iter().any(|o| o.name == m.name) {
                bail!("module name '{}' is used twice", m.name);
            }
        }
        if s.native {
            s.native_parts()?;
            if !s.expect.is_empty() || !s.enclave_cmdline.is_empty() || !s.atoll_features.is_empty()
            {
                bail!(
                    "native: a scenario without atoll has no summary to expect of, no \
                     partitions and no atoll features"
                );
            }
        }
        Ok(s)
    }

    /// A native scenario's kernel and initramfs modules (exactly those two).
    pub fn native_parts(&self) -> Result<(&Module, &Module)> {
        let kernel = self.linux_module(LinuxPart::Kernel);
        let initrds: Vec<&Module> = self
            .modules
            .iter()
            .filter(|m| m.linux.is_some_and(|p| p != LinuxPart::Kernel))
            .collect();
        match (kernel, initrds.as_slice()) {
            (Some(k), [i]) if self.modules.len() == 2 => Ok((k, i)),
            _ => bail!(
                "native: the scenario boots Linux directly and takes exactly two modules, the \
                 guest image's kernel and one initramfs (initrd, host-initrd or bench-initrd)"
            ),
        }
    }

    /// The module holding `part` of the Linux guest image, if the scenario has one.
    pub fn linux_module(&self, part: LinuxPart) -> Option<&Module> {
        self.modules.iter().find(|m| m.linux == Some(part))
    }

    /// Whether the scenario runs on `emulator`.
    pub fn supports(&self, emulator: Emulator) -> bool {
        self.emulators.iter().any(|e| e == emulator.name())
    }

    /// The expectations that apply on `emulator`, with `$cpus` resolved.
    pub fn expectations(&self, emulator: Emulator, cpus: u32) -> Result<Vec<(String, Value)>> {
        let mut out = Vec::new();
        let mut add = |table: &BTreeMap<String, toml::Value>| -> Result<()> {
            for (k, v) in table {
                if k == "qemu" || k == "bochs" {
                    continue;
                }
                out.push((
                    k.clone(),
                    resolve(v, cpus).with_context(|| format!("expect.{k}"))?,
                ));
            }
            Ok(())
        };
        add(&self.expect)?;
        if let Some(toml::Value::Table(t)) = self.expect.get(emulator.name()) {
            let t: BTreeMap<String, toml::Value> = t.clone().into_iter().collect();
            add(&t)?;
        }
        Ok(out)
    }
}

/// Summary fields a scenario may name.
pub const SUMMARY_FIELDS: &[&str] = &[
    "ok",
    "problems",
    "cores_total",
    "cores_online",
    "missing_apic_ids",
    "cpu_vendor",
    "vmx",
    "ept",
    "unrestricted_guest",
    "vpid",
    "svm",
    "npt",
    "memory_usable_bytes",
    "dmar",
    "dmar_units",
    "ecam_windows",
    "modules",
    "enclaves",
    "cpu_virt",
    "host_interrupts_ok",
    "host",
    "dma_isolation",
    "allow_unsafe_dma",
    "iommu",
    "control",
];

/// A numeric comparison an expectation can ask for instead of equality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `>=`
    Ge,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `<`
    Lt,
}

impl Cmp {
    fn holds(self, got: f64, want: f64) -> bool {
        match self {
            Cmp::Ge => got >= want,
            Cmp::Le => got <= want,
            Cmp::Gt => got > want,
            Cmp::Lt => got < want,
        }
    }
}

/// The comparison an expectation string asks for (`">= 1"`, `"<100000"`): `None` for any
/// other value, which is compared for equality; `Some(Err)` for a string that starts like a
/// comparison but has no number after it.
pub fn comparison(want: &Value) -> Option<Result<(Cmp, f64)>> {
    let s = want.as_str()?.trim();
    // Two-character operators first, so ">=" is not read as ">" and "=…".
    let (op, rest) = [
        (">=", Cmp::Ge),
        ("<=", Cmp::Le),
        (">", Cmp::Gt),
        ("<", Cmp::Lt),
    ]
    .into_iter()
    .find_map(|(p, op)| s.strip_prefix(p).map(|r| (op, r)))?;
    Some(
        rest.trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(|n| (op, n))
            .with_context(|| format!("'{s}': expected a number after the comparison")),
    )
}

/// Turns a TOML expectation into JSON, resolving `"$cpus"` and `"$cpus+N"`.
fn resolve(v: &toml::Value, cpus: u32) -> Result<Value> {
    Ok(match v {
        toml::Value::String(s) if s.starts_with("$cpus") => {
            let extra = match s.strip_prefix("$cpus").unwrap_or_default() {
                "" => 0,
                rest => rest
                    .strip_prefix('+')
                    .and_then(|n| n.parse::<u32>().ok())
                    .with_context(|| format!("'{s}': expected $cpus or $cpus+N"))?,
            };
            Value::from(cpus + extra)
        }
        other => {
            let v = serde_json::to_value(other)?;
            if let Some(Err(e)) = comparison(&v) {
                return Err(e);
            }
            v
        }
    })
}

/// The value at a dotted path: object keys, array indices, or — in an array of objects — the
/// element whose `name` is the segment (`enclaves.alpha.end_reason`).
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| match cur {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => match seg.parse::<usize>() {
            Ok(i) => a.get(i),
            Err(_) => a
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(seg)),
        },
        _ => None,
    })
}

/// Compares `summary` with `expectations`; returns one line per mismatch.
pub fn check(summary: &Value, expectations: &[(String, Value)]) -> Vec<String> {
    expectations
        .iter()
        .filter_map(|(k, want)| {
            let got = lookup(summary, k).unwrap_or(&Value::Null);
            let met = match comparison(want) {
                Some(Ok((op, n))) => got.as_f64().is_some_and(|g| op.holds(g, n)),
                // Refused when the scenario was loaded; never met if it gets here.
                Some(Err(_)) => false,
                None => got == want,
            };
            let shown = match want {
                Value::String(s) if comparison(want).is_some() => s.clone(),
                _ => want.to_string(),
            };
            (!met).then(|| format!("{k}: expected {shown}, got {got}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOOT: &str = r#"
        description = "d"
        cmdline = "log=info"
        timeout_s = { qemu = 60, bochs = 600 }
        [expect]
        ok = true
        cores_online = "$cpus"
        cores_total = "$cpus+1"
        [expect.qemu]
        svm = true
        [expect.bochs]
        vmx = true
    "#;

    #[test]
    fn expectations_resolve_per_emulator() {
        let s = Scenario::parse("boot", BOOT).unwrap();
        let q = s.expectations(Emulator::Qemu, 4).unwrap();
        assert!(q.contains(&("cores_online".into(), json!(4))));
        assert!(q.contains(&("cores_total".into(), json!(5))));
        assert!(q.contains(&("svm".into(), json!(true))));
        assert!(!q.iter().any(|(k, _)| k == "vmx"));
        let b = s.expectations(Emulator::Bochs, 2).unwrap();
        assert!(b.contains(&("vmx".into(), json!(true))));
    }

    #[test]
    fn check_names_each_mismatch() {
        let exp = vec![
            ("ok".to_string(), json!(true)),
            ("cores_online".to_string(), json!(4)),
        ];
        assert!(check(&json!({"ok": true, "cores_online": 4}), &exp).is_empty());
        let bad = check(&json!({"ok": false, "cores_online": 3}), &exp);
        assert_eq!(
            bad,
            vec![
                "ok: expected true, got false",
                "cores_online: expected 4, got 3"
            ]
        );
        assert_eq!(
            check(&json!({}), &exp[..1]),
            vec!["ok: expected true, got null"]
        );
    }

    #[test]
    fn numbers_can_be_compared() {
        let s = json!({"host": {"refused_reads": 4, "name": "h"}, "n": 0.5});
        let exp = |k: &str, v: &str| vec![(k.to_string(), json!(v))];
        assert!(check(&s, &exp("host.refused_reads", ">= 1")).is_empty());
        assert!(check(&s, &exp("host.refused_reads", ">=4")).is_empty());
        assert!(check(&s, &exp("host.refused_reads", "> 3")).is_empty());
        assert!(check(&s, &exp("host.refused_reads", "<= 4")).is_empty());
        assert!(check(&s, &exp("host.refused_reads", "< 4.5")).is_empty());
        assert!(check(&s, &exp("n", "< 1")).is_empty());
        assert_eq!(
            check(&s, &exp("host.refused_reads", ">= 5")),
            ["host.refused_reads: expected >= 5, got 4"]
        );
        assert_eq!(check(&s, &exp("host.refused_reads", "< 4")).len(), 1);
        assert_eq!(check(&s, &exp("host.refused_reads", "> 4")).len(), 1);
        // Absent or not a number: not met.
        assert_eq!(
            check(&s, &exp("host.refused_writes", ">= 0")),
            ["host.refused_writes: expected >= 0, got null"]
        );
        assert_eq!(check(&s, &exp("host.name", ">= 0")).len(), 1);
        // Other strings are compared for equality.
        assert!(check(&s, &exp("host.name", "h")).is_empty());
        // A comparison without a number is refused when the scenario is read.
        let e = Scenario::parse(
            "x",
            "description='d'\ntimeout_s={qemu=1,bochs=1}\n[expect]\n'host.refused_reads'='>= lots'",
        )
        .unwrap()
        .expectations(Emulator::Qemu, 1)
        .unwrap_err();
        assert!(format!("{e:#}").contains("expected a number"), "{e:#}");
    }

    #[test]
    fn dotted_paths_reach_into_enclaves() {
        let s = json!({"enclaves": [{"name": "alpha", "end_reason": "exit", "results": {"ok": true}}, {"name": "beta"}]});
        assert_eq!(
            lookup(&s, "enclaves.alpha.end_reason"),
            Some(&json!("exit"))
        );
        assert_eq!(lookup(&s, "enclaves.0.results.ok"), Some(&json!(true)));
        assert_eq!(lookup(&s, "enclaves.gamma.end_reason"), None);
        let exp = vec![("enclaves.beta.end_reason".to_string(), json!("exit"))];
        assert_eq!(
            check(&s, &exp),
            vec!["enclaves.beta.end_reason: expected \"exit\", got null"]
        );
    }

    #[test]
    fn bad_scenarios_are_rejected_with_the_field() {
        let e = Scenario::parse(
            "x",
            "description='d'\ntimeout_s={qemu=1,bochs=1}\n[expect]\ncores = 2",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("expect.cores"), "{e:#}");
        let e = Scenario::parse("x", "description='d'\ntimeout_s={qemu=1,bochs=1}\nbogus=1")
            .unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let e = Scenario::parse(
            "x",
            "description='d'\ntimeout_s={qemu=1,bochs=1}\n[expect]\ncores_online='$cpus*2'",
        )
        .unwrap();
        assert!(e.expectations(Emulator::Qemu, 1).is_err());
    }

    #[test]
    fn linux_guest_image_modules() {
        let head = "description='d'\ntimeout_s={qemu=1,bochs=1}\n";
        let s = Scenario::parse(
            "x",
            &format!("{head}[[module]]\nname='vmlinuz'\nlinux='kernel'\n[[module]]\nname='initrd'\nlinux='initrd'"),
        )
        .unwrap();
        assert_eq!(s.linux_module(LinuxPart::Kernel).unwrap().name, "vmlinuz");
        assert_eq!(s.linux_module(LinuxPart::Initrd).unwrap().name, "initrd");
        let err = |body: &str| {
            format!(
                "{:#}",
                Scenario::parse("x", &format!("{head}{body}")).unwrap_err()
            )
        };
        assert!(err("[[module]]\nname='k'\nlinux='bzimage'").contains("unknown variant"));
        assert!(err("[[module]]\nname='k'\nlinux='kernel'\npath='x'")
            .contains("exactly one of path, guest or linux"));
        assert!(err("[[module]]\nname='k'").contains("exactly one of path, guest or linux"));
        assert!(
            err("[[module]]\nname='a'\nlinux='kernel'\n[[module]]\nname='b'\nlinux='kernel'")
                .contains("both hold")
        );
        assert!(
            err("[[module]]\nname='a'\nlinux='kernel'\n[[module]]\nname='a'\nlinux='initrd'")
                .contains("used twice")
        );
        let s = Scenario::load("linux-enclave").unwrap();
        assert!(s.linux_module(LinuxPart::Kernel).is_some());
        assert!(s.linux_module(LinuxPart::Initrd).is_some());
        assert!(Scenario::load("boot")
            .unwrap()
            .linux_module(LinuxPart::Kernel)
            .is_none());
    }

    #[test]
    fn native_scenarios_boot_a_kernel_and_one_initramfs() {
        let head = "description='d'\nnative=true\ntimeout_s={qemu=1,bochs=1}\n";
        let k = "[[module]]\nname='vmlinuz'\nlinux='kernel'\n";
        let s = Scenario::parse(
            "x",
            &format!("{head}{k}[[module]]\nname='initrd'\nlinux='bench-initrd'"),
        )
        .unwrap();
        let (kernel, initrd) = s.native_parts().unwrap();
        assert_eq!(
            (kernel.name.as_str(), initrd.name.as_str()),
            ("vmlinuz", "initrd")
        );
        assert_eq!(initrd.linux, Some(LinuxPart::BenchInitrd));
        let err = |body: &str| {
            format!(
                "{:#}",
                Scenario::parse("x", &format!("{head}{body}")).unwrap_err()
            )
        };
        assert!(err(k).contains("exactly two modules"), "no initramfs");
        assert!(err(&format!(
            "{k}[[module]]\nname='i'\nlinux='initrd'\n[[module]]\nname='c'\npath='x.toml'"
        ))
        .contains("exactly two modules"));
        assert!(err(&format!(
            "{k}[[module]]\nname='i'\nlinux='initrd'\n[expect]\nok=true"
        ))
        .contains("no summary"));
    }

    #[test]
    fn shipped_scenarios_parse() {
        for name in Scenario::names().unwrap() {
            let s = Scenario::load(&name).unwrap();
            s.expectations(Emulator::Qemu, s.cpus).unwrap();
            s.expectations(Emulator::Bochs, s.cpus).unwrap();
            for path in s.modules.iter().filter_map(|m| m.path.as_ref()) {
                assert!(
                    crate::root().join(path).exists(),
                    "{name}: module file {} missing",
                    path.display()
                );
            }
            // Enclave descriptions must pass atoll's own checks on the scenario's machine.
            crate::image::check_enclaves(&s, Some(s.cpus))
                .unwrap_or_else(|e| panic!("scenario {name}: {e:#}"));
        }
    }

    #[test]
    fn test_features_are_checked() {
        let base = "description = 'x'\ntimeout_s = { qemu = 1, bochs = 1 }\n";
        let s =
            Scenario::parse("f", &format!("{base}atoll_features = ['fault-injection']")).unwrap();
        assert_eq!(s.atoll_features, ["fault-injection"]);
        let e = Scenario::parse("f", &format!("{base}atoll_features = ['turbo']")).unwrap_err();
        assert!(
            format!("{e:#}").contains("'turbo' is not a test feature"),
            "{e:#}"
        );
        assert!(Scenario::parse("f", base)
            .unwrap()
            .atoll_features
            .is_empty());
    }
}
