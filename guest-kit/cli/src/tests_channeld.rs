//! The CLI's side of virtio: `create` starts atoll-channeld, `console` uses its socket,
//! `destroy` waits for it.

use crate::console::Input;
use crate::fake::Fake;
use crate::tests::{run_in, TempDir};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

fn virtio_description(dir: &std::path::Path, virtio: &str) -> std::path::PathBuf {
    fs::write(dir.join("img"), b"ELF").unwrap();
    let p = dir.join("v.toml");
    fs::write(
        &p,
        format!(
            "[[enclave]]\nname = \"v\"\ncores = [1]\nmemory_mib = 16\nimage = \"img\"\n\
             entry = \"long64\"\n{virtio}"
        ),
    )
    .unwrap();
    p
}

#[test]
fn create_starts_channeld_only_for_an_enclave_with_virtio_devices() {
    let t = TempDir::new();
    let p = virtio_description(
        &t.0,
        "[[enclave.virtio]]\nkind = \"console\"\n[[enclave.virtio]]\nkind = \"blk\"\n\
         image = \"disk.img\"\n",
    );
    let fake = Fake::shared();
    let o = run_in(&fake, &t.0, None, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(
        o.out,
        "started atoll-channeld for v: 2 virtio device(s)\ncreated v (id 1): running\n"
    );
    assert_eq!(
        fs::read_to_string(t.0.join("channeld-started")).unwrap(),
        "v"
    );
    // Without virtio devices, no daemon.
    let t = TempDir::new();
    let p = virtio_description(&t.0, "");
    let fake = Fake::shared();
    let o = run_in(&fake, &t.0, None, &["create", p.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(!t.0.join("channeld-started").exists());
    assert!(!o.out.contains("channeld"), "{}", o.out);
}

#[test]
fn a_daemon_that_does_not_start_is_reported_and_the_enclave_stays() {
    // The test root is missing: the fake starter's write fails.
    let t = TempDir::new();
    let p = virtio_description(&t.0, "[[enclave.virtio]]\nkind = \"console\"\n");
    let fake = Fake::shared();
    let o = run_in(
        &fake,
        &t.0.join("missing"),
        None,
        &["create", p.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(
        o.err.contains("atoll-channeld for v did not start"),
        "{}",
        o.err
    );
    assert!(o.out.contains("created v (id 1): running"));
}

#[test]
fn console_uses_the_daemons_socket_when_there_is_one() {
    let t = TempDir::new();
    let dir = t.0.join("run/atoll/v");
    fs::create_dir_all(&dir).unwrap();
    let l = UnixListener::bind(dir.join("console.sock")).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"boot...\nlogin: ").unwrap();
        let mut got = [0u8; 6];
        s.read_exact(&mut got).unwrap();
        s.write_all(b"ATOLL-OK\n").unwrap();
        got
    });
    let fake = Fake::shared();
    let input = Input::Stream(Box::new(std::io::Cursor::new(b"root\n\n".to_vec())));
    let o = run_in(
        &fake,
        &t.0,
        Some(input),
        &["console", "v", "--until", "ATOLL-OK", "--timeout", "10"],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(o.out.starts_with("boot...\nlogin: ATOLL-OK"), "{}", o.out);
    assert_eq!(&server.join().unwrap(), b"root\n\n");
    // atoll was not asked: the UART path is not taken.
    assert!(fake.borrow().kinds().is_empty());
}

#[test]
fn console_over_the_socket_ends_when_the_daemon_closes_it() {
    let t = TempDir::new();
    let dir = t.0.join("run/atoll/v");
    fs::create_dir_all(&dir).unwrap();
    let l = UnixListener::bind(dir.join("console.sock")).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"bye\n").unwrap();
    });
    let fake = Fake::shared();
    let o = run_in(
        &fake,
        &t.0,
        None,
        &["console", "v", "--no-input", "--until", "never"],
    );
    server.join().unwrap();
    assert_eq!(o.code, 1);
    assert_eq!(o.out, "bye\n");
    assert!(o.err.contains("no longer running"), "{}", o.err);
}

#[test]
fn destroy_waits_for_the_daemon_to_exit() {
    let t = TempDir::new();
    let dir = t.0.join("run/atoll/bare");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("channeld.pid"), "4242\n").unwrap();
    let proc_dir = t.0.join("proc/4242");
    fs::create_dir_all(&proc_dir).unwrap();
    // The "daemon" exits 200 ms after destroy started: removes its pid file and vanishes.
    let (pd, pf) = (proc_dir.clone(), dir.join("channeld.pid"));
    let daemon = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        fs::remove_file(pf).unwrap();
        fs::remove_dir(pd).unwrap();
    });
    let fake = crate::tests::two_enclaves();
    let start = std::time::Instant::now();
    let o = run_in(&fake, &t.0, None, &["destroy", "bare"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(start.elapsed() >= std::time::Duration::from_millis(150));
    assert!(!proc_dir.exists());
    assert!(o.err.is_empty(), "{}", o.err);
    daemon.join().unwrap();
}
