//! Proto3 JSON text straight to protobuf bytes, without building a `DynamicMessage` in between.
//!
//! The transcoder accepts exactly what [`crate::services::json::from_json`] accepts, with the same
//! meaning, for the common shapes of a reply: scalars, strings, bytes, enums, nested messages,
//! lists and maps. Whatever it is unsure of — well-known types, groups, extensions, a key given
//! twice, two members of one oneof, `null` inside a list or map, an enum name it does not know,
//! and every malformed input — it declines, and the caller runs the general path, which gives the
//! canonical result or the canonical error. A property test and a fuzz target check that whenever
//! it answers, the general path agrees.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use serde::de::{DeserializeSeed, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::plan::{FieldPlan, MessageIndex, Plans, ScalarKind, Shape, ValueKind, is_well_known};
use super::scalar::{Scalar, decline, decode_base64};

/// Transcodes JSON replies of one message type to protobuf.
#[derive(Debug, Clone)]
pub struct JsonToProto {
    /// `None` when the type itself is a well-known type (`google.protobuf.Empty`, `Struct`...),
    /// whose JSON form is its own: every reply then takes the general path.
    plans: Option<Plans>,
}

impl JsonToProto {
    /// A transcoder for messages of type `desc` (its plan is computed here, once).
    pub fn new(desc: &prost_reflect::MessageDescriptor) -> Self {
        Self {
            plans: (!is_well_known(desc.full_name())).then(|| Plans::new(desc)),
        }
    }

    /// Appends the protobuf encoding of the JSON `text` to `out` and returns `true`, or returns
    /// `false` when the general path must decide (`out` then holds partial output).
    pub fn transcode(&self, text: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(plans) = &self.plans else {
            return false;
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let seed = MessageSeed {
            plans,
            index: 0,
            out,
        };
        seed.deserialize(&mut de).is_ok() && de.end().is_ok()
    }
}

/// A set of small indices (fields or oneofs seen so far); no allocation up to 64 of them.
struct Seen {
    first: u64,
    rest: Vec<u64>,
}

impl Seen {
    fn new(len: usize) -> Self {
        let rest = if len > 64 {
            vec![0; (len - 64).div_ceil(64)]
        } else {
            Vec::new()
        };
        Self { first: 0, rest }
    }

    /// Marks `index`; `true` when it was already marked.
    fn insert(&mut self, index: usize) -> bool {
        let bit = 1u64 << (index % 64);
        let word = match index / 64 {
            0 => &mut self.first,
            n => &mut self.rest[n - 1],
        };
        let was = *word & bit != 0;
        *word |= bit;
        was
    }
}

/// Starts a length-delimited value; [`end_len`] writes its length in front of it.
fn begin_len(out: &mut Vec<u8>) -> usize {
    out.push(0);
    out.len()
}

fn end_len(out: &mut Vec<u8>, start: usize) {
    let len = (out.len() - start) as u64;
    if len < 0x80 {
        out[start - 1] = len as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let n = encoded_len_varint(len);
    encode_varint(len, &mut &mut prefix[..]);
    out.splice(start - 1..start, prefix[..n].iter().copied());
}

/// A message object, written as the fields it holds.
struct MessageSeed<'p, 'o> {
    plans: &'p Plans,
    index: MessageIndex,
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let plan = self.plans.message(self.index);
        let mut fields = Seen::new(plan.fields.len());
        let mut oneofs = Seen::new(plan.oneofs);
        while let Some(key) = map.next_key_seed(KeySeed(&plan.names))? {
            let Some(position) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if fields.insert(position) {
                return Err(decline());
            }
            let field = &plan.fields[position];
            let present = map.next_value_seed(FieldSeed {
                plans: self.plans,
                field,
                out: &mut *self.out,
            })?;
            if let (true, Some(oneof)) = (present, field.oneof)
                && oneofs.insert(oneof)
            {
                return Err(decline());
            }
        }
        Ok(())
    }
}

/// A key of a message object: the field's position, `None` for an unknown field (ignored).
struct KeySeed<'p>(&'p HashMap<Box<str>, usize>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: Error>(self, key: &str) -> Result<Self::Value, E> {
        match self.0.get(key) {
            Some(&position) => Ok(Some(position)),
            // An extension (`[pkg.name]`) is left to the general path.
            None if key.starts_with('[') => Err(decline()),
            None => Ok(None),
        }
    }
}

/// One field's value; yields whether it was present (not `null`).
struct FieldSeed<'p, 'o> {
    plans: &'p Plans,
    field: &'p FieldPlan,
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field value")
    }

    fn visit_unit<E: Error>(self) -> Result<bool, E> {
        // `null` leaves a field unset, except for the well-known types that give it a meaning.
        match self.field.kind {
            ValueKind::Unsupported => Err(decline()),
            _ => Ok(false),
        }
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<bool, E> {
        self.single()?.visit_bool(v).map(|()| true)
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<bool, E> {
        self.single()?.visit_i64(v).map(|()| true)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<bool, E> {
        self.single()?.visit_u64(v).map(|()| true)
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<bool, E> {
        self.single()?.visit_f64(v).map(|()| true)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<bool, E> {
        self.single()?.visit_str(v).map(|()| true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let Shape::Repeated { packed } = self.field.shape else {
            return Err(decline());
        };
        let number = self.field.number;
        if packed {
            let tag_at = self.out.len();
            encode_key(number, WireType::LengthDelimited, self.out);
            let start = begin_len(self.out);
            while seq
                .next_element_seed(ValueSeed::new(self.plans, &self.field.kind, None, self.out))?
                .is_some()
            {}
            if self.out.len() == start {
                // An empty list is not written at all.
                self.out.truncate(tag_at);
            } else {
                end_len(self.out, start);
            }
        } else {
            let tagged = Some((number, false));
            while seq
                .next_element_seed(ValueSeed::new(
                    self.plans,
                    &self.field.kind,
                    tagged,
                    self.out,
                ))?
                .is_some()
            {}
        }
        Ok(true)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        match self.field.shape {
            Shape::Map { key } => {
                while let Some(key_text) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    encode_key(self.field.number, WireType::LengthDelimited, self.out);
                    let start = begin_len(self.out);
                    write_map_key(key, &key_text, self.out)?;
                    let value =
                        ValueSeed::new(self.plans, &self.field.kind, Some((2, false)), self.out);
                    map.next_value_seed(value)?;
                    end_len(self.out, start);
                }
                Ok(true)
            }
            _ => self.single()?.visit_map(map).map(|()| true),
        }
    }
}

impl<'p, 'o> FieldSeed<'p, 'o> {
    /// The writer of a single (not repeated, not map) field's value.
    fn single<E: Error>(self) -> Result<ValueSeed<'p, 'o>, E> {
        match self.field.shape {
            Shape::Single { presence } => Ok(ValueSeed::new(
                self.plans,
                &self.field.kind,
                Some((self.field.number, !presence)),
                self.out,
            )),
            _ => Err(decline()),
        }
    }
}

fn write_map_key<E: Error>(kind: ScalarKind, text: &str, out: &mut Vec<u8>) -> Result<(), E> {
    // A map key is the entry's field 1; JSON spells every key as a string.
    let scalar = match kind {
        ScalarKind::String => {
            write_bytes_field(1, text.as_bytes(), out);
            return Ok(());
        }
        ScalarKind::Bool => Scalar::Bool(bool::from_str(text).map_err(|_| decline::<E>())?),
        integer => Scalar::from_text(integer, text)?,
    };
    scalar.write(kind, Some((1, false)), out);
    Ok(())
}

/// Writes a length-delimited field: its key, the length, the bytes.
fn write_bytes_field(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// One value of a kind: a field's value, a list element or a map value.
///
/// `tag` is `Some((number, skip_default))` to write the value with its key (and to skip it when it
/// is its type's default and `skip_default` is set), `None` for an element of a packed list.
struct ValueSeed<'p, 'o> {
    plans: &'p Plans,
    kind: &'p ValueKind,
    tag: Option<(u32, bool)>,
    out: &'o mut Vec<u8>,
}

impl<'p, 'o> ValueSeed<'p, 'o> {
    fn new(
        plans: &'p Plans,
        kind: &'p ValueKind,
        tag: Option<(u32, bool)>,
        out: &'o mut Vec<u8>,
    ) -> Self {
        Self {
            plans,
            kind,
            tag,
            out,
        }
    }

    fn scalar_kind<E: Error>(&self) -> Result<ScalarKind, E> {
        match self.kind {
            ValueKind::Scalar(kind) => Ok(*kind),
            _ => Err(decline()),
        }
    }

    fn write<E: Error>(self, scalar: Scalar, kind: ScalarKind) -> Result<(), E> {
        scalar.write(kind, self.tag, self.out);
        Ok(())
    }

    fn write_enum<E: Error>(self, number: i32) -> Result<(), E> {
        Scalar::I32(number).write(ScalarKind::Int32, self.tag, self.out);
        Ok(())
    }

    fn write_len<E: Error>(self, bytes: &[u8]) -> Result<(), E> {
        // Strings and bytes are never packed, so they always come with a key.
        let Some((number, skip_default)) = self.tag else {
            return Err(decline());
        };
        if !(skip_default && bytes.is_empty()) {
            write_bytes_field(number, bytes, self.out);
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<(), E> {
        match self.scalar_kind()? {
            ScalarKind::Bool => self.write(Scalar::Bool(v), ScalarKind::Bool),
            _ => Err(decline()),
        }
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<(), E> {
        if let ValueKind::Enum(_) = self.kind {
            return self.write_enum(i32::try_from(v).map_err(|_| decline::<E>())?);
        }
        let kind = self.scalar_kind()?;
        self.write(Scalar::from_i64(kind, v)?, kind)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<(), E> {
        if let ValueKind::Enum(_) = self.kind {
            return self.write_enum(i32::try_from(v).map_err(|_| decline::<E>())?);
        }
        let kind = self.scalar_kind()?;
        self.write(Scalar::from_u64(kind, v)?, kind)
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<(), E> {
        let kind = self.scalar_kind()?;
        self.write(Scalar::from_f64(kind, v)?, kind)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<(), E> {
        match self.kind {
            ValueKind::Enum(names) => match names.get(v) {
                Some(&number) => self.write_enum(number),
                // prost-reflect drops an unknown name; the general path handles it.
                None => Err(decline()),
            },
            ValueKind::Scalar(ScalarKind::String) => self.write_len(v.as_bytes()),
            ValueKind::Scalar(ScalarKind::Bytes) => {
                let bytes = decode_base64(v).ok_or_else(decline::<E>)?;
                self.write_len(&bytes)
            }
            ValueKind::Scalar(kind) => {
                let kind = *kind;
                self.write(Scalar::from_text(kind, v)?, kind)
            }
            _ => Err(decline()),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let (ValueKind::Message(index), Some((number, _))) = (self.kind, self.tag) else {
            return Err(decline());
        };
        encode_key(number, WireType::LengthDelimited, self.out);
        let start = begin_len(self.out);
        MessageSeed {
            plans: self.plans,
            index: *index,
            out: &mut *self.out,
        }
        .visit_map(map)?;
        end_len(self.out, start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn seen_marks_each_index_once_below_and_above_64() {
        let mut seen = Seen::new(300);
        for index in [0, 63, 64, 127, 128, 299] {
            assert!(!seen.insert(index), "{index} is new");
            assert!(seen.insert(index), "{index} was marked");
        }
        assert!(!seen.insert(1));
    }
}
