//! The PCI functions an enclave description passes through, as `atoll create` readies them.
//!
//! A description names functions two ways:
//!
//! ```toml
//! devices = ["0000:01:00.1"]                  # functions by address
//! vf = { pf = "0000:01:00.0", index = 0 }     # an SR-IOV VF by its PF and index
//! # or: vf = [{ pf = "0000:01:00.0", index = 0 }, { pf = "0000:01:00.0", index = 1 }]
//! ```
//!
//! atoll parses `devices` only, so the command resolves each `vf` through the PF's
//! `virtfnN` link and sends atoll one `devices` list (the addresses first, then the VFs) with
//! no `vf`. Before the request, every function is kept from the host's drivers and unbound
//! from the one it has ([`Sysfs::take_from_host`]), which the command prints
//! (`unbound 0000:01:10.0 from igbvf`). `atoll destroy` does not bind it again: the host gets
//! it back by writing an empty line to its `driver_override` (and probing, if it wants it).

use crate::client::{Error, Result};
use crate::cpus::Root;
use crate::pci::{PciAddress, Sysfs};
use atoll_abi::control::MAX_DESCRIPTION;
use std::io::Write;
use std::path::Path;

/// A function a description names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRef {
    /// By address (`devices`).
    Function(PciAddress),
    /// A PF's virtual function (`vf`).
    Vf {
        /// The physical function.
        pf: PciAddress,
        /// The VF's index on it (`virtfnN`).
        index: u32,
    },
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Other(format!("{}: {what}", path.display()))
}

/// Reads `devices` and `vf` of one enclave's table (checks types and addresses only; atoll
/// checks the rest).
pub fn parse(path: &Path, t: &toml::Table) -> Result<Vec<DeviceRef>> {
    let mut refs = Vec::new();
    match t.get("devices") {
        None => {}
        Some(toml::Value::Array(a)) => {
            for (k, v) in a.iter().enumerate() {
                let s = v
                    .as_str()
                    .ok_or_else(|| bad(path, format!("field devices[{k}]: not a string")))?;
                let a = s
                    .parse::<PciAddress>()
                    .map_err(|e| bad(path, format!("field devices[{k}]: {e}")))?;
                refs.push(DeviceRef::Function(a));
            }
        }
        Some(_) => {
            return Err(bad(
                path,
                "field devices: not a list of PCI addresses (\"0000:01:00.1\")",
            ))
        }
    }
    let vfs: Vec<(String, &toml::Table)> = match t.get("vf") {
        None => Vec::new(),
        Some(toml::Value::Table(v)) => vec![("vf".into(), v)],
        Some(toml::Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(k, v)| {
                v.as_table()
                    .map(|v| (format!("vf[{k}]"), v))
                    .ok_or_else(|| bad(path, format!("field vf[{k}]: not a table {{ pf, index }}")))
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(bad(
                path,
                "field vf: not a table { pf = \"SSSS:BB:DD.F\", index = N } or a list of them",
            ))
        }
    };
    for (f, v) in vfs {
        if let Some(k) = v.keys().find(|k| *k != "pf" && *k != "index") {
            return Err(bad(path, format!("field {f}.{k}: unknown (pf, index)")));
        }
        let pf = v
            .get("pf")
            .ok_or_else(|| bad(path, format!("field {f}.pf: missing")))?
            .as_str()
            .ok_or_else(|| bad(path, format!("field {f}.pf: not a string")))?
            .parse::<PciAddress>()
            .map_err(|e| bad(path, format!("field {f}.pf: {e}")))?;
        let index = v
            .get("index")
            .ok_or_else(|| bad(path, format!("field {f}.index: missing")))?
            .as_integer()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad(path, format!("field {f}.index: not a VF index (0, 1, …)")))?;
        refs.push(DeviceRef::Vf { pf, index });
    }
    Ok(refs)
}

/// The addresses of `refs`, each VF through its PF's `virtfnN` link.
pub fn resolve(sys: &Sysfs<'_>, refs: &[DeviceRef]) -> Result<Vec<PciAddress>> {
    refs.iter()
        .map(|r| match *r {
            DeviceRef::Function(a) => Ok(a),
            DeviceRef::Vf { pf, index } => sys.virtfn(pf, index)?.ok_or_else(|| {
                Error::Other(format!(
                    "{pf} has no VF {index}: run atoll vf {pf} --count {} first",
                    u64::from(index) + 1
                ))
            }),
        })
        .collect()
}

/// `text` (one enclave's table) with `vf` gone and `devices` the addresses.
pub fn rewrite(path: &Path, text: &str, devices: &[PciAddress]) -> Result<String> {
    let mut t: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(path, e.message().trim()))?;
    t.remove("vf");
    t.insert(
        "devices".into(),
        toml::Value::Array(
            devices
                .iter()
                .map(|a| toml::Value::String(a.to_string()))
                .collect(),
        ),
    );
    let s = toml::to_string(&t).map_err(|e| bad(path, e))?;
    if s.len() > MAX_DESCRIPTION {
        return Err(bad(path, format!("longer than {MAX_DESCRIPTION} bytes")));
    }
    Ok(s)
}

/// Readies the functions of a description for atoll: resolves them, keeps the host's drivers
/// off them and unbinds the bound ones (printed on `log`). Returns the addresses and the
/// description atoll gets (`text` unchanged when it names no function).
pub fn prepare(
    root: &Root,
    path: &Path,
    text: &str,
    refs: &[DeviceRef],
    log: &mut dyn Write,
) -> Result<(Vec<PciAddress>, String)> {
    if refs.is_empty() {
        return Ok((Vec::new(), text.to_string()));
    }
    let mut sys = Sysfs::new(root);
    let devices = resolve(&sys, refs)?;
    let text = rewrite(path, text, &devices)?;
    for &a in &devices {
        if !sys.exists(a) {
            // The host's Linux never saw it (or it is hidden): atoll decides, with its reason.
            let _ = writeln!(
                log,
                "{a} is not in the host's /sys/bus/pci/devices: leaving it to atoll"
            );
            continue;
        }
        if let Some(driver) = sys.take_from_host(a)? {
            let _ = writeln!(log, "unbound {a} from {driver}");
        }
    }
    Ok((devices, text))
}
