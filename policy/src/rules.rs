//! WorkloadIdentity attribute rules: allow rules are ORed, the conditions of one
//! rule are ANDed, and any matching deny rule refuses the workload. A rule may
//! instead be a predicate expression ([`crate::expr`]), which holds only when
//! it is true.
//!
//! A condition on an attribute the workload does not have never holds. That
//! includes `not_eq` and `not_in`: "uid is not 0" is false for a workload whose
//! uid was not attested. This is stricter than Teleport, where an unset
//! attribute reads as `""` and negative operators pass; here the absence of
//! evidence is never treated as evidence. (In deny rules this cuts the other
//! way: a deny rule on a missing attribute does not refuse, so deny rules
//! should test attributes the workloads are known to carry.)

use std::collections::BTreeSet;

use crate::attributes::{AttributeError, AttributeName, Attributes, Field};
use crate::crd;
use crate::expr::{Expr, ExprError};

/// Why a rule or condition could not be compiled. Messages are relative to the
/// condition; the caller prefixes the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The attribute is not in the schema.
    #[error("{0}")]
    Attribute(#[from] AttributeError),
    /// Zero or several of eq, not_eq, in, not_in.
    #[error("exactly one of eq, not_eq, in, not_in must be set, found {0}")]
    Operators(String),
    /// `in`/`not_in` with no values.
    #[error("{0} needs at least one value")]
    EmptyList(&'static str),
    /// A `*` in a value: operators compare literally, so a glob would silently
    /// never match the way its author meant.
    #[error(
        "{op} value {value:?} contains '*'; values are compared literally, globs are not supported"
    )]
    Glob {
        /// The operator.
        op: &'static str,
        /// The value.
        value: String,
    },
    /// A rule with neither conditions nor an expression.
    #[error(
        "a rule needs at least one condition or an expression (omit the rule to match every workload)"
    )]
    EmptyRule,
    /// A rule with both conditions and an expression.
    #[error("a rule has either conditions or an expression, not both")]
    BothForms,
    /// The expression does not compile.
    #[error("{0}")]
    Expression(#[from] ExprError),
}

/// The test a compiled condition applies to the attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// Equal to the value.
    Eq(String),
    /// Present and different from the value.
    NotEq(String),
    /// Equal to one of the values.
    In(BTreeSet<String>),
    /// Present and equal to none of the values.
    NotIn(BTreeSet<String>),
}

/// A compiled condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The attribute tested.
    pub attribute: AttributeName,
    /// The test.
    pub operator: Operator,
}

impl Condition {
    /// Compiles one condition from its resource form.
    pub fn compile(c: &crd::AttributeCondition) -> Result<Self, RuleError> {
        let attribute = AttributeName::parse(&c.attribute)?;
        let set: Vec<&str> = [
            c.eq.as_ref().map(|_| "eq"),
            c.not_eq.as_ref().map(|_| "not_eq"),
            c.in_.as_ref().map(|_| "in"),
            c.not_in.as_ref().map(|_| "not_in"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if set.len() != 1 {
            let found = if set.is_empty() {
                "none".to_owned()
            } else {
                set.join(", ")
            };
            return Err(RuleError::Operators(found));
        }
        let literal = |op: &'static str, v: &String| {
            if v.contains('*') {
                Err(RuleError::Glob {
                    op,
                    value: v.clone(),
                })
            } else {
                Ok(v.clone())
            }
        };
        let list = |op: &'static str, vs: &Vec<String>| {
            if vs.is_empty() {
                return Err(RuleError::EmptyList(op));
            }
            vs.iter().map(|v| literal(op, v)).collect()
        };
        let operator = match (&c.eq, &c.not_eq, &c.in_, &c.not_in) {
            (Some(v), _, _, _) => Operator::Eq(literal("eq", v)?),
            (_, Some(v), _, _) => Operator::NotEq(literal("not_eq", v)?),
            (_, _, Some(vs), _) => Operator::In(list("in", vs)?),
            (_, _, _, Some(vs)) => Operator::NotIn(list("not_in", vs)?),
            (None, None, None, None) => return Err(RuleError::Operators("none".to_owned())),
        };
        Ok(Condition {
            attribute,
            operator,
        })
    }

    /// Whether the condition holds. False whenever the attribute is absent.
    pub fn holds(&self, attrs: &Attributes) -> bool {
        let Some(value) = attrs.get(&self.attribute) else {
            return false;
        };
        match &self.operator {
            Operator::Eq(v) => value == v,
            Operator::NotEq(v) => value != v,
            Operator::In(vs) => vs.contains(value),
            Operator::NotIn(vs) => !vs.contains(value),
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Conditions, ANDed.
    Conditions(Vec<Condition>),
    /// A predicate expression; the rule holds only when it is true (not
    /// false, not unknown).
    Expression(Expr),
}

impl Rule {
    /// Whether the rule holds.
    pub fn holds(&self, attrs: &Attributes) -> bool {
        match self {
            Rule::Conditions(conditions) => conditions.iter().all(|c| c.holds(attrs)),
            Rule::Expression(e) => e.holds(attrs),
        }
    }

    /// The first condition that does not hold, for explanations (`None`
    /// for expression rules).
    pub fn first_failing(&self, attrs: &Attributes) -> Option<&Condition> {
        match self {
            Rule::Conditions(conditions) => conditions.iter().find(|c| !c.holds(attrs)),
            Rule::Expression(_) => None,
        }
    }

    /// Why the rule does not hold, or `None` when it does: for conditions
    /// `workload.unix.uid is absent` (the first failing one), for expressions
    /// `expression is false (workload.kubernetes.namespace is "web")`.
    pub fn why_not(&self, attrs: &Attributes) -> Option<String> {
        match self {
            Rule::Conditions(_) => self.first_failing(attrs).map(|c| {
                let have = attrs
                    .get(&c.attribute)
                    .map_or_else(|| "absent".to_owned(), |v| format!("{v:?}"));
                format!("{} is {have}", c.attribute)
            }),
            Rule::Expression(e) => {
                let why = e.explain(attrs);
                (why.truth != crate::expr::Truth::True).then(|| format!("expression is {why}"))
            }
        }
    }

    /// Every attribute the rule reads.
    pub fn attributes(&self) -> Vec<&AttributeName> {
        match self {
            Rule::Conditions(conditions) => conditions.iter().map(|c| &c.attribute).collect(),
            Rule::Expression(e) => e.attributes(),
        }
    }

    /// The namespaces this rule can match in, when it pins
    /// `workload.kubernetes.namespace` (conditions: with `eq` or `in`;
    /// expressions: see [`Expr::namespace_pins`]).
    fn namespaces(&self) -> Option<BTreeSet<String>> {
        let conditions = match self {
            Rule::Conditions(conditions) => conditions,
            Rule::Expression(e) => return e.namespace_pins(),
        };
        let ns = AttributeName::from(Field::KubernetesNamespace);
        let mut pinned: Option<BTreeSet<String>> = None;
        for c in conditions.iter().filter(|c| c.attribute == ns) {
            let here: BTreeSet<String> = match &c.operator {
                Operator::Eq(v) => [v.clone()].into(),
                Operator::In(vs) => vs.clone(),
                Operator::NotEq(_) | Operator::NotIn(_) => continue,
            };
            // Several pins on the namespace in one rule intersect.
            pinned = Some(match pinned {
                None => here,
                Some(p) => p.intersection(&here).cloned().collect(),
            });
        }
        pinned
    }
}

/// The compiled `spec.rules` of a WorkloadIdentity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// Any one suffices; empty matches every workload.
    pub allow: Vec<Rule>,
    /// Any one refuses.
    pub deny: Vec<Rule>,
}

/// Outcome of evaluating [`Rules`] against a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesOutcome {
    /// Allowed (no allow rules, or one held) and no deny rule held.
    Allowed,
    /// No allow rule held.
    NoMatchingRule,
    /// The deny rule at this index held.
    Denied(usize),
}

impl Rules {
    /// Compiles `spec.rules`, collecting every error with its path.
    /// Error paths look like `spec.rules.allow[0].conditions[1].attribute`
    /// or `spec.rules.deny[2].expression`.
    pub fn compile(rules: Option<&crd::Rules>) -> Result<Self, Vec<(String, RuleError)>> {
        let Some(rules) = rules else {
            return Ok(Rules::default());
        };
        let mut errors = Vec::new();
        let mut compile_list = |list: &'static str, src: &[crd::Rule]| -> Vec<Rule> {
            let mut out = Vec::new();
            for (ri, r) in src.iter().enumerate() {
                match (r.conditions.is_empty(), &r.expression) {
                    (true, None) => {
                        errors.push((format!("spec.rules.{list}[{ri}]"), RuleError::EmptyRule));
                        continue;
                    }
                    (false, Some(_)) => {
                        errors.push((format!("spec.rules.{list}[{ri}]"), RuleError::BothForms));
                        continue;
                    }
                    (true, Some(text)) => {
                        match Expr::parse(text) {
                            Ok(e) => out.push(Rule::Expression(e)),
                            Err(e) => errors.push((
                                format!("spec.rules.{list}[{ri}].expression"),
                                RuleError::Expression(e),
                            )),
                        }
                        continue;
                    }
                    (false, None) => {}
                }
                let mut conditions = Vec::new();
                for (ci, c) in r.conditions.iter().enumerate() {
                    match Condition::compile(c) {
                        Ok(c) => conditions.push(c),
                        Err(e) => {
                            let field = match e {
                                RuleError::Attribute(_) => ".attribute",
                                _ => "",
                            };
                            errors.push((
                                format!("spec.rules.{list}[{ri}].conditions[{ci}]{field}"),
                                e,
                            ));
                        }
                    }
                }
                out.push(Rule::Conditions(conditions));
            }
            out
        };
        let allow = compile_list("allow", &rules.allow);
        let deny = compile_list("deny", &rules.deny);
        if errors.is_empty() {
            Ok(Rules { allow, deny })
        } else {
            Err(errors)
        }
    }

    /// Evaluates the rules; deny is checked first and wins.
    pub fn evaluate(&self, attrs: &Attributes) -> RulesOutcome {
        if let Some(i) = self.deny.iter().position(|r| r.holds(attrs)) {
            return RulesOutcome::Denied(i);
        }
        if self.allow.is_empty() || self.allow.iter().any(|r| r.holds(attrs)) {
            RulesOutcome::Allowed
        } else {
            RulesOutcome::NoMatchingRule
        }
    }

    /// The first deny rule that reads an attribute the workload has marked
    /// unavailable, with that attribute. Such a rule cannot be evaluated:
    /// an absent value never satisfies it, so it would never fire, and a
    /// workload would escape a deny rule just because the agent could not
    /// read (say) its executable. Allow rules need no such check, since an
    /// absent value already keeps them from holding.
    pub fn unevaluable_deny<'a>(&self, attrs: &'a Attributes) -> Option<(usize, Field, &'a str)> {
        self.deny.iter().enumerate().find_map(|(i, rule)| {
            rule.attributes().into_iter().find_map(|name| {
                let field = name.field()?;
                Some((i, field, attrs.unavailable_reason(field)?))
            })
        })
    }

    /// In words, why [`Rules::evaluate`] decided as it did, for `explain`.
    pub fn describe(&self, attrs: &Attributes) -> String {
        match self.evaluate(attrs) {
            RulesOutcome::Denied(i) => format!("deny[{i}] holds"),
            RulesOutcome::Allowed if self.allow.is_empty() => {
                "no allow rules: every workload matches".to_owned()
            }
            RulesOutcome::Allowed => {
                let held = self.allow.iter().position(|r| r.holds(attrs)).unwrap_or(0);
                format!("allow[{held}] holds")
            }
            RulesOutcome::NoMatchingRule => {
                let why = self
                    .allow
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.why_not(attrs).map(|why| format!("allow[{i}]: {why}")))
                    .collect::<Vec<_>>()
                    .join("; ");
                format!("no allow rule holds ({why})")
            }
        }
    }

    /// The Kubernetes namespaces outside which the allow rules can never hold,
    /// or `None` if they may hold anywhere (used to index identities).
    pub fn namespace_pins(&self) -> Option<BTreeSet<String>> {
        if self.allow.is_empty() {
            return None;
        }
        let mut all = BTreeSet::new();
        for r in &self.allow {
            all.extend(r.namespaces()?);
        }
        Some(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::LabelMap;

    fn cond(attr: &str, op: &str, v: serde_json::Value) -> crd::AttributeCondition {
        serde_json::from_value(serde_json::json!({ "attribute": attr, op: v })).unwrap()
    }

    fn attrs() -> Attributes {
        let mut a = Attributes::new();
        a.set(Field::KubernetesNamespace, "payments");
        a.set(Field::UnixUid, "1000");
        a.set_labels(LabelMap::KubernetesLabels, [("app", "ledger")])
            .unwrap();
        a
    }

    fn holds(attr: &str, op: &str, v: serde_json::Value) -> bool {
        Condition::compile(&cond(attr, op, v))
            .unwrap()
            .holds(&attrs())
    }

    #[test]
    fn operators_on_present_attributes() {
        use serde_json::json;
        assert!(holds(
            "workload.kubernetes.namespace",
            "eq",
            json!("payments")
        ));
        assert!(!holds(
            "workload.kubernetes.namespace",
            "eq",
            json!("Payments")
        ));
        assert!(holds("workload.unix.uid", "not_eq", json!("0")));
        assert!(!holds("workload.unix.uid", "not_eq", json!("1000")));
        assert!(holds(
            "workload.kubernetes.labels.app",
            "in",
            json!(["processor", "ledger"])
        ));
        assert!(!holds(
            "workload.kubernetes.labels.app",
            "in",
            json!(["processor"])
        ));
        assert!(holds(
            "workload.kubernetes.labels.app",
            "not_in",
            json!(["processor"])
        ));
        assert!(!holds(
            "workload.kubernetes.labels.app",
            "not_in",
            json!(["ledger"])
        ));
    }

    #[test]
    fn absent_attributes_never_hold_even_negated() {
        use serde_json::json;
        assert!(!holds("workload.unix.gid", "eq", json!("0")));
        assert!(!holds("workload.unix.gid", "not_eq", json!("0")));
        assert!(!holds("workload.unix.gid", "in", json!(["0"])));
        assert!(!holds("workload.unix.gid", "not_in", json!(["0"])));
        assert!(!holds(
            "workload.kubernetes.labels.tier",
            "not_eq",
            json!("x")
        ));
    }

    #[test]
    fn operator_count_is_enforced() {
        let mut c = cond("workload.unix.uid", "eq", serde_json::json!("0"));
        c.not_eq = Some("1".into());
        assert_eq!(
            Condition::compile(&c).unwrap_err().to_string(),
            "exactly one of eq, not_eq, in, not_in must be set, found eq, not_eq"
        );
        let c = crd::AttributeCondition {
            attribute: "workload.unix.uid".into(),
            ..Default::default()
        };
        assert_eq!(
            Condition::compile(&c).unwrap_err(),
            RuleError::Operators("none".into())
        );
    }

    #[test]
    fn globs_and_empty_lists_are_rejected() {
        use serde_json::json;
        let e = Condition::compile(&cond("workload.kubernetes.namespace", "eq", json!("pay*")))
            .unwrap_err();
        assert!(matches!(e, RuleError::Glob { op: "eq", .. }));
        assert!(matches!(
            Condition::compile(&cond("workload.unix.uid", "in", json!(["1", "*"]))).unwrap_err(),
            RuleError::Glob { op: "in", .. }
        ));
        assert_eq!(
            Condition::compile(&cond("workload.unix.uid", "not_in", json!([]))).unwrap_err(),
            RuleError::EmptyList("not_in")
        );
    }

    #[test]
    fn unknown_attribute_errors_point_at_the_condition() {
        let src = crd::Rules {
            allow: vec![crd::Rule {
                conditions: vec![
                    cond("workload.unix.uid", "eq", serde_json::json!("0")),
                    cond("workload.kubernets.namespace", "eq", serde_json::json!("x")),
                ],
                expression: None,
            }],
            deny: vec![
                crd::Rule::default(),
                crd::Rule {
                    conditions: vec![cond("workload.unix.uid", "eq", serde_json::json!("0"))],
                    expression: Some("has(workload.unix.uid)".into()),
                },
                crd::Rule {
                    conditions: vec![],
                    expression: Some("workload.unix.uid == 0".into()),
                },
            ],
        };
        let errs = Rules::compile(Some(&src)).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|(p, e)| format!("{p}: {e}")).collect();
        assert_eq!(
            shown,
            [
                "spec.rules.allow[0].conditions[1].attribute: unknown attribute \"workload.kubernets.namespace\"",
                "spec.rules.deny[0]: a rule needs at least one condition or an expression (omit the rule to match every workload)",
                "spec.rules.deny[1]: a rule has either conditions or an expression, not both",
                "spec.rules.deny[2].expression: column 22: expected a string after \"==\", found \"0\"",
            ]
        );
    }

    fn rules(yaml: &str) -> Rules {
        let src: crd::Rules = serde_yaml::from_str(yaml).unwrap();
        Rules::compile(Some(&src)).unwrap()
    }

    #[test]
    fn allow_or_condition_and_deny_wins() {
        let r = rules(
            r#"
allow:
  - conditions:
      - {attribute: workload.kubernetes.namespace, eq: payments}
      - {attribute: workload.unix.uid, eq: "0"}
  - conditions:
      - {attribute: workload.kubernetes.labels.app, eq: ledger}
deny:
  - conditions: [{attribute: workload.unix.uid, eq: "1000"}]
"#,
        );
        // Second allow rule holds, but the deny rule does too.
        assert_eq!(r.evaluate(&attrs()), RulesOutcome::Denied(0));
        let mut a = attrs();
        a.set(Field::UnixUid, "1001");
        assert_eq!(r.evaluate(&a), RulesOutcome::Allowed);
        a.set_labels(LabelMap::KubernetesLabels, [("app", "other")])
            .unwrap();
        // First rule: namespace ok but uid not 0; second: app differs.
        assert_eq!(r.evaluate(&a), RulesOutcome::NoMatchingRule);
    }

    #[test]
    fn no_rules_or_empty_allow_matches_everything() {
        assert_eq!(
            Rules::compile(None).unwrap().evaluate(&Attributes::new()),
            RulesOutcome::Allowed
        );
        let r = rules("deny: [{conditions: [{attribute: workload.unix.uid, eq: '0'}]}]");
        assert_eq!(r.evaluate(&attrs()), RulesOutcome::Allowed);
        assert_eq!(r.evaluate(&Attributes::new()), RulesOutcome::Allowed);
    }

    #[test]
    fn namespace_pins_for_indexing() {
        let r = rules(
            r#"
allow:
  - conditions: [{attribute: workload.kubernetes.namespace, eq: a}]
  - conditions:
      - {attribute: workload.kubernetes.namespace, in: [b, c]}
      - {attribute: workload.kubernetes.namespace, in: [c, d]}
"#,
        );
        assert_eq!(
            r.namespace_pins(),
            Some(["a".to_owned(), "c".to_owned()].into())
        );
        let r = rules(
            r#"
allow:
  - conditions: [{attribute: workload.kubernetes.namespace, eq: a}]
  - conditions: [{attribute: workload.unix.uid, eq: "0"}]
"#,
        );
        assert_eq!(r.namespace_pins(), None);
        assert_eq!(Rules::default().namespace_pins(), None);
        let r =
            rules("allow: [{conditions: [{attribute: workload.kubernetes.namespace, not_eq: a}]}]");
        assert_eq!(r.namespace_pins(), None);
    }

    #[test]
    fn expression_rules_allow_and_deny_like_condition_rules() {
        let r = rules(
            r#"
allow:
  - expression: 'workload.kubernetes.namespace == "payments" && workload.kubernetes.labels.app in ["ledger", "processor"]'
  - conditions: [{attribute: workload.unix.uid, eq: "0"}]
deny:
  - expression: '!has(workload.unix.uid) || workload.unix.uid == "1000"'
"#,
        );
        assert_eq!(r.evaluate(&attrs()), RulesOutcome::Denied(0));
        let mut a = attrs();
        a.set(Field::UnixUid, "1001");
        assert_eq!(r.evaluate(&a), RulesOutcome::Allowed);
        a.set_labels(LabelMap::KubernetesLabels, [("app", "web")])
            .unwrap();
        assert_eq!(r.evaluate(&a), RulesOutcome::NoMatchingRule);
        assert_eq!(
            r.allow[0].why_not(&a).as_deref(),
            Some(r#"expression is false (workload.kubernetes.labels.app is "web")"#)
        );
        assert_eq!(
            r.allow[1].why_not(&a).as_deref(),
            Some(r#"workload.unix.uid is "1001""#)
        );
        // The deny rule refuses a workload without a uid, by has().
        a.remove_field(Field::UnixUid);
        assert_eq!(r.evaluate(&a), RulesOutcome::Denied(0));
    }

    #[test]
    fn unknown_expressions_neither_allow_nor_deny() {
        let r = rules(
            r#"
allow: [{expression: '!(workload.unix.gid == "0")'}]
deny: [{expression: 'workload.unix.gid == "0"'}]
"#,
        );
        // gid is absent: the allow rule is unknown, so it does not hold; the
        // deny rule is unknown too, so it does not refuse.
        assert_eq!(r.evaluate(&attrs()), RulesOutcome::NoMatchingRule);
        assert_eq!(
            r.allow[0].why_not(&attrs()).as_deref(),
            Some("expression is unknown (workload.unix.gid is absent)")
        );
        assert_eq!(
            r.deny[0].why_not(&attrs()).as_deref(),
            Some("expression is unknown (workload.unix.gid is absent)")
        );
    }

    #[test]
    fn expression_namespace_pins_join_condition_pins() {
        let r = rules(
            r#"
allow:
  - expression: 'workload.kubernetes.namespace in ["a", "b"] && has(workload.unix.uid)'
  - conditions: [{attribute: workload.kubernetes.namespace, eq: c}]
"#,
        );
        assert_eq!(
            r.namespace_pins(),
            Some(["a".to_owned(), "b".to_owned(), "c".to_owned()].into())
        );
        let r = rules(
            r#"
allow:
  - expression: 'workload.kubernetes.namespace == "a" || has(workload.unix.uid)'
  - conditions: [{attribute: workload.kubernetes.namespace, eq: c}]
"#,
        );
        assert_eq!(r.namespace_pins(), None);
    }
}
