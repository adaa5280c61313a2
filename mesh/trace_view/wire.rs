//! Reading protobuf messages field by field, borrowing from the bytes: how the receiver walks an
//! OTLP export without decoding (and allocating) what it does not keep.

use prost::encoding::{WireType, decode_key, decode_varint};

/// Why bytes are not a protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// One field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// A varint (integers, booleans, enums).
    Varint(u64),
    /// 8 bytes (fixed64, sfixed64, double).
    Fixed64(u64),
    /// 4 bytes (fixed32, sfixed32, float).
    Fixed32(u32),
    /// Length-delimited (strings, bytes, embedded messages, packed lists).
    Bytes(&'a [u8]),
    /// A group (proto2's deprecated nesting), skipped whole.
    Group,
}

/// How deep groups may nest (prost's recursion limit).
const MAX_DEPTH: u32 = 100;

/// The fields of an encoded message in order, as (field number, value); stops at the first error.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// The fields of `message`.
    pub fn new(message: &'a [u8]) -> Self {
        Fields { rest: message }
    }

    #[inline]
    fn read(&mut self) -> Result<(u32, Field<'a>), Malformed> {
        self.read_at(0)
    }

    /// Reads one field, `depth` groups deep. Inlined where fields are read (groups, which need
    /// recursion, are skipped out of line): called for every field of every span received.
    #[inline]
    fn read_at(&mut self, depth: u32) -> Result<(u32, Field<'a>), Malformed> {
        let (tag, wire_type) =
            decode_key(&mut self.rest).map_err(|_| Malformed("a field key is not valid"))?;
        let truncated = Malformed("a field is cut short");
        let field = match wire_type {
            WireType::Varint => {
                Field::Varint(decode_varint(&mut self.rest).map_err(|_| truncated)?)
            }
            WireType::SixtyFourBit => {
                let (value, rest) = self.rest.split_first_chunk::<8>().ok_or(truncated)?;
                self.rest = rest;
                Field::Fixed64(u64::from_le_bytes(*value))
            }
            WireType::ThirtyTwoBit => {
                let (value, rest) = self.rest.split_first_chunk::<4>().ok_or(truncated)?;
                self.rest = rest;
                Field::Fixed32(u32::from_le_bytes(*value))
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut self.rest).map_err(|_| truncated.clone())?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= self.rest.len())
                    .ok_or(truncated)?;
                let (value, rest) = self.rest.split_at(len);
                self.rest = rest;
                Field::Bytes(value)
            }
            WireType::StartGroup => {
                self.skip_group(tag, depth)?;
                Field::Group
            }
            WireType::EndGroup => return Err(Malformed("a group ends that never started")),
        };
        Ok((tag, field))
    }

    /// The usual field, read inline: a one-byte key (numbers 1 to 15) with a one-byte varint, a
    /// fixed-size value, or a one-byte length and what it covers. `None` for anything else (and at
    /// the end), which [`Fields::read`] then reads, or refuses, as it always does.
    #[inline(always)]
    fn read_short(&mut self) -> Option<(u32, Field<'a>)> {
        let (&key, rest) = self.rest.split_first()?;
        let tag = u32::from(key >> 3);
        if key >= 0x80 || tag == 0 {
            return None;
        }
        let (field, rest) = match key & 7 {
            0 => match rest.split_first() {
                Some((&value, rest)) if value < 0x80 => (Field::Varint(u64::from(value)), rest),
                _ => return None,
            },
            1 => {
                let (value, rest) = rest.split_first_chunk::<8>()?;
                (Field::Fixed64(u64::from_le_bytes(*value)), rest)
            }
            2 => match rest.split_first() {
                Some((&len, rest)) if len < 0x80 && usize::from(len) <= rest.len() => {
                    let (value, rest) = rest.split_at(usize::from(len));
                    (Field::Bytes(value), rest)
                }
                _ => return None,
            },
            5 => {
                let (value, rest) = rest.split_first_chunk::<4>()?;
                (Field::Fixed32(u32::from_le_bytes(*value)), rest)
            }
            _ => return None,
        };
        self.rest = rest;
        Some((tag, field))
    }

    /// Skips a group whose start key (number `tag`) was just read, `depth` groups deep: whole, as
    /// decoders skip unknown fields, up to the end key with the same number.
    #[cold]
    #[inline(never)]
    fn skip_group(&mut self, tag: u32, depth: u32) -> Result<(), Malformed> {
        if depth >= MAX_DEPTH {
            return Err(Malformed("groups nest too deep"));
        }
        loop {
            let mut peek = self.rest;
            let (inner, inner_type) =
                decode_key(&mut peek).map_err(|_| Malformed("a group has no end"))?;
            if inner_type == WireType::EndGroup {
                if inner != tag {
                    return Err(Malformed("a group ends with another number"));
                }
                self.rest = peek;
                return Ok(());
            }
            self.read_at(depth + 1)?;
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Field<'a>), Malformed>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(field) = self.read_short() {
            return Some(Ok(field));
        }
        if self.rest.is_empty() {
            return None;
        }
        let field = self.read();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

/// The embedded messages (or strings, bytes) in field `tag` of `message`, in order; any other
/// field is skipped. A field `tag` that is not length-delimited is an error.
pub fn repeated(message: &[u8], tag: u32) -> impl Iterator<Item = Result<&[u8], Malformed>> + '_ {
    Fields::new(message).filter_map(move |field| match field {
        Ok((t, Field::Bytes(value))) if t == tag => Some(Ok(value)),
        Ok((t, _)) if t == tag => Some(Err(Malformed("a field has the wrong wire type"))),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// A message with one field of each wire type, written by prost.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Sample {
        #[prost(uint64, tag = "1")]
        varint: u64,
        #[prost(fixed64, tag = "2")]
        fixed64: u64,
        #[prost(fixed32, tag = "3")]
        fixed32: u32,
        #[prost(bytes = "vec", repeated, tag = "20")]
        items: Vec<Vec<u8>>,
    }

    /// The fields of `input` read by the general reader alone (no short path).
    fn read_generally(input: &[u8]) -> Vec<Result<(u32, Field<'_>), Malformed>> {
        let mut fields = Fields::new(input);
        let mut out = Vec::new();
        while !fields.rest.is_empty() {
            let field = fields.read();
            let failed = field.is_err();
            out.push(field);
            if failed {
                break;
            }
        }
        out
    }

    #[test]
    fn the_short_path_reads_what_the_general_reader_reads() {
        let mut inputs: Vec<Vec<u8>> = (0..=u16::MAX).map(|n| n.to_le_bytes().to_vec()).collect();
        for key in [
            0x08u8, 0x0a, 0x7a, 0x78, 0x09, 0x0d, 0x0b, 0x0c, 0x0e, 0x0f, 0x80,
        ] {
            for second in 0..=u8::MAX {
                inputs.push(vec![key, second, 0x7f]);
                inputs.push(vec![key, second, 1, 2, 3]);
            }
            for len in 0..12 {
                inputs.push(std::iter::once(key).chain(1..=len).collect());
            }
        }
        for input in &inputs {
            let short: Vec<_> = Fields::new(input).collect();
            assert_eq!(short, read_generally(input), "{input:?}");
        }
    }

    #[test]
    fn fields_read_back_what_prost_wrote() {
        let sample = Sample {
            varint: 300,
            fixed64: u64::MAX - 1,
            fixed32: 7,
            items: vec![b"one".to_vec(), Vec::new(), vec![9; 200]],
        };
        let encoded = sample.encode_to_vec();
        let fields: Vec<_> = Fields::new(&encoded).collect::<Result<_, _>>().expect("ok");
        assert_eq!(
            fields,
            [
                (1, Field::Varint(300)),
                (2, Field::Fixed64(u64::MAX - 1)),
                (3, Field::Fixed32(7)),
                (20, Field::Bytes(b"one")),
                (20, Field::Bytes(b"")),
                (20, Field::Bytes(&[9; 200])),
            ]
        );
        let items: Vec<&[u8]> = repeated(&encoded, 20)
            .collect::<Result<_, _>>()
            .expect("ok");
        assert_eq!(items, [&b"one"[..], b"", &[9; 200]]);
    }

    #[test]
    fn cut_or_wrong_bytes_are_errors_and_end_the_fields() {
        let encoded = Sample {
            varint: 1,
            items: vec![vec![1; 10]],
            ..Sample::default()
        }
        .encode_to_vec();
        // Cut inside the last field's bytes: the first field reads, then the error, then nothing.
        let cut = &encoded[..encoded.len() - 1];
        let fields: Vec<_> = Fields::new(cut).collect();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0], Ok((1, Field::Varint(1))));
        assert_eq!(fields[1], Err(Malformed("a field is cut short")));
        // A length longer than what follows.
        assert!(Fields::new(&[0x0a, 100, 1, 2]).any(|f| f.is_err()));
        // A varint field where embedded messages are expected.
        assert_eq!(
            repeated(&encoded, 1).next(),
            Some(Err(Malformed("a field has the wrong wire type")))
        );
        // A group without its end, one ending with another number, an end alone.
        assert!(Fields::new(&[0x0b]).any(|f| f.is_err()));
        assert!(Fields::new(&[0x0b, 0x14]).any(|f| f.is_err()));
        assert!(Fields::new(&[0x0c]).any(|f| f.is_err()));
        // A group (field 1) holding a varint and a nested group (field 2), skipped whole.
        let group = [0x0b, 0x08, 0x05, 0x13, 0x14, 0x0c, 0x18, 0x07];
        let fields: Vec<_> = Fields::new(&group).collect();
        assert_eq!(fields, [Ok((1, Field::Group)), Ok((3, Field::Varint(7)))]);
        // Field number 0.
        assert!(Fields::new(&[0x00, 0x01]).any(|f| f.is_err()));
    }
}
