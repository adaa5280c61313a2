//! Binding a manifest to its contract: every method of the service is mapped, every mapping names a
//! method, placeholders name scalar fields of the request and text output names a string field.

use prost_reflect::{Kind, MethodDescriptor};

use super::contract::Contract;
use super::manifest::{Execution, Manifest, ManifestError, ManifestIssue, MethodSpec, Output};
use super::rpc_kind::RpcKind;

/// A manifest method together with its descriptor.
#[derive(Debug, Clone)]
pub struct BoundMethod {
    /// The method in the contract.
    pub desc: MethodDescriptor,
    /// Its RPC kind.
    pub kind: RpcKind,
    /// How it runs.
    pub spec: MethodSpec,
}

/// Checks `manifest` against `contract`; returns the methods or every problem found.
pub fn bind(manifest: &Manifest, contract: &Contract) -> Result<Vec<BoundMethod>, ManifestError> {
    let mut issues = Vec::new();
    let mut issue = |key: String, message: String| {
        issues.push(ManifestIssue {
            file: manifest.file.clone(),
            key,
            message,
        })
    };
    let mut bound = Vec::new();
    for desc in contract.service.methods() {
        if !manifest.methods.contains_key(desc.name()) {
            issue(
                format!("methods.{}", desc.name()),
                format!(
                    "{}/{} has no mapping; add a [methods.{}] table (exemesh init writes one)",
                    contract.service.full_name(),
                    desc.name(),
                    desc.name()
                ),
            );
        }
    }
    for (name, spec) in &manifest.methods {
        let key = format!("methods.{name}");
        let Some(desc) = contract.service.methods().find(|m| m.name() == name) else {
            let known: Vec<String> = contract
                .service
                .methods()
                .map(|m| m.name().to_string())
                .collect();
            issue(
                key,
                format!(
                    "{} has no method {name} (methods: {})",
                    contract.service.full_name(),
                    known.join(", ")
                ),
            );
            continue;
        };
        let kind = RpcKind::of(&desc);
        if let Execution::Spawn(spawn) = &spec.execution {
            for (i, arg) in spawn.args.iter().enumerate() {
                if arg.placeholders().next().is_none() {
                    continue;
                }
                if !kind.single_request() {
                    issue(
                        format!("{key}.argv[{}]", i + 1),
                        format!("placeholders need a single request message, but {name} is {kind}"),
                    );
                } else if let Err(e) = arg.check(&desc.input()) {
                    issue(format!("{key}.argv[{}]", i + 1), e.to_string());
                }
            }
            if let Output::Text { field } = &spawn.output {
                let out = desc.output();
                match out.get_field_by_name(field) {
                    Some(f) if f.kind() == Kind::String && !f.is_list() => {}
                    Some(_) => issue(
                        format!("{key}.text_field"),
                        format!(
                            "{field} of {} is not a singular string field",
                            out.full_name()
                        ),
                    ),
                    None => issue(
                        format!("{key}.text_field"),
                        format!(
                            "{} has no field {field} (fields: {})",
                            out.full_name(),
                            out.fields()
                                .map(|f| f.name().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                }
            }
        }
        bound.push(BoundMethod {
            desc,
            kind,
            spec: spec.clone(),
        });
    }
    if issues.is_empty() {
        Ok(bound)
    } else {
        Err(ManifestError(issues))
    }
}
