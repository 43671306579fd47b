//! `cargo xtask bench chart [--input FILE] [--output FILE]`: the proxy comparison (Windlass eBPF
//! against the kube-proxy-shaped iptables ruleset) drawn as an SVG bar chart from the JSON that
//! `cargo xtask bench proxy` writes.
//!
//! Two panels: ClusterIP throughput as a percentage of the direct path (iperf3 TCP), and
//! connections per second at each number of services measured. Each percentage is against the
//! direct runs of its own block, as in `docs/benchmarks.md`. The input defaults to
//! `target/bench/proxy.json` and the output to `target/bench/proxy.svg`; the committed chart is
//! made with `--input docs/proxy-benchmark.json --output docs/proxy-benchmark.svg` (that file
//! holds the figures of `docs/benchmarks.md` in the bench's JSON shape).
//!
//! The SVG is plain text written here (no plotting crate): rectangles, lines and text, so the
//! output is deterministic and diffs cleanly.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::paths;

const IPTABLES_COLOR: &str = "#d95f02";
const WINDLASS_COLOR: &str = "#1b6ca8";
const AXIS_COLOR: &str = "#444444";
const GRID_COLOR: &str = "#dddddd";
const MUTED_COLOR: &str = "#666666";
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 470.0;
/// The plot area's top and bottom (y grows downwards), shared by both panels.
const PLOT_TOP: f64 = 110.0;
const PLOT_BOTTOM: f64 = 380.0;

/// Reads the proxy bench's JSON and writes the chart.
pub fn run(input: Option<&Path>, output: Option<&Path>) -> Result<()> {
    let input = input
        .map(Path::to_path_buf)
        .unwrap_or_else(|| paths::target_dir().join("bench/proxy.json"));
    let output = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| paths::target_dir().join("bench/proxy.svg"));
    if !input.is_file() {
        bail!(
            "{} does not exist: run `cargo xtask bench proxy` first, or chart the documented \
             figures with `cargo xtask bench chart --input docs/proxy-benchmark.json --output \
             docs/proxy-benchmark.svg`",
            input.display()
        );
    }
    let text = std::fs::read_to_string(&input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", input.display()))?;
    let figures = Figures::from_json(&json)
        .with_context(|| format!("{} is not a `bench proxy` result", input.display()))?;
    let svg = render(&figures);
    write(&output, &svg)?;
    println!("wrote {} (from {})", output.display(), input.display());
    Ok(())
}

fn write(output: &Path, svg: &str) -> Result<()> {
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp: PathBuf = output.with_extension("svg.tmp");
    std::fs::write(&tmp, svg).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot move {} into place", output.display()))
}

/// What the chart shows, read from the bench's JSON.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    /// "machine" and "date" of the run, as the JSON gives them.
    caption: String,
    /// iperf3 medians (Gbit/s): direct before any rule, iptables ClusterIP.
    iptables_direct_gbit: f64,
    iptables_gbit: f64,
    /// iperf3 medians (Gbit/s): direct with the programs attached, Windlass ClusterIP.
    windlass_direct_gbit: f64,
    windlass_gbit: f64,
    /// Direct connection rates of each block.
    iptables_direct_rate: f64,
    windlass_direct_rate: f64,
    /// Per size (other services): iptables and Windlass connection rates.
    sizes: Vec<Size>,
}

#[derive(Debug, Clone, PartialEq)]
struct Size {
    services: u64,
    iptables_rate: f64,
    windlass_rate: f64,
}

fn median(value: &Value, what: &str) -> Result<f64> {
    value["median"]
        .as_f64()
        .with_context(|| format!("no {what}.median"))
}

impl Figures {
    fn from_json(json: &Value) -> Result<Self> {
        let result = &json["result"];
        let (direct, iptables, windlass) =
            (&result["direct"], &result["iptables"], &result["windlass"]);
        let windlass_sizes = windlass["sizes"]
            .as_array()
            .context("no result.windlass.sizes")?;
        let mut sizes = Vec::new();
        for size in iptables["sizes"]
            .as_array()
            .context("no result.iptables.sizes")?
        {
            let services = size["other_services"]
                .as_u64()
                .context("an iptables size without other_services")?;
            // Windlass's rows name the iptables size they match in "size" (at 10,000 the bench
            // adds one bulk service of its own).
            let ours = windlass_sizes
                .iter()
                .find(|w| w["size"].as_u64().or(w["other_services"].as_u64()) == Some(services))
                .with_context(|| format!("no Windlass figure for {services} services"))?;
            sizes.push(Size {
                services,
                iptables_rate: median(&size["connections_per_second"], "connections_per_second")?,
                windlass_rate: median(&ours["connections_per_second"], "connections_per_second")?,
            });
        }
        if sizes.is_empty() {
            bail!("no sizes were measured");
        }
        let caption = [json["machine"].as_str(), json["date"].as_str()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            caption,
            iptables_direct_gbit: median(&direct["iperf_gbit"], "result.direct.iperf_gbit")?,
            iptables_gbit: median(&iptables["iperf_gbit"], "result.iptables.iperf_gbit")?,
            windlass_direct_gbit: median(
                &windlass["direct_iperf_gbit"],
                "result.windlass.direct_iperf_gbit",
            )?,
            windlass_gbit: median(&windlass["iperf_gbit"], "result.windlass.iperf_gbit")?,
            iptables_direct_rate: median(
                &direct["connections_per_second"],
                "result.direct.connections_per_second",
            )?,
            windlass_direct_rate: median(
                &windlass["direct_connections_per_second"],
                "result.windlass.direct_connections_per_second",
            )?,
            sizes,
        })
    }
}

/// `12345.6` as `12,346`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// The smallest multiple of `step` at or above `x`.
fn ceil_to(x: f64, step: f64) -> f64 {
    ((x / step).ceil() * step).max(step)
}

fn text(svg: &mut String, x: f64, y: f64, anchor: &str, size: u32, fill: &str, body: &str) {
    let body = body
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let _ = writeln!(
        svg,
        r#"  <text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}" fill="{fill}">{body}</text>"#
    );
}

fn rect(svg: &mut String, x: f64, y: f64, w: f64, h: f64, fill: &str) {
    let _ = writeln!(
        svg,
        r#"  <rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"#
    );
}

fn line(svg: &mut String, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, dash: bool) {
    let dash = if dash {
        r#" stroke-dasharray="5,4""#
    } else {
        ""
    };
    let _ = writeln!(
        svg,
        r#"  <line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="1"{dash}/>"#
    );
}

/// A linear value-to-y mapping from 0 (the plot's bottom) to `max` (its top).
#[derive(Debug, Clone, Copy)]
struct Scale {
    max: f64,
}

impl Scale {
    fn y(self, v: f64) -> f64 {
        PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * (v / self.max).clamp(0.0, 1.0)
    }
}

/// A y axis from 0 to `max` over the plot height, with grid lines every `step`.
fn y_axis(
    svg: &mut String,
    left: f64,
    right: f64,
    max: f64,
    step: f64,
    label: impl Fn(f64) -> String,
) -> Scale {
    let scale = Scale { max };
    let mut v = 0.0;
    while v <= max + step / 2.0 {
        let y = scale.y(v);
        line(svg, (left, y), (right, y), GRID_COLOR, false);
        text(svg, left - 6.0, y + 4.0, "end", 11, MUTED_COLOR, &label(v));
        v += step;
    }
    line(
        svg,
        (left, PLOT_TOP),
        (left, PLOT_BOTTOM),
        AXIS_COLOR,
        false,
    );
    line(
        svg,
        (left, PLOT_BOTTOM),
        (right, PLOT_BOTTOM),
        AXIS_COLOR,
        false,
    );
    scale
}

fn render(f: &Figures) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}">"#
    );
    let _ = writeln!(
        svg,
        "  <!-- generated by `cargo xtask bench chart` (xtask/src/bench/chart.rs); do not edit -->"
    );
    rect(&mut svg, 0.0, 0.0, WIDTH, HEIGHT, "#ffffff");
    text(
        &mut svg,
        WIDTH / 2.0,
        28.0,
        "middle",
        17,
        "#111111",
        "Service proxy: Windlass eBPF vs kube-proxy-shaped iptables",
    );
    let subtitle = if f.caption.is_empty() {
        "cargo xtask bench proxy".to_string()
    } else {
        format!("cargo xtask bench proxy; {}", f.caption)
    };
    text(
        &mut svg,
        WIDTH / 2.0,
        48.0,
        "middle",
        12,
        MUTED_COLOR,
        &subtitle,
    );

    // Legend, centred under the subtitle.
    for (i, (name, color)) in [
        ("kube-proxy iptables ruleset", IPTABLES_COLOR),
        ("Windlass eBPF", WINDLASS_COLOR),
    ]
    .into_iter()
    .enumerate()
    {
        let x = 300.0 + 210.0 * i as f64;
        rect(&mut svg, x, 62.0, 14.0, 14.0, color);
        text(&mut svg, x + 20.0, 74.0, "start", 12, "#111111", name);
    }

    // Left panel: ClusterIP throughput, % of direct.
    let (left, right) = (70.0, 290.0);
    text(
        &mut svg,
        (left + right) / 2.0,
        PLOT_TOP - 12.0,
        "middle",
        13,
        "#111111",
        "ClusterIP throughput, % of direct",
    );
    let throughput = [
        (
            "iptables",
            IPTABLES_COLOR,
            percent(f.iptables_gbit, f.iptables_direct_gbit),
            f.iptables_gbit,
        ),
        (
            "Windlass",
            WINDLASS_COLOR,
            percent(f.windlass_gbit, f.windlass_direct_gbit),
            f.windlass_gbit,
        ),
    ];
    let max = ceil_to(
        throughput.iter().map(|t| t.2).fold(100.0, f64::max) * 1.08,
        20.0,
    );
    let scale = y_axis(&mut svg, left, right, max, 20.0, |v| format!("{v:.0}%"));
    let y = |v: f64| scale.y(v);
    line(
        &mut svg,
        (left, y(100.0)),
        (right, y(100.0)),
        AXIS_COLOR,
        true,
    );
    let bar = 74.0;
    for (i, (name, color, pct, gbit)) in throughput.into_iter().enumerate() {
        let x = left + 28.0 + i as f64 * (bar + 26.0);
        rect(&mut svg, x, y(pct), bar, PLOT_BOTTOM - y(pct), color);
        // Inside the bar, clear of the dashed 100% line the tops sit near.
        text(
            &mut svg,
            x + bar / 2.0,
            y(pct) + 20.0,
            "middle",
            13,
            "#ffffff",
            &format!("{pct:.1}%"),
        );
        text(
            &mut svg,
            x + bar / 2.0,
            y(pct) + 35.0,
            "middle",
            10,
            "#ffffff",
            &format!("{gbit:.2} Gbit/s"),
        );
        text(
            &mut svg,
            x + bar / 2.0,
            PLOT_BOTTOM + 16.0,
            "middle",
            12,
            "#111111",
            name,
        );
    }
    // Drawn after the bars; the left edge stays clear of them.
    text(
        &mut svg,
        left + 3.0,
        y(100.0) - 4.0,
        "start",
        10,
        AXIS_COLOR,
        "direct",
    );
    text(
        &mut svg,
        (left + right) / 2.0,
        PLOT_BOTTOM + 34.0,
        "middle",
        11,
        MUTED_COLOR,
        "iperf3 TCP, median",
    );

    // Right panel: connections per second by number of services.
    let (left, right) = (400.0, WIDTH - 20.0);
    text(
        &mut svg,
        (left + right) / 2.0,
        PLOT_TOP - 12.0,
        "middle",
        13,
        "#111111",
        "New connections per second, by number of services",
    );
    let top = f
        .sizes
        .iter()
        .flat_map(|s| [s.iptables_rate, s.windlass_rate])
        .fold(0.0, f64::max);
    let step = if top > 10_000.0 { 5_000.0 } else { 2_000.0 };
    let scale = y_axis(
        &mut svg,
        left,
        right,
        ceil_to(top * 1.12, step),
        step,
        thousands,
    );
    let y = |v: f64| scale.y(v);
    let group = (right - left) / f.sizes.len() as f64;
    let bar = (group * 0.32).min(62.0);
    for (i, size) in f.sizes.iter().enumerate() {
        let centre = left + group * (i as f64 + 0.5);
        let bars = [
            (
                IPTABLES_COLOR,
                size.iptables_rate,
                f.iptables_direct_rate,
                centre - bar - 8.0,
            ),
            (
                WINDLASS_COLOR,
                size.windlass_rate,
                f.windlass_direct_rate,
                centre + 8.0,
            ),
        ];
        for (color, rate, direct, x) in bars {
            rect(&mut svg, x, y(rate), bar, PLOT_BOTTOM - y(rate), color);
            text(
                &mut svg,
                x + bar / 2.0,
                y(rate) - 18.0,
                "middle",
                12,
                "#111111",
                &thousands(rate),
            );
            text(
                &mut svg,
                x + bar / 2.0,
                y(rate) - 5.0,
                "middle",
                10,
                MUTED_COLOR,
                &format!("{:.0}% of direct", percent(rate, direct)),
            );
        }
        let label = if size.services == 1 {
            "1 service".to_string()
        } else {
            format!("{} services", thousands(size.services as f64))
        };
        text(
            &mut svg,
            centre,
            PLOT_BOTTOM + 16.0,
            "middle",
            12,
            "#111111",
            &label,
        );
    }
    text(
        &mut svg,
        (left + right) / 2.0,
        PLOT_BOTTOM + 34.0,
        "middle",
        11,
        MUTED_COLOR,
        "one client: connect, small request, reply, close; median",
    );

    let note = format!(
        "Each % is against direct runs of its own block: throughput {:.2} Gbit/s (iptables) and {:.2} \
         Gbit/s (Windlass); connections {} and {} per second.",
        f.iptables_direct_gbit,
        f.windlass_direct_gbit,
        thousands(f.iptables_direct_rate),
        thousands(f.windlass_direct_rate),
    );
    text(
        &mut svg,
        20.0,
        HEIGHT - 34.0,
        "start",
        11,
        MUTED_COLOR,
        &note,
    );
    text(
        &mut svg,
        20.0,
        HEIGHT - 16.0,
        "start",
        11,
        MUTED_COLOR,
        "The VM is noisy (direct rates differ between blocks): compare bars within a colour \
         closely, across colours only roughly.",
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        serde_json::json!({
            "machine": "2 vCPU", "date": "2026-12-02",
            "result": {
                "direct": {"iperf_gbit": {"median": 25.97},
                           "connections_per_second": {"median": 10747.0}},
                "iptables": {"iperf_gbit": {"median": 23.56}, "sizes": [
                    {"other_services": 1, "connections_per_second": {"median": 8901.0}},
                    {"other_services": 10000, "connections_per_second": {"median": 2919.0}}]},
                "windlass": {"iperf_gbit": {"median": 28.56},
                             "direct_iperf_gbit": {"median": 26.83},
                             "direct_connections_per_second": {"median": 18523.0},
                             "sizes": [
                    {"size": 1, "other_services": 1,
                     "connections_per_second": {"median": 17943.0}},
                    {"size": 10000, "other_services": 10001,
                     "connections_per_second": {"median": 19813.0}}]}
            }
        })
    }

    #[test]
    fn figures_are_read_and_drawn() {
        let figures = Figures::from_json(&sample()).expect("figures");
        assert_eq!(figures.sizes.len(), 2);
        assert_eq!(figures.sizes[1].services, 10_000);
        assert_eq!(figures.sizes[1].windlass_rate, 19_813.0);
        let svg = render(&figures);
        for expected in [
            "90.7%",
            "106.4%",
            "8,901",
            "2,919",
            "19,813",
            "27% of direct",
            "107% of direct",
            "10,000 services",
            "2 vCPU, 2026-12-02",
        ] {
            assert!(svg.contains(expected), "{expected} missing from the chart");
        }
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn a_missing_figure_is_an_error() {
        let mut json = sample();
        json["result"]["windlass"]["sizes"]
            .as_array_mut()
            .expect("sizes")
            .pop();
        let error = Figures::from_json(&json).expect_err("no Windlass figure at 10,000");
        assert!(error.to_string().contains("10000"), "{error}");
    }

    #[test]
    fn committed_chart_matches_its_input() {
        let docs = paths::root().join("docs");
        let input = std::fs::read_to_string(docs.join("proxy-benchmark.json")).expect("input");
        let json: Value = serde_json::from_str(&input).expect("json");
        let svg = render(&Figures::from_json(&json).expect("figures"));
        let committed =
            std::fs::read_to_string(docs.join("proxy-benchmark.svg")).expect("committed chart");
        assert!(
            svg == committed,
            "docs/proxy-benchmark.svg is stale: run `cargo xtask bench chart --input \
             docs/proxy-benchmark.json --output docs/proxy-benchmark.svg`"
        );
    }

    #[test]
    fn numbers_get_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(10_747.0), "10,747");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
    }
}
