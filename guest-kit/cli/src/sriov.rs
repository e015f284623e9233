//! `atoll vf PF --count N [--mac MAC ...]`: readies an SR-IOV physical function's virtual
//! functions for enclaves, the host-side steps of passing a VF through, idempotently:
//!
//! 1. the PF exists, has a host driver (it enables the VFs and answers their mailbox) and
//!    offers at least N VFs (`sriov_totalvfs`);
//! 2. `sriov_drivers_autoprobe` is 0 before VFs appear, so no host driver binds them;
//! 3. `sriov_numvfs` becomes N: 0 first if another count is set (the kernel refuses to
//!    change a non-zero count directly), nothing if N is set already; refused while a VF
//!    `atoll create` gave to an enclave exists (its `driver_override` is `none`), since
//!    removing VFs would pull it from under the enclave;
//! 4. the PF's network interface is up: the NIC's VF↔PF switch and the VF mailbox (the VF
//!    driver's reset handshake, its MAC) work only while the PF driver runs;
//! 5. each VF gets its MAC through rtnetlink ([`crate::netlink`]), before an enclave's VF
//!    driver starts (a VF driver reads it at probe).
//!
//! Default MACs are [`default_mac`]: `02:a7:BB:DD:FF:II`, locally administered and unicast
//! (`02`), `a7` for atoll, then the PF's bus, device and function and the VF index. They are
//! unique on one host, not across hosts whose PFs sit at the same address, nor across PCI
//! segments: give `--mac` (once per VF) for VFs that reach a shared network.

use crate::client::{Error, Result};
use crate::commands::print_json;
use crate::cpus::Root;
use crate::enclave::table;
use crate::netlink::{Mac, Net, IFF_UP};
use crate::pci::{PciAddress, Sysfs};
use serde::Serialize;
use std::io::Write;

/// What `atoll vf` was asked.
#[derive(Clone, Debug)]
pub struct VfArgs {
    /// The physical function.
    pub pf: PciAddress,
    /// How many VFs.
    pub count: u32,
    /// Their MACs (none: [`default_mac`]; else one per VF).
    pub macs: Vec<Mac>,
}

/// One VF as `atoll vf` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VfRow {
    /// Its index on the PF.
    pub index: u32,
    /// Its PCI address.
    pub address: String,
    /// The MAC set.
    pub mac: String,
    /// The host driver bound to it, or "none".
    pub driver: String,
}

/// The report: the steps taken (or found done) and the VFs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VfDoc {
    /// The PF's address.
    pub pf: String,
    /// The PF's network interface (empty for `--count 0`).
    pub interface: String,
    /// Each step, as printed.
    pub steps: Vec<String>,
    /// The VFs.
    pub vfs: Vec<VfRow>,
}

/// The MAC `atoll vf` gives VF `index` of `pf` without `--mac`: `02:a7:BB:DD:FF:II`.
pub fn default_mac(pf: PciAddress, index: u32) -> Result<Mac> {
    let i = u8::try_from(index).map_err(|_| {
        Error::Other(format!(
            "VF {index}: default MACs number VFs 0 to 255; give --mac for each VF"
        ))
    })?;
    Ok(Mac([0x02, 0xa7, pf.bus, pf.device, pf.function, i]))
}

fn step(steps: &mut Vec<String>, log: &mut dyn Write, s: String) {
    let _ = writeln!(log, "{s}");
    steps.push(s);
}

/// Carries out the steps on `sys` and `net`, printing each on `log`.
pub fn prepare(
    sys: &mut Sysfs<'_>,
    net: &mut dyn Net,
    a: &VfArgs,
    log: &mut dyn Write,
) -> Result<VfDoc> {
    let pf = a.pf;
    let fail = |s: String| Err(Error::Other(format!("{pf}: {s}")));
    if !a.macs.is_empty() && a.macs.len() != a.count as usize {
        return fail(format!(
            "{} --mac for {} VFs: give one per VF, or none for the default MACs",
            a.macs.len(),
            a.count
        ));
    }
    if let Some((i, m)) = a
        .macs
        .iter()
        .enumerate()
        .find(|(i, m)| a.macs[..*i].contains(m))
    {
        return fail(format!("--mac {m} is given twice (VF {i})"));
    }
    if !sys.exists(pf) {
        return fail(format!(
            "no such PCI function in the host ({} is missing)",
            sys.function(pf).display()
        ));
    }
    let Some(total) = sys.read_number(pf, "sriov_totalvfs")? else {
        return fail("not an SR-IOV physical function (no sriov_totalvfs)".into());
    };
    if u64::from(a.count) > total {
        return fail(format!(
            "has at most {total} virtual functions (sriov_totalvfs); --count {} is too many",
            a.count
        ));
    }
    let Some(pf_driver) = sys.driver(pf) else {
        return fail(
            "no host driver is bound: the PF's driver (igb for an 82576) enables the VFs and \
             serves their mailbox; load it first"
                .into(),
        );
    };
    let mut steps = Vec::new();
    let autoprobe = sys.read(pf, "sriov_drivers_autoprobe")?;
    match autoprobe.as_deref() {
        None => return fail("no sriov_drivers_autoprobe (a kernel before 4.12?)".into()),
        Some("0") => step(
            &mut steps,
            log,
            format!("{pf}: sriov_drivers_autoprobe already 0"),
        ),
        Some(v) => {
            sys.write(pf, "sriov_drivers_autoprobe", "0")?;
            step(
                &mut steps,
                log,
                format!("{pf}: sriov_drivers_autoprobe {v} -> 0 (no host driver probes new VFs)"),
            );
        }
    }
    let Some(numvfs) = sys.read_number(pf, "sriov_numvfs")? else {
        return fail("no sriov_numvfs".into());
    };
    if numvfs == u64::from(a.count) {
        step(
            &mut steps,
            log,
            format!("{pf}: sriov_numvfs already {numvfs}"),
        );
    } else {
        if numvfs != 0 {
            // Removing VFs takes them from whoever has them: refuse while one is an
            // enclave's (`atoll create` set its driver_override to none).
            for k in 0..u32::try_from(numvfs).unwrap_or(u32::MAX) {
                let Some(vf) = sys.virtfn(pf, k)? else { break };
                if sys.read(vf, "driver_override")?.as_deref() == Some("none") {
                    return fail(format!(
                        "VF {k} ({vf}) was given to an enclave (its driver_override is none), \
                         and changing sriov_numvfs removes it: destroy that enclave, then write \
                         an empty line to {}",
                        sys.function(vf).join("driver_override").display()
                    ));
                }
            }
            sys.write(pf, "sriov_numvfs", "0")?;
        }
        if a.count != 0 {
            sys.write(pf, "sriov_numvfs", &a.count.to_string())?;
        }
        step(
            &mut steps,
            log,
            format!("{pf}: sriov_numvfs {numvfs} -> {} ({pf_driver})", a.count),
        );
    }
    let mut doc = VfDoc {
        pf: pf.to_string(),
        interface: String::new(),
        steps: Vec::new(),
        vfs: Vec::new(),
    };
    if a.count == 0 {
        doc.steps = steps;
        return Ok(doc);
    }
    let ifs = sys.interfaces(pf);
    let Some(ifname) = ifs.first().cloned() else {
        return fail(format!(
            "no network interface in {}/net (is {pf_driver} a network driver?)",
            sys.function(pf).display()
        ));
    };
    let ifindex = sys.interface_attr(pf, &ifname, "ifindex")?;
    let ifindex = u32::try_from(ifindex)
        .map_err(|_| Error::Other(format!("{ifname}: ifindex {ifindex} out of range")))?;
    let flags = sys.interface_attr(pf, &ifname, "flags")?;
    if flags & u64::from(IFF_UP) != 0 {
        step(&mut steps, log, format!("{ifname}: already up"));
    } else {
        net.set_up(ifindex)?;
        step(
            &mut steps,
            log,
            format!("{ifname}: set up (the VFs' switch and mailbox need the PF up)"),
        );
    }
    for index in 0..a.count {
        let vf = sys.virtfn(pf, index)?.ok_or_else(|| {
            Error::Other(format!(
                "{pf}: no virtfn{index} with sriov_numvfs {} (the kernel did not create it)",
                a.count
            ))
        })?;
        let mac = match a.macs.get(index as usize) {
            Some(m) => *m,
            None => default_mac(pf, index)?,
        };
        net.set_vf_mac(ifindex, index, mac)?;
        step(
            &mut steps,
            log,
            format!("{ifname}: VF {index} ({vf}) MAC {mac}"),
        );
        doc.vfs.push(VfRow {
            index,
            address: vf.to_string(),
            mac: mac.to_string(),
            driver: sys.driver(vf).unwrap_or_else(|| "none".into()),
        });
    }
    doc.interface = ifname;
    doc.steps = steps;
    Ok(doc)
}

/// `atoll vf`: the steps on `err`, the VFs as a table (or the whole report as JSON) on `out`.
pub fn vf(
    root: &Root,
    net: &mut dyn Net,
    a: &VfArgs,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let mut sys = Sysfs::new(root);
    let doc = prepare(&mut sys, net, a, err)?;
    if json {
        return print_json(out, &doc);
    }
    let rows: Vec<Vec<String>> = doc
        .vfs
        .iter()
        .map(|v| {
            vec![
                v.index.to_string(),
                v.address.clone(),
                v.mac.clone(),
                v.driver.clone(),
            ]
        })
        .collect();
    out.write_all(table(&["INDEX", "VF", "MAC", "DRIVER"], &rows).as_bytes())
        .map_err(|e| Error::io("stdout", e))
}
