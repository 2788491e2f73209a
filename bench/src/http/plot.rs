//! The `hot --plot` SVG: reservations/s and p99 against concurrency, Tombola and the
//! row-lock approach, from one sweep.

use std::path::Path;

use plotters::prelude::*;

struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64, f64)>,
}

pub fn write(path: &Path, sweep: &[serde_json::Value]) -> Result<(), String> {
    let point = |row: &serde_json::Value, rate: &str, p99: &str| {
        (
            row["concurrency"].as_f64().unwrap_or(0.0),
            row[rate].as_f64().unwrap_or(0.0),
            row[p99].as_f64().unwrap_or(0.0),
        )
    };
    let series = [
        Series {
            name: "Tombola",
            color: RGBColor(0x1f, 0x77, 0xb4),
            points: sweep
                .iter()
                .map(|r| point(r, "reservations_per_sec", "p99_ms"))
                .collect(),
        },
        Series {
            name: "row-lock (FOR UPDATE SKIP LOCKED)",
            color: RGBColor(0xd6, 0x27, 0x28),
            points: sweep
                .iter()
                .map(|r| point(r, "rowlock_reservations_per_sec", "rowlock_p99_ms"))
                .filter(|p| p.1 > 0.0)
                .collect(),
        },
    ];
    draw(path, &series).map_err(|e| format!("plotting {}: {e}", path.display()))
}

fn draw(path: &Path, series: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min).max(1.0);
    let x_max = all().map(|p| p.0).fold(1.0, f64::max).max(x_min * 2.0);
    let rate_max = all().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let p99_max = all().map(|p| p.2).fold(1.0, f64::max) * 1.15;

    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(480);
    let panels = [
        (left, "Reservations per second", rate_max, 1),
        (right, "p99 latency (ms)", p99_max, 2),
    ];
    for (area, title, y_max, field) in panels {
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("connections (concurrency)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        for s in series {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|p| (p.0, if field == 1 { p.1 } else { p.2 }))
                .collect();
            let color = s.color;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
