//! bench/main.png: the main comparison as two horizontal bar charts —
//! test-run ns/packet by packet class (floor, xdp-filter, mitigator) and
//! the receiver's CPU ns/packet per filter under a real veth flood.
//!
//! Text needs a TrueType font: DejaVu Sans from Debian's fonts-dejavu-core
//! (or any .ttf under /usr/share/fonts). Without one, no chart is drawn.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::{
    coord::ranged1d::SegmentValue,
    prelude::*,
    style::{register_font, FontStyle},
};

use super::report::Report;

const FLOOR: RGBColor = RGBColor(150, 150, 150);
const PEER: RGBColor = RGBColor(230, 145, 56);
const OURS: RGBColor = RGBColor(31, 119, 180);

fn find_font() -> Option<Vec<u8>> {
    let preferred = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    for p in preferred {
        if let Ok(b) = std::fs::read(p) {
            return Some(b);
        }
    }
    let mut stack = vec![std::path::PathBuf::from("/usr/share/fonts")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ttf") {
                if let Ok(b) = std::fs::read(&p) {
                    return Some(b);
                }
            }
        }
    }
    None
}

type Err = Box<dyn std::error::Error>;

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let font = find_font()
        .ok_or_else(|| anyhow!("no TrueType font found (apt-get install fonts-dejavu-core)"))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow!("cannot use the font"))?;
    draw_inner(report, path).map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

fn draw_inner(report: &Report, path: &Path) -> std::result::Result<(), Err> {
    let root = BitMapBackend::new(path, (1600, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "mitigator benchmarks — {} ({} CPUs), kernel {}, {}{}",
        report.machine.cpu,
        report.machine.nproc,
        report.machine.kernel,
        report.machine.date,
        if report.quick { " (quick run)" } else { "" }
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(900);

    if let Some(t) = &report.testrun {
        let n = t.rows.len() as u32;
        let max = t
            .rows
            .iter()
            .flat_map(|r| [r.floor_ns, r.xdp_filter_ns.unwrap_or(0.0), r.mitigator_ns])
            .fold(0.0f64, f64::max)
            * 1.15;
        let labels: Vec<String> = t.rows.iter().map(|r| r.id.to_string()).collect();
        let mut chart = ChartBuilder::on(&left)
            .caption(
                "BPF_PROG_TEST_RUN: ns per packet (lower is better)",
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(130)
            .build_cartesian_2d(0f64..max, (0u32..n * 4).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels((n * 4) as usize)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if i % 4 == 1 => labels[(*i / 4) as usize].clone(),
                _ => String::new(),
            })
            .x_desc("ns / packet")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (k, (name, color)) in [
            ("floor (XDP_DROP)", FLOOR),
            ("xdp-filter", PEER),
            ("mitigator", OURS),
        ]
        .into_iter()
        .enumerate()
        {
            let bars = t.rows.iter().enumerate().filter_map(move |(i, r)| {
                let v = match k {
                    0 => Some(r.floor_ns),
                    1 => r.xdp_filter_ns,
                    _ => Some(r.mitigator_ns),
                }?;
                // Top to bottom: floor, xdp-filter, mitigator within a class.
                let slot = i as u32 * 4 + (2 - k as u32);
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(slot)),
                        (v, SegmentValue::Exact(slot + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(1, 1, 0, 0);
                Some(bar)
            });
            chart.draw_series(bars)?.label(name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
            });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }

    if let Some(l) = &report.live {
        let rows: Vec<&super::live::Row> =
            l.rows.iter().filter(|r| !r.samples.is_empty()).collect();
        let n = rows.len() as u32;
        let max = l
            .rows
            .iter()
            .map(|r| r.ns_per_packet)
            .fold(0.0f64, f64::max)
            * 1.3;
        let labels: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
        let mut chart = ChartBuilder::on(&right)
            .caption("veth flood: receiver CPU ns per packet", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(130)
            .build_cartesian_2d(0f64..max, (0u32..n).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels(n as usize)
            .y_label_formatter(&|v| match v {
                // Bars are drawn top to bottom in table order.
                SegmentValue::CenterOf(i) if *i < n => labels[(n - 1 - *i) as usize].clone(),
                _ => String::new(),
            })
            .x_desc("ns / packet (Mpps at the bar's end)")
            .label_style(("sans-serif", 14))
            .draw()?;
        let color = |id: &str| {
            if id.starts_with("mitigator") {
                OURS
            } else if id == "xdp-filter" {
                PEER
            } else {
                FLOOR
            }
        };
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            let slot = n - 1 - i as u32;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(slot)),
                    (r.ns_per_packet, SegmentValue::Exact(slot + 1)),
                ],
                color(r.id).filled(),
            );
            bar.set_margin(5, 5, 0, 0);
            bar
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            let slot = n - 1 - i as u32;
            Text::new(
                format!(
                    " {:.0} ns, {:.2} Mpps",
                    r.ns_per_packet,
                    r.received_pps / 1e6
                ),
                (r.ns_per_packet, SegmentValue::CenterOf(slot)),
                ("sans-serif", 13),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}
