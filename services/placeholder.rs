//! argv templates: `{field.path}` placeholders filled from request fields.
//!
//! A template always renders to exactly **one** argument, whatever the field holds: the value is
//! copied verbatim (no shell, no splitting, no globbing). `{{` and `}}` are literal braces.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

/// One argument with its placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Vec<String>),
}

/// A template that cannot be parsed or bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`, or a stray `}`.
    #[error("unbalanced brace in {0:?}; write {{{{ or }}}} for a literal brace")]
    Unbalanced(String),
    /// `{}` or a path with an empty segment.
    #[error("empty placeholder or path segment in {0:?}")]
    Empty(String),
    /// The path names no field.
    #[error("placeholder {{{path}}} names no field of {message} (fields: {fields})")]
    NoSuchField {
        /// The placeholder's path.
        path: String,
        /// The message searched.
        message: String,
        /// Its fields.
        fields: String,
    },
    /// The field is not a single scalar value.
    #[error(
        "placeholder {{{path}}} must name a scalar field (string, number, bool or enum), not {what}"
    )]
    NotScalar {
        /// The placeholder's path.
        path: String,
        /// What the field is.
        what: String,
    },
}

/// A request value that cannot become an argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentError {
    /// The value holds a NUL byte, which no argument can carry.
    #[error("field {path} contains a NUL byte, which cannot be passed as a program argument")]
    Nul {
        /// The placeholder's path.
        path: String,
    },
    /// The value would start an argument with `-`, so the program would read it as an option.
    #[error(
        "field {path} starts with '-' and would be read as an option by the program; \
         the manifest must put \"--\" before it or set allow_option_values = true"
    )]
    LooksLikeOption {
        /// The placeholder's path.
        path: String,
    },
}

/// Renders a whole argv from a request (`None`: a streaming request, literals only).
///
/// An argument that *starts* with a placeholder and renders to a value starting with `-` is refused
/// (option injection: `{name}` = `--exec=...`), unless an argument `--` comes before it or
/// `allow_option_values` is set. A placeholder after a literal prefix (`--id={id}`) is always safe.
pub fn render_argv(
    templates: &[ArgTemplate],
    request: Option<&DynamicMessage>,
    allow_option_values: bool,
) -> Result<Vec<String>, ArgumentError> {
    let mut options_ended = allow_option_values;
    let mut argv = Vec::with_capacity(templates.len());
    for template in templates {
        let Some(request) = request else {
            argv.push(template.literal());
            continue;
        };
        let arg = template.render(request)?;
        if !options_ended
            && arg.starts_with('-')
            && let Some(Part::Field(path)) = template.parts.first()
        {
            return Err(ArgumentError::LooksLikeOption {
                path: path.join("."),
            });
        }
        options_ended |= template.parts == [Part::Text("--".to_string())];
        argv.push(arg);
    }
    Ok(argv)
}

impl ArgTemplate {
    /// Parses one argument.
    pub fn parse(text: &str) -> Result<ArgTemplate, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(TemplateError::Unbalanced(text.to_string()));
                            }
                            Some(c) => name.push(c),
                        }
                    }
                    let path: Vec<String> = name.trim().split('.').map(str::to_string).collect();
                    if path.iter().any(String::is_empty) {
                        return Err(TemplateError::Empty(text.to_string()));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(path));
                }
                '}' => return Err(TemplateError::Unbalanced(text.to_string())),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() || parts.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(ArgTemplate { parts })
    }

    /// The placeholder paths, dotted.
    pub fn placeholders(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(path) => Some(path.join(".")),
            Part::Text(_) => None,
        })
    }

    /// Checks that every placeholder names a scalar field of `input`.
    pub fn check(&self, input: &MessageDescriptor) -> Result<(), TemplateError> {
        for part in &self.parts {
            if let Part::Field(path) = part {
                resolve(input, path)?;
            }
        }
        Ok(())
    }

    /// The argument's literal text, placeholders left out.
    pub fn literal(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(text) => Some(text.as_str()),
                Part::Field(_) => None,
            })
            .collect()
    }

    /// Renders the argument from a request. Unset fields give their default value.
    pub fn render(&self, request: &DynamicMessage) -> Result<String, ArgumentError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(path) => {
                    let value = lookup(request, path);
                    if value.contains('\0') {
                        return Err(ArgumentError::Nul {
                            path: path.join("."),
                        });
                    }
                    out.push_str(&value);
                }
            }
        }
        Ok(out)
    }
}

fn resolve(message: &MessageDescriptor, path: &[String]) -> Result<FieldDescriptor, TemplateError> {
    let dotted = path.join(".");
    let mut current = message.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| TemplateError::NoSuchField {
                path: dotted.clone(),
                message: current.full_name().to_string(),
                fields: current
                    .fields()
                    .map(|f| f.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let last = i + 1 == path.len();
        let not_scalar = |what: &str| TemplateError::NotScalar {
            path: dotted.clone(),
            what: what.to_string(),
        };
        if field.is_list() {
            return Err(not_scalar("a repeated field"));
        }
        if field.is_map() {
            return Err(not_scalar("a map"));
        }
        match field.kind() {
            Kind::Message(inner) if !last => current = inner,
            Kind::Message(inner) => {
                return Err(not_scalar(&format!("message {}", inner.full_name())));
            }
            Kind::Bytes => return Err(not_scalar("bytes")),
            _ if !last => {
                return Err(not_scalar(&format!(
                    "a scalar with a sub-path .{}",
                    path[i + 1]
                )));
            }
            _ => return Ok(field),
        }
    }
    Err(TemplateError::Empty(dotted))
}

/// The text of a (checked) field path; a path that no longer resolves renders as empty.
fn lookup(message: &DynamicMessage, path: &[String]) -> String {
    let Some((name, rest)) = path.split_first() else {
        return String::new();
    };
    let desc = message.descriptor();
    let Some(field) = desc
        .get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
    else {
        return String::new();
    };
    let value = message.get_field(&field);
    if rest.is_empty() {
        return scalar_text(&field, &value);
    }
    match value.as_ref() {
        Value::Message(inner) => lookup(inner, rest),
        _ => String::new(),
    }
}

fn scalar_text(field: &FieldDescriptor, value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        // The largest float's shortest text lies above its range as a double (services/json.rs).
        Value::F32(n) if n.abs() == f32::MAX => crate::services::json::FLOAT_MAX_READABLE
            .copysign(f64::from(*n))
            .to_string(),
        Value::F32(n) => n.to_string(),
        Value::F64(n) => n.to_string(),
        Value::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => e
                .get_value(*n)
                .map_or_else(|| n.to_string(), |v| v.name().to_string()),
            _ => n.to_string(),
        },
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_placeholders_and_escapes() {
        let t = ArgTemplate::parse("--id={id}").expect("valid");
        assert_eq!(
            t.parts,
            vec![Part::Text("--id=".into()), Part::Field(vec!["id".into()])]
        );
        let t = ArgTemplate::parse("{{literal}}").expect("valid");
        assert_eq!(t.parts, vec![Part::Text("{literal}".into())]);
        let t = ArgTemplate::parse("{a.b}").expect("valid");
        assert_eq!(
            t.placeholders().collect::<Vec<_>>(),
            vec!["a.b".to_string()]
        );
        assert_eq!(
            ArgTemplate::parse("").expect("valid").parts,
            vec![Part::Text(String::new())]
        );
    }

    #[test]
    fn the_largest_float_is_an_argument_a_double_reader_takes_back() {
        let desc = crate::services::transcode::tests::everything();
        let field = desc.get_field_by_name("ratio").expect("a float field");
        for value in [f32::MAX, -f32::MAX] {
            let text = scalar_text(&field, &Value::F32(value));
            let read: f64 = text.parse().expect("a number");
            assert!(read.abs() <= f64::from(f32::MAX), "{text}");
            assert_eq!(read as f32, value, "{text}");
        }
        assert_eq!(scalar_text(&field, &Value::F32(1.5)), "1.5");
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in ["{", "}", "{a", "a}", "{}", "{a..b}", "{a{b}}"] {
            assert!(ArgTemplate::parse(bad).is_err(), "{bad:?}");
        }
    }
}
