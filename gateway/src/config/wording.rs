//! How config errors read: keys as an operator finds them in the file (a stage by its name, not
//! `stage[1]`; `[stage.config] rules`), and serde's and toml's wording ("invalid type: string
//! \"many\", expected usize") in plain words ("must be a whole number, not \"many\""). Pure.

/// A dotted key path (`stage[1].config.rules`) as shown in errors: stages by their `name` in
/// `text` (`stage "rules": [stage.config] rules`); other keys as they are (`server.listen`).
pub fn shown_key(text: &str, dotted: &str) -> String {
    let Some(rest) = dotted.strip_prefix("stage[") else { return dotted.to_string() };
    let Some((index, rest)) = rest.split_once(']') else { return dotted.to_string() };
    let Ok(index) = index.parse::<usize>() else { return dotted.to_string() };
    let stage = match stage_name(text, index) {
        Some(name) => format!("stage {name:?}"),
        None => format!("[[stage]] number {}", index + 1),
    };
    let rest = rest.trim_start_matches('.');
    match rest.split_once('.') {
        _ if rest.is_empty() => stage,
        // A sub-table's key, as the operator wrote it under `[stage.config]` / `[stage.test]`.
        Some((table, key)) => format!("{stage}: [stage.{table}] {key}"),
        None => format!("{stage}: {rest}"),
    }
}

/// The `name` of the `index`-th `[[stage]]` table in `text`, if it has one.
fn stage_name(text: &str, index: usize) -> Option<String> {
    let doc: toml_edit::ImDocument<&str> = toml_edit::ImDocument::parse(text).ok()?;
    let stage = doc.get("stage")?.as_array_of_tables()?.get(index)?;
    stage.get("name")?.as_str().map(str::to_string)
}

/// A serde/toml message in an operator's words, on one line.
pub fn plain(message: &str) -> String {
    let message: Vec<&str> = message.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let message = message.join("; ");
    // toml's parser gives no words for some characters it refuses (a control character in a
    // comment, found by fuzzing); an error must still say what is wrong.
    if message.is_empty() {
        return "a character TOML does not allow here (a control character other than tab?); remove it".into();
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, known) = split_expected(rest);
        return match known {
            Some(known) => format!("unknown key {field:?}; the keys here are {}", unquote_list(&known)),
            None => format!("unknown key {field:?}; this table takes no keys"),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (value, known) = split_expected(rest);
        let known = known.map(|k| quote_list(&k)).unwrap_or_default();
        return format!("unknown value {value:?}; use one of {known}");
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("the key {} is required here", unquote(rest));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, expected)) = message.strip_prefix(prefix).and_then(|rest| rest.rsplit_once(", expected ")) {
            return format!("must be {}, not {}", expected_in_words(expected), got_in_words(got));
        }
    }
    message
}

/// "`x`, expected one of `a`, `b`" → ("x", Some("`a`, `b`")); "there are no fields" → None.
fn split_expected(rest: &str) -> (String, Option<String>) {
    let (item, expected) = rest.split_once(", ").unwrap_or((rest, ""));
    let known = expected.strip_prefix("expected one of ").or_else(|| expected.strip_prefix("expected "));
    (unquote(item), known.map(str::to_string))
}

fn unquote(text: &str) -> String {
    text.trim().trim_matches('`').to_string()
}

fn items(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(", ").map(unquote)
}

fn unquote_list(list: &str) -> String {
    items(list).collect::<Vec<_>>().join(", ")
}

fn quote_list(list: &str) -> String {
    items(list).map(|item| format!("{item:?}")).collect::<Vec<_>>().join(", ")
}

fn expected_in_words(expected: &str) -> String {
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" | "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "a string in quotes".into(),
        "a sequence" => "a list, e.g. [\"…\"]".into(),
        "a map" => "a table".into(),
        other if other.starts_with("struct ") => "a table".into(),
        other => other.strip_prefix("expected ").unwrap_or(other).to_string(),
    }
}

/// serde's `Unexpected`: `string "many"`, integer `5`, `sequence`…
fn got_in_words(got: &str) -> String {
    if let Some(text) = got.strip_prefix("string ") {
        return text.to_string();
    }
    for kind in ["integer ", "floating point ", "boolean "] {
        if let Some(value) = got.strip_prefix(kind) {
            return unquote(value);
        }
    }
    match got {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_named_by_their_name() {
        let text =
            "[[stage]]\nname = \"a\"\nkind = \"test\"\n[[stage]]\nname = \"rules\"\n[stage.config]\nrules = \"\"\n";
        assert_eq!(shown_key(text, "stage[1].name"), "stage \"rules\": name");
        assert_eq!(shown_key(text, "stage[1].config.rules"), "stage \"rules\": [stage.config] rules");
        assert_eq!(shown_key(text, "stage[0].test.delay"), "stage \"a\": [stage.test] delay");
        assert_eq!(shown_key(text, "stage[0]"), "stage \"a\"");
        assert_eq!(shown_key("[[stage]]\nkind = \"test\"\n", "stage[0]"), "[[stage]] number 1");
        assert_eq!(shown_key(text, "server.listen"), "server.listen");
    }

    #[test]
    fn serde_jargon_in_plain_words() {
        assert_eq!(plain("invalid type: string \"many\", expected usize"), "must be a whole number, not \"many\"");
        assert_eq!(plain("invalid value: integer `-5`, expected u64"), "must be a whole number, not -5");
        assert_eq!(plain("invalid type: integer `1`, expected a boolean"), "must be true or false, not 1");
        assert_eq!(plain("invalid type: integer `1`, expected a sequence"), "must be a list, e.g. [\"…\"], not 1");
        assert_eq!(
            plain("unknown field `max_mesage_size`, expected one of `listen`, `hostname`"),
            "unknown key \"max_mesage_size\"; the keys here are listen, hostname"
        );
        assert_eq!(
            plain("unknown variant `wasm2`, expected one of `test`, `wasm`, `clamd`"),
            "unknown value \"wasm2\"; use one of \"test\", \"wasm\", \"clamd\""
        );
        assert_eq!(plain("missing field `kind`"), "the key kind is required here");
        assert_eq!(plain("invalid table header\nexpected `.`, `]`\n"), "invalid table header; expected `.`, `]`");
    }
}
