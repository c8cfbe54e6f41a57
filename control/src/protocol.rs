//! Requests and responses of the control API. Each is one line of JSON.
//!
//! A request names its command in `"command"`: `{"command":"tlb","context":3}`. A response is
//! `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`; the result's shape per command
//! is documented in docs/vmm.md.

use serde::{Deserialize, Serialize};

/// Longest request line a server reads (bytes); a longer one gets an error and the
/// connection is closed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most pages one `snapshot` covers.
pub const MAX_SNAPSHOT_PAGES: u64 = 4096;

/// How `trace` renders the event log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceFormat {
    /// Chrome trace-event JSON (opens in Perfetto and chrome://tracing).
    #[default]
    Chrome,
    /// One line per event.
    Text,
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Device counters, live contexts with their counters, oracle counts, active faults.
    Stats,
    /// The oracle's violations: count and the kept records.
    Violations,
    /// Replaces the injected faults (`--fault` syntax) and, if given, the seed.
    FaultSet {
        /// Modes, comma-separated.
        modes: String,
        /// Seed of the random choices (the host's `--seed` if absent).
        #[serde(default)]
        seed: Option<u64>,
    },
    /// Stops injecting faults.
    FaultClear,
    /// The active faults, the seed and every mode there is.
    FaultList,
    /// The TLB entries of a context's ASID.
    Tlb {
        /// Context number.
        context: u8,
    },
    /// Per page of `[va, va + len)`: what the device TLB holds next to what the CPU's page
    /// tables hold (like test_hmm's SNAPSHOT ioctl).
    Snapshot {
        /// Context number.
        context: u8,
        /// First address.
        va: u64,
        /// Bytes.
        len: u64,
    },
    /// The device event log.
    Trace {
        /// Rendering.
        #[serde(default)]
        format: TraceFormat,
    },
}

/// A request as it travels: the request and an optional id the response repeats, so a
/// client behind a relay (the emulated host's serial line) can tell its answer from a late
/// answer to an earlier connection's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Repeated in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// One response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result (absent on error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// What went wrong (absent on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request's id, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

impl Response {
    /// A success.
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
            id: None,
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(message.into()),
            id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let parse = |s: &str| serde_json::from_str::<Request>(s);
        assert_eq!(
            parse(r#"{"command":"tlb","context":3}"#).ok(),
            Some(Request::Tlb { context: 3 })
        );
        assert_eq!(
            parse(r#"{"command":"fault-set","modes":"evict:4"}"#).ok(),
            Some(Request::FaultSet {
                modes: "evict:4".into(),
                seed: None
            })
        );
        assert_eq!(
            parse(r#"{"command":"trace"}"#).ok(),
            Some(Request::Trace {
                format: TraceFormat::Chrome
            })
        );
        let envelope: Envelope =
            serde_json::from_str(r#"{"id":7,"command":"tlb","context":3}"#).expect("envelope");
        assert_eq!(
            envelope,
            Envelope {
                id: Some(7),
                request: Request::Tlb { context: 3 }
            }
        );
        for bad in [
            r#"{"command":"tlb"}"#,
            r#"{"command":"tlb","context":300}"#,
            r#"{"command":"tlb","context":-1}"#,
            r#"{"command":"reboot"}"#,
            "not json",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
