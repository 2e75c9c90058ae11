//! Concept sets: names, cycles, vocabularies, code patterns, and domain agreement.

use super::Checker;

use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::study::{CodePattern, ConceptExpr};
use crate::syntax::ast::{self, ConceptAtom, Domain, SetOp, Span};
use crate::syntax::{KEYWORDS, MAX_NESTING};

/// Source vocabularies a study may name, as written in lower case, with their OMOP
/// `vocabulary_id`.
pub const VOCABULARIES: &[(&str, &str)] = &[
    ("atc", "ATC"),
    ("ccam", "CCAM"),
    ("cim10", "CIM10"),
    ("cpt4", "CPT4"),
    ("dicom", "DICOM"),
    ("hcpcs", "HCPCS"),
    ("hemonc", "HemOnc"),
    ("icd10", "ICD10"),
    ("icd10cm", "ICD10CM"),
    ("icd10gm", "ICD10GM"),
    ("icd10pcs", "ICD10PCS"),
    ("icd9cm", "ICD9CM"),
    ("icd9proc", "ICD9Proc"),
    ("icdo3", "ICDO3"),
    ("loinc", "LOINC"),
    ("ncit", "NCIt"),
    ("ndc", "NDC"),
    ("opcs4", "OPCS4"),
    ("ops", "OPS"),
    ("read", "Read"),
    ("rxnorm", "RxNorm"),
    ("snomed", "SNOMED"),
];

/// Vocabularies whose codes never contain `-`, where `M15-M19` can only be a mistaken range.
const HYPHENLESS_VOCABULARIES: &[&str] =
    &["ICD10", "ICD10CM", "ICD10GM", "ICD9CM", "CIM10", "ICDO3"];

/// The largest concept id OMOP allows (`concept_id` is a 32-bit integer).
pub const MAX_CONCEPT_ID: i64 = i32::MAX as i64;

impl<'a> Checker<'a> {
    /// Registers the names of every concept set, so sets may be used before they are defined.
    pub(super) fn declare_concept_sets(&mut self, defs: &[&'a ast::ConceptDef]) {
        for def in defs {
            let name = &def.name.node;
            if KEYWORDS.contains(&name.to_ascii_lowercase().as_str()) {
                self.push(
                    Diagnostic::new(
                        Code::ReservedName,
                        format!("`{name}` is a keyword and cannot name a concept set"),
                    )
                    .at(def.name.span)
                    .label("keyword")
                    .help(format!("choose another name, e.g. `{name}_codes`")),
                );
            }
            if let Some(&first) = self.set_index.get(name) {
                let first_span = self.set_defs[first].name.span;
                self.push(
                    Diagnostic::new(
                        Code::DuplicateName,
                        format!("concept set `{name}` is defined twice"),
                    )
                    .at(def.name.span)
                    .label("defined again here")
                    .also(first_span, "first defined here")
                    .help("rename one of them, or join them into one set with `|`"),
                );
                continue;
            }
            self.set_index.insert(name.clone(), self.set_defs.len());
            self.set_defs.push(def);
        }
    }

    /// Reports every cycle among concept-set definitions, once per cycle.
    pub(super) fn check_concept_cycles(&mut self) -> bool {
        let n = self.set_defs.len();
        let mut edges: Vec<Vec<(usize, Span)>> = vec![Vec::new(); n];
        for (i, def) in self.set_defs.iter().enumerate() {
            let mut refs = Vec::new();
            collect_refs(&def.expr, &mut refs);
            for r in refs {
                if let Some(&j) = self.set_index.get(&r.node) {
                    edges[i].push((j, r.span));
                }
            }
        }
        // Iterative depth-first search: 0 unvisited, 1 on the stack, 2 done. `chain` is the
        // longest chain of definitions below a set, known once it is done.
        let mut state = vec![0u8; n];
        let mut chain = vec![0usize; n];
        let mut found = false;
        for root in 0..n {
            if state[root] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            state[root] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if *next < edges[node].len() {
                    let (to, sp) = edges[node][*next];
                    *next += 1;
                    match state[to] {
                        0 => {
                            state[to] = 1;
                            stack.push((to, 0));
                        }
                        1 => {
                            found = true;
                            let start = stack.iter().position(|&(s, _)| s == to).unwrap_or(0);
                            let cycle: Vec<&str> = stack[start..]
                                .iter()
                                .map(|&(s, _)| self.set_defs[s].name.node.as_str())
                                .chain(std::iter::once(self.set_defs[to].name.node.as_str()))
                                .collect();
                            let d = Diagnostic::new(
                                Code::CyclicConceptSet,
                                format!(
                                    "concept sets are defined in terms of each other: {}",
                                    cycle.join(" → ")
                                ),
                            )
                            .at(sp)
                            .label("this reference closes the cycle")
                            .help("a concept set must bottom out in concept ids or source codes");
                            self.push(d);
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    chain[node] = 1 + edges[node]
                        .iter()
                        .map(|&(to, _)| chain[to])
                        .max()
                        .unwrap_or(0);
                    stack.pop();
                }
            }
        }
        // Later stages follow references recursively: a chain of definitions is bounded like
        // nested parentheses.
        if let Some(deep) = (0..n).find(|&i| !found && chain[i] > MAX_NESTING) {
            found = true;
            let def = self.set_defs[deep];
            let d = Diagnostic::new(
                Code::TooDeep,
                format!(
                    "`{}` is defined through a chain of {} concept sets; at most {MAX_NESTING} may build on each other",
                    def.name.node, chain[deep]
                ),
            )
            .at(def.name.span)
            .label("defined through too many others")
            .help("define the set from concept ids directly, or join the sets it uses with `|`");
            self.push(d);
        }
        found
    }

    /// Builds a concept expression; `domain` is the event domain it is used with, if any.
    pub(super) fn concept_expr(
        &mut self,
        expr: &ast::ConceptExpr,
        domain: Option<Domain>,
    ) -> ConceptExpr {
        // Operators apply left to right; a run of `|` becomes one union, built once at its end
        // (rebuilt at every term, a union of n ids cost n² copies).
        let mut acc = self.concept_term(&expr.first, domain);
        let mut union: Vec<ConceptExpr> = Vec::new();
        for (op, term) in &expr.rest {
            let t = self.concept_term(term, domain);
            match op {
                SetOp::Union => {
                    if union.is_empty() {
                        union.push(acc.clone());
                    }
                    union.push(t);
                }
                SetOp::Minus => {
                    if !union.is_empty() {
                        acc = ConceptExpr::Union(std::mem::take(&mut union));
                    }
                    if acc == t {
                        self.push(
                            Diagnostic::new(
                                Code::EmptyConceptSet,
                                "this concept set removes everything it includes",
                            )
                            .at(expr.span)
                            .label("always empty")
                            .help("check the exclusion after `-`"),
                        );
                    }
                    acc = ConceptExpr::Minus(Box::new(acc), Box::new(t));
                }
            }
        }
        if union.is_empty() {
            acc
        } else {
            ConceptExpr::Union(union)
        }
    }

    fn concept_term(&mut self, term: &ast::ConceptTerm, domain: Option<Domain>) -> ConceptExpr {
        let mut e = match &term.atom {
            ConceptAtom::Id { id, label } => {
                let value = match id.node.parse::<i64>() {
                    Ok(v) if v <= MAX_CONCEPT_ID => v,
                    _ => {
                        self.push(
                            Diagnostic::new(
                                Code::InvalidConceptId,
                                format!("concept id {} is out of range", id.node),
                            )
                            .at(id.span)
                            .label("too large")
                            .help(format!("OMOP concept ids are at most {MAX_CONCEPT_ID}")),
                        );
                        0
                    }
                };
                ConceptExpr::Concept {
                    id: value,
                    label: label.as_ref().map(|l| l.node.clone()),
                }
            }
            ConceptAtom::SourceCodes { vocabulary, codes } => {
                let lower = vocabulary.node.to_ascii_lowercase();
                let vocabulary_id = match VOCABULARIES.iter().find(|(k, _)| *k == lower) {
                    Some((_, id)) => id.to_string(),
                    None => {
                        let mut d = Diagnostic::new(
                            Code::UnknownVocabulary,
                            format!(
                                "`{}` is not a source vocabulary cohortql knows",
                                vocabulary.node
                            ),
                        )
                        .at(vocabulary.span)
                        .label("unknown vocabulary");
                        d = match did_you_mean(
                            &vocabulary.node,
                            VOCABULARIES.iter().map(|(k, _)| *k),
                        ) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help(format!(
                                "known vocabularies: {}",
                                VOCABULARIES
                                    .iter()
                                    .map(|(k, _)| *k)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        };
                        self.push(d);
                        vocabulary.node.clone()
                    }
                };
                let codes = codes
                    .iter()
                    .filter_map(|c| self.code_pattern(&vocabulary_id, c))
                    .collect();
                ConceptExpr::SourceCodes {
                    vocabulary: vocabulary_id,
                    codes,
                }
            }
            ConceptAtom::ByName(name) => {
                if name.node.trim().is_empty() {
                    self.push(
                        Diagnostic::new(Code::InvalidCode, "an empty concept name")
                            .at(name.span)
                            .help("write the concept's name, or its id"),
                    );
                }
                ConceptExpr::Named(name.node.clone())
            }
            ConceptAtom::Group(inner) => self.concept_expr(inner, domain),
            ConceptAtom::Ref(name) => match self.set_index.get(&name.node) {
                Some(&i) => {
                    if let (Some(used), Some(declared)) = (domain, self.set_defs[i].domain.as_ref())
                    {
                        if !domains_agree(declared.node, used) {
                            self.push(
                                Diagnostic::new(
                                    Code::DomainMismatch,
                                    format!(
                                        "concept set `{}` is declared for {} but used with {}",
                                        name.node,
                                        declared.node.keyword(),
                                        used.keyword()
                                    ),
                                )
                                .at(name.span)
                                .label(format!("{} concepts", declared.node.keyword()))
                                .also(declared.span, "declared here")
                                .help(format!(
                                    "use {} {} concept set here, or change the domain",
                                    article(used.keyword()),
                                    used.keyword()
                                )),
                            );
                        }
                    }
                    ConceptExpr::Set(i)
                }
                None => {
                    let mut d = Diagnostic::new(
                        Code::UnknownConceptSet,
                        format!("unknown concept set `{}`", name.node),
                    )
                    .at(name.span)
                    .label("not defined in `concepts`");
                    let suggestion = if self.suggestions_left > 0 {
                        self.suggestions_left -= 1;
                        did_you_mean(
                            &name.node,
                            self.set_defs.iter().map(|d| d.name.node.as_str()),
                        )
                        .map(str::to_string)
                    } else {
                        None
                    };
                    d = match suggestion {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help(format!(
                            "define it in the `concepts` section: `{} = …`",
                            name.node
                        )),
                    };
                    self.push(d);
                    ConceptExpr::Union(Vec::new())
                }
            },
        };
        if term.mapped {
            e = ConceptExpr::Mapped(Box::new(e));
        }
        if term.descendants {
            e = ConceptExpr::WithDescendants(Box::new(e));
        }
        if term.sources {
            e = ConceptExpr::WithSources(Box::new(e));
        }
        e
    }

    fn code_pattern(
        &mut self,
        vocabulary: &str,
        code: &ast::Spanned<String>,
    ) -> Option<CodePattern> {
        let c = code.node.trim();
        let bad = |why: &str| {
            Diagnostic::new(
                Code::InvalidCode,
                format!("`{}` is not a source code pattern: {why}", code.node),
            )
            .at(code.span)
            .help("write an exact code (`K92.2`), a prefix (`K92*`) or a range (`M15-M19`)")
        };
        if c.is_empty() || c.chars().any(char::is_whitespace) {
            self.push(bad("codes have no spaces and are not empty"));
            return None;
        }
        if let Some(prefix) = c.strip_suffix('*') {
            if prefix.is_empty() || prefix.contains('*') {
                self.push(bad("`*` ends a prefix of at least one character"));
                return None;
            }
            return Some(CodePattern::Prefix(prefix.to_string()));
        }
        if let Some((low, high)) = c.split_once("..") {
            if low.is_empty() || high.is_empty() || high.contains("..") {
                self.push(bad("a range has one `..` between two codes"));
                return None;
            }
            if low.to_ascii_uppercase() > high.to_ascii_uppercase() {
                self.push(bad("the range ends before it starts"));
                return None;
            }
            return Some(CodePattern::Range(low.to_string(), high.to_string()));
        }
        if c.contains('*') {
            self.push(bad("`*` may only end a prefix"));
            return None;
        }
        if HYPHENLESS_VOCABULARIES.contains(&vocabulary) && c.contains('-') {
            let (low, high) = c.split_once('-').unwrap_or((c, c));
            self.push(
                Diagnostic::new(
                    Code::InvalidCode,
                    format!("{vocabulary} codes have no `-`: `{c}` matches no code"),
                )
                .at(code.span)
                .label("not a code")
                .help(format!(
                    "for the codes from {low} to {high}, write the range \"{low}..{high}\""
                )),
            );
            return None;
        }
        Some(CodePattern::Exact(c.to_string()))
    }
}

/// Whether a set declared for `declared` may be used with events of `used`.
fn domains_agree(declared: Domain, used: Domain) -> bool {
    // Episodes point at a disease or at a treatment (`episode_object_concept_id`).
    if used == Domain::Episode {
        return matches!(
            declared,
            Domain::Condition | Domain::Drug | Domain::Procedure | Domain::Episode
        );
    }
    let family = |d: Domain| match d {
        Domain::DrugEra => Domain::Drug,
        Domain::ConditionEra => Domain::Condition,
        Domain::ImageFeature => Domain::Measurement,
        other => other,
    };
    family(declared) == family(used)
}

fn collect_refs(expr: &ast::ConceptExpr, out: &mut Vec<ast::Name>) {
    for term in std::iter::once(&expr.first).chain(expr.rest.iter().map(|(_, t)| t)) {
        match &term.atom {
            ConceptAtom::Ref(n) => out.push(n.clone()),
            ConceptAtom::Group(inner) => collect_refs(inner, out),
            _ => {}
        }
    }
}

/// `a` or `an` before a word (`an observation`, `a drug`).
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_article_fits_the_word() {
        assert_eq!(super::article("observation"), "an");
        assert_eq!(super::article("episode"), "an");
        assert_eq!(super::article("drug"), "a");
        assert_eq!(super::article("measurement"), "a");
    }
}
