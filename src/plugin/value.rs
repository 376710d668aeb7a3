//! The evaluated arguments of `builtins.vmTest`, as `cpp/plugin.cc` encodes
//! them: tagged JSON, one object per Nix value (`{"t": "string", "v": ...,
//! "ctx": [...]}`), so that strings keep their store-path context and paths
//! arrive already copied into the store.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One Nix value, as much of it as the C++ side forced.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum NixValue {
    Null,
    Bool {
        v: bool,
    },
    Int {
        v: i64,
    },
    Float {
        v: f64,
    },
    /// A string and its context (the store paths it refers to, in Nix's
    /// encoding: `/nix/store/...`, `!out!/nix/store/...drv`, `=/nix/store/...drv`).
    String {
        v: String,
        #[serde(default)]
        ctx: Vec<String>,
    },
    /// A path value: `v` as written, `store` where Nix copied it.
    Path {
        v: String,
        store: String,
        #[serde(default)]
        ctx: Vec<String>,
    },
    /// A derivation (or anything with an `outPath`): its out path.
    Drv {
        v: String,
        #[serde(default)]
        ctx: Vec<String>,
    },
    Attrs {
        v: BTreeMap<String, NixValue>,
        /// `file:line:col` of each attribute, where Nix knows it.
        #[serde(default)]
        pos: BTreeMap<String, String>,
    },
    List {
        v: Vec<NixValue>,
    },
    Function,
    /// Deeper than the C++ side looks.
    Unforced,
    /// Anything else (external values); `v` is Nix's name for its type.
    Other {
        v: String,
    },
}

impl NixValue {
    /// The type, as an error message names it ("got an integer").
    pub fn describe(&self) -> String {
        match self {
            NixValue::Null => "null".into(),
            NixValue::Bool { v } => format!("a Boolean ({v})"),
            NixValue::Int { v } => format!("an integer ({v})"),
            NixValue::Float { v } => format!("a float ({v})"),
            NixValue::String { v, .. } => {
                let short: String = v.chars().take(40).collect();
                let more = if v.chars().count() > 40 { "..." } else { "" };
                format!("a string ({short:?}{more})")
            }
            NixValue::Path { v, .. } => format!("a path ({v})"),
            NixValue::Drv { v, .. } => format!("a derivation ({v})"),
            NixValue::Attrs { v, .. } if v.is_empty() => "an empty attribute set".into(),
            NixValue::Attrs { v, .. } => {
                let keys: Vec<&str> = v.keys().map(String::as_str).take(6).collect();
                format!("an attribute set with {}", keys.join(", "))
            }
            NixValue::List { .. } => "a list".into(),
            NixValue::Function => "a function".into(),
            NixValue::Unforced => "a value nested too deep".into(),
            NixValue::Other { v } => format!("a {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_tagged_encoding() {
        let v: NixValue = serde_json::from_str(
            r#"{"t":"attrs","v":{"a":{"t":"int","v":3},
                "s":{"t":"string","v":"x","ctx":["/nix/store/aaa-x"]},
                "f":{"t":"function"}},"pos":{"a":"/t.nix:1:2"}}"#,
        )
        .unwrap();
        let NixValue::Attrs { v, pos } = v else {
            panic!("not attrs")
        };
        assert_eq!(v["a"], NixValue::Int { v: 3 });
        assert_eq!(v["f"], NixValue::Function);
        assert_eq!(pos["a"], "/t.nix:1:2");
        assert_eq!(v["s"].describe(), "a string (\"x\")");
    }
}
