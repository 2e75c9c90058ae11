//! The OMOP domain catalogue: for each domain a study can name, the table holding its records,
//! the tables joined to it, and the column holding each field of a record (person, id, start,
//! end, concept, value, visit…). The planner, the reference evaluator's reader and writer, the
//! data-quality checks and the concept browser all read this one statement of the mapping; a
//! CDM variant that stores a domain elsewhere changes it here.

use super::schema::Kind;
use crate::study::Domain;

/// A field of a record, as the language sees it (see `reference::data::Record`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    Person,
    Concept,
    Start,
    End,
    Visit,
    Number,
    ValueConcept,
    Unit,
    RangeLow,
    RangeHigh,
    /// The imaging modality's DICOM code.
    Modality,
    /// A record's second concept: an episode's kind (`episode_concept_id`).
    Kind,
    DaysSupply,
    /// The record's source concept (`condition_source_concept_id`, …): the code as recorded
    /// at the site, before mapping to a standard concept.
    SourceConcept,
}

impl Field {
    pub const ALL: [Field; 15] = [
        Field::Id,
        Field::Person,
        Field::Concept,
        Field::Start,
        Field::End,
        Field::Visit,
        Field::Number,
        Field::ValueConcept,
        Field::Unit,
        Field::RangeLow,
        Field::RangeHigh,
        Field::Modality,
        Field::Kind,
        Field::DaysSupply,
        Field::SourceConcept,
    ];

    /// The kind of value every domain gives this field.
    pub fn kind(self) -> Kind {
        match self {
            Field::Start | Field::End => Kind::Date,
            Field::Number | Field::RangeLow | Field::RangeHigh => Kind::Float,
            Field::Modality => Kind::Text,
            _ => Kind::Integer,
        }
    }

    /// A short name, for the columns of a relation of records.
    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Person => "person",
            Field::Concept => "concept",
            Field::Start => "start",
            Field::End => "end",
            Field::Visit => "visit",
            Field::Number => "number",
            Field::ValueConcept => "value_concept",
            Field::Unit => "unit",
            Field::RangeLow => "low",
            Field::RangeHigh => "high",
            Field::Modality => "modality",
            Field::Kind => "kind",
            Field::DaysSupply => "days_supply",
            Field::SourceConcept => "source_concept",
        }
    }
}

/// A column of a table (or of a joined table, by its alias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Col {
    pub table: &'static str,
    pub column: &'static str,
}

/// How a joined table's rows are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// Only records with a row in the joined table.
    Inner,
    /// Every record; the joined fields are NULL without a row.
    Left,
}

/// A table joined to a domain's table: `JOIN table AS alias ON left = alias.right`.
#[derive(Clone, Copy, Debug)]
pub struct Join {
    pub table: &'static str,
    pub alias: &'static str,
    pub kind: JoinKind,
    pub left: Col,
    pub right: &'static str,
}

/// Where a domain's records are.
#[derive(Debug)]
pub struct Records {
    pub domain: Domain,
    pub table: &'static str,
    /// In order; a later join may refer to an earlier one's alias.
    pub joins: &'static [Join],
    /// The fields the domain has; a field not listed is NULL in every record. Without an id
    /// (deaths), every record is record 0.
    pub fields: &'static [(Field, Col)],
    /// Columns of `table` that hold standard concepts, which must exist in the vocabulary.
    pub standard_concepts: &'static [&'static str],
    /// The vocabulary's `domain_id` whose concepts this table records, and in which field.
    pub vocabulary_domain: Option<(&'static str, Field)>,
}

impl Records {
    /// The column holding a field, if the domain has it.
    pub fn column(&self, field: Field) -> Option<Col> {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, c)| *c)
    }

    /// The column holding a field in the domain's own table (not a joined one).
    pub fn own(&self, field: Field) -> Option<&'static str> {
        self.column(field)
            .filter(|c| c.table == self.table)
            .map(|c| c.column)
    }

    /// The joins needed to read the fields `wanted` accepts: every inner join (it selects the
    /// records), every left join a wanted field reads from, and the joins those refer to.
    pub fn joins_for(&self, wanted: impl Fn(Field) -> bool) -> Vec<&'static Join> {
        let mut needed: Vec<&'static str> = self
            .fields
            .iter()
            .filter(|(f, c)| wanted(*f) && c.table != self.table)
            .map(|(_, c)| c.table)
            .collect();
        // A join is needed if a wanted field or a later needed join reads from its alias.
        for join in self.joins.iter().rev() {
            if join.kind == JoinKind::Inner || needed.contains(&join.alias) {
                needed.push(join.alias);
                needed.push(join.left.table);
            }
        }
        self.joins
            .iter()
            .filter(|j| needed.contains(&j.alias))
            .collect()
    }

    /// Every table this domain's records are read from.
    pub fn tables(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.table).chain(self.joins.iter().map(|j| j.table))
    }
}

const fn col(table: &'static str, column: &'static str) -> Col {
    Col { table, column }
}

/// The records of a domain.
pub fn records(domain: Domain) -> &'static Records {
    CATALOGUE
        .iter()
        .find(|r| r.domain == domain)
        .expect("the catalogue lists every domain")
}

/// A simple event table: id, person, concept, start, optional end and visit, in its own table.
macro_rules! fields {
    ($table:literal: $($field:ident => $column:literal),* $(,)?) => {
        &[$((Field::$field, col($table, $column))),*]
    };
}

const MODALITY: Join = Join {
    table: "concept",
    alias: "modality_concept",
    kind: JoinKind::Left,
    left: col("image_occurrence", "modality_concept_id"),
    right: "concept_id",
};

/// In the order `repo check` reports the tables.
pub const CATALOGUE: [Records; 15] = [
    Records {
        domain: Domain::Visit,
        table: "visit_occurrence",
        joins: &[],
        fields: fields!("visit_occurrence":
            Id => "visit_occurrence_id", Person => "person_id", Concept => "visit_concept_id",
            Start => "visit_start_date", End => "visit_end_date",
            Visit => "visit_occurrence_id", SourceConcept => "visit_source_concept_id"),
        standard_concepts: &["visit_concept_id"],
        vocabulary_domain: Some(("Visit", Field::Concept)),
    },
    Records {
        domain: Domain::Condition,
        table: "condition_occurrence",
        joins: &[],
        fields: fields!("condition_occurrence":
            Id => "condition_occurrence_id", Person => "person_id",
            Concept => "condition_concept_id", Start => "condition_start_date",
            End => "condition_end_date", Visit => "visit_occurrence_id",
            SourceConcept => "condition_source_concept_id"),
        standard_concepts: &["condition_concept_id"],
        vocabulary_domain: Some(("Condition", Field::Concept)),
    },
    Records {
        domain: Domain::Drug,
        table: "drug_exposure",
        joins: &[],
        fields: fields!("drug_exposure":
            Id => "drug_exposure_id", Person => "person_id", Concept => "drug_concept_id",
            Start => "drug_exposure_start_date", End => "drug_exposure_end_date",
            Visit => "visit_occurrence_id", DaysSupply => "days_supply",
            SourceConcept => "drug_source_concept_id"),
        standard_concepts: &["drug_concept_id"],
        vocabulary_domain: Some(("Drug", Field::Concept)),
    },
    Records {
        domain: Domain::Procedure,
        table: "procedure_occurrence",
        joins: &[],
        fields: fields!("procedure_occurrence":
            Id => "procedure_occurrence_id", Person => "person_id",
            Concept => "procedure_concept_id", Start => "procedure_date",
            End => "procedure_end_date", Visit => "visit_occurrence_id",
            SourceConcept => "procedure_source_concept_id"),
        standard_concepts: &["procedure_concept_id"],
        vocabulary_domain: Some(("Procedure", Field::Concept)),
    },
    Records {
        domain: Domain::Measurement,
        table: "measurement",
        joins: &[],
        fields: fields!("measurement":
            Id => "measurement_id", Person => "person_id", Concept => "measurement_concept_id",
            Start => "measurement_date", Visit => "visit_occurrence_id",
            Number => "value_as_number", ValueConcept => "value_as_concept_id",
            Unit => "unit_concept_id", RangeLow => "range_low", RangeHigh => "range_high",
            SourceConcept => "measurement_source_concept_id"),
        standard_concepts: &[
            "measurement_concept_id",
            "unit_concept_id",
            "value_as_concept_id",
        ],
        vocabulary_domain: Some(("Measurement", Field::Concept)),
    },
    Records {
        domain: Domain::Observation,
        table: "observation",
        joins: &[],
        fields: fields!("observation":
            Id => "observation_id", Person => "person_id", Concept => "observation_concept_id",
            Start => "observation_date", Visit => "visit_occurrence_id",
            Number => "value_as_number", ValueConcept => "value_as_concept_id",
            Unit => "unit_concept_id", SourceConcept => "observation_source_concept_id"),
        standard_concepts: &["observation_concept_id", "value_as_concept_id"],
        vocabulary_domain: Some(("Observation", Field::Concept)),
    },
    Records {
        domain: Domain::Death,
        table: "death",
        joins: &[],
        fields: fields!("death":
            Person => "person_id", Concept => "cause_concept_id", Start => "death_date",
            SourceConcept => "cause_source_concept_id"),
        standard_concepts: &["cause_concept_id"],
        vocabulary_domain: None,
    },
    Records {
        domain: Domain::Device,
        table: "device_exposure",
        joins: &[],
        fields: fields!("device_exposure":
            Id => "device_exposure_id", Person => "person_id", Concept => "device_concept_id",
            Start => "device_exposure_start_date", End => "device_exposure_end_date",
            Visit => "visit_occurrence_id", SourceConcept => "device_source_concept_id"),
        standard_concepts: &["device_concept_id"],
        vocabulary_domain: Some(("Device", Field::Concept)),
    },
    Records {
        domain: Domain::Specimen,
        table: "specimen",
        joins: &[],
        fields: fields!("specimen":
            Id => "specimen_id", Person => "person_id", Concept => "specimen_concept_id",
            Start => "specimen_date"),
        standard_concepts: &["specimen_concept_id"],
        vocabulary_domain: Some(("Specimen", Field::Concept)),
    },
    Records {
        domain: Domain::DrugEra,
        table: "drug_era",
        joins: &[],
        fields: fields!("drug_era":
            Id => "drug_era_id", Person => "person_id", Concept => "drug_concept_id",
            Start => "drug_era_start_date", End => "drug_era_end_date"),
        standard_concepts: &["drug_concept_id"],
        vocabulary_domain: None,
    },
    Records {
        domain: Domain::ConditionEra,
        table: "condition_era",
        joins: &[],
        fields: fields!("condition_era":
            Id => "condition_era_id", Person => "person_id", Concept => "condition_concept_id",
            Start => "condition_era_start_date", End => "condition_era_end_date"),
        standard_concepts: &["condition_concept_id"],
        vocabulary_domain: None,
    },
    Records {
        domain: Domain::Episode,
        table: "episode",
        joins: &[],
        fields: fields!("episode":
            Id => "episode_id", Person => "person_id", Concept => "episode_object_concept_id",
            Start => "episode_start_date", End => "episode_end_date",
            Kind => "episode_concept_id"),
        standard_concepts: &["episode_concept_id", "episode_object_concept_id"],
        vocabulary_domain: Some(("Episode", Field::Kind)),
    },
    // An image: its anatomic site is its concept, its modality the DICOM code of its
    // modality concept.
    Records {
        domain: Domain::ImageOccurrence,
        table: "image_occurrence",
        joins: &[MODALITY],
        fields: &[
            (Field::Id, col("image_occurrence", "image_occurrence_id")),
            (Field::Person, col("image_occurrence", "person_id")),
            (
                Field::Concept,
                col("image_occurrence", "anatomic_site_concept_id"),
            ),
            (
                Field::Start,
                col("image_occurrence", "image_occurrence_date"),
            ),
            (Field::Visit, col("image_occurrence", "visit_occurrence_id")),
            (Field::Modality, col("modality_concept", "concept_code")),
        ],
        standard_concepts: &["modality_concept_id", "anatomic_site_concept_id"],
        vocabulary_domain: None,
    },
    // A feature of an image (a radiomic feature): dated, placed and of the modality of its
    // image, valued by its measurement.
    Records {
        domain: Domain::ImageFeature,
        table: "image_feature",
        joins: &[
            Join {
                table: "image_occurrence",
                alias: "image_occurrence",
                kind: JoinKind::Inner,
                left: col("image_feature", "image_occurrence_id"),
                right: "image_occurrence_id",
            },
            Join {
                table: "measurement",
                alias: "measurement",
                kind: JoinKind::Left,
                left: col("image_feature", "image_feature_event_id"),
                right: "measurement_id",
            },
            MODALITY,
        ],
        fields: &[
            (Field::Id, col("image_feature", "image_feature_id")),
            (Field::Person, col("image_feature", "person_id")),
            (
                Field::Concept,
                col("image_feature", "image_feature_concept_id"),
            ),
            (
                Field::Start,
                col("image_occurrence", "image_occurrence_date"),
            ),
            (Field::Visit, col("image_occurrence", "visit_occurrence_id")),
            (Field::Number, col("measurement", "value_as_number")),
            (
                Field::ValueConcept,
                col("measurement", "value_as_concept_id"),
            ),
            (Field::Unit, col("measurement", "unit_concept_id")),
            (Field::RangeLow, col("measurement", "range_low")),
            (Field::RangeHigh, col("measurement", "range_high")),
            (Field::Modality, col("modality_concept", "concept_code")),
        ],
        standard_concepts: &[],
        vocabulary_domain: None,
    },
    Records {
        domain: Domain::ObservationPeriod,
        table: "observation_period",
        joins: &[],
        fields: fields!("observation_period":
            Id => "observation_period_id", Person => "person_id",
            Start => "observation_period_start_date", End => "observation_period_end_date"),
        standard_concepts: &[],
        vocabulary_domain: None,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::schema;

    #[test]
    fn every_domain_is_listed_once() {
        for domain in Domain::ALL {
            assert_eq!(
                CATALOGUE.iter().filter(|r| r.domain == domain).count(),
                1,
                "{domain:?}"
            );
        }
    }

    /// Every column the catalogue names exists in the CDM tables, of the field's kind; so a
    /// typo here fails a test, not a study at a site.
    #[test]
    fn every_column_exists_with_the_fields_kind() {
        for r in &CATALOGUE {
            let table_of = |alias: &str| {
                if alias == r.table {
                    r.table
                } else {
                    r.joins
                        .iter()
                        .find(|j| j.alias == alias)
                        .unwrap_or_else(|| panic!("{}: no join aliased {alias}", r.table))
                        .table
                }
            };
            let column = |c: Col| {
                let table = schema::table(table_of(c.table)).expect("a CDM table");
                *table
                    .column(c.column)
                    .unwrap_or_else(|| panic!("{}.{} is not a CDM column", table.name, c.column))
            };
            for (field, c) in r.fields {
                let kind = column(*c).kind;
                let fits =
                    kind == field.kind() || (field.kind() == Kind::Date && kind == Kind::Datetime);
                assert!(fits, "{:?} {field:?} is {}", r.domain, kind.name());
            }
            for j in r.joins {
                column(j.left);
                column(Col {
                    table: j.alias,
                    column: j.right,
                });
            }
            for name in r.standard_concepts {
                column(col(r.table, name));
            }
            assert!(r.column(Field::Person).is_some() && r.column(Field::Start).is_some());
        }
    }

    #[test]
    fn joins_are_read_only_when_needed() {
        let image = records(Domain::ImageOccurrence);
        assert!(image.joins_for(|f| f != Field::Modality).is_empty());
        assert_eq!(image.joins_for(|_| true).len(), 1);
        let feature = records(Domain::ImageFeature);
        let aliases = |joins: Vec<&Join>| joins.iter().map(|j| j.alias).collect::<Vec<_>>();
        assert_eq!(
            aliases(feature.joins_for(|f| f == Field::Start)),
            ["image_occurrence"]
        );
        assert_eq!(
            aliases(feature.joins_for(|f| f != Field::Modality)),
            ["image_occurrence", "measurement"]
        );
        assert_eq!(
            aliases(feature.joins_for(|_| true)),
            ["image_occurrence", "measurement", "modality_concept"]
        );
    }
}
