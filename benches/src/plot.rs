//! The harness's plot: one horizontal bar per variant and rule count, packets/s on a log
//! scale, drawn with plotters into an SVG.

use std::path::Path;

use anyhow::{Context, bail};
use plotters::prelude::*;

use crate::harness::{Kind, Row};

/// Where the font comes from (Debian's fonts-dejavu-core; `scripts/deps.sh bench` installs it).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes =
            std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{FONT} is not a font plotters can read"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn colour(kind: Kind) -> RGBColor {
    match kind {
        Kind::Linux | Kind::NftExport | Kind::NftLinear => RGBColor(0x8c, 0x8c, 0x8c),
        Kind::MargayForward | Kind::MargayPolicy => RGBColor(0xd9, 0x7b, 0x1f),
        Kind::MargayFast => RGBColor(0xb3, 0x3a, 0x1a),
        Kind::Testpmd => RGBColor(0x2f, 0x6d, 0xb5),
    }
}

/// 1234567 as "1.23M", 45678 as "45.7k".
fn human(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Draws `rows` (those measured) into `out`.
pub fn bars(rows: &[Row], out: &Path) -> anyhow::Result<()> {
    register_font()?;
    let bars: Vec<(String, f64, Kind)> = rows
        .iter()
        .filter_map(|r| {
            let label = match r.rules {
                Some(n) => format!("{} ({n})", r.kind.name()),
                None => r.kind.name().to_owned(),
            };
            Some((label, r.median().filter(|&v| v > 0.0)?, r.kind))
        })
        .collect();
    if bars.is_empty() {
        bail!("nothing was measured");
    }
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let min = bars.iter().map(|b| b.1).fold(f64::INFINITY, f64::min);
    let (lo, hi) = (10f64.powf(min.log10().floor()).min(1e3), 10f64.powf(max.log10().ceil()));
    let height = 100 + 34 * bars.len() as u32;
    let root = SVGBackend::new(out, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("packets/s at the sink (log scale)", ("sans-serif", 20))
        .margin(16)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(8)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|x| human(*x))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Bar i from the top; its label after its end.
    let top = |i: usize| n - i as f64;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v, k))| {
            Rectangle::new([(lo, top(i) - 0.85), (*v, top(i) - 0.15)], colour(*k).filled())
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (label, v, _))| {
            Text::new(format!(" {label}: {}", human(*v)), (*v, top(i) - 0.35), ("sans-serif", 14))
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: Kind, rules: Option<usize>, pps: f64) -> Row {
        let mut r = Row::new(kind, rules);
        r.pps.push(pps);
        r.offered.push(1e6);
        r.delivered.push(pps as u64);
        r
    }

    #[test]
    fn one_labelled_bar_per_measured_row() {
        let mut skipped = row(Kind::Testpmd, None, 0.0);
        skipped.pps.clear();
        skipped.skipped = Some("not installed".into());
        let rows = [
            row(Kind::Linux, None, 620_324.0),
            row(Kind::NftLinear, Some(10_000), 4_801.0),
            row(Kind::MargayPolicy, Some(10_000), 180_034.0),
            skipped,
        ];
        let out = std::env::temp_dir().join(format!("margay-plot-{}.svg", std::process::id()));
        bars(&rows, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        for label in ["linux: 620.3k", "linux+nft-linear (10000): 4.8k", "margay-policy (10000): 180.0k"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains("dpdk-testpmd"), "an unmeasured row has no bar");
        assert_eq!(svg.matches("<rect").count() - 1, 3, "a background and three bars");
    }
}
