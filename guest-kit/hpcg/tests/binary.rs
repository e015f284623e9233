//! The binary's contract: one `ATOLL-HPCG ` line on stdout, exit codes.

use std::process::Command;

fn hpcg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_atoll-hpcg"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn valid_run_prints_exactly_one_report_line() {
    let out = hpcg(&["16", "16", "16", "--rt", "0", "--threads", "2"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let json = lines[0].strip_prefix("ATOLL-HPCG ").expect("prefix");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["threads"], 2);
    // 4096 rows are too few to split with the default threshold: no extra thread starts.
    assert_eq!(v["workers"], 1);
    assert_eq!(
        (v["nx"].as_u64(), v["ny"].as_u64(), v["nz"].as_u64()),
        (Some(16), Some(16), Some(16))
    );
    assert_eq!(v["ref_residuals"].as_array().map(Vec::len), Some(50));
}

#[test]
fn bad_arguments_exit_2_with_a_message_and_no_report() {
    for (args, needle) in [
        (&["16", "16"][..], "three grid sides"),
        (&["16", "16", "12"][..], "below the minimum"),
        (&["16", "16", "24", "--rt", "soon"][..], "--rt must be"),
        (&["16", "16", "16", "--bogus"][..], "unknown option"),
    ] {
        let out = hpcg(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle) && err.contains("usage:"),
            "{args:?}: {err}"
        );
    }
    let help = hpcg(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: atoll-hpcg"));
}

#[test]
fn timed_run_repeats_sets_and_counts_their_flops() {
    // --rt 1: int(1 s / t_opt) + 1 sets; t_opt is well under 1 s even in debug.
    let out = hpcg(&["16", "16", "16", "--rt", "1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim_end().strip_prefix("ATOLL-HPCG ").unwrap()).unwrap();
    let sets = v["sets"].as_u64().unwrap();
    assert!(sets >= 2, "{sets}");
    assert_eq!(v["quick_path"], false);
    let residuals = v["set_residuals"].as_array().unwrap();
    assert_eq!(residuals.len() as u64, sets);
    // Every set repeats the same computation, so the norms test sees no spread.
    assert!(residuals.iter().all(|r| r == &residuals[0]));
    assert_eq!(v["norms"]["variance"].as_f64(), Some(0.0));
    let s = sets as f64;
    assert_eq!(
        v["flops"]["ddot"].as_f64(),
        Some((3.0 * 50.0 * s + s) * 2.0 * 4096.0)
    );
    assert_eq!(v["total_flops"].as_f64(), Some(66_907_056.0 * s));
    assert_eq!(v["flops_per_set"].as_f64(), Some(66_907_056.0));
}
