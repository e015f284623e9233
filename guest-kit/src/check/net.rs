//! The network modes of `atoll-check` for the SR-IOV test (issue 13, scenario
//! `vf-passthrough`): an enclave with a virtual function of QEMU's `igb` NIC and the host with
//! its physical function move a file over TCP through the NIC's internal switch, and a held-back
//! case points the VF's receive ring outside the enclave's RAM.
//!
//! Busybox's `nc` cannot be the TCP end: measured on the build machine, `nc -l -p PORT` with its
//! standard input at end of file closed the connection after 1,024 of 1,000,000 bytes. So
//! `atoll-check` is both ends:
//!
//! * `--tcp-send HOST PORT --bytes N --seed S [--timeout SEC]` connects (retrying until the
//!   timeout: the receiver may start later), sends N bytes of [`Stream`] `S`, closes, and
//!   prints `{"bytes","sha256","seconds","error"}`;
//! * `--tcp-recv PORT [--timeout SEC] [--bytes N --seed S]` accepts one connection, reads to
//!   its end, prints `{"bytes","sha256","seconds","matches","error"}`; `matches` says whether
//!   what came is exactly stream S of N bytes (`null` without `--seed`).
//!
//! Both sides hash with [`Sha256`] (FIPS 180-4), so the two checksums are computed the same
//! way and a sender's can be compared with a receiver's; the stream is generated, not read
//! from `/dev/urandom`, so either side can recompute it.
//!
//! * `--vf-rx-outside GPA --device BDF` maps the VF's BAR 0 (`resource0` in sysfs) and writes
//!   GPA into receive queue 0's descriptor base ([`igbvf`]); it prints the queue's registers
//!   before and after. Under Debian's `CONFIG_IO_STRICT_DEVMEM=y` the kernel refuses to map a
//!   BAR a driver has claimed (`pci_mmap_resource` → `iomem_is_exclusive`) unless the guest
//!   booted with `iomem=relaxed`: the report's error says so.
//! * `--interrupts NAME` prints the count of every `/proc/interrupts` line whose name starts
//!   with NAME (`{"eth0-rx-0":N,...}`): the VF's MSI-X vectors.
//!
//! Every mode prints one JSON object on one line; `/init` puts it into its `ATOLL-RESULT` line.

use serde_json::{json, Map, Value};

/// The flags that select a network mode (each the first argument).
pub const NET_FLAGS: &[&str] = &[
    "--tcp-send",
    "--tcp-recv",
    "--vf-rx-outside",
    "--interrupts",
];

/// Whether the arguments ask for a network mode.
pub fn wants_net(args: &[String]) -> bool {
    args.first()
        .is_some_and(|a| NET_FLAGS.contains(&a.as_str()))
}

/// Seconds a TCP end waits by default (a TCG-emulated NIC moves a few MB/s at best).
pub const DEFAULT_TIMEOUT_S: u64 = 600;

/// What `atoll-check` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetCommand {
    /// Send stream `seed`, `bytes` long, to `host:port`.
    Send {
        host: String,
        port: u16,
        bytes: u64,
        seed: u64,
        timeout_s: u64,
    },
    /// Receive one connection on `port`; compare it with stream `expect` when given.
    Recv {
        port: u16,
        timeout_s: u64,
        expect: Option<(u64, u64)>,
    },
    /// Point the VF's receive queue 0 at `gpa`.
    RxOutside { gpa: u64, device: String },
    /// Count the interrupts of the lines named `name…`.
    Interrupts { name: String },
}

/// Usage of the network modes.
pub const USAGE: &str =
    "usage: atoll-check --tcp-send HOST PORT --bytes N --seed S [--timeout SEC]\n\
       atoll-check --tcp-recv PORT [--timeout SEC] [--bytes N --seed S]\n\
       atoll-check --vf-rx-outside GPA --device 0000:BB:DD.F\n\
       atoll-check --interrupts NAME";

fn number(flag: &str, v: Option<&String>) -> Result<u64, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| format!("{flag} {v}: not a number"))
}

fn port(v: Option<&String>) -> Result<u16, String> {
    let p = number("port", v)?;
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {p}: not 1..65535"))
}

/// Parses the arguments of a network mode: `Ok(None)` when they ask for none.
pub fn parse_net_args(args: &[String]) -> Result<Option<NetCommand>, String> {
    let Some(mode) = args.first().map(String::as_str) else {
        return Ok(None);
    };
    let mut it = args.iter().skip(1);
    let cmd = match mode {
        "--tcp-send" => {
            let host = it.next().ok_or("--tcp-send needs HOST PORT")?.clone();
            let port = port(it.next())?;
            let (mut bytes, mut seed, mut timeout_s) = (None, None, DEFAULT_TIMEOUT_S);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--bytes" => bytes = Some(number(a, it.next())?),
                    "--seed" => seed = Some(number(a, it.next())?),
                    "--timeout" => timeout_s = number(a, it.next())?,
                    other => return Err(format!("unknown argument {other}")),
                }
            }
            NetCommand::Send {
                host,
                port,
                bytes: bytes.ok_or("--tcp-send needs --bytes N")?,
                seed: seed.ok_or("--tcp-send needs --seed S")?,
                timeout_s,
            }
        }
        "--tcp-recv" => {
            let port = port(it.next())?;
            let (mut bytes, mut seed, mut timeout_s) = (None, None, DEFAULT_TIMEOUT_S);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--bytes" => bytes = Some(number(a, it.next())?),
                    "--seed" => seed = Some(number(a, it.next())?),
                    "--timeout" => timeout_s = number(a, it.next())?,
                    other => return Err(format!("unknown argument {other}")),
                }
            }
            let expect = match (bytes, seed) {
                (Some(b), Some(s)) => Some((b, s)),
                (None, None) => None,
                _ => return Err("--tcp-recv: --bytes and --seed go together".into()),
            };
            NetCommand::Recv {
                port,
                timeout_s,
                expect,
            }
        }
        "--vf-rx-outside" => {
            let gpa = number(mode, it.next())?;
            // The descriptor base's low 7 bits are reserved (82576 datasheet 8.10.3: RDBAL
            // holds a 128-byte aligned address).
            if gpa % 128 != 0 {
                return Err(format!("--vf-rx-outside {gpa:#x}: not 128-byte aligned"));
            }
            let mut device = None;
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--device" => device = it.next().cloned(),
                    other => return Err(format!("unknown argument {other}")),
                }
            }
            let device = device.ok_or("--vf-rx-outside needs --device BDF")?;
            if super::dma::parse_bdf(&device).is_none() {
                return Err(format!("--device {device}: not a PCI address 0000:BB:DD.F"));
            }
            NetCommand::RxOutside { gpa, device }
        }
        "--interrupts" => {
            let name = it.next().ok_or("--interrupts needs NAME")?.clone();
            if it.next().is_some() {
                return Err("--interrupts takes one NAME".into());
            }
            NetCommand::Interrupts { name }
        }
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

/// The deterministic byte stream a sender sends and a receiver can recompute: xorshift64*
/// (Vigna, "An experimental exploration of Marsaglia's xorshift generators", 2016) from the
/// seed, eight little-endian bytes per step. Seed 0 is mapped to a fixed non-zero state
/// (xorshift's state must never be zero).
#[derive(Clone, Debug)]
pub struct Stream {
    state: u64,
    buf: [u8; 8],
    used: usize,
}

impl Stream {
    /// The stream of `seed`, from its first byte.
    pub fn new(seed: u64) -> Self {
        Self {
            state: if seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                seed
            },
            buf: [0; 8],
            used: 8,
        }
    }

    fn step(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.buf = self.step().to_le_bytes();
                self.used = 0;
            }
            *b = self.buf[self.used];
            self.used += 1;
        }
    }
}

/// SHA-256 (FIPS 180-4), incremental: both TCP ends hash what they moved.
#[derive(Clone, Debug)]
pub struct Sha256 {
    h: [u32; 8],
    block: [u8; 64],
    filled: usize,
    length: u64,
}

/// FIPS 180-4 §4.2.2: the first 32 bits of the fractional parts of the cube roots of the first
/// 64 primes.
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// An empty hash (FIPS 180-4 §5.3.3 initial value).
    pub fn new() -> Self {
        Self {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            filled: 0,
            length: 0,
        }
    }

    fn compress(&mut self) {
        let mut w = [0u32; 64];
        for (i, c) in self.block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for t in 16..64 {
            let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
            let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16]
                .wrapping_add(s0)
                .wrapping_add(w[t - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
        for t in 0..64 {
            let t1 = h
                .wrapping_add(e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25))
                .wrapping_add((e & f) ^ (!e & g))
                .wrapping_add(K[t])
                .wrapping_add(w[t]);
            let t2 = (a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22))
                .wrapping_add((a & b) ^ (a & c) ^ (b & c));
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.h.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    /// Adds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let n = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == 64 {
                self.compress();
                self.filled = 0;
            }
        }
    }

    /// The digest as 64 lowercase hex digits (what `sha256sum` prints).
    pub fn hex(mut self) -> String {
        // §5.1.1: a 1 bit, zeros to 56 mod 64 bytes, the length in bits big-endian.
        let bits = self.length.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        self.h.iter().map(|w| format!("{w:08x}")).collect()
    }
}

/// The SHA-256 of `bytes` of stream `seed` (what a receiver should have got).
pub fn stream_sha256(seed: u64, bytes: u64) -> String {
    let mut s = Stream::new(seed);
    let mut h = Sha256::new();
    let mut buf = [0u8; 65536];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    h.hex()
}

/// Compares received data with a stream as it arrives (no copy of the whole file is kept).
#[derive(Clone, Debug)]
pub struct StreamCheck {
    stream: Stream,
    /// Bytes compared so far.
    pub seen: u64,
    /// The offset of the first byte that differed.
    pub first_difference: Option<u64>,
}

impl StreamCheck {
    /// A check against stream `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            stream: Stream::new(seed),
            seen: 0,
            first_difference: None,
        }
    }

    /// Compares the next received bytes.
    pub fn update(&mut self, data: &[u8]) {
        let mut want = vec![0u8; data.len()];
        self.stream.fill(&mut want);
        if self.first_difference.is_none() {
            if let Some(i) = data.iter().zip(&want).position(|(a, b)| a != b) {
                self.first_difference = Some(self.seen + i as u64);
            }
        }
        self.seen += data.len() as u64;
    }

    /// Whether exactly `bytes` bytes of the stream came.
    pub fn matches(&self, bytes: u64) -> bool {
        self.first_difference.is_none() && self.seen == bytes
    }
}

/// One TCP end's report.
pub fn tcp_report(
    bytes: u64,
    sha256: &str,
    seconds: f64,
    matches: Option<bool>,
    error: Option<&str>,
) -> Value {
    json!({
        "bytes": bytes,
        "sha256": sha256,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "matches": matches,
        "error": error,
    })
}

/// Registers of an 82576 virtual function's BAR 0 for receive queue 0 (Linux
/// `drivers/net/ethernet/intel/igbvf/regs.h`: `E1000_RDBAL(0)` … `E1000_RXDCTL(0)`; QEMU's
/// `igbvf` maps them onto the PF's registers of the VF's queue, `vf_to_pf_addr`).
pub mod igbvf {
    /// Receive descriptor base, low 32 bits (128-byte aligned).
    pub const RDBAL0: u64 = 0x2800;
    /// Receive descriptor base, high 32 bits.
    pub const RDBAH0: u64 = 0x2804;
    /// Receive descriptor ring length in bytes.
    pub const RDLEN0: u64 = 0x2808;
    /// Receive descriptor head.
    pub const RDH0: u64 = 0x2810;
    /// Receive descriptor tail.
    pub const RDT0: u64 = 0x2818;
    /// Receive descriptor control (bit 25: queue enable).
    pub const RXDCTL0: u64 = 0x2828;
    /// The registers the report shows, by name.
    pub const SHOWN: &[(&str, u64)] = &[
        ("rdbal", RDBAL0),
        ("rdbah", RDBAH0),
        ("rdlen", RDLEN0),
        ("rdh", RDH0),
        ("rdt", RDT0),
        ("rxdctl", RXDCTL0),
    ];
    /// Bytes of BAR 0 mapped (the VF's register window is 16 KiB).
    pub const BAR0_MAP: usize = 0x4000;
}

/// The register values as a JSON object of hex strings, in [`igbvf::SHOWN`] order.
pub fn registers_json(values: &[(&str, u32)]) -> Value {
    let mut m = Map::new();
    for (name, v) in values {
        m.insert((*name).into(), json!(format!("{v:#010x}")));
    }
    Value::Object(m)
}

/// The interrupts of every `/proc/interrupts` line whose name (its last word) starts with
/// `prefix` followed by nothing or `-` (`eth0`, `eth0-rx-0`, `eth0-tx-0`: igbvf's three MSI-X
/// vectors; not `eth01`), summed over the CPUs, by name in file order.
pub fn interrupt_lines(proc_interrupts: &str, prefix: &str) -> Vec<(String, u64)> {
    let mut lines = proc_interrupts.lines();
    let Some(cpus) = lines.next().map(|l| l.split_whitespace().count()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in lines {
        let Some(name) = line.split_whitespace().last() else {
            continue;
        };
        let ours = name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'));
        if !ours || prefix.is_empty() {
            continue;
        }
        let count = line
            .split_whitespace()
            .skip(1)
            .take(cpus)
            .map(|w| w.parse::<u64>().unwrap_or(0))
            .sum();
        out.push((name.to_string(), count));
    }
    out
}

/// [`interrupt_lines`] as a JSON object.
pub fn interrupts_json(lines: &[(String, u64)]) -> Value {
    Value::Object(lines.iter().map(|(n, c)| (n.clone(), json!(c))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn modes_are_the_first_argument() {
        assert!(wants_net(&args("--tcp-send a 1")));
        assert!(wants_net(&args("--interrupts eth0")));
        assert!(!wants_net(&args("--role host --tcp-send")));
        assert!(!wants_net(&[]));
        assert_eq!(parse_net_args(&args("--dma")), Ok(None));
    }

    #[test]
    fn send_arguments() {
        assert_eq!(
            parse_net_args(&args(
                "--tcp-send 10.0.7.1 5001 --bytes 4194304 --seed 0x2a"
            )),
            Ok(Some(NetCommand::Send {
                host: "10.0.7.1".into(),
                port: 5001,
                bytes: 4_194_304,
                seed: 42,
                timeout_s: DEFAULT_TIMEOUT_S
            }))
        );
        assert!(parse_net_args(&args("--tcp-send 10.0.7.1 5001 --seed 1"))
            .unwrap_err()
            .contains("--bytes"));
        assert!(
            parse_net_args(&args("--tcp-send 10.0.7.1 0 --bytes 1 --seed 1"))
                .unwrap_err()
                .contains("1..65535")
        );
        assert!(parse_net_args(&args("--tcp-send 10.0.7.1 70000 --bytes 1 --seed 1")).is_err());
        assert!(
            parse_net_args(&args("--tcp-send 10.0.7.1 1 --bytes x --seed 1"))
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            parse_net_args(&args("--tcp-send 10.0.7.1 1 --bytes 1 --seed 1 --fast"))
                .unwrap_err()
                .contains("--fast")
        );
        assert!(parse_net_args(&args("--tcp-send")).is_err());
        assert!(parse_net_args(&args("--tcp-send h 1 --bytes")).is_err());
    }

    #[test]
    fn receive_arguments() {
        assert_eq!(
            parse_net_args(&args("--tcp-recv 5001 --timeout 30 --bytes 10 --seed 7")),
            Ok(Some(NetCommand::Recv {
                port: 5001,
                timeout_s: 30,
                expect: Some((10, 7))
            }))
        );
        assert_eq!(
            parse_net_args(&args("--tcp-recv 5001")),
            Ok(Some(NetCommand::Recv {
                port: 5001,
                timeout_s: DEFAULT_TIMEOUT_S,
                expect: None
            }))
        );
        assert!(parse_net_args(&args("--tcp-recv 5001 --bytes 10"))
            .unwrap_err()
            .contains("together"));
    }

    #[test]
    fn rx_outside_arguments() {
        assert_eq!(
            parse_net_args(&args(
                "--vf-rx-outside 0x7f0000000000 --device 0000:00:03.0"
            )),
            Ok(Some(NetCommand::RxOutside {
                gpa: 0x7f00_0000_0000,
                device: "0000:00:03.0".into()
            }))
        );
        assert!(
            parse_net_args(&args("--vf-rx-outside 0x1010 --device 0000:00:03.0"))
                .unwrap_err()
                .contains("aligned")
        );
        assert!(parse_net_args(&args("--vf-rx-outside 0x1000"))
            .unwrap_err()
            .contains("--device"));
        assert!(
            parse_net_args(&args("--vf-rx-outside 0x1000 --device eth0"))
                .unwrap_err()
                .contains("PCI address")
        );
        assert_eq!(
            parse_net_args(&args("--interrupts eth0")),
            Ok(Some(NetCommand::Interrupts {
                name: "eth0".into()
            }))
        );
        assert!(parse_net_args(&args("--interrupts eth0 eth1")).is_err());
    }

    #[test]
    fn streams_are_deterministic_and_chunking_does_not_matter() {
        let mut whole = vec![0u8; 1000];
        Stream::new(5).fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut s = Stream::new(5);
        // Pieces that do not fall on the generator's 8-byte steps.
        for chunk in pieces.chunks_mut(13) {
            s.fill(chunk);
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        Stream::new(6).fill(&mut other);
        assert_ne!(whole, other);
        // Seed 0 is not a stuck generator.
        let mut zero = vec![0u8; 64];
        Stream::new(0).fill(&mut zero);
        assert!(zero.iter().any(|&b| b != 0));
        // Not a short cycle: no two 8-byte words of the first 8 KiB repeat.
        let mut long = vec![0u8; 8192];
        Stream::new(1).fill(&mut long);
        let mut words: Vec<&[u8]> = long.chunks(8).collect();
        words.sort();
        words.dedup();
        assert_eq!(words.len(), 1024);
    }

    #[test]
    fn sha256_matches_the_fips_examples() {
        // FIPS 180-4 example values (NIST CSRC "SHA256.pdf"): "abc", the two-block message,
        // and the empty string.
        let hash = |d: &[u8]| {
            let mut h = Sha256::new();
            h.update(d);
            h.hex()
        };
        assert_eq!(
            hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hash(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Fed in pieces across block boundaries: the same digest.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut h = Sha256::new();
        for c in data.chunks(37) {
            h.update(c);
        }
        assert_eq!(h.hex(), hash(&data));
    }

    #[test]
    fn sha256_agrees_with_sha256sum() {
        // The guest's busybox and the build machine's coreutils print the same digests; the
        // host's `sha256sum` checks a stream large enough to span many blocks.
        let mut data = vec![0u8; 100_003];
        Stream::new(9).fill(&mut data);
        let dir = std::env::temp_dir().join(format!("atoll-net-sha-{}", std::process::id()));
        std::fs::write(&dir, &data).unwrap();
        let out = std::process::Command::new("sha256sum")
            .arg(&dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&dir);
        let theirs = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            theirs.split_whitespace().next().unwrap(),
            stream_sha256(9, 100_003)
        );
    }

    #[test]
    fn received_data_is_checked_against_the_stream() {
        let mut data = vec![0u8; 5000];
        Stream::new(3).fill(&mut data);
        let mut c = StreamCheck::new(3);
        for chunk in data.chunks(777) {
            c.update(chunk);
        }
        assert!(c.matches(5000));
        assert!(!c.matches(5001), "short");
        data[4321] ^= 1;
        let mut c = StreamCheck::new(3);
        c.update(&data[..4000]);
        c.update(&data[4000..]);
        assert_eq!(c.first_difference, Some(4321));
        assert!(!c.matches(5000));
        let mut c = StreamCheck::new(4);
        c.update(&data[..10]);
        assert!(!c.matches(10), "another seed");
    }

    #[test]
    fn tcp_reports() {
        let v = tcp_report(10, "ab", 1.23456, Some(true), None);
        assert_eq!(v["bytes"], 10);
        assert_eq!(v["seconds"], 1.235);
        assert_eq!(v["matches"], true);
        assert_eq!(v["error"], Value::Null);
        let v = tcp_report(0, "", 0.0, None, Some("refused"));
        assert_eq!(v["error"], "refused");
        assert_eq!(v["matches"], Value::Null);
    }

    #[test]
    fn igbvf_queue_registers() {
        // regs.h: queue n < 4 at 0x2800 + n * 0x100; every register in the mapped window.
        assert_eq!((igbvf::RDBAL0, igbvf::RDBAH0), (0x2800, 0x2804));
        assert_eq!(igbvf::RXDCTL0, 0x2828);
        for (_, off) in igbvf::SHOWN {
            assert!(*off as usize + 4 <= igbvf::BAR0_MAP && off % 4 == 0);
        }
        let v = registers_json(&[("rdbal", 0x1234_5680), ("rdbah", 0)]);
        assert_eq!(v["rdbal"], "0x12345680");
        assert_eq!(v["rdbah"], "0x00000000");
    }

    #[test]
    fn interrupt_lines_of_an_interface() {
        let text = "            CPU0       CPU1\n\
                    24:         10          5  PCI-MSI 2097152-edge      eth0-tx-0\n\
                    25:         20          1  PCI-MSI 2097153-edge      eth0-rx-0\n\
                    26:          2          0  PCI-MSI 2097154-edge      eth0\n\
                    27:          9          9  PCI-MSI 4194304-edge      eth01\n\
                    NMI:         0          0   Non-maskable interrupts\n";
        let l = interrupt_lines(text, "eth0");
        assert_eq!(
            l,
            [
                ("eth0-tx-0".to_string(), 15),
                ("eth0-rx-0".to_string(), 21),
                ("eth0".to_string(), 2)
            ]
        );
        assert_eq!(interrupts_json(&l)["eth0-rx-0"], 21);
        assert!(interrupt_lines(text, "eth2").is_empty());
        assert!(interrupt_lines(text, "").is_empty());
        assert!(interrupt_lines("", "eth0").is_empty());
    }
}
