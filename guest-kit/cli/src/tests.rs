//! Host tests: every subcommand against the fake atoll.

use crate::console::Input;
use crate::cpus::{parse_cpuinfo, Root};
use crate::fake::{Fake, FakeChannel, FakeEnclave};
use crate::{client, run, Env};
use atoll_abi::control::{Blob, Kind, Load, State, Status, EXIT_KINDS};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) out: String,
    pub(crate) err: String,
}

/// A fresh directory for one test (removed when dropped).
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "atoll-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn run_in(
    fake: &Rc<RefCell<Fake>>,
    root: &Path,
    input: Option<Input>,
    args: &[&str],
) -> Out {
    let f = fake.clone();
    let mut connect = move || -> client::Result<Box<dyn client::Channel>> {
        Ok(Box::new(FakeChannel(f.clone())))
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut env = Env {
        connect: &mut connect,
        out: &mut out,
        err: &mut err,
        root: Root(root.to_path_buf()),
        input,
        stderr_tty: false,
        poll: Duration::from_millis(1),
        rate_gap: Duration::from_millis(20),
        seq: 100,
        net: &mut crate::tests_vf::FakeNet::default(),
        channeld: &mut |name: &str| std::fs::write(root.join("channeld-started"), name),
    };
    let mut argv = vec!["atoll"];
    argv.extend_from_slice(args);
    let code = run(argv, &mut env);
    Out {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn run_fake(fake: &Rc<RefCell<Fake>>, args: &[&str]) -> Out {
    run_in(fake, Path::new("/nonexistent-root"), None, args)
}

pub(crate) fn two_enclaves() -> Rc<RefCell<Fake>> {
    let fake = Fake::shared();
    {
        let mut f = fake.borrow_mut();
        let mut a = FakeEnclave::new(1, "linux", &[2, 3], 256);
        a.exits[1] = 40; // hlt
        a.exits[2] = 7; // io
        let mut b = FakeEnclave::new(2, "bare", &[4], 16);
        b.bare = true;
        b.state = State::Failed;
        b.reason = "triple fault at rip 0x1000".into();
        f.enclaves = vec![a, b];
        f.next_id = 3;
    }
    fake
}

#[test]
fn list_prints_a_table_and_json() {
    let fake = two_enclaves();
    let o = run_fake(&fake, &["list"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let lines: Vec<&str> = o.out.lines().collect();
    assert_eq!(lines.len(), 3);
    let head: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        head,
        ["NAME", "ID", "STATE", "CORES", "MEMORY", "UPTIME", "REASON"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row, ["linux", "1", "running", "2,3", "256", "MiB", "1m01s"]);
    assert!(lines[2].starts_with("bare "));
    assert!(lines[2].contains("failed") && lines[2].ends_with("triple fault at rip 0x1000"));
    // The columns line up: every row's STATE starts where the header's does.
    let col = lines[0].find("STATE").unwrap();
    assert_eq!(&lines[1][col..col + 7], "running");
    assert_eq!(fake.borrow().kinds(), [Kind::List]);

    let o = run_fake(&fake, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v[0]["name"], "linux");
    assert_eq!(v[0]["cores"], serde_json::json!([2, 3]));
    assert_eq!(v[0]["memory_mib"], 256);
    assert_eq!(v[1]["state"], "failed");
    assert_eq!(v[1]["reason"], "triple fault at rip 0x1000");
}

#[test]
fn list_of_nothing_prints_the_header_only() {
    let fake = Fake::shared();
    let o = run_fake(&fake, &["list"]);
    assert_eq!(o.out.lines().count(), 1);
    let o = run_fake(&fake, &["list", "--json"]);
    assert_eq!(o.out.trim(), "[]");
}

#[test]
fn info_prints_atolls_figures() {
    let fake = two_enclaves();
    let o = run_fake(&fake, &["info"]);
    assert_eq!(o.code, 0);
    assert!(o.out.contains("pool") && o.out.contains("1024 MiB"));
    assert!(o.out.contains(&format!("{} MiB", 1024 - 256 - 16)));
    assert!(o.out.contains("2 of 8"));
    let o = run_fake(&fake, &["info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["pool_bytes"], 1u64 << 30);
    assert_eq!(v["pool_free_bytes"], (1u64 << 30) - (272u64 << 20));
    assert_eq!(v["enclaves"], 2);
    assert_eq!(fake.borrow().kinds(), [Kind::Info, Kind::Info]);
}

/// A description, an image of 3 × MAX_DATA + 1 bytes and a small initrd in `dir`.
fn description(dir: &Path, header: bool) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let image: Vec<u8> = (0..3 * Load::MAX_DATA + 1)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let initrd: Vec<u8> = (0..5000).map(|i| (i % 13) as u8).collect();
    fs::create_dir_all(dir.join("boot")).unwrap();
    fs::write(dir.join("boot/vmlinuz"), &image).unwrap();
    fs::write(dir.join("boot/initrd"), &initrd).unwrap();
    let body = "name = \"linux\"\ncores = [2, 4]\nmemory_mib = 256\nimage = \"boot/vmlinuz\"\n\
                initrd = \"boot/initrd\"\nentry = \"linux\"\ncmdline = \"console=ttyS0\"\n";
    let text = if header {
        format!("[[enclave]]\n{body}")
    } else {
        body.to_string()
    };
    let p = dir.join("linux.toml");
    fs::write(&p, text).unwrap();
    (p, image, initrd)
}

#[test]
fn create_sends_the_description_loads_in_chunks_and_starts() {
    for header in [false, true] {
        let t = TempDir::new();
        let (p, image, initrd) = description(&t.0, header);
        let fake = Fake::shared();
        let o = run_fake(&fake, &["create", p.to_str().unwrap()]);
        assert_eq!(o.code, 0, "{}", o.err);
        assert_eq!(o.out, "created linux (id 1): running\n");
        let f = fake.borrow();
        assert_eq!(
            f.kinds(),
            [
                Kind::Create,
                Kind::Load,
                Kind::Load,
                Kind::Load,
                Kind::Load,
                Kind::Load,
                Kind::Start
            ]
        );
        // Image in four pieces (the last of one byte), then the initrd, every offset in order.
        let loads: Vec<&str> = f.log[1..6].iter().map(|l| l.1.as_str()).collect();
        let m = Load::MAX_DATA;
        assert_eq!(
            loads,
            [
                format!("1 Image 0 {m}"),
                format!("1 Image {m} {m}"),
                format!("1 Image {} {m}", 2 * m),
                format!("1 Image {} 1", 3 * m),
                "1 Initrd 0 5000".to_string(),
            ]
        );
        let e = &f.enclaves[0];
        assert_eq!(e.state, State::Running);
        assert!(e.image == image, "the image arrived changed");
        assert!(e.initrd == initrd);
        assert_eq!((e.image_len, e.initrd_len), (image.len() as u64, 5000));
        // atoll gets one enclave as a single table, the file names kept for the record.
        let sent: toml::Table = e.description.parse().unwrap();
        assert!(sent.get("enclave").is_none());
        assert_eq!(sent["name"].as_str(), Some("linux"));
        assert_eq!(sent["image"].as_str(), Some("boot/vmlinuz"));
        assert_eq!(sent["cores"].as_array().unwrap().len(), 2);
        let _ = Blob::Image;
    }
}

#[test]
fn create_json_and_no_initrd() {
    let t = TempDir::new();
    fs::write(t.0.join("img"), b"ELF").unwrap();
    let p = t.0.join("a.toml");
    fs::write(
        &p,
        "name = \"a\"\ncores = [1]\nmemory_mib = 16\nimage = \"img\"\nentry = \"long64\"\n",
    )
    .unwrap();
    let fake = Fake::shared();
    let o = run_fake(&fake, &["create", p.to_str().unwrap(), "--json"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(
        (
            v["name"].as_str(),
            v["id"].as_u64(),
            v["image_bytes"].as_u64()
        ),
        (Some("a"), Some(1), Some(3))
    );
    assert_eq!(v["initrd_bytes"], 0);
    assert_eq!(
        fake.borrow().kinds(),
        [Kind::Create, Kind::Load, Kind::Start]
    );
}

#[test]
fn create_refuses_bad_files_before_asking_atoll() {
    let t = TempDir::new();
    let fake = Fake::shared();
    let cases: [(&str, &str); 6] = [
        (
            "[[enclave]]\nname = \"a\"\nimage = \"x\"\n[[enclave]]\nname = \"b\"\nimage = \"x\"\n",
            "holds 2 [[enclave]]",
        ),
        ("name = \"a\"\n", "field image: missing"),
        ("image = \"x\"\n", "field name: missing"),
        ("name = \"a\"\nimage = 3\n", "field image: not a string"),
        (
            "name = \"a\"\nimage = \"x\"\ncores = [\"one\"]\n",
            "field cores",
        ),
        ("name = = 3", "linux.toml"),
    ];
    for (text, want) in cases {
        let p = t.0.join("linux.toml");
        fs::write(&p, text).unwrap();
        let o = run_fake(&fake, &["create", p.to_str().unwrap()]);
        assert_eq!(o.code, 1, "{text}");
        assert!(
            o.err.starts_with("atoll: ") && o.err.contains(want),
            "{text}: {}",
            o.err
        );
    }
    // A missing image is named.
    fs::write(
        t.0.join("linux.toml"),
        "name = \"a\"\nimage = \"missing.bin\"\n",
    )
    .unwrap();
    let o = run_fake(&fake, &["create", t.0.join("linux.toml").to_str().unwrap()]);
    assert_eq!(o.code, 1);
    assert!(
        o.err
            .contains(&t.0.join("missing.bin").display().to_string()),
        "{}",
        o.err
    );
    let o = run_fake(&fake, &["create", "/nonexistent/x.toml"]);
    assert!(o.code == 1 && o.err.contains("/nonexistent/x.toml"));
    assert!(fake.borrow().log.is_empty(), "nothing was asked of atoll");
}

#[test]
fn create_undoes_itself_when_load_or_start_fails() {
    for (kind, status) in [
        (Kind::Load, Status::NoMemory),
        (Kind::Start, Status::BadImage),
    ] {
        let t = TempDir::new();
        let (p, _, _) = description(&t.0, false);
        let fake = Fake::shared();
        fake.borrow_mut().refuse = Some((kind, status, "the reason".into()));
        let o = run_fake(&fake, &["create", p.to_str().unwrap()]);
        assert_eq!(o.code, 1);
        assert_eq!(o.err, format!("atoll: {}: the reason\n", status.name()));
        assert!(o.out.is_empty());
        let f = fake.borrow();
        let last = f.log.last().unwrap();
        assert_eq!(
            (last.0, last.1.as_str()),
            (Kind::Destroy, "1 "),
            "destroyed by id"
        );
        assert!(f.enclaves.is_empty(), "nothing stays created");
    }
}

#[test]
fn create_reports_atolls_refusal_of_a_core() {
    let t = TempDir::new();
    let (p, _, _) = description(&t.0, false);
    let fake = Fake::shared();
    fake.borrow_mut().busy = vec![4];
    let o = run_fake(&fake, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 1);
    assert_eq!(o.err, "atoll: core busy: core 4 is online in the host\n");
    assert_eq!(
        fake.borrow().kinds(),
        [Kind::Create],
        "no undo for a creation refused"
    );
}

/// A /proc/cpuinfo as Linux writes it (fields cut), with APIC ids not equal to CPU numbers.
const CPUINFO: &str = "processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7763 64-Core Processor
physical id\t: 0
siblings\t: 4
core id\t\t: 0
cpu cores\t: 4
apicid\t\t: 0
initial apicid\t: 0
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep
bogomips\t: 4890.85

processor\t: 1
vendor_id\t: AuthenticAMD
physical id\t: 0
core id\t\t: 1
apicid\t\t: 2
initial apicid\t: 2

processor\t: 2
vendor_id\t: AuthenticAMD
apicid\t\t: 4
initial apicid\t: 4

processor\t: 3
vendor_id\t: AuthenticAMD
apicid\t\t: 6
initial apicid\t: 6

";

#[test]
fn cpuinfo_maps_apic_ids_to_cpus() {
    let m = parse_cpuinfo(CPUINFO).unwrap();
    assert_eq!(m, BTreeMap::from([(0, 0), (2, 1), (4, 2), (6, 3)]));
    // Without a trailing blank line, and with one block.
    assert_eq!(
        parse_cpuinfo("processor : 5\napicid : 9").unwrap(),
        BTreeMap::from([(9, 5)])
    );
    assert!(parse_cpuinfo("processor : 0\n\n").is_err(), "no apicid");
    assert!(parse_cpuinfo("processor : 0\napicid : 1\n\nprocessor : 1\napicid : 1\n").is_err());
    assert!(parse_cpuinfo("processor : x\napicid : 1\n").is_err());
}

fn machine(t: &TempDir, cpuinfo: &str) {
    fs::create_dir_all(t.0.join("proc")).unwrap();
    fs::write(t.0.join("proc/cpuinfo"), cpuinfo).unwrap();
    for cpu in 0..4 {
        let d = t.0.join(format!("sys/devices/system/cpu/cpu{cpu}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("online"), "1\n").unwrap();
    }
}

fn online(t: &TempDir, cpu: u32) -> String {
    fs::read_to_string(t.0.join(format!("sys/devices/system/cpu/cpu{cpu}/online"))).unwrap()
}

#[test]
fn offline_cores_then_online_them_after_destroy() {
    let t = TempDir::new();
    machine(&t, CPUINFO);
    let (p, _, _) = description(&t.0, false); // cores [2, 4] → CPUs 1 and 2
    let fake = Fake::shared();
    let o = run_in(
        &fake,
        &t.0,
        None,
        &["create", p.to_str().unwrap(), "--offline-cores"],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(
        o.err,
        "offlined CPU 1 (APIC id 2)\nofflined CPU 2 (APIC id 4)\n"
    );
    assert_eq!(
        (
            online(&t, 0).trim(),
            online(&t, 1).as_str(),
            online(&t, 2).as_str(),
            online(&t, 3).trim()
        ),
        ("1", "0", "0", "1")
    );

    // Offline CPUs leave /proc/cpuinfo; the remembered mapping finds them again.
    let only: String = CPUINFO
        .split("\n\n")
        .filter(|b| b.contains("apicid\t\t: 0") || b.contains("apicid\t\t: 6"))
        .map(|b| format!("{b}\n\n"))
        .collect();
    fs::write(t.0.join("proc/cpuinfo"), only).unwrap();
    let o = run_in(&fake, &t.0, None, &["destroy", "linux", "--online-cores"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(
        o.err,
        "onlined CPU 1 (APIC id 2)\nonlined CPU 2 (APIC id 4)\n"
    );
    assert_eq!(o.out, "destroyed linux\n");
    assert_eq!((online(&t, 1).as_str(), online(&t, 2).as_str()), ("1", "1"));
    let f = fake.borrow();
    assert_eq!(
        &f.kinds()[f.kinds().len() - 2..],
        [Kind::Stats, Kind::Destroy]
    );
}

#[test]
fn offline_cores_leaves_cores_not_online_to_atoll_and_without_the_flag_touches_nothing() {
    let t = TempDir::new();
    machine(
        &t,
        "processor : 0\napicid : 0\n\nprocessor : 1\napicid : 2\n",
    );
    let (p, _, _) = description(&t.0, false);
    let fake = Fake::shared();
    let o = run_in(&fake, &t.0, None, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 0);
    assert_eq!((online(&t, 1).trim(), o.err.as_str()), ("1", ""));
    fake.borrow_mut().enclaves.clear();
    let o = run_in(
        &fake,
        &t.0,
        None,
        &["create", p.to_str().unwrap(), "--offline-cores"],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(o.err.contains("offlined CPU 1 (APIC id 2)"));
    assert!(
        o.err.contains("APIC id 4 is not an online CPU"),
        "{}",
        o.err
    );
    // atoll refusing the enclave gives the host its CPUs back.
    fake.borrow_mut().enclaves.clear();
    fake.borrow_mut().busy = vec![4];
    let o = run_in(
        &fake,
        &t.0,
        None,
        &["create", p.to_str().unwrap(), "--offline-cores"],
    );
    assert_eq!(o.code, 1);
    assert_eq!(online(&t, 1), "1");
    assert!(
        o.err.contains("offlined CPU 1 (APIC id 2)\n") && o.err.contains("onlined CPU 1 again\n"),
        "{}",
        o.err
    );
    assert!(o
        .err
        .ends_with("atoll: core busy: core 4 is online in the host\n"));
    fake.borrow_mut().busy.clear();
    let o = run_in(&fake, &t.0, None, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.err);
    // Onlining a core whose CPU was never seen is an error naming it.
    fs::write(t.0.join("run/atoll/cpus"), "").unwrap();
    fs::write(t.0.join("proc/cpuinfo"), "processor : 0\napicid : 0\n").unwrap();
    let o = run_in(&fake, &t.0, None, &["destroy", "linux", "--online-cores"]);
    assert_eq!(o.code, 1);
    assert!(
        o.err.contains("APIC id 2: its Linux CPU number is unknown"),
        "{}",
        o.err
    );
}

#[test]
fn destroy_by_name_and_its_refusal() {
    let fake = two_enclaves();
    let o = run_fake(&fake, &["destroy", "bare"]);
    assert_eq!((o.code, o.out.as_str()), (0, "destroyed bare\n"));
    assert_eq!(fake.borrow().log[0].1, format!("{} bare", u16::MAX));
    assert_eq!(fake.borrow().enclaves.len(), 1);
    let o = run_fake(&fake, &["destroy", "bare", "--json"]);
    assert_eq!(o.code, 1);
    assert_eq!(o.err, "atoll: no such enclave: no enclave named \"bare\"\n");
    let o = run_fake(&fake, &["destroy", "linux", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["destroyed"].as_bool()),
        (Some("linux"), Some(true))
    );
}

#[test]
fn every_refusal_is_printed_with_its_status_and_reason() {
    for st in Status::ALL.into_iter().filter(|s| *s != Status::Ok) {
        let fake = two_enclaves();
        fake.borrow_mut().refuse = Some((Kind::List, st, format!("reason {}", st as u32)));
        let o = run_fake(&fake, &["list"]);
        assert_eq!(o.code, 1);
        assert_eq!(
            o.err,
            format!("atoll: {}: reason {}\n", st.name(), st as u32)
        );
        assert!(o.out.is_empty());
    }
}

fn tampered(f: impl FnMut(&mut Vec<u8>) + 'static) -> Out {
    let fake = two_enclaves();
    fake.borrow_mut().tamper = Some(Box::new(f));
    run_fake(&fake, &["list"])
}

#[test]
fn bad_replies_are_clear_errors() {
    let cases: Vec<(crate::fake::Tamper, &str)> = vec![
        (Box::new(|r| r.truncate(10)), "message truncated"),
        (Box::new(|r| r.truncate(r.len() - 1)), "message truncated"),
        (Box::new(|r| r[0] ^= 0xff), "bad magic"),
        (Box::new(|r| r[8] ^= 1), "sequence number"),
        (Box::new(|r| r[6] = 7), "kind 7"),
        (Box::new(|r| r[12] = 99), "unknown status 99"),
        (Box::new(|r| r[4] = 3), "protocol version 3"),
        (Box::new(|r| r[20] = 1), "field header"),
        // A record's state byte (after header, count, id).
        (Box::new(|r| r[24 + 4 + 2] = 9), "records: field state"),
        // One byte more than the header says: the count claims a record that is not there.
        (Box::new(|r| r[24] = 3), "records: message truncated"),
    ];
    for (f, want) in cases {
        let o = tampered(f);
        assert_eq!(o.code, 1);
        assert!(
            o.err.starts_with("atoll: bad reply from atoll: ") && o.err.contains(want),
            "{want}: {}",
            o.err
        );
    }
}

#[test]
fn no_device_is_a_clear_error() {
    let mut connect = || -> client::Result<Box<dyn client::Channel>> {
        Err(client::Error::NoDevice("no PCI function 0a70:0c71".into()))
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut env = Env {
        connect: &mut connect,
        out: &mut out,
        err: &mut err,
        root: Root("/nonexistent".into()),
        input: None,
        stderr_tty: false,
        poll: Duration::from_millis(1),
        rate_gap: Duration::from_millis(1),
        seq: 0,
        net: &mut crate::tests_vf::FakeNet::default(),
        channeld: &mut |_: &str| Ok(()),
    };
    assert_eq!(run(["atoll", "list"], &mut env), 1);
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.starts_with(
            "atoll: atoll control device not found: are you root, on a host atoll booted?"
        ),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let fake = Fake::shared();
    for args in [
        &[][..],
        &["bogus"],
        &["create"],
        &["stats", "--format", "xml"],
        &["list", "--nope"],
        &["raw"],
    ] {
        let o = run_fake(&fake, args);
        assert_eq!(o.code, 2, "{args:?}");
        assert!(!o.err.is_empty());
    }
    let o = run_fake(&fake, &["--help"]);
    assert_eq!(o.code, 0);
    assert!(
        o.out.contains("create") && !o.out.contains("raw"),
        "raw is hidden"
    );
    assert!(fake.borrow().log.is_empty());
}

#[test]
fn stats_table_json_and_rates() {
    let fake = two_enclaves();
    let o = run_fake(&fake, &["stats", "linux"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(
        o.out.starts_with(
            "linux (id 1): running  cores 2,3  memory 256 MiB  uptime 1m01s  restarts 1\n"
        ),
        "{}",
        o.out
    );
    assert!(o
        .out
        .contains("interrupts injected 7  IPIs dropped 3  console bytes dropped 2"));
    assert!(o
        .out
        .contains("device interrupts 7  DMA faults 1  interrupt faults 0"));
    assert!(
        o.out.contains("\n  exits per vCPU  0: 47  1: 0\n"),
        "{}",
        o.out
    );
    let rows: Vec<Vec<&str>> = o
        .out
        .lines()
        .skip(5)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows, [vec!["hlt", "40", "-"], vec!["io", "7", "-"]]);
    assert_eq!(fake.borrow().log[0].1, format!("{} linux", u16::MAX));

    let o = run_fake(&fake, &["stats"]);
    assert!(o.out.contains("bare (id 2): failed") && o.out.contains("reason: triple fault"));

    let o = run_fake(&fake, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["enclaves"][0]["exits"]["hlt"], 40);
    assert_eq!(
        v["enclaves"][0]["exits"].as_object().unwrap().len(),
        EXIT_KINDS.len()
    );
    assert!(
        v["enclaves"][0].get("exits_per_second").is_none() && v.get("interval_seconds").is_none()
    );
    let same = run_fake(&fake, &["stats", "--format", "json"]);
    assert_eq!(same.out, o.out);

    // --rate samples twice: 100 hlt exits more between them.
    fake.borrow_mut().hlt_per_stats = 100;
    let o = run_fake(&fake, &["stats", "linux", "--rate", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    let secs = v["interval_seconds"].as_f64().unwrap();
    assert!(secs >= 0.02);
    let rate = v["enclaves"][0]["exits_per_second"]["hlt"]
        .as_f64()
        .unwrap();
    assert!((rate - 100.0 / secs).abs() < 1e-6, "{rate} {secs}");
    assert_eq!(v["enclaves"][0]["exits_per_second"]["io"], 0.0);

    let o = run_fake(&fake, &["stats", "nobody"]);
    assert_eq!(
        (o.code, o.err.as_str()),
        (1, "atoll: no such enclave: no such enclave\n")
    );
}

#[test]
fn rates_pair_samples_by_enclave() {
    use crate::enclave::Enclave;
    let e = |id, name: &str, hlt| Enclave {
        name: name.into(),
        id,
        state: "running",
        cores: vec![],
        memory_mib: 1,
        uptime_us: 0,
        exits: EXIT_KINDS
            .iter()
            .map(|k| (*k, if *k == "hlt" { hlt } else { 0 }))
            .collect(),
        vcpu_exits: vec![hlt, 0],
        vcpu_exit_classes: vec![],
        interrupts_injected: 0,
        ipis_dropped: 0,
        console_bytes_dropped: 0,
        device_interrupts: 0,
        dma_faults: 0,
        interrupt_faults: 0,
        virtio_chains: 0,
        virtio_bad_chains: 0,
        virtio_host_errors: 0,
        restarts: 0,
        reason: String::new(),
    };
    let prev = [e(1, "a", 100), e(2, "b", 50)];
    // b was destroyed and a new b (id 3) made: no rate for it; a counter going backwards
    // (never, but) gives 0 rather than a huge number.
    let doc = crate::stats::with_rates(vec![e(1, "a", 300), e(3, "b", 10)], Some((&prev, 2.0)));
    assert_eq!(
        doc.enclaves[0].exits_per_second.as_ref().unwrap()["hlt"],
        100.0
    );
    assert!(doc.enclaves[1].exits_per_second.is_none());
    assert_eq!(
        doc.enclaves[0].vcpu_exits_per_second.as_deref(),
        Some(&[100.0, 0.0][..]),
        "per vCPU"
    );
    assert!(doc.enclaves[1].vcpu_exits_per_second.is_none());
    // A vCPU count that differs between the samples pairs nothing.
    let mut three = e(1, "a", 300);
    three.vcpu_exits.push(9);
    let doc = crate::stats::with_rates(vec![three], Some((&prev, 2.0)));
    assert!(doc.enclaves[0].vcpu_exits_per_second.is_none());
    assert!(doc.enclaves[0].exits_per_second.is_some());
    let doc = crate::stats::with_rates(vec![e(1, "a", 5)], Some((&prev, 2.0)));
    assert_eq!(
        doc.enclaves[0].exits_per_second.as_ref().unwrap()["hlt"],
        0.0
    );
    let t = crate::stats::render_table(&crate::stats::with_rates(
        vec![e(1, "a", 300)],
        Some((&prev, 2.0)),
    ));
    assert!(
        t.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["hlt", "300", "100.0"]),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.trim() == "exits per vCPU  0: 300 (100.0/s)  1: 0 (0.0/s)"),
        "{t}"
    );
}

/// Parses Prometheus text: samples by "name{labels}", and the HELP/TYPE of each family.
fn parse_prometheus(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut helped = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap();
            assert!(
                helped.contains(&name.to_string()),
                "HELP before TYPE for {name}"
            );
            assert!(["counter", "gauge"].contains(&t));
            types.insert(name.to_string(), t.to_string());
        } else {
            let (key, value) = line.rsplit_once(' ').unwrap();
            let name = key.split('{').next().unwrap();
            assert!(types.contains_key(name), "{name} has its TYPE line first");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            if let Some(labels) = key.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'));
                    for l in labels[1..labels.len() - 1].split(',') {
                        let (k, v) = l.split_once('=').unwrap();
                        assert!(k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
                        assert!(v.starts_with('"') && v.ends_with('"'));
                    }
                }
            }
            assert!(
                samples
                    .insert(key.to_string(), value.parse::<f64>().unwrap())
                    .is_none(),
                "{key} twice"
            );
        }
    }
    (samples, types)
}

#[test]
fn stats_as_prometheus_text() {
    let fake = two_enclaves();
    let o = run_fake(&fake, &["stats", "--format", "prometheus"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let (s, types) = parse_prometheus(&o.out);
    assert_eq!(
        s["atoll_enclave_exits_total{enclave=\"linux\",kind=\"hlt\"}"],
        40.0
    );
    assert_eq!(
        s["atoll_enclave_exits_total{enclave=\"linux\",kind=\"io\"}"],
        7.0
    );
    assert_eq!(
        s["atoll_enclave_exits_total{enclave=\"bare\",kind=\"cpuid\"}"],
        0.0
    );
    assert_eq!(
        s.keys()
            .filter(|k| k.starts_with("atoll_enclave_exits_total"))
            .count(),
        2 * EXIT_KINDS.len()
    );
    // Per vCPU: the fake puts every exit on the first.
    assert_eq!(
        s["atoll_enclave_vcpu_exits_total{enclave=\"linux\",vcpu=\"0\",class=\"other\"}"],
        47.0
    );
    assert_eq!(
        s["atoll_enclave_vcpu_exits_total{enclave=\"linux\",vcpu=\"1\",class=\"timer\"}"],
        0.0
    );
    assert_eq!(
        s.keys()
            .filter(|k| k.starts_with("atoll_enclave_vcpu_exits_total"))
            .count(),
        2 * 4,
        "one per vCPU and class: linux's two, none for the bare-metal enclave"
    );
    assert_eq!(types["atoll_enclave_vcpu_exits_total"], "counter");
    assert_eq!(s["atoll_enclave_uptime_seconds{enclave=\"linux\"}"], 61.5);
    assert_eq!(
        s["atoll_enclave_memory_bytes{enclave=\"linux\"}"],
        256.0 * 1048576.0
    );
    assert_eq!(
        s["atoll_enclave_state{enclave=\"linux\",state=\"running\"}"],
        1.0
    );
    assert_eq!(
        s["atoll_enclave_state{enclave=\"linux\",state=\"failed\"}"],
        0.0
    );
    assert_eq!(
        s["atoll_enclave_state{enclave=\"bare\",state=\"failed\"}"],
        1.0
    );
    assert_eq!(
        s.keys()
            .filter(|k| k.starts_with("atoll_enclave_state"))
            .count(),
        8
    );
    assert_eq!(
        s["atoll_enclave_interrupts_injected_total{enclave=\"bare\"}"],
        7.0
    );
    assert_eq!(s["atoll_enclave_ipis_dropped_total{enclave=\"bare\"}"], 3.0);
    assert_eq!(
        s["atoll_enclave_console_bytes_dropped_total{enclave=\"linux\"}"],
        2.0
    );
    assert_eq!(s["atoll_enclave_restarts_total{enclave=\"linux\"}"], 1.0);
    assert_eq!(
        s["atoll_enclave_device_interrupts_total{enclave=\"linux\"}"],
        7.0
    );
    assert_eq!(s["atoll_enclave_dma_faults_total{enclave=\"linux\"}"], 1.0);
    assert_eq!(
        s["atoll_enclave_interrupt_faults_total{enclave=\"linux\"}"],
        0.0
    );
    assert_eq!(s["atoll_pool_bytes"], 1073741824.0);
    assert_eq!(
        s["atoll_pool_free_bytes"],
        (1073741824u64 - (272 << 20)) as f64
    );
    assert_eq!(types["atoll_enclave_exits_total"], "counter");
    assert_eq!(types["atoll_enclave_uptime_seconds"], "gauge");
    for f in ["chains", "bad_chains", "host_errors"] {
        assert_eq!(
            s[&format!("atoll_enclave_virtio_{f}_total{{enclave=\"linux\"}}")],
            0.0,
            "{f}"
        );
        assert_eq!(types[&format!("atoll_enclave_virtio_{f}_total")], "counter");
    }
    assert_eq!(types.len(), 17);
    assert_eq!(fake.borrow().kinds(), [Kind::Stats, Kind::Info]);
}

fn console_fake(output: &[u8]) -> Rc<RefCell<Fake>> {
    let fake = Fake::shared();
    let mut e = FakeEnclave::new(1, "linux", &[2], 64);
    e.console = output.to_vec();
    fake.borrow_mut().enclaves.push(e);
    fake.borrow_mut().read_chunk = 7;
    fake
}

#[test]
fn console_until_text_exits_0_when_it_appears() {
    let fake = console_fake(b"booting\nATOLL-GUEST-CHECK zeroed=yes\nafter\n");
    let o = run_fake(
        &fake,
        &[
            "console",
            "linux",
            "--no-input",
            "--until",
            "ATOLL-GUEST-CHECK",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    // Output arrives 7 bytes at a time and stops at the read that completed the text.
    assert!(
        o.out.starts_with("booting\nATOLL-GUEST-CHECK") && !o.out.contains("after"),
        "{}",
        o.out
    );
    let reads: Vec<String> = fake
        .borrow()
        .log
        .iter()
        .filter(|l| l.0 == Kind::ConsoleRead)
        .map(|l| l.1.clone())
        .collect();
    assert_eq!(reads[0], "linux 0");
    assert_eq!(reads[1], "linux 7", "the cursor advances");
}

#[test]
fn console_until_fails_when_the_enclave_stops_or_time_passes() {
    let fake = console_fake(b"kernel panic\n");
    fake.borrow_mut().enclaves[0].end_after_input = Some(0);
    let o = run_fake(
        &fake,
        &[
            "console",
            "linux",
            "--no-input",
            "--until",
            "ATOLL-GUEST-CHECK",
        ],
    );
    assert_eq!(o.code, 1);
    assert_eq!(o.out, "kernel panic\n");
    assert!(
        o.err.contains(
            "linux is no longer running and its output never contained \"ATOLL-GUEST-CHECK\""
        ),
        "{}",
        o.err
    );

    let fake = console_fake(b"waiting");
    let o = run_fake(
        &fake,
        &[
            "console",
            "linux",
            "--no-input",
            "--until",
            "X",
            "--timeout",
            "0.05",
        ],
    );
    assert_eq!(o.code, 1);
    assert!(o.err.contains("timed out"));
}

#[test]
fn console_forwards_piped_input_retrying_what_was_not_taken() {
    let fake = console_fake(b"$ ");
    fake.borrow_mut().accept_chunk = 3;
    fake.borrow_mut().enclaves[0].end_after_input = Some(16);
    fake.borrow_mut().enclaves[0].console_lost = 5;
    let input = Input::Stream(Box::new(std::io::Cursor::new(
        b"echo hi\nuname -a\n".to_vec(),
    )));
    let o = run_in(
        &fake,
        Path::new("/nonexistent"),
        Some(input),
        &["console", "linux"],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(o.out, "$ ");
    assert!(
        o.err.contains("5 bytes of linux's output were lost"),
        "{}",
        o.err
    );
    assert!(o.err.contains("linux is no longer running"));
    let f = fake.borrow();
    assert_eq!(f.enclaves[0].input, b"echo hi\nuname -a\n");
    let writes = f.log.iter().filter(|l| l.0 == Kind::ConsoleWrite).count();
    assert!(writes >= 6, "3 bytes a time: {writes}");
}

#[test]
fn console_exit_after_the_end_of_input() {
    let fake = console_fake(b"up\n");
    let input = Input::Stream(Box::new(std::io::Cursor::new(b"x\n".to_vec())));
    let o = run_in(
        &fake,
        Path::new("/nonexistent"),
        Some(input),
        &["console", "linux", "--exit-after", "0.02"],
    );
    assert_eq!(o.code, 0);
    assert_eq!(o.out, "up\n");
    assert_eq!(fake.borrow().enclaves[0].input, b"x\n");
    let o = run_fake(&fake, &["console", "nobody", "--no-input"]);
    assert_eq!(
        (o.code, o.err.as_str()),
        (1, "atoll: no such enclave: no such enclave\n")
    );
}

#[test]
fn raw_requests_and_garbage_get_refusals() {
    let fake = Fake::shared();
    let o = run_fake(&fake, &["raw", "--kind", "77"]);
    assert_eq!(o.code, 1);
    assert!(o.out.contains("status unknown request (2)"), "{}", o.out);
    assert!(o.err.starts_with("atoll: unknown request: unknown kind 77"));
    let o = run_fake(&fake, &["raw", "--slot-garbage"]);
    assert_eq!(o.code, 1);
    assert!(o.out.contains("status malformed request (1)"));
    assert!(o.err.contains("bad magic"), "{}", o.err);
    // A Target payload cut short.
    let o = run_fake(&fake, &["raw", "--kind", "5", "--hex", "ff ff 05"]);
    assert_eq!(o.code, 1);
    assert!(
        o.err.contains("malformed request: message truncated"),
        "{}",
        o.err
    );
    let o = run_fake(&fake, &["raw", "--kind", "1", "--json"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["payload_bytes"].as_u64()),
        (Some("ok"), Some(68))
    );
    let o = run_fake(&fake, &["raw", "--kind", "1", "--hex", "0g"]);
    assert!(o.code == 1 && o.err.contains("not a hex byte"));
    assert!(fake.borrow().enclaves.is_empty());
}
