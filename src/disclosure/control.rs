//! The counts a run releases, the relations between them that anyone reading the release
//! knows (an attrition row is the sum of its arms; Circe's combinations add up to the qualifying
//! entries and to each rule), and the two things done with them: `control` withholds and rounds
//! counts so that no number of persons from 1 to the threshold can be derived, and `derivable`
//! looks for such a number in a release, as an output checker would.
//!
//! What counts as derivable: a released count; a withheld count that its relation gives exactly
//! (the one unknown of a sum); the sum of a relation's withheld counts (its total less the
//! released parts); and the difference of any two of these, across every table and between
//! persons and entries, except two that count sets sharing nobody, whose difference is the size
//! of no group: two levels of one covariate in Table 1, and two exposure arms (their entries;
//! their persons when each person has one entry). Sums of two need no check of their own: a sum of counts is small only
//! where one of them is. Under a rounding policy released counts are not exact, so no
//! difference or sum of them is exact either: there the check is that every count is rounded
//! and none is below the smallest the policy releases.

use super::Policy;
use std::collections::BTreeSet;

/// The tables of counts a run releases, in the order their rows are kept when one must go:
/// combinations first, the attrition table last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Combination,
    Rule,
    Table1,
    ByArm,
    Endpoint,
    Attrition,
}

impl Table {
    /// The file a table is released as.
    pub fn file(self) -> &'static str {
        match self {
            Table::Attrition => "attrition.csv",
            Table::ByArm => "attrition_by_arm.csv",
            Table::Rule | Table::Combination => "inclusion_rules.csv",
            Table::Endpoint => "endpoints.csv",
            Table::Table1 => "table1.csv",
        }
    }
}

/// The group of a results row about all entries (the others are about one arm each).
pub const ALL: &str = "all";

/// The covariate of a Table 1 row's rule (`sex = female` → `sex`).
pub fn covariate_of(rule: &str) -> &str {
    rule.split(" = ").next().unwrap_or(rule)
}

/// The two counts of every row (in the endpoint table, persons with an event and events).
pub const MEASURES: [&str; 2] = ["persons", "entries"];

impl Table {
    /// The names of a row's two counts in its file.
    pub fn measures(self) -> [&'static str; 2] {
        match self {
            Table::Endpoint => ["persons", "events"],
            Table::Table1 => ["n", "n"],
            _ => MEASURES,
        }
    }
}

/// One row of counts: exact at the site, `None` where withheld in a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountRow {
    pub table: Table,
    /// The attrition step (attrition and by arm), or the rule's number (rule rows).
    pub step: Option<i64>,
    /// The rule; for a combination, the rules passed (`1, 3` or `none`).
    pub rule: String,
    /// The arm (by arm only; `None` for entries in no arm).
    pub arm: Option<String>,
    /// Persons and entries.
    pub counts: [Option<u64>; 2],
    /// The row's line in its file (the header is line 1), for messages.
    pub line: usize,
}

impl CountRow {
    fn place(&self, measure: usize) -> String {
        format!(
            "{} line {}, {}",
            self.table.file(),
            self.line,
            self.table.measures()[measure]
        )
    }
}

/// `total` is the sum of `parts`, in both measures: exactly for entries; for persons, exactly
/// when each person has one entry, and taken as exact all the same, as a reader would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub total: usize,
    pub parts: Vec<usize>,
}

/// The rules passed in a combination row (`1, 3` → {1, 3}; `none` → {}).
pub fn steps_of(combination: &str) -> BTreeSet<i64> {
    combination
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Every relation between the rows that a reader of the release knows from the documentation.
pub fn relations(rows: &[CountRow]) -> Vec<Relation> {
    let of = |t: Table| -> Vec<usize> { (0..rows.len()).filter(|&i| rows[i].table == t).collect() };
    let attrition = of(Table::Attrition);
    let by_arm = of(Table::ByArm);
    let rules = of(Table::Rule);
    let combinations = of(Table::Combination);
    let attrition_step = |step: i64| {
        attrition
            .iter()
            .copied()
            .find(|&i| rows[i].step == Some(step))
    };
    let mut out = Vec::new();
    // An endpoint's events, and Table 1's counts, in all entries are the sums of those in
    // each arm.
    for table in [Table::Endpoint, Table::Table1] {
        let rows_of = of(table);
        for &total in rows_of
            .iter()
            .filter(|&&i| rows[i].arm.as_deref() == Some(ALL))
        {
            let parts: Vec<usize> = rows_of
                .iter()
                .copied()
                .filter(|&i| i != total && rows[i].rule == rows[total].rule)
                .collect();
            if !parts.is_empty() {
                out.push(Relation { total, parts });
            }
        }
    }
    // Table 1's levels of a covariate, with its missing values, add up to the group's entries:
    // the attrition by arm's last step, or the attrition table's.
    let last = attrition.iter().filter_map(|&i| rows[i].step).max();
    let mut covariates: Vec<(String, String)> = of(Table::Table1)
        .into_iter()
        .map(|i| {
            (
                covariate_of(&rows[i].rule).to_string(),
                rows[i].arm.clone().unwrap_or_default(),
            )
        })
        .collect();
    covariates.sort();
    covariates.dedup();
    for (covariate, group) in covariates {
        let total = if group == ALL {
            attrition.iter().copied().find(|&i| rows[i].step == last)
        } else {
            by_arm
                .iter()
                .copied()
                .find(|&i| rows[i].step == last && rows[i].arm.as_deref() == Some(group.as_str()))
        };
        if let Some(total) = total {
            let parts = of(Table::Table1)
                .into_iter()
                .filter(|&i| {
                    covariate_of(&rows[i].rule) == covariate
                        && rows[i].arm.as_deref() == Some(group.as_str())
                })
                .collect();
            out.push(Relation { total, parts });
        }
    }
    // An attrition row is the sum of its arms (and of entries in no arm).
    let steps: BTreeSet<i64> = by_arm.iter().filter_map(|&i| rows[i].step).collect();
    for &step in &steps {
        if let Some(total) = attrition_step(step) {
            let parts = by_arm
                .iter()
                .copied()
                .filter(|&i| rows[i].step == Some(step))
                .collect();
            out.push(Relation { total, parts });
        }
    }
    // `assigned to an exposure arm` is the sum of the arms (not of no arm) at the step before.
    if let Some(assigned) = attrition
        .iter()
        .copied()
        .find(|&i| rows[i].rule == "assigned to an exposure arm")
    {
        let before = rows[assigned].step.map(|s| s - 1);
        let parts: Vec<usize> = by_arm
            .iter()
            .copied()
            .filter(|&i| rows[i].step == before && rows[i].arm.is_some())
            .collect();
        if !parts.is_empty() {
            out.push(Relation {
                total: assigned,
                parts,
            });
        }
    }
    if combinations.is_empty() {
        return out;
    }
    // The combinations add up to the qualifying entries (step 1) ...
    if let Some(total) = attrition_step(1) {
        out.push(Relation {
            total,
            parts: combinations.clone(),
        });
    }
    let passed: Vec<BTreeSet<i64>> = combinations
        .iter()
        .map(|&i| steps_of(&rows[i].rule))
        .collect();
    for &rule in &rules {
        let Some(n) = rows[rule].step else { continue };
        // ... each rule on its own is the sum of the combinations that pass it ...
        out.push(Relation {
            total: rule,
            parts: combinations
                .iter()
                .zip(&passed)
                .filter(|(_, p)| p.contains(&n))
                .map(|(&i, _)| i)
                .collect(),
        });
        // ... and the attrition row after rule n is the sum of those passing rules 1 to n.
        if let Some(total) = attrition_step(n + 1).filter(|&t| rows[t].rule == rows[rule].rule) {
            out.push(Relation {
                total,
                parts: combinations
                    .iter()
                    .zip(&passed)
                    .filter(|(_, p)| (1..=n).all(|k| p.contains(&k)))
                    .map(|(&i, _)| i)
                    .collect(),
            });
        }
    }
    out
}

/// A number a release gives away, with the released rows it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What it is, in words, with its value.
    pub what: String,
    /// The rows whose released counts give it.
    pub sources: BTreeSet<usize>,
}

/// A number known from a release: released, or derived through the relations.
#[derive(Clone, Debug)]
struct Known {
    value: i128,
    what: String,
    sources: BTreeSet<usize>,
    /// The cell it is (row, measure), when it is one.
    cell: Option<(usize, usize)>,
    scope: Scope,
}

/// What the release says about whom a number counts: enough to know when two numbers count
/// sets that share nobody, whose difference is then the size of no group.
#[derive(Clone, Debug, Default)]
struct Scope {
    /// The one arm its persons are in (`None` when they may be in any).
    arm: Option<Arm>,
    /// Table 1: the covariate and level; the levels of a covariate and its missing values
    /// share nobody.
    level: Option<(String, String)>,
    /// Whether it counts entries (or events, one per entry), not persons: two arms' entries
    /// are always different entries.
    entries: bool,
}

/// An arm, or the entries in no arm (the attrition by arm).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Arm {
    Named(String),
    None,
}

/// The scope of a row's count: by arm rows and the per-arm rows of the endpoint table and
/// Table 1 count one arm; the attrition table, the inclusion rules and the `all` rows count
/// every arm.
fn scope_of(row: &CountRow, measure: usize) -> Scope {
    let arm = match row.table {
        Table::ByArm => Some(row.arm.clone().map_or(Arm::None, Arm::Named)),
        Table::Endpoint | Table::Table1 => row.arm.clone().filter(|a| a != ALL).map(Arm::Named),
        _ => None,
    };
    let level = (row.table == Table::Table1).then(|| {
        let covariate = covariate_of(&row.rule);
        (
            covariate.to_string(),
            row.rule[covariate.len()..].to_string(),
        )
    });
    Scope {
        arm,
        level,
        entries: measure == 1 || row.table == Table::Table1,
    }
}

/// Whether two numbers count sets that share nobody: two levels of one covariate, or two arms
/// where both count entries or each person has one entry (`one_entry_each`; otherwise a
/// person with two entries may be in both arms).
fn disjoint(a: &Scope, b: &Scope, one_entry_each: bool) -> bool {
    let levels = matches!((&a.level, &b.level), (Some((c, l)), Some((d, k))) if c == d && l != k);
    let arms = matches!((&a.arm, &b.arm), (Some(x), Some(y)) if x != y)
        && (one_entry_each || (a.entries && b.entries));
    levels || arms
}

/// Whether the release shows that each person has one entry: the cohort (the attrition table's
/// last step) released with as many persons as entries.
fn one_entry_each(rows: &[CountRow]) -> bool {
    rows.iter()
        .filter(|r| r.table == Table::Attrition)
        .max_by_key(|r| r.step)
        .is_some_and(|r| r.counts[0].is_some() && r.counts[0] == r.counts[1])
}

/// Every count from 1 to `threshold - 1` that can be read or derived from released rows.
pub fn derivable(rows: &[CountRow], policy: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    let smallest = policy.smallest_released();
    for (i, r) in rows.iter().enumerate() {
        for (m, v) in r.counts.iter().enumerate() {
            let Some(v) = *v else { continue };
            if v > 0 && v < smallest {
                findings.push(Finding {
                    what: format!(
                        "{} is {v}, below the smallest count the {} policy releases ({smallest})",
                        r.place(m),
                        policy.preset
                    ),
                    sources: [i].into(),
                });
            } else if policy.rounding > 1 && !v.is_multiple_of(policy.rounding) {
                findings.push(Finding {
                    what: format!(
                        "{} is {v}, not rounded to a multiple of {}",
                        r.place(m),
                        policy.rounding
                    ),
                    sources: [i].into(),
                });
            }
        }
    }
    if policy.rounding > 1 {
        return findings;
    }
    let t = policy.threshold as i128;
    let small = |v: i128| v >= 1 && v < t;
    let relations = relations(rows);
    // Every cell known, released or derived, per measure.
    let mut known: Vec<[Option<Known>; 2]> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            [0, 1].map(|m| {
                r.counts[m].map(|v| Known {
                    value: v as i128,
                    what: r.place(m),
                    sources: [i].into(),
                    cell: Some((i, m)),
                    scope: scope_of(r, m),
                })
            })
        })
        .collect();
    let mut changed = true;
    while changed {
        changed = false;
        for rel in &relations {
            for m in 0..2 {
                let members: Vec<usize> = std::iter::once(rel.total)
                    .chain(rel.parts.iter().copied())
                    .collect();
                let unknown: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| known[i][m].is_none())
                    .collect();
                let [missing] = unknown[..] else { continue };
                let mut sources = BTreeSet::new();
                let mut parts_sum = 0i128;
                for &p in &rel.parts {
                    if let Some(k) = &known[p][m] {
                        parts_sum += k.value;
                        sources.extend(&k.sources);
                    }
                }
                let value = if missing == rel.total {
                    parts_sum
                } else {
                    let total = known[rel.total][m].as_ref().expect("known");
                    sources.extend(&total.sources);
                    total.value - parts_sum
                };
                // A negative value is a relation that does not hold (persons in two arms):
                // it gives nothing away.
                if value >= 0 {
                    known[missing][m] = Some(Known {
                        value,
                        what: format!("{} (withheld, but derivable)", rows[missing].place(m)),
                        sources,
                        cell: Some((missing, m)),
                        scope: scope_of(&rows[missing], m),
                    });
                    changed = true;
                }
            }
        }
    }
    let mut pool: Vec<Known> = known.iter().flatten().flatten().cloned().collect();
    for k in &pool {
        let withheld = k.cell.is_some_and(|(i, m)| rows[i].counts[m].is_none());
        if withheld && small(k.value) {
            findings.push(Finding {
                what: format!("{} is {}", k.what, k.value),
                sources: k.sources.clone(),
            });
        }
    }
    // The withheld parts of a relation together: its total less its released parts.
    for rel in &relations {
        for m in 0..2 {
            let Some(total) = &known[rel.total][m] else {
                continue;
            };
            let unknown: Vec<usize> = rel
                .parts
                .iter()
                .copied()
                .filter(|&p| known[p][m].is_none())
                .collect();
            if unknown.len() < 2 {
                continue;
            }
            let mut sources = total.sources.clone();
            let mut value = total.value;
            for &p in &rel.parts {
                if let Some(k) = &known[p][m] {
                    value -= k.value;
                    sources.extend(&k.sources);
                }
            }
            if value < 0 {
                continue;
            }
            let group = Known {
                value,
                what: format!(
                    "the withheld {} of {} together",
                    rows[unknown[0]].table.measures()[m],
                    unknown
                        .iter()
                        .map(|&p| format!("line {}", rows[p].line))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + &format!(" of {}", rows[unknown[0]].table.file())
                ),
                sources,
                cell: None,
                scope: {
                    let first = scope_of(&rows[unknown[0]], m);
                    Scope {
                        arm: first.arm.filter(|a| {
                            unknown
                                .iter()
                                .all(|&p| scope_of(&rows[p], m).arm.as_ref() == Some(a))
                        }),
                        level: None,
                        entries: first.entries,
                    }
                },
            };
            if small(value) {
                findings.push(Finding {
                    what: format!("{} are {value}", group.what),
                    sources: group.sources.clone(),
                });
            }
            pool.push(group);
        }
    }
    // Differences: sorted, each number against the following ones less than `t` above it.
    let one_entry = one_entry_each(rows);
    pool.sort_by_key(|k| k.value);
    for i in 0..pool.len() {
        for j in i + 1..pool.len() {
            let d = pool[j].value - pool[i].value;
            if d >= t {
                break;
            }
            if d == 0
                || (pool[i].cell.is_some() && pool[i].cell == pool[j].cell)
                || disjoint(&pool[i].scope, &pool[j].scope, one_entry)
            {
                continue;
            }
            findings.push(Finding {
                what: format!(
                    "{} = {}, less {} = {}, is {d}",
                    pool[j].what, pool[j].value, pool[i].what, pool[i].value
                ),
                sources: pool[i].sources.union(&pool[j].sources).copied().collect(),
            });
        }
    }
    findings
}

/// The rows as they may be released under `policy`: counts from 1 to `threshold - 1`
/// withheld, every other count rounded; a row with one count withheld has both withheld (the
/// entries of a handful of persons are theirs too). Without rounding, further rows are withheld
/// until `derivable` finds nothing: for each finding, the least important released row it comes
/// from (rows of zeros last, since withholding them changes no sum; then combinations before
/// rules, rules before arms, arms before the attrition table, and in that table the first two
/// steps and the last one after the others; then the larger count), which is complementary
/// suppression.
pub fn control(exact: &[CountRow], policy: &Policy) -> Vec<CountRow> {
    let mut released: Vec<CountRow> = exact
        .iter()
        .map(|r| {
            let counts = r.counts.map(|c| c.and_then(|c| policy.released(c)));
            CountRow {
                counts: if counts.iter().any(Option::is_none) {
                    [None, None]
                } else {
                    counts
                },
                ..r.clone()
            }
        })
        .collect();
    if policy.rounding > 1 {
        return released;
    }
    let last_step = exact
        .iter()
        .filter(|r| r.table == Table::Attrition)
        .filter_map(|r| r.step)
        .max();
    loop {
        let findings = derivable(&released, policy);
        if findings.is_empty() {
            return released;
        }
        let mut withhold = BTreeSet::new();
        for f in &findings {
            if f.sources.iter().any(|s| withhold.contains(s)) {
                continue;
            }
            let least = f
                .sources
                .iter()
                .copied()
                .filter(|&s| released[s].counts.iter().any(Option::is_some))
                .min_by_key(|&s| {
                    let r = &released[s];
                    let least = r.counts.iter().flatten().copied().min().unwrap_or(0);
                    // Withholding a row of zeros changes no sum: it protects nothing. Then the
                    // larger count goes: in the attrition table the earlier step, so that the
                    // cohort's own count stays.
                    (
                        least == 0,
                        r.table,
                        kept_first(r, &last_step),
                        std::cmp::Reverse(least),
                        s,
                    )
                });
            if let Some(s) = least {
                withhold.insert(s);
            }
        }
        if withhold.is_empty() {
            // Nothing released is left to withhold: every finding is of withheld rows only.
            return released;
        }
        for s in withhold {
            released[s].counts = [None, None];
        }
    }
}

/// Whether a row is among those withheld last: the attrition table's first two steps (the
/// index event's records and the qualifying entries) and its last (the cohort).
fn kept_first(row: &CountRow, last_step: &Option<i64>) -> bool {
    row.table == Table::Attrition && (matches!(row.step, Some(0 | 1)) || row.step == *last_step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrition(counts: &[(u64, u64)]) -> Vec<CountRow> {
        counts
            .iter()
            .enumerate()
            .map(|(i, &(p, e))| CountRow {
                table: Table::Attrition,
                step: Some(i as i64),
                rule: format!("rule {i}"),
                arm: None,
                counts: [Some(p), Some(e)],
                line: i + 2,
            })
            .collect()
    }

    #[test]
    fn differencing_between_steps_is_found_and_prevented() {
        let ohdsi = Policy::preset("ohdsi").unwrap();
        let rows = attrition(&[
            (2000, 2000),
            (1500, 1500),
            (1230, 1230),
            (1226, 1226),
            (900, 900),
        ]);
        let found = derivable(&rows, &ohdsi);
        assert!(found.iter().any(|f| f.what.ends_with("is 4")), "{found:?}");
        let released = control(&rows, &ohdsi);
        assert!(derivable(&released, &ohdsi).is_empty());
        // The cohort's count stays; the step before it goes.
        assert_eq!(released[2].counts, [None, None]);
        assert_eq!(released[3].counts, [Some(1226), Some(1226)]);
    }

    #[test]
    fn a_withheld_arm_is_not_given_by_its_total() {
        let ohdsi = Policy::preset("ohdsi").unwrap();
        let mut rows = attrition(&[(100, 100), (60, 60)]);
        for (arm, n) in [("a", 40u64), ("b", 17), ("none", 3)] {
            rows.push(CountRow {
                table: Table::ByArm,
                step: Some(1),
                rule: "rule 1".into(),
                arm: (arm != "none").then(|| arm.to_string()),
                counts: [Some(n), Some(n)],
                line: rows.len(),
            });
        }
        let released = control(&rows, &ohdsi);
        assert!(derivable(&released, &ohdsi).is_empty(), "{released:?}");
        // The 3 in no arm is withheld, and so is one more cell of its step.
        let withheld = released.iter().filter(|r| r.counts[0].is_none()).count();
        assert!(withheld >= 2, "{released:?}");
    }

    /// Two arms of 40 and 37 persons: different persons, so the 3 between them is the size of
    /// no group, and both are released; but where a person may have two entries (persons
    /// fewer than entries), the same persons may be in both and one of them goes.
    #[test]
    fn two_arms_are_differenced_only_when_they_may_share_persons() {
        let ohdsi = Policy::preset("ohdsi").unwrap();
        let arms = |persons: [u64; 2], entries: [u64; 2]| {
            let mut rows = attrition(&[(100, 100), (77, 77)]);
            rows[1].counts = [Some(persons[0] + persons[1]), Some(entries[0] + entries[1])];
            for (k, arm) in ["a", "b"].into_iter().enumerate() {
                rows.push(CountRow {
                    table: Table::ByArm,
                    step: Some(1),
                    rule: "rule 1".into(),
                    arm: Some(arm.into()),
                    counts: [Some(persons[k]), Some(entries[k])],
                    line: rows.len(),
                });
            }
            rows
        };
        let one_entry_each = arms([40, 37], [40, 37]);
        assert!(derivable(&one_entry_each, &ohdsi).is_empty());
        assert_eq!(control(&one_entry_each, &ohdsi), one_entry_each);
        let repeated = arms([40, 37], [50, 45]);
        let found = derivable(&repeated, &ohdsi);
        assert!(found.iter().any(|f| f.what.ends_with("is 3")), "{found:?}");
        assert!(derivable(&control(&repeated, &ohdsi), &ohdsi).is_empty());
    }

    /// Two levels of one covariate share nobody; two covariates may, and an arm's count is part
    /// of all entries'.
    #[test]
    fn table1_levels_are_not_differenced_but_covariates_are() {
        let ohdsi = Policy::preset("ohdsi").unwrap();
        let row = |rule: &str, arm: &str, n: u64| CountRow {
            table: Table::Table1,
            step: None,
            rule: rule.into(),
            arm: Some(arm.into()),
            counts: [Some(n), Some(n)],
            line: 2,
        };
        let levels = vec![row("smoker = yes", "a", 40), row("smoker = no", "a", 37)];
        assert!(derivable(&levels, &ohdsi).is_empty());
        let covariates = vec![row("smoker = yes", "a", 40), row("diabetic = 1", "a", 37)];
        assert!(!derivable(&covariates, &ohdsi).is_empty());
        let nested = vec![row("smoker = yes", "a", 40), row("smoker = yes", "all", 42)];
        assert!(!derivable(&nested, &ohdsi).is_empty());
    }
}
