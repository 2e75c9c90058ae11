//! The synthetic repository's own small vocabulary: standard concepts in hierarchies deep enough
//! that descendants matter, source codes (ICD-10, ICD-10-CM) that map to them, and the imaging and
//! oncology concepts. Well-known OMOP concept ids are used where they exist; the others are local
//! concepts, numbered from 2,000,000,000 as OMOP reserves for site-specific concepts.

/// One concept of the vocabulary.
#[derive(Clone, Copy, Debug)]
pub struct Concept {
    pub id: i64,
    pub name: &'static str,
    pub domain: &'static str,
    pub vocabulary: &'static str,
    pub class: &'static str,
    pub standard: bool,
    pub code: &'static str,
    /// Standard concepts: the parent in the hierarchy. Source concepts: the concept they map to.
    pub parent: Option<i64>,
}

const fn std(
    id: i64,
    name: &'static str,
    domain: &'static str,
    vocabulary: &'static str,
    class: &'static str,
    code: &'static str,
    parent: Option<i64>,
) -> Concept {
    Concept {
        id,
        name,
        domain,
        vocabulary,
        class,
        standard: true,
        code,
        parent,
    }
}
const fn src(
    id: i64,
    name: &'static str,
    vocabulary: &'static str,
    code: &'static str,
    maps_to: i64,
) -> Concept {
    Concept {
        id,
        name,
        domain: "Condition",
        vocabulary,
        class: "ICD code",
        standard: false,
        code,
        parent: Some(maps_to),
    }
}

// Demographics, visits and record types.
pub const MALE: i64 = 8507;
pub const FEMALE: i64 = 8532;
pub const INPATIENT: i64 = 9201;
pub const OUTPATIENT: i64 = 9202;
pub const EMERGENCY: i64 = 9203;
pub const EHR: i64 = 32817;
pub const POSITIVE: i64 = 9191;
pub const NEGATIVE: i64 = 9189;

// Units.
pub const PERCENT: i64 = 8554;
pub const KG_PER_M2: i64 = 2_000_000_101;
pub const NG_PER_ML: i64 = 2_000_000_102;
pub const ML_MIN_173: i64 = 2_000_000_103;
pub const SCORE: i64 = 2_000_000_104;

// Imaging.
pub const MODALITY_MR: i64 = 2_000_000_201;
pub const MODALITY_CT: i64 = 2_000_000_202;
pub const MODALITY_MG: i64 = 2_000_000_203;
pub const SITE_BREAST: i64 = 2_000_000_211;
pub const SITE_PROSTATE: i64 = 2_000_000_212;
pub const SITE_LUNG: i64 = 2_000_000_213;
pub const FIELD_MEASUREMENT_ID: i64 = 2_000_000_221;
pub const ENTROPY: i64 = 2_000_000_231;
pub const GLCM_CONTRAST: i64 = 2_000_000_232;
pub const SPHERICITY: i64 = 2_000_000_233;

// Conditions.
pub const DIGESTIVE_DISORDER: i64 = 2_000_000_300;
pub const GI_BLEED: i64 = 192671;
pub const UPPER_GI_BLEED: i64 = 2_000_000_301;
pub const LOWER_GI_BLEED: i64 = 2_000_000_302;
pub const GASTRIC_ULCER_BLEED: i64 = 2_000_000_303;
pub const ARTHROPATHY: i64 = 2_000_000_310;
pub const OSTEOARTHRITIS: i64 = 80180;
pub const OA_KNEE: i64 = 2_000_000_311;
pub const OA_HIP: i64 = 2_000_000_312;
pub const RHEUMATOID: i64 = 80809;
pub const T2DM: i64 = 201826;
pub const HYPERTENSION: i64 = 320128;
pub const COPD: i64 = 255573;
pub const MALIGNANT: i64 = 443392;
pub const BREAST_CANCER: i64 = 4112853;
pub const BREAST_UOQ: i64 = 2_000_000_321;
pub const BREAST_CENTRAL: i64 = 2_000_000_322;
pub const PROSTATE_CANCER: i64 = 4163261;
pub const PROSTATE_ADENO: i64 = 2_000_000_331;
pub const LUNG_CANCER: i64 = 443388;
pub const NSCLC: i64 = 2_000_000_341;
pub const SCLC: i64 = 2_000_000_342;

// Drugs: ingredients and the clinical drugs recorded in drug_exposure.
pub const CELECOXIB: i64 = 1118084;
pub const CELECOXIB_200: i64 = 1118088;
pub const DICLOFENAC: i64 = 1124300;
pub const DICLOFENAC_75: i64 = 40162359;
pub const IBUPROFEN: i64 = 1177480;
pub const IBUPROFEN_400: i64 = 2_000_000_401;
pub const METFORMIN: i64 = 1503297;
pub const METFORMIN_500: i64 = 2_000_000_402;
pub const SIMVASTATIN: i64 = 1539403;
pub const SIMVASTATIN_40: i64 = 2_000_000_403;
pub const OMEPRAZOLE: i64 = 923645;
pub const OMEPRAZOLE_20: i64 = 2_000_000_404;
pub const DOXORUBICIN: i64 = 1338512;
pub const DOXORUBICIN_INJ: i64 = 2_000_000_411;
pub const CYCLOPHOSPHAMIDE: i64 = 1310317;
pub const CYCLOPHOSPHAMIDE_INJ: i64 = 2_000_000_412;
pub const PACLITAXEL: i64 = 1378382;
pub const PACLITAXEL_INJ: i64 = 2_000_000_413;
pub const TRASTUZUMAB: i64 = 1387104;
pub const TRASTUZUMAB_INJ: i64 = 2_000_000_414;
pub const CARBOPLATIN: i64 = 1344905;
pub const CARBOPLATIN_INJ: i64 = 2_000_000_415;
pub const CISPLATIN: i64 = 1397599;
pub const CISPLATIN_INJ: i64 = 2_000_000_416;

// Procedures, devices, specimens.
pub const MASTECTOMY: i64 = 2_000_000_501;
pub const LUMPECTOMY: i64 = 2_000_000_502;
pub const PROSTATE_BIOPSY: i64 = 2_000_000_503;
pub const MRI_BREAST: i64 = 2_000_000_504;
pub const MRI_PROSTATE: i64 = 2_000_000_505;
pub const CT_CHEST: i64 = 2_000_000_506;
pub const MAMMOGRAPHY: i64 = 2_000_000_507;
pub const PORT: i64 = 2_000_000_511;
pub const PROSTATE_TISSUE: i64 = 2_000_000_521;

// Measurements.
pub const HER2: i64 = 2_000_000_601;
pub const ER: i64 = 2_000_000_602;
pub const PR: i64 = 2_000_000_603;
pub const KI67: i64 = 2_000_000_604;
pub const PSA: i64 = 3013603;
pub const BMI: i64 = 3038553;
pub const EGFR: i64 = 2_000_000_605;
pub const PIRADS: i64 = 2_000_000_606;
pub const GRADE_GROUP: i64 = 2_000_000_607;
pub const STAGE_GROUP: i64 = 2_000_000_608;

// Observations and oncology episodes.
pub const PCR: i64 = 2_000_000_701;
pub const RESEARCH_CONSENT: i64 = 2_000_000_702;
pub const FIRST_OCCURRENCE: i64 = 32528;
pub const TREATMENT_REGIMEN: i64 = 32531;
pub const REGIMEN_AC_T: i64 = 2_000_000_801;
pub const REGIMEN_AC_TH: i64 = 2_000_000_802;
pub const REGIMEN_CARBO_PACLI: i64 = 2_000_000_803;

// Source codes.
pub const ICD10_K92_2: i64 = 2_000_001_001;
pub const ICD10CM_K92_2: i64 = 35208414;
pub const ICD10_K25_4: i64 = 2_000_001_002;
pub const ICD10_M17_1: i64 = 2_000_001_003;
pub const ICD10CM_M17_11: i64 = 2_000_001_004;
pub const ICD10_M16_1: i64 = 2_000_001_005;
pub const ICD10CM_M19_90: i64 = 2_000_001_006;
pub const ICD10_M05_9: i64 = 2_000_001_007;
pub const ICD10_E11_9: i64 = 2_000_001_008;
pub const ICD10_I10: i64 = 2_000_001_009;
pub const ICD10_J44_9: i64 = 2_000_001_010;
pub const ICD10_C50_4: i64 = 2_000_001_011;
pub const ICD10_C50_1: i64 = 2_000_001_012;
pub const ICD10_C61: i64 = 2_000_001_013;
pub const ICD10_C34_1: i64 = 2_000_001_014;
pub const ICD10_C34_9: i64 = 2_000_001_015;
pub const ICD10_K92_1: i64 = 2_000_001_016;

/// Every concept of the synthetic vocabulary.
pub const CONCEPTS: &[Concept] = &[
    std(MALE, "MALE", "Gender", "Gender", "Gender", "M", None),
    std(FEMALE, "FEMALE", "Gender", "Gender", "Gender", "F", None),
    std(INPATIENT, "Inpatient Visit", "Visit", "Visit", "Visit", "IP", None),
    std(OUTPATIENT, "Outpatient Visit", "Visit", "Visit", "Visit", "OP", None),
    std(EMERGENCY, "Emergency Room Visit", "Visit", "Visit", "Visit", "ER", None),
    std(EHR, "EHR", "Type Concept", "Type Concept", "Type Concept", "OMOP4976890", None),
    std(POSITIVE, "Positive", "Meas Value", "LOINC", "Answer", "LA6576-8", None),
    std(NEGATIVE, "Negative", "Meas Value", "LOINC", "Answer", "LA6577-6", None),
    std(PERCENT, "percent", "Unit", "UCUM", "Unit", "%", None),
    std(KG_PER_M2, "kilogram per square meter", "Unit", "UCUM", "Unit", "kg/m2", None),
    std(NG_PER_ML, "nanogram per milliliter", "Unit", "UCUM", "Unit", "ng/mL", None),
    std(ML_MIN_173, "milliliter per minute per 1.73 square meter", "Unit", "UCUM", "Unit", "mL/min/{1.73_m2}", None),
    std(SCORE, "score", "Unit", "UCUM", "Unit", "{score}", None),
    std(MODALITY_MR, "Magnetic Resonance", "Observation", "DICOM", "DICOM Value", "MR", None),
    std(MODALITY_CT, "Computed Tomography", "Observation", "DICOM", "DICOM Value", "CT", None),
    std(MODALITY_MG, "Mammography", "Observation", "DICOM", "DICOM Value", "MG", None),
    std(SITE_BREAST, "Breast structure", "Spec Anatomic Site", "SNOMED", "Body Structure", "76752008", None),
    std(SITE_PROSTATE, "Prostatic structure", "Spec Anatomic Site", "SNOMED", "Body Structure", "41216001", None),
    std(SITE_LUNG, "Lung structure", "Spec Anatomic Site", "SNOMED", "Body Structure", "39607008", None),
    std(FIELD_MEASUREMENT_ID, "measurement.measurement_id", "Metadata", "CDM", "Field", "CDM1147330", None),
    std(ENTROPY, "original_firstorder_Entropy", "Measurement", "Radiomics", "Feature", "firstorder_Entropy", None),
    std(GLCM_CONTRAST, "original_glcm_Contrast", "Measurement", "Radiomics", "Feature", "glcm_Contrast", None),
    std(SPHERICITY, "original_shape_Sphericity", "Measurement", "Radiomics", "Feature", "shape_Sphericity", None),
    std(DIGESTIVE_DISORDER, "Disorder of digestive system", "Condition", "SNOMED", "Clinical Finding", "53619000", None),
    std(GI_BLEED, "Gastrointestinal hemorrhage", "Condition", "SNOMED", "Clinical Finding", "74474003", Some(DIGESTIVE_DISORDER)),
    std(UPPER_GI_BLEED, "Upper gastrointestinal hemorrhage", "Condition", "SNOMED", "Clinical Finding", "37372002", Some(GI_BLEED)),
    std(LOWER_GI_BLEED, "Lower gastrointestinal hemorrhage", "Condition", "SNOMED", "Clinical Finding", "87763006", Some(GI_BLEED)),
    std(GASTRIC_ULCER_BLEED, "Gastric ulcer with hemorrhage", "Condition", "SNOMED", "Clinical Finding", "1512004", Some(UPPER_GI_BLEED)),
    std(ARTHROPATHY, "Arthropathy", "Condition", "SNOMED", "Clinical Finding", "399269003", None),
    std(OSTEOARTHRITIS, "Osteoarthritis", "Condition", "SNOMED", "Clinical Finding", "396275006", Some(ARTHROPATHY)),
    std(OA_KNEE, "Osteoarthritis of knee", "Condition", "SNOMED", "Clinical Finding", "239873007", Some(OSTEOARTHRITIS)),
    std(OA_HIP, "Osteoarthritis of hip", "Condition", "SNOMED", "Clinical Finding", "239872002", Some(OSTEOARTHRITIS)),
    std(RHEUMATOID, "Rheumatoid arthritis", "Condition", "SNOMED", "Clinical Finding", "69896004", Some(ARTHROPATHY)),
    std(T2DM, "Type 2 diabetes mellitus", "Condition", "SNOMED", "Clinical Finding", "44054006", None),
    std(HYPERTENSION, "Essential hypertension", "Condition", "SNOMED", "Clinical Finding", "59621000", None),
    std(COPD, "Chronic obstructive lung disease", "Condition", "SNOMED", "Clinical Finding", "13645005", None),
    std(MALIGNANT, "Malignant neoplastic disease", "Condition", "SNOMED", "Clinical Finding", "363346000", None),
    std(BREAST_CANCER, "Malignant tumor of breast", "Condition", "SNOMED", "Clinical Finding", "254837009", Some(MALIGNANT)),
    std(BREAST_UOQ, "Malignant neoplasm of upper-outer quadrant of female breast", "Condition", "SNOMED", "Clinical Finding", "188161004", Some(BREAST_CANCER)),
    std(BREAST_CENTRAL, "Malignant neoplasm of central part of female breast", "Condition", "SNOMED", "Clinical Finding", "188147009", Some(BREAST_CANCER)),
    std(PROSTATE_CANCER, "Malignant tumor of prostate", "Condition", "SNOMED", "Clinical Finding", "399068003", Some(MALIGNANT)),
    std(PROSTATE_ADENO, "Adenocarcinoma of prostate", "Condition", "SNOMED", "Clinical Finding", "254900004", Some(PROSTATE_CANCER)),
    std(LUNG_CANCER, "Malignant tumor of lung", "Condition", "SNOMED", "Clinical Finding", "363358000", Some(MALIGNANT)),
    std(NSCLC, "Non-small cell lung cancer", "Condition", "SNOMED", "Clinical Finding", "254637007", Some(LUNG_CANCER)),
    std(SCLC, "Small cell carcinoma of lung", "Condition", "SNOMED", "Clinical Finding", "254632001", Some(LUNG_CANCER)),
    std(CELECOXIB, "celecoxib", "Drug", "RxNorm", "Ingredient", "140587", None),
    std(CELECOXIB_200, "celecoxib 200 MG Oral Capsule [Celebrex]", "Drug", "RxNorm", "Branded Drug", "213469", Some(CELECOXIB)),
    std(DICLOFENAC, "Diclofenac", "Drug", "RxNorm", "Ingredient", "3355", None),
    std(DICLOFENAC_75, "Diclofenac Sodium 75 MG Delayed Release Oral Tablet", "Drug", "RxNorm", "Clinical Drug", "855926", Some(DICLOFENAC)),
    std(IBUPROFEN, "Ibuprofen", "Drug", "RxNorm", "Ingredient", "5640", None),
    std(IBUPROFEN_400, "Ibuprofen 400 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug", "197805", Some(IBUPROFEN)),
    std(METFORMIN, "metformin", "Drug", "RxNorm", "Ingredient", "6809", None),
    std(METFORMIN_500, "metformin hydrochloride 500 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug", "861007", Some(METFORMIN)),
    std(SIMVASTATIN, "simvastatin", "Drug", "RxNorm", "Ingredient", "36567", None),
    std(SIMVASTATIN_40, "simvastatin 40 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug", "198211", Some(SIMVASTATIN)),
    std(OMEPRAZOLE, "omeprazole", "Drug", "RxNorm", "Ingredient", "7646", None),
    std(OMEPRAZOLE_20, "omeprazole 20 MG Delayed Release Oral Capsule", "Drug", "RxNorm", "Clinical Drug", "402014", Some(OMEPRAZOLE)),
    std(DOXORUBICIN, "doxorubicin", "Drug", "RxNorm", "Ingredient", "3639", None),
    std(DOXORUBICIN_INJ, "doxorubicin hydrochloride 2 MG/ML Injectable Solution", "Drug", "RxNorm", "Clinical Drug", "1790099", Some(DOXORUBICIN)),
    std(CYCLOPHOSPHAMIDE, "cyclophosphamide", "Drug", "RxNorm", "Ingredient", "3002", None),
    std(CYCLOPHOSPHAMIDE_INJ, "cyclophosphamide 500 MG Injection", "Drug", "RxNorm", "Clinical Drug", "1734919", Some(CYCLOPHOSPHAMIDE)),
    std(PACLITAXEL, "paclitaxel", "Drug", "RxNorm", "Ingredient", "56946", None),
    std(PACLITAXEL_INJ, "paclitaxel 6 MG/ML Injectable Solution", "Drug", "RxNorm", "Clinical Drug", "583214", Some(PACLITAXEL)),
    std(TRASTUZUMAB, "trastuzumab", "Drug", "RxNorm", "Ingredient", "224905", None),
    std(TRASTUZUMAB_INJ, "trastuzumab 150 MG Injection", "Drug", "RxNorm", "Clinical Drug", "1922509", Some(TRASTUZUMAB)),
    std(CARBOPLATIN, "carboplatin", "Drug", "RxNorm", "Ingredient", "40048", None),
    std(CARBOPLATIN_INJ, "carboplatin 10 MG/ML Injectable Solution", "Drug", "RxNorm", "Clinical Drug", "597195", Some(CARBOPLATIN)),
    std(CISPLATIN, "cisplatin", "Drug", "RxNorm", "Ingredient", "2555", None),
    std(CISPLATIN_INJ, "cisplatin 1 MG/ML Injectable Solution", "Drug", "RxNorm", "Clinical Drug", "309311", Some(CISPLATIN)),
    std(MASTECTOMY, "Mastectomy", "Procedure", "SNOMED", "Procedure", "69031006", None),
    std(LUMPECTOMY, "Lumpectomy of breast", "Procedure", "SNOMED", "Procedure", "392021009", None),
    std(PROSTATE_BIOPSY, "Biopsy of prostate", "Procedure", "SNOMED", "Procedure", "65575008", None),
    std(MRI_BREAST, "MRI of breast", "Procedure", "SNOMED", "Procedure", "241615005", None),
    std(MRI_PROSTATE, "MRI of prostate", "Procedure", "SNOMED", "Procedure", "44151000087105", None),
    std(CT_CHEST, "CT of chest", "Procedure", "SNOMED", "Procedure", "169069000", None),
    std(MAMMOGRAPHY, "Mammography", "Procedure", "SNOMED", "Procedure", "71651007", None),
    std(PORT, "Implantable venous access port", "Device", "SNOMED", "Physical Object", "360046005", None),
    std(PROSTATE_TISSUE, "Tissue specimen from prostate", "Specimen", "SNOMED", "Specimen", "122610009", None),
    std(HER2, "HER2 [Interpretation] in Tissue", "Measurement", "LOINC", "Lab Test", "48676-1", None),
    std(ER, "Estrogen receptor [Interpretation] in Tissue", "Measurement", "LOINC", "Lab Test", "16112-5", None),
    std(PR, "Progesterone receptor [Interpretation] in Tissue", "Measurement", "LOINC", "Lab Test", "16113-3", None),
    std(KI67, "Ki-67 proliferation index", "Measurement", "cohortql", "Lab Test", "KI67", None),
    std(PSA, "Prostate specific Ag [Mass/volume] in Serum or Plasma", "Measurement", "LOINC", "Lab Test", "2857-1", None),
    std(BMI, "Body mass index (BMI) [Ratio]", "Measurement", "LOINC", "Clinical Observation", "39156-5", None),
    std(EGFR, "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)", "Measurement", "LOINC", "Lab Test", "62238-1", None),
    std(PIRADS, "PI-RADS assessment category", "Measurement", "cohortql", "Clinical Observation", "PIRADS", None),
    std(GRADE_GROUP, "ISUP grade group", "Measurement", "cohortql", "Clinical Observation", "ISUPGG", None),
    std(STAGE_GROUP, "Cancer stage group", "Measurement", "cohortql", "Clinical Observation", "STAGE", None),
    std(PCR, "Pathologic complete response", "Observation", "cohortql", "Clinical Finding", "PCR", None),
    std(RESEARCH_CONSENT, "Consent given for research", "Observation", "cohortql", "Context-dependent", "CONSENT", None),
    std(FIRST_OCCURRENCE, "Disease First Occurrence", "Episode", "Episode", "Disease Episode", "OMOP4997809", None),
    std(TREATMENT_REGIMEN, "Treatment Regimen", "Episode", "Episode", "Treatment Episode", "OMOP4997812", None),
    std(REGIMEN_AC_T, "Doxorubicin and Cyclophosphamide followed by Paclitaxel", "Regimen", "HemOnc", "Regimen", "AC-T", None),
    std(REGIMEN_AC_TH, "Doxorubicin and Cyclophosphamide followed by Paclitaxel and Trastuzumab", "Regimen", "HemOnc", "Regimen", "AC-TH", None),
    std(REGIMEN_CARBO_PACLI, "Carboplatin and Paclitaxel", "Regimen", "HemOnc", "Regimen", "CP", None),
    src(ICD10_K92_2, "Gastrointestinal haemorrhage, unspecified", "ICD10", "K92.2", GI_BLEED),
    src(ICD10CM_K92_2, "Gastrointestinal hemorrhage, unspecified", "ICD10CM", "K92.2", GI_BLEED),
    src(ICD10_K92_1, "Melaena", "ICD10", "K92.1", LOWER_GI_BLEED),
    src(ICD10_K25_4, "Gastric ulcer, chronic or unspecified with haemorrhage", "ICD10", "K25.4", GASTRIC_ULCER_BLEED),
    src(ICD10_M17_1, "Other primary gonarthrosis", "ICD10", "M17.1", OA_KNEE),
    src(ICD10CM_M17_11, "Unilateral primary osteoarthritis, right knee", "ICD10CM", "M17.11", OA_KNEE),
    src(ICD10_M16_1, "Other primary coxarthrosis", "ICD10", "M16.1", OA_HIP),
    src(ICD10CM_M19_90, "Unspecified osteoarthritis, unspecified site", "ICD10CM", "M19.90", OSTEOARTHRITIS),
    src(ICD10_M05_9, "Seropositive rheumatoid arthritis, unspecified", "ICD10", "M05.9", RHEUMATOID),
    src(ICD10_E11_9, "Non-insulin-dependent diabetes mellitus without complications", "ICD10", "E11.9", T2DM),
    src(ICD10_I10, "Essential (primary) hypertension", "ICD10", "I10", HYPERTENSION),
    src(ICD10_J44_9, "Chronic obstructive pulmonary disease, unspecified", "ICD10", "J44.9", COPD),
    src(ICD10_C50_4, "Malignant neoplasm: Upper-outer quadrant of breast", "ICD10", "C50.4", BREAST_UOQ),
    src(ICD10_C50_1, "Malignant neoplasm: Central portion of breast", "ICD10", "C50.1", BREAST_CENTRAL),
    src(ICD10_C61, "Malignant neoplasm of prostate", "ICD10", "C61", PROSTATE_ADENO),
    src(ICD10_C34_1, "Malignant neoplasm: Upper lobe, bronchus or lung", "ICD10", "C34.1", NSCLC),
    src(ICD10_C34_9, "Malignant neoplasm: Bronchus or lung, unspecified", "ICD10", "C34.9", LUNG_CANCER),
];

pub fn concept(id: i64) -> &'static Concept {
    CONCEPTS
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("concept {id} is not in the synthetic vocabulary"))
}

/// The ingredient of a clinical drug (itself for an ingredient).
pub fn ingredient(drug: i64) -> i64 {
    let c = concept(drug);
    if c.class == "Ingredient" {
        drug
    } else {
        c.parent.expect("clinical drugs have an ingredient")
    }
}

/// (ancestor, descendant, levels) for every standard concept, itself included at level 0.
pub fn ancestry() -> Vec<(i64, i64, i64)> {
    let mut out = Vec::new();
    for c in CONCEPTS.iter().filter(|c| c.standard) {
        out.push((c.id, c.id, 0));
        let mut level = 0;
        let mut parent = c.parent;
        while let Some(p) = parent {
            level += 1;
            out.push((p, c.id, level));
            parent = concept(p).parent;
        }
    }
    out.sort();
    out
}
