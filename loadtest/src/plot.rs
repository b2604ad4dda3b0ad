//! SVG percentile spectra of latency histograms (the HdrHistogram way of drawing a latency
//! distribution: latency against percentile on a scale that spreads out the tail).

use std::path::Path;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Draws one line per non-empty histogram (microseconds) into an SVG file at `path`.
pub fn percentile_spectrum(
    path: &Path,
    title: &str,
    series: &[(String, &Histogram<u64>)],
) -> Result<()> {
    let drawn: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(label, h)| {
            let points = (0..=400)
                .map(|i| {
                    // x = log10(1 / (1 - q)): 90% at 1, 99% at 2, 99.9% at 3.
                    let x = i as f64 / 100.0;
                    let q = 1.0 - 10f64.powf(-x);
                    (x, (h.value_at_quantile(q) as f64 / 1000.0).max(0.001))
                })
                .collect();
            (label.clone(), points)
        })
        .collect();
    let top = drawn
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.01f64, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, (0.001f64..top).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(5)
        .x_label_formatter(&|x| match x.round() as i32 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (index, (label, points)) in drawn.into_iter().enumerate() {
        let colour = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_a_line_per_series() {
        let dir = std::env::temp_dir().join(format!("plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        let mut a = crate::listener::histogram();
        for v in 1..1000u64 {
            a.record(v * 10).unwrap();
        }
        let empty = crate::listener::histogram();
        percentile_spectrum(&path, "test", &[("a".into(), &a), ("empty".into(), &empty)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("\na\n</text>"), "legend");
        assert!(
            !svg.contains("\nempty\n</text>"),
            "no line for an empty histogram"
        );
        assert!(svg.contains("polyline"));
    }
}
