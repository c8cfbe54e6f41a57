//! The device event log as a trace: Chrome trace-event JSON (opens in Perfetto,
//! ui.perfetto.dev, and chrome://tracing) or text, one line per event.
//!
//! Tracks: one per context (its doorbells, hits, misses, fault records, drop-ins, completions
//! and state changes), one per device worker (invalidations, evictions and interrupts the
//! worker raised) and one for the MMIO path (register writes, invalidation doorbells, resets).
//! A shootdown then reads as a timeline: the invalidation doorbell on the MMIO track, the
//! invalidation and its completion on a worker track, the context's next miss and drop-in on
//! its own track.

use rmnic_device::events::{Event, EventBatch, Recorder};
use serde_json::{json, Value};

/// Events a host keeps when a trace or the control API may read them (instead of the
/// device's default few thousand).
pub const TRACE_EVENTS: usize = 1 << 18;

/// Process id of the device in the trace.
const PID: u32 = 1;
/// Track ids: contexts at `CONTEXT_TRACK + ctx`, workers at `WORKER_TRACK + n`.
const CONTEXT_TRACK: u32 = 1000;
const WORKER_TRACK: u32 = 100;
const MMIO_TRACK: u32 = 1;

/// The track an event is drawn on.
pub fn track(event: &Event) -> u32 {
    match (event.kind.context(), event.recorder) {
        (Some(ctx), _) => CONTEXT_TRACK + u32::from(ctx),
        (None, Recorder::Worker(n)) => WORKER_TRACK + u32::from(n),
        (None, Recorder::Mmio) => MMIO_TRACK,
    }
}

fn track_name(track: u32) -> String {
    match track {
        t if t >= CONTEXT_TRACK => format!("context {}", t - CONTEXT_TRACK),
        t if t >= WORKER_TRACK => format!("worker {}", t - WORKER_TRACK),
        _ => "mmio".to_string(),
    }
}

/// Chrome trace-event JSON of `batch`: instant events, one track per context and per worker,
/// each event's details in `args`. `lost` events (dropped by the bounded log before the read)
/// are counted in the metadata.
pub fn chrome_json(batch: &EventBatch) -> Value {
    let mut tracks: Vec<u32> = batch.events.iter().map(track).collect();
    tracks.sort_unstable();
    tracks.dedup();
    let mut events: Vec<Value> = vec![json!({
        "ph": "M", "pid": PID, "name": "process_name", "args": {"name": "rmnic device"}
    })];
    events.extend(tracks.iter().map(|&tid| {
        json!({
            "ph": "M", "pid": PID, "tid": tid, "name": "thread_name",
            "args": {"name": track_name(tid)}
        })
    }));
    events.extend(batch.events.iter().map(|event| {
        json!({
            "ph": "i",
            "s": "t",
            "pid": PID,
            "tid": track(event),
            // Microseconds, as the format wants.
            "ts": event.time_ns as f64 / 1000.0,
            "name": event.kind.name(),
            "args": {
                "seq": event.seq,
                "recorder": event.recorder.to_string(),
                "detail": event.kind.to_string(),
            },
        })
    }));
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"source": "rmnic event log", "lost_events": batch.lost},
    })
}

/// [`chrome_json`] as text with one trace event per line (a file a line-oriented tool, or a
/// console, can carry; it parses as the same JSON).
pub fn chrome_json_lines(batch: &EventBatch) -> String {
    let value = chrome_json(batch);
    let mut out = String::from("{\"traceEvents\":[\n");
    if let Some(events) = value["traceEvents"].as_array() {
        let lines: Vec<String> = events.iter().map(Value::to_string).collect();
        out.push_str(&lines.join(",\n"));
    }
    out.push_str(&format!(
        "\n],\n\"displayTimeUnit\":\"ns\",\n\"otherData\":{}\n}}\n",
        value["otherData"]
    ));
    out
}

/// Writes the whole log to `path`: Chrome trace JSON ([`chrome_json_lines`]) if its name ends
/// in `.json`, [`text`] otherwise. Returns how many events it wrote.
pub fn write(
    path: &std::path::Path,
    log: &rmnic_device::events::EventLog,
) -> std::io::Result<usize> {
    let batch = log.read_since(0);
    let rendered = if path.extension().is_some_and(|e| e == "json") {
        chrome_json_lines(&batch)
    } else {
        text(&batch)
    };
    std::fs::write(path, rendered)?;
    Ok(batch.events.len())
}

/// One line per event, oldest first, after a line that says how many were lost.
pub fn text(batch: &EventBatch) -> String {
    let mut out = format!(
        "# rmnic device events: {} shown, {} lost (the log is a bounded ring)\n",
        batch.events.len(),
        batch.lost
    );
    for event in &batch.events {
        out.push_str(&event.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rmnic_device::addr::VirtAddr;
    use rmnic_device::commands::Status;
    use rmnic_device::events::{set_worker_thread, EventKind, EventLog, EVENT_ALL};

    use super::*;

    #[test]
    fn events_land_on_their_context_and_worker_tracks_in_order() {
        let log = Arc::new(EventLog::new(16, EVENT_ALL));
        log.record(EventKind::Doorbell { ctx: 2 });
        let worker_log = log.clone();
        std::thread::spawn(move || {
            set_worker_thread(1);
            worker_log.record(EventKind::FaultRecord {
                ctx: 2,
                va: VirtAddr(0x7000),
                index: 0,
            });
            worker_log.record(EventKind::InvalidationComplete { seq: 4 });
            worker_log.record(EventKind::Completion {
                ctx: 2,
                id: 9,
                status: Status::Ok,
            });
        })
        .join()
        .expect("worker");
        let json = chrome_json(&log.read_since(0));
        let events = json["traceEvents"].as_array().expect("array");
        let instants: Vec<(&str, u64)> = events
            .iter()
            .filter(|e| e["ph"] == "i")
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or(""),
                    e["tid"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            instants,
            [
                ("doorbell", 1002),
                ("fault record", 1002),
                ("invalidation done", 101),
                ("completion", 1002)
            ]
        );
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        assert_eq!(names, ["worker 1", "context 2"]);
        let lines = chrome_json_lines(&log.read_since(0));
        let reparsed: Value = serde_json::from_str(&lines).expect("valid JSON");
        assert_eq!(reparsed, json);
        let text = text(&log.read_since(0));
        assert_eq!(text.lines().count(), 5);
        assert!(text.contains("fault record ctx 2 va 0x7000"), "{text}");
    }
}
