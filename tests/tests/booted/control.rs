//! The control API, used from this machine while a guest runs, and the trace a run leaves
//! behind: in qemu mode (rmnic-device-server hosts the API) and under rmnic-vmm (in emulated
//! mode through the emulated host's serial relay).
//!
//! The guest runs `await-fault`: device copies between two buffers every 20 ms until one fails
//! with a device error. The test reads stats, the TLB, a snapshot and the trace through the
//! API, then injects `dma-error:1` at run time, which ends the guest's loop: the run-time
//! fault switch is checked end to end. The trace file must hold the miss sequence (fault
//! record → drop-in → completion) and a shootdown (invalidation → done) in order.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rmnic_control::protocol::TraceFormat;
use rmnic_control::{Client, Request};
use rmnic_tests::launch::run_in;
use rmnic_tests::GuestRun;
use serde_json::Value;

use crate::{images, Mode};

/// How long the test waits for the guest's device context to show up through the API.
const READY_WITHIN: Duration = Duration::from_secs(150);

fn scratch_dir(tag: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("rmnic-ctl-{tag}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// One request; `Err` with the reason on any failure (the caller retries while the guest
/// comes up).
fn ask(socket: &Path, request: &Request) -> Result<Value, String> {
    let mut client =
        Client::connect_with_timeout(socket, Duration::from_secs(20)).map_err(|e| e.to_string())?;
    let response = client.request(request).map_err(|e| e.to_string())?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (_, _, error) => Err(error.unwrap_or_else(|| "no result".into())),
    }
}

/// What the test saw through the API while the guest ran.
struct Seen {
    context: u64,
    stats: Value,
    tlb: Value,
    snapshot: Value,
    trace_text: String,
    fault_list: Value,
}

/// Waits for a live context with TLB entries, reads everything, then injects the DMA error
/// that ends the guest's loop.
fn drive(socket: &Path) -> Result<Seen, String> {
    let started = Instant::now();
    let (stats, context) = loop {
        let last = match ask(socket, &Request::Stats) {
            Ok(stats) => {
                let context = stats["contexts"][0]["context"].as_u64();
                // Ready once a command has completed, not merely once an entry was dropped in:
                // the first copy's drop-in comes before its completion.
                let completed = stats["device"]["STAT_COMMANDS_COMPLETED"].as_u64();
                match (context, stats["tlb_entries"].as_u64(), completed) {
                    (Some(ctx), Some(entries), Some(done)) if entries > 0 && done > 0 => {
                        break (stats, ctx)
                    }
                    _ => format!("no context with TLB entries and completions yet: {stats}"),
                }
            }
            Err(e) => e,
        };
        if started.elapsed() > READY_WITHIN {
            return Err(format!("the API never showed the guest's context: {last}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let ctx = u8::try_from(context).map_err(|e| e.to_string())?;
    let tlb = ask(socket, &Request::Tlb { context: ctx })?;
    let va = tlb["entries"][0]["va"]
        .as_str()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| format!("no entry in the TLB answer: {tlb}"))?;
    let snapshot = ask(
        socket,
        &Request::Snapshot {
            context: ctx,
            va,
            len: 4096,
        },
    )?;
    let trace_text = ask(
        socket,
        &Request::Trace {
            format: TraceFormat::Text,
        },
    )?
    .as_str()
    .unwrap_or_default()
    .to_string();
    let fault_list = ask(socket, &Request::FaultList)?;
    ask(
        socket,
        &Request::FaultSet {
            modes: "dma-error:1".into(),
            seed: Some(7),
        },
    )?;
    Ok(Seen {
        context,
        stats,
        tlb,
        snapshot,
        trace_text,
        fault_list,
    })
}

/// Index of the first trace event after `after` (an index) whose name is `name` and that
/// passes `filter`.
fn find(
    events: &[Value],
    after: usize,
    name: &str,
    filter: impl Fn(&Value) -> bool,
) -> Option<usize> {
    events
        .iter()
        .enumerate()
        .skip(after)
        .find(|(_, e)| e["name"] == name && filter(e))
        .map(|(i, _)| i)
}

fn check_trace(path: &Path, context: u64) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let events: Vec<Value> = json["traceEvents"]
        .as_array()
        .unwrap_or_else(|| panic!("no traceEvents in {}", path.display()))
        .iter()
        .filter(|e| e["ph"] == "i")
        .cloned()
        .collect();
    let track = 1000 + context;
    let on_track = |e: &Value| e["tid"].as_u64() == Some(track);
    // The first miss of the context: fault record, then the drop-in, then a completion.
    let fault = find(&events, 0, "fault record", on_track)
        .unwrap_or_else(|| panic!("no fault record on context {context}'s track"));
    let dropin = find(&events, fault, "drop-in", on_track)
        .unwrap_or_else(|| panic!("no drop-in after the fault record"));
    let completion = find(&events, dropin, "completion", on_track)
        .unwrap_or_else(|| panic!("no completion after the drop-in"));
    assert!(fault < dropin && dropin < completion);
    // The munmap: an invalidation that removed something, then its completion.
    let invalidation = find(&events, 0, "invalidation", |e| {
        !e["args"]["detail"]
            .as_str()
            .unwrap_or_default()
            .ends_with("removed 0")
    })
    .unwrap_or_else(|| panic!("no invalidation that removed an entry"));
    assert!(
        find(&events, invalidation, "invalidation done", |_| true).is_some(),
        "no completion after the invalidation"
    );
    // Times never go backwards along the log.
    let times: Vec<f64> = events.iter().filter_map(|e| e["ts"].as_f64()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "trace times go backwards"
    );
}

fn control_api_and_trace(mode: Mode) {
    let host = mode.host();
    let dir = scratch_dir(&host.to_string());
    let socket = dir.join("api.sock");
    let trace = dir.join("trace.json");
    let mut guest = GuestRun::new(&["await-fault", "--seconds", "150"]);
    guest.api_socket = Some(socket.clone());
    guest.trace = Some(trace.clone());
    let images = images();
    let boot = std::thread::spawn(move || run_in(host, &images, &guest));
    let seen = drive(&socket);
    let outcome = boot
        .join()
        .unwrap_or_else(|_| panic!("boot thread panicked"))
        .unwrap_or_else(|e| panic!("boot failed: {e}"));
    let seen = seen.unwrap_or_else(|e| panic!("{e}\n{}", outcome.tail()));
    assert_eq!(outcome.status, 0, "guest status\n{}", outcome.tail());
    assert!(
        outcome.console.contains("injected device error seen"),
        "the run-time dma-error never reached the guest\n{}",
        outcome.tail()
    );
    let stats = &seen.stats;
    assert!(
        stats["device"]["STAT_COMMANDS_COMPLETED"].as_u64() > Some(0),
        "{stats}"
    );
    assert_eq!(stats["oracle"]["violations"].as_u64(), Some(0), "{stats}");
    assert!(stats["oracle"]["checked"].as_u64() > Some(0), "{stats}");
    let entry = &seen.tlb["entries"][0];
    assert!(
        entry["perms"].is_string() && entry["frame"].is_string(),
        "{}",
        seen.tlb
    );
    let page = &seen.snapshot["pages"][0];
    assert_eq!(page["verdict"], "coherent", "{}", seen.snapshot);
    assert_eq!(page["device"]["frame"], entry["frame"], "{}", seen.snapshot);
    assert_eq!(page["cpu"]["frame"], entry["frame"], "{}", seen.snapshot);
    assert!(
        seen.trace_text.contains("drop-in ctx"),
        "{}",
        seen.trace_text
    );
    assert_eq!(seen.fault_list["modes"], "none", "{}", seen.fault_list);
    check_trace(&trace, seen.context);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_api_and_trace_in_qemu() {
    control_api_and_trace(Mode::Qemu);
}

#[test]
fn control_api_and_trace_under_rmnic_vmm() {
    control_api_and_trace(Mode::Default);
}
