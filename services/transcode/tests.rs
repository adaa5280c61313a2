//! The transcoder against the general path: whenever it answers, `from_json` accepts the same text
//! and means the same message; and it answers for every canonical JSON of the types it handles.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};

use super::json_to_proto::JsonToProto;
use crate::services::json::{from_json, to_json};

/// The fixtures, compiled once per test process (the property tests ask for them per case).
pub(crate) fn pool() -> DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transcode");
        let files = [dir.join("kinds.proto"), dir.join("legacy.proto")];
        crate::services::contract::compile(&files, &[dir])
            .expect("fixtures compile")
            .0
    })
    .clone()
}

fn legacy() -> MessageDescriptor {
    pool()
        .get_message_by_name("kinds.v2.Legacy")
        .expect("Legacy")
}

/// `kinds.v1.Everything`: every field shape of proto3.
pub(crate) fn everything() -> MessageDescriptor {
    pool()
        .get_message_by_name("kinds.v1.Everything")
        .expect("Everything")
}

/// A `kinds.v1.Everything` that JSON cannot say: its `at` (a `Timestamp`) is in year 31,690,708,
/// valid protobuf but beyond what RFC 3339, and so proto3 JSON, can write.
pub(crate) fn unwritable() -> DynamicMessage {
    let desc = everything();
    let mut message = DynamicMessage::new(desc.clone());
    let field = desc.get_field_by_name("at").expect("a Timestamp field");
    let mut at = DynamicMessage::new(field.kind().as_message().expect("a message").clone());
    at.set_field_by_name("seconds", Value::I64(1_000_000_000_000_000));
    message.set_field(&field, Value::Message(at));
    message
}

/// The message as canonical JSON, parsed (so that map order and float spelling do not matter).
pub(crate) fn canonical(message: &DynamicMessage) -> serde_json::Value {
    let text = to_json(message).expect("a message the tests build is writable");
    serde_json::from_str(&text).expect("to_json writes JSON")
}

/// Panics when `message` or a message inside it holds unknown fields: the transcoder wrote a field
/// number the type does not have (canonical JSON would not show it).
fn assert_no_unknown_fields(message: &DynamicMessage) {
    assert_eq!(
        message.unknown_fields().count(),
        0,
        "unknown fields in {}",
        canonical(message)
    );
    for (_, value) in message.fields() {
        let nested: Vec<&DynamicMessage> = match value {
            Value::Message(m) => vec![m],
            Value::List(items) => items.iter().filter_map(Value::as_message).collect(),
            Value::Map(entries) => entries.values().filter_map(Value::as_message).collect(),
            _ => Vec::new(),
        };
        nested.into_iter().for_each(assert_no_unknown_fields);
    }
}

/// Runs both paths on `text`. Panics when the fast path answers and the general path disagrees;
/// returns whether the fast path answered.
fn agree(desc: &MessageDescriptor, text: &str) -> bool {
    let mut out = Vec::new();
    let fast = JsonToProto::new(desc).transcode(text.as_bytes(), &mut out);
    let slow = from_json(desc, text.as_bytes());
    if fast {
        let slow = slow.unwrap_or_else(|e| panic!("fast path took {text}, from_json says {e}"));
        let decoded = DynamicMessage::decode(desc.clone(), out.as_slice())
            .unwrap_or_else(|e| panic!("fast path wrote undecodable bytes for {text}: {e}"));
        assert_no_unknown_fields(&decoded);
        assert_eq!(
            canonical(&decoded),
            canonical(&slow),
            "the paths disagree on {text}"
        );
    }
    fast
}

/// Builds JSON text for a message type from a stream of choices, mostly valid, sometimes not:
/// wrong types, out-of-range numbers, nulls, unknown and repeated keys, both spellings of names.
struct Gen<'a> {
    choices: &'a [u8],
    at: usize,
}

impl Gen<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let byte = self.choices.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        usize::from(byte) % n
    }

    fn one_of(&mut self, options: &[&str]) -> String {
        options[self.pick(options.len())].to_string()
    }

    fn message(&mut self, desc: &MessageDescriptor, depth: usize) -> String {
        let mut parts = Vec::new();
        let fields: Vec<_> = desc.fields().collect();
        let count = self.pick(fields.len() + 2);
        for _ in 0..count {
            let field = &fields[self.pick(fields.len())];
            let key = match self.pick(10) {
                0 => field.name().to_string(),
                1 => "unknownField".to_string(),
                2 if depth == 0 => "[kinds.v1.ext]".to_string(),
                3 if depth == 0 => "[kinds.v2.remark]".to_string(),
                _ => field.json_name().to_string(),
            };
            let value = if self.pick(12) == 0 {
                self.one_of(&["null", "1", "\"x\"", "[]", "{}", "true", "1.5"])
            } else if field.is_map() {
                self.map(field, depth)
            } else if field.is_list() {
                let n = self.pick(4);
                let items: Vec<String> = (0..n)
                    .map(|_| {
                        if self.pick(15) == 0 {
                            "null".to_string()
                        } else {
                            self.value(&field.kind(), depth)
                        }
                    })
                    .collect();
                format!("[{}]", items.join(","))
            } else {
                self.value(&field.kind(), depth)
            };
            parts.push(format!("{}:{value}", serde_json::Value::from(key)));
        }
        format!("{{{}}}", parts.join(","))
    }

    fn map(&mut self, field: &prost_reflect::FieldDescriptor, depth: usize) -> String {
        let Kind::Message(entry) = field.kind() else {
            return "{}".to_string();
        };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        let n = self.pick(4);
        let entries: Vec<String> = (0..n)
            .map(|_| {
                let key = match key_kind {
                    Kind::Bool => self.one_of(&["true", "false", "yes", "1"]),
                    Kind::String => self.one_of(&["", "a", "b", "é\"x"]),
                    _ => self.one_of(&["0", "1", "-1", "+2", "007", "4294967296", "x", " 1"]),
                };
                let value = if self.pick(15) == 0 {
                    "null".to_string()
                } else {
                    self.value(&value_kind, depth)
                };
                format!("{}:{value}", serde_json::Value::from(key))
            })
            .collect();
        format!("{{{}}}", entries.join(","))
    }

    fn value(&mut self, kind: &Kind, depth: usize) -> String {
        const NUMBERS: &[&str] = &[
            "0",
            "-0",
            "1",
            "-1",
            "7",
            "2147483647",
            "2147483648",
            "-2147483648",
            "-2147483649",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "1.5",
            "1.0",
            "-2.0",
            "1e3",
            "1e-3",
            "3.4028235e38",
            "3.5e38",
            "-3.5e38",
            "1e308",
            "0.1",
            "\"5\"",
            "\"-7\"",
            "\"+3\"",
            "\"007\"",
            "\"1.0\"",
            "\"1e2\"",
            "\"NaN\"",
            "\"Infinity\"",
            "\"-Infinity\"",
            "\"inf\"",
            "\"nan\"",
            "\"abc\"",
            "\"\"",
            "\" 1\"",
            "true",
            "\"18446744073709551615\"",
            "\"-9223372036854775809\"",
        ];
        match kind {
            Kind::Bool => self.one_of(&["true", "false", "\"true\"", "1", "0"]),
            Kind::String => self.one_of(&[
                "\"\"",
                "\"hello\"",
                "\"h\\u00e9llo\\n\"",
                "\"\\ud83d\\ude00\"",
                "5",
                "\"RED\"",
            ]),
            Kind::Bytes => self.one_of(&[
                "\"\"",
                "\"aGVsbG8=\"",
                "\"aGVsbG8\"",
                "\"-_-_\"",
                "\"+/+/\"",
                "\"a-+b\"",
                "\"!!\"",
                "\"YQ==\"",
                "\"YR==\"",
                "\"Y\"",
                "3",
            ]),
            Kind::Enum(_) => self.one_of(&[
                "\"RED\"",
                "\"BLUE\"",
                "\"COLOUR_UNSPECIFIED\"",
                "\"PURPLE\"",
                "2",
                "-3",
                "0",
                "7",
                "2147483648",
                "\"1\"",
                "1.0",
                "\"red\"",
            ]),
            Kind::Message(desc) if desc.full_name() == "google.protobuf.Timestamp" => {
                self.one_of(&["\"2024-01-01T00:00:00Z\"", "\"x\"", "{}"])
            }
            Kind::Message(desc) if desc.package_name() == "google.protobuf" => {
                self.one_of(&["{\"a\":1}", "1", "\"x\"", "{}", "[1,null]"])
            }
            Kind::Message(desc) => {
                if depth >= 3 {
                    "{}".to_string()
                } else {
                    self.message(desc, depth + 1)
                }
            }
            _ => self.one_of(NUMBERS),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// On the proto3 fixture and on the proto2 one, from the same choices.
    #[test]
    fn the_fast_path_never_disagrees_with_the_general_one(
        choices in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        for desc in [everything(), legacy()] {
            let text = Gen { choices: &choices, at: 0 }.message(&desc, 0);
            agree(&desc, &text);
        }
    }

    #[test]
    fn the_fast_path_takes_every_canonical_reply_without_well_known_types(
        choices in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let desc = everything();
        let text = Gen { choices: &choices, at: 0 }.message(&desc, 0);
        if let Ok(message) = from_json(&desc, text.as_bytes()) {
            let canonical_text = to_json(&message).expect("what from_json read is writable");
            let has_wkt = ["\"at\":", "\"extra\":", "\"anyValue\":"]
                .iter()
                .any(|key| canonical_text.contains(key));
            let took = agree(&desc, &canonical_text);
            prop_assert!(took || has_wkt, "declined canonical JSON {}", canonical_text);
        }
    }
}

fn transcode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    JsonToProto::new(&everything())
        .transcode(text.as_bytes(), &mut out)
        .then_some(out)
}

#[test]
fn it_declines_what_the_general_path_must_judge() {
    for text in [
        r#"{"at": "2024-01-01T00:00:00Z"}"#,
        r#"{"anyValue": null}"#,
        r#"{"maybe": 1, "maybe": 2}"#,
        r#"{"maybe": 1, "maybe_text": "x", "maybeText": "y"}"#,
        r#"{"choiceText": "a", "choiceNumber": 1}"#,
        r#"{"packedInts": [1, null]}"#,
        r#"{"scalars": {"fColour": "PURPLE"}}"#,
        r#"{"[kinds.v1.ext]": 1}"#,
        r#"{"maybe": "x"}"#,
        r#"{"maybe": 1.5}"#,
        r#"{"maybe": 2147483648}"#,
        r#"{"names": "x"}"#,
        r#"{"scalars": []}"#,
        r#"[]"#,
        r#"{} {}"#,
        r#"{"maybe": 1"#,
    ] {
        assert!(transcode(text).is_none(), "took {text}");
    }
}

#[test]
fn it_takes_both_spellings_unknown_fields_and_null() {
    for text in [
        r#"{"maybe_text": "x", "future": [1, {"a": null}]}"#,
        r#"{"maybeText": "x", "maybe": null}"#,
        r#"{"choiceText": "a", "choiceNumber": null}"#,
        r#"{"scalars": {"fInt32": "-5", "fInt64": 9007199254740993, "fFloat": "NaN"}}"#,
    ] {
        assert!(transcode(text).is_some(), "declined {text}");
        assert!(agree(&everything(), text));
    }
}

#[test]
fn it_writes_the_wire_format_by_hand_correctly() {
    // int32 -1 is ten bytes (sign-extended), sint32 -1 is zigzag 1, a present optional 0 is written.
    let bytes =
        transcode(r#"{"maybe": 0, "scalars": {"fInt32": -1, "fSint32": -1}}"#).expect("taken");
    assert_eq!(
        bytes,
        [
            0x10, 0x00, // maybe = 0 (field 2, varint)
            0x0a, 0x0d, // scalars (field 1, 13 bytes)
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // fInt32 = -1
            0x38, 0x01, // fSint32 = -1
        ]
    );
}

#[test]
fn a_nested_message_over_127_bytes_gets_a_two_byte_length() {
    let long = "x".repeat(300);
    let text =
        format!(r#"{{"child": {{"names": ["{long}"], "child": {{"maybeText": "{long}"}}}}}}"#);
    let bytes = transcode(&text).expect("taken");
    assert!(agree(&everything(), &text));
    // field 19, length-delimited: a two-byte key, then a two-byte length.
    assert_eq!(&bytes[..2], &[0x9a, 0x01]);
    assert!(bytes[2] & 0x80 != 0, "a multi-byte length");
}

#[test]
fn a_well_known_type_as_the_reply_type_always_takes_the_general_path() {
    let pool = pool();
    for (name, text) in [
        ("google.protobuf.Struct", r#"{"a": 1}"#),
        ("google.protobuf.Struct", r#"{"fields": {}}"#),
        ("google.protobuf.Value", r#"{"numberValue": 5}"#),
        ("google.protobuf.ListValue", "{}"),
        ("google.protobuf.Timestamp", r#"{"seconds": 1}"#),
    ] {
        let desc = pool
            .get_message_by_name(name)
            .expect("imported by the fixture");
        let mut out = Vec::new();
        assert!(
            !JsonToProto::new(&desc).transcode(text.as_bytes(), &mut out),
            "{name} took {text}"
        );
    }
}

#[test]
fn a_json_name_wins_over_a_proto_name_spelled_the_same() {
    // `alpha` is spelled "beta" in JSON, and `beta` is spelled "gamma".
    let desc = everything();
    for (text, alpha, beta) in [
        (r#"{"beta": 5}"#, 5, 0),
        (r#"{"gamma": 6}"#, 0, 6),
        (r#"{"alpha": 7}"#, 7, 0),
    ] {
        let bytes = transcode(text).expect("taken");
        assert!(agree(&desc, text));
        let decoded = DynamicMessage::decode(desc.clone(), bytes.as_slice()).expect("decodes");
        let get = |name: &str| decoded.get_field_by_name(name).and_then(|v| v.as_i32());
        assert_eq!(
            (get("alpha"), get("beta")),
            (Some(alpha), Some(beta)),
            "{text}"
        );
    }
}

#[test]
fn minus_zero_keeps_its_sign_where_presence_is_tracked() {
    let bytes = transcode(r#"{"maybeDouble": -0.0}"#).expect("taken");
    assert_eq!(bytes, [0xd1, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x80]);
    assert!(agree(&everything(), r#"{"maybeDouble": -0.0}"#));
}

#[test]
fn proto2_defaults_are_written_when_given_and_groups_and_extensions_are_declined() {
    let desc = legacy();
    let mut out = Vec::new();
    let fast = JsonToProto::new(&desc);
    // A present field is written even at its type's default (proto2 tracks presence).
    assert!(fast.transcode(br#"{"id": "", "count": 0, "flag": false}"#, &mut out));
    assert_eq!(out, [0x0a, 0x00, 0x10, 0x00, 0x30, 0x00]);
    assert!(agree(&desc, r#"{"id": "", "count": 0, "flag": false}"#));
    for text in [
        r#"{"extra": {"note": "x"}}"#,
        r#"{"[kinds.v2.remark]": "x"}"#,
    ] {
        out.clear();
        assert!(!fast.transcode(text.as_bytes(), &mut out), "took {text}");
    }
}
