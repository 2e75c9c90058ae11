//! `cohortql synth`: a deterministic synthetic OMOP CDM repository for oncology imaging, with
//! its own vocabulary, written a person at a time so memory stays bounded at any size.

mod filler;
mod person;
pub mod vocabulary;

use crate::repo::schema::{self, Table};
use crate::repo::write::{Cell, Layout, OutputFormat, TableWriter, WriteError};
use std::collections::HashMap;
use std::path::Path;

/// What to generate.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub persons: u64,
    pub seed: u64,
    pub format: OutputFormat,
    /// With more than the generator's own concepts: filler concepts (with synonyms and
    /// ancestors) up to this many concepts in all, the size of a full OHDSI vocabulary.
    pub full_vocabulary: u64,
}

/// Rows written per table.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SynthSummary {
    pub persons: u64,
    pub rows: Vec<(String, u64)>,
}

/// A table being written, with the columns the generator fills, in the order it gives them.
pub(crate) struct Out {
    writer: TableWriter,
    layout: Layout,
}

impl Out {
    fn create(
        dir: &Path,
        table: &'static Table,
        format: OutputFormat,
        columns: &[&str],
    ) -> Result<Out, WriteError> {
        let writer = TableWriter::create(dir, table, format)?;
        let layout = writer.layout(columns);
        Ok(Out { writer, layout })
    }

    pub(crate) fn push(&mut self, cells: &[Cell]) -> Result<(), WriteError> {
        self.writer.push_named(&self.layout, cells)
    }
}

/// Every table the generator writes, and the next id of each.
pub(crate) struct Tables {
    pub person: Out,
    pub observation_period: Out,
    pub visit: Out,
    pub condition: Out,
    pub drug: Out,
    pub procedure: Out,
    pub measurement: Out,
    pub observation: Out,
    pub death: Out,
    pub device: Out,
    pub specimen: Out,
    pub drug_era: Out,
    pub condition_era: Out,
    pub episode: Out,
    pub image_occurrence: Out,
    pub image_feature: Out,
    ids: HashMap<&'static str, i64>,
}

impl Tables {
    fn create(dir: &Path, f: OutputFormat) -> Result<Tables, WriteError> {
        use schema::*;
        Ok(Tables {
            person: Out::create(
                dir,
                &PERSON,
                f,
                &[
                    "person_id",
                    "gender_concept_id",
                    "year_of_birth",
                    "month_of_birth",
                    "day_of_birth",
                    "race_concept_id",
                    "ethnicity_concept_id",
                    "gender_source_value",
                ],
            )?,
            observation_period: Out::create(
                dir,
                &OBSERVATION_PERIOD,
                f,
                &[
                    "observation_period_id",
                    "person_id",
                    "observation_period_start_date",
                    "observation_period_end_date",
                    "period_type_concept_id",
                ],
            )?,
            visit: Out::create(
                dir,
                &VISIT_OCCURRENCE,
                f,
                &[
                    "visit_occurrence_id",
                    "person_id",
                    "visit_concept_id",
                    "visit_start_date",
                    "visit_end_date",
                    "visit_type_concept_id",
                ],
            )?,
            condition: Out::create(
                dir,
                &CONDITION_OCCURRENCE,
                f,
                &[
                    "condition_occurrence_id",
                    "person_id",
                    "condition_concept_id",
                    "condition_start_date",
                    "condition_end_date",
                    "condition_type_concept_id",
                    "visit_occurrence_id",
                    "condition_source_value",
                    "condition_source_concept_id",
                ],
            )?,
            drug: Out::create(
                dir,
                &DRUG_EXPOSURE,
                f,
                &[
                    "drug_exposure_id",
                    "person_id",
                    "drug_concept_id",
                    "drug_exposure_start_date",
                    "drug_exposure_end_date",
                    "drug_type_concept_id",
                    "refills",
                    "quantity",
                    "days_supply",
                    "visit_occurrence_id",
                ],
            )?,
            procedure: Out::create(
                dir,
                &PROCEDURE_OCCURRENCE,
                f,
                &[
                    "procedure_occurrence_id",
                    "person_id",
                    "procedure_concept_id",
                    "procedure_date",
                    "procedure_end_date",
                    "procedure_type_concept_id",
                    "visit_occurrence_id",
                ],
            )?,
            measurement: Out::create(
                dir,
                &MEASUREMENT,
                f,
                &[
                    "measurement_id",
                    "person_id",
                    "measurement_concept_id",
                    "measurement_date",
                    "measurement_type_concept_id",
                    "value_as_number",
                    "value_as_concept_id",
                    "unit_concept_id",
                    "range_low",
                    "range_high",
                    "visit_occurrence_id",
                ],
            )?,
            observation: Out::create(
                dir,
                &OBSERVATION,
                f,
                &[
                    "observation_id",
                    "person_id",
                    "observation_concept_id",
                    "observation_date",
                    "observation_type_concept_id",
                    "visit_occurrence_id",
                ],
            )?,
            death: Out::create(
                dir,
                &DEATH,
                f,
                &[
                    "person_id",
                    "death_date",
                    "death_type_concept_id",
                    "cause_concept_id",
                ],
            )?,
            device: Out::create(
                dir,
                &DEVICE_EXPOSURE,
                f,
                &[
                    "device_exposure_id",
                    "person_id",
                    "device_concept_id",
                    "device_exposure_start_date",
                    "device_type_concept_id",
                ],
            )?,
            specimen: Out::create(
                dir,
                &SPECIMEN,
                f,
                &[
                    "specimen_id",
                    "person_id",
                    "specimen_concept_id",
                    "specimen_type_concept_id",
                    "specimen_date",
                    "anatomic_site_concept_id",
                ],
            )?,
            drug_era: Out::create(
                dir,
                &DRUG_ERA,
                f,
                &[
                    "drug_era_id",
                    "person_id",
                    "drug_concept_id",
                    "drug_era_start_date",
                    "drug_era_end_date",
                    "drug_exposure_count",
                    "gap_days",
                ],
            )?,
            condition_era: Out::create(
                dir,
                &CONDITION_ERA,
                f,
                &[
                    "condition_era_id",
                    "person_id",
                    "condition_concept_id",
                    "condition_era_start_date",
                    "condition_era_end_date",
                    "condition_occurrence_count",
                ],
            )?,
            episode: Out::create(
                dir,
                &EPISODE,
                f,
                &[
                    "episode_id",
                    "person_id",
                    "episode_concept_id",
                    "episode_start_date",
                    "episode_end_date",
                    "episode_object_concept_id",
                    "episode_type_concept_id",
                ],
            )?,
            image_occurrence: Out::create(
                dir,
                &IMAGE_OCCURRENCE,
                f,
                &[
                    "image_occurrence_id",
                    "person_id",
                    "procedure_occurrence_id",
                    "visit_occurrence_id",
                    "anatomic_site_concept_id",
                    "image_occurrence_date",
                    "image_series_uid",
                    "modality_concept_id",
                ],
            )?,
            image_feature: Out::create(
                dir,
                &IMAGE_FEATURE,
                f,
                &[
                    "image_feature_id",
                    "person_id",
                    "image_occurrence_id",
                    "image_feature_event_field_concept_id",
                    "image_feature_event_id",
                    "image_feature_concept_id",
                    "image_feature_type_concept_id",
                    "anatomic_site_concept_id",
                    "alg_system",
                ],
            )?,
            ids: HashMap::new(),
        })
    }

    pub(crate) fn next_id(&mut self, table: &'static str) -> i64 {
        let id = self.ids.entry(table).or_insert(0);
        *id += 1;
        *id
    }

    fn finish(self, summary: &mut SynthSummary) -> Result<(), WriteError> {
        let outs = [
            ("person", self.person),
            ("observation_period", self.observation_period),
            ("visit_occurrence", self.visit),
            ("condition_occurrence", self.condition),
            ("drug_exposure", self.drug),
            ("procedure_occurrence", self.procedure),
            ("measurement", self.measurement),
            ("observation", self.observation),
            ("death", self.death),
            ("device_exposure", self.device),
            ("specimen", self.specimen),
            ("drug_era", self.drug_era),
            ("condition_era", self.condition_era),
            ("episode", self.episode),
            ("image_occurrence", self.image_occurrence),
            ("image_feature", self.image_feature),
        ];
        for (name, out) in outs {
            summary.rows.push((name.to_string(), out.writer.finish()?));
        }
        Ok(())
    }
}

/// Generates a repository into `out`, which must not exist yet or be an empty directory. The
/// files are written to a temporary sibling directory that is renamed at the end, so a failed
/// or interrupted run leaves no half-written repository. `progress` is told each person done.
pub fn generate(
    options: &SynthOptions,
    out: &Path,
    progress: &dyn Fn(u64),
) -> Result<SynthSummary, WriteError> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(WriteError(format!(
                "{} already exists and is not empty: choose a new directory",
                out.display()
            )));
        }
    }
    let tmp = crate::repo::write::hidden_sibling(out, "partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(|e| WriteError(format!("cannot create {}: {e}", tmp.display())))?;
    let result = write_all(options, &tmp, progress);
    match result {
        Ok(summary) => {
            if out.exists() {
                std::fs::remove_dir(out)
                    .map_err(|e| WriteError(format!("cannot replace {}: {e}", out.display())))?;
            }
            std::fs::rename(&tmp, out).map_err(|e| {
                WriteError(format!(
                    "cannot move the repository to {}: {e}",
                    out.display()
                ))
            })?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_all(
    options: &SynthOptions,
    dir: &Path,
    progress: &dyn Fn(u64),
) -> Result<SynthSummary, WriteError> {
    let mut summary = SynthSummary {
        persons: options.persons,
        rows: Vec::new(),
    };
    write_vocabulary(dir, options, &mut summary)?;
    let mut tables = Tables::create(dir, options.format)?;
    for id in 1..=options.persons {
        person::generate_person(options.seed, id as i64, &mut tables)?;
        if id % 1000 == 0 || id == options.persons {
            progress(id);
        }
    }
    tables.finish(&mut summary)?;
    summary.rows.sort();
    Ok(summary)
}

fn write_vocabulary(
    dir: &Path,
    options: &SynthOptions,
    summary: &mut SynthSummary,
) -> Result<(), WriteError> {
    let format = options.format;
    use vocabulary::CONCEPTS;
    use Cell::{Date, Int, Null, Str};
    let valid_from = person::day(1970, 1, 1);
    let valid_to = person::day(2099, 12, 31);
    let mut concept = Out::create(
        dir,
        &schema::CONCEPT,
        format,
        &[
            "concept_id",
            "concept_name",
            "domain_id",
            "vocabulary_id",
            "concept_class_id",
            "standard_concept",
            "concept_code",
            "valid_start_date",
            "valid_end_date",
        ],
    )?;
    for c in CONCEPTS {
        concept.push(&[
            Int(c.id),
            Str(c.name),
            Str(c.domain),
            Str(c.vocabulary),
            Str(c.class),
            if c.standard { Str("S") } else { Null },
            Str(c.code),
            Date(valid_from),
            Date(valid_to),
        ])?;
    }
    let mut ancestor = Out::create(
        dir,
        &schema::CONCEPT_ANCESTOR,
        format,
        &[
            "ancestor_concept_id",
            "descendant_concept_id",
            "min_levels_of_separation",
            "max_levels_of_separation",
        ],
    )?;
    for (a, d, level) in vocabulary::ancestry() {
        ancestor.push(&[Int(a), Int(d), Int(level), Int(level)])?;
    }
    let filler = options
        .full_vocabulary
        .saturating_sub(CONCEPTS.len() as u64);
    if filler > 0 {
        let mut synonym = Out::create(
            dir,
            &schema::CONCEPT_SYNONYM,
            format,
            &["concept_id", "concept_synonym_name", "language_concept_id"],
        )?;
        filler::write(
            filler,
            options.seed,
            (valid_from, valid_to),
            &mut concept,
            &mut synonym,
            &mut ancestor,
        )?;
        summary
            .rows
            .push(("concept_synonym".to_string(), synonym.writer.finish()?));
    }
    summary
        .rows
        .push(("concept".to_string(), concept.writer.finish()?));
    summary
        .rows
        .push(("concept_ancestor".to_string(), ancestor.writer.finish()?));

    let mut relationship = Out::create(
        dir,
        &schema::CONCEPT_RELATIONSHIP,
        format,
        &[
            "concept_id_1",
            "concept_id_2",
            "relationship_id",
            "valid_start_date",
            "valid_end_date",
        ],
    )?;
    let mut pairs: Vec<(i64, i64, &str)> = Vec::new();
    for c in CONCEPTS.iter().filter(|c| !c.standard) {
        let target = c.parent.expect("source concepts map to a standard concept");
        pairs.push((c.id, target, "Maps to"));
        pairs.push((target, c.id, "Mapped from"));
    }
    for c in CONCEPTS.iter().filter(|c| c.standard) {
        pairs.push((c.id, c.id, "Maps to"));
    }
    pairs.sort();
    for (a, b, r) in pairs {
        relationship.push(&[Int(a), Int(b), Str(r), Date(valid_from), Date(valid_to)])?;
    }
    summary.rows.push((
        "concept_relationship".to_string(),
        relationship.writer.finish()?,
    ));

    let mut source = Out::create(
        dir,
        &schema::CDM_SOURCE,
        format,
        &[
            "cdm_source_name",
            "cdm_source_abbreviation",
            "cdm_holder",
            "source_description",
            "cdm_release_date",
            "cdm_version",
            "vocabulary_version",
        ],
    )?;
    source.push(&[
        Str("cohortql synthetic oncology imaging repository"),
        Str("cohortql-synth"),
        Str("cohortql"),
        Str("Synthetic persons generated by `cohortql synth`; no real patient is described."),
        Date(person::day(2026, 1, 1)),
        Str("v5.4"),
        Str("cohortql synthetic vocabulary 1"),
    ])?;
    summary
        .rows
        .push(("cdm_source".to_string(), source.writer.finish()?));
    Ok(())
}
