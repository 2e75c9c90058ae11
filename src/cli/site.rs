//! Commands about the site and what leaves it: `site init`, `site show`, `release check`; and
//! the site's rules as every other command finds them.

use super::Status;
use crate::disclosure::{Export, SiteRules};
use crate::release::check_release;
use crate::site::{locate, Site};
use anstream::{eprintln, println};
use std::path::Path;

/// The site's configuration and rules. With `create`, a missing configuration is made (with
/// the default policy and a new secret) and the making is said on standard error; without it,
/// a missing configuration gives the default rules and no site.
pub(super) fn rules(
    flag: Option<&Path>,
    create: bool,
) -> Result<(Option<Site>, SiteRules), String> {
    let path = locate(flag);
    let site = if create {
        let (site, created) = Site::load_or_create(&path)?;
        if created {
            eprintln!(
                "created the site configuration {} (policy {}, no dataset export, a new pseudonym secret); it stays at this site: `cohortql site init` makes one with other settings",
                path.display(),
                site.policy.preset
            );
        }
        Some(site)
    } else {
        Site::load(&path)?
    };
    let rules = match &site {
        Some(s) => SiteRules {
            policy: s.policy.clone(),
            // As released files and reports name it: a site's directory layout is not theirs
            // to publish.
            source: format!(
                "the site configuration {}",
                crate::run::output::shareable_path(&path)
            ),
            dataset_export: s.dataset_export,
        },
        None => SiteRules::default(),
    };
    Ok((site, rules))
}

pub(super) fn init(flag: Option<&Path>, policy: &str, export: Export) -> Result<Status, String> {
    let path = locate(flag);
    let site = Site::create(&path, policy, export)?;
    println!(
        "created {}: {}; dataset export {}; a new pseudonym secret (mode 0600: keep it at this site)",
        path.display(),
        site.policy.describe(),
        site.dataset_export.name()
    );
    Ok(Status::Ok)
}

pub(super) fn show(flag: Option<&Path>) -> Result<Status, String> {
    let path = locate(flag);
    match Site::load(&path)? {
        Some(site) => {
            println!("site configuration: {}", path.display());
            println!("{}", site.policy.describe());
            println!("dataset export: {}", site.dataset_export.name());
            println!("pseudonym secret: set (not shown)");
        }
        None => {
            println!(
                "no site configuration at {}: runs would create one with the {}",
                path.display(),
                SiteRules::default().policy.describe()
            );
        }
    }
    Ok(Status::Ok)
}

pub(super) fn release_check(dir: &Path, flag: Option<&Path>) -> Result<Status, String> {
    let (_, rules) = rules(flag, false)?;
    // A run's output directory holds release/: check that.
    let release = if dir.join("release").is_dir() && !dir.join("run.json").exists() {
        dir.join("release")
    } else {
        dir.to_path_buf()
    };
    let report = check_release(&release, &rules)?;
    for v in &report.violations {
        println!("{v}");
    }
    if report.violations.is_empty() {
        println!(
            "{}: nothing the {} policy withholds is released ({} files, {} counts checked; {})",
            release.display(),
            report.policy.preset,
            report.files,
            report.counts,
            report.policy.describe()
        );
        Ok(Status::Ok)
    } else {
        eprintln!(
            "{}: {} {} of the {} policy ({})",
            release.display(),
            report.violations.len(),
            if report.violations.len() == 1 {
                "violation"
            } else {
                "violations"
            },
            report.policy.preset,
            rules.source
        );
        Ok(Status::StudyErrors)
    }
}
