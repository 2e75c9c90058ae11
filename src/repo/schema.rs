//! The OMOP CDM v5.4 tables a study can touch, and the Medical Imaging extension (MI-CDM,
//! Park et al. 2024), with their published column names and types.

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use std::sync::Arc;

/// The kind of value a column holds, as the CDM specification names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `integer` / `bigint`: ids, concept ids, counts.
    Integer,
    /// `float`: measured values.
    Float,
    /// `varchar`: codes and source values.
    Text,
    /// `date`
    Date,
    /// `datetime`
    Datetime,
}

impl Kind {
    pub fn arrow(self) -> DataType {
        match self {
            Kind::Integer => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Text => DataType::Utf8,
            Kind::Date => DataType::Date32,
            Kind::Datetime => DataType::Timestamp(TimeUnit::Microsecond, None),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::Float => "float",
            Kind::Text => "text",
            Kind::Date => "date",
            Kind::Datetime => "datetime",
        }
    }
}

/// One column: its name, kind, and whether cohortql needs it to be present.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// Columns a study may read. The others may be absent and are then read as empty.
    pub required: bool,
    /// The CDM v5.3 name, where v5.4 renamed the column.
    pub v53_name: Option<&'static str>,
}

/// One table of the repository.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// A repository without this table cannot be used at all.
    pub essential: bool,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The table's schema as cohortql registers it, every column nullable.
    pub fn arrow_schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(c.name, c.kind.arrow(), true))
                .collect::<Vec<_>>(),
        ))
    }
}

const fn req(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        required: true,
        v53_name: None,
    }
}
const fn opt(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        required: false,
        v53_name: None,
    }
}
const fn renamed(name: &'static str, kind: Kind, v53: &'static str) -> Column {
    Column {
        name,
        kind,
        required: false,
        v53_name: Some(v53),
    }
}

use Kind::{Date as D, Datetime as T, Float as F, Integer as I, Text as S};

pub const PERSON: Table = Table {
    name: "person",
    essential: true,
    columns: &[
        req("person_id", I),
        req("gender_concept_id", I),
        req("year_of_birth", I),
        opt("month_of_birth", I),
        opt("day_of_birth", I),
        opt("birth_datetime", T),
        opt("race_concept_id", I),
        opt("ethnicity_concept_id", I),
        opt("location_id", I),
        opt("provider_id", I),
        opt("care_site_id", I),
        opt("person_source_value", S),
        opt("gender_source_value", S),
        opt("gender_source_concept_id", I),
        opt("race_source_value", S),
        opt("race_source_concept_id", I),
        opt("ethnicity_source_value", S),
        opt("ethnicity_source_concept_id", I),
    ],
};

pub const OBSERVATION_PERIOD: Table = Table {
    name: "observation_period",
    essential: true,
    columns: &[
        opt("observation_period_id", I),
        req("person_id", I),
        req("observation_period_start_date", D),
        req("observation_period_end_date", D),
        opt("period_type_concept_id", I),
    ],
};

pub const VISIT_OCCURRENCE: Table = Table {
    name: "visit_occurrence",
    essential: false,
    columns: &[
        req("visit_occurrence_id", I),
        req("person_id", I),
        req("visit_concept_id", I),
        req("visit_start_date", D),
        opt("visit_start_datetime", T),
        opt("visit_end_date", D),
        opt("visit_end_datetime", T),
        opt("visit_type_concept_id", I),
        opt("provider_id", I),
        opt("care_site_id", I),
        opt("visit_source_value", S),
        opt("visit_source_concept_id", I),
        renamed("admitted_from_concept_id", I, "admitting_source_concept_id"),
        renamed("admitted_from_source_value", S, "admitting_source_value"),
        renamed("discharged_to_concept_id", I, "discharge_to_concept_id"),
        renamed("discharged_to_source_value", S, "discharge_to_source_value"),
        opt("preceding_visit_occurrence_id", I),
    ],
};

pub const CONDITION_OCCURRENCE: Table = Table {
    name: "condition_occurrence",
    essential: false,
    columns: &[
        req("condition_occurrence_id", I),
        req("person_id", I),
        req("condition_concept_id", I),
        req("condition_start_date", D),
        opt("condition_start_datetime", T),
        opt("condition_end_date", D),
        opt("condition_end_datetime", T),
        opt("condition_type_concept_id", I),
        opt("condition_status_concept_id", I),
        opt("stop_reason", S),
        opt("provider_id", I),
        opt("visit_occurrence_id", I),
        opt("visit_detail_id", I),
        opt("condition_source_value", S),
        opt("condition_source_concept_id", I),
        opt("condition_status_source_value", S),
    ],
};

pub const DRUG_EXPOSURE: Table = Table {
    name: "drug_exposure",
    essential: false,
    columns: &[
        req("drug_exposure_id", I),
        req("person_id", I),
        req("drug_concept_id", I),
        req("drug_exposure_start_date", D),
        opt("drug_exposure_start_datetime", T),
        opt("drug_exposure_end_date", D),
        opt("drug_exposure_end_datetime", T),
        opt("verbatim_end_date", D),
        opt("drug_type_concept_id", I),
        opt("stop_reason", S),
        opt("refills", I),
        opt("quantity", F),
        opt("days_supply", I),
        opt("sig", S),
        opt("route_concept_id", I),
        opt("lot_number", S),
        opt("provider_id", I),
        opt("visit_occurrence_id", I),
        opt("visit_detail_id", I),
        opt("drug_source_value", S),
        opt("drug_source_concept_id", I),
        opt("route_source_value", S),
        opt("dose_unit_source_value", S),
    ],
};

pub const PROCEDURE_OCCURRENCE: Table = Table {
    name: "procedure_occurrence",
    essential: false,
    columns: &[
        req("procedure_occurrence_id", I),
        req("person_id", I),
        req("procedure_concept_id", I),
        req("procedure_date", D),
        opt("procedure_datetime", T),
        opt("procedure_end_date", D),
        opt("procedure_end_datetime", T),
        opt("procedure_type_concept_id", I),
        opt("modifier_concept_id", I),
        opt("quantity", I),
        opt("provider_id", I),
        opt("visit_occurrence_id", I),
        opt("visit_detail_id", I),
        opt("procedure_source_value", S),
        opt("procedure_source_concept_id", I),
        opt("modifier_source_value", S),
    ],
};

pub const MEASUREMENT: Table = Table {
    name: "measurement",
    essential: false,
    columns: &[
        req("measurement_id", I),
        req("person_id", I),
        req("measurement_concept_id", I),
        req("measurement_date", D),
        opt("measurement_datetime", T),
        opt("measurement_time", S),
        opt("measurement_type_concept_id", I),
        opt("operator_concept_id", I),
        opt("value_as_number", F),
        opt("value_as_concept_id", I),
        opt("unit_concept_id", I),
        opt("range_low", F),
        opt("range_high", F),
        opt("provider_id", I),
        opt("visit_occurrence_id", I),
        opt("visit_detail_id", I),
        opt("measurement_source_value", S),
        opt("measurement_source_concept_id", I),
        opt("unit_source_value", S),
        opt("unit_source_concept_id", I),
        opt("value_source_value", S),
        opt("measurement_event_id", I),
        opt("meas_event_field_concept_id", I),
    ],
};

pub const OBSERVATION: Table = Table {
    name: "observation",
    essential: false,
    columns: &[
        req("observation_id", I),
        req("person_id", I),
        req("observation_concept_id", I),
        req("observation_date", D),
        opt("observation_datetime", T),
        opt("observation_type_concept_id", I),
        opt("value_as_number", F),
        opt("value_as_string", S),
        opt("value_as_concept_id", I),
        opt("qualifier_concept_id", I),
        opt("unit_concept_id", I),
        opt("provider_id", I),
        opt("visit_occurrence_id", I),
        opt("visit_detail_id", I),
        opt("observation_source_value", S),
        opt("observation_source_concept_id", I),
        opt("unit_source_value", S),
        opt("qualifier_source_value", S),
        opt("value_source_value", S),
        opt("observation_event_id", I),
        opt("obs_event_field_concept_id", I),
    ],
};

pub const DEATH: Table = Table {
    name: "death",
    essential: false,
    columns: &[
        req("person_id", I),
        req("death_date", D),
        opt("death_datetime", T),
        opt("death_type_concept_id", I),
        opt("cause_concept_id", I),
        opt("cause_source_value", S),
        opt("cause_source_concept_id", I),
    ],
};

pub const DEVICE_EXPOSURE: Table = Table {
    name: "device_exposure",
    essential: false,
    columns: &[
        req("device_exposure_id", I),
        req("person_id", I),
        req("device_concept_id", I),
        req("device_exposure_start_date", D),
        opt("device_exposure_start_datetime", T),
        opt("device_exposure_end_date", D),
        opt("device_exposure_end_datetime", T),
        opt("device_type_concept_id", I),
        opt("unique_device_id", S),
        opt("production_id", S),
        opt("quantity", I),
        opt("provider_id", I),
        opt("visit_occurrence_id", I),
        opt("visit_detail_id", I),
        opt("device_source_value", S),
        opt("device_source_concept_id", I),
        opt("unit_concept_id", I),
        opt("unit_source_value", S),
        opt("unit_source_concept_id", I),
    ],
};

pub const SPECIMEN: Table = Table {
    name: "specimen",
    essential: false,
    columns: &[
        req("specimen_id", I),
        req("person_id", I),
        req("specimen_concept_id", I),
        opt("specimen_type_concept_id", I),
        req("specimen_date", D),
        opt("specimen_datetime", T),
        opt("quantity", F),
        opt("unit_concept_id", I),
        opt("anatomic_site_concept_id", I),
        opt("disease_status_concept_id", I),
        opt("specimen_source_id", S),
        opt("specimen_source_value", S),
        opt("unit_source_value", S),
        opt("anatomic_site_source_value", S),
        opt("disease_status_source_value", S),
    ],
};

pub const DRUG_ERA: Table = Table {
    name: "drug_era",
    essential: false,
    columns: &[
        req("drug_era_id", I),
        req("person_id", I),
        req("drug_concept_id", I),
        req("drug_era_start_date", D),
        req("drug_era_end_date", D),
        opt("drug_exposure_count", I),
        opt("gap_days", I),
    ],
};

pub const CONDITION_ERA: Table = Table {
    name: "condition_era",
    essential: false,
    columns: &[
        req("condition_era_id", I),
        req("person_id", I),
        req("condition_concept_id", I),
        req("condition_era_start_date", D),
        req("condition_era_end_date", D),
        opt("condition_occurrence_count", I),
    ],
};

pub const EPISODE: Table = Table {
    name: "episode",
    essential: false,
    columns: &[
        req("episode_id", I),
        req("person_id", I),
        req("episode_concept_id", I),
        req("episode_start_date", D),
        opt("episode_start_datetime", T),
        opt("episode_end_date", D),
        opt("episode_end_datetime", T),
        opt("episode_parent_id", I),
        opt("episode_number", I),
        req("episode_object_concept_id", I),
        opt("episode_type_concept_id", I),
        opt("episode_source_value", S),
        opt("episode_source_concept_id", I),
    ],
};

pub const EPISODE_EVENT: Table = Table {
    name: "episode_event",
    essential: false,
    columns: &[
        req("episode_id", I),
        req("event_id", I),
        req("episode_event_field_concept_id", I),
    ],
};

pub const CONCEPT: Table = Table {
    name: "concept",
    essential: false,
    columns: &[
        req("concept_id", I),
        req("concept_name", S),
        req("domain_id", S),
        req("vocabulary_id", S),
        opt("concept_class_id", S),
        opt("standard_concept", S),
        req("concept_code", S),
        opt("valid_start_date", D),
        opt("valid_end_date", D),
        opt("invalid_reason", S),
    ],
};

pub const CONCEPT_ANCESTOR: Table = Table {
    name: "concept_ancestor",
    essential: false,
    columns: &[
        req("ancestor_concept_id", I),
        req("descendant_concept_id", I),
        opt("min_levels_of_separation", I),
        opt("max_levels_of_separation", I),
    ],
};

pub const CONCEPT_RELATIONSHIP: Table = Table {
    name: "concept_relationship",
    essential: false,
    columns: &[
        req("concept_id_1", I),
        req("concept_id_2", I),
        req("relationship_id", S),
        opt("valid_start_date", D),
        opt("valid_end_date", D),
        opt("invalid_reason", S),
    ],
};

pub const CONCEPT_SYNONYM: Table = Table {
    name: "concept_synonym",
    essential: false,
    columns: &[
        req("concept_id", I),
        req("concept_synonym_name", S),
        opt("language_concept_id", I),
    ],
};

pub const CDM_SOURCE: Table = Table {
    name: "cdm_source",
    essential: false,
    columns: &[
        opt("cdm_source_name", S),
        opt("cdm_source_abbreviation", S),
        opt("cdm_holder", S),
        opt("source_description", S),
        opt("source_documentation_reference", S),
        opt("cdm_etl_reference", S),
        opt("source_release_date", D),
        opt("cdm_release_date", D),
        opt("cdm_version", S),
        opt("cdm_version_concept_id", I),
        opt("vocabulary_version", S),
    ],
};

/// MI-CDM: one imaging study (a DICOM series) of a person.
pub const IMAGE_OCCURRENCE: Table = Table {
    name: "image_occurrence",
    essential: false,
    columns: &[
        req("image_occurrence_id", I),
        req("person_id", I),
        opt("procedure_occurrence_id", I),
        opt("visit_occurrence_id", I),
        opt("anatomic_site_concept_id", I),
        opt("wadors_uri", S),
        opt("local_path", S),
        req("image_occurrence_date", D),
        opt("image_study_uid", S),
        opt("image_series_uid", S),
        req("modality_concept_id", I),
    ],
};

/// MI-CDM: one feature measured on an image; its value lives in the row it points to
/// (`image_feature_event_id`, a `measurement_id` when the field concept is measurement's).
pub const IMAGE_FEATURE: Table = Table {
    name: "image_feature",
    essential: false,
    columns: &[
        req("image_feature_id", I),
        req("person_id", I),
        req("image_occurrence_id", I),
        opt("image_feature_event_field_concept_id", I),
        req("image_feature_event_id", I),
        req("image_feature_concept_id", I),
        opt("image_feature_type_concept_id", I),
        opt("image_finding_concept_id", I),
        opt("image_finding_id", I),
        opt("anatomic_site_concept_id", I),
        opt("alg_system", S),
        opt("alg_datetime", T),
    ],
};

/// Every table cohortql knows, in a fixed order.
pub const TABLES: [&Table; 22] = [
    &PERSON,
    &OBSERVATION_PERIOD,
    &VISIT_OCCURRENCE,
    &CONDITION_OCCURRENCE,
    &DRUG_EXPOSURE,
    &PROCEDURE_OCCURRENCE,
    &MEASUREMENT,
    &OBSERVATION,
    &DEATH,
    &DEVICE_EXPOSURE,
    &SPECIMEN,
    &DRUG_ERA,
    &CONDITION_ERA,
    &EPISODE,
    &EPISODE_EVENT,
    &CONCEPT,
    &CONCEPT_ANCESTOR,
    &CONCEPT_RELATIONSHIP,
    &CONCEPT_SYNONYM,
    &CDM_SOURCE,
    &IMAGE_OCCURRENCE,
    &IMAGE_FEATURE,
];

pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().copied().find(|t| t.name == name)
}
