//! The benches' plots (PNG, `plotters`): the isolation bench's loaded/solo ratio of HPCG's
//! cycles, its cycles over native's solo run, and FWQ's largest detour on HPCG's CPU, per
//! configuration and load.
//!
//! Text needs a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core` (`cargo xtask
//! setup` installs it), registered with plotters' `ab_glyph` backend, so no font library of the
//! system is linked.

use crate::bench_isolation::{ConfigResult, Options};
use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::path::Path;

/// Where Debian's `fonts-dejavu-core` puts the font.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers [`FONT`] as plotters' `sans-serif` (once per process).
fn font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| {
            format!("{FONT}: {e} (the plots' font: run `cargo xtask setup` or install fonts-dejavu-core)")
        })?;
        // plotters keeps the font for the process's life.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT}: not a font plotters can read"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// One bar: its group (load), series (configuration) and height.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub load: String,
    pub config: String,
    pub value: f64,
}

/// The bars of the three panels: HPCG's loaded/solo cycle ratio (loaded runs only), its timed
/// cycles over the native configuration's solo run (every run, when native ran), and FWQ's
/// largest detour in % of the quantum on HPCG's CPUs (all the workload's CPUs when HPCG ran on
/// all of them; every run).
pub struct Panels {
    pub ratio: Vec<Bar>,
    pub vs_native: Vec<Bar>,
    pub detour: Vec<Bar>,
}

pub fn bars(results: &[ConfigResult], opts: &Options) -> Panels {
    let mut p = Panels {
        ratio: Vec::new(),
        vs_native: Vec::new(),
        detour: Vec::new(),
    };
    let native_solo = results
        .iter()
        .find(|r| r.config == crate::bench_isolation::Config::Native)
        .and_then(|r| r.solo()?.cycles().ok())
        .filter(|c| *c > 0);
    for r in results {
        let hpcg_cpus = r.hpcg_cpus(opts);
        for m in &r.runs {
            let bar = |value| Bar {
                load: m.load.clone(),
                config: r.config.name().into(),
                value,
            };
            if m.load != "none" {
                if let Some(x) = r.ratio(m) {
                    p.ratio.push(bar(x));
                }
            }
            if let (Some(n), Ok(c)) = (native_solo, m.cycles()) {
                p.vs_native.push(bar(c as f64 / n as f64));
            }
            let worst = m
                .fwq_cpus()
                .iter()
                .filter(|c| c.min > 0)
                .filter(|c| {
                    hpcg_cpus
                        .as_ref()
                        .is_none_or(|h| h.iter().any(|x| u64::from(*x) == c.cpu))
                })
                .map(|c| 100.0 * c.max_detour as f64 / c.min as f64)
                .fold(0.0, f64::max);
            p.detour.push(bar(worst));
        }
    }
    p
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
];

/// A grouped bar chart of `bars` in `area`.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    bars: &[Bar],
    floor: f64,
    y_fmt: fn(&f64) -> String,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut loads: Vec<&str> = Vec::new();
    let mut configs: Vec<&str> = Vec::new();
    for b in bars {
        if !loads.contains(&b.load.as_str()) {
            loads.push(&b.load);
        }
        if !configs.contains(&b.config.as_str()) {
            configs.push(&b.config);
        }
    }
    let top = bars.iter().map(|b| b.value).fold(floor, f64::max);
    let low = bars.iter().map(|b| b.value).fold(floor, f64::min);
    let span = (top - low).max(1e-6);
    let (y0, y1) = (low - span * 0.05, top + span * 0.15);
    let n = loads.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(95)
        .build_cartesian_2d(0.0..n, y0..y1)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let labels = loads.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(loads.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 {
                labels.get(i).map_or(String::new(), |s| (*s).to_string())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&y_fmt)
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let w = 0.8 / configs.len().max(1) as f64;
    for (ci, c) in configs.iter().enumerate() {
        let colour = COLOURS[ci % COLOURS.len()];
        let rects = bars.iter().filter(|b| b.config == *c).map(|b| {
            let li = loads.iter().position(|l| *l == b.load).unwrap_or(0) as f64;
            let x = li + 0.1 + w * ci as f64;
            Rectangle::new([(x, y0), (x + w * 0.9, b.value)], colour.filled())
        });
        chart
            .draw_series(rects)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(*c)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// Draws the isolation bench's figure into `png`.
pub fn isolation(results: &[ConfigResult], opts: &Options, png: &Path) -> Result<()> {
    font()?;
    let p = bars(results, opts);
    if p.detour.is_empty() {
        bail!("nothing to plot: no measurements");
    }
    let root = BitMapBackend::new(png, (2100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let areas = root.split_evenly((1, 3));
    panel(
        &areas[0],
        &format!(
            "HPCG {0}³ loaded/solo cycles ({1})",
            opts.size,
            opts.emulator.name()
        ),
        "loaded / solo (1 = no interference)",
        &p.ratio,
        1.0,
        |v| format!("{v:.4}"),
    )?;
    panel(
        &areas[1],
        "HPCG cycles / native solo",
        "cycles / native's solo cycles",
        &p.vs_native,
        1.0,
        |v| format!("{v:.4}"),
    )?;
    panel(
        &areas[2],
        if opts.hpcg_guest_cpus().ok().flatten().is_some() {
            "FWQ largest detour on HPCG's CPU, % of a quantum"
        } else {
            "FWQ largest detour, % of the fastest quantum"
        },
        "max detour, %",
        &p.detour,
        0.0,
        |v| format!("{v:.2}"),
    )?;
    root.present()
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_isolation::{parse_console, Config};
    use crate::scenario::Emulator;

    fn result(config: Config, solo: u64, loaded: u64) -> ConfigResult {
        let mut s = String::new();
        for (n, (load, c)) in [("none", solo), ("cpu", loaded)].into_iter().enumerate() {
            s.push_str(&format!(
                "ATOLL-ISO-HPCG {n} {{\"valid\":true,\"cycles\":{c}}}\n\
                 ATOLL-ISO-FWQ {n} {{\"cpus\":[{{\"cpu\":2,\"min\":1000,\"max_detour\":{}}},\
                 {{\"cpu\":3,\"min\":1000,\"max_detour\":1}},{{\"cpu\":1,\"min\":1000,\"max_detour\":2}}]}}\n\
                 ATOLL-ISO-RUN {n} {{\"load\":\"{load}\",\"problem\":\"\"}}\n",
                c / 100
            ));
        }
        ConfigResult {
            config,
            runs: parse_console(&s).unwrap(),
            wall_s: 1.0,
        }
    }

    #[test]
    fn bars_are_the_loaded_ratios_cycles_over_native_and_detours_on_hpcg_s_cpu() {
        let r = vec![
            result(Config::Native, 1000, 1500),
            result(Config::Atoll, 1100, 1100),
        ];
        let o = Options::new(Emulator::Qemu, "cpu", 16, 0, 2000, 0, "native,atoll").unwrap();
        let p = bars(&r, &o);
        let bar = |load: &str, config: &str, value| Bar {
            load: load.into(),
            config: config.into(),
            value,
        };
        assert_eq!(
            p.ratio,
            [bar("cpu", "native", 1.5), bar("cpu", "atoll", 1.0)]
        );
        assert_eq!(
            p.vs_native,
            [
                bar("none", "native", 1.0),
                bar("cpu", "native", 1.5),
                bar("none", "atoll", 1.1),
                bar("cpu", "atoll", 1.1)
            ]
        );
        // HPCG on the guest's CPU 1 (nohz_full=1), natively on core 3: their detours only.
        assert_eq!(p.detour.len(), 4);
        assert_eq!(p.detour[1].value, 0.1, "native: core 3's 1 of 1000 cycles");
        assert_eq!(p.detour[3].value, 0.2, "atoll: CPU 1's 2 of 1000 cycles");
        // HPCG on every CPU: the worst of them.
        let all = Options {
            guest_cmdline: String::new(),
            ..o.clone()
        };
        assert_eq!(bars(&r, &all).detour[1].value, 1.5, "15 of 1000 cycles");
        // Without a native run, no cycles to compare with.
        assert!(bars(&r[1..], &o).vs_native.is_empty());
        // The figure itself: a PNG file.
        let dir = crate::target_dir().join("bench-plot-test");
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join("isolation.png");
        isolation(&r, &o, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
