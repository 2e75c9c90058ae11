//! `cohortql export atlas`: a checked study as an ATLAS / Circe cohort expression (JSON), for the
//! studies whose constructs Circe has, so a team can still open them in ATLAS.
//!
//! Each construct is written as the Circe construct `import` reads back into it (docs/atlas.md):
//! a definition imported and exported imports again into a study of the same hash. What Circe
//! cannot say (arms, calendar-free anchors, concept sets by name or source code, …) is refused
//! with the part of the study it is in; nothing is approximated.

use crate::study::*;
use serde_json::{json, Map, Value as Json};

/// A construct of the study that Circe cannot say.
#[derive(Clone, Debug, PartialEq)]
pub struct Unsaid {
    /// Where in the study: `index`, `step 2 (require …)`, `follow-up`, `concept set x`.
    pub place: String,
    pub what: String,
}

impl std::fmt::Display for Unsaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.what)
    }
}

/// The study as a Circe cohort expression, pretty-printed; or every construct Circe cannot say.
/// Covariates and endpoints are not part of a cohort definition: `left_out` names them.
pub fn export(study: &Study) -> Result<Exported, Vec<Unsaid>> {
    let mut w = Writer::new(study);
    let expression = w.expression();
    if !w.unsaid.is_empty() {
        return Err(w.unsaid);
    }
    let mut left_out = Vec::new();
    if !study.covariates.is_empty() {
        left_out.push(format!("{} covariate(s)", study.covariates.len()));
    }
    if !study.endpoints.is_empty() {
        left_out.push(format!("{} endpoint(s)", study.endpoints.len()));
    }
    Ok(Exported {
        json: serde_json::to_string_pretty(&expression).expect("JSON values serialise") + "\n",
        left_out,
    })
}

/// An exported cohort expression.
#[derive(Debug)]
pub struct Exported {
    pub json: String,
    /// Parts of the study a cohort definition has no place for (covariates, endpoints).
    pub left_out: Vec<String>,
}

struct Writer<'a> {
    study: &'a Study,
    /// Circe's concept set id for each of the study's concept sets, by position.
    set_ids: Vec<i64>,
    /// Concept sets written inline in criteria, given ids after the named ones.
    inline: Vec<(i64, ConceptExpr)>,
    unsaid: Vec<Unsaid>,
    place: String,
}

impl<'a> Writer<'a> {
    fn new(study: &'a Study) -> Writer<'a> {
        // `cs12` (as `import` names Circe's set 12) keeps its id; other names are numbered after.
        let wanted: Vec<Option<i64>> = study
            .concept_sets
            .iter()
            .map(|s| s.name.strip_prefix("cs").and_then(|n| n.parse().ok()))
            .collect();
        let mut taken: Vec<i64> = wanted.iter().flatten().copied().collect();
        let mut next = 0;
        let mut set_ids = Vec::new();
        for w in &wanted {
            let unique = w.filter(|id| wanted.iter().flatten().filter(|x| *x == id).count() == 1);
            set_ids.push(match unique {
                Some(id) => id,
                None => {
                    while taken.contains(&next) {
                        next += 1;
                    }
                    taken.push(next);
                    next
                }
            });
        }
        Writer {
            study,
            set_ids,
            inline: Vec::new(),
            unsaid: Vec::new(),
            place: String::new(),
        }
    }

    fn unsaid(&mut self, what: impl Into<String>) {
        self.unsaid.push(Unsaid {
            place: self.place.clone(),
            what: what.into(),
        });
    }

    fn expression(&mut self) -> Json {
        let study = self.study;
        self.place = "index".into();
        let index = &study.index;
        if index.any_observation {
            self.unsaid(
                "`with or without observation`: Circe's entry events lie in an observation period",
            );
        }
        if index.at_date.is_some() {
            self.unsaid("`each person at DATE`: Circe enters persons on their events");
        }
        let limit = match index.occurrence {
            Occurrence::First => "First",
            Occurrence::All => "All",
            Occurrence::Last => {
                self.unsaid("`last`: the order of one day's events is Circe's own");
                "Last"
            }
        };
        let mut criteria = Vec::new();
        for alt in index.query.alternatives() {
            if let Some(c) = self.criterion(alt, true, index.from, index.until) {
                criteria.push(c);
            }
        }
        let (before, after) = index.observation;
        let primary = json!({
            "CriteriaList": criteria,
            "ObservationWindow": {"PriorDays": -before, "PostDays": after},
            "PrimaryCriteriaLimit": {"Type": limit},
        });

        let mut rules = Vec::new();
        let mut expression_limit = "All";
        let steps = &study.steps;
        for (i, step) in steps.iter().enumerate() {
            self.place = format!("step {} (`{}`)", i + 1, step.rule);
            match step.keep {
                Some(which) => {
                    if i + 1 != steps.len() {
                        self.unsaid("`keep … entry` before other steps: Circe limits the events after all its inclusion rules");
                    }
                    match (index.occurrence, which) {
                        // Every person has one entry: the step keeps it.
                        (Occurrence::First | Occurrence::Last, _) => {}
                        (_, Occurrence::Last) => self.unsaid(
                            "`keep last entry`: the order of one day's events is Circe's own",
                        ),
                        _ => expression_limit = "First",
                    }
                }
                None => {
                    let criterion = if step.exclude {
                        Criterion::Not(Box::new(step.criterion.clone()))
                    } else {
                        step.criterion.clone()
                    };
                    let expression = self.group(&criterion, false);
                    rules.push(json!({"name": step.rule, "expression": expression}));
                }
            }
        }
        if !study.arms.is_empty() {
            self.place = "exposure arms".into();
            self.unsaid("exposure arms: a Circe cohort has no arms");
        }
        if matches!(study.consent, Consent::RequiredBy { .. }) {
            self.place = "consent".into();
            self.unsaid("a consent rule: Circe reads every record");
        }
        let follow_up = self.follow_up();
        let concept_sets = self.concept_sets();
        let mut out = Map::new();
        out.insert("ConceptSets".into(), Json::Array(concept_sets));
        out.insert("PrimaryCriteria".into(), primary);
        out.insert("QualifiedLimit".into(), json!({"Type": limit}));
        out.insert("ExpressionLimit".into(), json!({"Type": expression_limit}));
        out.insert("InclusionRules".into(), Json::Array(rules));
        for (k, v) in follow_up {
            out.insert(k, v);
        }
        out.insert("cdmVersionRange".into(), json!(">=5.0.0"));
        Json::Object(out)
    }

    /// End strategy, censoring criteria, censor window and collapse settings.
    fn follow_up(&mut self) -> Map<String, Json> {
        self.place = "follow-up".into();
        let fu = &self.study.follow_up;
        let mut out = Map::new();
        if fu.start_offset != 0 {
            self.unsaid("follow-up that starts after index: a Circe cohort starts on its index");
        }
        let mut censoring = Vec::new();
        let mut strategy = None;
        for (i, exit) in fu.exits.iter().enumerate() {
            match exit {
                // Follow-up never outlasts observation: said or not, the same.
                Exit::ObservationEnd => {}
                Exit::Event(q) => {
                    if let Some(c) = self.criterion(q, false, None, None) {
                        censoring.push(c);
                    }
                }
                Exit::RecordEnd { extra } if i == 0 => {
                    strategy = Some(json!({"DateOffset": {"DateField": "EndDate", "Offset": extra}}))
                }
                Exit::Offset {
                    anchor: Anchor::Index,
                    days,
                } if i == 0 => {
                    strategy =
                        Some(json!({"DateOffset": {"DateField": "StartDate", "Offset": days}}))
                }
                Exit::ExposureEnd {
                    concepts,
                    gap,
                    extra,
                } if i == 0 => {
                    if let Some(id) = self.codeset(concepts) {
                        strategy = Some(json!({"CustomEra": {
                            "DrugCodesetId": id, "GapDays": gap, "Offset": extra}}));
                    }
                }
                Exit::Date(_) => self.unsaid("an exit on a date: write `study period … to DATE`"),
                _ => self.unsaid(
                    "a second end of follow-up other than events: Circe has one end strategy, then censoring events",
                ),
            }
        }
        if let Some(s) = strategy {
            out.insert("EndStrategy".into(), s);
        }
        out.insert("CensoringCriteria".into(), Json::Array(censoring));
        match fu.collapse_days {
            Some(pad) => {
                out.insert(
                    "CollapseSettings".into(),
                    json!({"CollapseType": "ERA", "EraPad": pad}),
                );
            }
            None => self.unsaid(
                "no `collapse entries within N days`: Circe always merges a person's overlapping cohort periods",
            ),
        }
        if fu.period_from.is_some() || fu.period_to.is_some() {
            let mut w = Map::new();
            if let Some(d) = fu.period_from {
                w.insert("StartDate".into(), json!(d.to_string()));
            }
            if let Some(d) = fu.period_to {
                w.insert("EndDate".into(), json!(d.to_string()));
            }
            out.insert("CensorWindow".into(), Json::Object(w));
        }
        out
    }

    /// Every concept set a criterion uses, as Circe's items.
    fn concept_sets(&mut self) -> Vec<Json> {
        let mut out = Vec::new();
        let study = self.study;
        let mut sets: Vec<(i64, String, ConceptExpr)> = study
            .concept_sets
            .iter()
            .enumerate()
            .map(|(i, s)| (self.set_ids[i], s.name.clone(), s.expr.clone()))
            .collect();
        for (id, expr) in self.inline.clone() {
            sets.push((id, format!("concepts {id}"), expr));
        }
        for (id, name, expr) in sets {
            self.place = format!("concept set {name}");
            let (included, excluded) = match &expr {
                ConceptExpr::Minus(l, r) => (self.items(l), self.items(r)),
                e => (self.items(e), Vec::new()),
            };
            let item = |i: Item, excluded| {
                json!({
                    "concept": {"CONCEPT_ID": i.id, "CONCEPT_NAME": i.label.unwrap_or_default()},
                    "isExcluded": excluded,
                    "includeDescendants": i.descendants,
                    "includeMapped": i.sources,
                })
            };
            let mut items: Vec<Json> = included.into_iter().map(|i| item(i, false)).collect();
            items.extend(excluded.into_iter().map(|i| item(i, true)));
            out.push(json!({"id": id, "name": name, "expression": {"items": items}}));
        }
        out
    }

    /// The concepts of a set expression as Circe items.
    fn items(&mut self, e: &ConceptExpr) -> Vec<Item> {
        let one = |id: &i64, label: &Option<String>, descendants, sources| Item {
            id: *id,
            label: label.clone(),
            descendants,
            sources,
        };
        let several =
            "`+ descendants` or `+ sources` of more than one concept: Circe marks each concept";
        match e {
            ConceptExpr::Concept { id, label } => vec![one(id, label, false, false)],
            ConceptExpr::WithDescendants(inner) => match inner.as_ref() {
                ConceptExpr::Concept { id, label } => vec![one(id, label, true, false)],
                _ => {
                    self.unsaid(several);
                    Vec::new()
                }
            },
            ConceptExpr::WithSources(inner) => match inner.as_ref() {
                ConceptExpr::Concept { id, label } => vec![one(id, label, false, true)],
                ConceptExpr::WithDescendants(c) => match c.as_ref() {
                    ConceptExpr::Concept { id, label } => vec![one(id, label, true, true)],
                    _ => {
                        self.unsaid(several);
                        Vec::new()
                    }
                },
                _ => {
                    self.unsaid(several);
                    Vec::new()
                }
            },
            ConceptExpr::Union(parts) => parts.iter().flat_map(|p| self.items(p)).collect(),
            ConceptExpr::Set(i) => {
                let expr = self.study.concept_sets[*i].expr.clone();
                if matches!(expr, ConceptExpr::Minus(..)) {
                    self.unsaid(
                        "a set with exclusions used inside another: Circe's sets do not nest",
                    );
                }
                self.items(&expr)
            }
            ConceptExpr::Minus(..) => {
                self.unsaid("an exclusion inside a union: Circe excludes from the whole set");
                Vec::new()
            }
            ConceptExpr::Named(_) | ConceptExpr::SourceCodes { .. } | ConceptExpr::Mapped(_) => {
                self.unsaid("concepts by name, source code or mapping: a Circe concept set lists concept ids (resolve them with `cohortql concepts`)");
                Vec::new()
            }
        }
    }

    /// A criterion's concept set as a Circe codeset id.
    fn codeset(&mut self, e: &ConceptExpr) -> Option<i64> {
        if let ConceptExpr::Set(i) = e {
            return Some(self.set_ids[*i]);
        }
        if let Some((id, _)) = self.inline.iter().find(|(_, x)| x == e) {
            return Some(*id);
        }
        let id = self
            .set_ids
            .iter()
            .chain(self.inline.iter().map(|(id, _)| id))
            .max()
            .map_or(0, |m| m + 1);
        self.inline.push((id, e.clone()));
        Some(id)
    }

    /// An event query as a Circe criterion (`{"ConditionOccurrence": {…}}`); `primary`: an entry
    /// event, whose `where` Circe reads for every record.
    fn criterion(
        &mut self,
        q: &EventQuery,
        primary: bool,
        from: Option<chrono::NaiveDate>,
        until: Option<chrono::NaiveDate>,
    ) -> Option<Json> {
        let kind = match q.domain {
            Domain::Condition => "ConditionOccurrence",
            Domain::Drug => "DrugExposure",
            Domain::Procedure => "ProcedureOccurrence",
            Domain::Measurement => "Measurement",
            Domain::Observation => "Observation",
            Domain::Visit => "VisitOccurrence",
            Domain::Death => "Death",
            Domain::Device => "DeviceExposure",
            Domain::Specimen => "Specimen",
            Domain::ObservationPeriod => "ObservationPeriod",
            Domain::DrugEra => "DrugEra",
            Domain::ConditionEra => "ConditionEra",
            other => {
                self.unsaid(format!(
                    "{} records: Circe has no such criterion",
                    other.keyword()
                ));
                return None;
            }
        };
        if q.era.is_some() {
            self.unsaid("`era of …`: Circe's eras are its drug and condition era tables");
        }
        if !q.also.is_empty() && !primary {
            self.unsaid("`… | …` in a criterion: a Circe criterion is of one domain");
        }
        let mut body = Map::new();
        if let Some(c) = &q.concepts {
            if let Some(id) = self.codeset(c) {
                body.insert("CodesetId".into(), json!(id));
            }
        }
        match (from, until) {
            (Some(f), Some(u)) => {
                body.insert(
                    "OccurrenceStartDate".into(),
                    json!({"Value": f.to_string(), "Op": "bt", "Extent": u.to_string()}),
                );
            }
            (Some(f), None) => {
                body.insert(
                    "OccurrenceStartDate".into(),
                    json!({"Value": f.to_string(), "Op": "gte"}),
                );
            }
            (None, Some(u)) => {
                body.insert(
                    "OccurrenceStartDate".into(),
                    json!({"Value": u.to_string(), "Op": "lte"}),
                );
            }
            (None, None) => {}
        }
        let source_key = match kind {
            "ConditionOccurrence" => "ConditionSourceConcept",
            "DrugExposure" => "DrugSourceConcept",
            "ProcedureOccurrence" => "ProcedureSourceConcept",
            "Measurement" => "MeasurementSourceConcept",
            "Observation" => "ObservationSourceConcept",
            "VisitOccurrence" => "VisitSourceConcept",
            "DeviceExposure" => "DeviceSourceConcept",
            "Death" => "DeathSourceConcept",
            _ => "SourceConcept",
        };
        for f in &q.filters {
            let (key, value) = match f {
                EventFilter::FirstEver => ("First", json!(true)),
                EventFilter::SourceIn(c) => match self.codeset(c) {
                    Some(id) => (source_key, json!(id)),
                    None => continue,
                },
                EventFilter::Value(t) => ("ValueAsNumber", number_range(t)),
                EventFilter::ValueIn(c) => ("ValueAsConcept", self.concept_list(c)),
                EventFilter::UnitIn(c) => ("Unit", self.concept_list(c)),
                // Written as the correlated criterion's `RestrictVisit`.
                EventFilter::SameVisit if !primary => continue,
                EventFilter::Where(w) => {
                    if body.contains_key("CorrelatedCriteria") {
                        self.unsaid("two `where ( … )` on one criterion: write them as one, joined by `and`");
                    }
                    self.nested(w, primary, &mut body);
                    continue;
                }
                other => {
                    let name = match other {
                        EventFilter::Duration(_) => "`duration`",
                        EventFilter::AboveNormal | EventFilter::BelowNormal => {
                            "`value above|below normal`"
                        }
                        EventFilter::Modality(_) => "`modality`",
                        EventFilter::KindIn(_) => "`kind in`",
                        _ => "`same visit` on an entry event",
                    };
                    self.unsaid(format!(
                        "the filter {name}, which a Circe criterion does not have"
                    ));
                    continue;
                }
            };
            if body.insert(key.into(), value).is_some() {
                self.unsaid(format!("two filters that are both Circe's {key}"));
            }
        }
        Some(json!({ kind: Json::Object(body) }))
    }

    /// A `where ( … )` on a criterion's records as the criterion's own fields. An entry event's
    /// is one group of correlated criteria; another criterion's is read by Circe only for
    /// records in an observation period, which the criterion says with `continuous observation
    /// [0, 0] days` before its group (as `import` writes it), and its age, sex and date are the
    /// criterion's fields.
    fn nested(&mut self, w: &Criterion, primary: bool, body: &mut Map<String, Json>) {
        if primary {
            let group = self.group(w, true);
            body.insert("CorrelatedCriteria".into(), group);
            return;
        }
        let items: Vec<&Criterion> = match w {
            Criterion::All(items) => items.iter().collect(),
            one => vec![one],
        };
        let mut rest = items.as_slice();
        let is_observation = |c: &Criterion| {
            matches!(
                c,
                Criterion::Observation {
                    anchor: Anchor::Event,
                    start: 0,
                    end: 0
                }
            )
        };
        // In `import`'s order: Age, the correlated criteria, Gender, OccurrenceStartDate.
        if let Some((first, tail)) = rest.split_first() {
            if let Some(age) =
                event_range(first, |q| matches!(q, Quantity::CalendarAge(Anchor::Event)))
            {
                body.insert("Age".into(), age);
                rest = tail;
            }
        }
        if let [observation, group, tail @ ..] = rest {
            if is_observation(observation) {
                let group = self.group(group, true);
                body.insert("CorrelatedCriteria".into(), group);
                rest = tail;
            }
        }
        if let Some((Criterion::Sex(ids), tail)) = rest.split_first() {
            body.insert("Gender".into(), gender(ids));
            rest = tail;
        }
        if let Some((first, tail)) = rest.split_first() {
            if let Some(date) = event_range(first, |q| matches!(q, Quantity::Date(Anchor::Event))) {
                body.insert("OccurrenceStartDate".into(), date);
                rest = tail;
            }
        }
        if !rest.is_empty() {
            self.unsaid("a `where ( … )` on a criterion's records that is not its age, sex, date or correlated criteria for records in observation (`continuous observation [0, 0] days and ( … )`)");
        }
    }

    /// A criterion as a Circe criteria group. `nested`: about an event (`where`), not index.
    fn group(&mut self, c: &Criterion, nested: bool) -> Json {
        let (kind, count, items): (&str, i64, Vec<&Criterion>) = match c {
            Criterion::All(items) => ("ALL", 0, items.iter().collect()),
            Criterion::Any(items) => ("ANY", 0, items.iter().collect()),
            Criterion::Not(inner) => ("AT_MOST", 0, vec![inner.as_ref()]),
            one => ("ALL", 0, vec![one]),
        };
        // `import` reads a group's correlated criteria, then its demographic criteria, then its
        // groups: an item out of that order goes in a group of its own, which reads back alike.
        let mut lists: [Vec<Json>; 3] = Default::default();
        let mut phase = 0;
        for item in items {
            let (rank, value) = self.item(item, nested);
            if rank >= phase {
                phase = rank;
                lists[rank].push(value);
            } else {
                phase = 2;
                let (list, key) = (
                    vec![value],
                    ["CriteriaList", "DemographicCriteriaList"][rank],
                );
                let mut g = empty_group("ALL", 0);
                g[key] = Json::Array(list);
                lists[2].push(g);
            }
        }
        let mut g = empty_group(kind, count);
        let [criteria, demographic, groups] = lists;
        g["CriteriaList"] = Json::Array(criteria);
        g["DemographicCriteriaList"] = Json::Array(demographic);
        g["Groups"] = Json::Array(groups);
        g
    }

    /// One item of a group: (0: correlated criterion, 1: demographic, 2: group, its JSON).
    fn item(&mut self, c: &Criterion, nested: bool) -> (usize, Json) {
        let anchor = if nested { Anchor::Event } else { Anchor::Index };
        match c {
            Criterion::Events {
                count,
                query,
                window,
                more,
            } => (0, self.correlated(count, query, window, more, nested)),
            Criterion::Sex(ids) => (1, json!({"Gender": gender(ids)})),
            Criterion::Compare { quantity, .. } => {
                let age = matches!(quantity, Quantity::CalendarAge(a) if *a == anchor);
                let date = matches!(quantity, Quantity::Date(a) if *a == anchor);
                match event_range(c, |_| true) {
                    Some(range) if age => (1, json!({"Age": range})),
                    Some(range) if date => (1, json!({"OccurrenceStartDate": range})),
                    _ => {
                        self.unsaid(format!(
                            "`{}`: Circe's demographic criteria are the calendar age and the date of {}",
                            quantity.words(),
                            anchor.words()
                        ));
                        (1, Json::Null)
                    }
                }
            }
            Criterion::Observation { .. } => {
                self.unsaid("`continuous observation` in a criterion: Circe says it only as the entry event's observation window");
                (1, Json::Null)
            }
            group => (2, self.group(group, nested)),
        }
    }

    /// An event criterion as a Circe correlated criterion.
    fn correlated(
        &mut self,
        count: &Count,
        query: &EventQuery,
        window: &Window,
        more: &[EdgeWindow],
        nested: bool,
    ) -> Json {
        let mut windows: Vec<EdgeWindow> = Vec::new();
        if !window.is_any_time() || more.is_empty() {
            windows.push(EdgeWindow {
                edge: Edge::Start,
                window: *window,
            });
        }
        windows.extend(more.iter().copied());
        let mut observed = None;
        let mut circe_windows = Vec::new();
        for w in &windows {
            let Window::Days {
                anchor,
                start,
                end,
                observed: o,
            } = w.window
            else {
                self.unsaid("`during follow-up`: a Circe criterion is about index");
                continue;
            };
            if *observed.get_or_insert(o) != o {
                self.unsaid("windows of one criterion of which only some are `during observation`: Circe reads the observation period for the whole criterion");
            }
            let use_index_end = match (anchor, nested) {
                (Anchor::Index, false) | (Anchor::Event, true) => false,
                (Anchor::IndexEnd, false) | (Anchor::EventEnd, true) => true,
                (a, _) => {
                    self.unsaid(format!("a window about `{}`: Circe's windows are about the index (or the event of a nested criterion)", a.words()));
                    false
                }
            };
            let bound = |b: Option<i64>, side: i64| match b {
                Some(d) => json!({"Days": d.abs(), "Coeff": if d < 0 { -1 } else { 1 }}),
                None => json!({"Coeff": side}),
            };
            circe_windows.push(json!({
                "Start": bound(start, -1),
                "End": bound(end, 1),
                "UseIndexEnd": use_index_end,
                "UseEventEnd": w.edge == Edge::End,
            }));
        }
        if circe_windows.len() > 2 {
            self.unsaid("more than two windows: Circe has a start and an end window");
        }
        let (kind, n) = match count.op {
            CountOp::Exactly => (0, count.n),
            CountOp::AtMost => (1, count.n),
            CountOp::AtLeast => (2, count.n),
        };
        let mut occurrence = json!({"Type": kind, "Count": n});
        if let Some(d) = count.distinct {
            occurrence["IsDistinct"] = json!(true);
            occurrence["CountColumn"] = json!(match d {
                Distinct::Concepts => "DOMAIN_CONCEPT",
                Distinct::Days => "START_DATE",
                Distinct::Visits => "VISIT_ID",
            });
        }
        let criteria = self
            .criterion(query, false, None, None)
            .unwrap_or(Json::Null);
        let mut c = json!({
            "Criteria": criteria,
            "StartWindow": circe_windows.first().cloned().unwrap_or(Json::Null),
            "RestrictVisit": query.filters.contains(&EventFilter::SameVisit),
            "IgnoreObservationPeriod": !observed.unwrap_or(false),
            "Occurrence": occurrence,
        });
        if let Some(end) = circe_windows.get(1) {
            c["EndWindow"] = end.clone();
        }
        c
    }

    /// Concepts written in a value or unit filter, as Circe's list of concepts.
    fn concept_list(&mut self, c: &ConceptExpr) -> Json {
        let items = self.items(c);
        if items.iter().any(|i| i.descendants || i.sources) {
            self.unsaid("`+ descendants` or `+ sources` in a value or unit list: Circe lists the concepts themselves");
        }
        Json::Array(
            items
                .into_iter()
                .map(|i| json!({"CONCEPT_ID": i.id, "CONCEPT_NAME": i.label.unwrap_or_default()}))
                .collect(),
        )
    }
}

/// One concept of a Circe concept set.
struct Item {
    id: i64,
    label: Option<String>,
    descendants: bool,
    /// `includeMapped`: the concepts that map to it too.
    sources: bool,
}

fn empty_group(kind: &str, count: i64) -> Json {
    let mut g = json!({
        "Type": kind,
        "CriteriaList": [],
        "DemographicCriteriaList": [],
        "Groups": [],
    });
    if kind != "ALL" && kind != "ANY" {
        g["Count"] = json!(count);
    }
    g
}

fn gender(ids: &[i64]) -> Json {
    Json::Array(
        ids.iter()
            .map(|id| {
                let name = match *id {
                    MALE => "MALE",
                    FEMALE => "FEMALE",
                    _ => "UNKNOWN",
                };
                json!({"CONCEPT_ID": id, "CONCEPT_NAME": name})
            })
            .collect(),
    )
}

fn op(o: CmpOp) -> &'static str {
    match o {
        CmpOp::Lt => "lt",
        CmpOp::Le => "lte",
        CmpOp::Eq => "eq",
        CmpOp::Ne => "!eq",
        CmpOp::Ge => "gte",
        CmpOp::Gt => "gt",
    }
}

fn number_range(t: &NumberTest) -> Json {
    match t {
        NumberTest::Compare(o, x) => json!({"Value": x, "Op": op(*o)}),
        NumberTest::Between(a, b) => json!({"Value": a, "Op": "bt", "Extent": b}),
    }
}

/// A comparison of a quantity `fits` accepts as a Circe range (`{"Value", "Op", "Extent"}`);
/// `not (… between …)` is Circe's `!bt`.
fn event_range(c: &Criterion, fits: impl Fn(&Quantity) -> bool) -> Option<Json> {
    let (quantity, test, negated) = match c {
        Criterion::Compare { quantity, test } => (quantity, test, false),
        Criterion::Not(inner) => match inner.as_ref() {
            Criterion::Compare {
                quantity,
                test: test @ ValueTest::Between(..),
            } => (quantity, test, true),
            _ => return None,
        },
        _ => return None,
    };
    if !fits(quantity) {
        return None;
    }
    let v = |v: &Value| match v {
        Value::Number(n) => json!(n),
        Value::Date(d) => json!(d.to_string()),
    };
    Some(match test {
        ValueTest::Compare(o, x) => json!({"Value": v(x), "Op": op(*o)}),
        ValueTest::Between(a, b) => {
            json!({"Value": v(a), "Op": if negated { "!bt" } else { "bt" }, "Extent": v(b)})
        }
    })
}

#[cfg(test)]
mod tests {
    use super::export;
    use crate::compile::compile_text;

    fn unsaid(population: &str, follow_up: &str) -> Vec<String> {
        let text = format!(
            "study \"t\"\nconcepts\n  x = 1118084\npopulation\n{population}\nfollow-up\n{follow_up}\n"
        );
        let compiled = compile_text(text.clone());
        let study = compiled
            .study
            .unwrap_or_else(|| panic!("{:?}\n{text}", compiled.diagnostics));
        match export(&study) {
            Ok(_) => Vec::new(),
            Err(u) => u.iter().map(ToString::to_string).collect(),
        }
    }

    const COLLAPSE: &str = "  collapse entries within 0 days";

    /// Each construct docs/atlas.md says is refused is refused, saying where.
    #[test]
    fn what_circe_cannot_say_is_refused_where_it_is() {
        for (population, follow_up, expected) in [
            ("  index = last drug in x", COLLAPSE, "index: `last`"),
            (
                "  index = first drug in \"celecoxib\"",
                COLLAPSE,
                "concept set",
            ),
            (
                "  index = first era of drug in x gap 30 days",
                COLLAPSE,
                "`era of",
            ),
            (
                "  index = first image occurrence",
                COLLAPSE,
                "image occurrence records",
            ),
            (
                "  index = all drug in x\n  keep last entry",
                COLLAPSE,
                "step 1 (`keep last entry`)",
            ),
            (
                "  index = first drug in x\n  require condition [0, 30] days of index end",
                COLLAPSE,
                "",
            ),
            (
                "  index = first drug in x",
                "  collapse entries within 0 days\n  from index + 1 day",
                "follow-up that starts after index",
            ),
            (
                "  index = first drug in x",
                "  until 2020-01-01\n  collapse entries within 0 days",
                "an exit on a date",
            ),
            (
                "  index = first drug in x",
                "  until end of observation",
                "collapse",
            ),
            (
                "  index = first drug in x duration > 3 days",
                COLLAPSE,
                "`duration`",
            ),
        ] {
            let said = unsaid(population, follow_up);
            if expected.is_empty() {
                assert!(said.is_empty(), "{population}: {said:?}");
            } else {
                assert!(
                    said.iter().any(|u| u.contains(expected)),
                    "{population} / {follow_up}: {said:?}"
                );
            }
        }
    }
}
