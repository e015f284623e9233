//! The guest's console lines, as the platform reads them: every line is printed; an
//! `ATOLL-GUEST-CHECK {json}`, `ATOLL-GUEST-IDLE {json}` or `ATOLL-GUEST-EXIT status=N` line
//! becomes a result (checked
//! without recursion and kept raw in a fixed budget), and `atoll-init:` and the
//! `ATOLL-IDLE begin`/`end` pair become the measurements of the report (boot to init, the idle
//! window's exits by class).

use super::{Class, Shared};
use crate::run::exits::Console;
use alloc::string::{String, ToString};
use core::sync::atomic::Ordering;

/// Guest console markers atoll measures between.
#[derive(Default)]
pub(super) struct Marks {
    /// TSC when the boot vCPU first entered the guest.
    start: Option<u64>,
    /// TSC of the first `atoll-init:` line.
    init: Option<u64>,
    /// TSC and class totals at `ATOLL-IDLE begin`.
    idle_begin: Option<(u64, [u64; 4])>,
    /// The idle window: TSC cycles and class counts.
    idle: Option<(u64, [u64; 4])>,
}

/// Files `json` under `key`: kept raw after a check without recursion, or as its text if it
/// is not JSON (or nests too deep). What exceeds the store's budget is counted there.
fn file_json(results: &spin::Mutex<atoll_devices::bounded::ReportStore>, key: &str, json: &str) {
    use atoll_devices::bounded::{validate, Limits, ValueKind};
    let value = json.trim();
    let _ = match validate(value.as_bytes(), Limits::GUEST) {
        Ok(()) => results
            .lock()
            .insert(key, value.as_bytes(), ValueKind::Json),
        Err(_) => results.lock().insert(key, json.as_bytes(), ValueKind::Text),
    };
}

/// Whether `key` may name a result of `ATOLL-RESULT key {json}`: 1–32 of a–z, 0–9, `_`, and
/// not a key atoll itself files.
fn result_key_ok(key: &str) -> bool {
    (1..=32).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !matches!(key, "guest_check" | "idle_timer" | "guest_exit_status")
}

/// Files a console line that reports a result (`ATOLL-RESULT key {json}`, for any key
/// [`result_key_ok`] allows, as well as the fixed ones below): `ATOLL-GUEST-CHECK {json}` (result
/// `guest_check`) or `ATOLL-GUEST-IDLE {json}` (`idle_timer`), each kept raw after a check
/// without recursion (text if it is not JSON), or `ATOLL-GUEST-EXIT status=N`. Returns
/// whether the line was one. What exceeds the store's budget is counted there. Shared by the
/// enclaves' platform and the root partition's console.
pub fn capture_result(
    line: &str,
    results: &spin::Mutex<atoll_devices::bounded::ReportStore>,
) -> bool {
    use atoll_devices::bounded::ValueKind;
    // The JSON reports a guest prints, and the result key each becomes: the check's, and the
    // idle window's periodic timer (`atoll-check --idle-timer`).
    const JSON_LINES: [(&str, &str); 2] = [
        ("ATOLL-GUEST-CHECK ", "guest_check"),
        ("ATOLL-GUEST-IDLE ", "idle_timer"),
    ];
    if let Some((json, key)) = JSON_LINES
        .iter()
        .find_map(|(prefix, key)| Some((line.strip_prefix(prefix)?, *key)))
    {
        file_json(results, key, json);
        true
    } else if let Some((key, json)) = line
        .strip_prefix("ATOLL-RESULT ")
        .and_then(|rest| rest.split_once(' '))
        .filter(|(key, _)| result_key_ok(key))
    {
        // A named result (the host's lifecycle and soak steps): `ATOLL-RESULT key {json}`.
        file_json(results, key, json);
        true
    } else if let Some(status) = line.strip_prefix("ATOLL-GUEST-EXIT status=") {
        if let Ok(n) = status.trim().parse::<i64>() {
            let mut text = atoll_devices::bounded::FixedBuf::<20>::new();
            if core::fmt::Write::write_fmt(&mut text, format_args!("{n}")).is_ok() {
                let _ =
                    results
                        .lock()
                        .insert("guest_exit_status", text.as_bytes(), ValueKind::Json);
            }
        }
        true
    } else {
        false
    }
}

impl Shared {
    /// Records the boot vCPU's first entry.
    pub fn started(&self, tsc: u64) {
        self.marks.lock().start.get_or_insert(tsc);
    }

    fn class_totals(&self) -> [u64; 4] {
        let mut t = [0u64; 4];
        for m in &self.mailboxes {
            for (i, c) in m.classes.0.iter().enumerate() {
                t[i] += c.load(Ordering::Relaxed);
            }
        }
        t
    }

    /// Exits of each vCPU so far by class ([`Class::ALL`] order, the control protocol's
    /// `VCPU_EXIT_CLASSES`), in vCPU order, into `out`: returns how many vCPUs it wrote (at
    /// most `out.len()`, so a caller's fixed buffer bounds it).
    pub fn vcpu_exits(&self, out: &mut [[u64; 4]]) -> usize {
        let mut n = 0;
        for (m, o) in self.mailboxes.iter().zip(out.iter_mut()) {
            *o = core::array::from_fn(|i| m.classes.0[i].load(Ordering::Relaxed));
            n += 1;
        }
        n
    }

    /// Exit classes over the whole run, summed over the vCPUs.
    pub fn classes(&self) -> serde_json::Map<String, serde_json::Value> {
        let t = self.class_totals();
        Class::ALL
            .iter()
            .map(|c| (c.name().to_string(), t[*c as usize].into()))
            .collect()
    }

    /// The measured figures for the report: `boot_to_init` and `idle` (when seen).
    pub fn measurements(&self, tsc_hz: u64) -> serde_json::Map<String, serde_json::Value> {
        let m = self.marks.lock();
        let us = |cycles: u64| (u128::from(cycles) * 1_000_000 / u128::from(tsc_hz.max(1))) as u64;
        let mut out = serde_json::Map::new();
        if let (Some(s), Some(i)) = (m.start, m.init) {
            let cycles = i.saturating_sub(s);
            out.insert(
                "boot_to_init".into(),
                serde_json::json!({ "cycles": cycles, "us": us(cycles) }),
            );
        }
        if let Some((cycles, c)) = m.idle {
            let mut o = serde_json::json!({ "cycles": cycles, "us": us(cycles) });
            for class in Class::ALL {
                o[class.name()] = c[class as usize].into();
            }
            out.insert("idle".into(), o);
        }
        out
    }

    /// A console line from the guest: printed, and looked at for the lines atoll measures or
    /// reports.
    pub(super) fn guest_line(&self, line: &str, now: u64, console: &mut impl Console) {
        console.line(&self.name, line);
        if capture_result(line, &self.results) {
            return;
        }
        if line.starts_with("atoll-init:") {
            self.marks.lock().init.get_or_insert(now);
        } else if line.trim() == "ATOLL-IDLE begin" {
            let totals = self.class_totals();
            self.marks.lock().idle_begin = Some((now, totals));
        } else if line.trim() == "ATOLL-IDLE end" {
            let totals = self.class_totals();
            let mut m = self.marks.lock();
            if let Some((t0, c0)) = m.idle_begin {
                let mut d = [0u64; 4];
                for i in 0..4 {
                    d[i] = totals[i].saturating_sub(c0[i]);
                }
                m.idle = Some((now.saturating_sub(t0), d));
            }
        }
    }

    /// Prints what COM1 still holds (the enclave ended mid-line).
    pub fn flush_console(&self, now: u64, console: &mut impl Console) {
        // The enclave has ended: holding the UART while the line is handled delays nobody.
        let mut u = self.uart.lock();
        if let Some(line) = u.flush() {
            self.guest_line(line, now, console);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::run::vplat::testkit::*;

    #[test]
    fn guest_check_lines_are_kept_raw_and_bounded() {
        let s = Shared::new("lx", &[4], 1_000_000_000);
        let mut c = Lines::default();
        let map = |s: &Shared| s.results.lock().to_map();
        // Not JSON: kept as its text (as before), untrimmed.
        s.guest_line("ATOLL-GUEST-CHECK {oops ", 0, &mut c);
        assert_eq!(map(&s)["guest_check"], "{oops ");
        // Nested deeper than the ABI allows: text too, never a recursive parse.
        let deep = "[".repeat(10_000);
        s.guest_line(&alloc::format!("ATOLL-GUEST-CHECK {deep}"), 0, &mut c);
        assert_eq!(map(&s)["guest_check"], deep.as_str());
        // Valid: replaces the earlier value, parsed for the summary.
        s.guest_line(
            "ATOLL-GUEST-CHECK  {\"ok\":false,\"n\":[1,{\"x\":null}]} ",
            0,
            &mut c,
        );
        assert_eq!(
            serde_json::Value::Object(map(&s)),
            serde_json::json!({"guest_check": {"ok": false, "n": [1, {"x": null}]}})
        );
        s.guest_line("ATOLL-GUEST-EXIT status=-3", 0, &mut c);
        s.guest_line("ATOLL-GUEST-EXIT status=x", 0, &mut c);
        assert_eq!(map(&s)["guest_exit_status"], -3);
        // A flood of check lines never grows the store past its budget.
        let big = alloc::format!("\"{}\"", "y".repeat(atoll_devices::uart::LINE_MAX - 2));
        for _ in 0..100 {
            s.guest_line(&alloc::format!("ATOLL-GUEST-CHECK {big}"), 0, &mut c);
        }
        let r = s.results.lock();
        assert!(r.used() <= atoll_devices::bounded::REPORT_BUDGET);
        assert_eq!(r.dropped(), 0, "one key, replaced: fits");
    }

    #[test]
    fn named_result_lines_file_their_key_and_refuse_bad_keys() {
        let s = Shared::new("lx", &[4], 1_000_000_000);
        let mut c = Lines::default();
        let map = |s: &Shared| s.results.lock().to_map();
        s.guest_line("ATOLL-RESULT lifecycle_zero {\"rc\":0}", 0, &mut c);
        s.guest_line("ATOLL-RESULT soak {\"cycles\":3} ", 0, &mut c);
        // Not JSON: its text.
        s.guest_line("ATOLL-RESULT notes {oops", 0, &mut c);
        // Keys atoll files itself, bad characters, too long, no value: not results.
        s.guest_line("ATOLL-RESULT guest_check {\"ok\":true}", 0, &mut c);
        s.guest_line("ATOLL-RESULT Bad-Key {}", 0, &mut c);
        s.guest_line(
            &alloc::format!("ATOLL-RESULT {} {{}}", "k".repeat(33)),
            0,
            &mut c,
        );
        s.guest_line("ATOLL-RESULT lonely", 0, &mut c);
        assert_eq!(
            serde_json::Value::Object(map(&s)),
            serde_json::json!({"lifecycle_zero": {"rc": 0}, "soak": {"cycles": 3}, "notes": "{oops"})
        );
    }

    #[test]
    fn idle_timer_lines_are_kept_raw_and_bounded() {
        let s = Shared::new("lx", &[4], 1_000_000_000);
        let mut c = Lines::default();
        let map = |s: &Shared| s.results.lock().to_map();
        // The idle window's timer report: its own key, beside the check's.
        s.guest_line("ATOLL-GUEST-CHECK {\"ok\":true}", 0, &mut c);
        s.guest_line(
            "ATOLL-GUEST-IDLE {\"max_gap_us\":10123,\"wakeups\":5900,\"source\":\"rdtsc\"} ",
            0,
            &mut c,
        );
        assert_eq!(
            serde_json::Value::Object(map(&s)),
            serde_json::json!({
                "guest_check": {"ok": true},
                "idle_timer": {"max_gap_us": 10123, "wakeups": 5900, "source": "rdtsc"},
            })
        );
        // The line is printed as the partition's like any other.
        assert!(c.0.iter().any(|(_, l)| l.starts_with("ATOLL-GUEST-IDLE ")));
        // Not JSON, or nested deeper than the ABI allows: kept as text, never parsed
        // recursively; a later valid report replaces it.
        s.guest_line("ATOLL-GUEST-IDLE max_gap_us=5", 0, &mut c);
        assert_eq!(map(&s)["idle_timer"], "max_gap_us=5");
        // (Within a console line's length, as the UART would deliver it.)
        let deep = "{\"a\":".repeat(atoll_devices::uart::LINE_MAX / 8);
        s.guest_line(&alloc::format!("ATOLL-GUEST-IDLE {deep}"), 0, &mut c);
        assert!(map(&s)["idle_timer"] == deep.as_str(), "kept as text");
        // The prefix needs its space: a look-alike is an ordinary line.
        s.guest_line("ATOLL-GUEST-IDLEX {\"max_gap_us\":1}", 0, &mut c);
        assert!(map(&s)["idle_timer"] == deep.as_str(), "not filed");
        // A flood never grows the store past its budget.
        let big = alloc::format!("\"{}\"", "z".repeat(atoll_devices::uart::LINE_MAX - 2));
        for _ in 0..100 {
            s.guest_line(&alloc::format!("ATOLL-GUEST-IDLE {big}"), 0, &mut c);
        }
        let r = s.results.lock();
        assert!(r.used() <= atoll_devices::bounded::REPORT_BUDGET);
        assert_eq!(r.dropped(), 0, "one key, replaced: fits");
        assert_eq!(r.to_map()["guest_check"]["ok"], true);
    }

    #[test]
    fn idle_window_counts_classes() {
        let s = Shared::new("lx", &[4, 5], 1_000);
        let mut c = Lines::default();
        s.started(100);
        s.guest_line("atoll-init: /atoll-check", 1100, &mut c);
        s.guest_line("ATOLL-IDLE begin", 2000, &mut c);
        s.mailboxes[0].count(Class::Timer);
        s.mailboxes[1].count(Class::Timer);
        s.mailboxes[1].count(Class::Hlt);
        s.guest_line("ATOLL-IDLE end", 4000, &mut c);
        s.mailboxes[0].count(Class::Timer);
        let m = s.measurements(1_000);
        assert_eq!(m["boot_to_init"]["cycles"], 1000);
        assert_eq!(m["boot_to_init"]["us"], 1_000_000);
        assert_eq!(m["idle"]["cycles"], 2000);
        assert_eq!(m["idle"]["timer"], 2);
        assert_eq!(m["idle"]["hlt"], 1);
        assert_eq!(m["idle"]["ipi"], 0);
        assert_eq!(s.classes()["timer"], 3);
        let mut per = [[u64::MAX; 4]; 3];
        assert_eq!(s.vcpu_exits(&mut per), 2, "one entry per vCPU");
        assert_eq!(per, [[2, 0, 0, 0], [1, 0, 1, 0], [u64::MAX; 4]]);
        let mut short = [[0u64; 4]; 1];
        assert_eq!(
            s.vcpu_exits(&mut short),
            1,
            "bounded by the caller's buffer"
        );
        assert_eq!(short, [[2, 0, 0, 0]]);
        // The control protocol names the classes in the same order.
        let names: alloc::vec::Vec<&str> = Class::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names, atoll_abi::control::VCPU_EXIT_CLASSES);
    }
}
