//! A run's JUnit XML report: a test case per journey, failed at its first failing step, with
//! every step's time and the ids to trace it in the system output.

use std::path::Path;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::journeys::Journey;

/// The report of `journeys`.
pub fn junit(journeys: &[Journey]) -> Report {
    let mut suite = TestSuite::new("sterling-acceptance");
    for journey in journeys {
        let status = match journey.failure() {
            None => TestCaseStatus::success(),
            Some(failure) => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(failure);
                status
            }
        };
        let mut case = TestCase::new(journey.name, status);
        case.set_classname("journeys");
        case.set_time(journey.took);
        let mut out = String::new();
        for (what, id) in &journey.ids {
            out.push_str(&format!("{what}: {id}\n"));
        }
        for step in &journey.steps {
            let verdict = step.failure.as_deref().unwrap_or("ok");
            out.push_str(&format!(
                "{} ({} ms): {verdict}\n",
                step.name,
                step.took.as_millis()
            ));
        }
        case.set_system_out(out);
        suite.add_test_case(case);
    }
    let mut report = Report::new("sterling-acceptance");
    report.add_test_suite(suite);
    report
}

/// Writes the report of `journeys` to `path`.
pub fn write_junit(journeys: &[Journey], path: &Path) -> anyhow::Result<()> {
    let xml = junit(journeys).to_string()?;
    std::fs::write(path, xml)?;
    Ok(())
}
