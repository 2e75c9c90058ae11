//! One synthetic person's history: demographics, observation periods, visits, chronic disease,
//! NSAID use and GI bleeding, breast, prostate and lung cancer pathways with imaging and
//! radiomic features, and death that depends on disease, stage, age and tumour texture.
//!
//! Every record lies inside an observation period, after birth and not after death, so the
//! generated repository passes `repo check` cleanly.

use super::vocabulary as v;
use super::Tables;
use crate::repo::write::{Cell, WriteError};
use chrono::{Datelike, NaiveDate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, Poisson, StandardNormal};
use std::collections::BTreeMap;

/// Days since 1970-01-01.
pub type Day = i32;

pub fn day(y: i32, m: u32, d: u32) -> Day {
    let date = NaiveDate::from_ymd_opt(y, m, d).expect("valid date");
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")).num_days() as Day
}

fn date_of(d: Day) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date") + chrono::Duration::days(d as i64)
}

/// The first and last day of data in the synthetic repository.
pub fn data_start() -> Day {
    day(2005, 1, 1)
}
pub fn data_end() -> Day {
    day(2024, 12, 31)
}

struct Period {
    start: Day,
    end: Day,
}

/// Generates one person into the tables; `id` seeds the person's own random stream, so a
/// person's history does not depend on how many others are generated.
pub fn generate_person(seed: u64, id: i64, out: &mut Tables) -> Result<(), WriteError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id as u64);
    let mut p = Person::new(id, &mut rng);
    p.history(&mut rng);
    p.write(out)
}

struct Visit {
    id_slot: usize,
    date: Day,
    end: Day,
    kind: i64,
}

struct Condition {
    concept: i64,
    source: i64,
    start: Day,
    end: Option<Day>,
    visit: Option<usize>,
}

struct Drug {
    concept: i64,
    start: Day,
    end: Day,
    days_supply: i64,
    refills: i64,
    visit: Option<usize>,
}

struct Procedure {
    concept: i64,
    date: Day,
    visit: Option<usize>,
}

struct Measurement {
    concept: i64,
    date: Day,
    number: Option<f64>,
    value_concept: Option<i64>,
    unit: Option<i64>,
    range: Option<(f64, f64)>,
    visit: Option<usize>,
}

struct Observation {
    concept: i64,
    date: Day,
    visit: Option<usize>,
}

struct Episode {
    kind: i64,
    object: i64,
    start: Day,
    end: Option<Day>,
}

struct Image {
    modality: i64,
    site: i64,
    date: Day,
    /// The imaging procedure, recorded with the image.
    procedure: i64,
    visit: Option<usize>,
    /// (feature concept, value)
    features: Vec<(i64, f64)>,
}

struct Person {
    id: i64,
    female: bool,
    birth: Day,
    year_of_birth: i32,
    periods: Vec<Period>,
    death: Option<(Day, i64)>,
    visits: Vec<Visit>,
    visit_by_day: BTreeMap<Day, usize>,
    conditions: Vec<Condition>,
    drugs: Vec<Drug>,
    procedures: Vec<Procedure>,
    measurements: Vec<Measurement>,
    observations: Vec<Observation>,
    episodes: Vec<Episode>,
    images: Vec<Image>,
    devices: Vec<(i64, Day)>,
    specimens: Vec<(i64, Day)>,
}

fn normal(rng: &mut ChaCha8Rng, mean: f64, sd: f64) -> f64 {
    let z: f64 = StandardNormal.sample(rng);
    mean + sd * z
}

fn uniform(rng: &mut ChaCha8Rng, low: i32, high: i32) -> i32 {
    if high <= low {
        low
    } else {
        rng.random_range(low..=high)
    }
}

/// A category from 1 to `weights.len()`, drawn with these weights (summing to 1).
fn category(rng: &mut ChaCha8Rng, weights: &[f64]) -> i64 {
    let x: f64 = rng.random();
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if x < acc {
            return i as i64 + 1;
        }
    }
    weights.len() as i64
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

impl Person {
    fn new(id: i64, rng: &mut ChaCha8Rng) -> Person {
        let female = rng.random_bool(0.52);
        // Age on 1 January 2005 between 18 and 90, more of them middle-aged.
        let age = 18 + ((rng.random::<f64>() + rng.random::<f64>()) / 2.0 * 72.0) as i32;
        let year_of_birth = 2005 - age;
        let birth = day(year_of_birth, 1, 1) + uniform(rng, 0, 364);
        let start = data_start() + uniform(rng, 0, 3650);
        let length = uniform(rng, 2 * 365, 15 * 365);
        let mut periods = vec![Period {
            start,
            end: (start + length).min(data_end()),
        }];
        if rng.random_bool(0.12) {
            let s = periods[0].end + uniform(rng, 60, 720);
            if s < data_end() - 365 {
                periods.push(Period {
                    start: s,
                    end: (s + uniform(rng, 365, 5 * 365)).min(data_end()),
                });
            }
        }
        Person {
            id,
            female,
            birth,
            year_of_birth,
            periods,
            death: None,
            visits: Vec::new(),
            visit_by_day: BTreeMap::new(),
            conditions: Vec::new(),
            drugs: Vec::new(),
            procedures: Vec::new(),
            measurements: Vec::new(),
            observations: Vec::new(),
            episodes: Vec::new(),
            images: Vec::new(),
            devices: Vec::new(),
            specimens: Vec::new(),
        }
    }

    fn age_at(&self, d: Day) -> f64 {
        (d - self.birth) as f64 / 365.25
    }

    fn last_day(&self) -> Day {
        let end = self.periods.last().map_or(data_end(), |p| p.end);
        self.death.map_or(end, |(d, _)| d.min(end))
    }

    fn observed(&self, d: Day) -> bool {
        d >= self.birth
            && self.death.is_none_or(|(x, _)| d <= x)
            && self.periods.iter().any(|p| d >= p.start && d <= p.end)
    }

    fn period_end(&self, d: Day) -> Day {
        let end = self
            .periods
            .iter()
            .find(|p| d >= p.start && d <= p.end)
            .map_or(d, |p| p.end);
        self.death.map_or(end, |(x, _)| end.min(x))
    }

    /// A day in the observed history at least `before` days after the start of observation and
    /// at least `after` days before its end, if there is one.
    fn observed_day(&self, rng: &mut ChaCha8Rng, before: i32, after: i32) -> Option<Day> {
        let p = &self.periods[0];
        let (low, high) = (p.start + before, p.end - after);
        (low <= high).then(|| uniform(rng, low, high))
    }

    /// The visit on a day, created if needed; `None` when the day is not observed.
    fn visit(&mut self, d: Day, kind: i64, rng: &mut ChaCha8Rng) -> Option<usize> {
        if !self.observed(d) {
            return None;
        }
        if let Some(&i) = self.visit_by_day.get(&d) {
            return Some(i);
        }
        let end = if kind == v::INPATIENT {
            (d + uniform(rng, 1, 7)).min(self.period_end(d))
        } else {
            d
        };
        let i = self.visits.len();
        self.visits.push(Visit {
            id_slot: i,
            date: d,
            end,
            kind,
        });
        self.visit_by_day.insert(d, i);
        Some(i)
    }

    fn condition(&mut self, concept: i64, source: i64, d: Day, kind: i64, rng: &mut ChaCha8Rng) {
        if let Some(visit) = self.visit(d, kind, rng) {
            let end = if rng.random_bool(0.7) {
                Some((d + uniform(rng, 0, 30)).min(self.period_end(d)))
            } else {
                None
            };
            self.conditions.push(Condition {
                concept,
                source,
                start: d,
                end,
                visit: Some(visit),
            });
        }
    }

    fn drug(
        &mut self,
        concept: i64,
        start: Day,
        days_supply: i64,
        refills: i64,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        if !self.observed(start) {
            return false;
        }
        let visit = if rng.random_bool(0.5) {
            self.visit(start, v::OUTPATIENT, rng)
        } else {
            None
        };
        let end = (start + days_supply as i32 - 1).min(self.period_end(start));
        self.drugs.push(Drug {
            concept,
            start,
            end,
            days_supply,
            refills,
            visit,
        });
        true
    }

    fn procedure(&mut self, concept: i64, d: Day, rng: &mut ChaCha8Rng) -> Option<usize> {
        let visit = self.visit(d, v::OUTPATIENT, rng)?;
        self.procedures.push(Procedure {
            concept,
            date: d,
            visit: Some(visit),
        });
        Some(self.procedures.len() - 1)
    }

    // The arguments are the columns of one measurement row.
    #[allow(clippy::too_many_arguments)]
    fn measure(
        &mut self,
        concept: i64,
        d: Day,
        number: Option<f64>,
        value_concept: Option<i64>,
        unit: Option<i64>,
        range: Option<(f64, f64)>,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        match self.visit(d, v::OUTPATIENT, rng) {
            Some(visit) => {
                self.measurements.push(Measurement {
                    concept,
                    date: d,
                    number,
                    value_concept,
                    unit,
                    range,
                    visit: Some(visit),
                });
                true
            }
            None => false,
        }
    }

    fn observe(&mut self, concept: i64, d: Day, rng: &mut ChaCha8Rng) {
        if let Some(visit) = self.visit(d, v::OUTPATIENT, rng) {
            self.observations.push(Observation {
                concept,
                date: d,
                visit: Some(visit),
            });
        }
    }

    fn image(
        &mut self,
        modality: i64,
        site: i64,
        procedure: i64,
        d: Day,
        features: Vec<(i64, f64)>,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        match self.visit(d, v::OUTPATIENT, rng) {
            Some(visit) => {
                self.images.push(Image {
                    modality,
                    site,
                    date: d,
                    procedure,
                    visit: Some(visit),
                    features,
                });
                true
            }
            None => false,
        }
    }

    /// Death from background mortality (rising with age) or from a disease hazard starting at
    /// `from` with the given yearly rate; the earlier wins. Clips observation at death.
    fn consider_death(&mut self, rng: &mut ChaCha8Rng, disease: Option<(Day, f64, i64)>) {
        let start = self.periods[0].start;
        let end = self.periods.last().map_or(start, |p| p.end);
        let mut candidate: Option<(Day, i64)> = self.death;
        // Background: yearly probability 0.0004 * exp(0.085 * (age - 30)).
        let mut year_start = start;
        while year_start <= end && candidate.is_none_or(|(d, _)| year_start < d) {
            let age = self.age_at(year_start);
            let p = (0.0004 * (0.085 * (age - 30.0)).exp()).min(0.5);
            if rng.random_bool(p) {
                let d = year_start + uniform(rng, 0, 364);
                if d <= end {
                    candidate =
                        Some(candidate.map_or((d, 0), |c| if d < c.0 { (d, 0) } else { c }));
                }
                break;
            }
            year_start += 365;
        }
        // A death between two observation periods would be unobserved: it is not recorded.
        if let Some((d, _)) = candidate {
            if !self.periods.iter().any(|p| d >= p.start && d <= p.end) {
                candidate = None;
            }
        }
        if let Some((from, yearly_rate, cause)) = disease {
            let t: f64 = Exp1.sample(rng);
            let d = from + (t / yearly_rate * 365.25) as Day;
            let observed = self.periods.iter().any(|p| d >= p.start && d <= p.end);
            if observed && candidate.is_none_or(|(c, _)| d < c) {
                candidate = Some((d, cause));
            }
        }
        self.death = candidate;
    }

    fn history(&mut self, rng: &mut ChaCha8Rng) {
        // Routine care: outpatient visits, with BMI and kidney function now and then.
        let first = self.periods[0].start;
        let spans: Vec<(Day, Day)> = self.periods.iter().map(|p| (p.start, p.end)).collect();
        for (start, end) in spans {
            let years = ((end - start) as f64 / 365.25).max(0.1);
            let n: f64 = Poisson::new(2.5 * years)
                .expect("positive rate")
                .sample(rng);
            for _ in 0..n as u32 {
                let d = uniform(rng, start, end);
                if self.visit(d, v::OUTPATIENT, rng).is_some() {
                    if rng.random_bool(0.25) {
                        let bmi = round(normal(rng, 27.0, 4.5).clamp(15.0, 55.0), 1);
                        self.measure(
                            v::BMI,
                            d,
                            Some(bmi),
                            None,
                            Some(v::KG_PER_M2),
                            Some((18.5, 25.0)),
                            rng,
                        );
                    }
                    if rng.random_bool(0.12) {
                        let age = self.age_at(d);
                        let egfr = round(normal(rng, 105.0 - 0.7 * age, 15.0).clamp(8.0, 140.0), 0);
                        self.measure(
                            v::EGFR,
                            d,
                            Some(egfr),
                            None,
                            Some(v::ML_MIN_173),
                            Some((60.0, 140.0)),
                            rng,
                        );
                    }
                }
            }
        }
        let age0 = self.age_at(first);

        // Chronic conditions, each recorded again at some later visits.
        let chronic: [(i64, i64, f64); 4] = [
            (v::T2DM, v::ICD10_E11_9, 0.06 + 0.002 * age0),
            (v::HYPERTENSION, v::ICD10_I10, 0.1 + 0.005 * age0),
            (v::COPD, v::ICD10_J44_9, 0.05),
            (v::RHEUMATOID, v::ICD10_M05_9, 0.02),
        ];
        let mut has_copd = false;
        for (concept, source, p) in chronic {
            if rng.random_bool(p.min(0.9)) {
                if let Some(d) = self.observed_day(rng, 0, 30) {
                    self.condition(concept, source, d, v::OUTPATIENT, rng);
                    has_copd |= concept == v::COPD;
                    let later: Vec<Day> =
                        self.visit_by_day.range(d + 1..).map(|(k, _)| *k).collect();
                    for k in later {
                        if rng.random_bool(0.3) {
                            self.condition(concept, source, k, v::OUTPATIENT, rng);
                        }
                    }
                    if concept == v::T2DM {
                        self.prescriptions(v::METFORMIN_500, d, 90, 6, rng);
                    }
                    if concept == v::HYPERTENSION && rng.random_bool(0.5) {
                        self.prescriptions(v::SIMVASTATIN_40, d, 90, 4, rng);
                    }
                }
            }
        }

        // Cancer pathways decide a disease hazard for death.
        let mut disease: Option<(Day, f64, i64)> = None;
        if self.female && rng.random_bool(0.09) {
            disease = self.breast_cancer(rng);
        }
        if !self.female && age0 >= 40.0 && rng.random_bool(0.18) {
            disease = self.prostate_pathway(rng).or(disease);
        }
        if rng.random_bool(if has_copd { 0.12 } else { 0.035 }) {
            disease = self.lung_cancer(rng).or(disease);
        }
        self.consider_death(rng, disease);

        // Osteoarthritis, NSAID new use and GI bleeding: diclofenac carries more risk.
        if rng.random_bool((0.1 + 0.006 * age0).min(0.7)) {
            self.arthritis_and_nsaids(rng);
        }
        if rng.random_bool(0.01) {
            if let Some(d) = self.observed_day(rng, 0, 0) {
                self.condition(v::GI_BLEED, v::ICD10_K92_2, d, v::EMERGENCY, rng);
            }
        }

        // Consent for research, recorded from 2021 on.
        if rng.random_bool(0.6) {
            let from = day(2021, 1, 1);
            if let Some((&d, _)) = self.visit_by_day.range(from..).next() {
                self.observe(v::RESEARCH_CONSENT, d, rng);
            }
        }
        self.drop_after_death();
    }

    fn prescriptions(
        &mut self,
        drug: i64,
        from: Day,
        days_supply: i64,
        mean_fills: i64,
        rng: &mut ChaCha8Rng,
    ) {
        let fills = 1 + (rng.random::<f64>() * (2 * mean_fills) as f64) as i64;
        let mut start = from;
        for k in 0..fills {
            if !self.drug(drug, start, days_supply, fills - k - 1, rng) {
                break;
            }
            start += days_supply as Day + uniform(rng, -5, 25);
        }
    }

    fn arthritis_and_nsaids(&mut self, rng: &mut ChaCha8Rng) {
        let Some(d) = self.observed_day(rng, 30, 60) else {
            return;
        };
        let (concept, source) = match uniform(rng, 0, 3) {
            0 => (v::OA_KNEE, v::ICD10_M17_1),
            1 => (v::OA_HIP, v::ICD10_M16_1),
            2 => (v::OA_KNEE, v::ICD10CM_M17_11),
            _ => (v::OSTEOARTHRITIS, v::ICD10CM_M19_90),
        };
        self.condition(concept, source, d, v::OUTPATIENT, rng);
        if !rng.random_bool(0.75) {
            return;
        }
        let start = d + uniform(rng, 0, 120);
        let (drug, risk) = match uniform(rng, 0, 9) {
            0..=5 => (v::CELECOXIB_200, 1.0),
            6..=8 => (v::DICLOFENAC_75, 2.2),
            _ => (v::IBUPROFEN_400, 1.5),
        };
        if rng.random_bool(0.2) {
            self.prescriptions(v::OMEPRAZOLE_20, start, 30, 3, rng);
        }
        let fills = 1 + (rng.random::<f64>() * 6.0) as i64;
        let mut s = start;
        let mut last_end = start;
        for k in 0..fills {
            if !self.drug(drug, s, 30, fills - k - 1, rng) {
                break;
            }
            last_end = s + 29;
            s += 30 + uniform(rng, 0, 20);
        }
        // GI bleeding during or after exposure, more often with more exposure and age.
        let yearly = 0.015 * risk * (1.0 + (self.age_at(start) - 50.0).max(0.0) / 30.0);
        let t: f64 = Exp1.sample(rng);
        let bleed = start + (t / yearly * 365.25) as Day;
        if bleed <= last_end + 365 {
            let (c, src) = match uniform(rng, 0, 3) {
                0 => (v::UPPER_GI_BLEED, v::ICD10_K92_2),
                1 => (v::LOWER_GI_BLEED, v::ICD10_K92_1),
                2 => (v::GASTRIC_ULCER_BLEED, v::ICD10_K25_4),
                _ => (v::GI_BLEED, v::ICD10CM_K92_2),
            };
            self.condition(c, src, bleed, v::INPATIENT, rng);
        }
    }

    /// A first diagnosis of cancer: the condition, its first-occurrence episode, and a stage
    /// drawn with these weights for stages 1 to 4, recorded as a measurement and returned.
    fn diagnose(
        &mut self,
        concept: i64,
        source: i64,
        d: Day,
        stage_weights: &[f64],
        rng: &mut ChaCha8Rng,
    ) -> i64 {
        self.condition(concept, source, d, v::OUTPATIENT, rng);
        self.episodes.push(Episode {
            kind: v::FIRST_OCCURRENCE,
            object: concept,
            start: d,
            end: None,
        });
        let stage = category(rng, stage_weights);
        self.measure(
            v::STAGE_GROUP,
            d,
            Some(stage as f64),
            None,
            Some(v::SCORE),
            None,
            rng,
        );
        stage
    }

    fn breast_cancer(&mut self, rng: &mut ChaCha8Rng) -> Option<(Day, f64, i64)> {
        let d = self.observed_day(rng, 120, 365)?;
        let (concept, source) = if rng.random_bool(0.6) {
            (v::BREAST_UOQ, v::ICD10_C50_4)
        } else {
            (v::BREAST_CENTRAL, v::ICD10_C50_1)
        };
        let stage = self.diagnose(concept, source, d, &[0.3, 0.35, 0.25, 0.1], rng);
        let her2 = rng.random_bool(0.2);
        let er = rng.random_bool(0.7);
        let status = |b: bool| Some(if b { v::POSITIVE } else { v::NEGATIVE });
        let test_day = d + uniform(rng, 0, 7);
        self.measure(v::HER2, test_day, None, status(her2), None, None, rng);
        self.measure(v::ER, test_day, None, status(er), None, None, rng);
        self.measure(
            v::PR,
            test_day,
            None,
            status(er && rng.random_bool(0.8)),
            None,
            None,
            rng,
        );
        let ki67 = round(
            normal(rng, if er { 18.0 } else { 40.0 }, 12.0).clamp(1.0, 95.0),
            0,
        );
        self.measure(
            v::KI67,
            test_day,
            Some(ki67),
            None,
            Some(v::PERCENT),
            None,
            rng,
        );
        let mammo = d - uniform(rng, 7, 30);
        self.image(
            v::MODALITY_MG,
            v::SITE_BREAST,
            v::MAMMOGRAPHY,
            mammo,
            Vec::new(),
            rng,
        );

        // Baseline MRI with radiomic features; lower entropy goes with response and survival.
        let entropy = round(normal(rng, 5.0 + 0.15 * (stage as f64 - 2.0), 0.6), 4);
        let contrast = round(normal(rng, 3.0, 0.8).exp(), 3);
        let sphericity = round(
            (0.75 - 0.05 * stage as f64 + normal(rng, 0.0, 0.07)).clamp(0.2, 0.98),
            4,
        );
        let mri = d - uniform(rng, 3, 40);
        let features = vec![
            (v::ENTROPY, entropy),
            (v::GLCM_CONTRAST, contrast),
            (v::SPHERICITY, sphericity),
        ];
        self.image(
            v::MODALITY_MR,
            v::SITE_BREAST,
            v::MRI_BREAST,
            mri,
            features,
            rng,
        );

        let neoadjuvant =
            (2..=3).contains(&stage) && rng.random_bool(0.75) || stage == 4 && rng.random_bool(0.4);
        let surgery_day;
        if neoadjuvant {
            let c = d + uniform(rng, 14, 35);
            self.devices.push((v::PORT, c - 3));
            let regimen = if her2 {
                v::REGIMEN_AC_TH
            } else {
                v::REGIMEN_AC_T
            };
            self.episodes.push(Episode {
                kind: v::TREATMENT_REGIMEN,
                object: regimen,
                start: c,
                end: Some(c + 20 * 7),
            });
            for k in 0..4 {
                let cycle = c + 21 * k;
                self.drug(v::DOXORUBICIN_INJ, cycle, 1, 0, rng);
                self.drug(v::CYCLOPHOSPHAMIDE_INJ, cycle, 1, 0, rng);
            }
            for k in 0..12 {
                self.drug(v::PACLITAXEL_INJ, c + 84 + 7 * k, 1, 0, rng);
            }
            if her2 {
                for k in 0..6 {
                    self.drug(v::TRASTUZUMAB_INJ, c + 84 + 21 * k, 1, 0, rng);
                }
            }
            surgery_day = c + uniform(rng, 175, 210);
            let logit = -1.3 + 1.6 * her2 as i64 as f64 + 0.9 * (!er) as i64 as f64
                - 1.1 * (entropy - 5.0) / 0.6;
            let p = 1.0 / (1.0 + (-logit).exp());
            if rng.random_bool(p.clamp(0.0, 1.0)) {
                let pcr_day = surgery_day + uniform(rng, 7, 21);
                self.observe(v::PCR, pcr_day, rng);
            }
        } else {
            surgery_day = d + uniform(rng, 20, 60);
        }
        if stage < 4 || rng.random_bool(0.3) {
            let surgery = if rng.random_bool(0.45) {
                v::MASTECTOMY
            } else {
                v::LUMPECTOMY
            };
            self.procedure(surgery, surgery_day, rng);
        }
        let rate = [0.01, 0.03, 0.08, 0.35][stage as usize - 1]
            * (0.5 * (entropy - 5.0) / 0.6).exp()
            * if her2 { 0.8 } else { 1.0 };
        Some((d, rate, concept))
    }

    fn prostate_pathway(&mut self, rng: &mut ChaCha8Rng) -> Option<(Day, f64, i64)> {
        let d = self.observed_day(rng, 400, 200)?;
        // A latent cancer drives PSA, the PI-RADS category and the biopsy grade.
        let significant = rng.random_bool(0.22);
        let indolent = !significant && rng.random_bool(0.2);
        let psa_mean = if significant {
            8.0
        } else if indolent {
            5.0
        } else {
            3.0
        };
        let psa = round((normal(rng, psa_mean, 0.5 * psa_mean)).max(0.2), 2);
        if rng.random_bool(0.5) {
            let earlier = d - uniform(rng, 200, 380);
            let old = round((psa * normal(rng, 0.75, 0.1)).max(0.1), 2);
            self.measure(
                v::PSA,
                earlier,
                Some(old),
                None,
                Some(v::NG_PER_ML),
                Some((0.0, 4.0)),
                rng,
            );
        }
        self.measure(
            v::PSA,
            d,
            Some(psa),
            None,
            Some(v::NG_PER_ML),
            Some((0.0, 4.0)),
            rng,
        );
        if psa < 3.0 {
            return None;
        }
        let mri = d + uniform(rng, 14, 60);
        let pirads_weights: [f64; 5] = if significant {
            [0.02, 0.05, 0.15, 0.4, 0.38]
        } else if indolent {
            [0.1, 0.3, 0.3, 0.2, 0.1]
        } else {
            [0.25, 0.4, 0.2, 0.12, 0.03]
        };
        let pirads = category(rng, &pirads_weights);
        let adc_entropy = round(normal(rng, 4.0 + 0.35 * pirads as f64, 0.4), 4);
        if !self.image(
            v::MODALITY_MR,
            v::SITE_PROSTATE,
            v::MRI_PROSTATE,
            mri,
            vec![(v::ENTROPY, adc_entropy)],
            rng,
        ) {
            return None;
        }
        self.measure(
            v::PIRADS,
            mri,
            Some(pirads as f64),
            None,
            Some(v::SCORE),
            None,
            rng,
        );
        let biopsied = rng.random_bool(if pirads >= 3 { 0.9 } else { 0.45 });
        if !biopsied {
            return None;
        }
        let biopsy = mri + uniform(rng, 7, 60);
        self.procedure(v::PROSTATE_BIOPSY, biopsy, rng)?;
        self.specimens.push((v::PROSTATE_TISSUE, biopsy));
        let grade = if significant {
            uniform(rng, 2, 5) as f64
        } else if indolent {
            1.0
        } else {
            0.0
        };
        self.measure(
            v::GRADE_GROUP,
            biopsy + 5,
            Some(grade),
            None,
            Some(v::SCORE),
            None,
            rng,
        );
        if grade >= 1.0 {
            let dx = biopsy + 7;
            self.condition(v::PROSTATE_ADENO, v::ICD10_C61, dx, v::OUTPATIENT, rng);
            self.episodes.push(Episode {
                kind: v::FIRST_OCCURRENCE,
                object: v::PROSTATE_ADENO,
                start: dx,
                end: None,
            });
            let rate = if grade >= 4.0 { 0.06 } else { 0.01 };
            return Some((dx, rate, v::PROSTATE_ADENO));
        }
        None
    }

    fn lung_cancer(&mut self, rng: &mut ChaCha8Rng) -> Option<(Day, f64, i64)> {
        let d = self.observed_day(rng, 400, 90)?;
        let small_cell = rng.random_bool(0.15);
        let (concept, source) = if small_cell {
            (v::SCLC, v::ICD10_C34_9)
        } else {
            (v::NSCLC, v::ICD10_C34_1)
        };
        let stage = self.diagnose(concept, source, d, &[0.2, 0.15, 0.3, 0.35], rng);
        let entropy = round(normal(rng, 4.5, 0.7), 4);
        let contrast = round(normal(rng, 2.5, 0.9).exp(), 3);
        let sphericity = round(normal(rng, 0.6, 0.12).clamp(0.1, 0.98), 4);
        let ct = d - uniform(rng, 3, 40);
        let features = vec![
            (v::ENTROPY, entropy),
            (v::GLCM_CONTRAST, contrast),
            (v::SPHERICITY, sphericity),
        ];
        self.image(v::MODALITY_CT, v::SITE_LUNG, v::CT_CHEST, ct, features, rng);
        if stage >= 3 && rng.random_bool(0.7) {
            let c = d + uniform(rng, 14, 42);
            let egfr = round(normal(rng, 80.0, 18.0).clamp(15.0, 130.0), 0);
            self.measure(
                v::EGFR,
                c - 2,
                Some(egfr),
                None,
                Some(v::ML_MIN_173),
                Some((60.0, 140.0)),
                rng,
            );
            let platinum = if egfr >= 60.0 && rng.random_bool(0.5) {
                v::CISPLATIN_INJ
            } else {
                v::CARBOPLATIN_INJ
            };
            self.episodes.push(Episode {
                kind: v::TREATMENT_REGIMEN,
                object: v::REGIMEN_CARBO_PACLI,
                start: c,
                end: Some(c + 84),
            });
            for k in 0..4 {
                self.drug(platinum, c + 21 * k, 1, 0, rng);
                self.drug(v::PACLITAXEL_INJ, c + 21 * k, 1, 0, rng);
            }
        }
        let base = [0.12, 0.25, 0.55, 1.1][stage as usize - 1];
        let rate = base
            * (0.6 * (entropy - 4.5) / 0.7).exp()
            * (-1.5 * (sphericity - 0.6)).exp()
            * if small_cell { 1.6 } else { 1.0 };
        Some((d, rate, concept))
    }

    /// Records after death are not observed; observation periods end at death. Records that
    /// were planned on unobserved days are dropped.
    fn drop_after_death(&mut self) {
        let episodes = std::mem::take(&mut self.episodes);
        self.episodes = episodes
            .into_iter()
            .filter(|e| self.observed(e.start))
            .collect();
        let devices = std::mem::take(&mut self.devices);
        self.devices = devices.into_iter().filter(|x| self.observed(x.1)).collect();
        let specimens = std::mem::take(&mut self.specimens);
        self.specimens = specimens
            .into_iter()
            .filter(|x| self.observed(x.1))
            .collect();
        let ends: Vec<Option<Day>> = self
            .episodes
            .iter()
            .map(|e| e.end.map(|x| x.min(self.period_end(e.start))))
            .collect();
        for (e, end) in self.episodes.iter_mut().zip(ends) {
            e.end = end;
        }
        let Some((death, _)) = self.death else { return };
        for p in &mut self.periods {
            p.end = p.end.min(death);
        }
        self.periods.retain(|p| p.start <= p.end);
        let last = self.last_day();
        let keep = |d: Day| d <= last;
        self.conditions.retain(|c| keep(c.start));
        for c in &mut self.conditions {
            c.end = c.end.map(|e| e.min(last));
        }
        self.drugs.retain(|x| keep(x.start));
        for x in &mut self.drugs {
            x.end = x.end.min(last);
        }
        self.procedures.retain(|x| keep(x.date));
        self.measurements.retain(|x| keep(x.date));
        self.observations.retain(|x| keep(x.date));
        self.episodes.retain(|x| keep(x.start));
        for x in &mut self.episodes {
            x.end = x.end.map(|e| e.min(last));
        }
        self.images.retain(|x| keep(x.date));
        self.devices.retain(|x| keep(x.1));
        self.specimens.retain(|x| keep(x.1));
        for x in &mut self.visits {
            x.end = x.end.min(last);
        }
    }

    fn write(self, out: &mut Tables) -> Result<(), WriteError> {
        use Cell::{Date, Float, Int, Null};
        let id = self.id;
        let opt_int = |x: Option<i64>| x.map_or(Null, Int);
        let birth = date_of(self.birth);
        out.person.push(&[
            Int(id),
            Int(if self.female { v::FEMALE } else { v::MALE }),
            Int(self.year_of_birth as i64),
            Int(birth.month() as i64),
            Int(birth.day() as i64),
            Int(0),
            Int(0),
            Cell::Str(if self.female { "F" } else { "M" }),
        ])?;
        for p in &self.periods {
            let op = out.next_id("observation_period");
            out.observation_period.push(&[
                Int(op),
                Int(id),
                Date(p.start),
                Date(p.end),
                Int(v::EHR),
            ])?;
        }
        // Visits that hold no surviving record are dropped, and ids are given in date order.
        let mut visit_ids: Vec<Option<i64>> = vec![None; self.visits.len()];
        let mut order: Vec<&Visit> = self
            .visits
            .iter()
            .filter(|x| x.date <= self.last_day())
            .collect();
        order.sort_by_key(|x| (x.date, x.id_slot));
        for x in order {
            let vid = out.next_id("visit_occurrence");
            visit_ids[x.id_slot] = Some(vid);
            out.visit.push(&[
                Int(vid),
                Int(id),
                Int(x.kind),
                Date(x.date),
                Date(x.end),
                Int(v::EHR),
            ])?;
        }
        let visit = |slot: Option<usize>| slot.and_then(|s| visit_ids[s]).map_or(Null, Int);
        for c in &self.conditions {
            let cid = out.next_id("condition_occurrence");
            let code = v::concept(c.source).code;
            out.condition.push(&[
                Int(cid),
                Int(id),
                Int(c.concept),
                Date(c.start),
                c.end.map_or(Null, Date),
                Int(v::EHR),
                visit(c.visit),
                Cell::Str(code),
                Int(c.source),
            ])?;
        }
        for x in &self.drugs {
            let did = out.next_id("drug_exposure");
            out.drug.push(&[
                Int(did),
                Int(id),
                Int(x.concept),
                Date(x.start),
                Date(x.end),
                Int(v::EHR),
                Int(x.refills),
                Float(x.days_supply as f64),
                Int(x.days_supply),
                visit(x.visit),
            ])?;
        }
        for x in &self.procedures {
            let pid = out.next_id("procedure_occurrence");
            out.procedure.push(&[
                Int(pid),
                Int(id),
                Int(x.concept),
                Date(x.date),
                Date(x.date),
                Int(v::EHR),
                visit(x.visit),
            ])?;
        }
        for m in &self.measurements {
            let mid = out.next_id("measurement");
            let (low, high) = m.range.map_or((Null, Null), |(l, h)| (Float(l), Float(h)));
            out.measurement.push(&[
                Int(mid),
                Int(id),
                Int(m.concept),
                Date(m.date),
                Int(v::EHR),
                m.number.map_or(Null, Float),
                opt_int(m.value_concept),
                opt_int(m.unit),
                low,
                high,
                visit(m.visit),
            ])?;
        }
        for o in &self.observations {
            let oid = out.next_id("observation");
            out.observation.push(&[
                Int(oid),
                Int(id),
                Int(o.concept),
                Date(o.date),
                Int(v::EHR),
                visit(o.visit),
            ])?;
        }
        for img in &self.images {
            let proc_id = out.next_id("procedure_occurrence");
            let proc_visit = visit(img.visit);
            out.procedure.push(&[
                Int(proc_id),
                Int(id),
                Int(img.procedure),
                Date(img.date),
                Date(img.date),
                Int(v::EHR),
                proc_visit.clone(),
            ])?;
            let iid = out.next_id("image_occurrence");
            let uid = format!("1.2.826.0.1.3680043.10.1190.{id}.{iid}");
            out.image_occurrence.push(&[
                Int(iid),
                Int(id),
                Int(proc_id),
                proc_visit.clone(),
                Int(img.site),
                Date(img.date),
                Cell::Text(uid),
                Int(img.modality),
            ])?;
            for &(feature, value) in &img.features {
                let mid = out.next_id("measurement");
                out.measurement.push(&[
                    Int(mid),
                    Int(id),
                    Int(feature),
                    Date(img.date),
                    Int(v::EHR),
                    Float(value),
                    Null,
                    Null,
                    Null,
                    Null,
                    proc_visit.clone(),
                ])?;
                let fid = out.next_id("image_feature");
                out.image_feature.push(&[
                    Int(fid),
                    Int(id),
                    Int(iid),
                    Int(v::FIELD_MEASUREMENT_ID),
                    Int(mid),
                    Int(feature),
                    Int(v::EHR),
                    Int(img.site),
                    Cell::Str("pyradiomics 3.1"),
                ])?;
            }
        }
        for e in &self.episodes {
            let eid = out.next_id("episode");
            out.episode.push(&[
                Int(eid),
                Int(id),
                Int(e.kind),
                Date(e.start),
                e.end.map_or(Null, Date),
                Int(e.object),
                Int(v::EHR),
            ])?;
        }
        for &(concept, d) in &self.devices {
            let did = out.next_id("device_exposure");
            out.device
                .push(&[Int(did), Int(id), Int(concept), Date(d), Int(v::EHR)])?;
        }
        for &(concept, d) in &self.specimens {
            let sid = out.next_id("specimen");
            out.specimen.push(&[
                Int(sid),
                Int(id),
                Int(concept),
                Int(v::EHR),
                Date(d),
                Int(v::SITE_PROSTATE),
            ])?;
        }
        if let Some((d, cause)) = self.death {
            out.death
                .push(&[Int(id), Date(d), Int(v::EHR), Int(cause)])?;
        }
        self.write_eras(out)
    }

    /// Drug eras by ingredient and condition eras by concept, with OMOP's 30-day persistence
    /// window, computed from this person's records.
    fn write_eras(&self, out: &mut Tables) -> Result<(), WriteError> {
        use Cell::{Date, Int};
        let mut drugs: BTreeMap<i64, Vec<(Day, Day)>> = BTreeMap::new();
        for x in &self.drugs {
            drugs
                .entry(v::ingredient(x.concept))
                .or_default()
                .push((x.start, x.end));
        }
        for (ingredient, spans) in drugs {
            for (start, end, count, gap) in eras(spans, 30) {
                let id = out.next_id("drug_era");
                out.drug_era.push(&[
                    Int(id),
                    Int(self.id),
                    Int(ingredient),
                    Date(start),
                    Date(end),
                    Int(count),
                    Int(gap),
                ])?;
            }
        }
        let mut conditions: BTreeMap<i64, Vec<(Day, Day)>> = BTreeMap::new();
        for c in &self.conditions {
            conditions
                .entry(c.concept)
                .or_default()
                .push((c.start, c.end.unwrap_or(c.start)));
        }
        for (concept, spans) in conditions {
            for (start, end, count, _) in eras(spans, 30) {
                let id = out.next_id("condition_era");
                out.condition_era.push(&[
                    Int(id),
                    Int(self.id),
                    Int(concept),
                    Date(start),
                    Date(end),
                    Int(count),
                ])?;
            }
        }
        Ok(())
    }
}

/// Merges spans whose gap is at most `persistence` days: (start, end, spans merged, gap days).
fn eras(mut spans: Vec<(Day, Day)>, persistence: i32) -> Vec<(Day, Day, i64, i64)> {
    spans.sort();
    let mut out: Vec<(Day, Day, i64, i64)> = Vec::new();
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 + persistence => {
                if s > last.1 {
                    last.3 += (s - last.1 - 1) as i64;
                }
                last.1 = last.1.max(e);
                last.2 += 1;
            }
            _ => out.push((s, e, 1, 0)),
        }
    }
    out
}
