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
        Kind::Testpmd => RGBColor(0x2f, 0x6d, 0xb5),
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
    let height = 120 + 36 * bars.len() as u32;
    let root = SVGBackend::new(out, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption("packets/s at the sink (log scale)", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(220)
        .build_cartesian_2d((lo..hi).log_scale(), 0..n)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len() + 1)
        .y_label_formatter(&|y| {
            // Bar i spans [n-1-i, n-i): its label sits at its lower edge.
            usize::try_from(n - 1 - *y).ok().and_then(|i| labels.get(i)).cloned().unwrap_or_default()
        })
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v, k))| {
            let y = n - 1 - i as i32;
            Rectangle::new([(lo, y), (*v, y + 1)], colour(*k).filled())
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v, _))| {
            let y = n - 1 - i as i32;
            Text::new(format!(" {v:.0}"), (*v, y + 1), ("sans-serif", 14))
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
