//! `atoll-check --channel-garbage FUNCTION --device N`: the hostile host of issue 14's
//! isolation test. Run in the host beside `atoll-channeld`, it maps the channel function's
//! BARs through sysfs, writes a producer index into device N's to-enclave ring that claims more
//! than the ring holds, rings the doorbell for that device, and waits for atoll to count the
//! error (HOST_ERRORS). atoll must reset that device's rings (the daemon starts it over) and
//! nothing else: the scenario checks the other devices still work afterwards.
//!
//! This module parses the arguments and reports; the mapping is in the binary.

use atoll_abi::channel::layout;

/// The flag that selects this mode.
pub const FLAG: &str = "--channel-garbage";

/// Usage of the mode.
pub const USAGE: &str =
    "usage: atoll-check --channel-garbage 0000:BB:DD.F --device N [--timeout SEC]";

/// What to attack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Garbage {
    /// The channel function's PCI address.
    pub function: String,
    /// The device index in its window.
    pub device: usize,
    /// How long to wait for atoll's count.
    pub timeout_s: u64,
}

/// Whether `args` ask for this mode.
pub fn wants_channel(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == FLAG)
}

/// Parses `--channel-garbage FUNCTION --device N [--timeout SEC]`.
pub fn parse_args(args: &[String]) -> Result<Garbage, String> {
    let mut it = args.iter();
    let mut g = Garbage {
        function: String::new(),
        device: usize::MAX,
        timeout_s: 10,
    };
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            FLAG => g.function = value(FLAG)?,
            "--device" => {
                let v = value("--device")?;
                g.device = v
                    .parse()
                    .map_err(|_| format!("--device: not a number: {v}"))?;
            }
            "--timeout" => {
                let v = value("--timeout")?;
                g.timeout_s = v
                    .parse()
                    .map_err(|_| format!("--timeout: not a number: {v}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if g.function.is_empty() || g.device >= atoll_abi::channel::MAX_DEVICES {
        return Err(format!(
            "--channel-garbage FUNCTION and --device 0..{} are needed",
            atoll_abi::channel::MAX_DEVICES
        ));
    }
    Ok(g)
}

/// The offset in the window of device `device`'s to-enclave ring's producer index, from the
/// header's little-endian bytes (`entry`: the device's 0x200-byte entry).
pub fn to_enclave_prod(entry: &[u8]) -> Option<usize> {
    let at = layout::DEV_TO_ENCLAVE;
    let b = entry.get(at..at + 4)?;
    let ring = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    (ring != 0).then_some(ring + layout::RING_PROD)
}

/// The mode's JSON line.
pub fn report(g: &Garbage, before: u32, after: u32, ms: u64, error: Option<&str>) -> String {
    serde_json::json!({
        "channel_garbage": {
            "function": g.function,
            "device": g.device,
            "host_errors_before": before,
            "host_errors_after": after,
            "counted": after > before,
            "ms": ms,
            "error": error,
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn arguments() {
        assert!(wants_channel(&args("--channel-garbage x")));
        assert!(!wants_channel(&args("--tcp-recv 1")));
        let g = parse_args(&args("--channel-garbage 0000:00:01.1 --device 2")).unwrap();
        assert_eq!(
            g,
            Garbage {
                function: "0000:00:01.1".into(),
                device: 2,
                timeout_s: 10
            }
        );
        let g = parse_args(&args("--channel-garbage f --device 0 --timeout 3")).unwrap();
        assert_eq!(g.timeout_s, 3);
        for bad in [
            "--channel-garbage f",
            "--channel-garbage f --device 6",
            "--channel-garbage f --device x",
            "--channel-garbage --device 1",
            "--channel-garbage f --device 1 --what",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ring_comes_from_the_header() {
        let mut entry = [0u8; layout::DEVICE_STRIDE];
        assert_eq!(to_enclave_prod(&entry), None);
        entry[layout::DEV_TO_ENCLAVE..layout::DEV_TO_ENCLAVE + 4]
            .copy_from_slice(&0x9_0080u32.to_le_bytes());
        assert_eq!(to_enclave_prod(&entry), Some(0x9_0080 + layout::RING_PROD));
        assert_eq!(to_enclave_prod(&entry[..4]), None);
    }

    #[test]
    fn the_report_says_whether_atoll_counted() {
        let g = parse_args(&args("--channel-garbage f --device 1")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&report(&g, 2, 3, 15, None)).unwrap();
        assert_eq!(v["channel_garbage"]["counted"], true);
        let v: serde_json::Value =
            serde_json::from_str(&report(&g, 2, 2, 10_000, Some("timeout"))).unwrap();
        assert_eq!(v["channel_garbage"]["counted"], false);
        assert_eq!(v["channel_garbage"]["error"], "timeout");
    }
}
