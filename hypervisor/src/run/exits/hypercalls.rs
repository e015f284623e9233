//! The hypercall ABI ([`atoll_abi`]): VERSION, CONSOLE_WRITE, REPORT and EXIT from CPL 0, a
//! guest buffer copied into the run state's own (bounded, never allocated per exit); bad
//! numbers, pointers and lengths give an error code in RAX.

use super::{
    hypercall, status, Action, Console, EnclaveRun, EndReason, HYPERCALL_ABI_VERSION,
    MAX_HYPERCALL_BUFFER,
};
use atoll_devices::bounded::lossy_utf8_into;
use atoll_vcpu::{vector, Gpr, GuestMemory, Vcpu};
use boot::GuestPhysAddr;

// Called from `handle` on every exit of its kind: inlined there, as it was before the
// handlers were split by kind (Bochs round trips count each instruction).
#[inline]
pub(super) fn hypercall_exit(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    run: &mut EnclaveRun,
    console: &mut impl Console,
) -> Action {
    if vcpu.cpl() != 0 {
        vcpu.inject_exception(vector::UD, None);
        return Action::Resume;
    }
    let (nr, a, b) = (vcpu.gpr(Gpr::Rax), vcpu.gpr(Gpr::Rbx), vcpu.gpr(Gpr::Rcx));
    let result = match nr {
        hypercall::VERSION => {
            vcpu.set_gpr(Gpr::Rbx, HYPERCALL_ABI_VERSION);
            vcpu.set_gpr(Gpr::Rcx, hypercall::MAX);
            status::OK
        }
        hypercall::CONSOLE_WRITE => match read_buffer(mem, a, b, &mut run.buffer) {
            Ok(len) => {
                run.uart.flush(&run.name, console);
                // Lines as `str::lines` cuts them (a final newline ends the last line, "\r\n"
                // counts as one), each made UTF-8 as `String::from_utf8_lossy` would.
                let bytes = &run.buffer[..len];
                let mut pieces = bytes.split(|b| *b == b'\n').peekable();
                while let Some(piece) = pieces.next() {
                    let last = pieces.peek().is_none();
                    if last && piece.is_empty() {
                        break;
                    }
                    let line = match piece {
                        [rest @ .., b'\r'] if !last => rest,
                        _ => piece,
                    };
                    console.line(&run.name, lossy_utf8_into(line, &mut run.text));
                }
                status::OK
            }
            Err(s) => s,
        },
        // Validated without recursion and kept raw in the enclave's budget: bad JSON, too deep,
        // not an object, or over the budget is INVALID and changes nothing.
        hypercall::REPORT => match read_buffer(mem, a, b, &mut run.buffer) {
            Ok(len) => match run.results.report(&run.buffer[..len]) {
                Ok(()) => status::OK,
                Err(_) => status::INVALID,
            },
            Err(s) => s,
        },
        hypercall::EXIT => {
            run.uart.flush(&run.name, console);
            return Action::Stop(EndReason::Exit { code: a });
        }
        #[cfg(feature = "fault-injection")]
        hypercall::FAULT_INJECT => crate::run::fault_injection::inject(a),
        _ => status::UNKNOWN,
    };
    vcpu.set_gpr(Gpr::Rax, result);
    vcpu.skip_instruction();
    Action::Resume
}

/// Copies `len` bytes at guest-physical `gpa` into `buf` (the run state's, at least
/// [`MAX_HYPERCALL_BUFFER`] long); returns `len`.
fn read_buffer(mem: &impl GuestMemory, gpa: u64, len: u64, buf: &mut [u8]) -> Result<usize, u64> {
    if len > MAX_HYPERCALL_BUFFER {
        return Err(status::INVALID);
    }
    let buf = buf.get_mut(..len as usize).ok_or(status::INVALID)?;
    mem.read(GuestPhysAddr::new(gpa), buf)
        .ok_or(status::FAULT)?;
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::config::IoPolicy;
    use crate::run::exits::testkit::*;
    use alloc::string::String;
    use atoll_vcpu::Exit;

    #[test]
    fn hypercalls() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::VERSION;
        w.exit(Exit::Hypercall);
        assert_eq!(
            (
                w.vcpu.gprs[Gpr::Rax as usize],
                w.vcpu.gprs[Gpr::Rbx as usize]
            ),
            (status::OK, 1)
        );

        w.ram[0x100..0x10b].copy_from_slice(b"hello\nworld");
        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::CONSOLE_WRITE;
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x100;
        w.vcpu.gprs[Gpr::Rcx as usize] = 11;
        w.exit(Exit::Hypercall);
        assert_eq!(w.vcpu.gprs[Gpr::Rax as usize], status::OK);
        assert_eq!(w.console.0.len(), 2);
        assert_eq!(w.console.0[1], ("alpha".into(), "world".into()));

        // Outside RAM, too long, unknown: error codes, never a panic.
        for (nr, gpa, len, want) in [
            (hypercall::CONSOLE_WRITE, 0xffff, 2, status::FAULT),
            (hypercall::CONSOLE_WRITE, u64::MAX, 16, status::FAULT),
            (
                hypercall::CONSOLE_WRITE,
                0,
                MAX_HYPERCALL_BUFFER + 1,
                status::INVALID,
            ),
            (hypercall::REPORT, 0x100, 5, status::INVALID),
            (99, 0, 0, status::UNKNOWN),
        ] {
            w.vcpu.gprs[Gpr::Rax as usize] = nr;
            w.vcpu.gprs[Gpr::Rbx as usize] = gpa;
            w.vcpu.gprs[Gpr::Rcx as usize] = len;
            assert_eq!(w.exit(Exit::Hypercall), Action::Resume);
            assert_eq!(
                w.vcpu.gprs[Gpr::Rax as usize],
                want,
                "hypercall {nr} {gpa:#x}+{len}"
            );
        }

        let json = br#"{"pages_checked": 4096, "cpuid_cycles": 812}"#;
        w.ram[0x200..0x200 + json.len()].copy_from_slice(json);
        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::REPORT;
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x200;
        w.vcpu.gprs[Gpr::Rcx as usize] = json.len() as u64;
        w.exit(Exit::Hypercall);
        assert_eq!(w.run.results.to_map()["pages_checked"], 4096);

        // Bounded REPORT: too deep, not an object, or past the budget is INVALID and changes
        // nothing; a budget refusal is counted.
        let call = |w: &mut World, bytes: &[u8]| {
            w.ram[0x1000..0x1000 + bytes.len()].copy_from_slice(bytes);
            w.vcpu.gprs[Gpr::Rax as usize] = hypercall::REPORT;
            w.vcpu.gprs[Gpr::Rbx as usize] = 0x1000;
            w.vcpu.gprs[Gpr::Rcx as usize] = bytes.len() as u64;
            w.exit(Exit::Hypercall);
            w.vcpu.gprs[Gpr::Rax as usize]
        };
        let deep = alloc::format!("{{\"a\":{}1{}}}", "[".repeat(8), "]".repeat(8));
        let before = w.run.results.used();
        assert_eq!(call(&mut w, deep.as_bytes()), status::INVALID);
        assert_eq!(call(&mut w, b"[1]"), status::INVALID);
        assert_eq!(w.run.results.used(), before);
        let mut filled = 0;
        for i in 0..100 {
            let json = alloc::format!("{{\"k{i}\":\"{}\"}}", "z".repeat(1000));
            match call(&mut w, json.as_bytes()) {
                status::OK => filled += 1,
                s => {
                    assert_eq!(s, status::INVALID);
                    assert_eq!(w.run.results.dropped(), json.len() as u64);
                    break;
                }
            }
        }
        assert!(filled > 0 && w.run.results.used() <= atoll_devices::bounded::REPORT_BUDGET);
        assert_eq!(
            w.run.results.to_map()["pages_checked"],
            4096,
            "earlier keys kept"
        );

        // CONSOLE_WRITE: "\r\n" ends a line, a final newline adds no empty line, invalid
        // UTF-8 shows as U+FFFD.
        w.console.0.clear();
        let text = b"a\r\nb\xffc\n\nd\r\n";
        w.ram[0x100..0x100 + text.len()].copy_from_slice(text);
        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::CONSOLE_WRITE;
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x100;
        w.vcpu.gprs[Gpr::Rcx as usize] = text.len() as u64;
        w.exit(Exit::Hypercall);
        let lines: Vec<&str> = w.console.0.iter().map(|(_, l)| l.as_str()).collect();
        let want: Vec<String> = String::from_utf8_lossy(text)
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(lines, want);
        assert_eq!(lines, ["a", "b\u{fffd}c", "", "d"]);

        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::EXIT;
        w.vcpu.gprs[Gpr::Rbx as usize] = 7;
        assert_eq!(
            w.exit(Exit::Hypercall),
            Action::Stop(EndReason::Exit { code: 7 })
        );

        // From user mode: #UD, nothing done.
        w.vcpu.cpl = 3;
        w.vcpu.injected = None;
        assert_eq!(w.exit(Exit::Hypercall), Action::Resume);
        assert_eq!(w.vcpu.injected, Some((vector::UD, None)));
    }
}
