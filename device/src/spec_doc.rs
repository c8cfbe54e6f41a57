//! Test-only reader of `docs/device-spec.md`, so the specification's tables are checked
//! against the code and cannot drift.

/// The specification, read at compile time (a missing file fails the test build).
const SPEC: &str = include_str!("../../docs/device-spec.md");

/// One row of a register map.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SpecRow {
    /// Offset in BAR0 (global registers) or in the block (context registers, written `+0x…`).
    pub(crate) offset: u64,
    /// Constant name.
    pub(crate) name: String,
    /// Width in bits, as written.
    pub(crate) width: String,
    /// Access mnemonic (RO, RW, RWL, W1C, WO).
    pub(crate) access: String,
    /// Reset value.
    pub(crate) reset: u32,
    /// Writable bits.
    pub(crate) writable: u32,
}

/// One row of a counter table: `| 0x100 | STAT_HITS | … |`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CounterRow {
    /// Offset of the low half.
    pub(crate) offset: u64,
    /// Counter name.
    pub(crate) name: String,
}

/// Parses `0x…` hexadecimal or decimal, with optional `_` separators and a leading `+`.
fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim().trim_start_matches('+').replace('_', "");
    match text.strip_prefix("0x") {
        Some(digits) => u64::from_str_radix(digits, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The cells of a Markdown table row, trimmed, with code quotes removed.
fn cells(line: &str) -> Option<Vec<&str>> {
    let line = line.trim();
    if !line.starts_with('|') {
        return None;
    }
    Some(
        line.trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().trim_matches('`'))
            .collect(),
    )
}

/// Register map rows with width 32: the global map's (`| 0x000 | REG_ID | 32 | RO | … |`) or,
/// with `context_block`, the context block's, whose offsets are written `+0x…`.
pub(crate) fn register_rows(context_block: bool) -> Vec<SpecRow> {
    SPEC.lines()
        .filter_map(cells)
        .filter(|cells| {
            cells.len() >= 6 && cells[2] == "32" && cells[0].starts_with('+') == context_block
        })
        .filter_map(|cells| {
            Some(SpecRow {
                offset: parse_number(cells[0])?,
                name: cells[1].to_string(),
                width: cells[2].to_string(),
                access: cells[3].to_string(),
                reset: u32::try_from(parse_number(cells[4])?).ok()?,
                writable: u32::try_from(parse_number(cells[5])?).ok()?,
            })
        })
        .collect()
}

/// Counter table rows whose name starts with `prefix` and whose width column says 64.
pub(crate) fn counter_rows(prefix: &str) -> Vec<CounterRow> {
    SPEC.lines()
        .filter_map(cells)
        .filter(|cells| cells.len() >= 3 && cells[1].starts_with(prefix) && cells[2] == "64")
        .filter_map(|cells| {
            Some(CounterRow {
                offset: parse_number(cells[0])?,
                name: cells[1].to_string(),
            })
        })
        .collect()
}

/// Every constants-table row: `(NAME, value)` for rows whose first cell is an upper-case
/// identifier and whose second cell is a number.
pub(crate) fn constants() -> Vec<(String, u64)> {
    SPEC.lines()
        .filter_map(cells)
        .filter(|cells| cells.len() >= 2)
        .filter(|cells| {
            let name = cells[0];
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        })
        .filter_map(|cells| Some((cells[0].to_string(), parse_number(cells[1])?)))
        .collect()
}
