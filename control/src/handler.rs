//! Executes control requests against a device: its read-only view, its oracle and its fault
//! switch. Nothing here can change what the device does except `fault set|clear`.

use std::sync::Arc;

use rmnic_device::addr::VirtAddr;
use rmnic_device::context::ContextState;
use rmnic_device::fault_ring::FAULT_ACCESS_WRITE;
use rmnic_device::inject::FAULT_MODES;
use rmnic_device::inspect::{ContextView, DeviceInspector};
use rmnic_device::oracle::page_walk::{walk, Walk};
use rmnic_device::oracle::{Oracle, Seen};
use rmnic_device::tlb::Perms;
use serde_json::{json, Map, Value};

use crate::fault_switch::FaultSwitch;
use crate::protocol::{Request, Response, TraceFormat, MAX_SNAPSHOT_PAGES};
use crate::trace;

const PAGE: u64 = 4096;

/// The device a control API serves.
#[derive(Clone, Debug)]
pub struct DeviceControl {
    device: DeviceInspector,
    oracle: Option<Arc<Oracle>>,
    faults: Arc<FaultSwitch>,
}

fn counters(values: Vec<(&'static str, u64)>) -> Value {
    Value::Object(
        values
            .into_iter()
            .map(|(name, value)| (name.to_string(), json!(value)))
            .collect::<Map<String, Value>>(),
    )
}

fn perms(perms: Perms) -> &'static str {
    match (
        perms.allows(Perms::READ) || perms.allows(Perms::WRITE),
        perms.allows(Perms::WRITE),
    ) {
        (_, true) => "rw",
        (true, false) => "r",
        (false, false) => "-",
    }
}

fn hex(value: u64) -> String {
    format!("{value:#x}")
}

impl DeviceControl {
    /// Serves `device`, whose injector is `oracle` (if any) over `faults`.
    pub fn new(
        device: DeviceInspector,
        oracle: Option<Arc<Oracle>>,
        faults: Arc<FaultSwitch>,
    ) -> Self {
        Self {
            device,
            oracle,
            faults,
        }
    }

    /// Executes one request.
    pub fn handle(&self, request: &Request) -> Response {
        let result = match request {
            Request::Stats => Ok(self.stats()),
            Request::Violations => Ok(self.violations()),
            Request::FaultSet { modes, seed } => {
                self.faults.set(modes, *seed).map(|()| self.fault_list())
            }
            Request::FaultClear => {
                self.faults.clear();
                Ok(self.fault_list())
            }
            Request::FaultList => Ok(self.fault_list()),
            Request::Tlb { context } => self.tlb(*context),
            Request::Snapshot { context, va, len } => self.snapshot(*context, *va, *len),
            Request::Trace { format } => Ok(self.trace(*format)),
        };
        match result {
            Ok(value) => Response::ok(value),
            Err(message) => Response::error(message),
        }
    }

    fn live_context(&self, context: u8) -> Result<ContextView, String> {
        match self.device.context(usize::from(context)) {
            None => Err(format!("there is no context {context} (0..64)")),
            Some(view) if view.state == ContextState::Free => {
                Err(format!("context {context} is free (not enabled)"))
            }
            Some(view) => Ok(view),
        }
    }

    fn stats(&self) -> Value {
        let contexts: Vec<Value> = self
            .device
            .live_contexts()
            .iter()
            .map(|c| {
                json!({
                    "context": c.index,
                    "state": format!("{:?}", c.state),
                    "asid": c.asid,
                    "pt_root": hex(c.pt_root),
                    "counters": counters(self.device.context_counters(usize::from(c.index))),
                })
            })
            .collect();
        let oracle = self.oracle.as_ref().map(|o| {
            json!({
                "checked": o.checked(),
                "violations": o.violation_count(),
                "clean_pte_writes": o.clean_pte_writes(),
                "summary": o.summary(),
            })
        });
        let (modes, seed) = self.faults.describe();
        json!({
            "device": counters(self.device.counters()),
            "contexts": contexts,
            "tlb_entries": self.device.tlb_entries().len(),
            "oracle": oracle,
            "faults": {"modes": modes, "seed": seed},
            "events_recorded": self.device.event_log().next_seq().saturating_sub(1),
        })
    }

    fn violations(&self) -> Value {
        let Some(oracle) = &self.oracle else {
            return json!({"count": 0, "kept": [], "oracle": "off"});
        };
        let kept: Vec<Value> = oracle
            .violations()
            .iter()
            .map(|v| {
                let a = &v.access;
                json!({
                    "text": v.to_string(),
                    "context": a.ctx,
                    "asid": a.asid,
                    "va": hex(a.va.0),
                    "frame": hex(a.gpa.0),
                    "len": a.len,
                    "access": if a.access & FAULT_ACCESS_WRITE != 0 { "write" } else { "read" },
                    "seen": match v.seen { Seen::Access => "access", Seen::DropIn => "drop-in" },
                    "fill_id": a.fill_id,
                    "at_s": v.at.as_secs_f64(),
                    "page_tables_now": format!("{:?}", v.wrong),
                    "recent_events": v.recent_events.iter().map(ToString::to_string)
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"count": oracle.violation_count(), "kept": kept})
    }

    fn fault_list(&self) -> Value {
        let (modes, seed) = self.faults.describe();
        json!({"modes": modes, "seed": seed, "available": FAULT_MODES})
    }

    fn tlb(&self, context: u8) -> Result<Value, String> {
        let view = self.live_context(context)?;
        let mut entries: Vec<_> = self
            .device
            .tlb_entries()
            .into_iter()
            .filter(|e| e.fill.asid == view.asid)
            .collect();
        entries.sort_by_key(|e| e.fill.va.0);
        let entries: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "va": hex(e.fill.va.0),
                    "size": e.fill.size.bytes(),
                    "frame": hex(e.fill.gpa.0),
                    "perms": perms(e.fill.perms),
                    "fill_id": e.fill_id,
                    "filled_by_context": e.fill.ctx,
                })
            })
            .collect();
        Ok(json!({"context": context, "asid": view.asid, "entries": entries}))
    }

    fn snapshot(&self, context: u8, va: u64, len: u64) -> Result<Value, String> {
        let view = self.live_context(context)?;
        let end = va
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| format!("[{va:#x}, +{len:#x}) is empty or wraps"))?;
        let first = va & !(PAGE - 1);
        let pages = end.div_ceil(PAGE) - first / PAGE;
        if pages > MAX_SNAPSHOT_PAGES {
            return Err(format!(
                "{pages} pages asked for; a snapshot covers at most {MAX_SNAPSHOT_PAGES}"
            ));
        }
        let memory = self.device.memory();
        let mut out = Vec::new();
        for page in (0..pages).map(|i| first + i * PAGE) {
            let device = self.device.lookup(view.asid, VirtAddr(page));
            let cpu = (view.pt_root != 0).then(|| walk(&memory, view.pt_root, page));
            let cpu_value = match cpu {
                None => json!({"unknown": "no page-table root registered"}),
                Some(Walk::Mapped(leaf)) => json!({
                    "frame": hex(leaf.translate(page)),
                    "size": leaf.size,
                    "writable": leaf.writable,
                    "dirty": leaf.dirty,
                    "accessed": leaf.accessed,
                }),
                Some(other) => json!({"unmapped": format!("{other:?}")}),
            };
            let verdict = match (&device, &cpu) {
                (None, _) => "device holds nothing",
                (Some(_), None) => "unchecked",
                (Some(d), Some(Walk::Mapped(leaf))) => {
                    if leaf.translate(page) != d.gpa.0 {
                        "STALE: other frame"
                    } else if d.perms.allows(Perms::WRITE) && !leaf.writable {
                        "STALE: device may write, CPU may not"
                    } else {
                        "coherent"
                    }
                }
                (Some(_), Some(_)) => "STALE: CPU does not map it",
            };
            let device_value = device.map(|d| {
                json!({
                    "frame": hex(d.gpa.0),
                    "size": d.size.bytes(),
                    "perms": perms(d.perms),
                    "fill_id": d.fill_id,
                })
            });
            out.push(json!({
                "va": hex(page),
                "device": device_value,
                "cpu": cpu_value,
                "verdict": verdict,
            }));
        }
        Ok(json!({"context": context, "asid": view.asid, "pages": out}))
    }

    fn trace(&self, format: TraceFormat) -> Value {
        let batch = self.device.event_log().read_since(0);
        match format {
            TraceFormat::Chrome => trace::chrome_json(&batch),
            TraceFormat::Text => Value::String(trace::text(&batch)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rmnic_device::interrupt::MsiSink;
    use rmnic_device::oracle::CheckMode;
    use rmnic_device::{GuestRam, RmnicConfig, RmnicDevice};

    use super::*;

    /// A sink that drops every message (the tests raise no interrupt).
    struct NoMsi;
    impl MsiSink for NoMsi {
        fn trigger(&self, _vector: u16) {}
    }

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(vm_memory::GuestAddress(0), 0x10_0000)]).expect("ram")
    }

    fn control() -> (RmnicDevice, DeviceControl) {
        let faults = Arc::new(FaultSwitch::new("none", 1).expect("mode"));
        let oracle = Arc::new(Oracle::new(CheckMode::Full, faults.clone()));
        let config = RmnicConfig {
            injector: oracle.clone(),
            ..RmnicConfig::default()
        };
        let device: RmnicDevice =
            RmnicDevice::with_memory(ram(), config, Arc::new(NoMsi)).expect("device");
        let control = DeviceControl::new(device.inspector(), Some(oracle), faults);
        (device, control)
    }

    #[test]
    fn the_socket_answers_each_line_and_survives_garbage() {
        use std::io::{BufRead, BufReader, Write};
        let (_device, control) = control();
        let dir = std::env::temp_dir().join(format!("rmnic-api-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("api.sock");
        let _ = std::fs::remove_file(&path);
        let server = crate::ApiServer::start(&path, control).expect("server");
        assert!(matches!(
            crate::ApiServer::start(&path, self::control().1),
            Err(crate::server::ServerError::Exists(_))
        ));
        let mut client = crate::Client::connect(&path).expect("connect");
        let stats = client.request(&Request::Stats).expect("stats");
        assert!(stats.ok);
        // Garbage, then a long line: an error each, and the first keeps the connection.
        let mut raw = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        raw.write_all(b"{not json\n").expect("write");
        let mut reader = BufReader::new(raw.try_clone().expect("clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        assert!(line.contains("bad request"), "{line}");
        raw.write_all(&vec![b'x'; crate::protocol::MAX_REQUEST_BYTES + 10])
            .expect("write");
        line.clear();
        reader.read_line(&mut line).expect("read");
        assert!(line.contains("longer than"), "{line}");
        drop(server);
        assert!(!path.exists());
        assert!(crate::Client::connect(&path).is_err());
    }

    #[test]
    fn requests_get_results_and_bad_requests_get_errors() {
        let (_device, control) = control();
        let stats = control.handle(&Request::Stats);
        assert!(stats.ok, "{stats:?}");
        let result = stats.result.expect("result");
        assert_eq!(result["contexts"], json!([]));
        assert_eq!(result["oracle"]["violations"], json!(0));
        assert!(result["device"].as_object().is_some_and(|m| !m.is_empty()));

        let tlb = control.handle(&Request::Tlb { context: 3 });
        assert_eq!(
            tlb.error.as_deref(),
            Some("context 3 is free (not enabled)")
        );
        let tlb = control.handle(&Request::Tlb { context: 200 });
        assert!(!tlb.ok);

        let set = control.handle(&Request::FaultSet {
            modes: "evict:4".into(),
            seed: Some(9),
        });
        assert!(set.ok, "{set:?}");
        let list = control.handle(&Request::FaultList).result.expect("list");
        assert_eq!(
            (list["modes"].clone(), list["seed"].clone()),
            (json!("evict:4"), json!(9))
        );
        assert!(
            !control
                .handle(&Request::FaultSet {
                    modes: "evict:1".into(),
                    seed: None
                })
                .ok
        );
        assert!(control.handle(&Request::FaultClear).ok);

        let trace = control.handle(&Request::Trace {
            format: TraceFormat::Text,
        });
        assert!(trace.ok);
        let violations = control.handle(&Request::Violations).result.expect("result");
        assert_eq!(violations["count"], json!(0));
    }
}
