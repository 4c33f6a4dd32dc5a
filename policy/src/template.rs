//! `{{ attribute }}` templates used in SPIFFE ID paths, hints, SANs, subject
//! fields and JWT claims.
//!
//! A template is literal text with attribute references in double braces;
//! whitespace inside the braces is ignored (`{{workload.unix.uid}}` and
//! `{{ workload.unix.uid }}` are the same). There are no functions or
//! expressions: a reference names exactly one attribute from
//! [`crate::attributes`]. A lone `{` or `}` is literal text; `}}` outside a
//! reference is an error, since it is almost always a typo.
//!
//! Templates are parsed once when policy is compiled. Rendering never invents
//! a value: an attribute the workload lacks, or has with an empty value, makes
//! rendering fail, and the identity does not apply to that workload.

use std::fmt;

use crate::attributes::{AttributeError, AttributeName, Attributes};

/// A syntax error in a template. Offsets are byte offsets into the template text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("unterminated \"{{{{\" at offset {offset}")]
    Unterminated {
        /// Offset of the `{{`.
        offset: usize,
    },
    /// `}}` outside a reference.
    #[error("unexpected \"}}}}\" at offset {offset} (no matching \"{{{{\")")]
    UnexpectedClose {
        /// Offset of the `}}`.
        offset: usize,
    },
    /// `{{ }}` with nothing inside.
    #[error("empty \"{{{{ }}}}\" at offset {offset}")]
    Empty {
        /// Offset of the `{{`.
        offset: usize,
    },
    /// Something other than a single attribute name inside the braces.
    #[error(
        "expected an attribute name at offset {offset}, found {text:?} (functions and expressions are not supported)"
    )]
    NotAnAttribute {
        /// Offset of the text.
        offset: usize,
        /// The text inside the braces, trimmed.
        text: String,
    },
    /// A well-formed name that is not in the attribute schema.
    #[error("{source} at offset {offset}")]
    UnknownAttribute {
        /// Offset of the name.
        offset: usize,
        /// Why the name was refused.
        source: AttributeError,
    },
}

/// Why a template could not be rendered for a workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The workload lacks a referenced attribute.
    #[error("workload has no attribute {0}")]
    Missing(AttributeName),
    /// The workload has the attribute, but its value is empty; templates never
    /// render empty values.
    #[error("attribute {0} is empty")]
    Empty(AttributeName),
    /// The value is not acceptable in this position (see [`Template::render_with`]).
    #[error("value {value:?} of attribute {name} {reason}")]
    Rejected {
        /// The attribute.
        name: AttributeName,
        /// Its value.
        value: String,
        /// Why it was refused, phrased to follow the value ("contains '/'").
        reason: String,
    },
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is. Never contains `{{` or `}}`.
    Literal(String),
    /// A reference replaced by the attribute's value.
    Attribute(AttributeName),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses template text.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let open = rest.find("{{");
            let close = rest.find("}}");
            if let Some(c) = close
                && open.is_none_or(|o| c < o)
            {
                return Err(TemplateError::UnexpectedClose { offset: pos + c });
            }
            let Some(o) = open else {
                push_literal(&mut parts, rest);
                break;
            };
            push_literal(&mut parts, &rest[..o]);
            let open_at = pos + o;
            let inner_start = open_at + 2;
            let Some(len) = text[inner_start..].find("}}") else {
                return Err(TemplateError::Unterminated { offset: open_at });
            };
            let inner = &text[inner_start..inner_start + len];
            let name = inner.trim();
            if name.is_empty() {
                return Err(TemplateError::Empty { offset: open_at });
            }
            let name_at = inner_start + (inner.len() - inner.trim_start().len());
            if name
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}' || c == '(' || c == '"')
            {
                return Err(TemplateError::NotAnAttribute {
                    offset: name_at,
                    text: name.to_owned(),
                });
            }
            let attr =
                AttributeName::parse(name).map_err(|source| TemplateError::UnknownAttribute {
                    offset: name_at,
                    source,
                })?;
            parts.push(Part::Attribute(attr));
            pos = inner_start + len + 2;
        }
        Ok(Template { parts })
    }

    /// The parsed pieces, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The attributes referenced, in order of appearance (with repeats).
    pub fn attributes(&self) -> impl Iterator<Item = &AttributeName> {
        self.parts.iter().filter_map(|p| match p {
            Part::Attribute(a) => Some(a),
            Part::Literal(_) => None,
        })
    }

    /// Whether the template references no attribute.
    pub fn is_literal(&self) -> bool {
        self.attributes().next().is_none()
    }

    /// Renders with the workload's attributes. Fails on any missing or empty attribute.
    pub fn render(&self, attrs: &Attributes) -> Result<String, RenderError> {
        self.render_with(attrs, |_| Ok(()))
    }

    /// Renders like [`Template::render`], additionally passing each attribute
    /// value through `check`, whose `Err(reason)` refuses the value (for
    /// example a `/` inside a SPIFFE ID path segment).
    pub fn render_with(
        &self,
        attrs: &Attributes,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Attribute(name) => {
                    let value = attrs
                        .get(name)
                        .ok_or_else(|| RenderError::Missing(name.clone()))?;
                    if value.is_empty() {
                        return Err(RenderError::Empty(name.clone()));
                    }
                    check(value).map_err(|reason| RenderError::Rejected {
                        name: name.clone(),
                        value: value.to_owned(),
                        reason,
                    })?;
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }

    /// Renders with every reference replaced by `placeholder`, used at compile
    /// time to find structural mistakes in the literal parts.
    pub fn render_placeholder(&self, placeholder: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Attribute(_) => out.push_str(placeholder),
            }
        }
        out
    }
}

fn push_literal(parts: &mut Vec<Part>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Part::Literal(prev)) = parts.last_mut() {
        prev.push_str(text);
    } else {
        parts.push(Part::Literal(text.to_owned()));
    }
}

/// The canonical text form, with references written `{{ name }}`; parsing it
/// gives back an equal template.
impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(l) => f.write_str(l)?,
                Part::Attribute(a) => write!(f, "{{{{ {a} }}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::{Field, LabelMap};
    use proptest::prelude::*;

    fn attrs() -> Attributes {
        let mut a = Attributes::new();
        a.set(Field::KubernetesNamespace, "payments");
        a.set(Field::KubernetesServiceAccount, "processor");
        a.set(Field::KubernetesPodName, "");
        a.set_labels(LabelMap::KubernetesLabels, [("app", "ledger")])
            .unwrap();
        a
    }

    #[test]
    fn parses_and_renders_with_or_without_spaces() {
        let t = Template::parse(
            "/ns/{{ workload.kubernetes.namespace }}/sa/{{workload.kubernetes.service_account}}",
        )
        .unwrap();
        assert_eq!(t.render(&attrs()).unwrap(), "/ns/payments/sa/processor");
        let t = Template::parse("{{\tworkload.kubernetes.labels.app\n}}.svc").unwrap();
        assert_eq!(t.render(&attrs()).unwrap(), "ledger.svc");
        assert!(!t.is_literal());
        assert!(Template::parse("plain").unwrap().is_literal());
        assert_eq!(Template::parse("").unwrap().parts(), &[]);
    }

    #[test]
    fn single_braces_are_literal() {
        let t = Template::parse("a{b}c{ {{ agent.name }}}").unwrap();
        let mut a = Attributes::new();
        a.set(Field::AgentName, "n");
        assert_eq!(t.render(&a).unwrap(), "a{b}c{ n}");
    }

    #[test]
    fn syntax_errors_carry_offsets() {
        assert_eq!(
            Template::parse("abc.de {{ workload.unix.uid").unwrap_err(),
            TemplateError::Unterminated { offset: 7 }
        );
        assert_eq!(
            Template::parse("abc.de {{ workload.unix.uid")
                .unwrap_err()
                .to_string(),
            "unterminated \"{{\" at offset 7"
        );
        assert_eq!(
            Template::parse("x }} y").unwrap_err(),
            TemplateError::UnexpectedClose { offset: 2 }
        );
        assert_eq!(
            Template::parse("a{{  }}").unwrap_err(),
            TemplateError::Empty { offset: 1 }
        );
        assert_eq!(
            Template::parse("{{ strings.upper(agent.name) }}").unwrap_err(),
            TemplateError::NotAnAttribute {
                offset: 3,
                text: "strings.upper(agent.name)".into()
            }
        );
        assert!(matches!(
            Template::parse("{{ a b }}").unwrap_err(),
            TemplateError::NotAnAttribute { .. }
        ));
        assert!(matches!(
            Template::parse("{{{ agent.name }}").unwrap_err(),
            TemplateError::NotAnAttribute { offset: 2, .. }
        ));
        let err = Template::parse("/x/{{ workload.kubernets.namespace }}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown attribute \"workload.kubernets.namespace\" at offset 6"
        );
    }

    #[test]
    fn missing_or_empty_attributes_never_render() {
        let t = Template::parse("{{ workload.unix.uid }}").unwrap();
        assert_eq!(
            t.render(&attrs()),
            Err(RenderError::Missing(Field::UnixUid.into()))
        );
        let t = Template::parse("{{ workload.kubernetes.pod_name }}.svc").unwrap();
        assert_eq!(
            t.render(&attrs()),
            Err(RenderError::Empty(Field::KubernetesPodName.into()))
        );
    }

    #[test]
    fn checks_can_refuse_values() {
        let t = Template::parse("/{{ workload.kubernetes.namespace }}").unwrap();
        let err = t
            .render_with(&attrs(), |v| {
                if v.starts_with('p') {
                    Err("starts with p".into())
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "value \"payments\" of attribute workload.kubernetes.namespace starts with p"
        );
        assert_eq!(t.render_placeholder("x"), "/x");
    }

    fn attribute_name() -> impl Strategy<Value = AttributeName> {
        prop_oneof![
            proptest::sample::select(Field::ALL.to_vec()).prop_map(AttributeName::from),
            (
                proptest::sample::select(LabelMap::ALL.to_vec()),
                "[a-z0-9][a-z0-9./_-]{0,12}"
            )
                .prop_map(|(m, k)| AttributeName::label(m, &k).unwrap()),
        ]
    }

    fn part() -> impl Strategy<Value = Part> {
        prop_oneof![
            "[a-zA-Z0-9./ :_-]{1,8}".prop_map(Part::Literal),
            attribute_name().prop_map(Part::Attribute),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(s in "\\PC{0,40}") {
            let _ = Template::parse(&s);
        }

        #[test]
        fn never_panics_on_brace_heavy_input(s in "[{} a.]{0,30}") {
            if let Ok(t) = Template::parse(&s) {
                // Whatever parses must survive a display/parse round trip.
                prop_assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
            }
        }

        #[test]
        fn built_templates_round_trip(parts in proptest::collection::vec(part(), 0..6)) {
            let mut text = String::new();
            let mut attrs = Attributes::new();
            for (i, p) in parts.iter().enumerate() {
                match p {
                    Part::Literal(l) => text.push_str(l),
                    Part::Attribute(a) => {
                        text.push_str(&format!("{{{{{a}}}}}"));
                        // A name repeated in the template takes the last value set.
                        attrs.insert(a.clone(), format!("v{i}"));
                    }
                }
            }
            let t = Template::parse(&text).unwrap();
            prop_assert_eq!(Template::parse(&t.to_string()).unwrap(), t.clone());
            let mut want = String::new();
            for p in &parts {
                match p {
                    Part::Literal(l) => want.push_str(l),
                    Part::Attribute(a) => want.push_str(attrs.get(a).unwrap()),
                }
            }
            prop_assert_eq!(t.render(&attrs).unwrap(), want);
        }
    }
}
