//! `--set key.path=value` on a TOML table: the one implementation, for `castle-data` and
//! `castle-train` alike.

use anyhow::{bail, Context, Result};

/// `key.path=value`: `value` is read as a TOML value (`3e-4`, `true`, `"x"`), or else as a string.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let Some((path, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment}: expected key.path=value, e.g. --set train.lr=3e-4");
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let keys: Vec<&str> = path.trim().split('.').collect();
    // `split` yields at least one piece, even of an empty string.
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut node = table;
    for key in parents {
        node = node
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .with_context(|| format!("--set {assignment}: {key} is not a table"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}
