//! Host tests of `atoll vf`, of the functions `atoll create` passes through, and of the
//! rtnetlink encoding, against a fake sysfs tree.

use crate::client::{self, Result};
use crate::cpus::Root;
use crate::fake::Fake;
use crate::netlink::{self, Ack, Mac, Net};
use crate::passthrough::{self, DeviceRef};
use crate::pci::{PciAddress, Sysfs};
use crate::sriov::{self, VfArgs};
use crate::tests::{run_in, Out, TempDir};
use crate::{run, Env};
use atoll_abi::control::Kind;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Records the link changes instead of making them; refuses VF MACs with `refuse_mac`.
#[derive(Default)]
pub(crate) struct FakeNet {
    pub(crate) calls: Vec<String>,
    pub(crate) refuse_mac: Option<i32>,
}

impl Net for FakeNet {
    fn set_up(&mut self, ifindex: u32) -> Result<()> {
        self.calls.push(format!("up {ifindex}"));
        Ok(())
    }
    fn set_vf_mac(&mut self, ifindex: u32, vf: u32, mac: Mac) -> Result<()> {
        self.calls.push(format!("vf-mac {ifindex} {vf} {mac}"));
        match self.refuse_mac {
            Some(errno) => netlink::check(
                &format!("setting VF {vf}'s MAC to {mac}"),
                Ack::Refused {
                    errno,
                    message: None,
                },
            ),
            None => Ok(()),
        }
    }
}

const PF: &str = "0000:01:00.0";

fn pci(a: &str) -> PciAddress {
    PciAddress::parse(a).unwrap()
}

/// A fake `/sys`: functions, drivers (with an `unbind` file), a PF's SR-IOV files.
struct FakeSys {
    dir: TempDir,
}

impl FakeSys {
    fn new() -> FakeSys {
        FakeSys {
            dir: TempDir::new(),
        }
    }
    fn root(&self) -> Root {
        Root(self.dir.0.clone())
    }
    fn devices(&self) -> PathBuf {
        self.dir.0.join("sys/bus/pci/devices")
    }
    fn file(&self, rel: &str) -> PathBuf {
        self.devices().join(rel)
    }
    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.file(rel)).unwrap()
    }
    /// A function, with a `driver_override` (empty, as the kernel shows it unset).
    fn function(&self, a: &str, driver: Option<&str>) {
        let d = self.devices().join(a);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("driver_override"), "(null)\n").unwrap();
        if let Some(drv) = driver {
            self.bind(a, drv);
        }
    }
    /// Binds `a` to `drv` (the kernel's `driver` link).
    fn bind(&self, a: &str, drv: &str) {
        let dd = self.dir.0.join("sys/bus/pci/drivers").join(drv);
        fs::create_dir_all(&dd).unwrap();
        fs::write(dd.join("unbind"), "").unwrap();
        symlink(format!("../../drivers/{drv}"), self.file(a).join("driver")).unwrap();
    }
    /// A PF bound to igb with interface eth0 (ifindex 2, `flags`), `vfs` VFs at 01:10.x.
    fn pf(&self, total: u32, numvfs: u32, autoprobe: u32, flags: &str, vfs: u32) {
        self.function(PF, Some("igb"));
        let d = self.devices().join(PF);
        fs::write(d.join("sriov_totalvfs"), format!("{total}\n")).unwrap();
        fs::write(d.join("sriov_numvfs"), format!("{numvfs}\n")).unwrap();
        fs::write(d.join("sriov_drivers_autoprobe"), format!("{autoprobe}\n")).unwrap();
        fs::create_dir_all(d.join("net/eth0")).unwrap();
        fs::write(d.join("net/eth0/ifindex"), "2\n").unwrap();
        fs::write(d.join("net/eth0/flags"), format!("{flags}\n")).unwrap();
        for i in 0..vfs {
            let vf = format!("0000:01:10.{i}");
            self.function(&vf, None);
            symlink(format!("../{vf}"), d.join(format!("virtfn{i}"))).unwrap();
        }
    }
}

fn args(count: u32, macs: &[&str]) -> VfArgs {
    VfArgs {
        pf: pci(PF),
        count,
        macs: macs.iter().map(|m| m.parse().unwrap()).collect(),
    }
}

/// Runs `prepare`; returns its result, the sysfs writes and the link changes.
fn prepare(fs: &FakeSys, a: &VfArgs) -> (Result<sriov::VfDoc>, Vec<(String, String)>, Vec<String>) {
    let root = fs.root();
    let mut sys = Sysfs::new(&root);
    let mut net = FakeNet::default();
    let mut log = Vec::new();
    let r = sriov::prepare(&mut sys, &mut net, a, &mut log);
    if let Ok(d) = &r {
        assert_eq!(String::from_utf8(log).unwrap(), d.steps.join("\n") + "\n");
    }
    (r, sys.writes, net.calls)
}

fn w(path: &str, v: &str) -> (String, String) {
    (path.to_string(), v.to_string())
}

#[test]
fn pci_addresses_parse_in_both_forms_and_print_as_sysfs_names_them() {
    assert_eq!(pci("01:00.0").to_string(), "0000:01:00.0");
    assert_eq!(pci("0001:a0:1f.7").to_string(), "0001:a0:1f.7");
    assert_eq!(pci("0000:01:00.0"), pci("01:00.0"));
    for bad in [
        "",
        "01:00",
        "1:2:3:4.0",
        "00:20.0",
        "00:1f.8",
        "+1:00.0",
        "01:00.0.1",
        "g0:00.0",
        "10000:00:00.0",
        "01:00.-1",
    ] {
        assert!(PciAddress::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn macs_parse_only_as_unicast_addresses() {
    let m: Mac = "52:54:00:AA:00:01".parse().unwrap();
    assert_eq!(m.0, [0x52, 0x54, 0, 0xaa, 0, 1]);
    assert_eq!(m.to_string(), "52:54:00:aa:00:01");
    for bad in [
        "52:54:00:aa:00",
        "52:54:00:aa:00:01:02",
        "52-54-00-aa-00-01",
        "5:54:00:aa:00:01",
        "zz:54:00:aa:00:01",
        "+5:54:00:aa:00:01",
    ] {
        assert!(
            bad.parse::<Mac>().unwrap_err().contains("not a MAC"),
            "{bad}"
        );
    }
    for not_own in [
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
    ] {
        assert!(
            not_own
                .parse::<Mac>()
                .unwrap_err()
                .contains("not a unicast"),
            "{not_own}"
        );
    }
}

#[test]
fn default_macs_are_local_unicast_from_the_pf_address_and_index() {
    let m = sriov::default_mac(pci("0000:3b:02.1"), 5).unwrap();
    assert_eq!(m.to_string(), "02:a7:3b:02:01:05");
    assert!(m.is_unicast() && m.0[0] & 2 != 0, "locally administered");
    assert_ne!(
        sriov::default_mac(pci(PF), 0).unwrap(),
        sriov::default_mac(pci(PF), 1).unwrap()
    );
    assert!(sriov::default_mac(pci(PF), 256).is_err());
}

#[test]
fn a_missing_pf_is_a_clear_error() {
    let fs = FakeSys::new();
    let (r, writes, calls) = prepare(&fs, &args(1, &[]));
    let e = r.unwrap_err().to_string();
    assert!(
        e.starts_with("0000:01:00.0: no such PCI function in the host"),
        "{e}"
    );
    assert!(writes.is_empty() && calls.is_empty());
}

#[test]
fn a_function_without_sriov_or_driver_is_refused() {
    let fs = FakeSys::new();
    fs.function(PF, Some("igb"));
    let (r, writes, _) = prepare(&fs, &args(1, &[]));
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("not an SR-IOV physical function"));
    assert!(writes.is_empty());

    let fs = FakeSys::new();
    fs.pf(7, 0, 1, "0x1003", 0);
    fs::remove_file(fs.file(&format!("{PF}/driver"))).unwrap();
    let (r, writes, _) = prepare(&fs, &args(1, &[]));
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("no host driver is bound"));
    assert!(writes.is_empty());
}

#[test]
fn too_few_vfs_on_the_pf_is_refused_before_any_write() {
    let fs = FakeSys::new();
    fs.pf(2, 0, 1, "0x1002", 0);
    let (r, writes, calls) = prepare(&fs, &args(3, &[]));
    let e = r.unwrap_err().to_string();
    assert_eq!(
        e,
        "0000:01:00.0: has at most 2 virtual functions (sriov_totalvfs); --count 3 is too many"
    );
    assert!(writes.is_empty() && calls.is_empty());
    assert_eq!(fs.read(&format!("{PF}/sriov_drivers_autoprobe")), "1\n");
}

#[test]
fn autoprobe_goes_to_0_before_the_vfs_are_enabled() {
    let fs = FakeSys::new();
    fs.pf(7, 0, 1, "0x1002", 2);
    let (r, writes, calls) = prepare(&fs, &args(2, &[]));
    let d = r.unwrap();
    // From 0 VFs no extra 0 is written.
    assert_eq!(
        writes,
        [
            w("0000:01:00.0/sriov_drivers_autoprobe", "0"),
            w("0000:01:00.0/sriov_numvfs", "2"),
        ]
    );
    assert_eq!(fs.read(&format!("{PF}/sriov_drivers_autoprobe")), "0");
    assert_eq!(fs.read(&format!("{PF}/sriov_numvfs")), "2");
    // The PF was down (flags 0x1002): set up before the MACs.
    assert_eq!(
        calls,
        [
            "up 2",
            "vf-mac 2 0 02:a7:01:00:00:00",
            "vf-mac 2 1 02:a7:01:00:00:01"
        ]
    );
    assert_eq!(d.interface, "eth0");
    assert_eq!(d.vfs.len(), 2);
    assert_eq!(d.vfs[1].address, "0000:01:10.1");
    assert_eq!(d.vfs[1].driver, "none");
}

#[test]
fn another_vf_count_is_changed_through_0() {
    let fs = FakeSys::new();
    fs.pf(7, 2, 0, "0x1003", 3);
    let (r, writes, calls) = prepare(&fs, &args(3, &[]));
    r.unwrap();
    assert_eq!(
        writes,
        [
            w("0000:01:00.0/sriov_numvfs", "0"),
            w("0000:01:00.0/sriov_numvfs", "3"),
        ]
    );
    assert_eq!(fs.read(&format!("{PF}/sriov_numvfs")), "3");
    // Up already (IFF_UP in 0x1003): no link change but the MACs.
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.starts_with("vf-mac 2 ")));
}

#[test]
fn a_pf_already_ready_gets_no_write_but_the_macs_again() {
    let fs = FakeSys::new();
    fs.pf(7, 2, 0, "0x1003", 2);
    fs.bind("0000:01:10.1", "igbvf");
    let (r, writes, calls) = prepare(&fs, &args(2, &["52:54:00:aa:00:01", "52:54:00:aa:00:02"]));
    let d = r.unwrap();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(
        calls,
        [
            "vf-mac 2 0 52:54:00:aa:00:01",
            "vf-mac 2 1 52:54:00:aa:00:02"
        ]
    );
    assert_eq!(d.vfs[1].driver, "igbvf");
    assert!(d.steps[0].contains("sriov_drivers_autoprobe already 0"));
    assert!(d.steps[1].contains("sriov_numvfs already 2"));
    assert!(d.steps[2].contains("eth0: already up"));
}

#[test]
fn count_0_disables_the_vfs_and_sets_no_link() {
    let fs = FakeSys::new();
    fs.pf(7, 2, 0, "0x1002", 2);
    let (r, writes, calls) = prepare(&fs, &args(0, &[]));
    assert!(r.unwrap().vfs.is_empty());
    assert_eq!(writes, [w("0000:01:00.0/sriov_numvfs", "0")]);
    assert!(calls.is_empty());
}

#[test]
fn vfs_an_enclave_has_are_not_removed() {
    let fs = FakeSys::new();
    fs.pf(7, 2, 0, "0x1003", 2);
    fs::write(fs.file("0000:01:10.1/driver_override"), "none\n").unwrap();
    let (r, writes, calls) = prepare(&fs, &args(3, &[]));
    let e = r.unwrap_err().to_string();
    assert!(
        e.starts_with("0000:01:00.0: VF 1 (0000:01:10.1) was given to an enclave"),
        "{e}"
    );
    assert!(writes.is_empty() && calls.is_empty());
    // Keeping the count is fine: the MACs are set again (before the enclave's driver reads it).
    let (r, writes, _) = prepare(&fs, &args(2, &[]));
    r.unwrap();
    assert!(writes.is_empty());
}

#[test]
fn macs_must_be_one_per_vf_and_distinct() {
    let fs = FakeSys::new();
    fs.pf(7, 0, 1, "0x1003", 2);
    let (r, writes, _) = prepare(&fs, &args(2, &["52:54:00:aa:00:01"]));
    assert!(r.unwrap_err().to_string().contains("1 --mac for 2 VFs"));
    let (r, _, _) = prepare(&fs, &args(2, &["52:54:00:aa:00:01", "52:54:00:aa:00:01"]));
    assert!(r.unwrap_err().to_string().contains("given twice (VF 1)"));
    assert!(writes.is_empty());
}

#[test]
fn a_missing_virtfn_link_is_reported() {
    let fs = FakeSys::new();
    fs.pf(7, 0, 0, "0x1003", 1);
    let (r, _, _) = prepare(&fs, &args(2, &[]));
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("no virtfn1 with sriov_numvfs 2"));
}

/// Runs `atoll ARGS` with `net`, a channel that must not be used, and `fs` as the root.
fn run_vf(fs: &FakeSys, net: &mut FakeNet, argv: &[&str]) -> Out {
    let mut connect = || -> client::Result<Box<dyn client::Channel>> {
        Err(client::Error::Other("vf must not connect to atoll".into()))
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut env = Env {
        connect: &mut connect,
        out: &mut out,
        err: &mut err,
        root: fs.root(),
        input: None,
        stderr_tty: false,
        poll: Duration::from_millis(1),
        rate_gap: Duration::from_millis(1),
        seq: 0,
        net,
        channeld: &mut |_: &str| Ok(()),
    };
    let mut a = vec!["atoll"];
    a.extend_from_slice(argv);
    let code = run(a, &mut env);
    Out {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

#[test]
fn vf_prints_steps_a_table_and_json() {
    let fs = FakeSys::new();
    fs.pf(7, 0, 1, "0x1002", 2);
    let mut net = FakeNet::default();
    let o = run_vf(
        &fs,
        &mut net,
        &[
            "vf",
            "01:00.0",
            "--count",
            "2",
            "--mac",
            "52:54:00:aa:00:01",
            "--mac",
            "52:54:00:aa:00:02",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    let lines: Vec<&str> = o.out.lines().collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        [
            vec!["INDEX", "VF", "MAC", "DRIVER"],
            vec!["0", "0000:01:10.0", "52:54:00:aa:00:01", "none"],
            vec!["1", "0000:01:10.1", "52:54:00:aa:00:02", "none"],
        ]
    );
    let steps: Vec<&str> = o.err.lines().collect();
    assert_eq!(steps.len(), 5, "{}", o.err);
    assert!(steps[0].starts_with("0000:01:00.0: sriov_drivers_autoprobe 1 -> 0"));
    assert!(steps[1].starts_with("0000:01:00.0: sriov_numvfs 0 -> 2"));
    assert!(steps[2].starts_with("eth0: set up"));
    assert_eq!(steps[4], "eth0: VF 1 (0000:01:10.1) MAC 52:54:00:aa:00:02");

    // Again, as JSON: everything is in place now, only the MACs are set again.
    let mut net = FakeNet::default();
    fs::write(fs.file(&format!("{PF}/net/eth0/flags")), "0x1003\n").unwrap();
    let o = run_vf(&fs, &mut net, &["vf", PF, "--count", "2", "--json"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["pf"], PF);
    assert_eq!(v["interface"], "eth0");
    assert_eq!(v["vfs"][0]["address"], "0000:01:10.0");
    assert_eq!(v["vfs"][1]["mac"], "02:a7:01:00:00:01");
    assert_eq!(v["vfs"][1]["driver"], "none");
    assert_eq!(v["steps"].as_array().unwrap().len(), 5);
    assert_eq!(net.calls.len(), 2);
}

#[test]
fn vf_usage_errors_and_kernel_refusals() {
    let fs = FakeSys::new();
    fs.pf(7, 0, 1, "0x1003", 1);
    let mut net = FakeNet::default();
    for bad in [
        vec!["vf", "01:00", "--count", "1"],
        vec!["vf", PF, "--count", "1", "--mac", "01:00:5e:00:00:01"],
        vec!["vf", PF, "--count", "1", "--mac", "52:54:00"],
        vec!["vf", PF],
    ] {
        let o = run_vf(&fs, &mut net, &bad);
        assert_eq!(o.code, 2, "{bad:?}: {}", o.err);
    }
    assert!(net.calls.is_empty());
    // EOPNOTSUPP from the kernel (a PF driver without VF MACs) is named.
    let mut net = FakeNet {
        refuse_mac: Some(libc::EOPNOTSUPP),
        ..FakeNet::default()
    };
    let o = run_vf(&fs, &mut net, &["vf", PF, "--count", "1"]);
    assert_eq!(o.code, 1);
    assert!(
        o.err.contains("atoll: setting VF 0's MAC to 02:a7:01:00:00:00: the kernel refused: Operation not supported"),
        "{}",
        o.err
    );
}

// ---- create with devices ----

fn enclave(dir: &Path, devices: &str) -> PathBuf {
    fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
    let p = dir.join("e.toml");
    fs::write(
        &p,
        format!("name = \"nic\"\ncores = [2]\nmemory_mib = 64\nimage = \"vmlinuz\"\nentry = \"linux\"\n{devices}\n"),
    )
    .unwrap();
    p
}

#[test]
fn create_resolves_vfs_unbinds_host_drivers_and_sends_plain_devices() {
    let fs = FakeSys::new();
    fs.pf(7, 2, 0, "0x1003", 0);
    fs.function("0000:01:10.0", Some("igbvf"));
    fs.function("0000:01:10.2", None);
    fs.function("0000:02:00.0", Some("e1000e"));
    let d = fs.devices().join(PF);
    symlink("../0000:01:10.0", d.join("virtfn0")).unwrap();
    symlink("../0000:01:10.2", d.join("virtfn1")).unwrap();
    let p = enclave(
        &fs.dir.0,
        "devices = [\"02:00.0\"]\nvf = [{ pf = \"0000:01:00.0\", index = 0 }, { pf = \"01:00.0\", index = 1 }]",
    );
    let fake = Fake::shared();
    let o = run_in(
        &fake,
        &fs.dir.0,
        None,
        &["create", p.to_str().unwrap(), "--json"],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(
        o.err,
        "unbound 0000:02:00.0 from e1000e\nunbound 0000:01:10.0 from igbvf\n"
    );
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(
        v["devices"],
        serde_json::json!(["0000:02:00.0", "0000:01:10.0", "0000:01:10.2"])
    );
    // atoll gets plain devices, no vf.
    let f = fake.borrow();
    assert_eq!(f.log[0].0, Kind::Create);
    let t: toml::Table = f.log[0].1.parse().unwrap();
    assert!(t.get("vf").is_none());
    assert_eq!(
        t["devices"],
        toml::Value::Array(
            ["0000:02:00.0", "0000:01:10.0", "0000:01:10.2"]
                .iter()
                .map(|s| toml::Value::String(s.to_string()))
                .collect()
        )
    );
    assert_eq!(t["name"].as_str(), Some("nic"));
    // No host driver may bind them again; the bound ones were unbound by address.
    for a in ["0000:02:00.0", "0000:01:10.0", "0000:01:10.2"] {
        assert_eq!(fs.read(&format!("{a}/driver_override")), "none", "{a}");
    }
    let drivers = fs.dir.0.join("sys/bus/pci/drivers");
    assert_eq!(
        fs::read_to_string(drivers.join("igbvf/unbind")).unwrap(),
        "0000:01:10.0"
    );
    assert_eq!(
        fs::read_to_string(drivers.join("e1000e/unbind")).unwrap(),
        "0000:02:00.0"
    );
}

#[test]
fn create_with_a_vf_not_enabled_stops_before_atoll() {
    let fs = FakeSys::new();
    fs.pf(7, 1, 0, "0x1003", 1);
    let p = enclave(&fs.dir.0, "vf = { pf = \"0000:01:00.0\", index = 1 }");
    let fake = Fake::shared();
    let o = run_in(&fake, &fs.dir.0, None, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 1);
    assert_eq!(
        o.err,
        "atoll: 0000:01:00.0 has no VF 1: run atoll vf 0000:01:00.0 --count 2 first\n"
    );
    assert!(fake.borrow().log.is_empty());
    assert_eq!(fs.read("0000:01:10.0/driver_override"), "(null)\n");
}

#[test]
fn create_leaves_a_function_the_host_does_not_know_to_atoll() {
    let fs = FakeSys::new();
    let p = enclave(&fs.dir.0, "devices = [\"0000:05:00.0\"]");
    let fake = Fake::shared();
    let o = run_in(&fake, &fs.dir.0, None, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(o
        .err
        .contains("0000:05:00.0 is not in the host's /sys/bus/pci/devices"));
    assert!(fake.borrow().log[0]
        .1
        .contains("devices = [\"0000:05:00.0\"]"));
}

#[test]
fn create_without_devices_sends_the_text_as_written() {
    let fs = FakeSys::new();
    let p = enclave(&fs.dir.0, "# no devices");
    let fake = Fake::shared();
    let o = run_in(&fake, &fs.dir.0, None, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(fake.borrow().log[0].1, fs::read_to_string(&p).unwrap());
}

#[test]
fn bad_device_fields_are_refused_naming_the_field() {
    let path = Path::new("e.toml");
    let cases = [
        (
            "devices = [\"01:00\"]",
            "field devices[0]: \"01:00\" is not a PCI address",
        ),
        ("devices = [1]", "field devices[0]: not a string"),
        ("devices = \"01:00.0\"", "field devices: not a list"),
        ("vf = 3", "field vf: not a table"),
        ("vf = [3]", "field vf[0]: not a table"),
        ("vf = { index = 0 }", "field vf.pf: missing"),
        ("vf = { pf = \"01:00.0\" }", "field vf.index: missing"),
        (
            "vf = { pf = \"01:00.0\", index = -1 }",
            "field vf.index: not a VF index",
        ),
        (
            "vf = { pf = \"1:2\", index = 0 }",
            "field vf.pf: \"1:2\" is not a PCI address",
        ),
        (
            "vf = [{ pf = \"01:00.0\", index = 0, mac = \"x\" }]",
            "field vf[0].mac: unknown",
        ),
    ];
    for (text, want) in cases {
        let t: toml::Table = text.parse().unwrap();
        let e = passthrough::parse(path, &t).unwrap_err().to_string();
        assert!(e.starts_with(&format!("e.toml: {want}")), "{text}: {e}");
    }
    let t: toml::Table = "devices = [\"01:00.1\"]\nvf = { pf = \"01:00.0\", index = 3 }"
        .parse()
        .unwrap();
    assert_eq!(
        passthrough::parse(path, &t).unwrap(),
        [
            DeviceRef::Function(pci("0000:01:00.1")),
            DeviceRef::Vf {
                pf: pci(PF),
                index: 3
            }
        ]
    );
}

#[test]
fn create_with_a_bad_device_address_sends_nothing() {
    let fs = FakeSys::new();
    let p = enclave(&fs.dir.0, "devices = [\"00:20.0\"]");
    let fake = Fake::shared();
    let o = run_in(&fake, &fs.dir.0, None, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 1);
    assert!(
        o.err
            .contains("field devices[0]: \"00:20.0\" is not a PCI address"),
        "{}",
        o.err
    );
    assert!(fake.borrow().log.is_empty());
}

// ---- rtnetlink ----

#[test]
fn netlink_constants_are_the_kernels() {
    assert_eq!(netlink::RTM_SETLINK, libc::RTM_SETLINK);
    assert_eq!(i32::from(netlink::NLM_F_REQUEST), libc::NLM_F_REQUEST);
    assert_eq!(i32::from(netlink::NLM_F_ACK), libc::NLM_F_ACK);
    assert_eq!(i32::from(netlink::NLMSG_ERROR), libc::NLMSG_ERROR);
    assert_eq!(netlink::IFF_UP as i32, libc::IFF_UP);
    assert_eq!(netlink::NLMSG_HDRLEN, std::mem::size_of::<libc::nlmsghdr>());
    assert_eq!(
        netlink::IFINFOMSG_LEN,
        std::mem::size_of::<libc::ifinfomsg>()
    );
}

/// Little-endian bytes of the fields, so the expected messages below are the kernel's
/// layout written out, not the encoder's code again.
#[cfg(target_endian = "little")]
fn le(fields: &[(u64, usize)]) -> Vec<u8> {
    fields
        .iter()
        .flat_map(|&(v, n)| v.to_le_bytes()[..n].to_vec())
        .collect()
}

#[cfg(target_endian = "little")]
#[test]
fn set_up_is_a_setlink_with_iff_up_in_flags_and_change() {
    let want = le(&[
        (32, 4),  // nlmsg_len: header and ifinfomsg
        (19, 2),  // RTM_SETLINK
        (0x5, 2), // NLM_F_REQUEST | NLM_F_ACK
        (77, 4),  // seq
        (0, 4),   // pid
        (0, 1),   // ifi_family AF_UNSPEC
        (0, 1),   // pad
        (0, 2),   // ifi_type
        (9, 4),   // ifi_index
        (1, 4),   // ifi_flags IFF_UP
        (1, 4),   // ifi_change IFF_UP
    ]);
    assert_eq!(netlink::encode_set_up(77, 9), want);
}

#[cfg(target_endian = "little")]
#[test]
fn set_vf_mac_nests_vf_info_in_the_vfinfo_list() {
    let mut want = le(&[
        (16 + 16 + 4 + 4 + 40, 4), // nlmsg_len: 80
        (19, 2),
        (0x5, 2),
        (0xdead_beef, 4),
        (0, 4),
        (0, 4),           // family, pad, type
        (4, 4),           // ifi_index
        (0, 4),           // ifi_flags
        (0, 4),           // ifi_change: no flag changes
        (48, 2),          // rta_len of IFLA_VFINFO_LIST: 4 + 44
        (22 | 0x8000, 2), // IFLA_VFINFO_LIST | NLA_F_NESTED
        (44, 2),          // IFLA_VF_INFO: 4 + 40
        (1 | 0x8000, 2),  // IFLA_VF_INFO | NLA_F_NESTED
        (40, 2),          // IFLA_VF_MAC: 4 + sizeof(struct ifla_vf_mac) 36
        (1, 2),           // IFLA_VF_MAC, not nested
        (3, 4),           // ifla_vf_mac.vf
    ]);
    want.extend_from_slice(&[0x52, 0x54, 0x00, 0xaa, 0x00, 0x01]);
    want.extend_from_slice(&[0; 26]);
    assert_eq!(want.len(), 80);
    let m: Mac = "52:54:00:aa:00:01".parse().unwrap();
    assert_eq!(netlink::encode_set_vf_mac(0xdead_beef, 4, 3, m), want);
}

/// An ack to `seq`: NLMSG_ERROR with `error`, the echoed request header of a request of
/// `req_len` bytes (its body too unless capped), then `tlvs`.
#[cfg(target_endian = "little")]
fn ack(seq: u32, error: i32, flags: u16, req_len: usize, tlvs: &[u8]) -> Vec<u8> {
    let capped = flags & netlink::NLM_F_CAPPED != 0;
    let echoed = if capped { 16 } else { req_len };
    let len = 16 + 4 + echoed + tlvs.len();
    let mut b = le(&[
        (len as u64, 4),
        (2, 2),
        (u64::from(flags), 2),
        (u64::from(seq), 4),
        (1234, 4),
        (error as u32 as u64, 4),
        (req_len as u64, 4),
        (19, 2),
        (5, 2),
        (u64::from(seq), 4),
        (1234, 4),
    ]);
    b.resize(16 + 4 + echoed, 0xee);
    b.extend_from_slice(tlvs);
    b
}

#[cfg(target_endian = "little")]
#[test]
fn acks_are_parsed_with_their_errno_and_text() {
    assert_eq!(
        netlink::parse_ack(&ack(5, 0, 0x100, 32, &[]), 5),
        Some(Ack::Ok)
    );
    assert_eq!(
        netlink::parse_ack(&ack(5, -22, 0, 84, &[]), 5),
        Some(Ack::Refused {
            errno: 22,
            message: None
        })
    );
    // Extended ack: NLMSGERR_ATTR_MSG "Invalid MAC\0", padded to 4, after the echoed request.
    let mut tlv = le(&[(16, 2), (1, 2)]);
    tlv.extend_from_slice(b"Invalid MAC\0");
    for flags in [0x200, 0x300] {
        let a = ack(6, -22, flags, 84, &tlv);
        assert_eq!(
            netlink::parse_ack(&a, 6),
            Some(Ack::Refused {
                errno: 22,
                message: Some("Invalid MAC".into())
            }),
            "flags {flags:#x}"
        );
    }
    // Another request's ack first, then ours in the same datagram.
    let mut two = ack(4, -1, 0x100, 32, &[]);
    two.extend(ack(5, 0, 0x100, 32, &[]));
    assert_eq!(netlink::parse_ack(&two, 5), Some(Ack::Ok));
    // Truncated or not ours: no ack.
    let a = ack(5, 0, 0x100, 32, &[]);
    assert_eq!(netlink::parse_ack(&a[..a.len() - 1], 5), None);
    assert_eq!(netlink::parse_ack(&a[..10], 5), None);
    assert_eq!(netlink::parse_ack(&a, 6), None);
    let mut zero = a.clone();
    zero[0..4].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(netlink::parse_ack(&zero, 5), None);
    // The error is reported with the errno's text.
    let e = netlink::check(
        "setting VF 0's MAC",
        Ack::Refused {
            errno: 22,
            message: Some("Invalid MAC".into()),
        },
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "setting VF 0's MAC: the kernel refused: Invalid argument (os error 22) (Invalid MAC)"
    );
}

/// The real kernel parses the request and answers with an ack this parser reads: loopback
/// (ifindex 1 in every network namespace) has no VFs, so the answer is EOPNOTSUPP, or EPERM
/// without CAP_NET_ADMIN. Nothing changes either way.
#[cfg(target_os = "linux")]
#[test]
fn the_kernel_answers_a_vf_mac_request_on_loopback() {
    let mut r = netlink::Rtnl::default();
    let m: Mac = "52:54:00:aa:00:01".parse().unwrap();
    let e = r.set_vf_mac(1, 0, m).unwrap_err().to_string();
    assert!(
        e.starts_with("setting VF 0's MAC to 52:54:00:aa:00:01: the kernel refused: ")
            && (e.contains("(os error 95)") || e.contains("(os error 1)")),
        "{e}"
    );
}

#[test]
fn create_passes_virtio_devices_to_atoll_in_every_form() {
    // atoll checks `virtio` (its config::virtio); the command only has to keep the tables,
    // whether it sends the text as written, re-renders an [[enclave]] file or rewrites
    // `devices`.
    let tables = "[[virtio]]\nkind = \"net\"\ntap = \"t0\"\n[[virtio]]\nkind = \"blk\"\npath = \"/srv/d.img\"\nread_only = true\n";
    let inline = "virtio = [{ kind = \"net\", tap = \"t0\" }, { kind = \"blk\", path = \"/srv/d.img\", read_only = true }]";
    for (form, body) in [
        ("sub-tables", tables.to_string()),
        ("inline", inline.to_string()),
        (
            "sub-tables and devices",
            format!("devices = [\"0000:05:00.0\"]\n{tables}"),
        ),
    ] {
        for header in [false, true] {
            let fs = FakeSys::new();
            let p = enclave(&fs.dir.0, &body);
            if header {
                let text = fs::read_to_string(&p).unwrap();
                fs::write(
                    &p,
                    format!(
                        "[[enclave]]\n{}",
                        text.replace("[[virtio]]", "[[enclave.virtio]]")
                    ),
                )
                .unwrap();
            }
            let fake = Fake::shared();
            let o = run_in(&fake, &fs.dir.0, None, &["create", p.to_str().unwrap()]);
            assert_eq!(o.code, 0, "{form} {header}: {}", o.err);
            let sent: toml::Table = fake.borrow().log[0].1.parse().unwrap();
            assert!(sent.get("enclave").is_none(), "{form} {header}");
            let v = sent["virtio"].as_array().expect("virtio kept as a list");
            assert_eq!(v.len(), 2, "{form} {header}");
            assert_eq!(v[0]["kind"].as_str(), Some("net"));
            assert_eq!(v[0]["tap"].as_str(), Some("t0"));
            assert_eq!(v[1]["kind"].as_str(), Some("blk"));
            assert_eq!(v[1]["path"].as_str(), Some("/srv/d.img"));
            assert_eq!(v[1]["read_only"].as_bool(), Some(true));
            assert_eq!(sent["name"].as_str(), Some("nic"));
        }
    }
}
