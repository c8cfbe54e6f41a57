//! Test-only reader of `docs/device-spec.md`, so the specification's tables are checked
//! against the code and cannot drift.

/// The specification, read at compile time (a missing file fails the test build).
const SPEC: &str = include_str!("../../docs/device-spec.md");

/// One row of the specification's register map.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SpecRow {
    /// Offset in BAR0.
    pub(crate) offset: u64,
    /// `REG_*` name.
    pub(crate) name: String,
    /// Width in bits, as written.
    pub(crate) width: String,
    /// Access mnemonic (RO, RW, W1C).
    pub(crate) access: String,
    /// Reset value.
    pub(crate) reset: u32,
    /// Writable bits.
    pub(crate) writable: u32,
}

/// Parses `0x…` hexadecimal or decimal, with optional `_` separators.
fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim().replace('_', "");
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

/// Register map rows: `| 0x000 | REG_ID | 32 | RO | 0x524D_4E43 | 0x0000_0000 | … |`.
pub(crate) fn register_rows() -> Vec<SpecRow> {
    SPEC.lines()
        .filter_map(cells)
        .filter(|cells| cells.len() >= 6 && cells[1].starts_with("REG_"))
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

/// The value of a constants-table row `| NAME | 0x… | … |`.
pub(crate) fn constant(name: &str) -> Option<u64> {
    SPEC.lines()
        .filter_map(cells)
        .find(|cells| cells.first() == Some(&name))
        .and_then(|cells| cells.get(1).and_then(|value| parse_number(value)))
}
