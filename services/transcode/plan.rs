//! What the transcoder needs to know about a message type, computed once from its descriptor.
//!
//! A [`Plans`] holds one [`MessagePlan`] per message type reachable from a root type, indexed so
//! that recursive types refer to each other by position. Asking prost-reflect's descriptors the same
//! questions on every call is what made the dynamic path slow (each `kind()` clones the pool).

use std::collections::HashMap;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};

/// The index of a message type in its [`Plans`].
pub type MessageIndex = usize;

/// The encoding-relevant kind of a field or a map key/value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// `double`.
    Double,
    /// `float`.
    Float,
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `uint32`.
    Uint32,
    /// `uint64`.
    Uint64,
    /// `sint32`.
    Sint32,
    /// `sint64`.
    Sint64,
    /// `fixed32`.
    Fixed32,
    /// `fixed64`.
    Fixed64,
    /// `sfixed32`.
    Sfixed32,
    /// `sfixed64`.
    Sfixed64,
    /// `bool`.
    Bool,
    /// `string`.
    String,
    /// `bytes`.
    Bytes,
}

/// The kind of a value: a scalar, an enum (its names and numbers) or a message (its plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// A scalar.
    Scalar(ScalarKind),
    /// An enum: its values by name (any `int32` is accepted as a number, as in prost-reflect).
    Enum(HashMap<Box<str>, i32>),
    /// A message, by its index in the plans.
    Message(MessageIndex),
    /// A type the fast path leaves to the general one (well-known types, groups).
    Unsupported,
}

/// How many values a field holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// One value; `presence` when a default value is still written.
    Single {
        /// Whether the field tracks presence (proto3 `optional`, oneof members, proto2).
        presence: bool,
    },
    /// A list; `packed` for the packed encoding of scalars.
    Repeated {
        /// Whether the list is written packed.
        packed: bool,
    },
    /// A map with this key kind; the field's value kind is the map's value kind.
    Map {
        /// The key's kind (an integer kind, `bool` or `string`).
        key: ScalarKind,
    },
}

/// One field of a message.
#[derive(Debug, Clone)]
pub struct FieldPlan {
    /// The field number.
    pub number: u32,
    /// The kind of its values (the map's value kind for maps).
    pub kind: ValueKind,
    /// Single, repeated or map.
    pub shape: Shape,
    /// The oneof it belongs to, by position in the message.
    pub oneof: Option<usize>,
}

/// One message type: its fields and how JSON names them.
#[derive(Debug, Clone, Default)]
pub struct MessagePlan {
    /// The fields in declaration order.
    pub fields: Vec<FieldPlan>,
    /// JSON names and proto names to positions in `fields` (JSON names win a clash, as in
    /// prost-reflect).
    pub names: HashMap<Box<str>, usize>,
    /// The number of oneofs.
    pub oneofs: usize,
}

/// The plans of a root message type and every message type it contains.
#[derive(Debug, Clone)]
pub struct Plans {
    messages: Vec<MessagePlan>,
}

impl Plans {
    /// The plans for `root` (at index 0) and every message reachable from it.
    pub fn new(root: &MessageDescriptor) -> Self {
        let mut builder = Builder::default();
        builder.message(root);
        Self {
            messages: builder.messages,
        }
    }

    /// The plan of message `index`.
    pub fn message(&self, index: MessageIndex) -> &MessagePlan {
        &self.messages[index]
    }
}

#[derive(Default)]
struct Builder {
    messages: Vec<MessagePlan>,
    indices: HashMap<String, MessageIndex>,
}

impl Builder {
    fn message(&mut self, desc: &MessageDescriptor) -> MessageIndex {
        if let Some(&index) = self.indices.get(desc.full_name()) {
            return index;
        }
        let index = self.messages.len();
        self.indices.insert(desc.full_name().to_string(), index);
        self.messages.push(MessagePlan::default());
        let oneofs: Vec<String> = desc.oneofs().map(|o| o.full_name().to_string()).collect();
        let mut plan = MessagePlan {
            oneofs: oneofs.len(),
            ..MessagePlan::default()
        };
        for (position, field) in desc.fields().enumerate() {
            plan.names.insert(field.name().into(), position);
            let oneof = field
                .containing_oneof()
                .and_then(|o| oneofs.iter().position(|name| name == o.full_name()));
            plan.fields.push(self.field(&field, oneof));
        }
        // JSON names last, so that they win over a proto name spelled the same.
        for (position, field) in desc.fields().enumerate() {
            plan.names.insert(field.json_name().into(), position);
        }
        self.messages[index] = plan;
        index
    }

    fn field(&mut self, field: &FieldDescriptor, oneof: Option<usize>) -> FieldPlan {
        let kind = field.kind();
        if field.is_map() {
            let (key, value) = match kind.as_message() {
                Some(entry) => (
                    scalar(&entry.map_entry_key_field().kind()),
                    self.kind(&entry.map_entry_value_field()),
                ),
                None => (None, ValueKind::Unsupported),
            };
            return match key {
                Some(key) => FieldPlan {
                    number: field.number(),
                    kind: value,
                    shape: Shape::Map { key },
                    oneof,
                },
                None => unsupported(field, oneof),
            };
        }
        let shape = if field.cardinality() == Cardinality::Repeated {
            Shape::Repeated {
                packed: field.is_packed(),
            }
        } else {
            Shape::Single {
                presence: field.supports_presence(),
            }
        };
        FieldPlan {
            number: field.number(),
            kind: self.kind(field),
            shape,
            oneof,
        }
    }

    fn kind(&mut self, field: &FieldDescriptor) -> ValueKind {
        if field.is_group() {
            return ValueKind::Unsupported;
        }
        match field.kind() {
            Kind::Message(desc) if is_well_known(desc.full_name()) => ValueKind::Unsupported,
            Kind::Message(desc) => ValueKind::Message(self.message(&desc)),
            Kind::Enum(desc) if is_well_known(desc.full_name()) => ValueKind::Unsupported,
            Kind::Enum(desc) => ValueKind::Enum(
                desc.values()
                    .map(|v| (v.name().into(), v.number()))
                    .collect(),
            ),
            other => scalar(&other).map_or(ValueKind::Unsupported, ValueKind::Scalar),
        }
    }
}

/// Whether prost-reflect gives the type a JSON form of its own (it goes by the full name, as here,
/// so a type that merely lives in a package nested under `google` counts too).
pub fn is_well_known(full_name: &str) -> bool {
    full_name.starts_with("google.protobuf.")
}

fn unsupported(field: &FieldDescriptor, oneof: Option<usize>) -> FieldPlan {
    FieldPlan {
        number: field.number(),
        kind: ValueKind::Unsupported,
        shape: Shape::Single { presence: true },
        oneof,
    }
}

fn scalar(kind: &Kind) -> Option<ScalarKind> {
    Some(match kind {
        Kind::Double => ScalarKind::Double,
        Kind::Float => ScalarKind::Float,
        Kind::Int32 => ScalarKind::Int32,
        Kind::Int64 => ScalarKind::Int64,
        Kind::Uint32 => ScalarKind::Uint32,
        Kind::Uint64 => ScalarKind::Uint64,
        Kind::Sint32 => ScalarKind::Sint32,
        Kind::Sint64 => ScalarKind::Sint64,
        Kind::Fixed32 => ScalarKind::Fixed32,
        Kind::Fixed64 => ScalarKind::Fixed64,
        Kind::Sfixed32 => ScalarKind::Sfixed32,
        Kind::Sfixed64 => ScalarKind::Sfixed64,
        Kind::Bool => ScalarKind::Bool,
        Kind::String => ScalarKind::String,
        Kind::Bytes => ScalarKind::Bytes,
        Kind::Message(_) | Kind::Enum(_) => return None,
    })
}
