//! `[[enclave.virtio]]`: the virtio devices of an enclave, whose data crosses its channel
//! window ([`atoll_abi::channel`]) to `atoll-channeld` in the host.
//!
//! ```toml
//! [[enclave.virtio]]
//! kind = "console"             # the guest's hvc0; at most one; no options
//!
//! [[enclave.virtio]]
//! kind = "net"
//! mac = "02:00:00:00:00:01"    # optional: unicast, not all zeroes; by default 02:…, derived
//!                              #   from the enclave's name and the device's index
//! tap = "atoll0"               # optional: the host's tap device (Linux interface name rules);
//!                              #   none: the daemon picks one
//!
//! [[enclave.virtio]]
//! kind = "blk"
//! path = "/var/lib/atoll/disk.img"   # required: an absolute path in the host (raw image)
//! read_only = true             # optional, default false
//! ```
//!
//! The tables are kept as written ([`VirtioConfig`]); [`devices`] checks them — the same
//! function [`super::check`] runs, so what it accepted always resolves — and gives each with
//! its defaults ([`VirtioDevice`]). Field names in errors are `virtio[k].…` here;
//! [`super::check`] puts `enclave[i].` before them.

use super::{err, ConfigError};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use atoll_abi::channel::{self, dev_flags, DeviceInfo, Kind};
use serde::Deserialize;

/// One `[[enclave.virtio]]` table as written (checked by [`devices`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioConfig {
    /// `net`, `blk` or `console`.
    pub kind: String,
    /// net: the MAC, `xx:xx:xx:xx:xx:xx`.
    #[serde(default)]
    pub mac: Option<String>,
    /// net: the host's tap device.
    #[serde(default)]
    pub tap: Option<String>,
    /// blk: the image file in the host.
    #[serde(default)]
    pub path: Option<String>,
    /// blk: whether the guest may only read.
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// A checked device with its defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioDevice {
    /// What it is.
    pub kind: Kind,
    /// net: the MAC the device offers the guest (virtio 1.2 §5.1.4); zeroes otherwise.
    pub mac: [u8; 6],
    /// net: the host's tap device, if named.
    pub tap: Option<String>,
    /// blk: the image file.
    pub path: Option<String>,
    /// blk: writes are refused (the device offers VIRTIO_BLK_F_RO, virtio 1.2 §5.2.3).
    pub read_only: bool,
}

impl VirtioDevice {
    /// The device as the channel window's header describes it.
    pub fn info(&self) -> DeviceInfo<'_> {
        DeviceInfo {
            kind: self.kind,
            flags: if self.read_only {
                dev_flags::READ_ONLY
            } else {
                0
            },
            mac: self.mac,
            param: self.path.as_deref().or(self.tap.as_deref()).unwrap_or(""),
        }
    }
}

/// The MAC a net device gets when its table names none: locally administered and unicast
/// (first octet 0x02, IEEE 802 §8.2.2's U/L and I/G bits), then four bytes of a hash of the
/// enclave's name and the device's index — so it stays the same from boot to boot, and the
/// devices of one enclave never share one.
pub fn default_mac(enclave: &str, index: usize) -> [u8; 6] {
    // FNV-1a (32 bits): tiny, stable across builds and hosts, and good enough to spread names.
    let h = enclave.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let [a, b, c, d] = h.to_be_bytes();
    // Indices are below channel::MAX_DEVICES (checked before any MAC is made).
    [0x02, a, b, c, d, index as u8]
}

/// Parses `xx:xx:xx:xx:xx:xx` (hex digits, either case).
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for m in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Whether Linux accepts `name` for a network interface (`dev_valid_name`,
/// net/core/dev.c): 1 to IFNAMSIZ − 1 = 15 bytes, not `.` or `..`, no '/', ':' or white space.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// Checks the `[[enclave.virtio]]` tables of enclave `enclave` and gives the devices with their
/// defaults. Errors name `virtio[k].field` (or `virtio` for the whole set).
pub fn devices(enclave: &str, list: &[VirtioConfig]) -> Result<Vec<VirtioDevice>, ConfigError> {
    if list.len() > channel::MAX_DEVICES {
        return Err(err(
            "virtio",
            format!(
                "{} devices, at most {} (one channel window)",
                list.len(),
                channel::MAX_DEVICES
            ),
        ));
    }
    let mut out: Vec<VirtioDevice> = Vec::with_capacity(list.len());
    for (k, v) in list.iter().enumerate() {
        let f = |name: &str| format!("virtio[{k}].{name}");
        let Some(kind) = Kind::from_name(&v.kind) else {
            return Err(err(
                f("kind"),
                format!("'{}' is not a device kind: net, blk or console", v.kind),
            ));
        };
        // Options of other kinds are refused, not ignored: a `path` on a net device is a
        // mistake its author wants to hear about.
        let given = [
            ("mac", v.mac.is_some()),
            ("tap", v.tap.is_some()),
            ("path", v.path.is_some()),
            ("read_only", v.read_only.is_some()),
        ];
        let takes: &[&str] = match kind {
            Kind::Net => &["mac", "tap"],
            Kind::Blk => &["path", "read_only"],
            Kind::Console => &[],
        };
        if let Some((name, _)) = given
            .iter()
            .find(|(name, set)| *set && !takes.contains(name))
        {
            let allowed = if takes.is_empty() {
                String::from("it takes no options")
            } else {
                format!("it takes {}", takes.join(", "))
            };
            return Err(err(
                f(name),
                format!("not an option of a {} device: {allowed}", kind.name()),
            ));
        }
        let mut dev = VirtioDevice {
            kind,
            mac: [0; 6],
            tap: None,
            path: None,
            read_only: v.read_only.unwrap_or(false),
        };
        match kind {
            Kind::Net => {
                dev.mac = match &v.mac {
                    None => default_mac(enclave, k),
                    Some(s) => {
                        let Some(mac) = parse_mac(s) else {
                            return Err(err(
                                f("mac"),
                                format!("'{s}' is not a MAC: six hex bytes like 02:00:00:00:00:01"),
                            ));
                        };
                        if mac[0] & 1 != 0 {
                            return Err(err(
                                f("mac"),
                                format!("{s} is a multicast address: a device needs a unicast one"),
                            ));
                        }
                        if mac == [0; 6] {
                            return Err(err(f("mac"), "all zeroes is not an address"));
                        }
                        mac
                    }
                };
                if let Some(t) = &v.tap {
                    if !valid_ifname(t) {
                        return Err(err(
                            f("tap"),
                            format!(
                                "'{t}' is not an interface name: 1–15 bytes, not '.' or '..', \
                                 no '/', ':' or white space"
                            ),
                        ));
                    }
                    if let Some(j) = out.iter().position(|d| d.tap.as_deref() == Some(t)) {
                        return Err(err(
                            f("tap"),
                            format!("virtio[{j}] already uses tap '{t}': one device per tap"),
                        ));
                    }
                    dev.tap = Some(t.clone());
                }
            }
            Kind::Blk => {
                let Some(p) = &v.path else {
                    return Err(err(f("path"), "missing: a blk device needs its image file"));
                };
                if !p.starts_with('/') {
                    return Err(err(
                        f("path"),
                        format!("'{p}' is not absolute (the daemon in the host opens it)"),
                    ));
                }
                if p.contains('\0') {
                    return Err(err(f("path"), "contains a NUL byte"));
                }
                if p.len() > channel::layout::DEV_PARAM_MAX {
                    return Err(err(
                        f("path"),
                        format!(
                            "{} bytes, at most {} (the channel window's parameter field)",
                            p.len(),
                            channel::layout::DEV_PARAM_MAX
                        ),
                    ));
                }
                if let Some(j) = out.iter().position(|d| d.path.as_deref() == Some(p)) {
                    return Err(err(
                        f("path"),
                        format!("virtio[{j}] already serves '{p}': one device per image"),
                    ));
                }
                dev.path = Some(p.clone());
            }
            Kind::Console => {
                if let Some(j) = out.iter().position(|d| d.kind == Kind::Console) {
                    return Err(err(
                        f("kind"),
                        format!("virtio[{j}] is already the console: at most one"),
                    ));
                }
            }
        }
        out.push(dev);
    }
    // The same placement atoll makes when it lays out the window.
    let kinds: Vec<Kind> = out.iter().map(|d| d.kind).collect();
    let mut rings = [None; channel::MAX_DEVICES];
    match channel::place_rings(&kinds, &mut rings) {
        Ok(_) => Ok(out),
        Err(channel::LayoutError::TooLarge { needed }) => Err(err(
            "virtio",
            format!(
                "their rings need {needed} bytes, the channel window has {} (drop a device; \
                 blk rings are {} KiB each)",
                channel::WINDOW_SIZE,
                Kind::Blk.ring_size() >> 10
            ),
        )),
        Err(e) => Err(err(
            "virtio",
            format!("do not fit the channel window: {e:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, parse_runtime, Context, EnclaveConfig};
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    const BASE: &str = "[[enclave]]\nname = \"vm\"\ncores = [1]\nmemory_mib = 64\nimage = \"vmlinuz\"\nentry = \"linux\"\n";

    fn any() -> Context<'static> {
        Context {
            cores: None,
            modules: None,
        }
    }

    /// An enclave with `tables` (each the body of one `[[enclave.virtio]]`).
    fn with(tables: &[&str]) -> Result<EnclaveConfig, ConfigError> {
        let mut text = String::from(BASE);
        for t in tables {
            text.push_str("[[enclave.virtio]]\n");
            text.push_str(t);
            text.push('\n');
        }
        parse(&text, &any()).map(|mut l| l.remove(0))
    }

    fn refused(tables: &[&str]) -> ConfigError {
        with(tables).unwrap_err()
    }

    #[test]
    fn devices_get_their_defaults() {
        let e = with(&[
            "kind = \"console\"",
            "kind = \"net\"",
            "kind = \"blk\"\npath = \"/srv/a.img\"",
        ])
        .unwrap();
        assert!(e.has_pci_bus() && !e.has_devices());
        let d = e.virtio_devices().unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[0],
            VirtioDevice {
                kind: Kind::Console,
                mac: [0; 6],
                tap: None,
                path: None,
                read_only: false
            }
        );
        assert_eq!(d[1].kind, Kind::Net);
        assert_eq!(d[1].mac, default_mac("vm", 1));
        assert_eq!(d[1].tap, None);
        assert_eq!(d[2].kind, Kind::Blk);
        assert_eq!(d[2].path.as_deref(), Some("/srv/a.img"));
        assert!(!d[2].read_only);
        // The window's view of them.
        assert_eq!(d[0].info().param, "");
        assert_eq!(d[1].info().param, "", "no tap: the daemon picks one");
        assert_eq!(d[1].info().mac, d[1].mac);
        assert_eq!((d[2].info().param, d[2].info().flags), ("/srv/a.img", 0));
        // No tables at all: no bus for them.
        let none = with(&[]).unwrap();
        assert!(none.virtio.is_empty() && !none.has_pci_bus());
        assert_eq!(none.virtio_devices().unwrap(), []);
    }

    #[test]
    fn the_default_mac_is_local_unicast_stable_and_distinct() {
        for (name, k) in [("vm", 0), ("vm", 5), ("a", 1), ("linux-2", 3)] {
            let m = default_mac(name, k);
            assert_eq!(m[0] & 0b11, 0b10, "locally administered, unicast: {m:02x?}");
            assert_ne!(m, [0; 6]);
            assert_eq!(m, default_mac(name, k), "the same every time");
        }
        assert_ne!(default_mac("vm", 0), default_mac("vm", 1));
        assert_ne!(default_mac("vm", 0), default_mac("vn", 0));
        // Two net devices of one enclave.
        let e = with(&["kind = \"net\"", "kind = \"net\""]).unwrap();
        let d = e.virtio_devices().unwrap();
        assert_ne!(d[0].mac, d[1].mac);
        assert_eq!(d[1].mac, default_mac("vm", 1));
    }

    #[test]
    fn net_options() {
        let e = with(&["kind = \"net\"\nmac = \"02:AB:cd:00:00:01\"\ntap = \"atoll-tap-15byt\""])
            .unwrap();
        let d = &e.virtio_devices().unwrap()[0];
        assert_eq!(d.mac, [0x02, 0xab, 0xcd, 0, 0, 1]);
        assert_eq!(d.tap.as_deref(), Some("atoll-tap-15byt"));
        assert_eq!(d.info().param, "atoll-tap-15byt");
        // A globally administered unicast MAC is the author's to choose.
        let e = with(&["kind = \"net\"\nmac = \"00:1b:21:00:00:01\""]).unwrap();
        assert_eq!(e.virtio_devices().unwrap()[0].mac[0], 0x00);
        for bad in [
            "02:00:00:00:01",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1",
            "02:00:00:00:00:001",
            "02-00-00-00-00-01",
            "02:00:00:00:00:0g",
            "02:00:00:00:00:+1",
            "",
        ] {
            let e = refused(&[&format!("kind = \"net\"\nmac = \"{bad}\"")]);
            assert_eq!(e.field, "enclave[0].virtio[0].mac", "{bad}: {e}");
            assert!(e.reason.contains("not a MAC"), "{bad}: {e}");
        }
        let e = refused(&["kind = \"net\"\nmac = \"03:00:00:00:00:01\""]);
        assert!(e.reason.contains("multicast"), "{e}");
        let e = refused(&["kind = \"net\"\nmac = \"ff:ff:ff:ff:ff:ff\""]);
        assert!(e.reason.contains("multicast"), "{e}");
        let e = refused(&["kind = \"net\"\nmac = \"00:00:00:00:00:00\""]);
        assert_eq!(
            e.to_string(),
            "enclave[0].virtio[0].mac: all zeroes is not an address"
        );
        for bad in [
            "",
            "sixteen-bytes-xx",
            ".",
            "..",
            "a/b",
            "a b",
            "a\\tb",
            "eth0:1",
            "tap\\n",
        ] {
            let e = refused(&[&format!("kind = \"net\"\ntap = \"{bad}\"")]);
            assert_eq!(e.field, "enclave[0].virtio[0].tap", "{bad}: {e}");
            assert!(e.reason.contains("not an interface name"), "{bad}: {e}");
        }
        // Two devices on one tap: refused (the second attach would fail in the host).
        let e = refused(&[
            "kind = \"net\"\ntap = \"atl0\"",
            "kind = \"net\"\ntap = \"atl0\"",
        ]);
        assert_eq!(
            e.to_string(),
            "enclave[0].virtio[1].tap: virtio[0] already uses tap 'atl0': one device per tap"
        );
        assert!(with(&[
            "kind = \"net\"\ntap = \"atl0\"",
            "kind = \"net\"\ntap = \"atl1\""
        ])
        .is_ok());
        // Names Linux takes: a dot inside, a pattern TUNSETIFF fills in.
        for good in ["a", "tap.1", "tap%d", "...", "br-0_x"] {
            assert!(
                with(&[&format!("kind = \"net\"\ntap = \"{good}\"")]).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn blk_options() {
        let e = with(&["kind = \"blk\"\npath = \"/d.img\"\nread_only = true"]).unwrap();
        let d = &e.virtio_devices().unwrap()[0];
        assert!(d.read_only);
        assert_eq!(d.info().flags, dev_flags::READ_ONLY);
        let e = with(&["kind = \"blk\"\npath = \"/d.img\"\nread_only = false"]).unwrap();
        assert!(!e.virtio_devices().unwrap()[0].read_only);
        let e = refused(&["kind = \"blk\""]);
        assert_eq!(e.field, "enclave[0].virtio[0].path");
        assert!(e.reason.starts_with("missing"), "{e}");
        for rel in ["d.img", "./d.img", "~/d.img", ""] {
            let e = refused(&[&format!("kind = \"blk\"\npath = \"{rel}\"")]);
            assert_eq!(e.field, "enclave[0].virtio[0].path", "{rel}");
            assert!(e.reason.contains("not absolute"), "{rel}: {e}");
        }
        let e = refused(&["kind = \"blk\"\npath = \"/a\\u0000b\""]);
        assert_eq!(
            e.to_string(),
            "enclave[0].virtio[0].path: contains a NUL byte"
        );
        // The longest path the window's parameter field holds, and one byte more.
        let max = format!("/{}", "p".repeat(channel::layout::DEV_PARAM_MAX - 1));
        let e = with(&[&format!("kind = \"blk\"\npath = \"{max}\"")]).unwrap();
        assert_eq!(e.virtio_devices().unwrap()[0].info().param, max);
        let e = refused(&[&format!("kind = \"blk\"\npath = \"{max}p\"")]);
        assert_eq!(e.field, "enclave[0].virtio[0].path");
        assert!(
            e.reason
                .contains(&format!("at most {}", channel::layout::DEV_PARAM_MAX)),
            "{e}"
        );
        // Two devices on one image: refused, read-only or not (the daemon also locks an image
        // against other enclaves).
        let e = refused(&[
            "kind = \"blk\"\npath = \"/d.img\"",
            "kind = \"blk\"\npath = \"/d.img\"\nread_only = true",
        ]);
        assert_eq!(
            e.to_string(),
            "enclave[0].virtio[1].path: virtio[0] already serves '/d.img': one device per image"
        );
        // Multi-byte UTF-8 counts in bytes.
        let wide = format!("/{}", "é".repeat(channel::layout::DEV_PARAM_MAX / 2));
        assert!(wide.len() > channel::layout::DEV_PARAM_MAX);
        assert_eq!(
            refused(&[&format!("kind = \"blk\"\npath = \"{wide}\"")]).field,
            "enclave[0].virtio[0].path"
        );
    }

    #[test]
    fn options_of_other_kinds_are_refused() {
        for (table, field) in [
            ("kind = \"net\"\npath = \"/d\"", "path"),
            ("kind = \"net\"\nread_only = true", "read_only"),
            (
                "kind = \"blk\"\npath = \"/d\"\nmac = \"02:00:00:00:00:01\"",
                "mac",
            ),
            ("kind = \"blk\"\npath = \"/d\"\ntap = \"t\"", "tap"),
            ("kind = \"console\"\ntap = \"t\"", "tap"),
            ("kind = \"console\"\nread_only = false", "read_only"),
            ("kind = \"console\"\npath = \"/d\"", "path"),
            ("kind = \"console\"\nmac = \"02:00:00:00:00:01\"", "mac"),
        ] {
            let e = refused(&["kind = \"console\"", table]);
            assert_eq!(e.field, format!("enclave[0].virtio[1].{field}"), "{table}");
            assert!(e.reason.starts_with("not an option of a"), "{e}");
        }
    }

    #[test]
    fn kinds_keys_and_counts() {
        let e = refused(&["kind = \"gpu\""]);
        assert_eq!(
            e.to_string(),
            "enclave[0].virtio[0].kind: 'gpu' is not a device kind: net, blk or console"
        );
        // Names are exact.
        assert_eq!(
            refused(&["kind = \"Net\""]).field,
            "enclave[0].virtio[0].kind"
        );
        // Unknown keys, a missing kind and wrong types: the parser names the line.
        let e = refused(&["kind = \"net\"\ncolour = \"red\""]).to_string();
        assert!(e.contains("colour") && e.starts_with("line"), "{e}");
        let e = refused(&["tap = \"t\""]).to_string();
        assert!(e.contains("kind"), "{e}");
        assert!(refused(&["kind = 1"]).to_string().starts_with("line"));
        assert!(
            refused(&["kind = \"blk\"\npath = \"/d\"\nread_only = \"yes\""])
                .to_string()
                .starts_with("line")
        );
        assert!(refused(&["kind = \"net\"\nmac = 2"])
            .to_string()
            .starts_with("line"));
        // One console.
        let e = refused(&["kind = \"console\"", "kind = \"net\"", "kind = \"console\""]);
        assert_eq!(
            e.to_string(),
            "enclave[0].virtio[2].kind: virtio[0] is already the console: at most one"
        );
        // MAX_DEVICES: a console and nets fill it; one more is refused.
        let mut six = vec!["kind = \"console\""];
        six.extend(core::iter::repeat_n(
            "kind = \"net\"",
            channel::MAX_DEVICES - 1,
        ));
        assert_eq!(
            with(&six).unwrap().virtio_devices().unwrap().len(),
            channel::MAX_DEVICES
        );
        six.push("kind = \"net\"");
        let e = refused(&six);
        assert_eq!(e.field, "enclave[0].virtio");
        assert!(
            e.reason.starts_with(&format!(
                "{} devices, at most {}",
                channel::MAX_DEVICES + 1,
                channel::MAX_DEVICES
            )),
            "{e}"
        );
        // Rings that do not fit the window: two disks.
        let blk = "kind = \"blk\"\npath = \"/d\"";
        let mut rings = [None; channel::MAX_DEVICES];
        let Err(channel::LayoutError::TooLarge { needed }) =
            channel::place_rings(&[Kind::Blk, Kind::Blk], &mut rings)
        else {
            panic!("two blk devices fit the window: change this test's set");
        };
        let e = refused(&[blk, "kind = \"blk\"\npath = \"/e\""]);
        assert_eq!(e.field, "enclave[0].virtio");
        assert!(
            e.reason.starts_with(&format!(
                "their rings need {needed} bytes, the channel window has {}",
                channel::WINDOW_SIZE
            )),
            "{e}"
        );
        // One disk beside the others fits.
        assert!(with(&[blk, "kind = \"net\"", "kind = \"console\""]).is_ok());
    }

    #[test]
    fn only_linux_enclaves_and_fields_name_their_enclave() {
        let text = format!(
            "{}[[enclave.virtio]]\nkind = \"console\"\n",
            BASE.replace("entry = \"linux\"", "entry = \"long64\"")
        );
        let e = parse(&text, &any()).unwrap_err();
        assert_eq!(e.field, "enclave[0].virtio");
        assert!(e.reason.contains("entry = \"linux\""), "{e}");
        // The second enclave's device is named as such.
        let text = format!(
            "{BASE}[[enclave.virtio]]\nkind = \"console\"\n{}[[enclave.virtio]]\nkind = \"blk\"\n",
            BASE.replace("\"vm\"", "\"vm2\"").replace("[1]", "[2]")
        );
        assert_eq!(
            parse(&text, &any()).unwrap_err().field,
            "enclave[1].virtio[0].path"
        );
    }

    #[test]
    fn run_time_descriptions_carry_them_in_every_form() {
        let base = BASE.replace("[[enclave]]\n", "");
        // As the CLI sends a table that had `[[enclave.virtio]]`: `[[virtio]]` sub-tables.
        let tables = format!(
            "{base}[[virtio]]\nkind = \"net\"\ntap = \"t0\"\n[[virtio]]\nkind = \"blk\"\npath = \"/d\"\n"
        );
        let inline = format!(
            "{base}virtio = [{{ kind = \"net\", tap = \"t0\" }}, {{ kind = \"blk\", path = \"/d\" }}]\n"
        );
        let wrapped = format!(
            "{BASE}[[enclave.virtio]]\nkind = \"net\"\ntap = \"t0\"\n[[enclave.virtio]]\nkind = \"blk\"\npath = \"/d\"\n"
        );
        let cores = [0, 1];
        let a = parse_runtime(&tables, 100, 0, &cores).unwrap();
        assert_eq!(a.virtio.len(), 2);
        assert_eq!(a, parse_runtime(&inline, 100, 0, &cores).unwrap());
        assert_eq!(a, parse_runtime(&wrapped, 100, 0, &cores).unwrap());
        assert_eq!(a.virtio_devices().unwrap()[0].tap.as_deref(), Some("t0"));
        // Fields without the enclave's prefix, as the other run-time errors.
        let e = parse_runtime(&tables.replace("/d", "d"), 100, 0, &cores).unwrap_err();
        assert_eq!(e.field, "virtio[1].path");
        let e = parse_runtime(&tables.replace("t0", "t/0"), 100, 0, &cores).unwrap_err();
        assert_eq!(e.field, "virtio[0].tap");
    }
}
