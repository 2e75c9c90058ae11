//! ATLAS / Circe cohort definitions (JSON) as study files. `import` writes a study, in canonical
//! layout, whose meaning is exactly the definition's; whatever the language cannot say exactly
//! is refused, each construct named by its JSON path. `lenient` drops such a construct instead,
//! saying so in a warning comment at the top of the study and in the returned warnings.
//!
//! The mapping, construct by construct, is in docs/atlas.md; Circe's semantics are those of
//! OHDSI's circe-be (`CohortExpressionQueryBuilder`): primary events must lie in an observation
//! period; limits apply in the order primary, qualified (after the additional criteria),
//! expression (after the inclusion rules); ages are the year of the event minus the year of
//! birth; cohort periods are collapsed into eras.

use crate::compile::compile_text;
use crate::fmt::quote;
use serde_json::Value;

pub mod export;

/// One construct the language cannot say exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Where in the JSON: `expression.InclusionRules[2].expression.CriteriaList[0]…`.
    pub path: String,
    /// What is not supported, in words.
    pub what: String,
    /// A short name of the construct, for the coverage table (`ConditionOccurrence.ConditionType`).
    pub construct: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

/// A definition as a study.
#[derive(Debug)]
pub struct Imported {
    /// The study file, in canonical layout.
    pub text: String,
    /// What `lenient` dropped (empty otherwise).
    pub dropped: Vec<Refusal>,
}

/// Reads a Circe definition (the cohort expression, or an ATLAS export holding it under
/// `expression`) and writes it as a study named `name`.
pub fn import(json: &str, name: &str, lenient: bool) -> Result<Imported, Vec<Refusal>> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        vec![Refusal {
            path: "(the file)".into(),
            what: format!("not JSON: {e}"),
            construct: "not JSON".into(),
        }]
    })?;
    let (root, path) = match value.get("expression") {
        Some(e) if e.is_object() => (e.clone(), "expression".to_string()),
        // ATLAS exports the expression as a JSON string inside the definition.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(e) => (e, "expression".to_string()),
            Err(e) => {
                return Err(vec![Refusal {
                    path: "expression".into(),
                    what: format!("not a cohort expression: {e}"),
                    construct: "not JSON".into(),
                }])
            }
        },
        _ => (value, String::new()),
    };
    let mut reader = Reader {
        root: &root,
        refusals: Vec::new(),
        used_sets: Vec::new(),
        nothing_left: false,
    };
    let body = reader.study(&path);
    let sets = reader.concept_sets(&path);
    if !reader.refusals.is_empty() && (!lenient || reader.nothing_left) {
        return Err(reader.refusals);
    }
    let mut text = String::new();
    for r in &reader.refusals {
        text.push_str(&format!("-- WARNING: dropped {r}\n"));
    }
    text.push_str(&format!("study {}\n", quote(name)));
    text.push_str("  description \"Imported from an ATLAS / Circe cohort definition\"\n\n");
    if !sets.is_empty() {
        text.push_str("concepts\n");
        for s in &sets {
            text.push_str(&format!("  {s}\n"));
        }
        text.push('\n');
    }
    text.push_str(&body);
    text.push_str("\noutput\n  person ids original\n");
    let compiled = compile_text(text);
    let Some(file) = compiled.file.as_ref().filter(|_| !compiled.has_errors()) else {
        let messages: Vec<String> = compiled
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.message.clone())
            .collect();
        return Err(vec![Refusal {
            path: path_or_root(&path),
            what: format!(
                "the study made of it does not check: {}",
                messages.join("; ")
            ),
            construct: "does not check".into(),
        }]);
    };
    let formatted =
        crate::fmt::format_study(file, &crate::syntax::source::comments(&compiled.text));
    Ok(Imported {
        text: formatted,
        dropped: reader.refusals,
    })
}

fn path_or_root(path: &str) -> String {
    if path.is_empty() {
        "(the definition)".into()
    } else {
        path.into()
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Whether a JSON value says nothing: absent, null, false, an empty list or object.
fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

struct Reader<'a> {
    root: &'a Value,
    refusals: Vec<Refusal>,
    /// The concept sets used, by Circe id (written in the order of their ids, so that the
    /// study does not depend on where in the definition a set is used first).
    used_sets: Vec<i64>,
    /// Every entry event was refused: not even `lenient` gives a study.
    nothing_left: bool,
}

/// The domains of Circe's criteria that the language has, with their keywords and the
/// attributes read (every other attribute with a value is refused).
fn domain(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "ConditionOccurrence" => "condition",
        "DrugExposure" => "drug",
        "ProcedureOccurrence" => "procedure",
        "Measurement" => "measurement",
        "Observation" => "observation",
        "VisitOccurrence" => "visit",
        "Death" => "death",
        "DeviceExposure" => "device",
        "Specimen" => "specimen",
        "ObservationPeriod" => "observation period",
        "DrugEra" => "drug era",
        "ConditionEra" => "condition era",
        _ => return None,
    })
}

impl Reader<'_> {
    fn refuse(&mut self, path: String, construct: &str, what: impl Into<String>) {
        self.refusals.push(Refusal {
            path,
            what: what.into(),
            construct: construct.to_string(),
        });
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.root.get(key)
    }

    /// The population, follow-up and their comments.
    fn study(&mut self, path: &str) -> String {
        let mut out = String::from("population\n");
        let primary_path = join(path, "PrimaryCriteria");
        let primary = self.get("PrimaryCriteria").cloned().unwrap_or(Value::Null);
        let limit = |v: Option<&Value>| -> String {
            v.and_then(|l| l.get("Type"))
                .and_then(Value::as_str)
                .unwrap_or("All")
                .to_string()
        };
        let primary_limit = limit(primary.get("PrimaryCriteriaLimit"));
        // Circe applies the qualified limit only when the definition has additional criteria
        // (even an empty group).
        let qualified_limit = if self.get("AdditionalCriteria").is_some_and(|a| !a.is_null()) {
            limit(self.get("QualifiedLimit"))
        } else {
            "All".to_string()
        };
        let expression_limit = limit(self.get("ExpressionLimit"));
        for (key, l) in [
            ("PrimaryCriteria.PrimaryCriteriaLimit", &primary_limit),
            ("QualifiedLimit", &qualified_limit),
            ("ExpressionLimit", &expression_limit),
        ] {
            if l == "Last" {
                self.refuse(
                    join(path, key),
                    "Last limit",
                    "the last event of each person, whose order among events of one day Circe and the language may not share",
                );
            }
        }
        let additional = self.get("AdditionalCriteria").cloned();
        let additional = additional.filter(|a| !group_is_empty(a));
        let rules: Vec<Value> = self
            .get("InclusionRules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();

        // Circe's limits, in order: primary, qualified (after the additional criteria),
        // expression (after the inclusion rules). `first` of `first` is `first`; `all` keeps.
        let keyword = |l: &str| match l {
            "First" => "first",
            "Last" => "last",
            _ => "all",
        };
        let (index_limit, additional_as_where) = match (&additional, primary_limit.as_str()) {
            (Some(_), "All") => (qualified_limit.as_str(), true),
            (Some(_), p) => (p, false),
            (None, "All") => (qualified_limit.as_str(), false),
            (None, p) => (p, false),
        };
        let mut index_limit = index_limit.to_string();
        // Circe's expression limit after inclusion rules, when every event enters: each
        // person's first event among those that pass them (`Last` is refused above).
        let mut keep_after_rules = false;
        if index_limit == "All" {
            if rules.is_empty() {
                index_limit = expression_limit.clone();
            } else if expression_limit == "First" {
                keep_after_rules = true;
            }
        }

        let criteria = primary
            .get("CriteriaList")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if criteria.is_empty() {
            self.refuse(
                join(&primary_path, "CriteriaList"),
                "no primary criteria",
                "no entry event",
            );
            return out;
        }
        let before = self.refusals.len();
        let condition = additional
            .as_ref()
            .filter(|_| additional_as_where)
            .map(|a| self.group(a, &join(path, "AdditionalCriteria"), true))
            .filter(|_| self.refusals.len() == before);
        let mut alternatives = Vec::new();
        for (i, c) in criteria.iter().enumerate() {
            let p = format!("{primary_path}.CriteriaList[{i}]");
            let before = self.refusals.len();
            if let Some((text, _)) = self.criterion_event(c, &p, condition.as_deref(), true) {
                if self.refusals.len() == before {
                    alternatives.push(text);
                }
            }
        }
        // Every entry event refused: the rest is still read, so that every refused construct
        // is named.
        self.nothing_left = alternatives.is_empty();
        let mut index = format!(
            "  index = {} {}",
            keyword(&index_limit),
            alternatives.join(" | ")
        );
        let window = primary.get("ObservationWindow");
        let days = |k: &str| {
            window
                .and_then(|w| w.get(k))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let (prior, post) = (days("PriorDays"), days("PostDays"));
        if prior != 0 || post != 0 {
            index.push_str(&format!(
                " with continuous observation [{}, {post}] days",
                -prior
            ));
        }
        out.push_str(&index);
        out.push('\n');
        if let Some(a) = additional.as_ref().filter(|_| !additional_as_where) {
            let before = self.refusals.len();
            let text = self.group(a, &join(path, "AdditionalCriteria"), false);
            // A criterion with a refused part is left out whole (`lenient`).
            if self.refusals.len() == before {
                out.push_str(&format!(
                    "  require {text}  -- Circe: the additional criteria of the entry event\n"
                ));
            }
        }
        for (i, rule) in rules.iter().enumerate() {
            let p = format!("{}[{i}]", join(path, "InclusionRules"));
            let name = rule
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .replace(['\n', '\r'], " ");
            let Some(expression) = rule.get("expression") else {
                continue;
            };
            if group_is_empty(expression) {
                self.refuse(
                    join(&p, "expression"),
                    "empty inclusion rule",
                    "an inclusion rule without criteria (every entry passes it)",
                );
                continue;
            }
            let before = self.refusals.len();
            let text = self.group(expression, &join(&p, "expression"), false);
            if self.refusals.len() > before {
                continue;
            }
            out.push_str(&format!(
                "  require {text}  -- Circe inclusion rule {}: {}\n",
                i + 1,
                quote(&name)
            ));
        }
        if keep_after_rules {
            out.push_str(
                "  keep first entry  -- Circe: the expression limit, after the inclusion rules\n",
            );
        }
        out.push_str(&self.follow_up(path));
        out
    }

    fn follow_up(&mut self, path: &str) -> String {
        let mut exits = Vec::new();
        let strategy = self.get("EndStrategy").cloned();
        if let Some(s) = strategy.as_ref().filter(|s| !is_empty(Some(s))) {
            let p = join(path, "EndStrategy");
            if let Some(offset) = s.get("DateOffset") {
                let days = offset.get("Offset").and_then(Value::as_i64).unwrap_or(0);
                match offset.get("DateField").and_then(Value::as_str) {
                    // A record without an end column (measurement, observation, death,
                    // specimen) ends, for Circe as for the language, the day after its start.
                    Some("EndDate") => exits.push(if days == 0 {
                        "end of index record".to_string()
                    } else {
                        format!("end of index record + {days} days")
                    }),
                    _ => exits.push(format!("index + {days} days")),
                }
            } else if let Some(era) = s.get("CustomEra") {
                let ep = join(&p, "CustomEra");
                if !is_empty(era.get("DaysSupplyOverride")) {
                    self.refuse(
                        join(&ep, "DaysSupplyOverride"),
                        "CustomEra.DaysSupplyOverride",
                        "a days supply that overrides the records'",
                    );
                }
                let gap = era.get("GapDays").and_then(Value::as_i64).unwrap_or(0);
                let offset = era.get("Offset").and_then(Value::as_i64).unwrap_or(0);
                match era.get("DrugCodesetId").and_then(Value::as_i64) {
                    Some(id) => {
                        let set = self.set_name(id);
                        let mut e = format!("end of exposure to {set} gap {gap} days");
                        if offset != 0 {
                            e.push_str(&format!(" + {offset} days"));
                        }
                        exits.push(e);
                    }
                    None => self.refuse(
                        join(&ep, "DrugCodesetId"),
                        "CustomEra without a concept set",
                        "a drug era of no concept set",
                    ),
                }
            } else {
                self.refuse(
                    p,
                    "EndStrategy",
                    "an end strategy other than a date offset or a custom era",
                );
            }
        }
        let censoring = self
            .get("CensoringCriteria")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let had_strategy = !exits.is_empty();
        for (i, c) in censoring.iter().enumerate() {
            let p = format!("{}[{i}]", join(path, "CensoringCriteria"));
            let before = self.refusals.len();
            if let Some((text, _)) = self.criterion_event(c, &p, None, false) {
                if self.refusals.len() == before {
                    exits.push(format!("first {text}"));
                }
            }
        }
        if !had_strategy && !exits.is_empty() {
            // Without an end strategy, Circe's cohort ends at the end of observation.
            exits.insert(0, "end of observation".to_string());
        }
        let mut out = String::from("\nfollow-up\n");
        match exits.len() {
            0 => out.push_str("  until end of observation  -- Circe: no end strategy\n"),
            1 => out.push_str(&format!("  until {}\n", exits[0])),
            _ => out.push_str(&format!("  until earliest of {}\n", exits.join(", "))),
        }
        if let Some(w) = self.get("CensorWindow").filter(|w| !is_empty(Some(w))) {
            let date = |k: &str| w.get(k).and_then(Value::as_str).map(str::to_string);
            let (from, to) = (date("StartDate"), date("EndDate"));
            let mut period = String::from("  study period");
            if let Some(f) = &from {
                period.push_str(&format!(" from {}", &f[..f.len().min(10)]));
            }
            if let Some(t) = &to {
                period.push_str(&format!(" to {}", &t[..t.len().min(10)]));
            }
            if from.is_some() || to.is_some() {
                out.push_str(&period);
                out.push_str("  -- Circe: censor window\n");
            }
        }
        let pad = self
            .get("CollapseSettings")
            .and_then(|c| c.get("EraPad"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        out.push_str(&format!(
            "  collapse entries within {pad} days  -- Circe: cohort periods collapse into eras\n"
        ));
        out
    }

    /// A Circe criterion (`{"ConditionOccurrence": {…}}`) as an event of the language, with its
    /// domain keyword; `extra` is a criterion every record must meet (`where`); `primary`: an
    /// entry event, which lies in an observation period.
    fn criterion_event(
        &mut self,
        c: &Value,
        path: &str,
        extra: Option<&str>,
        primary: bool,
    ) -> Option<(String, &'static str)> {
        let Some((kind, body)) = c.as_object().and_then(|o| o.iter().next()) else {
            self.refuse(path.into(), "empty criterion", "a criterion of no domain");
            return None;
        };
        let path = join(path, kind);
        let Some(keyword) = domain(kind) else {
            self.refuse(
                path,
                kind,
                format!("{kind} criteria: the language has no such domain"),
            );
            return None;
        };
        let body = body.as_object().cloned().unwrap_or_default();
        let mut text = keyword.to_string();
        let mut nested: Vec<String> = Vec::new();
        let mut filters: Vec<String> = Vec::new();
        for (key, value) in &body {
            let p = join(&path, key);
            if is_empty(Some(value)) {
                continue;
            }
            match key.as_str() {
                "CodesetId" => match value.as_i64() {
                    Some(id) => {
                        let set = self.set_name(id);
                        text.push_str(&format!(" in {set}"));
                    }
                    None => self.refuse(p, "CodesetId", "a concept set id that is not a number"),
                },
                // Type filters that exclude nothing when no type is listed.
                k if k.ends_with("TypeExclude") => {
                    let list = k.trim_end_matches("Exclude");
                    if is_empty(body.get(list)) {
                        continue;
                    }
                }
                "Age" => match self.range(value, &p, "calendar age at event", false) {
                    Some(t) => nested.push(t),
                    None => continue,
                },
                "OccurrenceStartDate" => match self.range(value, &p, "date of event", true) {
                    Some(t) => nested.push(t),
                    None => continue,
                },
                "Gender" => match sex_list(value) {
                    Some(t) => nested.push(t),
                    None => self.refuse(p, "Gender", "a gender list that is not of concepts"),
                },
                "ValueAsNumber" if matches!(keyword, "measurement" | "observation") => {
                    match number_test(value) {
                        Some(t) => filters.push(format!("value {t}")),
                        None => self.refuse(
                            p,
                            &format!("{kind}.ValueAsNumber"),
                            "a value range outside the language's (not between)",
                        ),
                    }
                }
                "ValueAsConcept" if matches!(keyword, "measurement" | "observation") => {
                    match concept_list(value) {
                        Some(t) => filters.push(format!("value in ({t})")),
                        None => {
                            self.refuse(p, "ValueAsConcept", "a value concept list without ids")
                        }
                    }
                }
                "Unit" if matches!(keyword, "measurement" | "observation") => {
                    match concept_list(value) {
                        Some(t) => filters.push(format!("unit in ({t})")),
                        None => self.refuse(p, "Unit", "a unit list without ids"),
                    }
                }
                // The code as recorded (`condition_source_concept_id`, …).
                k if k.ends_with("SourceConcept") => match value.as_i64() {
                    Some(id) => {
                        let set = self.set_name(id);
                        filters.push(format!("source in {set}"));
                    }
                    None => self.refuse(p, key, "a source concept set id that is not a number"),
                },
                // The person's first record of the concept set, before the other filters.
                "First" if value.as_bool() == Some(true) => filters.insert(0, "first ever".into()),
                "CorrelatedCriteria" => {
                    // Circe reads a criterion's own correlated criteria only for its records
                    // that lie in an observation period (entry events always do).
                    if !primary {
                        nested.push("continuous observation [0, 0] days".to_string());
                    }
                    let t = self.group(value, &p, true);
                    nested.push(format!("({t})"));
                }
                _ => {
                    let construct = format!("{kind}.{key}");
                    let what = match key.as_str() {
                        "First" => "the first occurrence in the person's history, chosen before the criterion's other filters".to_string(),
                        k if k.ends_with("SourceConcept") => format!("{key}: records matched on their source concept"),
                        k if k.ends_with("Type") => format!("{key}: records of listed type concepts"),
                        _ => format!("{key}, which the language cannot say exactly"),
                    };
                    self.refuse(p, &construct, what);
                }
            }
        }
        for f in filters {
            text.push(' ');
            text.push_str(&f);
        }
        if let Some(e) = extra {
            nested.push(format!("({e})"));
        }
        if !nested.is_empty() {
            let inside = match nested.as_slice() {
                [one] if one.starts_with('(') && balanced_inside(one) => {
                    one[1..one.len() - 1].to_string()
                }
                _ => nested.join(" and "),
            };
            text.push_str(&format!(" where ({inside})"));
        }
        Some((text, keyword))
    }

    /// A Circe range (`{"Value": 40, "Op": "gt", "Extent": …}`) as a comparison of `quantity`.
    fn range(&mut self, v: &Value, path: &str, quantity: &str, dates: bool) -> Option<String> {
        let literal = |k: &str| -> Option<String> {
            let x = v.get(k)?;
            if dates {
                let s = x.as_str()?;
                Some(s[..s.len().min(10)].to_string())
            } else {
                x.as_f64().map(number)
            }
        };
        let op = v.get("Op").and_then(Value::as_str).unwrap_or("");
        let value = literal("Value");
        let t = match (op, value) {
            ("bt", Some(a)) => literal("Extent").map(|b| format!("{quantity} between {a} and {b}")),
            ("!bt", Some(a)) => {
                literal("Extent").map(|b| format!("not ({quantity} between {a} and {b})"))
            }
            (op, Some(a)) => cmp(op).map(|o| format!("{quantity} {o} {a}")),
            _ => None,
        };
        if t.is_none() {
            self.refuse(
                path.into(),
                "range",
                format!("a range the language cannot read ({v})"),
            );
        }
        t
    }

    /// A criteria group (`Type` ALL, ANY, AT_LEAST, AT_MOST) as a criterion. `nested`: inside
    /// `where`, windows are relative to the event and ages and dates are of the event.
    fn group(&mut self, g: &Value, path: &str, nested: bool) -> String {
        let mut items = Vec::new();
        let list = |k: &str| {
            g.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        for (i, c) in list("CriteriaList").iter().enumerate() {
            let p = format!("{}[{i}]", join(path, "CriteriaList"));
            if let Some(t) = self.correlated(c, &p, nested) {
                items.push(t);
            }
        }
        for (i, d) in list("DemographicCriteriaList").iter().enumerate() {
            let p = format!("{}[{i}]", join(path, "DemographicCriteriaList"));
            if let Some(t) = self.demographic(d, &p, nested) {
                items.push(t);
            }
        }
        for (i, sub) in list("Groups").iter().enumerate() {
            let p = format!("{}[{i}]", join(path, "Groups"));
            if group_is_empty(sub) {
                continue;
            }
            items.push(format!("({})", self.group(sub, &p, nested)));
        }
        let items: Vec<String> = items
            .into_iter()
            .map(|t| {
                if t.contains(" and ") || t.contains(" or ") {
                    parenthesised(t)
                } else {
                    t
                }
            })
            .collect();
        let kind = g.get("Type").and_then(Value::as_str).unwrap_or("ALL");
        let count = g.get("Count").and_then(Value::as_i64).unwrap_or(0).max(0) as usize;
        if items.is_empty() {
            return String::new();
        }
        match kind {
            "ALL" => items.join(" and "),
            "ANY" => items.join(" or "),
            "AT_LEAST" => {
                match at_least(&items, count) {
                    Some(t) if t == "(false)" => {
                        self.refuse(
                            join(path, "Type"),
                            "AT_LEAST group",
                            format!(
                                "at least {count} of {} criteria, which no entry meets",
                                items.len()
                            ),
                        );
                        String::new()
                    }
                    Some(t) => t,
                    None => {
                        self.refuse(join(path, "Type"), "AT_LEAST group", format!("at least {count} of {} criteria (too many combinations to write out)", items.len()));
                        String::new()
                    }
                }
            }
            "AT_MOST" => {
                match at_least(&items, count + 1) {
                    Some(t) if t == "(false)" => {
                        self.refuse(
                            join(path, "Type"),
                            "AT_MOST group",
                            "at most as many criteria as the group has",
                        );
                        String::new()
                    }
                    Some(t) => format!("not ({t})"),
                    None => {
                        self.refuse(join(path, "Type"), "AT_MOST group", format!("at most {count} of {} criteria (too many combinations to write out)", items.len()));
                        String::new()
                    }
                }
            }
            other => {
                self.refuse(
                    join(path, "Type"),
                    "group type",
                    format!("a group of type {other}"),
                );
                String::new()
            }
        }
    }

    /// A correlated criterion: an event counted in a window on its start (and one on its end).
    /// `nested`: inside `where`, where the anchor is the event.
    fn correlated(&mut self, c: &Value, path: &str, nested: bool) -> Option<String> {
        // Circe's default: the event must lie in the observation period of the index event
        // (of the event a nested criterion is attached to), and an unbounded side of the
        // window ends there.
        let ignore_op = c
            .get("IgnoreObservationPeriod")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let observed = if ignore_op { "" } else { " during observation" };
        // Circe's start window tests the event's start unless `UseEventEnd`; its end window,
        // the event's end unless `UseEventEnd` is false. Either is about the index (or outer
        // event) start unless `UseIndexEnd`.
        let mut windows = Vec::new();
        for (key, end_by_default) in [("StartWindow", false), ("EndWindow", true)] {
            let Some(window) = c.get(key).filter(|w| !w.is_null()) else {
                if key == "StartWindow" {
                    self.refuse(join(path, key), key, "a criterion without a start window");
                    return None;
                }
                continue;
            };
            let flag = |k: &str| window.get(k).and_then(Value::as_bool);
            let on_end = flag("UseEventEnd").unwrap_or(end_by_default);
            let anchor = match (flag("UseIndexEnd") == Some(true), nested) {
                (false, _) => "",
                (true, false) => " of index end",
                (true, true) => " of event end",
            };
            // A side without days is open; Circe stops it at the observation period's start
            // (Coeff -1) or end (+1), which `during observation` says for the side it bounds.
            let bound = |k: &str| -> Result<String, &'static str> {
                let b = window.get(k).ok_or("a window without its bounds")?;
                let coeff = b.get("Coeff").and_then(Value::as_i64).unwrap_or(1);
                match (b.get("Days").and_then(Value::as_i64), k, coeff < 0) {
                    (Some(d), ..) => Ok((coeff * d).to_string()),
                    (None, "Start", true) | (None, "End", false) => {
                        Ok(if k == "Start" { "-inf" } else { "inf" }.into())
                    }
                    (None, ..) if ignore_op => Ok(if k == "Start" { "-inf" } else { "inf" }.into()),
                    (None, ..) => {
                        Err("a window side bounded by the far edge of the observation period")
                    }
                }
            };
            let (start, end) = match (bound("Start"), bound("End")) {
                (Ok(s), Ok(e)) => (s, e),
                (Err(what), _) | (_, Err(what)) => {
                    self.refuse(join(path, key), key, what);
                    return None;
                }
            };
            windows.push((on_end, format!("[{start}, {end}] days{anchor}{observed}")));
        }
        // The first window is on the start unless it says `ending`; a second says which.
        let windows: Vec<String> = windows
            .into_iter()
            .enumerate()
            .map(|(i, (on_end, w))| match (i, on_end) {
                (_, true) => format!("ending {w}"),
                (0, false) => w,
                (_, false) => format!("starting {w}"),
            })
            .collect();
        let (mut event, _) =
            self.criterion_event(c.get("Criteria")?, &join(path, "Criteria"), None, false)?;
        if c.get("RestrictVisit").and_then(Value::as_bool) == Some(true) {
            // `same visit` is a filter; it goes before a `where`.
            match event.find(" where (") {
                Some(at) => event.insert_str(at, " same visit"),
                None => event.push_str(" same visit"),
            }
        }
        let occurrence = c.get("Occurrence").cloned().unwrap_or(Value::Null);
        let count = occurrence.get("Count").and_then(Value::as_i64).unwrap_or(1);
        let kind = occurrence.get("Type").and_then(Value::as_i64).unwrap_or(2);
        let distinct = if occurrence.get("IsDistinct").and_then(Value::as_bool) == Some(true) {
            match occurrence.get("CountColumn").and_then(Value::as_str) {
                None | Some("DOMAIN_CONCEPT") => " distinct concepts of",
                Some("START_DATE") => " distinct days of",
                Some("VISIT_ID") => " distinct visits of",
                Some(other) => {
                    self.refuse(
                        join(path, "Occurrence.CountColumn"),
                        "Occurrence.CountColumn",
                        format!("counting distinct {other}"),
                    );
                    return None;
                }
            }
        } else {
            ""
        };
        let quantifier = match (kind, count, distinct) {
            (2, 1, "") => String::new(),
            (0, n, d) => format!("exactly {n}{d} "),
            (1, n, d) => format!("at most {n}{d} "),
            (2, n, d) => format!("at least {n}{d} "),
            (k, ..) => {
                self.refuse(
                    join(path, "Occurrence.Type"),
                    "Occurrence.Type",
                    format!("an occurrence type {k}"),
                );
                return None;
            }
        };
        Some(format!("{quantifier}{event} {}", windows.join(" ")))
    }

    /// A demographic criterion: age, sex or date of the entry (or of the event, nested).
    fn demographic(&mut self, d: &Value, path: &str, nested: bool) -> Option<String> {
        let anchor = if nested { "event" } else { "index" };
        let mut parts = Vec::new();
        for (key, value) in d.as_object().cloned().unwrap_or_default() {
            let p = join(path, &key);
            if is_empty(Some(&value)) {
                continue;
            }
            match key.as_str() {
                "Age" => parts.extend(self.range(
                    &value,
                    &p,
                    &format!("calendar age at {anchor}"),
                    false,
                )),
                "OccurrenceStartDate" => {
                    parts.extend(self.range(&value, &p, &format!("date of {anchor}"), true))
                }
                "Gender" => match sex_list(&value) {
                    Some(t) => parts.push(t),
                    None => self.refuse(p, "Gender", "a gender list that is not of concepts"),
                },
                _ => self.refuse(
                    p,
                    &format!("DemographicCriteria.{key}"),
                    format!("{key}, which the language cannot say"),
                ),
            }
        }
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(format!("({})", parts.join(" and "))),
        }
    }

    fn set_name(&mut self, id: i64) -> String {
        if !self.used_sets.contains(&id) {
            self.used_sets.push(id);
        }
        format!("cs{id}")
    }

    /// The concept sets used, as `concepts` lines (`cs3 = 201826 "Type 2 diabetes" + descendants`).
    fn concept_sets(&mut self, path: &str) -> Vec<String> {
        let sets = self
            .get("ConceptSets")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut lines = Vec::new();
        let mut used = self.used_sets.clone();
        used.sort_unstable();
        for id in used {
            let Some((i, set)) = sets
                .iter()
                .enumerate()
                .find(|(_, s)| s.get("id").and_then(Value::as_i64) == Some(id))
            else {
                self.refuse(
                    join(path, "ConceptSets"),
                    "missing concept set",
                    format!("concept set {id} is used but not defined"),
                );
                continue;
            };
            let p = format!("{}[{i}]", join(path, "ConceptSets"));
            let name = set
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .replace(['\n', '\r'], " ");
            let items = set
                .get("expression")
                .and_then(|e| e.get("items"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let (mut included, mut excluded) = (Vec::new(), Vec::new());
            for (j, item) in items.iter().enumerate() {
                let ip = format!("{p}.expression.items[{j}]");
                let concept = item.get("concept").cloned().unwrap_or(Value::Null);
                let Some(cid) = concept.get("CONCEPT_ID").and_then(Value::as_i64) else {
                    self.refuse(
                        join(&ip, "concept.CONCEPT_ID"),
                        "concept without id",
                        "a concept without an id",
                    );
                    continue;
                };
                let label = concept
                    .get("CONCEPT_NAME")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let mut term = if label.is_empty() {
                    cid.to_string()
                } else {
                    format!("{cid} {}", quote(label))
                };
                if item.get("includeDescendants").and_then(Value::as_bool) == Some(true) {
                    term.push_str(" + descendants");
                }
                // The concepts that map to it (and to its descendants).
                if item.get("includeMapped").and_then(Value::as_bool) == Some(true) {
                    term.push_str(" + sources");
                }
                if item.get("isExcluded").and_then(Value::as_bool) == Some(true) {
                    excluded.push(term);
                } else {
                    included.push(term);
                }
            }
            if included.is_empty() {
                self.refuse(
                    join(&p, "expression.items"),
                    "empty concept set",
                    "a concept set that includes no concept",
                );
                continue;
            }
            let mut expr = included.join(" | ");
            if !excluded.is_empty() {
                expr = format!("({expr}) - ({})", excluded.join(" | "));
            }
            lines.push(format!(
                "cs{id} = {expr}  -- Circe concept set {id}: {}",
                quote(&name)
            ));
        }
        lines
    }
}

fn parenthesised(t: String) -> String {
    if t.starts_with('(') && t.ends_with(')') && balanced_inside(&t) {
        t
    } else {
        format!("({t})")
    }
}

/// Whether the outer parentheses of `(…)` enclose everything (not `(a) or (b)`).
fn balanced_inside(t: &str) -> bool {
    let mut depth = 0;
    for (i, ch) in t.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 && i != t.len() - 1 {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

fn group_is_empty(g: &Value) -> bool {
    ["CriteriaList", "DemographicCriteriaList", "Groups"]
        .iter()
        .all(|k| is_empty(g.get(*k)))
}

/// At least `n` of the criteria, written out as a disjunction of conjunctions; `(false)` when
/// `n` exceeds their number; `None` when that would take more than 64 terms.
fn at_least(items: &[String], n: usize) -> Option<String> {
    if n == 0 {
        return None;
    }
    if n == 1 {
        return Some(items.join(" or "));
    }
    if n > items.len() {
        return Some("(false)".into());
    }
    let mut combos: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    fn choose(
        start: usize,
        len: usize,
        n: usize,
        current: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) -> bool {
        if current.len() == n {
            out.push(current.clone());
            return out.len() <= 64;
        }
        for i in start..len {
            current.push(i);
            if !choose(i + 1, len, n, current, out) {
                return false;
            }
            current.pop();
        }
        true
    }
    if !choose(0, items.len(), n, &mut current, &mut combos) {
        return None;
    }
    Some(
        combos
            .iter()
            .map(|c| {
                format!(
                    "({})",
                    c.iter()
                        .map(|&i| items[i].as_str())
                        .collect::<Vec<_>>()
                        .join(" and ")
                )
            })
            .collect::<Vec<_>>()
            .join(" or "),
    )
}

fn cmp(op: &str) -> Option<&'static str> {
    Some(match op {
        "lt" => "<",
        "lte" => "<=",
        "eq" => "=",
        "gt" => ">",
        "gte" => ">=",
        _ => return None,
    })
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// A value range as a number test (`>= 6.5`, `between 5 and 9.5`).
fn number_test(v: &Value) -> Option<String> {
    let value = v.get("Value").and_then(Value::as_f64)?;
    match v.get("Op").and_then(Value::as_str)? {
        "bt" => Some(format!(
            "between {} and {}",
            number(value),
            number(v.get("Extent").and_then(Value::as_f64)?)
        )),
        op => Some(format!("{} {}", cmp(op)?, number(value))),
    }
}

/// A list of Circe concepts as ids joined by `|`.
fn concept_list(v: &Value) -> Option<String> {
    let ids: Vec<String> = v
        .as_array()?
        .iter()
        .map(|c| {
            c.get("CONCEPT_ID")
                .and_then(Value::as_i64)
                .map(|i| i.to_string())
        })
        .collect::<Option<_>>()?;
    (!ids.is_empty()).then(|| ids.join(" | "))
}

/// A gender list as `sex in (…)`.
fn sex_list(v: &Value) -> Option<String> {
    let values: Vec<String> = v
        .as_array()?
        .iter()
        .map(|c| {
            c.get("CONCEPT_ID")
                .and_then(Value::as_i64)
                .map(|id| match id {
                    8507 => "male".to_string(),
                    8532 => "female".to_string(),
                    8551 => "unknown".to_string(),
                    other => other.to_string(),
                })
        })
        .collect::<Option<_>>()?;
    (!values.is_empty()).then(|| format!("sex in ({})", values.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::import;

    fn definition(primary: &str, limits: &str, end: &str) -> String {
        format!(
            r#"{{"ConceptSets": [{{"id": 1, "name": "x", "expression": {{"items": [
                 {{"concept": {{"CONCEPT_ID": 3004410, "CONCEPT_NAME": "HbA1c"}}}}]}}}}],
               "PrimaryCriteria": {{"CriteriaList": [{primary}],
                 "ObservationWindow": {{"PriorDays": 0, "PostDays": 0}},
                 "PrimaryCriteriaLimit": {{"Type": "All"}}}},
               {limits} {end}
               "InclusionRules": [], "CensoringCriteria": [],
               "CollapseSettings": {{"CollapseType": "ERA", "EraPad": 0}}}}"#
        )
    }

    fn index_and_exit(json: &str) -> (String, String) {
        let text = import(json, "t", false).unwrap().text;
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(prefix))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        (line("index ="), line("until"))
    }

    /// Circe applies the qualified limit only when the definition has additional criteria.
    #[test]
    fn the_qualified_limit_needs_additional_criteria() {
        let primary = r#"{"Measurement": {"CodesetId": 1}}"#;
        let without = definition(
            primary,
            r#""QualifiedLimit": {"Type": "First"}, "ExpressionLimit": {"Type": "All"},"#,
            "",
        );
        assert_eq!(index_and_exit(&without).0, "index = all measurement in cs1");
        let with = definition(
            primary,
            r#""AdditionalCriteria": {"Type": "ALL", "CriteriaList": [], "DemographicCriteriaList": [], "Groups": []},
               "QualifiedLimit": {"Type": "First"}, "ExpressionLimit": {"Type": "All"},"#,
            "",
        );
        assert_eq!(index_and_exit(&with).0, "index = first measurement in cs1");
        let expression = definition(
            primary,
            r#""QualifiedLimit": {"Type": "All"}, "ExpressionLimit": {"Type": "First"},"#,
            "",
        );
        assert_eq!(
            index_and_exit(&expression).0,
            "index = first measurement in cs1"
        );
    }

    /// After inclusion rules, Circe's expression limit chooses among the events that pass them:
    /// every event enters and the last step keeps each person's first.
    #[test]
    fn the_expression_limit_after_inclusion_rules_keeps_the_first_entry_that_passes() {
        let rules = r#""InclusionRules": [{"name": "older", "expression": {"Type": "ALL",
            "CriteriaList": [], "Groups": [], "DemographicCriteriaList": [
              {"Age": {"Value": 40, "Op": "gte"}}]}}],"#;
        let json = definition(
            r#"{"Measurement": {"CodesetId": 1}}"#,
            r#""QualifiedLimit": {"Type": "All"}, "ExpressionLimit": {"Type": "First"},"#,
            "",
        )
        .replace(r#""InclusionRules": [],"#, rules);
        let text = import(&json, "t", false).unwrap().text;
        let steps: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("index") || l.starts_with("require") || l.starts_with("keep"))
            .collect();
        assert_eq!(steps[0], "index = all measurement in cs1");
        assert!(
            steps[1].starts_with("require calendar age at index >= 40"),
            "{text}"
        );
        assert!(steps[2].starts_with("keep first entry"), "{text}");
        assert_eq!(steps.len(), 3, "{text}");
    }

    /// A measurement's end is, for Circe, the day after it.
    #[test]
    fn an_offset_from_the_end_of_a_record_without_an_end_counts_from_the_day_after() {
        let limits = r#""QualifiedLimit": {"Type": "All"}, "ExpressionLimit": {"Type": "All"},"#;
        let end = r#""EndStrategy": {"DateOffset": {"DateField": "EndDate", "Offset": 7}},"#;
        let measurement = definition(r#"{"Measurement": {"CodesetId": 1}}"#, limits, end);
        assert_eq!(
            index_and_exit(&measurement).1,
            "until end of index record + 7 days"
        );
        let condition = definition(r#"{"ConditionOccurrence": {"CodesetId": 1}}"#, limits, end);
        assert_eq!(
            index_and_exit(&condition).1,
            "until end of index record + 7 days"
        );
        let both = definition(
            r#"{"ConditionOccurrence": {"CodesetId": 1}}, {"Measurement": {"CodesetId": 1}}"#,
            limits,
            end,
        );
        assert_eq!(
            index_and_exit(&both).1,
            "until end of index record + 7 days"
        );
    }
}
