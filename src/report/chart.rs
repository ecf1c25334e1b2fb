//! One line chart as inline SVG, drawn by plotters: series of (x, y) points on shared axes,
//! with a legend. No fonts are read: the SVG names a generic family and the browser lays the
//! text out.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One named line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// (x, y); non-finite points are left out.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: &str, points: impl IntoIterator<Item = (f64, f64)>) -> Series {
        Series {
            name: name.to_string(),
            points: points
                .into_iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect(),
        }
    }
}

/// What a chart shows and how its y axis is bounded.
#[derive(Clone, Debug)]
pub struct Chart {
    /// An HTML id for the figure (letters, digits and dashes).
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A fixed y range (a rate: 0 to 1); None: fitted to the points.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
    /// x positions of thin vertical lines (where one TPO iteration's updates end).
    pub marks: Vec<f64>,
}

/// The largest axis bound a chart is drawn with.
const LARGEST: f64 = 1e300;

/// Width and height of every chart, in pixels.
pub const SIZE: (u32, u32) = (640, 360);

/// Colours of the series, in order; distinct in print and for most colour-blind readers.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
];

impl Chart {
    /// Whether any series has a point.
    pub fn has_points(&self) -> bool {
        self.series.iter().any(|s| !s.points.is_empty())
    }

    /// The chart as an `<svg>` element (None when there is nothing to draw).
    pub fn svg(&self) -> Result<Option<String>> {
        if !self.has_points() {
            return Ok(None);
        }
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = padded(all().map(|p| p.0), 0.03, 0.5);
        let (y0, y1) = match self.y_range {
            Some(r) => r,
            None => padded(all().map(|p| p.1), 0.05, 0.5),
        };
        // Values near f64's limits (a judge's 1e308) would make infinite axes, on which the
        // plotting library's tick search never ends: such a chart is not drawn.
        if ![x0, x1, y0, y1]
            .iter()
            .all(|v| v.is_finite() && v.abs() < LARGEST)
        {
            return Ok(None);
        }
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
            let fail = |e: &dyn std::fmt::Display| anyhow!("chart \"{}\": {e}", self.title);
            root.fill(&WHITE).map_err(|e| fail(&e))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| fail(&e))?;
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .light_line_style(RGBColor(235, 235, 235))
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 16))
                // Iterations and updates are whole numbers: no tick between them.
                // (The tick positions are sums of steps: 2 may come as 1.9999999999999998.)
                .x_label_formatter(&|x| {
                    if (x - x.round()).abs() < 1e-9 * x.abs().max(1.0) {
                        format!("{:.0}", x.round())
                    } else {
                        String::new()
                    }
                })
                .draw()
                .map_err(|e| fail(&e))?;
            for &m in self.marks.iter().filter(|m| (x0..=x1).contains(*m)) {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(m, y0), (m, y1)],
                        RGBColor(150, 150, 150).stroke_width(1),
                    )))
                    .map_err(|e| fail(&e))?;
            }
            for (i, s) in self.series.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| fail(&e))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                // Few points (iterations): mark each one.
                if s.points.len() <= 50 {
                    chart
                        .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                        .map_err(|e| fail(&e))?;
                }
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .draw()
                .map_err(|e| fail(&e))?;
            root.present().map_err(|e| fail(&e))?;
        }
        Ok(Some(text))
    }
}

/// The range of `values` widened by `share` of its span on each side; a flat range is
/// widened by `flat` instead.
fn padded(values: impl Iterator<Item = f64>, share: f64, flat: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    // Halved first, so that the span of values near f64's limits does not overflow.
    let half_span = hi / 2.0 - lo / 2.0;
    if half_span <= 0.5e-12 * lo.abs().max(1.0) {
        let w = flat * lo.abs().max(1.0);
        return (lo - w, hi + w);
    }
    (lo - 2.0 * share * half_span, hi + 2.0 * share * half_span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            id: "c".into(),
            title: "Loss & <things>".into(),
            x_label: "update".into(),
            y_label: "loss".into(),
            y_range: None,
            series,
            marks: vec![],
        }
    }

    #[test]
    fn a_chart_draws_each_series_with_its_legend() {
        let svg = chart(vec![
            Series::new("tpo", [(0.0, 0.1), (1.0, 0.5), (2.0, f64::NAN), (3.0, 0.9)]),
            Series::new("direct", [(0.0, 0.1), (1.0, 0.2)]),
        ])
        .svg()
        .unwrap()
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(
            svg.contains(">\ntpo\n</text>") && svg.contains(">\ndirect\n</text>"),
            "{svg}"
        );
        // The title's markup characters are escaped.
        assert!(svg.contains("Loss &amp; &lt;things&gt;"), "{svg}");
        // Each series: its line and its legend sample, in its colour; and one marker per
        // finite point.
        for colour in ["#0072B2", "#D55E00"] {
            let lines = svg
                .matches(&format!("stroke=\"{colour}\" stroke-width=\"2\""))
                .count();
            assert_eq!(lines, 2, "{colour}");
        }
        assert_eq!(svg.matches("<circle").count(), 3 + 2);
    }

    #[test]
    fn nothing_to_draw_gives_no_svg_and_flat_data_a_range() {
        assert!(chart(vec![Series::new("a", [(0.0, f64::NAN)])])
            .svg()
            .unwrap()
            .is_none());
        assert_eq!(padded([2.0, 2.0].into_iter(), 0.05, 0.5), (1.0, 3.0));
        assert_eq!(padded([0.0, 10.0].into_iter(), 0.1, 0.5), (-1.0, 11.0));
        assert!(chart(vec![Series::new("a", [(1.0, 0.3)])])
            .svg()
            .unwrap()
            .is_some());
        // Values near f64's limits give no chart rather than infinite axes.
        for points in [
            vec![(0.0, 0.0), (1.0, 1.75e308)],
            vec![(0.0, 1.3e308)],
            vec![(0.0, -1e308), (1.0, 1e308)],
        ] {
            let c = chart(vec![Series::new("a", points.clone())]);
            assert!(c.svg().unwrap().is_none(), "{points:?}");
        }
        let wide = chart(vec![Series::new("a", [(0.0, -1e200), (1.0, 1e200)])]);
        assert!(wide.svg().unwrap().is_some());
    }

    #[test]
    fn marks_inside_the_axis_are_drawn_as_grey_lines() {
        let mut c = chart(vec![Series::new("a", [(1.0, 0.3), (4.0, 0.5)])]);
        c.marks = vec![2.5, 3.5, 40.0];
        let svg = c.svg().unwrap().unwrap();
        assert_eq!(svg.matches("stroke=\"#969696\"").count(), 2, "{svg}");
    }
}
