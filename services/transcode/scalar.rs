//! JSON numbers, strings and booleans as protobuf scalars, converted by exactly the rules
//! prost-reflect's deserializer applies (`prost_reflect::dynamic::serde::de::kind`), and written in
//! their wire encoding.

use std::str::FromStr;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{DecodeError, Engine as _};
use prost::encoding::{WireType, encode_key, encode_varint};
use serde::de::Error;

use super::plan::ScalarKind;

/// The fast path declines; the message is never shown to anyone.
pub fn decline<E: Error>() -> E {
    E::custom("")
}

/// Base64 as prost-reflect reads it: standard or URL-safe alphabet, padding optional.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    match STANDARD.decode(text) {
        Ok(bytes) => Some(bytes),
        Err(DecodeError::InvalidByte(_, b'-' | b'_')) => URL_SAFE.decode(text).ok(),
        Err(_) => None,
    }
}

/// A numeric or boolean value, converted from JSON by prost-reflect's rules.
#[derive(Debug, Clone, Copy)]
pub enum Scalar {
    /// `double`.
    F64(f64),
    /// `float`.
    F32(f32),
    /// `int32`, `sint32`, `sfixed32` and enums.
    I32(i32),
    /// `int64`, `sint64`, `sfixed64`.
    I64(i64),
    /// `uint32`, `fixed32`.
    U32(u32),
    /// `uint64`, `fixed64`.
    U64(u64),
    /// `bool`.
    Bool(bool),
}

impl Scalar {
    /// A JSON integer that fit an `i64`, as a value of `kind`.
    pub fn from_i64<E: Error>(kind: ScalarKind, v: i64) -> Result<Self, E> {
        Ok(match kind {
            ScalarKind::Double => Self::F64(v as f64),
            ScalarKind::Float => Self::F32(v as f32),
            ScalarKind::Int32 | ScalarKind::Sint32 | ScalarKind::Sfixed32 => {
                Self::I32(i32::try_from(v).map_err(|_| decline::<E>())?)
            }
            ScalarKind::Int64 | ScalarKind::Sint64 | ScalarKind::Sfixed64 => Self::I64(v),
            ScalarKind::Uint32 | ScalarKind::Fixed32 => {
                Self::U32(u32::try_from(v).map_err(|_| decline::<E>())?)
            }
            ScalarKind::Uint64 | ScalarKind::Fixed64 => {
                Self::U64(u64::try_from(v).map_err(|_| decline::<E>())?)
            }
            _ => return Err(decline()),
        })
    }

    /// A JSON integer above `i64::MAX`, as a value of `kind`.
    pub fn from_u64<E: Error>(kind: ScalarKind, v: u64) -> Result<Self, E> {
        Ok(match kind {
            ScalarKind::Double => Self::F64(v as f64),
            ScalarKind::Float => Self::F32(v as f32),
            ScalarKind::Int32 | ScalarKind::Sint32 | ScalarKind::Sfixed32 => {
                Self::I32(i32::try_from(v).map_err(|_| decline::<E>())?)
            }
            ScalarKind::Int64 | ScalarKind::Sint64 | ScalarKind::Sfixed64 => {
                Self::I64(i64::try_from(v).map_err(|_| decline::<E>())?)
            }
            ScalarKind::Uint32 | ScalarKind::Fixed32 => {
                Self::U32(u32::try_from(v).map_err(|_| decline::<E>())?)
            }
            ScalarKind::Uint64 | ScalarKind::Fixed64 => Self::U64(v),
            _ => return Err(decline()),
        })
    }

    /// A JSON number with a fraction or exponent, as a value of `kind`.
    pub fn from_f64<E: Error>(kind: ScalarKind, v: f64) -> Result<Self, E> {
        let integral = |min: f64, max: f64| {
            if v.fract() != 0.0 || v < min || v > max {
                Err(decline::<E>())
            } else {
                Ok(v)
            }
        };
        Ok(match kind {
            ScalarKind::Double => Self::F64(v),
            ScalarKind::Float => {
                if v < f64::from(f32::MIN) || v > f64::from(f32::MAX) {
                    return Err(decline());
                }
                Self::F32(v as f32)
            }
            ScalarKind::Int32 | ScalarKind::Sint32 | ScalarKind::Sfixed32 => {
                Self::I32(integral(f64::from(i32::MIN), f64::from(i32::MAX))? as i32)
            }
            ScalarKind::Int64 | ScalarKind::Sint64 | ScalarKind::Sfixed64 => {
                Self::I64(integral(i64::MIN as f64, i64::MAX as f64)? as i64)
            }
            ScalarKind::Uint32 | ScalarKind::Fixed32 => {
                Self::U32(integral(0.0, f64::from(u32::MAX))? as u32)
            }
            ScalarKind::Uint64 | ScalarKind::Fixed64 => {
                Self::U64(integral(0.0, u64::MAX as f64)? as u64)
            }
            _ => return Err(decline()),
        })
    }

    /// A JSON string, as a value of a numeric `kind` (decimal text, `NaN`, `Infinity`).
    pub fn from_text<E: Error>(kind: ScalarKind, v: &str) -> Result<Self, E> {
        let no = |_| decline::<E>();
        Ok(match kind {
            ScalarKind::Double => Self::F64(match v {
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                _ => f64::from_str(v).map_err(|_| decline::<E>())?,
            }),
            ScalarKind::Float => Self::F32(match v {
                "Infinity" => f32::INFINITY,
                "-Infinity" => f32::NEG_INFINITY,
                "NaN" => f32::NAN,
                _ => f32::from_str(v).map_err(|_| decline::<E>())?,
            }),
            ScalarKind::Int32 | ScalarKind::Sint32 | ScalarKind::Sfixed32 => {
                Self::I32(v.parse().map_err(no)?)
            }
            ScalarKind::Int64 | ScalarKind::Sint64 | ScalarKind::Sfixed64 => {
                Self::I64(v.parse().map_err(no)?)
            }
            ScalarKind::Uint32 | ScalarKind::Fixed32 => Self::U32(v.parse().map_err(no)?),
            ScalarKind::Uint64 | ScalarKind::Fixed64 => Self::U64(v.parse().map_err(no)?),
            _ => return Err(decline()),
        })
    }

    fn is_default(self) -> bool {
        match self {
            Self::F64(v) => v == 0.0,
            Self::F32(v) => v == 0.0,
            Self::I32(v) => v == 0,
            Self::I64(v) => v == 0,
            Self::U32(v) => v == 0,
            Self::U64(v) => v == 0,
            Self::Bool(v) => !v,
        }
    }

    /// Writes the value in `kind`'s encoding, with its key when `tag` is given.
    pub fn write(self, kind: ScalarKind, tag: Option<(u32, bool)>, out: &mut Vec<u8>) {
        let wire = match kind {
            ScalarKind::Fixed32 | ScalarKind::Sfixed32 | ScalarKind::Float => {
                WireType::ThirtyTwoBit
            }
            ScalarKind::Fixed64 | ScalarKind::Sfixed64 | ScalarKind::Double => {
                WireType::SixtyFourBit
            }
            _ => WireType::Varint,
        };
        if let Some((number, skip_default)) = tag {
            if skip_default && self.is_default() {
                return;
            }
            encode_key(number, wire, out);
        }
        match (kind, self) {
            (ScalarKind::Sint32, Self::I32(v)) => {
                encode_varint(u64::from(((v << 1) ^ (v >> 31)) as u32), out);
            }
            (ScalarKind::Sint64, Self::I64(v)) => {
                encode_varint(((v << 1) ^ (v >> 63)) as u64, out);
            }
            (ScalarKind::Sfixed32, Self::I32(v)) => out.extend_from_slice(&v.to_le_bytes()),
            (ScalarKind::Fixed32, Self::U32(v)) => out.extend_from_slice(&v.to_le_bytes()),
            (ScalarKind::Sfixed64, Self::I64(v)) => out.extend_from_slice(&v.to_le_bytes()),
            (ScalarKind::Fixed64, Self::U64(v)) => out.extend_from_slice(&v.to_le_bytes()),
            (_, Self::F32(v)) => out.extend_from_slice(&v.to_le_bytes()),
            (_, Self::F64(v)) => out.extend_from_slice(&v.to_le_bytes()),
            // int32 and enums are sign-extended to 64 bits.
            (_, Self::I32(v)) => encode_varint(i64::from(v) as u64, out),
            (_, Self::I64(v)) => encode_varint(v as u64, out),
            (_, Self::U32(v)) => encode_varint(u64::from(v), out),
            (_, Self::U64(v)) => encode_varint(v, out),
            (_, Self::Bool(v)) => encode_varint(u64::from(v), out),
        }
    }
}
