//! `switchyard load --html FILE`: the report as one self-contained HTML page — throughput and
//! latency percentiles over time as inline SVG, then the summary table — so a run can be
//! attached to an issue or opened offline; nothing is fetched from anywhere.

use std::fmt::Write;

use super::report::Report;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
/// Room for the axes' labels: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (64.0, 16.0, 28.0, 36.0);

/// One line of a chart.
struct Series<'a> {
    label: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line chart of `series` over the run's seconds.
fn chart(id: &str, title: &str, unit: &str, series: &[Series]) -> String {
    let (left, right, top, bottom) = MARGIN;
    let (w, h) = (WIDTH - left - right, HEIGHT - top - bottom);
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1e-3);
    let y_max = all.map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.1;
    let (x, y) = (
        |v: f64| left + v / x_max * w,
        |v: f64| top + h - v / y_max * h,
    );
    let mut svg = format!(
        "<svg class=\"chart\" id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\
         <title>{}</title>\
         <text x=\"{left}\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        escape(title),
        escape(title)
    );
    for i in 0..=4 {
        let (vx, vy) = (x_max * f64::from(i) / 4.0, y_max * f64::from(i) / 4.0);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">{vy:.1}</text>\
             <text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{vx:.1} s</text>",
            left + w,
            left - 6.0,
            y(vy) + 4.0,
            top + h + 16.0,
            yy = y(vy),
            xx = x(vx),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"12\" y=\"{:.1}\" font-size=\"11\" transform=\"rotate(-90 12 {:.1})\" \
         text-anchor=\"middle\">{}</text>",
        top + h / 2.0,
        top + h / 2.0,
        escape(unit)
    );
    for (n, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"12\" fill=\"{}\">{}</text>",
            s.colour,
            points.join(" "),
            left + w - 90.0 * (series.len() - n) as f64,
            HEIGHT - 4.0,
            s.colour,
            escape(s.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The whole page.
pub fn html(report: &Report, title: &str) -> String {
    let t = &report.timeline;
    let throughput = chart(
        "throughput",
        "Deliveries per second",
        "deliveries/s",
        &[Series {
            label: "deliveries/s",
            colour: "#1f77b4",
            points: t.iter().map(|s| (s.t_s, s.deliveries_per_s)).collect(),
        }],
    );
    let latency = |pick: fn(&super::report::Percentiles) -> f64| -> Vec<(f64, f64)> {
        t.iter()
            .filter_map(|s| s.latency_ms.as_ref().map(|l| (s.t_s, pick(l))))
            .collect()
    };
    let latencies = chart(
        "latency",
        "Submit-to-arrival latency (deliveries arriving in each interval)",
        "ms",
        &[
            Series {
                label: "p50",
                colour: "#2ca02c",
                points: latency(|l| l.p50),
            },
            Series {
                label: "p90",
                colour: "#ff7f0e",
                points: latency(|l| l.p90),
            },
            Series {
                label: "p99",
                colour: "#d62728",
                points: latency(|l| l.p99),
            },
        ],
    );
    let rows: String = report
        .rows()
        .iter()
        .map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(k), escape(v)))
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse}}th,td{{padding:4px 12px;border-bottom:1px solid #eee;\
         text-align:left}}th{{font-weight:600}}svg{{display:block;margin:1em 0}}\
         </style></head><body>\n<h1>{title}</h1>\n{throughput}\n{latencies}\n\
         <h2>Summary</h2>\n<table>\n{rows}</table>\n</body></html>\n",
        title = escape(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::report::{Percentiles, Sample};

    #[test]
    fn the_page_carries_both_charts_and_the_table_and_fetches_nothing() {
        let report = Report {
            deliveries: 10,
            timeline: vec![
                Sample {
                    t_s: 0.5,
                    deliveries_per_s: 20.0,
                    latency_ms: Some(Percentiles::of(vec![1.0, 2.0, 3.0])),
                },
                Sample {
                    t_s: 1.0,
                    deliveries_per_s: 0.0,
                    latency_ms: None,
                },
            ],
            arrival_clock: "<this process>".into(),
            ..Report::default()
        };
        let page = html(&report, "load & co");
        assert!(page.contains("<svg class=\"chart\" id=\"throughput\""));
        assert!(page.contains("<svg class=\"chart\" id=\"latency\""));
        assert!(page.contains("<polyline") && page.contains("load &amp; co"));
        assert!(page.contains("&lt;this process&gt;") && page.contains("<th>deliveries</th>"));
        assert!(
            !page.contains("src=") && !page.contains("href="),
            "nothing fetched"
        );
    }
}
