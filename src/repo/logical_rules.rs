//! DataFusion's logical optimizer rules as cohortql's sessions run them: its own list, with
//! the rule for set comparisons (`x > ANY (subquery)`) run only on plans that hold one.
//!
//! That rule merges the schemas of every node's inputs, at each of the optimizer's passes,
//! before it looks for anything to rewrite. The plans of a study hold no set comparison (the
//! planner never builds one), and their wide joins made the merging the dearest rule of all:
//! 17 of the 132 ms the ten studies' plans took to optimise at 100,000 persons
//! (docs/performance.md). Looking for a set comparison first reads the expressions without
//! building anything.

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::{Optimizer, OptimizerConfig, OptimizerRule};
use std::sync::Arc;

/// The name DataFusion gives the rule (`RewriteSetComparison`).
const SET_COMPARISONS: &str = "rewrite_set_comparison";

/// DataFusion's rules, in its order, with the set comparisons' rule guarded.
pub fn rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    Optimizer::new()
        .rules
        .into_iter()
        .map(|rule| {
            if rule.name() == SET_COMPARISONS {
                Arc::new(OnlySetComparisons(rule)) as Arc<dyn OptimizerRule + Send + Sync>
            } else {
                rule
            }
        })
        .collect()
}

/// A rule that walks the plan itself (no apply order), run only when the plan, its
/// subqueries included, holds a set comparison.
#[derive(Debug)]
struct OnlySetComparisons(Arc<dyn OptimizerRule + Send + Sync>);

impl OptimizerRule for OnlySetComparisons {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if holds_set_comparison(&plan)? {
            self.0.rewrite(plan, config)
        } else {
            Ok(Transformed::no(plan))
        }
    }
}

fn holds_set_comparison(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            found = expr.exists(|e| Ok(matches!(e, Expr::SetComparison(_))))?;
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    fn session() -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(rules())
            .build();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        ctx.register_batch("t", batch).unwrap();
        ctx
    }

    #[test]
    fn the_guarded_rule_keeps_its_place_and_name() {
        let names = |rules: Vec<Arc<dyn OptimizerRule + Send + Sync>>| {
            rules
                .iter()
                .map(|r| r.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(rules()), names(Optimizer::new().rules));
        assert!(names(rules()).contains(&SET_COMPARISONS.to_string()));
    }

    #[tokio::test]
    async fn a_set_comparison_is_still_rewritten_and_answered() {
        let ctx = session();
        let frame = ctx
            .sql("SELECT a.v FROM t a WHERE a.v > ANY (SELECT b.v FROM t b WHERE b.v < 3) ORDER BY a.v")
            .await
            .unwrap();
        let plan = frame.clone().into_unoptimized_plan();
        assert!(holds_set_comparison(&plan).unwrap());
        let optimized = ctx.state().optimize(&plan).unwrap();
        assert!(!holds_set_comparison(&optimized).unwrap());
        let batches = frame.collect().await.unwrap();
        let values: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, vec![2, 3]);
    }

    /// Counts the plans it is asked to rewrite.
    #[derive(Debug, Default)]
    struct Asked(std::sync::atomic::AtomicUsize);

    impl OptimizerRule for Asked {
        fn name(&self) -> &str {
            "asked"
        }

        fn rewrite(
            &self,
            plan: LogicalPlan,
            _config: &dyn OptimizerConfig,
        ) -> Result<Transformed<LogicalPlan>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Transformed::no(plan))
        }
    }

    #[tokio::test]
    async fn the_rule_is_asked_only_about_plans_holding_a_set_comparison() {
        let ctx = session();
        let state = ctx.state();
        let asked = Arc::new(Asked::default());
        let rule = OnlySetComparisons(asked.clone());
        for (sql, holds) in [
            ("SELECT v FROM t WHERE v IN (SELECT v FROM t WHERE v < 3)", false),
            ("SELECT v FROM t WHERE v > 1", false),
            // In a subquery's filter.
            (
                "SELECT v FROM t WHERE EXISTS (SELECT 1 FROM t u WHERE u.v < ALL (SELECT v FROM t))",
                true,
            ),
        ] {
            let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
            let before = asked.0.load(std::sync::atomic::Ordering::Relaxed);
            rule.rewrite(plan, &state).unwrap();
            let after = asked.0.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(after - before, usize::from(holds), "{sql}");
        }
    }
}
