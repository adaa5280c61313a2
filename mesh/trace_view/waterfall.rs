//! A trace as a waterfall in the terminal: the span tree (children under their parent, by start
//! time), each with its service, duration, a bar on the trace's time line, and its status.

use std::collections::{HashMap, HashSet};

use crate::pb::v1::SpanView;

/// Width of the time line, in characters.
const BAR: usize = 40;

/// Renders `spans` (one trace).
pub fn render(spans: &[SpanView]) -> String {
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_unix_nanos)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let total = (end - start) as f64;
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanView>> = HashMap::new();
    let mut roots = Vec::new();
    for span in spans {
        if span.parent_span_id.is_empty() || !ids.contains(span.parent_span_id.as_str()) {
            roots.push(span);
        } else {
            children
                .entry(span.parent_span_id.as_str())
                .or_default()
                .push(span);
        }
    }
    roots.sort_by_key(|s| s.start_unix_nanos);
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_unix_nanos);
    }
    let mut out = format!(
        "{:<56} {:<24} {:>9}  {:<width$}  STATUS\n",
        "SPAN",
        "SERVICE",
        "DURATION",
        "TIME LINE",
        width = BAR
    );
    let mut stack: Vec<(&SpanView, usize)> = roots.into_iter().rev().map(|r| (r, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        let offset =
            ((span.start_unix_nanos.saturating_sub(start)) as f64 / total * BAR as f64) as usize;
        let length = (((span.end_unix_nanos.saturating_sub(span.start_unix_nanos)) as f64 / total
            * BAR as f64)
            .ceil() as usize)
            .max(1);
        let bar: String = (0..BAR)
            .map(|i| {
                if i >= offset.min(BAR - 1) && i < offset + length {
                    '█'
                } else {
                    '·'
                }
            })
            .collect();
        let name = format!("{}{}", "  ".repeat(depth), span.name);
        let millis = span.end_unix_nanos.saturating_sub(span.start_unix_nanos) as f64 / 1e6;
        let status = match span.status.as_str() {
            "error" if span.status_message.is_empty() => "ERROR".to_string(),
            "error" => format!("ERROR {}", span.status_message),
            _ => span
                .attributes
                .get("rpc.grpc.status_code")
                .map(|c| format!("code {c}"))
                .unwrap_or_default(),
        };
        out.push_str(&format!(
            "{:<56} {:<24} {:>7.2}ms  {bar}  {status}\n",
            clip(&name, 56),
            clip(&span.service, 24),
            millis
        ));
        for event in span.events.iter().take(5) {
            out.push_str(&format!("{}  ↳ {}\n", "  ".repeat(depth), clip(event, 100)));
        }
        if let Some(kids) = children.get(span.span_id.as_str()) {
            for kid in kids.iter().rev() {
                stack.push((kid, depth + 1));
            }
        }
    }
    out
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, name: &str, start: u64, end: u64) -> SpanView {
        SpanView {
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: name.into(),
            service: "s".into(),
            start_unix_nanos: start,
            end_unix_nanos: end,
            ..Default::default()
        }
    }

    #[test]
    fn children_are_indented_under_their_parent_in_start_order() {
        let spans = vec![
            span("b", "a", "second", 50, 90),
            span("a", "", "root", 0, 100),
            span("c", "a", "first", 10, 40),
            span("d", "c", "deep", 20, 30),
        ];
        let text = render(&spans);
        let names: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split("  s ").next().unwrap_or("").trim_end())
            .collect();
        assert_eq!(names, vec!["root", "  first", "    deep", "  second"]);
    }
}
